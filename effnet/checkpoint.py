"""The one module that talks to orbax: atomic async saves, keep-N, restore of the latest step into any mesh,
and preemption (SIGTERM locally, the TPU preemption notice through orbax on pods).

Orbax writes each step into a temporary directory and renames it when the save is complete, so a run killed in the
middle of a save restarts from the previous complete step. Restores go through abstract arrays carrying the
current shardings, so a checkpoint written on N devices restores on M.

A step can still be damaged after its rename (a truncated or lost data file on a flaky disk or bucket). `restore()`
then walks back to the newest intact step and logs what it skipped; see `Checkpointer.restore` and
`Checkpointer.save` for what happens to the damaged step folders (they are never deleted).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

# What a damaged step raises on restore: TensorStore reports truncated / missing data files as ValueError,
# orbax a missing metadata file as FileNotFoundError (OSError), a missing item as KeyError, a cut JSON as ValueError.
_DAMAGE_ERRORS = (OSError, ValueError, KeyError)


class CheckpointMismatchError(ValueError):
  """The stored tree differs from the requested one (a changed model or optimizer): not damage, so never walked
  past; every older step would differ the same way."""


class DamagedCheckpointError(ValueError):
  """No step that could be restored (or the explicitly requested step is damaged)."""


def _short_reason(error: BaseException) -> str:
  """`Type: first line` of an exception, cut before TensorStore's long spec dump, for logs and error lists."""
  text = str(error).split(' [tensorstore_spec=')[0].splitlines()[0] if str(error) else ''
  return f'{type(error).__name__}: {text[:200]}'


