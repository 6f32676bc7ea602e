"""Per-core throughput of the host train preprocessing (prints a table; not a test).

Why: RandAugment on the host is the usual input bottleneck of EfficientNet training. This measures,
on one core (tf.data num_parallel_calls=1, private threadpool 1, intra-op 1), on real JPEGs
(skimage.data photos cropped/jittered to ~500x375, quality 90, built locally):
  decode        JPEG decode only
  crop          decode_and_crop_jpeg (inception crop) + bilinear resize + flip
  crop+RA(off)  same + an official-style RandAugment (wrap/unwrap 4-channel nearest transforms,
                16-way tf.cond chain per layer, depthwise-conv sharpness, per-channel equalize)
  fused+RA      effnet.data.augment.fused_train_preprocess (one resampling pass)
  crop+RA(ours) crop + resize + flip then effnet.data.augment.randaugment (op by op)

python -m effnet.tools.bench_input --num_images 300 --image_size 224 300 --magnitude 10
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np


def make_jpegs(num_images, seed=0):
  import skimage.data
  import tensorflow as tf
  names = ['astronaut', 'chelsea', 'coffee', 'rocket', 'cat', 'immunohistochemistry', 'hubble_deep_field',
           'retina', 'colorwheel', 'logo']
  photos = []
  for n in names:
    try:
      im = getattr(skimage.data, n)()
    except Exception:  # pylint: disable=broad-except
      continue
    if im.ndim == 3 and im.shape[2] >= 3:
      photos.append(np.ascontiguousarray(im[..., :3]).astype(np.uint8))
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num_images):
    p = photos[i % len(photos)]
    h, w = p.shape[:2]
    scale = rng.uniform(0.6, 1.0)
    ch, cw = max(32, int(h * scale)), max(32, int(w * scale))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = tf.constant(p[y:y + ch, x:x + cw])
    tw, th = (500, 375) if rng.uniform() < 0.75 else (375, 500)
    im = tf.image.resize(crop, [th, tw], antialias=True)
    im = tf.clip_by_value(im * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10), 0, 255)
    out.append(tf.io.encode_jpeg(tf.cast(im, tf.uint8), quality=90).numpy())
  return out


def official_style_randaugment(image, num_layers, magnitude):
  """Structure of the official graph (for timing only): per layer a 16-way tf.cond chain; geometric
  ops wrap a ones channel, transform 4 channels (NEAREST, fill 0) and unwrap to 128; depthwise
  sharpness; per-channel equalize. Ops/args reuse effnet.data.augment for the colour maths."""
  import tensorflow as tf
  from effnet.data import augment as A

  def wrap_transform(img, matrix):
    ext = tf.concat([img, tf.ones_like(img[..., :1])], axis=2)
    out = A._transform(ext, matrix, fill_value=0)  # pylint: disable=protected-access
    return tf.where(out[..., 3:] == 0, tf.constant(128, tf.uint8), out[..., :3])

  def sharp(img, f):
    x = tf.cast(img, tf.float32)[None]
    k = tf.tile(tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32, [3, 3, 1, 1]) / 13., [1, 1, 3, 1])
    d = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], 'VALID')
    d = tf.squeeze(tf.cast(tf.clip_by_value(d, 0., 255.), tf.uint8), [0])
    d = tf.pad(d, [[1, 1], [1, 1], [0, 0]])
    m = tf.pad(tf.ones_like(d[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]])
    return A.blend(tf.where(m == 1, d, img), img, f)

  def eq(img):
    chans = []
    for c in range(3):
      im = tf.cast(img[:, :, c], tf.int32)
      h = tf.histogram_fixed_width(im, [0, 255], nbins=256)
      nz = tf.reshape(tf.gather(h, tf.where(h != 0)), [-1])
      step = (tf.reduce_sum(nz) - nz[-1]) // 255
      lut = lambda: tf.clip_by_value(tf.concat([[0], ((tf.cumsum(h) + step // 2) // step)[:-1]], 0), 0, 255)
      chans.append(tf.cast(tf.cond(step == 0, lambda: im, lambda: tf.gather(lut(), im)), tf.uint8))
    return tf.stack(chans, 2)

  s = tf.shape(image)
  m = float(magnitude)
  for _ in range(num_layers):
    op = tf.random.uniform([], 0, 16, tf.int32)
    sign = tf.where(tf.random.uniform([]) < 0.5, -1.0, 1.0)
    fns = {
        'AutoContrast': lambda: A.autocontrast(image), 'Equalize': lambda: eq(image),
        'Invert': lambda: A.invert(image),
        'Rotate': lambda: wrap_transform(image, A.rotate_matrix(sign * m * 3.0, s[0], s[1])),
        'Posterize': lambda: A.posterize(image, int(m / 10 * 4)),
        'Solarize': lambda: A.solarize(image, int(m / 10 * 256)),
        'Color': lambda: A.color(image, m / 10 * 1.8 + .1), 'Contrast': lambda: A.contrast(image, m / 10 * 1.8 + .1),
        'Brightness': lambda: A.brightness(image, m / 10 * 1.8 + .1), 'Sharpness': lambda: sharp(image, m / 10 * 1.8 + .1),
        'ShearX': lambda: wrap_transform(image, A.shear_x_matrix(sign * m * .03)),
        'ShearY': lambda: wrap_transform(image, A.shear_y_matrix(sign * m * .03)),
        'TranslateX': lambda: wrap_transform(image, A.translate_x_matrix(sign * m * 10)),
        'TranslateY': lambda: wrap_transform(image, A.translate_y_matrix(sign * m * 10)),
        'Cutout': lambda: A.cutout(image, int(m * 4), seed=tf.random.uniform([2], 0, 2**30, tf.int64)),
        'SolarizeAdd': lambda: A.solarize_add(image, int(m * 11)),
    }
    for i, name in enumerate(A.RANDAUGMENT_OPS):
      image = tf.cond(tf.equal(op, i), fns[name], lambda: image)
  return image


def build_fns(image_size, magnitude, num_layers):
  import tensorflow as tf
  from effnet.data import augment as A

  def crop_resize_flip(b):
    win = A.sample_crop_window(tf.image.extract_jpeg_shape(b), image_size, 'inception_v2')
    im = tf.image.decode_and_crop_jpeg(b, win, channels=3)
    im = tf.image.resize(im, [image_size, image_size], method='bilinear')
    im = tf.image.random_flip_left_right(im)
    return tf.cast(tf.clip_by_value(im, 0., 255.), tf.uint8)

  return {
      'decode': lambda b: tf.image.decode_jpeg(b, channels=3),
      'crop': crop_resize_flip,
      'crop+RA(official-style)': lambda b: official_style_randaugment(crop_resize_flip(b), num_layers, magnitude),
      'crop+RA(ours, op by op)': lambda b: A.randaugment(crop_resize_flip(b), num_layers, magnitude),
      'fused+RA': lambda b: A.fused_train_preprocess(b, image_size, 'inception_v2', 'randaugment',
                                                     num_layers, magnitude),
  }


def time_fn(jpegs, fn, repeats):
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat(repeats)
  ds = ds.map(fn, num_parallel_calls=1, deterministic=True)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = 1
  opts.threading.max_intra_op_parallelism = 1
  opts.autotune.enabled = False
  ds = ds.with_options(opts)
  for _ in ds.take(20):  # warm up (graph build, first calls)
    pass
  n = 0
  t0 = time.perf_counter()
  for _ in ds:
    n += 1
  return n / (time.perf_counter() - t0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_images', type=int, default=500)
  p.add_argument('--image_size', type=int, nargs='+', default=[224, 300])
  p.add_argument('--magnitude', type=float, default=10.0)
  p.add_argument('--num_layers', type=int, default=2)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--only', type=str, default='', help='comma list of pipeline names to run')
  a = p.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  jpegs = make_jpegs(a.num_images)
  print(f'{len(jpegs)} JPEGs, mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB, '
        f'N={a.num_layers} M={a.magnitude}, images/s on ONE core')
  rows = {}
  for s in a.image_size:
    for name, fn in build_fns(s, a.magnitude, a.num_layers).items():
      if a.only and name not in a.only.split(','):
        continue
      if name == 'decode' and 'decode' in rows:
        rows[name][s] = rows['decode'][a.image_size[0]]
        continue
      rows.setdefault(name, {})[s] = time_fn(jpegs, fn, a.repeats)
  w = max(len(k) for k in rows)
  print(f"{'pipeline':<{w}} " + ' '.join(f'{s:>8d}px' for s in a.image_size))
  for k, v in rows.items():
    print(f'{k:<{w}} ' + ' '.join(f'{v.get(s, math.nan):>10.1f}' for s in a.image_size))


if __name__ == '__main__':
  main()
