"""On-device RandAugment (JAX only, jit-friendly, batched, traced magnitude).

Why this module exists: the official host RandAugment (TF, one image at a time) runs at ~100 img/s
per CPU core at 300 px, so a fast accelerator needs far more host cores than a machine has. With
`data.randaug_on_device=True` the host only decodes / crops / resizes / flips (~800 img/s/core) and
this module applies RandAugment to the uint8 batch inside the jitted train step. The magnitude's
arguments are a traced vector, so progressive learning changes them per stage without recompiling.

Semantics are those of the host ops in `effnet.data.augment` (which follow the official
`autoaugment.py` of google/automl efficientnetv2, quirks included):
  * the 16 ops in the official order (`RANDAUGMENT_OPS`); each of the `num_layers` layers draws one
    op per SAMPLE uniformly and always applies it; one shared magnitude; fill value 128.
  * level = magnitude / 10. Rotate 30*level deg, Shear 0.3*level, Translate 100*level px, each with
    a random sign (sign -1 with probability 1/2); Color/Contrast/Brightness/Sharpness factor
    1.8*level + 0.1 (no sign); Posterize floor(4*level) bits (shift = (8-bits) mod 256 clamped to
    7, like TF's CPU kernel); Solarize threshold floor(256*level) mod 256 (M=10 inverts every
    pixel); SolarizeAdd +floor(110*level) below 128; Cutout half-side floor(40*level), centre
    uniform over the image, box [c-pad, c+pad) clipped.
  * Contrast blends towards the official histogram-sum "mean" H*W/256 (clipped to 255), not the
    grey mean; blends are clip + truncate (PIL ImagingBlend).

Batched design (one pass per layer, every sample in the batch at once, static shapes):
  1. geometric ops: one per-sample 3x3 output->source matrix (identity for non-geometric ops) and
     ONE nearest-neighbour gather (rounding half away from zero like ImageProjectiveTransformV3
     NEAREST with std::round), out-of-image source -> 128.
  2. pointwise ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness,
     Contrast) are all per-sample per-channel 256-entry lookup tables (Contrast's quirky mean
     depends only on the image size), selected by the op index and applied with ONE gather.
     Equalize's LUT comes from a 256-bin per-channel histogram (segment_sum) + cumsum with PIL's
     step rule; it is computed for at most `EQUALIZE_CAPACITY(B)` samples (the ones that drew
     Equalize, gathered to the front), with an exact full-batch fallback under lax.cond when more
     samples drew it than that capacity (probability < 1e-6 per layer for B=128).
  3. Color (grey via tf.image.rgb_to_grayscale's float formula), Sharpness (the official float32
     depthwise conv with [[1,1,1],[1,5,1],[1,1,1]]/13, summed tap by tap as TF's Eigen kernel does,
     truncated, 1-px border kept) and Cutout (per-sample box mask) are elementwise / 3x3 stencils,
     computed for the batch and selected with jnp.where.

Magnitude -> arguments (`magnitude_args`): the official code computes them in Python float64 and
rounds once to float32; a concrete magnitude or the `policy.level_arguments` vector (what the train
step passes, traced, so stages do not recompile) gives exactly those values, cos / sin of Rotate
included. A traced float32 scalar is also accepted: its arguments are computed in float32 on device,
exact for magnitudes that are multiples of 1/8 except cos / sin at a few, and elsewhere up to 1 ulp away
(an integer argument 1 away: SolarizeAdd at M=23 gives +253 for +252), enough to flip nearest-pixel
ties and blend truncations. Outputs equal the official ones bit for bit on the golden set, with the
vector and with a traced scalar (tests/test_official_augment.py, docs/fidelity.md §3).

Deviations from the host version (documented, tested where it matters):
  * random draws come from jax.random, so a given seed does not reproduce the host's draws.
  * bit-exactness relies on keeping XLA from fusing products into FMAs (`_mul`) and from turning
    divisions by constants into reciprocal multiplies (`_div`).
  * Color / Sharpness / Equalize run on at most EQUALIZE_CAPACITY(B) samples per layer (exact
    full-batch fallback when more drew them), so their cost is ~1/16 of the batch, not all of it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from effnet.data.mix import box_masks
from effnet.data.policy import (ARG, ARGUMENTS, ENHANCE_OFFSET, ENHANCE_SCALE, FILL_VALUE,  # noqa: F401
                                GEOMETRIC_OPS, LEVEL_SCALES, MAX_LEVEL, OP_INDEX, RANDAUGMENT_CUTOUT,
                                RANDAUGMENT_OPS, RANDAUGMENT_TRANSLATE, level_arguments)

NUM_OPS = len(RANDAUGMENT_OPS)


def EQUALIZE_CAPACITY(batch: int) -> int:  # noqa: N802 (a constant-like rule)
  """Samples per layer whose Equalize histogram is computed on the fast path (mean B/16 + ~6 sd)."""
  mean = batch / NUM_OPS
  return int(min(batch, math.ceil(mean + 6.0 * math.sqrt(mean) + 2)))


def _on_subset(fn, images, mask):
  """fn(images) for the samples with mask (others: unspecified), computing fn on at most
  EQUALIZE_CAPACITY(B) samples (mask samples gathered to the front); exact full-batch fallback
  under lax.cond when more samples need it."""
  b = images.shape[0]
  cap = EQUALIZE_CAPACITY(b)
  if cap >= b:
    return fn(images)

  def subset(_):
    order = jnp.argsort(~mask, stable=True)[:cap]
    slot = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(cap, dtype=jnp.int32))
    return fn(images[order])[slot]

  return jax.lax.cond(jnp.sum(mask) > cap, lambda _: fn(images), subset, None)


# ----------------------------------------------------------------------------------------------
# magnitude -> arguments (traced-scalar friendly)
def _div(x, c):
  """float32 x / c, correctly rounded as on the host. Under jit XLA rewrites a division by a scalar (a constant, and
  on jax 0.12 even a traced one) as `x * (1/c)`, which is 1 ulp off for some values (M=9: 1.72 -> 1.7199999). A
  divisor with x's own shape that XLA cannot prove constant keeps the true division."""
  x = jnp.asarray(x, jnp.float32)
  divisor = jnp.where(jnp.isnan(x), x, jnp.float32(c))  # equal to c; `x != x` cannot be folded for floats
  return x / jax.lax.optimization_barrier(divisor)


