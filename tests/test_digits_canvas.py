"""The built-in `digits_canvas` set (effnet.data.digits): generated deterministically offline, the digit where its box
says, pasted as an independent bilinear resize (TF's) computes it, labels and split those of `digits`."""
import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from effnet.data import digits


@pytest.fixture(scope='module')
def sklearn_digits():
  return load_digits()


def _canvases(d, indices, **kwargs):
  pairs = [digits.digit_on_canvas(d.images[i], i, **kwargs) for i in indices]
  return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_generation_is_deterministic_and_pinned(sklearn_digits):
  rows = range(0, digits.NUM_EXAMPLES, 4)
  a, boxes_a = _canvases(sklearn_digits, rows)
  b, boxes_b = _canvases(sklearn_digits, reversed(rows))  # each row its own random stream: order-independent
  np.testing.assert_array_equal(a, b[::-1])
  np.testing.assert_array_equal(boxes_a, boxes_b[::-1])
  assert a.shape == (len(rows), 32, 32, 3) and a.dtype == np.uint8
  a, boxes_a = _canvases(sklearn_digits, range(5))
  # Rows 0-4 as version 2.0.0 of the builder generates them: changing them needs a new VERSION.
  assert boxes_a[:5].tolist() == [[4, 2, 21], [6, 3, 21], [1, 4, 23], [5, 4, 23], [4, 9, 19]]
  assert hashlib.sha256(a[:5].tobytes()).hexdigest()[:16] == 'cc66c0b09faa5695'
  # version 1.0.0's canvases (8-12 px digits anywhere) stay reproducible through the arguments
  _, boxes_v1 = _canvases(sklearn_digits, range(5), sizes=(8, 12), jitter=None)
  assert boxes_v1.tolist() == [[16, 4, 10], [19, 15, 12], [19, 16, 8], [19, 8, 12], [9, 19, 11]]


def test_digit_lies_inside_its_box_as_tf_bilinear_resizes_it(sklearn_digits):
  d = sklearn_digits
  images, boxes = _canvases(d, range(0, digits.NUM_EXAMPLES, 7), noise_std=0.0)
  assert set(boxes[:, 2]) == set(range(16, 25))  # 2-3x the 8x8 source, every side drawn
  assert (np.abs(boxes[:, :2] - (32 - boxes[:, 2:]) // 2) <= 3).all()  # within ±3 px of the centred position
  assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 32).all()
  for image, (y, x, side), i in zip(images, boxes, range(0, digits.NUM_EXAMPLES, 7)):
    reference = tf.image.resize(d.images[i][..., None] * (255.0 / 16.0), [side, side], 'bilinear').numpy()
    patch = image[y:y + side, x:x + side, 0].astype(np.float64)
    np.testing.assert_allclose(patch, np.clip(np.rint(reference[..., 0]), 0, 255), atol=1)
    outside = image[..., 0].copy()
    outside[y:y + side, x:x + side] = 0
    assert not outside.any()  # nothing but the digit without noise
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()


def test_noise_is_mild_and_centred():
  canvas, _ = digits.digit_on_canvas(np.zeros((8, 8)), 3)
  # Gaussian noise of std 8 clipped at 0 from below: half the pixels are 0, the rest a half-normal (mean 8*0.798).
  values = canvas[..., 0].astype(np.float64)
  assert 0.4 < (values == 0).mean() < 0.6
  assert abs(values.mean() - 8.0 / np.sqrt(2 * np.pi)) < 0.6


def test_builder_yields_the_digits_split_with_balanced_labels(tmp_path, sklearn_digits):
  builder = tfds.builder('digits_canvas', data_dir=str(tmp_path))
  generators = builder._split_generators(None)  # pylint: disable=protected-access
  train_idx, test_idx = digits.split_indices(sklearn_digits.target)
  first = list(zip(range(3), generators['test']))
  for (_, (key, example)), i in zip(first, test_idx[:3]):
    assert key == i and example['index'] == i and example['label'] == sklearn_digits.target[i]
    image, box = digits.digit_on_canvas(sklearn_digits.images[i], i)
    np.testing.assert_array_equal(example['image'], image)
    assert example['box'].tolist() == list(box)
  assert len(train_idx) == digits.NUM_TRAIN and len(test_idx) == digits.NUM_TEST
  counts = np.bincount(sklearn_digits.target[train_idx], minlength=10)
  assert counts.min() >= 139 and counts.max() <= 146  # 80% of each class's 174-183 images


def test_jitter_keeps_the_digit_near_the_centre(sklearn_digits):
  _, boxes = _canvases(sklearn_digits, range(200), noise_std=0.0, jitter=4)
  centre = (32 - boxes[:, 2:]) // 2
  offsets = boxes[:, :2] - centre
  assert np.abs(offsets).max() == 4 and len(np.unique(offsets)) == 9  # every offset in -4..4 drawn
