"""Regenerates golden.npz: the official TensorFlow eval (and pinned-window train-crop) preprocessing on real photos.

Not the official code: it imports the official modules from checkouts given on the command line and records what
they return. See README.md for the commits and functions.

  python tests/data/official/eval/generate.py \
      --tpu_current DIR --tpu_pre2021 DIR --automl DIR [--out tests/data/official/eval/golden.npz]

  --tpu_current / --tpu_pre2021: folders holding tensorflow/tpu's models/official/efficientnet/preprocessing.py at
      22d5cab (Nov 2021, crop fraction 0.875) and at 80c0773 (Aug 2020, crop padding 32).
  --automl: google/automl's efficientnetv2/ folder (preprocessing.py, preprocess_legacy.py, autoaugment.py,
      hparams.py).

Shims (imports only, no arithmetic): a stub `tensorflow_addons` module (AML autoaugment.py imports it at the top;
no eval or crop function calls it), and during the train-crop records `tf.image.sample_distorted_bounding_box` is
replaced by a function returning a pinned window in the op's own output format (begin [y, x, 0], size [h, w, -1]),
so the official decode/crop/resize runs on a known window.
"""
import argparse
import importlib.util
import io
import sys
import types

import numpy as np
import tensorflow as tf

V1_SIZES = (224, 240, 260, 300, 380, 456, 528, 600, 672, 800)  # B0..B8, L2 (tensorflow/tpu efficientnet_builder)
V2_SIZES = (224, 240, 260, 300, 384, 480, 512)  # V2 B0..B3, S, M/L, XL (google/automl effnetv2_configs)
NUM_RANDOM_POSITIONS = 1024


def _load(name, path, extra_path=None):
  if extra_path and extra_path not in sys.path:
    sys.path.insert(0, extra_path)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _official_modules(args):
  sys.modules.setdefault('tensorflow_addons', types.SimpleNamespace(image=None))
  tpu_now = _load('tpu_current_preprocessing', f'{args.tpu_current}/preprocessing.py')
  tpu_old = _load('tpu_pre2021_preprocessing', f'{args.tpu_pre2021}/preprocessing.py')
  legacy = _load('preprocess_legacy', f'{args.automl}/preprocess_legacy.py', args.automl)
  v2 = _load('aml_preprocessing', f'{args.automl}/preprocessing.py', args.automl)
  return tpu_now, tpu_old, legacy, v2


def _photos():
  """(name, uint8 HWC) real photos from scikit-image at odd sizes; one grayscale."""
  from PIL import Image
  from skimage import data

  def sized(a, h, w):
    return np.asarray(Image.fromarray(a).resize((w, h), Image.LANCZOS))

  return [
      ('astronaut_333x517_q95', sized(data.astronaut(), 333, 517), 95),
      ('coffee_517x333_q70', sized(data.coffee(), 517, 333), 70),
      ('chelsea_211x150_q90', sized(data.chelsea(), 211, 150), 90),
      ('rocket_427x640_q70', data.rocket(), 70),
      ('camera_gray_300x257_q85', sized(data.camera(), 300, 257)[..., None], 85),
      ('chelsea_97x131_q80', sized(data.chelsea(), 97, 131), 80),
  ]


def _jpeg(image, quality):
  return tf.io.encode_jpeg(tf.constant(image), quality=quality).numpy()


