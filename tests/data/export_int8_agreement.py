r"""int8 vs float32 TF Lite top-1 agreement on a config's whole eval split (README "Export").

  python -m effnet.main --config=configs/demo.py --workdir=/tmp/demo        # a trained demo model (minutes)
  python tests/data/export_int8_agreement.py --config=configs/demo.py --weights=/tmp/demo [--representative=256]

Why a script and not a test: it needs a trained model (random weights make near-tied logits whose top-1 flips under
any rounding), and training the demo takes minutes on a 2-core CI machine. It exports both files with
effnet.tools.export, runs every eval example through each with the LiteRT interpreter and prints the agreement and
each file's accuracy.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from effnet import config_lib, data  # noqa: E402  pylint: disable=g-import-not-at-top
from effnet.data import pipeline  # noqa: E402  pylint: disable=g-import-not-at-top
from effnet.tools import export as ex  # noqa: E402  pylint: disable=g-import-not-at-top


def eval_split(config):
  """(normalised float32 images, labels) of the whole eval split through the eval pipeline."""
  eval_data = pipeline.create_eval_dataset(config.data, global_batch_size=64, process_index=0, process_count=1)
  images, labels = [], []
  for batch in eval_data.dataset.as_numpy_iterator():
    keep = batch['mask'].astype(bool)
    images.append(np.asarray(data.normalize(batch['image'][keep], config.data.normalization)))
    labels.append(batch['label'][keep])
  return np.concatenate(images), np.concatenate(labels)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', required=True)
  p.add_argument('--weights', required=True)
  p.add_argument('--representative', type=int, default=256)
  args = p.parse_args()
  config = config_lib.checked_config(args.config)
  images, labels = eval_split(config)
  top1 = {}
  with tempfile.TemporaryDirectory() as tmp:
    for quantize in ('none', 'int8'):
      opts = ex.ExportOptions(weights=args.weights, format='tflite', out=os.path.join(tmp, f'{quantize}.tflite'),
                              quantize=quantize, representative=args.representative)
      ex.check_options(opts)
      info = ex.export(config, opts)
      print(f'{quantize}: exported in {info["seconds"]:.1f} s, {os.path.getsize(opts.out) / 1e6:.2f} MB')
      top1[quantize] = ex.run_tflite(opts.out, images).argmax(-1)
  agreement = float(np.mean(top1['none'] == top1['int8']))
  print(f'examples {len(labels)}; float top-1 {np.mean(top1["none"] == labels):.4f}, '
        f'int8 top-1 {np.mean(top1["int8"] == labels):.4f}, int8/float top-1 agreement {agreement:.4f}')


if __name__ == '__main__':
  main()
