"""Ahead-of-time compilation of the train and eval steps, one executable per input shape.

Progressive learning changes the image size (and optionally the batch) per stage, and every new shape is a new
XLA program. The trainer asks for the next stage's executable in a background thread while the current stage
runs (jit → trace → lower → compile from abstract inputs), so the switch itself does not wait for the compiler;
the persistent compilation cache (effnet.parallel.compilation_cache) makes a restarted job skip compiling.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from effnet import parallel


_CACHE_EVENTS = {'/jax/compilation_cache/compile_requests_use_cache': 'requests',
                 '/jax/compilation_cache/cache_hits': 'hits', '/jax/compilation_cache/cache_misses': 'misses'}
_cache_counts = {'requests': 0, 'hits': 0, 'misses': 0}
_listener_installed = False


def _on_event(event, **_):
  key = _CACHE_EVENTS.get(event)
  if key:
    _cache_counts[key] += 1


def cache_stats() -> dict:
  """Persistent compilation-cache counters of this process: requests, hits (loaded, not compiled), misses."""
  global _listener_installed
  if not _listener_installed:
    jax.monitoring.register_event_listener(_on_event)
    _listener_installed = True
  return dict(_cache_counts)


class StepCompiler:
  """Compiled train/eval executables keyed by (image_size, global_batch); compiles on demand or in background."""

  def __init__(self, train_step: Callable, eval_step: Callable, abstract_state, mesh, hyper_example: dict, *,
               image_dtype: str):
    """image_dtype: the batches' image dtype, config.data.image_dtype (what the host pipeline emits)."""
    self._cache_stats_at_start = cache_stats()  # also installs the cache-event listener before the first compile
    self.mesh = mesh
    self.abstract_state = abstract_state
    self.image_dtype = jnp.dtype(image_dtype)
    rep = parallel.replicated(mesh)
    state_shardings = jax.tree.map(lambda s: s.sharding, abstract_state)
    self._train_jit = jax.jit(train_step, donate_argnums=0, out_shardings=(state_shardings, rep))
    self._eval_jit = jax.jit(eval_step, out_shardings=rep)
    self._abstract_hyper = {k: jax.ShapeDtypeStruct(np.shape(v), jnp.asarray(v).dtype, sharding=rep)
                            for k, v in hyper_example.items()}
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='aot-compile')
    self._futures: dict[tuple, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self.compile_seconds: dict[tuple, float] = {}
    self.memory: dict[tuple, Any] = {}
    self.cost: dict[tuple, Any] = {}

  def _batch(self, image_size, batch, with_mask):
    spec = {'image': ((batch, image_size, image_size, 3), self.image_dtype), 'label': ((batch,), jnp.int32)}
    if with_mask:
      spec['mask'] = ((batch,), jnp.int32)
    return parallel.abstract_batch(spec, self.mesh)

  def _compile(self, key):
    kind, image_size, batch = key
    t0 = time.perf_counter()
    if kind == 'train':
      lowered = self._train_jit.lower(self.abstract_state, self._batch(image_size, batch, False),
                                      self._abstract_hyper)
    else:
      lowered = self._eval_jit.lower(self.abstract_state, self._batch(image_size, batch, True))
    exe = lowered.compile()
    self.compile_seconds[key] = time.perf_counter() - t0
    try:
      self.memory[key] = exe.memory_analysis()
      self.cost[key] = exe.cost_analysis()
    except Exception:  # pragma: no cover - not every backend reports these
      pass
    logging.info('compiled %s step for %dpx × %d in %.1fs', kind, image_size, batch, self.compile_seconds[key])
    return exe

  def _future(self, key, background: bool):
    with self._lock:
      fut = self._futures.get(key)
      if fut is None:
        if background:
          fut = self._pool.submit(self._compile, key)
        else:
          fut = concurrent.futures.Future()
          fut.set_result(self._compile(key))
        self._futures[key] = fut
      return fut

  def prefetch(self, kind: str, image_size: int, batch: int):
    """Starts compiling in the background (no-op if already compiled or compiling)."""
    self._future((kind, int(image_size), int(batch)), background=True)

  def is_ready(self, kind: str, image_size: int, batch: int) -> bool:
    fut = self._futures.get((kind, int(image_size), int(batch)))
    return fut is not None and fut.done()

  def get(self, kind: str, image_size: int, batch: int):
    """The executable for this shape, compiling now if nobody asked for it before."""
    return self._future((kind, int(image_size), int(batch)), background=False).result()

  def cache_stats(self) -> dict:
    """The persistent-cache counters since this compiler was made: the process's counters minus those at its start,
    so that two runs in one process (a notebook, the tests) each report their own hits and misses."""
    now = cache_stats()
    return {k: now[k] - self._cache_stats_at_start[k] for k in now}

  def close(self):
    self._pool.shutdown(wait=True)


def peak_memory_bytes(device=None):
  """Peak device memory in bytes where the backend reports it (GPU/TPU), else None."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pragma: no cover
    return None
  return stats.get('peak_bytes_in_use')