def _positions(size, seed):
  """Sampled output pixels: NUM_RANDOM_POSITIONS random ones, the middle row and the middle column."""
  rng = np.random.default_rng(seed)
  rand = rng.integers(0, size, size=(NUM_RANDOM_POSITIONS, 2))
  line = np.arange(size)
  row = np.stack([np.full(size, size // 2), line], 1)
  col = np.stack([line, np.full(size, size // 2)], 1)
  return np.concatenate([rand, row, col]).astype(np.int16)


def _eval_recipes(mods):
  tpu_now, tpu_old, legacy, v2 = mods
  return {
      # name: (sizes, fn(jpeg bytes, size) -> float32 HWC)
      'tpu_current': (V1_SIZES, lambda b, s: tpu_now.preprocess_for_eval(tf.constant(b), False, s)),
      'tpu_pre2021': (V1_SIZES, lambda b, s: tpu_old.preprocess_for_eval(tf.constant(b), False, s)),
      'automl_legacy': (V1_SIZES, lambda b, s: legacy.preprocess_for_eval(tf.constant(b), s)),
      'automl_v2': (V2_SIZES, lambda b, s: v2.preprocess_for_eval(
          tf.image.decode_image(tf.constant(b), channels=3), s)),
      # the same functions with their other output settings, at two sizes
      'tpu_current_bf16': ((224, 600), lambda b, s: tf.cast(
          tpu_now.preprocess_for_eval(tf.constant(b), True, s), tf.float32)),
      'automl_legacy_normalized': ((224, 456), lambda b, s: legacy.preprocess_image(
          tf.constant(b), s, is_training=False)),
      'automl_v2_normalized': ((260, 384), lambda b, s: v2.preprocess_image(tf.constant(b), s, is_training=False)),
  }


def record_eval(mods, jpegs, out):
  case = 0
  for recipe, (sizes, fn) in _eval_recipes(mods).items():
    for size in sizes:
      pos = out.setdefault(f'pos/{size}', _positions(size, size))
      for k in (case % len(jpegs), (case + 3) % len(jpegs)):
        image = fn(jpegs[k], size).numpy()
        assert image.dtype == np.float32 and image.shape == (size, size, 3), (recipe, size, image.shape)
        out[f'eval/{recipe}/{size}/{k}'] = image[pos[:, 0], pos[:, 1]]
      case += 1


class _PinnedWindow:
  """Stands in for tf.image.sample_distorted_bounding_box: returns the pinned (y, x, h, w) in the op's format."""

  def __init__(self):
    self.window = None

  def __call__(self, image_size, *unused_args, **unused_kwargs):
    y, x, h, w = self.window
    if h is None:  # the whole image, as the op returns when no window is found
      h, w = int(image_size[0]), int(image_size[1])
    return tf.constant([y, x, 0], tf.int32), tf.constant([h, w, -1], tf.int32), tf.zeros([1, 1, 4])


TRAIN_CASES = (  # (recipe, size, image index, window (y, x, h, w); h None = the whole image)
    ('tpu_current', 224, 0, (37, 101, 180, 203)),
    ('tpu_current', 300, 3, (0, 0, None, None)),
    ('tpu_pre2021', 300, 3, (0, 0, None, None)),
    ('tpu_current', 240, 4, (0, 0, None, None)),
    ('tpu_pre2021', 224, 4, (0, 0, None, None)),
    ('tpu_current', 380, 4, (11, 20, 150, 171)),
    ('automl_legacy', 260, 2, (5, 3, 120, 97)),
    ('automl_v2', 300, 1, (61, 40, 250, 201)),
    ('automl_v2', 128, 4, (0, 0, None, None)),
    ('automl_v2', 171, 5, (3, 9, 40, 57)),
)


def record_train(mods, jpegs, out):
  tpu_now, tpu_old, legacy, v2 = mods
  fns = {
      'tpu_current': lambda b, s: tpu_now._decode_and_random_crop(b, s),  # pylint: disable=protected-access
      'tpu_pre2021': lambda b, s: tpu_old._decode_and_random_crop(b, s),  # pylint: disable=protected-access
      'automl_legacy': lambda b, s: legacy._decode_and_random_crop(b, s),  # pylint: disable=protected-access
      'automl_v2': lambda b, s: v2.preprocess_for_train(tf.image.decode_image(b, channels=3), s,
                                                        transformations='crop'),
  }
  pinned = _PinnedWindow()
  saved = tf.image.sample_distorted_bounding_box, tf.compat.v1.image.sample_distorted_bounding_box
  tf.image.sample_distorted_bounding_box = tf.compat.v1.image.sample_distorted_bounding_box = pinned
  try:
    for i, (recipe, size, k, window) in enumerate(TRAIN_CASES):
      pinned.window = window
      image = fns[recipe](tf.constant(jpegs[k]), size).numpy()
      assert image.dtype == np.float32 and image.shape == (size, size, 3), (recipe, size, image.shape)
      pos = out.setdefault(f'pos/{size}', _positions(size, size))
      out[f'train/{i}'] = image[pos[:, 0], pos[:, 1]]
      out[f'train_window/{i}'] = np.array([-1 if v is None else v for v in window], np.int32)
  finally:
    tf.image.sample_distorted_bounding_box, tf.compat.v1.image.sample_distorted_bounding_box = saved


def main():
  parser = argparse.ArgumentParser()
  for flag in ('--tpu_current', '--tpu_pre2021', '--automl'):
    parser.add_argument(flag, required=True)
  parser.add_argument('--out', default='tests/data/official/eval/golden.npz')
  args = parser.parse_args()
  mods = _official_modules(args)
  photos = _photos()
  jpegs = [_jpeg(image, quality) for _, image, quality in photos]
  out = {f'jpeg/{k}': np.frombuffer(b, np.uint8) for k, b in enumerate(jpegs)}
  out['jpeg_names'] = np.array([name for name, _, _ in photos])
  record_eval(mods, jpegs, out)
  record_train(mods, jpegs, out)
  buf = io.BytesIO()
  np.savez_compressed(buf, **out)
  with open(args.out, 'wb') as f:
    f.write(buf.getvalue())
  print(f'{args.out}: {len(out)} arrays, {len(buf.getvalue()) / 1e6:.2f} MB')


if __name__ == '__main__':
  main()
