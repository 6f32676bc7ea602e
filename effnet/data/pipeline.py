"""Host-side tf.data input pipelines (train and eval) over any tfds dataset, including the built-in `digits`.

Why this module exists: the accelerator must only ever see fixed-shape NHWC batches (uint8, or the official float32:
`data.image_dtype`), while the recipes from the official EfficientNet code (inception crop + legacy bicubic for v1,
area-0.05 crop + bilinear for v2, the two center-crop evals, RandAugment/AutoAugment on uint8) are TF image ops.
Everything TF lives here, on the host; the float conversion and mean/std normalisation happen on device
(`effnet.data.normalize`).

Design points:
* Per-host reading with `tfds.split_for_jax_process`: train drops the remainder so every host has the same epoch
  length; eval keeps every example and pads instead.
* Determinism: the epoch stream is `range(epochs).flat_map(shuffle(seed=f(seed, host, epoch)))`, so every epoch has
  its own fixed order and a run restarted at `start_epoch` sees the same example order it would have seen. All
  randomness in preprocessing is stateless, seeded per example from (seed, host, epoch, position), so a parallel map
  gives identical batches run to run. (With `shuffle_files` on multi-shard datasets the file order is drawn from a
  seeded tfds ReadConfig, reshuffled per iteration; that part restarts on resume.)
* Images are read with `tfds.decode.SkipDecoding()` so JPEGs go through `decode_and_crop_jpeg` (crop before the
  full decode); PNG/other encodings are decoded then cropped; already-decoded array features are cropped directly.
* Eval counts every example exactly once: each host pads its last batch with `mask == 0` examples and all hosts emit
  the same number of batches (hosts with fewer examples emit fully masked batches), so a multi-host jitted eval
  step never waits on a host that has run out of data.
"""
import collections
import difflib
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

try:  # keep TF off any GPU the host may have: JAX owns the accelerator
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # pragma: no cover - already initialised
  pass

from effnet.data import AUGMENTS, EVAL_PREPROCESS, IMAGE_DTYPES, RESIZE_METHODS, TRAIN_PREPROCESS  # noqa: E402
from effnet.data import bad_examples  # noqa: E402

_V2_NO_CROP_SIZE = 320  # AML center_crop_v2: at S >= 320 the whole image is squashed to SxS


# ----------------------------------------------------------------------------------------------------------------
# Config access. Every function here takes a whole `config.data` (built from config_lib.base_config, the one source
# of defaults) and reads its fields directly; config_lib.validate has checked them before any data loads.
# ----------------------------------------------------------------------------------------------------------------
def _check_choice(field, value, allowed):
  """For the public image functions below, whose direct callers pass plain recipe names (not a validated config)."""
  if value not in allowed:
    raise ValueError(f"data.{field}={value!r}; allowed: {tuple(allowed)}")


def per_host_batch_size(global_batch_size, process_count, field="train.batch_size"):
  """global // process_count; ValueError naming `field` when it does not divide (the process count is known only
  here, so config_lib.validate, which checks that the batch is > 0, cannot)."""
  if global_batch_size % process_count:
    raise ValueError(
        f"{field}={global_batch_size} is not divisible by the number of processes ({process_count}); "
        f"use a multiple of {process_count}")
  return global_batch_size // process_count


