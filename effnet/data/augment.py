"""Host-side image augmentation (TensorFlow ops, one HWC uint8 image, tf.data-map friendly).

Why this module exists: EfficientNet v1 (AutoAugment / RandAugment) and v2 (RandAugment whose magnitude
grows with progressive learning) train on the 16 ops of the official `autoaugment.py`
(google/automl efficientnetv2 @6a54c87, tensorflow/tpu models/official/efficientnet). This module
reimplements them (our own code, the official one read for facts only); `effnet.data.pipeline` applies
them after its crop / resize / flip, and `effnet.data.randaugment_jax` is checked against them.

Facts kept from the official code (with its quirks, on purpose):
  * RandAugment: N layers, each picks one of the 16 ops uniformly and ALWAYS applies it (the sampled
    `prob` of the official loop is unused); one shared magnitude, a float is fine (6.67 from
    progressive learning). Constants: cutout 40 px, translate 100 px; AutoAugment v0: 100 / 250.
  * level -> argument (level/10 scaling): rotate 30 deg, shear 0.3, translate const, all three with a
    random sign; enhance ops (Color/Contrast/Brightness/Sharpness) 1.8*l/10+0.1 with NO sign;
    Posterize int(4*l/10) bits; Solarize int(256*l/10); SolarizeAdd int(110*l/10); Cutout int(c*l/10).
    Computed as the official code does: Python float64, one rounding to float32 (`level_args`,
    `policy.level_arguments`); a float32 magnitude would move some arguments by 1 ulp.
  * Geometric ops use NEAREST sampling and fill 128 (the official wrap/unwrap alpha-channel trick is
    equivalent to a V3 projective transform with fill_value=128 under nearest sampling).
  * Quirks reproduced: Solarize's threshold is converted to uint8, so 256 (M=10) wraps to 0 and
    Solarize at M=10 inverts every pixel; Posterize's shift is clamped to [0, 7] by TF's CPU kernel
    (bits 0 behaves like 1 bit, bits > 8 likewise); Contrast's "mean" is the histogram SUM / 256,
    i.e. H*W/256 (>=255 for any image >= 256x255 px), not the grey mean (`contrast(..., pil=True)`
    gives the PIL semantics instead); blends truncate (cast) like PIL's ImagingBlend; Sharpness's
    smoothing sums the 3x3 taps in the order of TF's Eigen depthwise conv.
Every op equals the official function's output bit for bit (tests/test_official_augment.py,
docs/fidelity.md §3), run through tf.data as the pipeline runs it.
Speed choices (the official graph is input-bound at ~100 img/s/core): Equalize one bincount over the
3 channels, AutoContrast vectorised per channel, ops dispatched by tf.switch_case (only the chosen
branch runs).

Randomness: every function takes `seed` (shape [2] int tensor, stateless RNG) so a pipeline can be
deterministic; seed=None draws one from the global generator.
"""
from __future__ import annotations

import math

import tensorflow as tf

# Official RandAugment op order (index = switch_case branch) and level scales, shared with the on-device version.
from effnet.data.policy import (ARG, ARGUMENTS, AUTOAUGMENT_CUTOUT, AUTOAUGMENT_TRANSLATE,  # noqa: F401
                                ENHANCE_OFFSET, ENHANCE_SCALE, FILL_VALUE, GEOMETRIC_OPS, LEVEL_SCALES, MAX_LEVEL,
                                OP_INDEX, RANDAUGMENT_CUTOUT, RANDAUGMENT_OPS, RANDAUGMENT_TRANSLATE,
                                level_arguments)

IDENTITY_OP = -1  # layer index meaning "not applied" (AutoAugment prob failed)

