"""Prints, per official recipe and size, the max |effnet - official| over the golden pixels (golden.npz).

  python tests/data/official/eval/compare.py [--dtype uint8|float32]

Columns: eval recipe, size, the effnet recipe used, max abs difference in levels (0..255 scale) and the share of
differing values. Rows `train/i` compare the training crop (official window pinned) before any rounding.
"""
import argparse
import os

import numpy as np
import tensorflow as tf

from effnet.data import pipeline

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden.npz')
EFFNET_RECIPE = {  # official recipe -> effnet data.eval_preprocess (docs/fidelity.md §3)
    'tpu_current': 'center_crop_v1_0875',
    'tpu_pre2021': 'center_crop_v1',
    'automl_legacy': 'center_crop_v1',
    'automl_v2': 'center_crop_v2',
}
TRAIN_RECIPE = {'tpu_current': 'inception_v1_0875', 'tpu_pre2021': 'inception_v1', 'automl_legacy': 'inception_v1',
                'automl_v2': 'inception_v2'}


def load():
  with np.load(GOLDEN) as z:
    return {k: z[k] for k in z.files}


def eval_rows(golden, dtype):
  """(recipe, size, image index, effnet recipe, official samples, effnet samples) for every golden eval array."""
  for key in sorted(k for k in golden if k.startswith('eval/')):
    _, recipe, size, k = key.split('/')
    if recipe not in EFFNET_RECIPE:  # the bfloat16 / normalized records: tests/test_official_eval.py checks them
      continue
    size = int(size)
    pos = golden[f'pos/{size}']
    ours = pipeline.preprocess_eval_image(tf.constant(golden[f'jpeg/{k}'].tobytes()), size, EFFNET_RECIPE[recipe],
                                          dtype=dtype).numpy()
    yield recipe, size, int(k), EFFNET_RECIPE[recipe], golden[key], ours[pos[:, 0], pos[:, 1]]


def pinned_sampler(window):
  """The official sampled window, pinned: (y, x, h, w), h None (or -1) for the whole image."""
  def sampler(height, width):
    y, x, h, w = window
    if h is None or h < 0:
      return 0, 0, height, width
    return y, x, h, w
  return sampler


def train_rows(golden, cases):
  """The training crops, official window pinned: effnet's decode_and_crop + resize (float, before rounding)."""
  for i, (recipe, size, k, window) in enumerate(cases):
    pos = golden[f'pos/{size}']
    ours = pipeline.crop_and_resize(tf.constant(golden[f'jpeg/{k}'].tobytes()), size, TRAIN_RECIPE[recipe],
                                    pinned_sampler(window)).numpy()
    yield recipe, size, k, TRAIN_RECIPE[recipe], golden[f'train/{i}'], ours[pos[:, 0], pos[:, 1]]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dtype', default='float32', choices=('uint8', 'float32'))
  args = parser.parse_args()
  golden = load()
  import generate  # pylint: disable=import-outside-toplevel  (the pinned windows; no official code is imported)
  print(f'{"kind":6} {"recipe":14} {"size":>4} {"img":>3} {"effnet recipe":21} {"max|d|":>8} {"differ":>7}')
  rows = [('eval',) + r for r in eval_rows(golden, args.dtype)]
  rows += [('train',) + r for r in train_rows(golden, generate.TRAIN_CASES)]
  for kind, recipe, size, k, ours_name, official, ours in rows:
    d = np.abs(ours.astype(np.float64) - official.astype(np.float64))
    print(f'{kind:6} {recipe:14} {size:4d} {k:3d} {ours_name:21} {d.max():8.4f} {np.mean(d > 0):7.1%}')


if __name__ == '__main__':
  main()
