"""Devices and data parallelism: distributed start-up, the device mesh, shardings, global batches, compile cache.

One `jax.jit` SPMD program over a 1-D 'data' mesh: the state is replicated (P()), batches are split over 'data',
and XLA inserts the gradient and batch-norm reductions. No pmap, no manual pmean.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Environment variables set on multi-host machines by TPU VMs and SLURM; with any of them `initialize='auto'`
# starts jax.distributed, whose cluster auto-detection reads the rest.
_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE')


def _distributed_is_initialized() -> bool:
  try:
    from jax._src import distributed as _dist  # pylint: disable=g-import-not-at-top
    return _dist.global_state.client is not None
  except Exception:  # pragma: no cover - private API moved
    return False


INITIALIZE_MODES = ('auto', 'yes', 'no')  # distributed.initialize


def initialize_distributed(dist_cfg) -> bool:
  """Starts multi-process JAX when the config or the environment asks for it; returns whether it is started.

  initialize='yes' with coordinator_address/num_processes/process_id: explicit (CPU tests, GPU boxes);
  'yes' without them or 'auto' on a TPU pod / SLURM job: `jax.distributed.initialize()` auto-detects the cluster;
  'no': single process.
  """
  mode = dist_cfg.initialize
  if mode not in INITIALIZE_MODES:  # kept: a public function that dispatches on it (config_lib.validate checks first)
    raise ValueError(f"distributed.initialize={mode!r}; allowed: {INITIALIZE_MODES}")
  if mode == 'no' or _distributed_is_initialized():
    return _distributed_is_initialized()
  explicit = dist_cfg.coordinator_address is not None
  tpu_multihost = len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1
  slurm_multi = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  if mode == 'auto' and not (explicit or tpu_multihost or slurm_multi or
                             any(k in os.environ for k in _CLUSTER_ENV[1:2])):
    return False
  kwargs: dict[str, Any] = {}
  if explicit:
    if dist_cfg.num_processes is None or dist_cfg.process_id is None:
      raise ValueError('distributed.coordinator_address is set, so distributed.num_processes and '
                       'distributed.process_id must be set too')
    kwargs = dict(coordinator_address=dist_cfg.coordinator_address, num_processes=int(dist_cfg.num_processes),
                  process_id=int(dist_cfg.process_id))
  jax.distributed.initialize(initialization_timeout=int(dist_cfg.initialization_timeout), **kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over all (global) devices, in the Auto (GSPMD) axis mode."""
  devices = jax.devices() if devices is None else devices
  try:
    from jax.sharding import AxisType  # pylint: disable=g-import-not-at-top
    if devices is None or len(devices) == jax.device_count():
      return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
  except (ImportError, TypeError):
    pass
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, field: str = 'train.batch_size') -> int:
  """The per-process batch; raises before anything compiles if the batch does not split over devices/hosts."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f'{field}={global_batch} is not divisible by the {n_dev} devices of the mesh; use a multiple '
                     f'of {n_dev}')
  if global_batch % n_proc:
    raise ValueError(f'{field}={global_batch} is not divisible by the {n_proc} processes')
  return global_batch // n_proc


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Assembles each host's slice of the batch into global arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


def abstract_batch(spec: Mapping[str, tuple[tuple[int, ...], Any]], mesh: Mesh) -> dict:
  """ShapeDtypeStructs of a global batch (for ahead-of-time compilation)."""
  sharding = batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}


_CACHE_FLAGS = {'jax_compilation_cache_dir': None, 'jax_persistent_cache_min_compile_time_secs': 0.0,
                'jax_persistent_cache_min_entry_size_bytes': 0, 'jax_persistent_cache_enable_xla_caches': 'all'}


@contextlib.contextmanager
def compilation_cache(cache_dir: str | None):
  """Persistent XLA compilation cache in `cache_dir` for the duration of the block, so a restarted job (or a
  repeated stage shape) loads executables instead of compiling them. JAX's cache settings are process-global:
  the previous ones are put back afterwards, so a notebook's later work is not redirected into this run's cache."""
  if not cache_dir:
    yield
    return
  from jax._src import compilation_cache as _cc  # pylint: disable=g-import-not-at-top
  saved = {}
  for flag, value in _CACHE_FLAGS.items():
    if not hasattr(jax.config, flag):  # pragma: no cover - flag absent on some versions
      continue
    saved[flag] = getattr(jax.config, flag)
    jax.config.update(flag, cache_dir if flag == 'jax_compilation_cache_dir' else value)
  _cc.reset_cache()
  try:
    yield
  finally:
    for flag, value in saved.items():
      jax.config.update(flag, value)
    _cc.reset_cache()
