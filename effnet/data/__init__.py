"""Input data for effnet.

Why this package is split the way it is: host-side input code (tfds builders, tf.data, TF image ops) lives in
`effnet.data.pipeline`, `effnet.data.digits` and `effnet.data.augment` and is imported explicitly; this `__init__`
imports NO TensorFlow, so on-device code (models, steps, mixup in `effnet.data.mix`, the synthetic benchmark source)
can import `effnet.data` on machines without TF. `normalize` runs on the accelerator: batches leave the host as
uint8 NHWC (or float32 / bfloat16, `data.image_dtype`) and are converted to float here, inside the jitted step.
"""
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "inception_128", "edge", "inception")
# Recipe names of the host pipeline (effnet.data.pipeline); here, TF-free, so config validation can share them.
TRAIN_PREPROCESS = ("inception_v1", "inception_v1_0875", "inception_v2", "resize", "pad_crop")
EVAL_PREPROCESS = ("center_crop_v1", "center_crop_v1_0875", "center_crop_v2", "resize")
AUGMENTS = ("none", "autoaugment", "randaugment", "ft")
RESIZE_METHODS = ("bicubic", "bilinear")
# data.image_dtype: what the host pipeline hands to the device (effnet.data.pipeline.cast_output).
IMAGE_DTYPES = ("uint8", "float32", "bfloat16")


def normalize(images, normalization="imagenet", dtype=jnp.float32):
  """uint8 (or float 0..255) NHWC images -> `dtype`.

  'imagenet':      (x - 255*mean) / (255*std), mean (.485,.456,.406), std (.229,.224,.225) (official v1 / V2-B*).
  'inception_128': (x - 128) / 128 (official V2 S/M/L/XL).
  'edge':          (x - 127) / 128 (tensorflow/tpu's Lite and EdgeTPU builders: MEAN_RGB 127, STDDEV_RGB 128).
  'inception':     (x / 255 - 0.5) / 0.5, in that order (google/automl's fine-tuning preprocessing, augname 'ft').
  The arithmetic is done in float32 and cast at the end, so a bfloat16 output only rounds once.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if normalization == "imagenet":
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
    x = (x - mean) / std
  elif normalization == "inception_128":
    x = (x - 128.0) / 128.0
  elif normalization == "edge":
    x = (x - 127.0) / 128.0
  elif normalization == "inception":
    x = (x / 255.0 - 0.5) / 0.5
  else:  # the train step passes a plain name; a config's is checked by config_lib.validate before this runs
    raise ValueError(f"data.normalization={normalization!r}; allowed: {NORMALIZATIONS}")
  return x.astype(dtype)