# AutoAugment policy v0 (AutoAugment paper, ImageNet): 25 sub-policies of (op, prob, magnitude).
POLICY_V0 = (
    (('Equalize', 0.8, 1), ('ShearY', 0.8, 4)),
    (('Color', 0.4, 9), ('Equalize', 0.6, 3)),
    (('Color', 0.4, 1), ('Rotate', 0.6, 8)),
    (('Solarize', 0.8, 3), ('Equalize', 0.4, 7)),
    (('Solarize', 0.4, 2), ('Solarize', 0.6, 2)),
    (('Color', 0.2, 0), ('Equalize', 0.8, 8)),
    (('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)),
    (('ShearX', 0.2, 9), ('Rotate', 0.6, 8)),
    (('Color', 0.6, 1), ('Equalize', 1.0, 2)),
    (('Invert', 0.4, 9), ('Rotate', 0.6, 0)),
    (('Equalize', 1.0, 9), ('ShearY', 0.6, 3)),
    (('Color', 0.4, 7), ('Equalize', 0.6, 0)),
    (('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)),
    (('Solarize', 0.6, 8), ('Color', 0.6, 9)),
    (('Solarize', 0.2, 4), ('Rotate', 0.8, 9)),
    (('Rotate', 1.0, 7), ('TranslateY', 0.8, 9)),
    (('ShearX', 0.0, 0), ('Solarize', 0.8, 4)),
    (('ShearY', 0.8, 0), ('Color', 0.6, 4)),
    (('Color', 1.0, 0), ('Rotate', 0.6, 2)),
    (('Equalize', 0.8, 4), ('Equalize', 0.0, 8)),
    (('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)),
    (('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)),
    (('Posterize', 0.8, 2), ('Solarize', 0.6, 10)),
    (('Solarize', 0.6, 8), ('Equalize', 0.6, 1)),
    (('Color', 0.8, 6), ('Rotate', 0.4, 5)),
)
POLICIES = {'v0': POLICY_V0}


# ----------------------------------------------------------------------------------------------
# helpers
def _as_seed(seed) -> tf.Tensor:
  if seed is None:
    return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
  return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _split(seed, num: int) -> tf.Tensor:
  return tf.random.experimental.stateless_split(seed, num)


def _uniform(seed, minval=0.0, maxval=1.0, dtype=tf.float32):
  return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval, dtype=dtype)


def _random_sign(seed) -> tf.Tensor:
  """+1 or -1 with probability 1/2 (official `_randomly_negate_tensor`)."""
  return tf.where(_uniform(seed) < 0.5, -1.0, 1.0)


def blend(image1, image2, factor):
  """Official/PIL blend: image1 + factor*(image2-image1), clipped to [0,255], truncated to uint8.

  For 0<=factor<=1 the clip is a no-op, so one formula covers the official interpolate/extrapolate
  branches and a traced factor works.
  """
  a = tf.cast(image1, tf.float32)
  b = tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(a + tf.cast(factor, tf.float32) * (b - a), 0.0, 255.0), tf.uint8)


def _transform(image, matrix, fill_value=FILL_VALUE):
  """One ImageProjectiveTransformV3, NEAREST, constant fill. matrix: [3,3] map from OUTPUT (x=col, y=row, 1) to
  SOURCE."""
  m = tf.reshape(tf.cast(matrix, tf.float32), [9])
  m = m[:8] / m[8]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=m[None], output_shape=tf.cast(tf.shape(image)[:2], tf.int32),
      fill_value=tf.cast(fill_value, tf.float32), interpolation='NEAREST', fill_mode='CONSTANT')
  return out[0]


def _mat(a, b, c, d, e, f):
  z = tf.constant(0.0)
  o = tf.constant(1.0)
  return tf.reshape(tf.stack([tf.cast(v, tf.float32) for v in (a, b, c, d, e, f)] + [z, z, o]), [3, 3])


def rotate_matrix(degrees, height, width):
  """tfa.image.rotate's matrix (counter-clockwise about the image centre, output->source).

  radians = float32 degrees * float32(pi/180), then TF's float32 cos / sin, as the official `rotate`.
  """
  rad = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  c, s = tf.cos(rad), tf.sin(rad)
  w1 = tf.cast(width, tf.float32) - 1.0
  h1 = tf.cast(height, tf.float32) - 1.0
  xo = (w1 - (c * w1 - s * h1)) / 2.0
  yo = (h1 - (s * w1 + c * h1)) / 2.0
  return _mat(c, -s, xo, s, c, yo)


def shear_x_matrix(level):
  return _mat(1.0, level, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(level):
  return _mat(1.0, 0.0, 0.0, level, 1.0, 0.0)


def translate_x_matrix(pixels):
  # official translate_x(image, pixels) -> tfa translate([-pixels, 0]) -> source x = x + pixels.
  return _mat(1.0, 0.0, pixels, 0.0, 1.0, 0.0)


def translate_y_matrix(pixels):
  return _mat(1.0, 0.0, 0.0, 0.0, 1.0, pixels)


# ----------------------------------------------------------------------------------------------
# the 16 ops (uint8 HWC in, uint8 HWC out)
def autocontrast(image):
  """PIL ImageOps.autocontrast(cutoff=0) per channel: map [min,max] -> [0,255]; flat channel kept."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  offset = -lo * scale
  scaled = tf.cast(tf.clip_by_value(tf.cast(image, tf.float32) * scale + offset, 0.0, 255.0), tf.uint8)
  return tf.where(hi > lo, scaled, image)


def equalize(image):
  """PIL ImageOps.equalize per channel (LUT from the histogram with the PIL step rule)."""
  x = tf.cast(image, tf.int32)
  idx = x + tf.constant([0, 256, 512], tf.int32)
  hist = tf.reshape(tf.math.bincount(tf.reshape(idx, [-1]), minlength=768, maxlength=768), [3, 256])
  # step = (sum(nonzero) - count of the last nonzero bin) // 255
  last = tf.reduce_max(tf.where(hist > 0, tf.range(256)[None, :], -1), axis=1)
  last_count = tf.gather(hist, tf.maximum(last, 0), batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
  safe = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(hist, axis=1) + safe // 2) // safe
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
  lut = tf.where(step[:, None] == 0, tf.range(256)[None, :], lut)
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), idx), tf.uint8)


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keep the top `bits` bits. Shift = 8-bits (as uint8) clamped to [0,7] like TF's CPU kernel."""
  shift = tf.math.floormod(8 - tf.cast(bits, tf.int32), 256)
  shift = tf.minimum(shift, 7)
  mask = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, shift), 255), tf.uint8)
  return tf.bitwise.bitwise_and(image, mask)


def solarize(image, threshold=128):
  """Pixels >= threshold are inverted. threshold is taken mod 256 (official uint8 conversion)."""
  t = tf.math.floormod(tf.cast(threshold, tf.int32), 256)
  return tf.where(tf.cast(image, tf.int32) < t, image, 255 - image)


def solarize_add(image, addition=0, threshold=128):
  added = tf.clip_by_value(tf.cast(image, tf.int32) + tf.cast(addition, tf.int32), 0, 255)
  return tf.where(tf.cast(image, tf.int32) < threshold, tf.cast(added, tf.uint8), image)


def grayscale(image):
  """tf.image.rgb_to_grayscale on uint8 (the official degenerate of Color/Contrast)."""
  return tf.image.rgb_to_grayscale(image)


def color(image, factor):
  return blend(tf.image.grayscale_to_rgb(grayscale(image)), image, factor)


def contrast(image, factor, pil=False):
  """Blend towards a constant grey. Official: grey = H*W/256 clipped to 255 (histogram-sum quirk).

  pil=True: grey = round(mean of the L image) as PIL ImageEnhance.Contrast.
  """
  if pil:
    g = tf.cast(grayscale(image), tf.float32)
    mean = tf.floor(tf.reduce_mean(g) + 0.5)
  else:
    npix = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
    mean = tf.floor(tf.clip_by_value(npix / 256.0, 0.0, 255.0))
  return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL Sharpness as the official code computes it: blend(SMOOTH(image) with the original 1-px border, image, f).

  SMOOTH is the official depthwise conv with kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 in float32, whose CPU kernel
  (Eigen, TF_ENABLE_ONEDNN_OPTS=0) sums the nine products tap by tap in row-major order, each product and each sum
  rounded to float32; the same sequence here gives the same bits (the exact (box + 4·centre) / 13 differs by one
  grey level at ~0.1 % of pixels, which a factor > 1 amplifies up to 3). Then clip and truncate to uint8.
  """
  x = tf.cast(image, tf.float32)
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  edge, centre = tf.constant(1.0) / 13.0, tf.constant(5.0) / 13.0
  acc = tf.zeros_like(x[1:-1, 1:-1])
  for i in range(3):
    for j in range(3):
      acc = acc + x[i:h - 2 + i, j:w - 2 + j] * (centre if (i, j) == (1, 1) else edge)
  smooth = tf.floor(tf.clip_by_value(acc, 0.0, 255.0))
  inner = x[1:-1, 1:-1]
  f = tf.cast(factor, tf.float32)
  mixed = tf.cast(tf.clip_by_value(smooth + f * (inner - smooth), 0.0, 255.0), tf.uint8)
  mid = tf.concat([image[1:-1, :1], mixed, image[1:-1, -1:]], axis=1)
  return tf.concat([image[:1], mid, image[-1:]], axis=0)


def rotate(image, degrees, fill=FILL_VALUE):
  shape = tf.shape(image)
  return _transform(image, rotate_matrix(degrees, shape[0], shape[1]), fill_value=fill)


def shear_x(image, level, fill=FILL_VALUE):
  return _transform(image, shear_x_matrix(level), fill_value=fill)


def shear_y(image, level, fill=FILL_VALUE):
  return _transform(image, shear_y_matrix(level), fill_value=fill)


def translate_x(image, pixels, fill=FILL_VALUE):
  return _transform(image, translate_x_matrix(pixels), fill_value=fill)


def translate_y(image, pixels, fill=FILL_VALUE):
  return _transform(image, translate_y_matrix(pixels), fill_value=fill)


def cutout(image, pad_size, fill=FILL_VALUE, seed=None, centre=None):
  """Official cutout: rows [cy-pad, cy+pad) x cols [cx-pad, cx+pad) around a uniform pixel, clipped to the image,
  set to `fill` (scalar or per channel). The one cutout of the host pipeline: RandAugment / AutoAugment's op and
  `effnet.data.pipeline`'s 'ft' augment. `centre` (cy, cx) replaces the random draw (tests pin it)."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  if centre is None:
    s_y, s_x = tf.unstack(_split(_as_seed(seed), 2))
    centre = (tf.random.stateless_uniform([], s_y, 0, height, dtype=tf.int32),
              tf.random.stateless_uniform([], s_x, 0, width, dtype=tf.int32))
  cy, cx = (tf.cast(v, tf.int32) for v in centre)
  pad = tf.cast(pad_size, tf.int32)
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = (rows >= cy - pad) & (rows < cy + pad) & (cols >= cx - pad) & (cols < cx + pad)
  return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


# ----------------------------------------------------------------------------------------------
# level -> argument, in the official precision (policy.level_arguments)
def level_args(magnitude, cutout_const=RANDAUGMENT_CUTOUT, translate_const=RANDAUGMENT_TRANSLATE) -> tf.Tensor:
  """float32 [len(ARGUMENTS)] op arguments at `magnitude` (indexed by policy.ARG).

  A Python / numpy number (what the pipeline passes) goes through `policy.level_arguments`: float64, then one
  rounding to float32, as the official `level_to_arg`. A tensor is computed in tf.float64 with the same formulas;
  it is exact only if it holds the float64 magnitude (a float32 magnitude has already lost it).
  """
  if not tf.is_tensor(magnitude):
    return tf.constant(level_arguments(magnitude, cutout_const, translate_const))
  level = tf.cast(magnitude, tf.float64) / MAX_LEVEL
  degrees = tf.cast(level * LEVEL_SCALES['Rotate'], tf.float32)
  rad = degrees * (math.pi / 180.0)
  floor = lambda v: tf.floor(level * v)
  values = {'degrees': degrees, 'cos': tf.cos(rad), 'sin': tf.sin(rad), 'shear': level * LEVEL_SCALES['ShearX'],
            'translate': level * float(translate_const), 'enhance': level * ENHANCE_SCALE + ENHANCE_OFFSET,
            'posterize': floor(LEVEL_SCALES['Posterize']), 'solarize': floor(LEVEL_SCALES['Solarize']),
            'solarize_add': floor(LEVEL_SCALES['SolarizeAdd']), 'cutout': floor(float(cutout_const))}
  return tf.stack([tf.cast(values[name], tf.float32) for name in ARGUMENTS])


def _int(args, name):
  return tf.cast(args[ARG[name]], tf.int32)


def geometric_matrix(op, args, sign, height, width):
  """[3,3] output->source matrix of layer op `op` (int tensor) with arguments `args` and sign +-1; identity for
  non-geometric ops.

  Plain arithmetic + selects (no nested tf.switch_case: inside tf.data every functional control-flow
  op costs ~0.1-1 ms per call, which dominated an earlier version).
  """
  op = tf.cast(op, tf.int32)
  is_op = lambda name: tf.equal(op, OP_INDEX[name])
  # The argument of the op, signed (official `_randomly_negate_tensor`); randaugment_jax.geometric_matrices makes
  # the same selects with jnp (that module stays TF-free).
  arg = tf.where(is_op('Rotate'), args[ARG['degrees']],
                 tf.where(is_op('ShearX') | is_op('ShearY'), args[ARG['shear']],
                          tf.where(is_op('TranslateX') | is_op('TranslateY'), args[ARG['translate']], 0.0)))
  v = arg * tf.cast(sign, tf.float32)
  rot = rotate_matrix(v, height, width)
  z = tf.constant(0.0)
  f = lambda name: tf.where(is_op(name), v, z)
  aff = _mat(1.0, f('ShearX'), f('TranslateX'), f('ShearY'), 1.0, f('TranslateY'))
  return tf.where(is_op('Rotate'), rot, aff)


def _apply_op(image, op, args, sign, centre):
  """Apply op number `op` (IDENTITY_OP = no-op) with arguments `args`, sign `sign` and cutout centre `centre`."""
  shape = tf.shape(image)
  ident = lambda: image
  enhance = args[ARG['enhance']]

  def geo():
    return _transform(image, geometric_matrix(op, args, sign, shape[0], shape[1]))

  branches = {
      'AutoContrast': lambda: autocontrast(image),
      'Equalize': lambda: equalize(image),
      'Invert': lambda: invert(image),
      'Posterize': lambda: posterize(image, _int(args, 'posterize')),
      'Solarize': lambda: solarize(image, _int(args, 'solarize')),
      'SolarizeAdd': lambda: solarize_add(image, _int(args, 'solarize_add')),
      'Color': lambda: color(image, enhance),
      'Contrast': lambda: contrast(image, enhance),
      'Brightness': lambda: brightness(image, enhance),
      'Sharpness': lambda: sharpness(image, enhance),
      'Cutout': lambda: cutout(image, _int(args, 'cutout'), centre=centre),
  }
  for name in GEOMETRIC_OPS:
    branches[name] = geo
  fns = [branches[name] for name in RANDAUGMENT_OPS] + [ident]
  idx = tf.where(tf.cast(op, tf.int32) < 0, len(RANDAUGMENT_OPS), tf.cast(op, tf.int32))
  out = tf.switch_case(idx, fns)
  out.set_shape(image.shape)
  return out


def _draws(seed, image):
  """The layer's random sign (official `_randomly_negate_tensor`) and cutout centre, from one seed."""
  s_sign, s_y, s_x = tf.unstack(_split(seed, 3))
  shape = tf.shape(image)
  centre = (tf.random.stateless_uniform([], s_y, 0, shape[0], dtype=tf.int32),
            tf.random.stateless_uniform([], s_x, 0, shape[1], dtype=tf.int32))
  return _random_sign(s_sign), centre


def apply_op(image, name: str, magnitude, seed=None, cutout_const=RANDAUGMENT_CUTOUT,
             translate_const=RANDAUGMENT_TRANSLATE, sign=None, centre=None):
  """Apply one named op at `magnitude` with the official level->argument mapping. The random sign and cutout
  centre come from `seed` unless given (`sign` +-1, `centre` (cy, cx): the tests pin them)."""
  if name not in OP_INDEX:
    raise ValueError(f'op name must be one of {RANDAUGMENT_OPS}, got {name!r}')
  image = tf.convert_to_tensor(image)
  drawn_sign, drawn_centre = _draws(_as_seed(seed), image)
  return _apply_op(image, OP_INDEX[name], level_args(magnitude, cutout_const, translate_const),
                   drawn_sign if sign is None else sign, drawn_centre if centre is None else centre)


# ----------------------------------------------------------------------------------------------
# layer sampling
def _randaugment_layers(num_layers, args, seed):
  seeds = _split(seed, num_layers)
  ops, layer_args, arg_seeds = [], [], []
  for i in range(num_layers):
    s_op, s_arg = tf.unstack(_split(seeds[i], 2))
    ops.append(tf.random.stateless_uniform([], s_op, 0, len(RANDAUGMENT_OPS), dtype=tf.int32))
    layer_args.append(args)
    arg_seeds.append(s_arg)
  return ops, layer_args, arg_seeds


def _autoaugment_layers(policy, seed):
  if policy not in POLICIES:
    raise ValueError(f'policy must be one of {sorted(POLICIES)}, got {policy!r}')
  table = POLICIES[policy]
  n = len(table[0])
  op_t = tf.constant([[OP_INDEX[o] for o, _, _ in sub] for sub in table], tf.int32)
  prob_t = tf.constant([[p for _, p, _ in sub] for sub in table], tf.float32)
  args_t = tf.constant([[level_arguments(m, AUTOAUGMENT_CUTOUT, AUTOAUGMENT_TRANSLATE) for _, _, m in sub]
                        for sub in table])
  s_pick, s_layers = tf.unstack(_split(seed, 2))
  k = tf.random.stateless_uniform([], s_pick, 0, len(table), dtype=tf.int32)
  seeds = _split(s_layers, n)
  ops, layer_args, arg_seeds = [], [], []
  for i in range(n):
    s_prob, s_arg = tf.unstack(_split(seeds[i], 2))
    # official: apply iff floor(u + prob) == 1  <=>  u >= 1 - prob
    applied = tf.floor(_uniform(s_prob) + prob_t[k, i]) >= 1.0
    ops.append(tf.where(applied, op_t[k, i], IDENTITY_OP))
    layer_args.append(args_t[k, i])
    arg_seeds.append(s_arg)
  return ops, layer_args, arg_seeds


def _apply_layers(image, ops, layer_args, arg_seeds):
  for op, args, s in zip(ops, layer_args, arg_seeds):
    sign, centre = _draws(s, image)
    image = _apply_op(image, op, args, sign, centre)
  return image


def _uint8_image(image):
  """The ops' blend / cast rules are those of uint8 (the official code's dtype): anything else is refused."""
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise ValueError(f'image dtype must be uint8, got {image.dtype}')
  return image


def randaugment(image, num_layers: int = 2, magnitude=10.0, seed=None, cutout_const=RANDAUGMENT_CUTOUT,
                translate_const=RANDAUGMENT_TRANSLATE):
  """RandAugment (v2 official): num_layers ops drawn uniformly from the 16, each always applied. `magnitude`: a
  Python float (exact official arithmetic, see `level_args`)."""
  if int(num_layers) < 0:
    raise ValueError(f'num_layers must be >= 0, got {num_layers}')
  image = _uint8_image(image)
  args = level_args(magnitude, cutout_const, translate_const)
  return _apply_layers(image, *_randaugment_layers(int(num_layers), args, _as_seed(seed)))


def autoaugment(image, policy: str = 'v0', seed=None):
  """AutoAugment: one of the policy's sub-policies uniformly; each op applied with its prob."""
  image = _uint8_image(image)
  return _apply_layers(image, *_autoaugment_layers(policy, _as_seed(seed)))