def _process_info(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # host-side only: which process am I
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return int(process_index), int(process_count)


# ----------------------------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------------------------
def _base_name(name):
  return name.split(":")[0].split("/")[0]


def get_builder(data_cfg, *, prepare=True):
  """tfds builder for config.data.name, prepared if needed (digits prepares offline in about a second).

  Errors (ValueError) before anything compiles: unknown dataset name (with close matches), and for datasets that
  need a manual download (imagenet2012) a missing manual_dir, naming the directory where tfds looks for the tars.
  """
  name = data_cfg.name
  if name.startswith("folder:"):  # a user's image folder: read where it lies, nothing to prepare
    from effnet.data import folder  # pylint: disable=g-import-not-at-top
    folder.check(name, [("data.train_split", data_cfg.train_split), ("data.eval_split", data_cfg.eval_split or "")])
    return folder.builder(name)
  data_dir = data_cfg.data_dir
  if _base_name(name) in ("digits", "digits_canvas"):
    from effnet.data import digits as _digits  # noqa: F401  (registers both builders)
  if data_dir is not None:
    data_dir = os.path.expanduser(str(data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    from effnet.data import digits as _digits  # noqa: F401,F811  (so 'digits' is among the hints)
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(_base_name(name), known, n=5)
    raise ValueError(
        f"data.name={name!r} is not a known tfds dataset; allowed: 'digits', 'digits_canvas' (built in, offline), "
        f"'imagenet2012' (manual download) or any name from tfds.list_builders()"
        + (f"; close matches: {close}" if close else "")) from e
  if prepare:
    _prepare(builder, data_cfg)
  return builder


def _prepare(builder, data_cfg):
  if builder.is_prepared():
    return
  manual_dir = data_cfg.manual_dir
  needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  expected_manual = manual_dir or os.path.join(str(builder._data_dir_root), "downloads", "manual")  # pylint: disable=protected-access
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=download_config)
  except AssertionError as e:
    if needs_manual and "Manual directory" in str(e):
      raise ValueError(
          f"Dataset {builder.name!r} is not prepared under data_dir={str(builder._data_dir_root)!r} "  # pylint: disable=protected-access
          f"and needs a manual download: put the archives (for imagenet2012: ILSVRC2012_img_train.tar and "
          f"ILSVRC2012_img_val.tar) in {expected_manual!r} (set config.data.manual_dir to use another "
          f"directory, or config.data.data_dir to point at an already prepared copy).") from e
    raise


def _split_num_examples(builder, split):
  """Number of examples in `split` (str or tfds sub-split) from the builder info; None if the info lacks it."""
  try:
    n = builder.info.splits[split].num_examples
  except (KeyError, ValueError, TypeError, AttributeError):
    return None
  return int(n) if n is not None else None


def host_split_num_examples(builder, split, process_index, process_count):
  """Examples one host reads per epoch of `split` (the train reading drops the remainder, so every host has
  floor(n / process_count)); counted when the builder info lacks split sizes (tfds mock data)."""
  n = _split_num_examples(builder, split)
  if n is None:
    n = _count(builder.as_dataset(split=split, decoders=_decoders(builder), shuffle_files=False))
  return n // process_count


def default_eval_split(builder):
  splits = builder.info.splits
  if splits and "validation" in splits:
    return "validation"
  return "test"


def _eval_split(data_cfg, builder):
  return data_cfg.eval_split or default_eval_split(builder)


def num_train_examples(data_cfg, override=None, builder=None):
  """config.train.num_train_examples (pass as `override`) if set, else the train split size from tfds."""
  if override is not None:
    return int(override)
  builder = builder or get_builder(data_cfg)
  n = _split_num_examples(builder, data_cfg.train_split)
  if n is None:
    raise ValueError(
        f"cannot read the size of split {data_cfg.train_split!r} of {builder.name!r} from tfds; "
        f"set config.train.num_train_examples")
  return n


def num_eval_examples(data_cfg, builder=None):
  """Size of the eval split (from tfds info, or by counting when the info has no splits, e.g. under mock data)."""
  builder = builder or get_builder(data_cfg)
  split = _eval_split(data_cfg, builder)
  n = _split_num_examples(builder, split)
  if n is None:
    n = _count(builder.as_dataset(split=split, decoders=_decoders(builder), shuffle_files=False))
  return n


def _count(ds):
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1).numpy())


def _keys(builder):
  sk = builder.info.supervised_keys
  if isinstance(sk, tuple) and len(sk) == 2 and all(isinstance(k, str) for k in sk):
    return sk
  return "image", "label"


def _host_reading(data_cfg, global_batch_size, batch_field, process_index, process_count, builder):
  """What one host's train or eval stream is read with: (process index, process count, per-host batch, the tfds
  builder, image key, label key); the batch is checked against the process count before the builder loads."""
  process_index, process_count = _process_info(process_index, process_count)
  batch = per_host_batch_size(global_batch_size, process_count, batch_field)
  builder = builder or get_builder(data_cfg)
  return (process_index, process_count, batch, builder) + tuple(_keys(builder))


def _decoders(builder):
  image_key, _ = _keys(builder)
  feature = builder.info.features[image_key] if image_key in builder.info.features else None
  if isinstance(feature, tfds.features.Image):
    return {image_key: tfds.decode.SkipDecoding()}
  return None


