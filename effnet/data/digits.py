"""The built-in `digits` tfds dataset: scikit-learn's bundled 8x8 handwritten digits.

Why: the project needs a real dataset that prepares offline in well under a second (no download, no manual
files) so that the full train/eval path - tfds builder, per-host splits, tf.data, model, metrics - can be exercised
end to end on a laptop or in CI. Importing this module registers the builder under the name `digits`, after which
`tfds.builder('digits', data_dir=...)` / `tfds.load('digits', data_dir=...)` find it.

Data: sklearn.datasets.load_digits (1,797 images, pixel values 0..16, 10 classes). Pixels are stored as uint8
RGB: round(v * 255 / 16) replicated to 3 channels (EfficientNet stems take 3 channels), PNG-encoded by
`tfds.features.Image`. The split is deterministic and stratified: per class, the class's indices (in sklearn order)
are permuted with `np.random.RandomState(SPLIT_SEED)` and the first round(0.2 * n_class) go to `test`.
That gives test = 359 and train = 1,438 examples (see NUM_TRAIN / NUM_TEST). Each example also carries `index`,
its row in load_digits(), so tests and users can trace examples back to the sklearn reference.
"""
import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUM_EXAMPLES = 1797
NUM_TRAIN = 1438
NUM_TEST = 359
NUM_CLASSES = 10


def digits_to_uint8_rgb(images_0_16):
  """sklearn digit pixels (0..16, any float/int dtype, [..., 8, 8]) -> uint8 RGB [..., 8, 8, 3]."""
  x = np.rint(np.asarray(images_0_16, np.float64) * (255.0 / 16.0))
  x = np.clip(x, 0, 255).astype(np.uint8)
  return np.repeat(x[..., None], 3, axis=-1)


def split_indices(labels, seed=SPLIT_SEED, test_fraction=TEST_FRACTION):
  """Deterministic stratified split of load_digits() rows -> (train_idx, test_idx), both sorted."""
  labels = np.asarray(labels)
  rng = np.random.RandomState(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    perm = rng.permutation(idx)
    n_test = int(round(test_fraction * len(idx)))
    test.extend(perm[:n_test].tolist())
    train.extend(perm[n_test:].tolist())
  return np.sort(np.array(train, np.int64)), np.sort(np.array(test, np.int64))


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn 8x8 digits as uint8 RGB images; prepared locally, nothing is downloaded."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: stratified 1438/359 train/test split (seed 0)."}

  def _info(self):
    # DatasetInfo(builder=self, ...) directly: dataset_info_from_configs reads metadata files from the package dir.
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn load_digits(): 1,797 8x8 digits, pixels round(v*255/16) as uint8 RGB.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3), dtype=np.uint8, encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # bundled with scikit-learn: nothing to download
    from sklearn.datasets import load_digits
    d = load_digits()
    images = digits_to_uint8_rgb(d.images)
    labels = d.target.astype(np.int64)
    train_idx, test_idx = split_indices(labels)
    return {
        "train": self._generate_examples(images, labels, train_idx),
        "test": self._generate_examples(images, labels, test_idx),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      i = int(i)
      yield i, {"image": images[i], "label": int(labels[i]), "index": i}
