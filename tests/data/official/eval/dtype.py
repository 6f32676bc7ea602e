"""What data.image_dtype='uint8' changes against the official float32 output (docs/fidelity.md §3 "Output dtype").

  python tests/data/official/eval/dtype.py

Eval: every eval recipe at every size it serves, on the six golden JPEGs (whole images; effnet's float32 output is
the official one bit for bit, tests/test_official_eval.py): max |uint8 − float32| in levels, inside [0, 255] and
overall, the share of values outside [0, 255] and their range, and the max difference of the model input after
effnet.data.normalize. Train: on the official training crops stored in golden.npz, the share of values where the
rounded uint8 (what the host emits) differs from the truncated one (the official conversion before augmenting).
"""
import os

import numpy as np
import tensorflow as tf

from effnet.data import normalize, pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
V1_SIZES = (224, 240, 260, 300, 380, 456, 528, 600, 672, 800)
V2_SIZES = (224, 240, 260, 300, 384, 480, 512)
NORMALIZATION = {'center_crop_v1': 'imagenet', 'center_crop_v1_0875': 'imagenet', 'center_crop_v2': 'inception_128'}


def eval_row(recipe, jpegs):
  worst = worst_inside = worst_norm = 0.0
  outside = total = 0
  low, high = 0.0, 255.0
  for size in V2_SIZES if recipe == 'center_crop_v2' else V1_SIZES:
    for jpeg in jpegs:
      f = pipeline.preprocess_eval_image(jpeg, size, recipe, dtype='float32').numpy()
      u = pipeline.preprocess_eval_image(jpeg, size, recipe, dtype='uint8').numpy().astype(np.float32)
      inside = (f >= 0) & (f <= 255)
      worst, worst_inside = max(worst, np.abs(u - f).max()), max(worst_inside, np.abs(u - f)[inside].max())
      outside, total, low, high = outside + (~inside).sum(), total + f.size, min(low, f.min()), max(high, f.max())
      norm = NORMALIZATION[recipe]
      worst_norm = max(worst_norm, float(np.abs(np.asarray(normalize(f[None], norm) - normalize(u[None], norm))).max()))
  print(f'{recipe:20s} max |levels| {worst:6.2f} (inside [0, 255]: {worst_inside:.2f}); outside [0, 255]: '
        f'{outside / total:.2%} of values, range [{low:.1f}, {high:.1f}]; normalised ({NORMALIZATION[recipe]}): '
        f'{worst_norm:.4f}')


def main():
  with np.load(os.path.join(HERE, 'golden.npz')) as z:
    golden = {k: z[k] for k in z.files}
  jpegs = [tf.constant(golden[f'jpeg/{k}'].tobytes()) for k in range(len(golden['jpeg_names']))]
  for recipe in NORMALIZATION:
    eval_row(recipe, jpegs)
  crops = np.concatenate([golden[k].ravel() for k in golden if k.startswith('train/')])
  rounded, truncated = np.clip(np.round(crops), 0, 255), np.floor(np.clip(crops, 0, 255))
  print(f'train crops: rounded uint8 != truncated uint8 at {(rounded != truncated).mean():.1%} of '
        f'{crops.size} values (max {np.abs(rounded - truncated).max():.0f} level)')


if __name__ == '__main__':
  main()
