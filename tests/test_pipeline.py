"""Tests for the digits tfds builder, the host tf.data pipelines, normalize and the synthetic source.

References are independent of the code under test: sklearn's load_digits for pixel values, plain tfds reads of the
same splits for example multisets, crop windows computed by hand from the official formulas, TF/numpy image ops.
"""
import collections
import hashlib
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from effnet import config_lib
from effnet.data import normalize
from effnet.data import pipeline
from effnet.data import synthetic
from effnet.data import digits  # noqa: F401  (registers the builder)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  t0 = time.time()
  builder = tfds.builder("digits", data_dir=str(d))
  builder.download_and_prepare()
  assert time.time() - t0 < 5.0
  return str(d)


def data_cfg(**fields):
  """config_lib.base_config().data (the one set of defaults: the pipeline has none of its own) with `fields`."""
  cfg = config_lib.base_config().data
  cfg.update(fields)
  return cfg


def digits_cfg(data_dir, **kw):
  base = dict(name="digits", data_dir=data_dir, train_split="train", eval_split="test", image_size=8,
              eval_image_size=8, train_preprocess="resize", eval_preprocess="resize", flip=False, augment="none",
              shuffle_buffer=2048)
  base.update(kw)
  return data_cfg(**base)


def validate_data(cfg):
  """config_lib.validate of a whole config with this data section: where bad data fields are rejected."""
  c = config_lib.base_config()
  c.data = cfg
  config_lib.validate(c)


def key(image, label):
  return (int(label), hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())


def reference_multiset(data_dir, split):
  ds = tfds.load("digits", data_dir=data_dir, split=split, as_supervised=True)
  return collections.Counter(key(im, lab) for im, lab in tfds.as_numpy(ds))


# ---------------------------------------------------------------------------------------------------------------
# digits builder
# ---------------------------------------------------------------------------------------------------------------
def test_digits_builder_counts_and_pixels(data_dir):
  from sklearn.datasets import load_digits
  ref = load_digits()
  builder = tfds.builder("digits", data_dir=data_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 1438
  assert builder.info.splits["test"].num_examples == 359
  seen = {}
  for split in ("train", "test"):
    labels = []
    for ex in tfds.as_numpy(tfds.load("digits", data_dir=data_dir, split=split)):
      i = int(ex["index"])
      assert i not in seen
      seen[i] = split
      labels.append(int(ex["label"]))
      assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8
      assert int(ex["label"]) == int(ref.target[i])
      expected = np.clip(np.rint(ref.images[i] * 255.0 / 16.0), 0, 255).astype(np.uint8)
      for c in range(3):
        np.testing.assert_array_equal(ex["image"][..., c], expected)
    assert sorted(set(labels)) == list(range(10))
  assert sorted(seen) == list(range(1797))
  # a few pixels by hand: sklearn value 16 -> 255, 8 -> 128 (127.5 rounds to even 128), 1 -> 16 (15.94)
  assert np.rint(16 * 255 / 16) == 255 and np.rint(8 * 255 / 16) == 128 and np.rint(1 * 255 / 16) == 16


def test_digits_split_is_stratified(data_dir):
  counts = collections.Counter(
      int(lab) for _, lab in tfds.as_numpy(tfds.load("digits", data_dir=data_dir, split="test", as_supervised=True)))
  # sklearn class sizes 178,182,177,183,181,182,181,179,174,180 -> round(0.2*n)
  assert [counts[c] for c in range(10)] == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


# ---------------------------------------------------------------------------------------------------------------
# train pipeline
# ---------------------------------------------------------------------------------------------------------------
def test_train_batch_shapes(data_dir):
  cfg = digits_cfg(data_dir, train_preprocess="inception_v1", flip=True, image_size=16)
  ds = pipeline.create_train_dataset(cfg, global_batch_size=8, process_index=1, process_count=2, seed=3)
  b = next(iter(ds))
  assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == tf.uint8
  assert b["label"].shape == (4,) and b["label"].dtype == tf.int32
  assert set(b) == {"image", "label"}


def test_train_hosts_disjoint_and_cover_split(data_dir):
  cfg = digits_cfg(data_dir)
  per_host = []
  for host in (0, 1):
    ds = pipeline.create_train_dataset(cfg, global_batch_size=2, process_index=host, process_count=2, seed=0,
                                       num_epochs=1)
    c = collections.Counter()
    for b in tfds.as_numpy(ds):
      assert b["image"].shape == (1, 8, 8, 3)
      c[key(b["image"][0], b["label"][0])] += 1
    per_host.append(c)
  assert sum(per_host[0].values()) == sum(per_host[1].values()) == 719  # 1438 / 2
  # disjoint as multisets: together exactly the train split (identical duplicate images are counted, not merged)
  assert per_host[0] + per_host[1] == reference_multiset(data_dir, "train")


def _batches(ds, n):
  return [{k: np.array(v) for k, v in b.items()} for b in tfds.as_numpy(ds.take(n))]


def test_train_deterministic_and_epochs_differ(data_dir):
  cfg = digits_cfg(data_dir, train_preprocess="inception_v1", flip=True, image_size=16)
  a = _batches(pipeline.create_train_dataset(cfg, global_batch_size=16, process_index=0, process_count=1, seed=7), 4)
  b = _batches(pipeline.create_train_dataset(cfg, global_batch_size=16, process_index=0, process_count=1, seed=7), 4)
  c = _batches(pipeline.create_train_dataset(cfg, global_batch_size=16, process_index=0, process_count=1, seed=8), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))

  # one batch = one epoch of the 359-example split: epoch 0 and epoch 1 hold the same examples in another order
  cfg = digits_cfg(data_dir, train_split="test")
  e01 = _batches(pipeline.create_train_dataset(cfg, global_batch_size=359, process_index=0, process_count=1,
                                               seed=1, num_epochs=2), 3)
  assert len(e01) == 2
  k0 = [key(im, lab) for im, lab in zip(e01[0]["image"], e01[0]["label"])]
  k1 = [key(im, lab) for im, lab in zip(e01[1]["image"], e01[1]["label"])]
  assert collections.Counter(k0) == collections.Counter(k1) == reference_multiset(data_dir, "test")
  assert k0 != k1
  # resuming at epoch 1 reproduces epoch 1
  e1 = _batches(pipeline.create_train_dataset(cfg, global_batch_size=359, process_index=0, process_count=1,
                                              seed=1, start_epoch=1), 1)
  np.testing.assert_array_equal(e1[0]["image"], e01[1]["image"])


