"""The small-image train recipe data.train_preprocess='pad_crop' (effnet.data.pipeline): the resized image shifted by
up to S/8 pixels in x and y with zero fill, the CIFAR translation of the ResNet paper; the config names it."""
import numpy as np
import pytest
import tensorflow as tf

from effnet import config_lib
from effnet.data import pipeline
from sklearn.datasets import load_digits

SIZE = 32
PAD = SIZE // 8


@pytest.fixture(scope='module')
def digit():
  from effnet.data import digits  # pylint: disable=g-import-not-at-top
  return digits.digits_to_uint8_rgb(load_digits().images[0])


def _shift_of(out, resized):
  """(dy, dx) with out == resized shifted by (dy, dx), zero filled (numpy, independent of the pipeline), or None."""
  padded = np.pad(resized, [(PAD, PAD), (PAD, PAD), (0, 0)])
  for dy in range(-PAD, PAD + 1):
    for dx in range(-PAD, PAD + 1):
      if np.array_equal(out, padded[PAD + dy:PAD + dy + SIZE, PAD + dx:PAD + dx + SIZE]):
        return dy, dx
  return None


def test_pad_crop_is_a_zero_filled_shift_of_at_most_s_over_8(digit):
  resized = np.clip(np.rint(tf.image.resize(digit.astype(np.float32), [SIZE, SIZE], 'bilinear').numpy()), 0, 255)
  shifts = set()
  for seed in range(24):
    out = pipeline.preprocess_train_image(digit, SIZE, tf.constant([seed, 7], tf.int64), recipe='pad_crop',
                                          resize_method='bilinear', flip=False).numpy()
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    shift = _shift_of(out, resized)
    assert shift is not None, f'seed {seed}: not a shifted copy of the resized digit'
    shifts.add(shift)
  dys, dxs = {s[0] for s in shifts}, {s[1] for s in shifts}
  assert len(shifts) >= 12 and min(dys) < -1 and max(dys) > 1 and min(dxs) < -1 and max(dxs) > 1


def test_config_names_the_recipes():
  c = config_lib.base_config()
  c.data.train_preprocess = 'pad_and_crop'
  with pytest.raises(ValueError, match=r"data\.train_preprocess.*pad_and_crop.*pad_crop"):
    config_lib.validate(c)
