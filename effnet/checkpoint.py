"""The one module that talks to orbax: atomic async saves, keep-N, restore of the latest step into any mesh,
and preemption (SIGTERM locally, the TPU preemption notice through orbax on pods).

Orbax writes each step into a temporary directory and renames it when the save is complete, so a run killed in the
middle of a save restarts from the previous complete step. Restores go through abstract arrays carrying the
current shardings, so a checkpoint written on N devices restores on M.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


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

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores `step` (default: latest) into the shardings of `abstract_state`; returns (state, metadata)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'] or {})

  def save(self, step: int, state, meta: Optional[dict] = None, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether a save was started.

    Orbax also always saves the first step it is given in a process (so a fresh run checkpoints step 1), and a
    step that already exists is skipped."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))), force=force)

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