# ----------------------------------------------------------------------------------------------------------------
# Undecodable examples (config.data.bad_examples; the accounting and the log lines are in effnet.data.bad_examples)
#
# Streams are batched before anything decodes: batch k holds positions [kB, (k+1)B) of the host's stream whether
# or not an example in it is bad, so a resume, which skips raw positions, needs to know nothing of earlier
# failures. Each raw batch decodes in a one-batch dataset whose map raises on an undecodable example; ignore_errors
# and a row count turn that into "no batch", and only then does a second one-batch dataset decode its examples one
# by one, drop the failures, report them (the raw batch still holds every record id; Python runs only here) and
# refill their slots: train with a copy of the next example of the batch that decoded (the previous one for the
# last), eval with mask 0 so that they count in no metric. The normal path runs no Python, and per batch only a
# few small dataset ops more than a per-example map (measured: no slower on digits, README).
# ----------------------------------------------------------------------------------------------------------------
def _read_config(data_cfg, **kwargs):
  """tfds ReadConfig with a record id per example ('<file>__<index in file>'; see effnet.data.bad_examples)."""
  return tfds.ReadConfig(add_tfds_id=True, options=_options(data_cfg), **kwargs)


def _record_id(ex):
  """The example's tfds record id; '' from readers that give none (tfds mock data)."""
  return ex["tfds_id"] if "tfds_id" in ex else tf.constant("", tf.string)


def _rows(batch):
  return tf.shape(batch["id"] if "id" in batch else next(iter(batch.values())))[0]


def _decode_batches(raw_batches, decode, batch_size, *, policy, split, role, parallelism):
  """Raw batches (dicts of [n, ...]: encoded 'image', 'label', 'id', 'index', train also 'epoch') -> decode(example)
  of each row, each batch's undecodable examples handled per `policy` (see above). A batch decodes sequentially
  in one map_fn (no per-example dataset overhead); `parallelism` batches decode at once (see _parallelism)."""
  rows = {k: tf.TensorSpec(v.shape[1:], v.dtype) for k, v in raw_batches.element_spec.items()}
  decode = tf.function(decode).get_concrete_function(rows)  # traced once, called by the paths below
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), decode.structured_outputs)

  def decode_all(raw):
    return tf.map_fn(decode, raw, fn_output_signature=spec, parallel_iterations=1)

  def one_batch(raw):
    whole = tf.data.Dataset.from_tensors(raw).map(decode_all).ignore_errors()  # nothing if an example raised
    retry = tf.data.Dataset.from_tensors(raw).flat_map(lambda r: _decoded_one_by_one(r, decode, batch_size))
    return whole.concatenate(retry.map(lambda kept: _refill(raw, kept, decode, policy, split, role))).take(1)

  return raw_batches.interleave(one_batch, cycle_length=parallelism, block_length=1, num_parallel_calls=parallelism)


def _decoded_one_by_one(raw, decode, batch_size):
  """One batch of the examples of `raw` that decode, with their 'slot' in `raw` (zero rows when none does)."""
  examples = tf.data.Dataset.from_tensors(raw).unbatch().enumerate()
  kept = examples.map(lambda slot, ex: dict(decode(ex), slot=slot)).ignore_errors(log_warning=True)
  kept = kept.batch(batch_size)
  none = {k: tf.zeros([0] + spec.shape[1:].as_list(), spec.dtype) for k, spec in kept.element_spec.items()}
  return kept.concatenate(tf.data.Dataset.from_tensors(none)).take(1)


def _refill(raw, kept, decode, policy, split, role):
  """The batch of `raw` from its decoded examples `kept`: reports the others and fills their slots (see above)."""
  rows, slots = _rows(raw), kept["slot"]
  decoded = tf.scatter_nd(slots[:, None], tf.ones_like(slots, tf.int32), [rows])
  missing = tf.where(tf.equal(decoded, 0))[:, 0]
  epochs = tf.gather(raw["epoch"], missing) if "epoch" in raw else -tf.ones_like(missing)  # eval: one pass
  message = _report(policy, split, role, epochs, tf.gather(raw["index"], missing), tf.gather(raw["id"], missing))
  checks = [tf.debugging.Assert(tf.equal(message, ""), [message])]  # 'fail': stops here, naming the record
  if role == "train":
    with tf.control_dependencies(checks):
      checks.append(_first_error_unless(tf.size(slots) > 0, raw, decode, split))
  with tf.control_dependencies(checks):
    count = tf.size(slots, tf.int64)
    source = tf.searchsorted(slots, tf.range(tf.cast(rows, tf.int64)), side="left", out_type=tf.int64)
    source = tf.maximum(tf.where(source < count, source, count - 1), 0)  # the next decoded one, else the last
    out = {k: tf.gather(_with_zero_row(v), source) for k, v in kept.items() if k != "slot"}
  if "mask" in out:
    out["mask"] = out["mask"] * decoded
  return out


