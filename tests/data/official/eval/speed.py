"""Host CPU cost of the official decode order vs cropping inside the decode, and of the output dtypes.

  python tests/data/official/eval/speed.py

CPU milliseconds per image (process time, so other load on the machine matters less than for wall time), one
tf.data thread, a 375x500 JPEG (quality 90), best of 4 passes over 300 images; and the bytes per output image.
"""
import time

import numpy as np
import tensorflow as tf
from PIL import Image
from skimage import data

from effnet.data import pipeline

ROWS = (
    ('train inception_v2 S=300, whole decode (official)',
     lambda j, s: pipeline.preprocess_train_image(j, 300, s, 'inception_v2', flip=False)),
    ('train inception_v2 S=300, crop_while_decoding',
     lambda j, s: pipeline.preprocess_train_image(j, 300, s, 'inception_v2', flip=False, crop_while_decoding=True)),
    ('eval center_crop_v2 S=224, whole decode (official)',
     lambda j, s: pipeline.preprocess_eval_image(j, 224, 'center_crop_v2')),
    ('eval center_crop_v2 S=224, crop_while_decoding',
     lambda j, s: pipeline.preprocess_eval_image(j, 224, 'center_crop_v2', crop_while_decoding=True)),
    ('eval center_crop_v1 S=600, uint8',
     lambda j, s: pipeline.preprocess_eval_image(j, 600, 'center_crop_v1')),
    ('eval center_crop_v1 S=600, float32 (official)',
     lambda j, s: pipeline.preprocess_eval_image(j, 600, 'center_crop_v1', dtype='float32')),
    ('eval center_crop_v1 S=600, bfloat16 (TPU use_bfloat16)',
     lambda j, s: pipeline.preprocess_eval_image(j, 600, 'center_crop_v1', dtype='bfloat16')),
)


def cpu_ms_per_image(fn, jpeg, n=300, passes=4):
  ds = tf.data.Dataset.range(n).map(lambda i: fn(jpeg, tf.stack([i, tf.constant(7, tf.int64)])),
                                    num_parallel_calls=1)
  best, nbytes = float('inf'), 0
  for _ in range(passes):
    start = time.process_time()
    for x in ds:
      nbytes = x.numpy().nbytes
    best = min(best, (time.process_time() - start) / n * 1e3)
  return best, nbytes


def main():
  photo = np.asarray(Image.fromarray(data.astronaut()).resize((500, 375), Image.LANCZOS))
  jpeg = tf.io.encode_jpeg(tf.constant(photo), quality=90)
  for name, fn in ROWS:
    ms, nbytes = cpu_ms_per_image(fn, jpeg)
    print(f'{name:56s} {ms:6.2f} CPU ms/image {nbytes / 1e3:8.1f} kB/image')


if __name__ == '__main__':
  main()
