r"""Top-5 classes and probabilities of image files (JPEG or PNG) under a checkpoint.

  python -m effnet.tools.predict --config=configs/demo.py --weights=workdirs/demo digit.png
  python -m effnet.tools.predict --config=configs/efficientnet.py:b0 --weights=/tmp/b0 cat.jpg dog.png
  (`effnet-predict` is the same command; `--config.KEY=VALUE` overrides as for effnet.main.)

Each file is preprocessed exactly as the eval pipeline preprocesses a dataset example: its bytes go through
effnet.data.pipeline.eval_image_fn (config.data.eval_preprocess at config.data.eval_image_size, decode and crop
order included), then effnet.data.normalize with config.data.normalization inside the jitted forward pass, as in
effnet.steps' eval step. Class names are the tfds builder's label names for config.data.name ('0'..'9' for
digits; for imagenet2012 the WordNet IDs tfds ships, e.g. n01440764, with no download); a dataset whose label has
no names prints class indices.

`--weights`, `--ema` / `--raw` and `--step` are effnet.tools.evaluate's. Every argument, and that each image is a
readable JPEG or PNG file, is checked before anything loads or compiles.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

import numpy as np

_MAGIC = {'JPEG': b'\xff\xd8\xff', 'PNG': b'\x89PNG\r\n\x1a\n'}


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  weights: str
  images: tuple[str, ...]
  ema: Optional[bool] = None  # None: config.train.eval_ema
  step: Optional[int] = None  # None: the newest stored step
  top: int = 5


def check_image(path: str) -> None:
  """ValueError naming the IMAGE argument unless `path` is a readable file that starts as a JPEG or PNG does."""
  if not os.path.isfile(path):
    raise ValueError(f'IMAGE={path!r}; allowed: an existing image file (JPEG or PNG)')
  with open(path, 'rb') as f:
    head = f.read(8)
  if not any(head.startswith(magic) for magic in _MAGIC.values()):
    raise ValueError(f'IMAGE={path!r}: not a JPEG or PNG file (its first bytes are {head!r}); allowed: '
                     f'{" | ".join(_MAGIC)}')


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m effnet.tools.predict', description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help='path/to/config.py[:arg]; --config.KEY=VALUE overrides a field')
  p.add_argument('--weights', required=True, help='training workdir, its checkpoints folder, or a convert output')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--ema', dest='ema', action='store_const', const=True, help='the EMA weights')
  which.add_argument('--raw', dest='ema', action='store_const', const=False, help='the raw weights')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  p.add_argument('--top', type=int, default=5, help='classes shown per image (default 5)')
  p.add_argument('images', nargs='+', metavar='IMAGE', help='JPEG or PNG files')
  return p


def parse_args(argv: Sequence[str]):
  """(config, PredictOptions), both checked; ValueError naming the argument otherwise. Nothing loads here."""
  from effnet import config_lib, weights  # pylint: disable=g-import-not-at-top
  args = _parser().parse_args([a for a in argv if not a.startswith('--config.')])
  opts = PredictOptions(weights=args.weights, images=tuple(args.images), ema=args.ema, step=args.step, top=args.top)
  config = config_lib.config_from_command_line(argv)
  weights.check_step(opts.weights, opts.step, '--weights', '--step')
  if not 1 <= opts.top <= config.model.num_classes:
    raise ValueError(f'--top={opts.top}; allowed: 1 .. model.num_classes ({config.model.num_classes})')
  for path in opts.images:
    check_image(path)
  return config, opts


def class_names(config) -> list[str]:
  """The label names of config.data.name's tfds builder (no data is prepared or read), or '0', '1', ... when the
  label feature has none or the count differs from model.num_classes."""
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top
  features = pipeline.get_builder(config.data, prepare=False).info.features
  names = list(getattr(features['label'], 'names', None) or []) if 'label' in features else []
  return names if len(names) == config.model.num_classes else [str(i) for i in range(config.model.num_classes)]


def eval_images(config, paths: Sequence[str]) -> np.ndarray:
  """The files as the eval pipeline hands a batch to the device: [N, S, S, 3] in data.image_dtype."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top
  preprocess = pipeline.eval_image_fn(config.data, int(config.data.eval_image_size))
  return np.stack([preprocess(tf.io.read_file(path)).numpy() for path in paths])


def probabilities(config, variables: dict, images: np.ndarray) -> np.ndarray:
  """Softmax of the eval forward pass (normalisation inside, in the model's compute dtype), float32 [N, classes]."""
  import jax  # pylint: disable=g-import-not-at-top
  from effnet import data, models  # pylint: disable=g-import-not-at-top
  module = models.build_model(config.model)
  normalization, dtype = config.data.normalization, models.DTYPES[config.model.dtype]

  @jax.jit
  def forward(variables, images):
    logits = module.apply(variables, data.normalize(images, normalization, dtype), train=False)
    return jax.nn.softmax(logits.astype('float32'), axis=-1)
  return np.asarray(forward(variables, images))


def predict(config, opts: PredictOptions) -> list[dict]:
  """Per image: {'image': path, 'top': [(class index, name, probability), ...]} best first."""
  from effnet import weights  # pylint: disable=g-import-not-at-top
  names = class_names(config)
  images = eval_images(config, opts.images)
  variables = weights.load_variables(opts.weights, config, ema=opts.ema, step=opts.step)
  probs = probabilities(config, variables, images)
  out = []
  for path, p in zip(opts.images, probs):
    best = np.argsort(-p, kind='stable')[:opts.top]
    out.append({'image': path, 'top': [(int(i), names[i], float(p[i])) for i in best]})
  return out


def format_results(results: list[dict]) -> str:
  """Per image its path, then one line per class: probability in percent, name (and index when the name is not
  the index)."""
  lines = []
  for r in results:
    lines.append(r['image'])
    lines.extend(f'  {100 * p:6.2f}%  {name}' + ('' if name == str(index) else f' ({index})')
                 for index, name, p in r['top'])
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    config, opts = parse_args(argv)
    results = predict(config, opts)
  except (ValueError, FileNotFoundError) as e:
    print(f'effnet.tools.predict: {e}', file=sys.stderr)
    return 2
  print(format_results(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