def _first_error_unless(any_decoded, raw, decode, split):
  """When no example of a train batch decoded (a broken dataset or preprocessing, more likely than a batch of bad
  files): the decoder's own error for the batch's first example, which names the cause."""
  def first_error():
    out = decode({k: v[0] for k, v in raw.items()})
    return tf.less(tf.size(out["image"]), 0)  # False, and depends on the decode (else pruned)

  decodes = tf.cond(any_decoded, lambda: tf.constant(True), first_error)
  return tf.debugging.Assert(decodes, [f"no example of a whole batch of train split {split!r} decoded"])


def _with_zero_row(values):
  """values plus a row of zeros after them, which the refill of a batch with no decoded example gathers."""
  return tf.concat([values, tf.zeros(tf.concat([[1], tf.shape(values)[1:]], 0), values.dtype)], 0)


def _padded_to(batches, batch_size, num_batches):
  """Eval batches padded to `batch_size` rows (mask 0) and followed by all-padding batches up to `num_batches`."""
  def zeros(rows, spec):
    return tf.zeros(tf.concat([[rows], tf.constant(spec.shape[1:].as_list(), tf.int32)], 0), spec.dtype)

  def pad(batch):
    missing = batch_size - _rows(batch)
    return {k: tf.concat([v, zeros(missing, batches.element_spec[k])], 0) for k, v in batch.items()}

  full = tf.data.Dataset.from_tensors({k: zeros(batch_size, spec) for k, spec in batches.element_spec.items()})
  return batches.map(pad).concatenate(full.repeat()).take(num_batches)


def _report(policy, split, role, epochs, indices, ids):
  """bad_examples.report in Python; returns its message (non-empty for 'fail')."""
  def call(epochs, indices, ids):
    return bad_examples.report(policy, split, role, epochs.numpy().tolist(), indices.numpy().tolist(),
                               ids.numpy().tolist())

  message = tf.py_function(call, [epochs, indices, ids], tf.string)
  message.set_shape([])
  return message


# ----------------------------------------------------------------------------------------------------------------
# Image ops (single HWC image, TF)
# ----------------------------------------------------------------------------------------------------------------
_V1_RECIPES = ("inception_v1", "inception_v1_0875", "center_crop_v1", "center_crop_v1_0875")
_FRACTION_0875 = ("inception_v1_0875", "center_crop_v1_0875")
_FULL_DECODE = ("inception_v2", "center_crop_v2")  # AML decodes the whole JPEG, then crops


def _resolve_resize(resize_method, recipe):
  if resize_method is not None:
    return resize_method
  return "bicubic" if recipe in _V1_RECIPES else "bilinear"


def _crop_while_decoding(crop_while_decoding, recipe):
  """None -> the recipe's official order: TPU/AML-legacy crop inside the JPEG decode (decode_and_crop_jpeg); AML's
  v2 code decodes the whole image and then crops, which differs by up to 2 levels near the crop's edges (chroma
  upsampling sees the neighbouring pixels); docs/fidelity.md §3."""
  return recipe not in _FULL_DECODE if crop_while_decoding is None else bool(crop_while_decoding)


def resize(image, image_size, method):
  """[h,w,c] -> float32 [S,S,c]. 'bicubic' = TF legacy resize_bicubic (no half-pixel centers, a=-0.75, as in the
  official v1 code); 'bilinear' = tf.image.resize bilinear (half-pixel centers, as in the official v2 code)."""
  _check_choice("resize_method", method, RESIZE_METHODS)
  if method == "bicubic":
    # raw op = tf.compat.v1.image.resize_bicubic without its deprecation warning
    return tf.raw_ops.ResizeBicubic(images=image[None], size=[image_size, image_size], align_corners=False,
                                    half_pixel_centers=False)[0]
  return tf.image.resize(image, [image_size, image_size], method="bilinear")


