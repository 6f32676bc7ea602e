"""Regenerates golden.npz: every op of the official AutoAugment / RandAugment `autoaugment.py`, run on real photos
at fixed magnitudes with the official randomness pinned.

Not the official code: it imports the official modules from the paths given on the command line and records what
they return. See README.md for the commits, functions, arguments and pinned draws.

  TF_ENABLE_ONEDNN_OPTS=0 python tests/data/official/augment/generate.py \
      --automl AUTOML/efficientnetv2 --tpu TPU/models/official/efficientnet \
      [--out tests/data/official/augment/golden.npz]

Both official files are run; the script stops if they disagree on any case, and stores one set of outputs.

Shims for modules that no longer install with TensorFlow 2.21 (same arithmetic, listed in README.md):
  * `tensorflow_addons.image` (automl) and `tensorflow.contrib.image` (tpu): `transform`, `rotate`, `translate`
    build the same 8-number transform rows as those libraries (`angles_to_projective_transforms`,
    `translations_to_projective_transforms`, in float32) and run TF core's ImageProjectiveTransformV3 (automl's
    tfa) / ImageProjectiveTransformV2 (tpu's contrib) kernel, NEAREST, constant fill 0.
  * `hparams.Config` (automl) and `tensorflow.contrib.training.HParams` (tpu): attribute holders.
Pinned randomness: `_randomly_negate_tensor` is replaced by the official `tf.cond(flag, x, -x)` with the flag
given; Cutout's two `tf.random_uniform` draws return the given centre. Every op runs inside `tf.data.Dataset.map`
(graph mode, as the official input pipelines) with the flag and the centre fed as dataset elements: fed as
constants instead, TF's graph optimizer folds and reorders Rotate's offset arithmetic and a 45-degree rotation
moves 9 pixels. oneDNN is turned off (TF_ENABLE_ONEDNN_OPTS=0): the Eigen kernels the official
input pipelines ran on (TF <= 2.8 shipped without oneDNN on by default).
"""
import argparse
import importlib.util
import json
import os
import sys
import types

import numpy as np

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
import tensorflow as tf  # noqa: E402

