"""Candidate runs: workdir layout, the on-disk results store, and launching through the sweep launcher.

Why through launch.sweep / launch.tpu: a candidate is an ordinary training run (`effnet.main` flags with
`--config.model.blocks=...` and the proxy overrides), started with the same functions a sweep uses, locally (with
one device per worker: parallel runs on a multi-GPU box) or on TPU slices (one slice per worker), with the same
printed and logged commands and `--dry-run`. The entry module is `effnet.search.worker`, which is `effnet.main`
plus the step-time benchmark on the same device.

Store: SEARCH_DIR/candidates/<name>/ is the run's workdir. A candidate is finished when its step_time.json (and,
if it trains, final_metrics.json) exist; anything else is (re)run, and an interrupted training resumes from its
checkpoint. Workdirs may be gs:// paths (etils.epath), so hosts can share one search.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import queue
import threading
from typing import Sequence

from launch import Runner, override_flags
from launch import sweep as sweep_lib
from effnet.search import space as space_lib
from effnet.search.worker import STEP_TIME_FILE, TRAININGS_FILE

WORKER_MODULE = 'effnet.search.worker'
REFERENCE = 'reference'
BACKENDS = ('local', 'tpu')


def path(p):
  from etils import epath
  return epath.Path(p)


@dataclasses.dataclass(frozen=True)
class Candidate:
  index: int                  # -1: the reference architecture
  name: str
  blocks: tuple[str, ...]
  train: bool = True

  @property
  def is_reference(self) -> bool:
    return self.index < 0


def candidate_name(index: int, blocks: Sequence[str]) -> str:
  return f'c{index:04d}-{space_lib.arch_id(blocks)}'


def parse_assignments(items: Sequence[str], field: str) -> dict[str, str]:
  """('model.head_filters=64', ...) -> {'model.head_filters': '64'} (values stay text, parsed by the trainer)."""
  out = {}
  for item in items or ():
    key, sep, value = str(item).partition('=')
    if not sep or not key.strip():
      raise ValueError(f'{field}: {item!r}; allowed: "section.field=value" strings, e.g. "model.head_filters=64"')
    out[key.strip()] = value
  return out


def run_overrides(cfg, blocks: Sequence[str], search_dir: str | None = None) -> dict:
  """Overrides of one candidate run: base overrides, then the proxy budget, then the architecture. Candidates share
  one XLA compilation cache under the search dir (a resumed or repeated compile is a cache hit)."""
  ov = dict(parse_assignments(cfg.base_overrides, 'base_overrides'))
  if search_dir is not None:
    ov['train.compile_cache_dir'] = f'{str(search_dir).rstrip("/")}/jax_cache'
  p = cfg.proxy
  ov['data.image_size'] = int(p.image_size)
  ov['data.eval_image_size'] = int(p.eval_image_size or p.image_size)
  if p.batch_size:
    ov['train.batch_size'] = int(p.batch_size)
  if p.total_steps:
    ov['train.total_steps'] = int(p.total_steps)
  elif p.num_epochs:
    ov['train.num_epochs'] = float(p.num_epochs)
  ov.update(parse_assignments(p.overrides, 'proxy.overrides'))
  ov['model.blocks'] = tuple(blocks)
  return ov


def worker_flags(step_cfg, train: bool) -> list[str]:
  return [f'--search_train={"true" if train else "false"}', f'--bench_steps={int(step_cfg.num_steps)}',
          f'--bench_warmup={int(step_cfg.warmup)}', f'--bench_repeats={int(step_cfg.repeats)}',
          f'--bench_batch={int(step_cfg.batch_size or 0)}', f'--bench_image_size={int(step_cfg.image_size or 0)}']


def workdir(search_dir: str, cand: Candidate) -> str:
  return f'{str(search_dir).rstrip("/")}/candidates/{cand.name}'


def read_json(p) -> dict | None:
  p = path(p)
  return json.loads(p.read_text()) if p.exists() else None


def is_finished(wd: str, train: bool) -> bool:
  if not path(f'{wd}/{STEP_TIME_FILE}').exists():
    return False
  return not train or sweep_lib.read_metrics(wd) is not None


def trainings(wd: str) -> int:
  """How many times the worker started a training in `wd` (the resume test counts these)."""
  p = path(f'{wd}/{TRAININGS_FILE}')
  return len(p.read_text().splitlines()) if p.exists() else 0


class _EnvRunner(Runner):
  """A Runner whose commands run under `env VAR=value ...` (one device per local worker)."""

  def __init__(self, env: dict[str, str], **kw):
    super().__init__(**kw)
    self.env = env

  def run(self, argv, **kw):
    prefix = ['env', *[f'{k}={v}' for k, v in self.env.items()]] if self.env else []
    return super().run([*prefix, *argv], **kw)


@dataclasses.dataclass
class Launcher:
  """Runs candidate jobs, `workers` at a time; worker i gets devices[i] (local) or tpu_names[i] (tpu)."""
  config: str                                  # base config PATH.py[:ARG] for the trainer
  backend: str = 'local'
  workers: int = 1
  devices: Sequence[str] = ()                  # local: values of device_env per worker, e.g. ('0', '1')
  device_env: str = 'CUDA_VISIBLE_DEVICES'
  tpu_names: Sequence[str] = ()
  zone: str | None = None
  project: str | None = None
  accelerator_type: str = 'v4-8'
  tfds_data_dir: str | None = None
  module: str = WORKER_MODULE
  extra: Sequence[str] = ()                    # flags after `--`, for every run
  dry_run: bool = False
  log_file: str | None = None

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise ValueError(f'backend={self.backend!r}; allowed: {BACKENDS}')
    if self.backend == 'tpu':
      if not self.tpu_names or not self.zone:
        raise ValueError('tpu_names/zone: required with backend=tpu (one slice per parallel worker)')
      self.workers = len(self.tpu_names)
    if self.devices and len(self.devices) < self.workers:
      raise ValueError(f'devices={tuple(self.devices)}: needs one entry per worker ({self.workers})')
    if self.workers < 1:
      raise ValueError(f'workers={self.workers}; allowed: >= 1')

  def _run(self, slot: int, wd: str, overrides: dict, flags: list[str]) -> int:
    if self.backend == 'local':
      env = {self.device_env: str(self.devices[slot])} if self.devices else {}
      runner = _EnvRunner(env, dry_run=self.dry_run, log_file=self.log_file)
      return sweep_lib.run_local(runner, self.config, wd, overrides, [*flags, *self.extra], self.module)
    from launch import tpu as tpu_lib  # pylint: disable=g-import-not-at-top
    runner = Runner(dry_run=self.dry_run, log_file=self.log_file)
    s = tpu_lib.Slice(self.tpu_names[slot], self.zone, self.accelerator_type, project=self.project)
    job = tpu_lib.Job(self.config, wd, [*override_flags(overrides), *flags, *self.extra], self.module,
                      self.tfds_data_dir)
    try:
      return tpu_lib.do_run(runner, s, job, 'none')
    except Exception as e:  # a failed ssh is a failed candidate, not a failed search
      print(f'# {wd}: {e}', flush=True)
      return 1

  def run_all(self, jobs: Sequence[tuple[str, dict, list[str]]]) -> list[int]:
    """jobs: (workdir, overrides, worker flags); returns the exit status of each, in order."""
    slots: queue.Queue = queue.Queue()
    for i in range(self.workers):
      slots.put(i)
    lock = threading.Lock()

    def one(job):
      slot = slots.get()
      try:
        with lock:
          print(f'# candidate run {job[0]} (worker {slot})', flush=True)
        return self._run(slot, *job)
      finally:
        slots.put(slot)

    if self.workers == 1:
      return [one(j) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
      return list(pool.map(one, jobs))