def to_uint8(image):
  """Nearest uint8 (effnet's compact eval/train output; the official code keeps the float, see `cast_output`)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def truncate_to_uint8(image):
  """The official conversion before AutoAugment/RandAugment: clip to [0, 255], then cast (truncates)."""
  return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def cast_output(image, dtype):
  """Float resize output -> the pipeline's output dtype. 'float32' is the official output (unrounded, with the
  bicubic over/undershoot beyond [0, 255]); 'bfloat16' is what TPU's v1 code feeds with use_bfloat16 (its
  default); 'uint8' rounds and clips: 4x fewer host bytes, at most 0.5 level off inside [0, 255]."""
  if dtype not in IMAGE_DTYPES:  # a config's data.image_dtype is checked by config_lib.validate before this runs
    raise ValueError(f"dtype={dtype!r}; allowed: {IMAGE_DTYPES}")
  if dtype == "uint8":
    return to_uint8(image)
  return tf.cast(image, tf.float32 if dtype == "float32" else tf.bfloat16)


def v1_crop_padding(image_size, recipe, crop_padding=32):
  """The pixels the v1 center crop pads S by: `crop_padding` (TPU before Nov 2021, AML legacy: 32), or, for the
  *_0875 recipes (TPU since Nov 2021, commit 22d5cab), round(S * (1/0.875 - 1)) in Python floats, about S/7."""
  if recipe in _FRACTION_0875:
    return round(image_size * (1 / 0.875 - 1))
  return crop_padding


def center_crop_window(height, width, image_size, recipe, crop_padding=32):
  """Crop window (y, x, h, w) of the eval recipes, as int32 tensors.

  center_crop_v1 (TPU before Nov 2021, AML legacy): c = int(S/(S+pad) * min(h,w)), offset ((h-c+1)//2, (w-c+1)//2).
  center_crop_v1_0875 (TPU since Nov 2021): the same with pad = round(S/7) (`v1_crop_padding`).
  center_crop_v2 (official AML): S < 320: the same c, offset ((h-c)//2, (w-c)//2); S >= 320: whole image.
  resize: whole image.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  if recipe == "resize" or (recipe == "center_crop_v2" and image_size >= _V2_NO_CROP_SIZE):
    return tf.constant(0, tf.int32), tf.constant(0, tf.int32), height, width
  pad = v1_crop_padding(image_size, recipe, crop_padding)
  ratio = image_size / (image_size + pad)  # a Python float, made float32 by the product (as in the official code)
  c = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  rounding = 0 if recipe == "center_crop_v2" else 1
  return (height - c + rounding) // 2, (width - c + rounding) // 2, c, c


def _sample_window(height, width, recipe, seed):
  """Inception-style random window (y, x, h, w) drawn with a stateless seed; 'resize', 'pad_crop' -> the whole image."""
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  if recipe in ("resize", "pad_crop"):
    return tf.constant(0, tf.int32), tf.constant(0, tf.int32), height, width
  bbox = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)
  if recipe in _V1_RECIPES:
    kwargs = dict(min_object_covered=0.1, aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=(0.08, 1.0),
                  max_attempts=10)
  else:  # inception_v2 (AML): TF's default aspect range and attempts
    kwargs = dict(min_object_covered=0.0, aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0),
                  max_attempts=100)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([height, width, 3]), bbox, seed=seed, use_image_if_no_bounding_boxes=True, **kwargs)
  return begin[0], begin[1], size[0], size[1]


def _train_window(window, height, width, channels, image_size, recipe, crop_padding):
  """The v1 recipes replace a window covering the whole image by their eval center crop, as TPU's
  `_decode_and_random_crop` does: it compares all 3 of (h, w, channels) of the JPEG header with the decoded crop
  (3 channels), so a grayscale or CMYK JPEG never falls back and is resized whole."""
  y, x, h, w = (tf.cast(v, tf.int32) for v in window)
  if recipe not in ("inception_v1", "inception_v1_0875"):
    return y, x, h, w
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  whole = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
  whole = tf.logical_and(whole, tf.equal(tf.cast(channels, tf.int32), 3))
  eval_recipe = "center_crop_v1_0875" if recipe == "inception_v1_0875" else "center_crop_v1"
  cy, cx, ch, cw = center_crop_window(height, width, image_size, eval_recipe, crop_padding)
  return tuple(tf.where(whole, a, b) for a, b in zip((cy, cx, ch, cw), (y, x, h, w)))


def _to_rgb(image):
  if image.shape.rank == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return image


def decode_and_crop(image, window_fn, crop_while_decoding=True):
  """Encoded bytes or a decoded array -> uint8 RGB crop.

  window_fn(height, width, channels) -> (y, x, h, w); channels is the JPEG header's (1 grayscale, 3, 4 CMYK), else 3.
  JPEG with crop_while_decoding: decode_and_crop_jpeg (decodes only the window's rows; TPU's order); without it, a
  full decode then the crop (AML v2's order). Other formats: decode, then crop.
  """
  if image.dtype == tf.string:
    def jpeg():
      shape = tf.image.extract_jpeg_shape(image)
      y, x, h, w = window_fn(shape[0], shape[1], shape[2])
      if crop_while_decoding:
        return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, h, w]), channels=3)
      return tf.io.decode_jpeg(image, channels=3)[y:y + h, x:x + w, :]

    def other():
      decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
      return _crop_array(decoded, window_fn)

    out = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    out.set_shape([None, None, 3])
    return out
  image = _to_rgb(tf.convert_to_tensor(image))
  if image.dtype != tf.uint8:
    image = tf.cast(image, tf.uint8)
  return _crop_array(image, window_fn)