def _traced_arguments(magnitude, cutout_const, translate_const):
  """The level arguments of a traced float32 magnitude, in float32: the official float64 values can be 1 ulp away
  (docs/fidelity.md §3), so the train step passes `magnitude_args` vectors instead.

  (m / 10) · scale is formed as (m · scale) / 10 (shear: (3 m) / 100): one rounding while m · scale is exact (m a
  multiple of 1/8 up to 30), which equals the official float64-then-float32 value at all 241 of those magnitudes;
  (m / 10) · scale rounds twice and missed it by 1 ulp at 115 of them for the shear, 36 for translate, 8 for degrees.
  cos / sin (XLA's float32 cos of the float32 radians) still differ by 1 ulp at a few (7 of the 241)."""
  m = jnp.asarray(magnitude, jnp.float32)
  scaled = lambda scale, divisor=MAX_LEVEL: _div(m * scale, divisor)
  degrees = scaled(LEVEL_SCALES['Rotate'])
  rad = degrees * np.float32(math.pi / 180.0)
  floor = lambda scale: jnp.floor(scaled(scale))  # exact m * scale
  values = {'degrees': degrees, 'cos': jnp.cos(rad), 'sin': jnp.sin(rad),
            'shear': scaled(round(LEVEL_SCALES['ShearX'] * 10), 100.0),  # 0.3 · m / 10 as 3 m / 100
            'translate': scaled(float(translate_const)),
            # 1.8 * level + 0.1 as (18 m + 10) / 100: one rounding when the numerator is exact (m a multiple of 1/64)
            'enhance': _div(jnp.asarray(magnitude, jnp.float32) * 18.0 + 10.0, 100.0),
            'posterize': floor(LEVEL_SCALES['Posterize']), 'solarize': floor(LEVEL_SCALES['Solarize']),
            'solarize_add': floor(LEVEL_SCALES['SolarizeAdd']), 'cutout': floor(float(cutout_const))}
  return jnp.stack([jnp.asarray(values[name], jnp.float32) for name in ARGUMENTS])