def _key_name(key) -> str:
  """One path entry as a plain string: orbax stores dataclass fields and namedtuples as dict keys, tuples as
  lists, so the requested (attribute / index) and stored (dict) paths only compare once both are strings."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes_by_path(tree) -> dict[tuple[str, ...], tuple]:
  """{path as strings: shape} of the leaves of `tree` (abstract arrays or orbax's metadata); a leaf without a
  shape (a Python scalar) counts as shape ()."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {tuple(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ())) for path, leaf in leaves}


def _first_mismatch(stored: dict, requested: dict) -> Optional[str]:
  """Names the first variable whose shape differs or that only one side has; None when the trees agree."""
  for path in sorted(set(stored) | set(requested)):
    name = '/'.join(path)
    if path not in stored:
      return f'{name} is in the model (shape {requested[path]}) but not in the checkpoint'
    if path not in requested:
      return f'{name} is in the checkpoint (shape {stored[path]}) but not in the model'
    if stored[path] != requested[path]:
      return f'{name} has shape {stored[path]} in the checkpoint but {requested[path]} in the model'
  return None


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for the train state plus a small JSON of metadata."""

  def __init__(self, directory: str, *, keep: int = 3, every_steps: int = 1000, use_async: bool = True):
    if keep < 1:
      raise ValueError(f'train.keep_checkpoints={keep}; allowed: >= 1')
    if every_steps < 1:
      raise ValueError(f'train.checkpoint_every_steps={every_steps}; allowed: >= 1')
    directory = os.fspath(directory)
    # orbax needs absolute paths; a relative local workdir (e.g. `--workdir=workdirs/demo`) is taken from the cwd.
    self.directory = directory if '://' in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps,
                                           enable_async_checkpointing=use_async, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._damaged_steps: list[int] = []  # skipped by the last restore; moved aside by the next save

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores `step` (default: the newest intact step) into the shardings of `abstract_state`; returns
    (state, metadata).

    With `step=None` a damaged step (a truncated or missing data or metadata file) is skipped with a warning
    naming it and why, and the next older one is tried: a preempted pod must not need a person to find and
    delete a step folder before it can resume. Nothing is deleted here; the damaged steps are remembered and
    moved aside by the next `save` (see there). A stored tree that differs from `abstract_state` raises
    `CheckpointMismatchError` at once, since walking back cannot fix a changed model. If no step is intact,
    `DamagedCheckpointError` lists each step and its failure. An explicit `step` is tried alone."""
    steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    failures = []
    for candidate in steps:
      try:
        state, meta = self._restore_step(abstract_state, candidate)
      except CheckpointMismatchError:
        raise
      except _DAMAGE_ERRORS as e:
        failures.append((candidate, _short_reason(e)))
        if step is None:
          logging.warning('checkpoint step %d in %s is damaged, trying an older step: %s', candidate,
                          self.directory, failures[-1][1])
        continue
      self._damaged_steps = [s for s, _ in failures]
      if failures:
        logging.warning('restored step %d after skipping damaged steps %s (left in place; moved aside to '
                        '<step>.damaged-<time> on the next save)', candidate, self._damaged_steps)
      return state, meta
    raise DamagedCheckpointError(self._damage_message(failures, explicit=step is not None))

  def _restore_step(self, abstract_state, step: int):
    """One step: its stored tree checked against `abstract_state` first (orbax's own shape error does not name
    the variable), then the arrays and the JSON metadata."""
    stored = ocp.StandardCheckpointHandler().metadata(self._step_path(step) / 'state')
    mismatch = _first_mismatch(_shapes_by_path(stored.tree), _shapes_by_path(abstract_state))
    if mismatch:
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} does not fit the model being trained: {mismatch}. '
          'Restore with the config that wrote it, or start this config in a new workdir.')
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'] or {})

  def _damage_message(self, failures, explicit: bool) -> str:
    listing = '; '.join(f'step {s}: {reason}' for s, reason in failures)
    what = (f'checkpoint step {failures[0][0]} in {self.directory} is damaged' if explicit else
            f'no intact checkpoint in {self.directory}; every step failed to restore')
    return (f'{what} ({listing}). Move the damaged step folders out of {self.directory} (e.g. rename '
            f'{self.directory}/<step> to <step>.damaged) to resume from an older step, or start in a new workdir.')

  def _step_path(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  def save(self, step: int, state, meta: Optional[dict] = None, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether a save was started.

    Orbax also always saves the first step it is given in a process (so a fresh run checkpoints step 1), and a
    step that already exists is skipped.

    After `restore` walked back past damaged steps, the first save moves them aside: a run resumed from step S
    saves S+1, S+2, ..., and orbax refuses any step at or below its latest one, so the damaged steps would
    silently block (or collide with) the new checkpoints. They are renamed to `<step>.damaged-<UTC time>` (not a
    step name, so orbax's keep-N never deletes them) and logged, never deleted: the user may want to inspect them.
    """
    if self._damaged_steps:
      self._move_damaged_steps_aside()
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))), force=force)

  def _move_damaged_steps_aside(self):
    """Renames the damaged step folders (host 0 only, all hosts wait) and makes orbax re-read the step list."""
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    if jax.process_index() == 0:
      for step in self._damaged_steps:
        aside = self._step_path(step).parent / f'{step}.damaged-{stamp}'
        self._step_path(step).rename(aside)
        logging.warning('moved damaged checkpoint step %d aside to %s so that the run can save that step '
                        'number again (nothing deleted)', step, aside)
    if jax.process_count() > 1:
      # The same name on every host (the clock stamp may differ between hosts).
      steps = '_'.join(str(step) for step in self._damaged_steps)
      ocp.multihost.sync_global_processes(f'effnet_damaged_steps_aside_{steps}')
    self._damaged_steps = []
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once a TPU/cluster preemption notice arrived (multi-host safe)."""
    return self._manager.reached_preemption(step)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionFlag:
  """Turns SIGTERM (what a preempted VM or a killed job receives) into a flag the train loop polls, so the current
  step finishes, a checkpoint is written and the process exits cleanly."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self._event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    logging.warning('received signal %d: finishing the current step, saving a checkpoint and exiting', signum)
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def set(self):
    self._event.set()

  def restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def should_stop(flag: PreemptionFlag, checkpointer: Checkpointer, step: int, sync: bool) -> bool:
  """Whether to stop for preemption at `step`. In multi-process runs the local SIGTERM flags are combined across
  hosts (`sync=True`, call it at the same steps on every host) so that every host stops at the same step."""
  stop = checkpointer.reached_preemption(step)
  if jax.process_count() > 1:
    if sync:
      import numpy as np  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flags = multihost_utils.process_allgather(np.asarray(flag.is_set(), np.int32))
      stop = stop or bool(np.max(flags))
    return stop
  return stop or flag.is_set()
