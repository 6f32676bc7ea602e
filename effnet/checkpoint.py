"""The one module that talks to orbax: atomic async saves, keep-N, restore of the latest step into any mesh,
and preemption (SIGTERM locally, the TPU preemption notice through orbax on pods).

Orbax writes each step into a temporary directory and renames it when the save is complete, so a run killed in the
middle of a save restarts from the previous complete step. Restores go through abstract arrays carrying the
current shardings, so a checkpoint written on N devices restores on M.

A step can still be damaged after its rename (a truncated or lost data file on a flaky disk or bucket). `restore()`
then walks back to the newest intact step and logs what it skipped; see `Checkpointer.restore` and
`Checkpointer.save` for what happens to the damaged step folders (they are never deleted). Only what damage was seen
to raise counts as damage (`_is_damage`); any other error propagates, so a bug is never walked past.

Each step also holds the config of the run that wrote it (the `config` item, JSON, committed with the arrays in the
same atomic rename), so a resume with a changed model names the changed fields, and the trainer can say what a
changed batch or device count changes.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# What damage raises on restore with orbax 0.12.8 / TensorStore (each case reproduced in
# tests/test_checkpoint_damage.py):
#   data file under state/d truncated      ValueError 'OUT_OF_RANGE: ... Requested byte range [0, 252) is not valid
#                                          for value of size 126 [tensorstore_spec=...]'
#   data file or state/manifest.ocdbt lost ValueError 'NOT_FOUND: ... Error reading ... [tensorstore_spec=...]'
#   data file overwritten                  ValueError 'DATA_LOSS: ... Error decoding b-tree node ...'
#   compressed data corrupted in place     ValueError 'Error opening "zarr" driver: ... Error decoding b-tree node:
#                                          ZSTD_decompressStream() failed ...' (INVALID_ARGUMENT, shown without code)
#   state/_METADATA lost                   FileNotFoundError 'Metadata file (named _METADATA) does not exist ...'
#   meta/metadata lost                     FileNotFoundError 'File .../meta/metadata not found.'
#   meta/ lost                             KeyError 'Item "meta" was not found in the checkpoint. ...'
#   _METADATA, meta or config JSON cut     json.JSONDecodeError
# Not damage, so propagated: TensorStore errors of other codes (PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED:
# the step is intact and must not be walked past and renamed aside; FAILED_PRECONDITION or a non-decoding
# INVALID_ARGUMENT: a wrong request, i.e. a bug), other OSErrors, ValueErrors and KeyErrors.
_TENSORSTORE_MARK = '[tensorstore_spec='  # TensorStore appends the spec of the failed open to its messages
_DAMAGE_CODES = ('NOT_FOUND:', 'OUT_OF_RANGE:', 'DATA_LOSS:')
# The config sections that decide the stored variables and their shapes (the optimizer state's structure depends on
# no config field): a resume that does not fit lists the changes in these.
_TREE_SECTIONS = ('model',)


class CheckpointMismatchError(ValueError):
  """The stored tree differs from the requested one (a changed model or optimizer): not damage, so never walked
  past; every older step would differ the same way."""


class DamagedCheckpointError(ValueError):
  """No step that could be restored (or the explicitly requested step is damaged)."""


class CheckpointWriteError(OSError):
  """A checkpoint step could not be written (errno ENOSPC for a full disk). The message names the step, the
  directory and the complete step a restart resumes from."""


# What a failed write raises: Python's file writes OSError, TensorStore ValueError ('RESOURCE_EXHAUSTED: ... No
# space left on device [os_error_code='28']'), orbax's threads RuntimeError.
_WRITE_ERRORS = (OSError, ValueError, RuntimeError)


def _is_disk_full(error: BaseException) -> bool:
  """ENOSPC anywhere in the exception chain, as Python raises it (errno) or TensorStore reports it (message)."""
  for _ in range(8):  # the error, its cause, the cause's cause...
    if error is None:
      return False
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error) or f"os_error_code='{errno.ENOSPC}'" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _is_damage(error: BaseException) -> bool:
  """Whether `error`, raised while restoring one step, is one of the kinds damage raises (table above)."""
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError)):
    return True
  if isinstance(error, KeyError):
    return 'was not found in the checkpoint' in str(error)
  text = str(error)
  if isinstance(error, ValueError) and _TENSORSTORE_MARK in text:
    return text.startswith(_DAMAGE_CODES) or 'Error decoding' in text
  return False


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


def _flat_fields(tree, prefix: str = '') -> dict[str, Any]:
  """{'model.blocks[1]': value, ...}: every leaf of a JSON tree by its dotted path, list entries by index, so two
  configs compare field by field (and a changed block string is named alone)."""
  if isinstance(tree, dict):
    items = [(f'{prefix}.{k}' if prefix else str(k), v) for k, v in tree.items()]
  elif isinstance(tree, (list, tuple)):
    items = [(f'{prefix}[{i}]', v) for i, v in enumerate(tree)]
  else:
    return {prefix: tree}
  out = {}
  for path, value in items:
    out.update(_flat_fields(value, path))
  return out


def changed_fields(stored: dict, current: dict, sections=None) -> list[str]:
  """`path: old → new` for each config field that differs between `stored` and `current` (JSON trees), in path
  order; only fields under `sections` when given. A field only one side has shows `(absent)` on the other."""
  old, new = _flat_fields(stored), _flat_fields(current)
  absent = object()
  lines = []
  for path in sorted(set(old) | set(new)):
    if sections is not None and path.split('.')[0].split('[')[0] not in sections:
      continue
    before, after = old.get(path, absent), new.get(path, absent)
    if before != after:
      show = lambda v: '(absent)' if v is absent else repr(v)  # noqa: E731
      lines.append(f'{path}: {show(before)} → {show(after)}')
  return lines


def _pruned(tree, keep, prefix: tuple[str, ...] = ()):
  """`tree` (nested dicts) without the subtrees whose path (a tuple of names) `keep` rejects."""
  if not isinstance(tree, dict):
    return tree
  return {k: _pruned(v, keep, prefix + (str(k),)) for k, v in tree.items() if keep(prefix + (str(k),))}


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for the train state plus two small JSON items: metadata and the
  config of the run that wrote the step."""

  def __init__(self, directory: str, *, keep: int = 3, every_steps: int = 1000, use_async: bool = True,
               config: Optional[dict] = None):
    """`config`: the run's config as a JSON-able dict (`json.loads(config.to_json_best_effort())`), written with
    every step as its `config` item and compared with the stored one on restore; None writes and compares none."""
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
    self._every_steps, self._use_async = every_steps, use_async
    self._pending_step: Optional[int] = None  # an async save started and not waited for yet (see `_start_save`)
    self._damaged_steps: list[int] = []  # skipped by the last restore; moved aside by the next save
    self._config = None if config is None else json.loads(json.dumps(config))  # tuples as JSON lists, as stored
    self.restored_config: Optional[dict] = None  # the config stored with the step the last restore returned

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
    `CheckpointMismatchError` at once, before any array is read, since walking back cannot fix a changed model; it
    lists the changed model fields when the step stored its config. A model change that keeps every variable
    (e.g. the dropout rate) is logged and restored. `restored_config` then holds the restored step's config (None
    for a step from before configs were stored). Only errors `_is_damage` recognizes count as damage; any other
    propagates at once. If no step is intact,
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
      except (OSError, ValueError, KeyError) as e:
        if not _is_damage(e):
          raise
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

  def check_model(self, abstract_variables) -> None:
    """Raises `CheckpointMismatchError` (the same message as `restore`'s) when the newest step's params and
    batch_stats do not fit `abstract_variables` ({'params': ..., 'batch_stats': ...} shapes of this run's model).

    Why: the trainer calls this before any data loads or anything compiles, so a resume with a changed model fails
    in seconds, not after the dataset was prepared. No checkpoint, or a newest step too damaged to read its tree:
    nothing here (`restore` walks back past damage and checks the step it restores)."""
    step = self.latest_step()
    if step is None:
      return
    try:
      stored_config = self._stored_config(step)
      stored = ocp.StandardCheckpointHandler().metadata(self._step_path(step) / 'state').tree
    except (OSError, ValueError, KeyError) as e:
      if not _is_damage(e):
        raise
      return
    stored_variables = {k: stored[k] for k in abstract_variables if k in stored}
    mismatch = _first_mismatch(_shapes_by_path(stored_variables), _shapes_by_path(abstract_variables))
    if mismatch:
      raise CheckpointMismatchError(self._mismatch_message(step, mismatch, stored_config))

  def restore_items(self, abstract_items: dict, step: Optional[int] = None, skip=()) -> tuple[int, dict]:
    """(step, items): only the top-level items of the stored state named by `abstract_items` (e.g. 'ema_params'),
    as host numpy float32 arrays; the other items (optimizer slots, rng) are never read, so a checkpoint restores
    without the optimizer config that wrote it (effnet.weights). `skip`: paths (tuples of names, e.g.
    ('params', 'head_dense')) neither compared nor read. Each requested leaf is checked against the stored tree
    first (CheckpointMismatchError names the first variable that differs). `step=None`: the newest step, walking
    back past damage as `restore` does."""
    steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    keep = lambda path: not any(path[:len(s)] == tuple(s) for s in skip)  # noqa: E731
    for candidate in steps:
      try:
        return candidate, self._restore_items_step(abstract_items, candidate, keep)
      except (OSError, ValueError, KeyError) as e:
        if isinstance(e, CheckpointMismatchError) or not _is_damage(e) or candidate == steps[-1]:
          raise
        logging.warning('checkpoint step %d in %s is damaged, trying an older step: %s', candidate,
                        self.directory, _short_reason(e))

  def _restore_items_step(self, abstract_items: dict, step: int, keep) -> dict:
    """`restore_items` of one step, through one orbax PyTree handler closed afterwards."""
    handler = ocp.PyTreeCheckpointHandler()  # closed, also when the read fails: its thread pool and event loop
    try:
      return self._read_items(handler, abstract_items, step, keep)
    finally:
      handler.close()

  def stored_shapes(self, step: int) -> dict[tuple[str, ...], tuple]:
    """{path as strings: shape} of every array of the stored state of `step`, from its metadata (no array read)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      return _shapes_by_path(handler.metadata(self._step_path(step) / 'state').tree)
    finally:
      handler.close()

  def _read_items(self, handler, abstract_items: dict, step: int, keep) -> dict:
    """The check against the stored tree (its metadata only), then the partial read of the kept leaves."""
    stored = handler.metadata(self._step_path(step) / 'state').tree
    stored_items = {k: stored[k] for k in abstract_items if k in stored}
    mismatch = _first_mismatch({p: s for p, s in _shapes_by_path(stored_items).items() if keep(p)},
                               {p: s for p, s in _shapes_by_path(abstract_items).items() if keep(p)})
    if mismatch:
      raise CheckpointMismatchError(self._mismatch_message(step, mismatch, self._stored_config(step)))
    item = _pruned(abstract_items, keep)
    restore_args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32), item)
    return handler.restore(self._step_path(step) / 'state',
                           args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))

  def _restore_step(self, abstract_state, step: int):
    """One step: its stored config and tree checked against this run's first (orbax's own shape error names
    neither the variable nor the cause), then the arrays and the JSON metadata."""
    stored_config = self._stored_config(step)
    stored = ocp.StandardCheckpointHandler().metadata(self._step_path(step) / 'state')
    mismatch = _first_mismatch(_shapes_by_path(stored.tree), _shapes_by_path(abstract_state))
    if mismatch:
      raise CheckpointMismatchError(self._mismatch_message(step, mismatch, stored_config))
    if stored_config is not None and self._config is not None:
      fitting = changed_fields(stored_config, self._config, _TREE_SECTIONS)
      if fitting:
        logging.warning('checkpoint step %d was written with other %s settings; the variables still fit, so '
                        'training goes on with the new ones: %s', step, '/'.join(_TREE_SECTIONS),
                        '; '.join(fitting))
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    self.restored_config = stored_config
    return out['state'], dict(out['meta'] or {})

  def _stored_config(self, step: int) -> Optional[dict]:
    """The config item of `step`, or None for a step written before configs were stored (or without one)."""
    path = self._step_path(step) / 'config'
    return ocp.handlers.JsonCheckpointHandler().restore(path) if path.exists() else None

  def _mismatch_message(self, step: int, mismatch: str, stored_config: Optional[dict]) -> str:
    """Names the cause (the changed model fields, when the step stored its config) and the first variable."""
    message = f'checkpoint step {step} in {self.directory} does not fit the model of this config'
    if stored_config is not None and self._config is not None:
      changes = changed_fields(stored_config, self._config, _TREE_SECTIONS)
      message += (f'; changed since it was written: {"; ".join(changes)}' if changes else
                  f'; no {"/".join(_TREE_SECTIONS)} field of the config changed (the code that builds it did)')
    return (f'{message}; first mismatched variable: {mismatch}. '
            'Restore with the config that wrote it, or start this config in a new workdir.')

  def _damage_message(self, failures, explicit: bool) -> str:
    listing = '; '.join(f'step {s}: {reason}' for s, reason in failures)
    what = (f'checkpoint step {failures[0][0]} in {self.directory} is damaged' if explicit else
            f'no intact checkpoint in {self.directory}; every step failed to restore')
    return (f'{what} ({listing}). Move the damaged step folders out of {self.directory} (e.g. rename '
            f'{self.directory}/<step> to <step>.damaged) to resume from an older step, or start in a new workdir.')

  def _step_path(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  def save(self, step: int, state, meta: dict | Callable[[], dict] | None = None, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether a save was started. `meta` is a
    JSON-able dict, or a function returning one, called only when the step saves.

    Orbax also always saves the first step it is given in a process (so a fresh run checkpoints step 1), and a
    step that already exists is skipped.

    After `restore` walked back past damaged steps, the first save moves them aside: a run resumed from step S
    saves S+1, S+2, ..., and orbax refuses any step at or below its latest one, so the damaged steps would
    silently block (or collide with) the new checkpoints. They are renamed to `<step>.damaged-<UTC time>` (not a
    step name, so orbax's keep-N never deletes them) and logged, never deleted: the user may want to inspect them.

    An async save that fails in the background raises `CheckpointWriteError` naming its step at the first of: the
    next call of this (single process: any step; multi-process: the next saving step), `wait` or `close`.
    """
    self._surface_finished_failure()
    if self._damaged_steps:
      self._move_damaged_steps_aside()
    if step in self._manager.all_steps():
      return False
    if callable(meta):  # built only for a step that saves (it may gather across hosts): every host decides alike
      meta = meta() if force or self._manager.should_save(step) else None
    items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(dict(meta or {}))}
    if self._config is not None:  # one more item of the same step: committed by the same rename as the arrays
      items['config'] = ocp.args.JsonSave(self._config)
    return self._start_save(step, ocp.args.Composite(**items), force)

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

  def _start_save(self, step: int, args, force: bool) -> bool:
    """`manager.save` with its failures named. An async save fails in orbax's background thread and surfaces only
    at the next wait, which orbax does inside the next save: waiting here first (only on a step that saves, so the
    loop never blocks on other steps) blames the step that failed, not the one that happened to be next."""
    if self._pending_step is not None and (force or step % self._every_steps == 0):
      self.wait()
    try:
      started = self._manager.save(step, args=args, force=force)
    except _WRITE_ERRORS as e:
      raise self._write_error(step, e) from e
    if started and self._use_async:
      self._pending_step = step
    return started

  def _surface_finished_failure(self) -> None:
    """A single-process run whose async save has finished meanwhile waits for it now (no blocking: it is done), so
    a failed write raises at the first step after it failed, not at the next saving step up to
    `checkpoint_every_steps` steps later. A multi-process run leaves it to that saving step: there orbax's barriers
    hold every host at the same step, where a host raising alone would leave the others waiting in a collective."""
    if self._pending_step is None or not self._use_async or jax.process_count() > 1:
      return
    if not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self):
    """Blocks until the background save is complete; a failed one raises `CheckpointWriteError` naming its step."""
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except _WRITE_ERRORS as e:
      raise self._write_error(step, e) from e

  def _write_error(self, step: Optional[int], error: BaseException) -> CheckpointWriteError:
    """The error a failed save raises: the step, the directory, ENOSPC spelled out, and the step a restart resumes
    from (orbax renames a step into place only once complete, and deletes old steps only after that)."""
    done = sorted(int(p.name) for p in epath.Path(self.directory).iterdir() if p.name.isdigit())
    resume = (f'the newest complete checkpoint, step {done[-1]}, is untouched and a restart resumes from it'
              if done else 'no complete checkpoint exists yet')
    what = f'checkpoint step {step}' if step is not None else 'a checkpoint'
    if _is_disk_full(error):
      return CheckpointWriteError(errno.ENOSPC, f'{what} could not be written to {self.directory}: the disk is full '
                                  f'(ENOSPC, no space left on device); {resume}. Free space on that disk or move '
                                  'the workdir to a larger one, then restart the run.')
    return CheckpointWriteError(getattr(error, 'errno', None) or errno.EIO,
                                f'{what} could not be written to {self.directory} ({_short_reason(error)}); '
                                f'{resume}.')

  def close(self):
    """Waits for the background save (raising if it failed), then releases orbax's threads either way."""
    try:
      self.wait()
    finally:
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