def magnitude_args(magnitude, cutout_const=RANDAUGMENT_CUTOUT, translate_const=RANDAUGMENT_TRANSLATE):
  """float32 [len(ARGUMENTS)] op arguments (indexed by policy.ARG) for `magnitude`, which may be:
  a Python / numpy number -> `policy.level_arguments` (float64 then float32, the official precision: exact);
  an argument vector of that shape (e.g. `policy.level_arguments(m)` passed as a traced value) -> used as is;
  a traced scalar -> float32 arithmetic on device (`_traced_arguments`, can be 1 ulp off between multiples of 1/8)."""
  if jnp.ndim(magnitude) == 1:
    if jnp.shape(magnitude) != (len(ARGUMENTS),):
      raise ValueError(f'magnitude must be a scalar or a [{len(ARGUMENTS)}] level_arguments vector, got shape '
                       f'{jnp.shape(magnitude)}')
    return jnp.asarray(magnitude, jnp.float32)
  try:
    value = float(magnitude)
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return _traced_arguments(magnitude, cutout_const, translate_const)
  return jnp.asarray(level_arguments(value, cutout_const, translate_const))


def _mul(f, n):
  """float32 f * n rounded ONCE, immune to FMA contraction; n integer-valued, |n| < 4096.

  The host (separate TF/Eigen ops) rounds a product before adding to it; inside a jit fusion XLA
  (CPU and GPU) contracts `a*b + c` into a fused multiply-add, which flips a truncation or a
  nearest-pixel .5 tie whenever the exact value sits next to one (measured before this helper:
  ShearY at M=10 moved 0.5% of pixels, Color 0.1% by one grey level), and an optimization
  barrier does not survive XLA's CPU pipeline. So f is split (bit mask) into a 12-bit head and
  the rest: both partial products are exact, their sum is rounded once = fl(f*n), and an FMA
  formed from either product gives the same bits.
  """
  f = jnp.asarray(f, jnp.float32)
  head = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(f, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32)
  tail = f - head
  n = jnp.asarray(n, jnp.float32)
  return head * n + tail * n


def _blend(a, b, factor):
  """a + f*(b-a), clipped to [0,255], truncated (a, b integral float32; same bits as the host)."""
  return jnp.floor(jnp.clip(a + _mul(factor, b - a), 0.0, 255.0))


# ----------------------------------------------------------------------------------------------
# random per-sample draws
def layer_params(rng, batch: int, height: int, width: int):
  """Per-sample draws of one layer: op [B] int32, sign [B] float32 (+-1), cutout centre cy, cx [B]."""
  k_op, k_sign, k_y, k_x = jax.random.split(rng, 4)
  return dict(
      op=jax.random.randint(k_op, (batch,), 0, NUM_OPS, dtype=jnp.int32),
      sign=jnp.where(jax.random.uniform(k_sign, (batch,)) < 0.5, -1.0, 1.0).astype(jnp.float32),
      cy=jax.random.randint(k_y, (batch,), 0, height, dtype=jnp.int32),
      cx=jax.random.randint(k_x, (batch,), 0, width, dtype=jnp.int32))


# ----------------------------------------------------------------------------------------------
# geometric ops: per-sample affine matrix + one nearest gather
def geometric_matrices(op, args, sign, height: int, width: int):
  """[B, 2, 3] output (x=col, y=row) -> source affine rows; identity for non-geometric ops.

  Rotate as the official tfa/contrib `angles_to_projective_transforms` in float32, each product and sum rounded in
  its order: x_offset = ((w-1) − (cos·(w-1) − sin·(h-1))) / 2, y_offset = ((h-1) − (sin·(w-1) + cos·(h-1))) / 2.
  """
  is_op = lambda name: op == OP_INDEX[name]
  # The signed argument of the op; augment.geometric_matrix makes the same selects with TF (this module is TF-free).
  arg = jnp.where(is_op('Rotate'), args[ARG['degrees']],
                  jnp.where(is_op('ShearX') | is_op('ShearY'), args[ARG['shear']],
                            jnp.where(is_op('TranslateX') | is_op('TranslateY'), args[ARG['translate']], 0.0)))
  v = arg * sign
  c = jnp.broadcast_to(args[ARG['cos']], v.shape)
  s = args[ARG['sin']] * sign  # sin is odd and cos even in TF's float32 kernels too
  w1, h1 = float(width - 1), float(height - 1)
  xo = _div(w1 - (_mul(c, w1) - _mul(s, h1)), 2.0)
  yo = _div(h1 - (_mul(s, w1) + _mul(c, h1)), 2.0)
  rot = jnp.stack([c, -s, xo, s, c, yo], axis=-1)
  z, o = jnp.zeros_like(v), jnp.ones_like(v)
  f = lambda name: jnp.where(is_op(name), v, z)
  aff = jnp.stack([o, f('ShearX'), f('TranslateX'), f('ShearY'), o, f('TranslateY')], axis=-1)
  return jnp.where(is_op('Rotate')[:, None], rot, aff).reshape(-1, 2, 3)


