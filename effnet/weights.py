"""The one way to read model variables out of an effnet checkpoint, for inference (evaluate, predict, export) or as
the initialisation of a fine-tune.

Three kinds of directory hold the same layout (a folder of step folders, each with a `state` item whose top-level
entries include 'params', 'batch_stats', 'ema_params' and 'ema_batch_stats'):
  - a training workdir (effnet.main --workdir): its `checkpoints/` folder holds the steps of a TrainState;
  - that `checkpoints/` folder itself;
  - the output of `python -m effnet.tools.convert` (one step, 0, holding only those four items).

Only the four variable items are read (effnet.checkpoint.Checkpointer.restore_items, orbax's partial restore): the
optimizer slots, step and RNG stay on disk, so the config that reads a checkpoint need not have the optimizer (or
schedule) of the run that wrote it. The variables are checked against `config.model` before any array is read; a
checkpoint of another model raises `effnet.checkpoint.CheckpointMismatchError` naming the first variable that
differs.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np
from etils import epath

from effnet import checkpoint as ckpt_lib
from effnet import models

# The classifier layer: the only variable whose shape depends on model.num_classes (see `load_variables` skip_head).
CLASSIFIER = 'head_dense'
_EXPECTED = ('a training workdir, its checkpoints folder, or a `python -m effnet.tools.convert` output directory, '
             'holding at least one step folder')


def _step_folders(directory: epath.Path) -> list[int]:
  """Step numbers under `directory` (a local path or gs://, as a pod's workdir is)."""
  return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit()) if directory.is_dir() else []


def checkpoint_dir(path: str, argument: str = 'path') -> str:
  """The folder of step folders: `path/checkpoints` for a training workdir, else `path` itself. ValueError naming
  `argument` (e.g. '--weights' for a command line) and what is expected when neither holds a step folder."""
  root = epath.Path(os.path.expanduser(path))
  for candidate in (root / 'checkpoints', root):
    if _step_folders(candidate):
      return os.fspath(candidate if '://' in os.fspath(candidate) else candidate.resolve())
  raise ValueError(f'{argument}={path!r}; allowed: {_EXPECTED}')


def checkpoint_steps(path: str, argument: str = 'path') -> list[int]:
  """The step numbers stored under `path` (any of the three kinds), ascending."""
  return _step_folders(epath.Path(checkpoint_dir(path, argument)))


def check_step(path: str, step: Optional[int], argument: str = 'path', step_argument: str = 'step') -> None:
  """ValueError naming `step_argument`, the value and the stored steps when `step` is not one of them."""
  steps = checkpoint_steps(path, argument)
  if step is not None and step not in steps:
    raise ValueError(f'{step_argument}={step!r}; allowed: a step of {checkpoint_dir(path, argument)}: {steps}')


def classifier_shape(path: str, *, ema: bool, step: Optional[int] = None) -> Optional[tuple]:
  """The shape of the stored classifier kernel (`head_dense`, [features, classes]) of the newest (or given) step at
  `path`, read from the checkpoint's metadata; None when the checkpoint has no classifier (num_classes=0)."""
  steps = checkpoint_steps(path)
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(path), use_async=False)
  try:
    shapes = checkpointer.stored_shapes(steps[-1] if step is None else step)
  finally:
    checkpointer.close()
  return shapes.get(('ema_params' if ema else 'params', CLASSIFIER, 'kernel'))


def abstract_model_variables(config) -> dict:
  """{'params', 'batch_stats'} float32 shapes of `config.model` (nothing computed: jax.eval_shape)."""
  module = models.build_model(config.model)
  shapes = models.abstract_variables(module, int(config.data.eval_image_size))
  as_f32 = lambda s: jax.ShapeDtypeStruct(s.shape, np.float32)  # noqa: E731
  return {'params': jax.tree.map(as_f32, dict(shapes['params'])),
          'batch_stats': jax.tree.map(as_f32, dict(shapes.get('batch_stats', {})))}


def load_variables(path: str, config, *, ema: Optional[bool] = None, step: Optional[int] = None,
                   skip_head: bool = False) -> dict:
  """{'params', 'batch_stats'} of `config.model` from the checkpoint at `path`, as host numpy float32 trees.

  path: a training workdir, its `checkpoints/` folder, or a tools.convert output (module docstring).
  ema: True reads the EMA copies ('ema_params', 'ema_batch_stats'), False the raw weights; None follows
    config.train.eval_ema (what the trainer evaluates). A converted checkpoint's two copies are equal.
  step: a stored step; None: the newest one (walking back past a damaged step, as a resume does).
  skip_head: True leaves the classifier ('head_dense', the only variable whose shape depends on
    model.num_classes) out: it is neither compared nor read and is absent from the result, so a fine-tune with
    another class count takes the backbone (stem, blocks, head conv and BN) and initialises its own classifier.

  Raises ValueError (naming `path` or `step`) for a directory without step folders or a step not stored, and
  effnet.checkpoint.CheckpointMismatchError naming the first variable that differs for a checkpoint of another
  model (with the changed model fields when the checkpoint stored its config).
  """
  check_step(path, step)
  ema = bool(config.train.eval_ema) if ema is None else ema
  prefix = 'ema_' if ema else ''
  abstract = abstract_model_variables(config)
  items = {f'{prefix}{name}': tree for name, tree in abstract.items()}
  skip = [(f'{prefix}params', CLASSIFIER)] if skip_head else []
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(path), use_async=False,
                                       config=json.loads(config.to_json_best_effort()))
  try:
    _, restored = checkpointer.restore_items(items, step=step, skip=skip)
  finally:
    checkpointer.close()
  return {name: jax.tree.map(lambda x: np.asarray(x, np.float32), dict(restored[f'{prefix}{name}']))
          for name in abstract}
