"""The built-in `digits` tfds dataset: scikit-learn's bundled 8x8 handwritten digits; and `digits_canvas`, the same
digits at 2-3x their pixels on a larger canvas (see DigitsCanvas), where the input resolution matters.

Why: the project needs a real dataset that prepares offline in well under a second (no download, no manual
files) so that the full train/eval path - tfds builder, per-host splits, tf.data, model, metrics - can be exercised
end to end on a laptop or in CI. Importing this module registers the builder under the name `digits`, after which
`tfds.builder('digits', data_dir=...)` / `tfds.load('digits', data_dir=...)` find it (and 'digits_canvas').

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


# ----------------------------------------------------------------------------------------------------------------
# digits_canvas: the same digits at 2-3x their pixels, near the centre of a larger canvas (resolution matters)
# ----------------------------------------------------------------------------------------------------------------
CANVAS_SIZE = 32
CANVAS_DIGIT_SIZES = (16, 24)  # inclusive range of the pasted digit's side in pixels: 2-3x the 8x8 source
CANVAS_NOISE_STD = 8.0         # Gaussian pixel noise in uint8 levels, before rounding and clipping
CANVAS_SEED = 1
CANVAS_JITTER = 3              # None: anywhere on the canvas; else ±pixels around the centre


def bilinear_matrix(out_size, in_size=8):
  """[out, in] weights of a 1-D bilinear resize with half-pixel centres (edges clamped): rows sum to 1."""
  src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0, in_size - 1.0)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  w = np.zeros((out_size, in_size))
  w[np.arange(out_size), lo] += 1.0 - frac
  w[np.arange(out_size), hi] += frac
  return w


def canvas_placement(index, seed=CANVAS_SEED, canvas=CANVAS_SIZE, sizes=CANVAS_DIGIT_SIZES, jitter=CANVAS_JITTER):
  """(RandomState, y, x, side) of load_digits() row `index`: its own stream, so any subset builds identically.
  The digit's corner is uniform over the canvas (jitter None) or within ±jitter pixels of the centred position."""
  rng = np.random.RandomState([seed, int(index)])
  side = int(rng.randint(sizes[0], sizes[1] + 1))
  if jitter is None:
    y, x = (int(v) for v in rng.randint(0, canvas - side + 1, size=2))
  else:
    centre = (canvas - side) // 2
    y, x = (int(np.clip(centre + v, 0, canvas - side)) for v in rng.randint(-jitter, jitter + 1, size=2))
  return rng, y, x, side


def digit_on_canvas(image_0_16, index, seed=CANVAS_SEED, canvas=CANVAS_SIZE, sizes=CANVAS_DIGIT_SIZES,
                    noise_std=CANVAS_NOISE_STD, jitter=CANVAS_JITTER):
  """One 8x8 digit (0..16) -> (uint8 RGB [canvas, canvas, 3], (y, x, side)).

  The digit is resized bilinearly to side x side pixels (side uniform in `sizes`), scaled to 0..255, pasted on a
  black canvas (see canvas_placement), then Gaussian noise is added to the whole canvas. At half the canvas
  resolution the default digit is 8-12 px, about its source pixels, which is what makes resolution matter.
  """
  rng, y, x, side = canvas_placement(index, seed, canvas, sizes, jitter)
  w = bilinear_matrix(side)
  out = np.zeros((canvas, canvas))
  out[y:y + side, x:x + side] = w @ (np.asarray(image_0_16, np.float64) * (255.0 / 16.0)) @ w.T
  out += rng.normal(0.0, noise_std, size=out.shape)
  out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return np.repeat(out[..., None], 3, axis=-1), (y, x, side)


class DigitsCanvas(tfds.core.GeneratorBasedBuilder):
  """`digits_canvas`: each digit of `digits` (same split) at 16-24 px, within ±3 px of the centre of a noisy 32x32
  canvas; built offline.

  Why: the 8x8 digits resized to fill the image carry no detail above 16 px, so a model trained at 16 px is as good
  as at 32 px and progressive learning (small images first) cannot show its benefit. Here a 16 px input shrinks the
  digit to 8-12 px, the size at which the demo net does not learn version 1.0.0's digits at 32 px (README).
  Version 1.0.0 pasted 8-12 px digits anywhere on the canvas: the demo net learned nothing from it."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Digits at 8-12 px, uniform position, noise std 8 levels, on 32x32 canvases.",
                   "2.0.0": "Digits at 16-24 px within ±3 px of the centre, noise std 8 levels, on 32x32 canvases."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn load_digits() pasted at 16-24 px near the centre of noisy 32x32 canvases.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8,
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "index": np.int64,
            "box": tfds.features.Tensor(shape=(3,), dtype=np.int64),  # y, x, side of the digit
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # built from scikit-learn's bundled digits: nothing to download
    from sklearn.datasets import load_digits
    d = load_digits()
    labels = d.target.astype(np.int64)
    train_idx, test_idx = split_indices(labels)
    return {"train": self._generate_examples(d.images, labels, train_idx),
            "test": self._generate_examples(d.images, labels, test_idx)}

  def _generate_examples(self, images, labels, indices):
    for i in (int(i) for i in indices):
      image, box = digit_on_canvas(images[i], i)
      yield i, {"image": image, "label": int(labels[i]), "index": i, "box": np.asarray(box, np.int64)}