def _round_half_away(x):
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def warp_nearest(images, mats, fill=FILL_VALUE):
  """Per-sample affine warp, nearest sampling, constant fill. images uint8 [B,H,W,C]."""
  b, h, w, ch = images.shape
  ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  m = mats[:, :, :, None, None]  # [B,2,3,1,1]
  # (t0*x + t1*y) + t2 with each product rounded like the TF kernel (no FMA, see _mul)
  src_x = _round_half_away(_mul(m[:, 0, 0], xs) + _mul(m[:, 0, 1], ys) + m[:, 0, 2])
  src_y = _round_half_away(_mul(m[:, 1, 0], xs) + _mul(m[:, 1, 1], ys) + m[:, 1, 2])
  valid = (src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)
  xi = jnp.clip(src_x, 0, w - 1).astype(jnp.int32)
  yi = jnp.clip(src_y, 0, h - 1).astype(jnp.int32)
  idx = (jnp.arange(b, dtype=jnp.int32)[:, None, None] * h + yi) * w + xi  # [B,H,W]
  out = jnp.take(images.reshape(b * h * w, ch), idx.reshape(-1), axis=0).reshape(b, h, w, ch)
  return jnp.where(valid[..., None], out, jnp.asarray(fill, images.dtype))


# ----------------------------------------------------------------------------------------------
# pointwise ops as per-sample per-channel LUTs
def _histograms(images):
  """[B, C, 256] int32 per-sample per-channel histograms (one segment_sum)."""
  b, h, w, ch = images.shape
  ids = (jnp.arange(b * ch, dtype=jnp.int32).reshape(b, 1, 1, ch) * 256 + images.astype(jnp.int32))
  hist = jax.ops.segment_sum(jnp.ones(ids.size, jnp.int32), ids.reshape(-1), num_segments=b * ch * 256)
  return hist.reshape(b, ch, 256)


