"""Per-core throughput of the host preprocessing that training runs (prints a table; not a test).

Why: RandAugment on the host is the usual input bottleneck of EfficientNet training. This times the per-example
functions of `effnet.data.pipeline` (what `create_train_dataset` / `create_eval_dataset` map) on one core (tf.data
num_parallel_calls=1, private threadpool 1, intra-op 1), on real JPEGs (skimage.data photos cropped/jittered to
~500x375, quality 90, built locally), each example with its own seed as in training:
  decode    JPEG decode only (the floor under every row)
  eval      preprocess_eval_image with the recipe's eval crop (center_crop_v1 / center_crop_v2 / resize)
  crop      preprocess_train_image, augment='none': decode_and_crop_jpeg (the recipe's crop), resize, flip
  crop+RA   the same with augment='randaugment' (--num_layers, --magnitude)
  crop+AA   the same with augment='autoaugment' (policy v0)
  device RA with --device_batch B: effnet.data.randaugment_jax on the default JAX device, over one batch of B
            'crop' outputs (images/s of the whole device, not of one core; what data.randaug_on_device runs)

Rows this tool used to print and no longer does: 'fused+RA' (a one-pass crop/resize/flip/RandAugment that training
never used, removed from effnet.data.augment) and 'crop+RA(official-style)' (a hand-built imitation of the
official graph, timing code that trains nowhere).

python -m effnet.tools.bench_input --num_images 300 --image_size 224 300 --magnitude 10
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from effnet.data import IMAGE_DTYPES, TRAIN_PREPROCESS

EVAL_RECIPE = {'inception_v1': 'center_crop_v1', 'inception_v1_0875': 'center_crop_v1_0875',
               'inception_v2': 'center_crop_v2', 'resize': 'resize'}


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


def build_fns(image_size, recipe, magnitude, num_layers, image_dtype='uint8'):
  """Row name -> fn(jpeg bytes, int64 [2] seed) -> image of `image_dtype` (data.image_dtype; 'decode' and the
  device row: uint8), each a per-example function of the pipeline."""
  import tensorflow as tf
  from effnet.data import pipeline

  def train(augment):
    return lambda jpeg, seed: pipeline.preprocess_train_image(
        jpeg, image_size, seed, recipe=recipe, augment=augment, randaug_num_layers=num_layers,
        randaug_magnitude=magnitude, dtype=image_dtype)

  return {
      'decode': lambda jpeg, seed: tf.image.decode_jpeg(jpeg, channels=3),
      'eval': lambda jpeg, seed: pipeline.preprocess_eval_image(jpeg, image_size, EVAL_RECIPE[recipe],
                                                                dtype=image_dtype),
      'crop': train('none'),
      'crop+RA': train('randaugment'),
      'crop+AA': train('autoaugment'),
  }


def _one_core_dataset(jpegs, fn, repeats):
  """fn mapped over the JPEGs on one core, example i seeded with [i, 0] (distinct per example, like training)."""
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat(repeats).enumerate()
  ds = ds.map(lambda i, jpeg: fn(jpeg, tf.stack([i, tf.constant(0, tf.int64)])), num_parallel_calls=1,
              deterministic=True)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = 1
  opts.threading.max_intra_op_parallelism = 1
  opts.autotune.enabled = False
  return ds.with_options(opts)


def time_fn(jpegs, fn, repeats):
  ds = _one_core_dataset(jpegs, fn, repeats)
  for _ in ds.take(20):  # warm up (graph build, first calls)
    pass
  n = 0
  t0 = time.perf_counter()
  for _ in ds:
    n += 1
  return n / (time.perf_counter() - t0)


def device_randaugment_rate(images, num_layers, magnitude, iters=5):
  """Images/s of the jitted on-device RandAugment over one uint8 batch (median of `iters` calls after compiling)."""
  import jax
  import jax.numpy as jnp
  from effnet.data import randaugment_jax
  fn = jax.jit(randaugment_jax.randaugment, static_argnums=(2,))
  images = jax.device_put(images)
  key = jax.random.key(0)
  mag = jnp.float32(magnitude)
  fn(key, images, num_layers, mag).block_until_ready()  # compile
  times = []
  for i in range(iters):
    t0 = time.perf_counter()
    fn(jax.random.fold_in(key, i + 1), images, num_layers, mag).block_until_ready()
    times.append(time.perf_counter() - t0)
  return len(images) / float(np.median(times))


def _device_row_name(batch):
  import jax
  return f'device RA ({jax.devices()[0].platform}, B={batch})'


def measure(jpegs, args):
  """{row name: {image size: images/s}} for the rows selected by --only (all by default)."""
  wanted = set(args.only.split(',')) if args.only else None
  rows = {}
  for size in args.image_size:
    fns = build_fns(size, args.recipe, args.magnitude, args.num_layers, args.image_dtype)
    for name, fn in fns.items():
      if wanted and name not in wanted:
        continue
      if name == 'decode' and 'decode' in rows:  # the same work at every size
        rows[name][size] = rows['decode'][args.image_size[0]]
        continue
      rows.setdefault(name, {})[size] = time_fn(jpegs, fn, args.repeats)
    if args.device_batch:
      crop = build_fns(size, args.recipe, args.magnitude, args.num_layers)['crop']  # uint8, as the step takes it
      crops = np.stack(list(_one_core_dataset(jpegs, crop, math.ceil(args.device_batch / len(jpegs)))
                            .take(args.device_batch).as_numpy_iterator()))
      rate = device_randaugment_rate(crops, args.num_layers, args.magnitude)
      rows.setdefault(_device_row_name(args.device_batch), {})[size] = rate
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_images', type=int, default=500)
  p.add_argument('--image_size', type=int, nargs='+', default=[224, 300])
  p.add_argument('--magnitude', type=float, default=10.0)
  p.add_argument('--num_layers', type=int, default=2)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--recipe', default='inception_v2', choices=TRAIN_PREPROCESS,
                 help='config.data.train_preprocess; the eval row uses its eval crop')
  p.add_argument('--device_batch', type=int, default=0,
                 help='also time the on-device RandAugment over a batch of this many crops (0: off)')
  p.add_argument('--image_dtype', default='uint8', choices=IMAGE_DTYPES,
                 help='config.data.image_dtype: what the eval and crop rows hand to the device')
  p.add_argument('--only', type=str, default='', help='comma list of row names to run (decode,eval,crop,...)')
  a = p.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  jpegs = make_jpegs(a.num_images)
  print(f'{len(jpegs)} JPEGs, mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB, recipe {a.recipe}, '
        f'N={a.num_layers} M={a.magnitude}, {a.image_dtype} out, images/s on ONE core')
  rows = measure(jpegs, a)
  w = max(len(k) for k in rows)
  print(f"{'pipeline':<{w}} " + ' '.join(f'{s:>8d}px' for s in a.image_size))
  for k, v in rows.items():
    print(f'{k:<{w}} ' + ' '.join(f'{v.get(s, math.nan):>10.1f}' for s in a.image_size))


if __name__ == '__main__':
  main()