def _crop_array(image, window_fn):
  shape = tf.shape(image)
  y, x, h, w = window_fn(shape[0], shape[1], 3)
  return image[y:y + h, x:x + w, :]


def preprocess_eval_image(image, image_size, recipe="center_crop_v1", crop_padding=32, resize_method=None,
                          dtype="uint8", crop_while_decoding=None):
  """Encoded bytes or HWC array -> [S,S,3] `dtype` per the eval recipe (docs/fidelity.md §3).

  dtype 'float32' (or 'bfloat16') is the official output; 'uint8' its rounded, clipped copy (`cast_output`).
  crop_while_decoding None: the recipe's official decode order (`_crop_while_decoding`).
  """
  _check_choice("eval_preprocess", recipe, EVAL_PREPROCESS)
  method = _resolve_resize(resize_method, recipe)
  crop = decode_and_crop(image, lambda h, w, c: center_crop_window(h, w, image_size, recipe, crop_padding),
                         _crop_while_decoding(crop_while_decoding, recipe))
  out = cast_output(resize(crop, image_size, method), dtype)
  out.set_shape([image_size, image_size, 3])
  return out


def crop_and_resize(image, image_size, recipe, window_sampler, crop_padding=32, resize_method=None,
                    crop_while_decoding=None):
  """The train crop before flip and augmentation: float32 [S,S,3].

  window_sampler(height, width) -> (y, x, h, w), the sampled window; the v1 recipes then apply the official
  whole-image fallback (`_train_window`). Public so the official outputs can be checked with their window pinned.
  """
  _check_choice("train_preprocess", recipe, TRAIN_PREPROCESS)

  def window_fn(h, w, c):
    return _train_window(window_sampler(h, w), h, w, c, image_size, recipe, crop_padding)

  crop = decode_and_crop(image, window_fn, _crop_while_decoding(crop_while_decoding, recipe))
  return resize(crop, image_size, _resolve_resize(resize_method, recipe))


def preprocess_train_image(image, image_size, seed, recipe="inception_v1", crop_padding=32, resize_method=None,
                           flip=True, augment="none", randaug_num_layers=2, randaug_magnitude=10.0,
                           dtype="uint8", crop_while_decoding=None, augment_on_device=False):
  """Encoded bytes or HWC array -> [S,S,3] `dtype`: random crop, resize, flip, augmentation. `seed`: int [2].

  With an augmentation the image becomes uint8 as the official code makes it (clip, truncate) before the ops;
  without one, `cast_output` (uint8 rounds; 'float32' is the official output). `augment_on_device` (with
  augment='none', dtype='uint8'): the train step applies RandAugment (data.randaug_on_device), so the image is
  clipped and truncated here as the official code does before its ops, not rounded (docs/fidelity.md §3).
  """
  _check_choice("train_preprocess", recipe, TRAIN_PREPROCESS)
  _check_choice("augment", augment, AUGMENTS)
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
  out = crop_and_resize(image, image_size, recipe, lambda h, w: _sample_window(h, w, recipe, seeds[0]),
                        crop_padding, resize_method, crop_while_decoding)
  if recipe == "pad_crop":  # its window is the whole image, so seeds[0] is free for the shift
    out = pad_and_random_crop(out, image_size, seeds[0])
  if flip:
    out = tf.image.stateless_random_flip_left_right(out, seeds[1])
  if augment == "none" and augment_on_device and dtype == "uint8":
    out = truncate_to_uint8(out)
  elif augment == "none":
    out = cast_output(out, dtype)
  else:
    out = apply_augment(truncate_to_uint8(out), augment, randaug_num_layers, randaug_magnitude, seeds[2])
    out = cast_output(tf.cast(out, tf.float32), dtype) if dtype != "uint8" else out
  out.set_shape([image_size, image_size, 3])
  return out


def pad_and_random_crop(image, image_size, seed):
  """The small-image train recipe 'pad_crop' (ResNet paper §4.2, CIFAR at 32 px): the resized [S,S,3] image padded
  with S//8 zero pixels on each side, then a random S×S window: a shift of up to S/8 in x and y, no rescaling.
  Why: inception crops keep as little as 5-8% of the area, which cuts a small centred object (a digit) apart."""
  pad = image_size // 8
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, [image_size, image_size, 3], seed=seed)