def equalize_luts(hist):
  """PIL ImageOps.equalize LUTs [..., 256] from histograms [..., 256] (int32)."""
  bins = jnp.arange(256, dtype=jnp.int32)
  last = jnp.max(jnp.where(hist > 0, bins, -1), axis=-1)
  last_count = jnp.take_along_axis(hist, jnp.maximum(last, 0)[..., None], axis=-1)[..., 0]
  step = (jnp.sum(hist, axis=-1) - last_count) // 255
  safe = jnp.maximum(step, 1)[..., None]
  lut = (jnp.cumsum(hist, axis=-1) + safe // 2) // safe
  lut = jnp.concatenate([jnp.zeros_like(lut[..., :1]), lut[..., :-1]], axis=-1)
  lut = jnp.clip(lut, 0, 255)
  return jnp.where(step[..., None] == 0, bins, lut)


def _equalize_luts_batch(images, is_eq):
  """Equalize LUTs [B, C, 256] for the samples with is_eq (others: identity rows); the histograms are built for at
  most EQUALIZE_CAPACITY(B) samples (`_on_subset`)."""
  b, _, _, ch = images.shape
  ident = jnp.broadcast_to(jnp.arange(256, dtype=jnp.int32), (b, ch, 256))
  luts = _on_subset(lambda x: equalize_luts(_histograms(x)), images, is_eq)
  return jnp.where(is_eq[:, None, None], luts, ident)


def pointwise_luts(images, op, args):
  """[B, C, 256] int32 LUT per sample: the sample's pointwise op, identity for other ops."""
  b, h, w, ch = images.shape
  v = jnp.arange(256, dtype=jnp.int32)
  vf = v.astype(jnp.float32)
  factor = args[ARG['enhance']]
  arg_int = lambda name: args[ARG[name]].astype(jnp.int32)

  # AutoContrast (PIL cutoff=0, per channel; a flat channel is kept)
  lo = jnp.min(images, axis=(1, 2)).astype(jnp.float32)[..., None]  # [B,C,1]
  hi = jnp.max(images, axis=(1, 2)).astype(jnp.float32)[..., None]
  sc = 255.0 / jnp.maximum(hi - lo, 1.0)
  auto = jnp.floor(jnp.clip(_mul(sc, vf) + (-_mul(sc, lo)), 0.0, 255.0)).astype(jnp.int32)
  auto = jnp.where(hi > lo, auto, v)

  bits = arg_int('posterize')
  shift = jnp.minimum(jnp.mod(8 - bits, 256), 7)
  post = v & ((255 << shift) & 255)
  thr = jnp.mod(arg_int('solarize'), 256)
  sol = jnp.where(v < thr, v, 255 - v)
  add = arg_int('solarize_add')
  sol_add = jnp.where(v < 128, jnp.clip(v + add, 0, 255), v)
  bright = _blend(0.0, vf, factor).astype(jnp.int32)
  mean = float(np.floor(np.clip(h * w / 256.0, 0.0, 255.0)))
  contrast = _blend(mean, vf, factor).astype(jnp.int32)

  eq = _equalize_luts_batch(images, op == OP_INDEX['Equalize'])
  tables = [('Invert', 255 - v), ('Posterize', post), ('Solarize', sol), ('SolarizeAdd', sol_add),
            ('Brightness', bright), ('Contrast', contrast), ('AutoContrast', auto), ('Equalize', eq)]
  cands = [jnp.broadcast_to(v, (b, ch, 256))] + [jnp.broadcast_to(t, (b, ch, 256)) for _, t in tables]
  cands = jnp.stack(cands, axis=1).astype(jnp.float32)  # [B, K, C, 256], K = 1 + 8
  # candidate index per op (0 = identity row for non-pointwise ops), one-hot weighted sum: a
  # tiny dot, which also keeps XLA from re-fusing the whole LUT construction into the per-pixel
  # lookup (measured 5x slower on CPU when it did).
  index = np.zeros(NUM_OPS, np.int32)
  for k, (name, _) in enumerate(tables):
    index[OP_INDEX[name]] = k + 1
  valid = (op >= 0) & (op < NUM_OPS)
  k_of = jnp.where(valid, jnp.asarray(index)[jnp.clip(op, 0, NUM_OPS - 1)], 0)
  onehot = jax.nn.one_hot(k_of, len(tables) + 1, dtype=jnp.float32)
  lut = jnp.einsum('bk,bkcv->bcv', onehot, cands, precision=jax.lax.Precision.HIGHEST)
  return jnp.round(lut).astype(jnp.int32)


def apply_luts(images, luts):
  """images uint8 [B,H,W,C], luts int [B,C,256] -> uint8 (one gather)."""
  b, h, w, ch = images.shape
  flat = luts.astype(jnp.uint8).reshape(-1)
  base = (jnp.arange(b * ch, dtype=jnp.int32).reshape(b, 1, 1, ch) * 256)
  return jnp.take(flat, (base + images.astype(jnp.int32)).reshape(-1)).reshape(images.shape)


# ----------------------------------------------------------------------------------------------
# Color / Sharpness / Cutout
def grayscale(images):
  """tf.image.rgb_to_grayscale on uint8: float = x/255 . [0.2989, 0.587, 0.114], uint8 = int(g*255.5)."""
  t = _GREY_TERMS  # [3, 256] float32: fl(fl(v * fl(1/255)) * w_c), computed in numpy (no FMA)
  x = images.astype(jnp.int32)
  g = (jnp.take(t[0], x[..., 0]) + jnp.take(t[1], x[..., 1])) + jnp.take(t[2], x[..., 2])
  return (g * 255.5).astype(jnp.int32).astype(jnp.float32)[..., None]


_GREY_TERMS = ((np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0))[None, :]
               * np.asarray([0.2989, 0.5870, 0.1140], np.float32)[:, None]).astype(np.float32)


def color(images, factor):
  x = images.astype(jnp.float32)
  return _blend(grayscale(images), x, factor)


def sharpness(images, factor):
  """PIL Sharpness: blend(SMOOTH(x), x, f) on the interior; the 1-px border is the original.

  SMOOTH as the official float32 depthwise conv on TF's Eigen CPU kernel: the nine products x · fl(k/13) summed
  tap by tap in row-major order, each rounded (`_mul` keeps XLA from contracting them into FMAs).
  """
  x = images.astype(jnp.float32)
  _, h, w, _ = x.shape
  edge, centre = np.float32(1.0) / np.float32(13.0), np.float32(5.0) / np.float32(13.0)
  acc = None
  for i in range(3):
    for j in range(3):
      term = _mul(centre if (i, j) == (1, 1) else edge, x[:, i:h - 2 + i, j:w - 2 + j])
      acc = term if acc is None else acc + term
  smooth = jnp.floor(jnp.clip(acc, 0.0, 255.0))
  mixed = _blend(smooth, x[:, 1:-1, 1:-1], factor)
  return x.at[:, 1:-1, 1:-1].set(mixed)


