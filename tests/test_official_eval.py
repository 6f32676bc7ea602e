"""effnet's eval preprocessing and training crop against the official TensorFlow functions' own outputs.

The references are tests/data/official/eval/golden.npz, recorded by running tensorflow/tpu's and google/automl's
preprocessing functions on scikit-image photos (JPEG bytes stored alongside); README.md there names the commits,
files, functions and arguments. Each recipe is checked at every eval size it serves (docs/fidelity.md §3).
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from effnet.data import normalize
from effnet.data import pipeline

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "data", "official", "eval")
EFFNET_EVAL = {  # official recipe -> effnet data.eval_preprocess
    "tpu_current": "center_crop_v1_0875",
    "tpu_pre2021": "center_crop_v1",
    "automl_legacy": "center_crop_v1",
    "automl_v2": "center_crop_v2",
}
EFFNET_TRAIN = {"tpu_current": "inception_v1_0875", "tpu_pre2021": "inception_v1", "automl_legacy": "inception_v1",
                "automl_v2": "inception_v2"}
V1_SIZES = (224, 240, 260, 300, 380, 456, 528, 600, 672, 800)  # v1 B0..B8, L2 (effnet.models.arch.V1_TABLE)
V2_SIZES = (224, 240, 260, 300, 384, 480, 512)  # V2 B0..B3, S, M/L, XL (effnet.models.arch.V2_TABLE)
# (official recipe, size, photo, pinned window (y, x, h, w); h -1: the whole image), as generate.TRAIN_CASES
TRAIN_CASES = (
    ("tpu_current", 224, 0, (37, 101, 180, 203)), ("tpu_current", 300, 3, (0, 0, -1, -1)),
    ("tpu_pre2021", 300, 3, (0, 0, -1, -1)), ("tpu_current", 240, 4, (0, 0, -1, -1)),
    ("tpu_pre2021", 224, 4, (0, 0, -1, -1)), ("tpu_current", 380, 4, (11, 20, 150, 171)),
    ("automl_legacy", 260, 2, (5, 3, 120, 97)), ("automl_v2", 300, 1, (61, 40, 250, 201)),
    ("automl_v2", 128, 4, (0, 0, -1, -1)), ("automl_v2", 171, 5, (3, 9, 40, 57)),
)


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(GOLDEN_DIR, "golden.npz")) as z:
    return {k: z[k] for k in z.files}


def cases(golden, recipe):
  """(size, jpeg tensor, sampled positions, official values) of every golden array of `recipe`."""
  out = []
  for key in sorted(k for k in golden if k.startswith(f"eval/{recipe}/")):
    _, _, size, k = key.split("/")
    out.append((int(size), tf.constant(golden[f"jpeg/{k}"].tobytes()), golden[f"pos/{size}"], golden[key]))
  return out


def at(image, pos):
  return np.asarray(image, np.float32)[pos[:, 0], pos[:, 1]]


@pytest.mark.parametrize("recipe", sorted(EFFNET_EVAL))
def test_eval_matches_official_at_every_size(golden, recipe):
  seen = set()
  for size, jpeg, pos, official in cases(golden, recipe):
    seen.add(size)
    ours = pipeline.preprocess_eval_image(jpeg, size, EFFNET_EVAL[recipe], dtype="float32").numpy()
    np.testing.assert_array_equal(at(ours, pos), official, err_msg=f"{recipe} at {size}")
    # the compact uint8 output is the official float rounded to the nearest level and clipped to [0, 255]
    small = pipeline.preprocess_eval_image(jpeg, size, EFFNET_EVAL[recipe]).numpy()
    np.testing.assert_array_equal(at(small, pos), np.clip(np.round(official), 0, 255), err_msg=f"{recipe} {size}")
  assert seen == set(V2_SIZES if recipe == "automl_v2" else V1_SIZES)


def test_bfloat16_output_is_tpu_use_bfloat16(golden):
  for size, jpeg, pos, official in cases(golden, "tpu_current_bf16"):
    ours = pipeline.preprocess_eval_image(jpeg, size, "center_crop_v1_0875", dtype="bfloat16")
    assert ours.dtype == tf.bfloat16
    np.testing.assert_array_equal(at(tf.cast(ours, tf.float32), pos), official)


@pytest.mark.parametrize("recipe,effnet_recipe,normalization", [
    ("automl_legacy_normalized", "center_crop_v1", "imagenet"),
    ("automl_v2_normalized", "center_crop_v2", "inception_128")])
def test_normalized_output_matches_official_preprocess_image(golden, recipe, effnet_recipe, normalization):
  """The official preprocess_image normalizes on the host in float32; effnet normalizes the same floats on device."""
  for size, jpeg, pos, official in cases(golden, recipe):
    ours = pipeline.preprocess_eval_image(jpeg, size, effnet_recipe, dtype="float32").numpy()
    np.testing.assert_allclose(at(normalize(ours[None], normalization)[0], pos), official, rtol=0, atol=1e-6)


def pinned(window):
  def sampler(height, width):
    y, x, h, w = window
    return (0, 0, height, width) if h < 0 else (y, x, h, w)
  return sampler


def test_train_crop_matches_official_with_window_pinned(golden):
  """TPU/AML-legacy `_decode_and_random_crop` and AML `preprocess_for_train(transformations='crop')` on the same
  window: the crop, the whole-window fallback (none for a grayscale JPEG) and the resize, bit for bit."""
  for i, (recipe, size, k, window) in enumerate(TRAIN_CASES):
    np.testing.assert_array_equal(golden[f"train_window/{i}"], window)
    jpeg = tf.constant(golden[f"jpeg/{k}"].tobytes())
    ours = pipeline.crop_and_resize(jpeg, size, EFFNET_TRAIN[recipe], pinned(window)).numpy()
    np.testing.assert_array_equal(at(ours, golden[f"pos/{size}"]), golden[f"train/{i}"], err_msg=f"case {i}")


def test_v2_fast_decode_differs_by_at_most_two_levels(golden):
  """crop_while_decoding=True on a v2 recipe (decode_and_crop_jpeg instead of AML's full decode, then crop) is the
  documented faster option: it changes chroma upsampling next to the crop's edges only (docs/fidelity.md §3)."""
  worst = 0.0
  for size, jpeg, pos, official in cases(golden, "automl_v2"):
    if size >= 320:  # no crop there: both orders decode the whole image
      continue
    fast = pipeline.preprocess_eval_image(jpeg, size, "center_crop_v2", dtype="float32", crop_while_decoding=True)
    worst = max(worst, float(np.abs(at(fast.numpy(), pos) - official).max()))
  assert 0 < worst <= 2.0