def test_autotune_off_changes_the_threads_not_the_batches(data_dir):
  """data.autotune=False (the demo's: deleting an autotuned iterator can wait for a thread of tf.data's own) turns
  tf.data autotuning off in the train and eval datasets and yields the very batches the autotuned pipeline does."""
  def train(autotune):
    cfg = digits_cfg(data_dir, train_preprocess="inception_v1", flip=True, image_size=16, autotune=autotune)
    return pipeline.create_train_dataset(cfg, global_batch_size=16, process_index=0, process_count=1, seed=3)

  def evaluate(autotune):
    cfg = digits_cfg(data_dir, autotune=autotune)
    return pipeline.create_eval_dataset(cfg, global_batch_size=64, process_index=0, process_count=1).dataset

  for make in (train, evaluate):
    on, off = make(True), make(False)
    assert on.options().autotune.enabled is not False and off.options().autotune.enabled is False
    for x, y in zip(_batches(on, 6), _batches(off, 6)):
      for name in x:
        np.testing.assert_array_equal(x[name], y[name])


def test_randaugment_hook_deterministic(data_dir):
  pytest.importorskip("effnet.data.augment")
  cfg = digits_cfg(data_dir, augment="randaugment", image_size=16)
  ds = pipeline.create_train_dataset(cfg, global_batch_size=8, process_index=0, process_count=1, seed=5,
                                     randaug_magnitude=15.0)
  a, b = [next(iter(tfds.as_numpy(ds)))["image"] for _ in range(2)]  # re-iteration restarts the seeded stream
  assert a.shape == (8, 16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  plain = next(iter(tfds.as_numpy(pipeline.create_train_dataset(
      digits_cfg(data_dir, image_size=16), global_batch_size=8, process_index=0, process_count=1, seed=5))))["image"]
  assert not np.array_equal(a, plain)


def test_ft_augment_cutout(data_dir):
  cfg = digits_cfg(data_dir, augment="ft", image_size=16)
  b = next(iter(tfds.as_numpy(pipeline.create_train_dataset(cfg, global_batch_size=8, process_index=0,
                                                            process_count=1))))
  assert b["image"].shape == (8, 16, 16, 3)
  img = tf.zeros([16, 16, 3], tf.uint8)
  from effnet.data import augment  # the one cutout: RandAugment's op, which the 'ft' augment calls
  out = augment.cutout(img, pad_size=4, fill=128, seed=tf.constant([1, 2], tf.int64)).numpy()
  box = out[..., 0] == 128
  assert 0 < box.sum() <= 64 and np.all(out[~box] == 0)
  rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
  assert box.sum() == len(rows) * len(cols)  # one axis-aligned rectangle


# ---------------------------------------------------------------------------------------------------------------
# eval pipeline
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split,global_batch", [("test[:358]", 32), ("test", 358), ("test", 32)])
def test_eval_every_example_once(data_dir, split, global_batch):
  cfg = digits_cfg(data_dir, eval_split=split)
  n_total = 358 if split == "test[:358]" else 359
  seen = collections.Counter()
  mask_sum = 0
  nb = []
  for host in (0, 1):
    ev = pipeline.create_eval_dataset(cfg, global_batch_size=global_batch, process_index=host, process_count=2)
    batches = list(tfds.as_numpy(ev.dataset))
    assert len(batches) == ev.num_batches
    nb.append(ev.num_batches)
    for b in batches:
      assert b["image"].shape == (global_batch // 2, 8, 8, 3) and b["image"].dtype == np.uint8
      assert b["mask"].dtype == np.int32 and b["label"].dtype == np.int32
      mask_sum += int(b["mask"].sum())
      for im, lab, m in zip(b["image"], b["label"], b["mask"]):
        if m:
          seen[key(im, lab)] += 1
        else:
          assert not im.any()
    assert ev.num_examples == n_total
  assert nb[0] == nb[1]
  assert mask_sum == n_total
  assert seen == reference_multiset(data_dir, split)
  if split == "test" and global_batch == 358:
    # hosts hold 180 and 179 examples with batch 179: host 1 emits a fully masked second batch
    assert nb == [2, 2]


# ---------------------------------------------------------------------------------------------------------------
# crops on synthetic gradients (windows by hand from the official formulas)
# ---------------------------------------------------------------------------------------------------------------
def gradient(h, w):
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([(2 * y) % 256, (3 * x) % 256, (y + x) % 256], -1).astype(np.uint8)


def legacy_bicubic(img, s):
  return tf.compat.v1.image.resize_bicubic(tf.constant(img[None], tf.float32), [s, s]).numpy()[0]


def as_uint8(x):
  return np.clip(np.round(np.asarray(x, np.float32)), 0, 255).astype(np.uint8)


def test_center_crop_v1_window_array_and_jpeg():
  img = gradient(101, 80)
  # S=224, pad 32: c = int(224/256 * 80) = 70; offsets ((101-70+1)//2, (80-70+1)//2) = (16, 5)
  expected = as_uint8(legacy_bicubic(img[16:86, 5:75], 224))
  out = pipeline.preprocess_eval_image(tf.constant(img), 224, "center_crop_v1").numpy()
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, expected)
  # the same via JPEG bytes (decode_and_crop_jpeg) against a full decode cropped by hand
  jpeg = tf.io.encode_jpeg(tf.constant(img), quality=95)
  full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
  expected_jpeg = as_uint8(legacy_bicubic(full[16:86, 5:75], 224))
  out_jpeg = pipeline.preprocess_eval_image(jpeg, 224, "center_crop_v1").numpy()
  assert np.abs(out_jpeg.astype(int) - expected_jpeg).max() <= 2


def test_center_crop_v2_window_and_squash():
  img = gradient(101, 80)
  # S=224 < 320: c = 70, offsets ((101-70)//2, (80-70)//2) = (15, 5), bilinear
  expected = as_uint8(tf.image.resize(img[15:85, 5:75], [224, 224], "bilinear"))
  out = pipeline.preprocess_eval_image(tf.constant(img), 224, "center_crop_v2").numpy()
  np.testing.assert_array_equal(out, expected)
  # S=320: no crop, whole image squashed
  expected = as_uint8(tf.image.resize(img, [320, 320], "bilinear"))
  out = pipeline.preprocess_eval_image(tf.constant(img), 320, "center_crop_v2").numpy()
  np.testing.assert_array_equal(out, expected)


def test_inception_crops_on_jpeg():
  img = gradient(120, 90)
  jpeg = tf.io.encode_jpeg(tf.constant(img), quality=95)
  for recipe in ("inception_v1", "inception_v2"):
    outs = [pipeline.preprocess_train_image(jpeg, 32, tf.constant([s, 0], tf.int64), recipe=recipe).numpy()
            for s in range(4)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) > 1  # different seeds -> different crops
    again = pipeline.preprocess_train_image(jpeg, 32, tf.constant([0, 0], tf.int64), recipe=recipe).numpy()
    np.testing.assert_array_equal(again, outs[0])


def test_imagenet_mock_pipeline():
  cfg = data_cfg(name="imagenet2012", train_preprocess="inception_v1", eval_preprocess="center_crop_v1")
  with tfds.testing.mock_data(num_examples=6):
    b = next(iter(tfds.as_numpy(pipeline.create_train_dataset(cfg, global_batch_size=4, process_index=0,
                                                               process_count=1, image_size=32))))
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].min() >= 0 and b["label"].max() < 1000
    ev = pipeline.create_eval_dataset(cfg, global_batch_size=4, process_index=0, process_count=1, image_size=32)
    masks = np.concatenate([x["mask"] for x in tfds.as_numpy(ev.dataset)])
    assert masks.sum() == ev.num_examples == ev.host_num_examples


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_errors(data_dir, tmp_path):
  cfg = digits_cfg(data_dir)
  with pytest.raises(ValueError, match="train.batch_size"):
    pipeline.create_train_dataset(cfg, global_batch_size=5, process_index=0, process_count=2)
  # Bad recipe names: rejected by config_lib.validate, before the pipeline (or anything else) starts.
  with pytest.raises(ValueError, match="train_preprocess.*inception_v1"):
    validate_data(digits_cfg(data_dir, train_preprocess="inception"))
  with pytest.raises(ValueError, match="eval_preprocess.*center_crop_v2"):
    validate_data(digits_cfg(data_dir, eval_preprocess="center"))
  with pytest.raises(ValueError, match="augment"):
    validate_data(digits_cfg(data_dir, augment="rand"))
  with pytest.raises(ValueError, match="digits"):
    pipeline.get_builder(digits_cfg(data_dir, name="digitz"))
  with pytest.raises(ValueError, match="manual"):
    pipeline.get_builder(data_cfg(name="imagenet2012", data_dir=str(tmp_path)))