def cutout_masks(cy, cx, pad, height: int, width: int):
  """[B,H,W] bool: official box rows [cy-pad, cy+pad) x cols [cx-pad, cx+pad) (the image clips it)."""
  return box_masks((cy - pad, cy + pad, cx - pad, cx + pad), height, width)


# ----------------------------------------------------------------------------------------------
# one layer / public API
def apply_layer(images, op, magnitude, sign, cy, cx, cutout_const=RANDAUGMENT_CUTOUT,
                translate_const=RANDAUGMENT_TRANSLATE):
  """Apply per-sample op `op` [B] (int; outside [0,16) = identity) with explicit random draws.

  images uint8 [B,H,W,3]; magnitude: see `magnitude_args`; sign [B] +-1 for the geometric ops; cy, cx [B] cutout
  centres.
  """
  images = jnp.asarray(images)
  b, h, w, _ = images.shape
  op = jnp.asarray(op, jnp.int32)
  sign = jnp.asarray(sign, jnp.float32)
  args = magnitude_args(magnitude, cutout_const, translate_const)
  # Every sample runs exactly one op, so the non-geometric ops read the layer's input directly;
  # the warp (the only gather over pixels) then has a single consumer and is not re-fused into
  # the stencils / LUT statistics.
  x = images
  out = apply_luts(x, pointwise_luts(x, op, args))
  factor = args[ARG['enhance']]
  sel = lambda name: (op == OP_INDEX[name])[:, None, None, None]
  for name, fn in (('Color', color), ('Sharpness', sharpness)):
    mask = op == OP_INDEX[name]
    done = _on_subset(lambda y: fn(y, factor).astype(jnp.uint8), x, mask)
    out = jnp.where(mask[:, None, None, None], done, out)
  pad = args[ARG['cutout']].astype(jnp.int32)
  box = cutout_masks(jnp.asarray(cy, jnp.int32), jnp.asarray(cx, jnp.int32), pad, h, w)
  out = jnp.where(sel('Cutout') & box[..., None], jnp.uint8(FILL_VALUE), out)
  geo = jnp.isin(op, jnp.asarray([OP_INDEX[n] for n in GEOMETRIC_OPS], jnp.int32))
  warped = warp_nearest(x, geometric_matrices(op, args, sign, h, w))
  return jnp.where(geo[:, None, None, None], warped, out)


def _check(images):
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must have shape [B, H, W, 3], got {images.shape}')
  if images.dtype != jnp.uint8:
    raise ValueError(f'images dtype must be uint8, got {images.dtype}')
  return images


def apply_op(images, op_index, magnitude, rng, cutout_const=RANDAUGMENT_CUTOUT,
             translate_const=RANDAUGMENT_TRANSLATE):
  """Apply ONE op (index into RANDAUGMENT_OPS, or its name) to every sample; rng draws sign/box."""
  if isinstance(op_index, str):
    if op_index not in OP_INDEX:
      raise ValueError(f'op_index must be one of {RANDAUGMENT_OPS} or 0..15, got {op_index!r}')
    op_index = OP_INDEX[op_index]
  images = _check(images)
  b, h, w, _ = images.shape
  p = layer_params(rng, b, h, w)
  op = jnp.full((b,), op_index, jnp.int32)
  return apply_layer(images, op, magnitude, p['sign'], p['cy'], p['cx'], cutout_const,
                     translate_const)


def randaugment(rng, images, num_layers: int = 2, magnitude=10.0, cutout_const=RANDAUGMENT_CUTOUT,
                translate_const=RANDAUGMENT_TRANSLATE):
  """RandAugment on a uint8 batch [B,H,W,3]: each layer draws an op per sample. jit-friendly.

  magnitude: a number, a (traced) `policy.level_arguments` vector, or a traced scalar (see `magnitude_args`).
  num_layers is static (a Python int >= 0).
  """
  if int(num_layers) != num_layers or num_layers < 0:
    raise ValueError(f'num_layers must be an int >= 0, got {num_layers!r}')
  images = _check(images)
  b, h, w, _ = images.shape
  for key in jax.random.split(rng, int(num_layers)) if num_layers else []:
    p = layer_params(key, b, h, w)
    images = apply_layer(images, p['op'], magnitude, p['sign'], p['cy'], p['cx'], cutout_const,
                         translate_const)
  return images