# The magnitudes of issue 11 (decimal) and progressive learning's own floats (np.linspace(5, m, 4) of automl's
# main.py for m = 10, 15: 20/3, 25/3, 35/3 in float64).
MAGNITUDES = (5.0, 6.67, 8.33, 10.0, 11.67, 15.0, 20.0) + tuple(
    float(v) for v in (np.linspace(5, 10, 4)[1], np.linspace(5, 10, 4)[2], np.linspace(5, 15, 4)[2]))
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
NO_LEVEL = ('AutoContrast', 'Equalize', 'Invert')
LEVEL_OPS = ('Posterize', 'Solarize', 'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'Cutout')
RANDAUGMENT = {'cutout_const': 40, 'translate_const': 100}
AUTOAUGMENT = {'cutout_const': 100, 'translate_const': 250}


# ---------------------------------------------------------------------------------------------- shims
def _rows_rotate(angles, height, width):
  """tfa / contrib `angles_to_projective_transforms` (float32)."""
  angles = tf.convert_to_tensor(angles, tf.float32)[None]
  cos, sin = tf.math.cos(angles), tf.math.sin(angles)
  x_off = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
  y_off = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
  return tf.concat([cos[:, None], -sin[:, None], x_off[:, None], sin[:, None], cos[:, None], y_off[:, None],
                    tf.zeros((1, 2), tf.float32)], axis=1)


def _rows_translate(translations):
  """tfa / contrib `translations_to_projective_transforms` (float32): [1, 0, -dx, 0, 1, -dy, 0, 0]."""
  t = tf.convert_to_tensor(translations, tf.float32)[None]
  one, zero = tf.ones((1, 1)), tf.zeros((1, 1))
  return tf.concat([one, zero, -t[:, 0, None], zero, one, -t[:, 1, None], tf.zeros((1, 2))], axis=1)


def _image_module(kernel):
  """A `tfa.image` / `tf.contrib.image` stand-in whose transform runs `kernel` (a TF core raw op)."""

  def transform(images, transforms, interpolation='NEAREST', output_shape=None, name=None):
    del name
    images = tf.convert_to_tensor(images)
    batch = images[None]
    transforms = tf.convert_to_tensor(transforms, tf.float32)
    transforms = transforms[None] if transforms.shape.ndims == 1 else transforms
    shape = tf.shape(batch)[1:3] if output_shape is None else tf.convert_to_tensor(output_shape, tf.int32)
    extra = {'fill_value': tf.constant(0.0)} if kernel is tf.raw_ops.ImageProjectiveTransformV3 else {}
    out = kernel(images=batch, transforms=transforms, output_shape=shape, interpolation=interpolation.upper(),
                 fill_mode='CONSTANT', **extra)
    return out[0]

  def rotate(images, angles, interpolation='NEAREST'):
    shape = tf.shape(images)
    rows = _rows_rotate(angles, tf.cast(shape[0], tf.float32)[None], tf.cast(shape[1], tf.float32)[None])
    return transform(images, rows, interpolation)

  def translate(images, translations, interpolation='NEAREST'):
    return transform(images, _rows_translate(translations), interpolation)

  return types.SimpleNamespace(transform=transform, rotate=rotate, translate=translate)


class _Params:
  def __init__(self, **kw):
    self.__dict__.update(kw)


def _install_shims():
  tfa = types.ModuleType('tensorflow_addons')
  tfa.image = _image_module(tf.raw_ops.ImageProjectiveTransformV3)
  sys.modules['tensorflow_addons'] = tfa
  sys.modules['tensorflow_addons.image'] = tfa.image
  sys.modules['hparams'] = types.SimpleNamespace(Config=_Params)
  contrib = types.ModuleType('tensorflow.contrib')
  contrib.image = _image_module(tf.raw_ops.ImageProjectiveTransformV2)
  contrib.training = types.SimpleNamespace(HParams=_Params)
  sys.modules['tensorflow.contrib'] = contrib


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class _PinnedTF:
  """The official module's `tf` (compat.v1) with `random_uniform` answering the pinned Cutout centre."""

  def __init__(self, real):
    self._real, self.draws = real, []

  def __getattr__(self, name):
    return getattr(self._real, name)

  def random_uniform(self, shape, minval=0, maxval=None, dtype=tf.float32, **kw):
    if self.draws:
      return tf.cast(self.draws.pop(0), dtype)
    return self._real.random_uniform(shape, minval=minval, maxval=maxval, dtype=dtype, **kw)


# ---------------------------------------------------------------------------------------------- running
def _run(module, image, op, level, consts, sign, centre):
  """The official op `op` at `level`: args from `_parse_policy_info` (its level_to_arg), then the op itself, run in
  a tf.data map (graph mode, as the official input pipelines) with the pinned draws fed as dataset elements, so that
  TF's graph optimizer treats them as it treats the random draws (not as constants it could fold)."""
  params = module.hparams.Config(**consts) if hasattr(module, 'hparams') else module.contrib_training.HParams(
      **consts)

  def graph(x, flag, draws):
    module.tf.draws = [draws[0], draws[1]] if centre else []
    module._randomly_negate_tensor = lambda t: tf.cond(flag, lambda: t, lambda: -t)
    func, _, args = module._parse_policy_info(op, 0.5, level, [128] * 3, params)
    return func(x, *args)

  elements = (image, tf.constant(sign > 0), tf.constant(list(centre or (0, 0)), tf.int32))
  return next(iter(tf.data.Dataset.from_tensors(elements).map(graph))).numpy()


def _photos():
  """(name, uint8 HWC): real photos from scikit-image, resized to small odd sizes."""
  from PIL import Image
  from skimage import data

  def sized(a, h, w):
    return np.asarray(Image.fromarray(a).resize((w, h), Image.LANCZOS))

  return [('astronaut_64x48', sized(data.astronaut()[40:360, 100:340], 64, 48)),
          ('coffee_37x53', sized(data.coffee(), 37, 53))]


def _cases():
  """(set, op, level, sign, centre_index): every op x magnitude x sign pin, RandAugment and AutoAugment sets."""
  cases = [('ra', op, None, 1, None) for op in NO_LEVEL]
  for m in MAGNITUDES:
    cases += [('ra', op, m, s, None) for op in GEOMETRIC for s in (1, -1)]
    cases += [('ra', op, m, 1, None) for op in LEVEL_OPS if op != 'Cutout']
    cases += [('ra', 'Cutout', m, 1, c) for c in (0, 1)]
    cases += [('aa', op, m, s, None) for op in ('TranslateX', 'TranslateY') for s in (1, -1)]
    cases += [('aa', 'Cutout', m, 1, c) for c in (0, 1)]
  return cases + _policy_cases()


def _policy_cases():
  """The (op, integer level) pairs of AutoAugment policy v0 (automl's policy_v0), AutoAugment constants."""
  pairs = sorted({('Rotate', 0), ('Color', 0), ('Posterize', 2), ('Posterize', 6), ('Solarize', 2),
                  ('Solarize', 3), ('Solarize', 4), ('Solarize', 8), ('Solarize', 10), ('SolarizeAdd', 3),
                  ('SolarizeAdd', 7), ('Color', 1), ('Color', 4), ('Color', 6), ('Color', 7), ('Color', 9),
                  ('Rotate', 2), ('Rotate', 5), ('Rotate', 7), ('Rotate', 8), ('Rotate', 9), ('ShearX', 9),
                  ('ShearY', 0), ('ShearY', 3), ('ShearY', 4), ('ShearY', 7), ('TranslateY', 9)})
  out = []
  for op, level in pairs:
    out += [('aa', op, level, s, None) for s in ((1, -1) if op in GEOMETRIC else (1,))]
  return out


def centres(height, width):
  """Cutout centres: one inside (the box fits at small pads), one near the bottom-right corner (clipped)."""
  return [(height // 3, width // 2), (height - 2, width - 3)]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--automl', required=True, help="google/automl's efficientnetv2 folder")
  ap.add_argument('--tpu', required=True, help="tensorflow/tpu's models/official/efficientnet folder")
  ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden.npz'))
  args = ap.parse_args()
  _install_shims()
  modules = [_load('automl_autoaugment', f'{args.automl}/autoaugment.py'),
             _load('tpu_autoaugment', f'{args.tpu}/autoaugment.py')]
  for m in modules:
    m.tf = _PinnedTF(m.tf)
  photos = _photos()
  arrays = {f'image_{i}': img for i, (_, img) in enumerate(photos)}
  index = []
  for k, (set_name, op, level, sign, centre) in enumerate(_cases()):
    consts = RANDAUGMENT if set_name == 'ra' else AUTOAUGMENT
    for i, (_, img) in enumerate(photos):
      c = None if centre is None else centres(*img.shape[:2])[centre]
      level_arg = 0.0 if level is None else level
      outs = [_run(m, img, op, level_arg, consts, sign, c) for m in modules]
      if not np.array_equal(outs[0], outs[1]):
        raise SystemExit(f'automl and tpu disagree: {set_name} {op} {level} {sign} image {i}')
      key = f'out_{len(index)}'
      arrays[key] = outs[0]
      index.append({'key': key, 'set': set_name, 'op': op, 'level': level, 'sign': sign, 'image': i,
                    'centre': c, **consts})
  arrays['index'] = np.asarray(json.dumps({'photos': [n for n, _ in photos], 'cases': index}))
  np.savez_compressed(args.out, **arrays)
  print(f'{len(index)} outputs -> {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)')


if __name__ == '__main__':
  main()