def test_num_examples(data_dir):
  cfg = digits_cfg(data_dir)
  assert pipeline.num_train_examples(cfg) == 1438
  assert pipeline.num_train_examples(cfg, override=1000) == 1000
  assert pipeline.num_eval_examples(cfg) == 359


# ---------------------------------------------------------------------------------------------------------------
# device-side helpers
# ---------------------------------------------------------------------------------------------------------------
def test_normalize():
  import jax.numpy as jnp
  x = np.array([0, 128, 255], np.uint8)[:, None] * np.ones((1, 3), np.uint8)
  y = np.asarray(normalize(x[None, None], "imagenet"))[0, 0]
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(y[0], -mean / std, rtol=1e-5)
  np.testing.assert_allclose(y[2], (1 - mean) / std, rtol=1e-5)
  np.testing.assert_allclose(y[0, 0], -2.117904, rtol=1e-5)
  y = np.asarray(normalize(x, "inception_128"))
  np.testing.assert_allclose(y[:, 0], [-1.0, 0.0, 127 / 128])
  assert normalize(x, "inception_128", dtype=jnp.bfloat16).dtype == jnp.bfloat16
  # tensorflow/tpu's Lite/EdgeTPU builders: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3
  np.testing.assert_array_equal(np.asarray(normalize(np.array([0.0, 127.0, 255.0]), "edge")), [-127 / 128, 0.0, 1.0])
  # google/automl's fine-tuning preprocessing (augname 'ft'): (x / 255 - 0.5) / 0.5 in float32. XLA multiplies by
  # 1/255 instead of dividing: 1 ulp (1.2e-7 in [-1, 1]) off at about 43% of the values, as for 'imagenet'.
  pixels = np.arange(256, dtype=np.float32)
  np.testing.assert_allclose(np.asarray(normalize(pixels, "inception")),
                             (pixels / np.float32(255) - np.float32(0.5)) / np.float32(0.5), rtol=0, atol=1.2e-7)
  with pytest.raises(ValueError, match="normalization"):
    normalize(x, "zscore")


def test_synthetic_batches():
  it = synthetic.synthetic_batches(4, 16, 10, seed=0)
  b = [next(it) for _ in range(3)]
  assert b[0]["image"].shape == (4, 16, 16, 3) and b[0]["image"].dtype == np.uint8
  assert b[0]["label"].shape == (4,) and b[0]["label"].dtype == np.int32
  assert int(b[0]["label"].max()) < 10
  np.testing.assert_array_equal(np.asarray(b[0]["image"]), np.asarray(b[2]["image"]))  # cycles over 2
  assert len(list(synthetic.synthetic_batches(2, 8, 3, num_batches=5))) == 5
