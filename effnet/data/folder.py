"""`data.name='folder:/path'`: a user's own image folder as a tfds dataset, for fine-tuning.

Why a module of its own: fine-tuning on one's own images is the most common use of released weights, and the
pipeline (effnet.data.pipeline) reads everything through a tfds builder. tfds' own `ImageFolder` reads the layout
`root/<split>/<class>/<image>.{jpg,jpeg,png}` (class names: the union of the class folders of every split,
sorted, so label i is the i-th name; examples shuffled once, deterministically, per split), but it refuses
sub-splits, which per-host reading (`tfds.split_for_jax_process`) and sub-splits such as `train[:90%]` need.
`FolderBuilder` adds them: a sub-split is resolved by tfds' own split arithmetic into a slice of the split's file
list. Each example's record id (the pipeline's bad-example log) is its file path.

The layout needs split folders: a folder whose sub-folders hold images directly (`root/<class>/<image>`, no split)
is refused with the layout to use; a user with one split folder can carve an eval split from it
(`data.train_split='train[:90%]'`, `data.eval_split='train[90%:]'`).

The layout checks (`check`) are plain Python, no TensorFlow, so config_lib.validate runs them before anything
loads; only `builder` imports tfds.
"""
from __future__ import annotations

import functools
import os

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # the files tfds' ImageFolder reads


def is_folder_name(name) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def root_of(name: str) -> str:
  """'folder:~/pets' -> the expanded path '/home/me/pets'."""
  return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


def _subfolders(path: str) -> list[str]:
  return sorted(f for f in os.listdir(path) if os.path.isdir(os.path.join(path, f)))


def _has_images(path: str) -> bool:
  return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path))


def _fail(name, problem: str) -> None:
  raise ValueError(f'data.name={name!r}: {problem}; allowed: folder:/path to a folder laid out as '
                   f'/path/<split>/<class>/<image>.jpg|.jpeg|.png, e.g. /path/train/cat/1.jpg and /path/test/cat/7.jpg '
                   f'(class names: the class folders of all splits together)')


def default_eval_split(name: str) -> str:
  """'validation' when the folder has one, else 'test' (pipeline.default_eval_split's rule for data.eval_split=None)."""
  return 'validation' if os.path.isdir(os.path.join(root_of(name), 'validation')) else 'test'


def class_names(name: str) -> list[str]:
  """The sorted class names of folder dataset `name` (what tfds' ImageFolder numbers 0, 1, ...), after `check`."""
  root = root_of(name)
  return sorted({c for split in _subfolders(root) for c in _subfolders(os.path.join(root, split))})


def num_images(name: str, split: str) -> int:
  """The image files of split folder `split` (what ImageFolder reads), e.g. for train.num_train_examples."""
  split_dir = os.path.join(root_of(name), split)
  return sum(sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(os.path.join(split_dir, c)))
             for c in _subfolders(split_dir))


def check(name: str, splits=()) -> list[str]:
  """Checks the folder's layout and that each of `splits` (plain split names, or sub-splits like 'train[:90%]')
  has a folder; returns the class names. ValueError naming data.name (or the split's field) otherwise."""
  root = root_of(name)
  if not os.path.isdir(root):
    _fail(name, f'{root!r} is not a directory')
  split_names = _subfolders(root)
  if not split_names:
    _fail(name, f'{root!r} has no sub-folders')
  for split in split_names:
    split_dir = os.path.join(root, split)
    if _has_images(split_dir):
      _fail(name, f'{split_dir!r} holds images directly: it looks like a class folder without a split folder '
                  f'above it (move the class folders into {os.path.join(root, "train")!r})')
    if not _subfolders(split_dir):
      _fail(name, f'split folder {split_dir!r} has no class sub-folders')
  for field, split in ((f, s) for f, s in splits if s):
    for base in (part.split('[')[0].strip() for part in split.split('+')):
      if base not in split_names:
        raise ValueError(f'{field}={split!r}: no split folder {base!r} under {root!r}; allowed: {split_names} '
                         f'(or a sub-split of one, e.g. {split_names[0] + "[:90%]"!r})')
  return class_names(name)


def builder(name: str):
  """The tfds builder of folder dataset `name` (no preparation: it reads the image files where they are)."""
  return _builder_class()(root_of(name))


@functools.cache
def _builder_class():
  """tfds' ImageFolder with sub-splits; built on first use so that importing this module needs no TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class FolderBuilder(tfds.folder_dataset.ImageFolder):
    """ImageFolder whose `as_dataset` takes sub-splits ('train[:90%]', tfds.split_for_jax_process's)."""

    def _as_dataset(self, split, shuffle_files=False, decoders=None, read_config=None):
      del shuffle_files  # one 'file' per split: the pipeline's seeded shuffle buffer does the shuffling
      examples = self._examples_of(split)
      labels = [self.info.features['label'].str2int(e.label) for e in examples]
      paths = [e.image_path for e in examples]
      ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int64)))
      with_id = bool(read_config and read_config.add_tfds_id)

      def load(path, label):
        ex = self.info.features.decode_example(
            {'image': tf.io.read_file(path), 'label': label, 'image/filename': path}, decoders=decoders)
        return dict(ex, tfds_id=path) if with_id else ex

      return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _examples_of(self, split):
      """The examples of a split or sub-split, in the split's (deterministically shuffled) order."""
      by_file = {self.info.splits[s].filenames[0]: s for s in self._split_examples}
      out = []
      for instruction in self.info.splits[split].file_instructions:
        examples = self._split_examples[by_file[os.path.basename(instruction.filename)]]
        out.extend(examples[instruction.skip:instruction.skip + instruction.take])
      return out

  return FolderBuilder