def apply_augment(image, augment, num_layers, magnitude, seed):
  """Augmentation hook on a uint8 HWC image. effnet.data.augment is imported lazily (only when used)."""
  _check_choice("augment", augment, AUGMENTS)
  if augment == "none":
    return image
  from effnet.data import augment as aug  # pylint: disable=import-outside-toplevel
  if augment == "ft":
    size = image.shape[0] or tf.shape(image)[0]
    return aug.cutout(image, pad_size=size // 4, fill=128, seed=seed)
  if augment == "randaugment":
    return aug.randaugment(image, num_layers, magnitude, seed=seed)
  return aug.autoaugment(image, policy="v0", seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def _prefetch(data_cfg):
  p = data_cfg.prefetch
  return tf.data.AUTOTUNE if p is None or p < 0 else int(p)


def _options(data_cfg):
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.autotune.enabled = bool(data_cfg.autotune)
  return options


def _parallelism(data_cfg):
  """How many batches decode at once: tf.data's choice with data.autotune (at most one per core, fewer when its
  RAM budget says so), else one per core this process may use.

  Why a choice: with autotuning on, deleting an iterator can wait for a thread of tf.data's own (py-spy --native:
  RootDataset's iterator destructor joining it). On the 2-core CPU, with a train step running beside it, that
  took 7-59 s at the end of about half the digits runs (README "The demo"); with autotuning off the wait did not
  occur. Off, the parallelism is fixed at the core count, which on a big TPU host can hold more decoded batches in
  memory than the RAM budget autotuning keeps to; so it stays on by default."""
  if data_cfg.autotune:
    return tf.data.AUTOTUNE
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def create_train_dataset(data_cfg, *, global_batch_size, image_size=None, process_index=None, process_count=None,
                         seed=0, start_epoch=0, num_epochs=None, augment=None, randaug_num_layers=None,
                         randaug_magnitude=None, shuffle=True, builder=None, skip_examples=0):
  """Per-host train batches {'image': [B,S,S,3] of data.image_dtype, 'label': int32 [B]}, B = global_batch_size //
  process_count.

  Deterministic for a given (seed, process_index, epoch). `image_size`, `augment` and `randaug_magnitude` override
  config.data so that progressive learning can rebuild the dataset per stage (use start_epoch = the stage's first
  epoch). num_epochs=None repeats forever; otherwise the stream ends after `num_epochs` epochs (partial last batch
  dropped). Every host yields the same number of batches per epoch (the split's remainder is dropped).
  `skip_examples` drops that many of this host's examples at the start of `start_epoch` before any decoding, so a
  run resumed mid-epoch continues the exact example stream (and per-example augmentation seeds) it left. An example
  that does not decode stops the stream (data.bad_examples='fail') or is dropped, its slot in the batch taken by a
  copy of another example of that batch ('skip'), so every batch holds the same records as in an uninterrupted run
  (see _decode_batches).
  """
  process_index, process_count, batch, builder, image_key, label_key = _host_reading(
      data_cfg, global_batch_size, "train.batch_size", process_index, process_count, builder)
  image_size = int(image_size or data_cfg.image_size)
  recipe = data_cfg.train_preprocess
  augment = augment if augment is not None else data_cfg.augment
  num_layers = randaug_num_layers if randaug_num_layers is not None else data_cfg.randaug_num_layers
  magnitude = randaug_magnitude if randaug_magnitude is not None else data_cfg.randaug_magnitude
  crop_padding = data_cfg.crop_padding
  resize_method = data_cfg.resize_method
  flip = bool(data_cfg.flip)
  image_dtype = data_cfg.image_dtype
  # the step runs RandAugment (train.py then passes augment='none'): the host truncates as the official code does
  augment_on_device = bool(data_cfg.randaug_on_device) and data_cfg.augment == "randaugment"

  split = tfds.split_for_jax_process(data_cfg.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  host_seed = tf.constant([seed, process_index], tf.int64)
  read_config = _read_config(data_cfg, shuffle_seed=int(seed) * 1000003 + process_index,
                             shuffle_reshuffle_each_iteration=True)
  base = builder.as_dataset(split=split, shuffle_files=bool(shuffle and data_cfg.shuffle_files),
                            decoders=_decoders(builder), read_config=read_config)
  base = base.map(lambda ex: {"image": ex[image_key], "label": ex[label_key], "id": _record_id(ex)})
  if data_cfg.cache:
    base = base.cache()
  buffer = int(data_cfg.shuffle_buffer)

  def epoch_dataset(epoch):
    epoch_seed = tf.random.experimental.stateless_fold_in(host_seed, epoch)
    ds = base
    if shuffle:
      # fold_in returns [f(seed), data]: draw a full-range int64 from the whole pair for the shuffle seed
      shuffle_seed = tf.random.stateless_uniform([], seed=epoch_seed, minval=None, maxval=None, dtype=tf.int64)
      ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.enumerate().map(
        lambda i, ex: dict(ex, seed=tf.random.experimental.stateless_fold_in(epoch_seed, i), epoch=epoch, index=i))

  last = start_epoch + num_epochs if num_epochs is not None else np.iinfo(np.int64).max
  ds = tf.data.Dataset.range(start_epoch, last).flat_map(epoch_dataset)
  if skip_examples:
    ds = ds.skip(int(skip_examples))

  def preprocess(example_seed, ex):
    image = preprocess_train_image(
        ex["image"], image_size, example_seed, recipe=recipe, crop_padding=crop_padding,
        resize_method=resize_method, flip=flip, augment=augment, randaug_num_layers=num_layers,
        randaug_magnitude=magnitude, dtype=image_dtype, augment_on_device=augment_on_device)
    return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.batch(batch, drop_remainder=True)  # before decoding: see _decode_batches
  ds = _decode_batches(ds, lambda ex: preprocess(ex["seed"], ex), batch, policy=data_cfg.bad_examples,
                       split=data_cfg.train_split, role="train", parallelism=_parallelism(data_cfg))
  ds = ds.prefetch(_prefetch(data_cfg))
  return ds.with_options(_options(data_cfg))


EvalData = collections.namedtuple("EvalData", ["dataset", "num_batches", "num_examples", "host_num_examples",
                                               "per_host_batch_size"])
EvalData.__doc__ = """Eval stream of one host.

dataset: finite tf.data.Dataset of {'image': [B,S,S,3] of data.image_dtype, 'label': int32 [B], 'mask': int32 [B]}
  (mask 1 for real examples, 0 for padding); exactly `num_batches` batches on every host. Iterate it once per
  evaluation.
num_examples: the whole eval split (all hosts); host_num_examples: this host's real examples.
"""


def eval_image_fn(data_cfg, image_size):
  """image (encoded bytes or HWC array) -> the eval image the config's recipe gives at `image_size`, in
  data.image_dtype: what create_eval_dataset maps, public so the tests hold it to the official outputs."""
  return lambda image: preprocess_eval_image(image, image_size, data_cfg.eval_preprocess, data_cfg.crop_padding,
                                             data_cfg.resize_method, dtype=data_cfg.image_dtype)


def create_eval_dataset(data_cfg, *, global_batch_size, image_size=None, process_index=None, process_count=None,
                        builder=None):
  """Eval batches for this host: every example exactly once over all hosts, same batch count on every host."""
  process_index, process_count, batch, builder, image_key, label_key = _host_reading(
      data_cfg, global_batch_size, "eval batch size", process_index, process_count, builder)
  image_size = int(image_size or data_cfg.eval_image_size)
  preprocess_image = eval_image_fn(data_cfg, image_size)
  split = _eval_split(data_cfg, builder)
  decoders = _decoders(builder)

  host_splits = [tfds.split_for_jax_process(split, process_index=i, process_count=process_count,
                                            drop_remainder=False) for i in range(process_count)]

  def read(s):
    return builder.as_dataset(split=s, shuffle_files=False, decoders=decoders,
                              read_config=_read_config(data_cfg))

  counts = [_split_num_examples(builder, s) for s in host_splits]
  if any(c is None for c in counts):  # e.g. tfds mock data: no split info -> count
    counts = [_count(read(s)) for s in host_splits]
  num_batches = max(math.ceil(c / batch) for c in counts) if counts else 0
  host_count = counts[process_index]

  def preprocess(ex):
    image = preprocess_image(ex[image_key])
    return {"image": image, "label": tf.cast(ex[label_key], tf.int32), "mask": tf.constant(1, tf.int32)}

  raw = read(host_splits[process_index]).enumerate().map(
      lambda i, ex: {image_key: ex[image_key], label_key: ex[label_key], "id": _record_id(ex), "index": i})
  bad_examples.reset("eval", split)  # each pass of this dataset drops the same examples: count them once
  ds = _decode_batches(raw.batch(batch), preprocess, batch, policy=data_cfg.bad_examples, split=split, role="eval",
                       parallelism=_parallelism(data_cfg))
  ds = _padded_to(ds, batch, num_batches)
  if data_cfg.cache:
    ds = ds.cache()
  ds = ds.prefetch(_prefetch(data_cfg)).with_options(_options(data_cfg))
  return EvalData(ds, num_batches, int(sum(counts)), int(host_count), batch)
