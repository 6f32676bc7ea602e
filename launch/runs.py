"""The one run loop behind sweeps, the compound-scaling grid search and the architecture search: a list of runs
(workdir + config overrides), each started as the entry module's command line on a `Backend`, finished ones skipped.

Why one loop: the three tools differ in what they run, not in how. Every mode lives here once:
- local, one run after another (the default);
- local, `workers` at a time, worker i seeing only devices[i] through `device_env` (one GPU per run on one box);
- TPU, runs one after another on one existing slice, or one slice per worker (`tpu_names=(s0, s1, ...)`);
- TPU, one slice per run (`tpu_per_run`: NAME-0, NAME-1, ... created, set up and started detached);
- TPU, attached runs that survive preemption (`retry_preempted`: the slice is re-created and the run resumes).
Every command goes through the caller's `launch.Runner`, so it is printed and logged, and `--dry-run` runs nothing.
A run is finished when all its `done_files` exist in its workdir (local or gs://); a rerun skips it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import subprocess
import sys
import threading
from typing import Sequence

from effnet import workdir as workdir_lib
from launch import DEFAULT_MODULE, Runner, cli, override_flags
from launch import tpu

BACKENDS = ("local", "tpu")
METRICS_FILE = "final_metrics.json"  # what effnet.main writes at the end of a run


as_path = workdir_lib.as_path  # local paths and gs:// through the same API orbax/tfds use


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run: its name (for tables and logs), workdir, config overrides, extra entry-module flags, and the files
  whose presence in the workdir means it has finished."""
  name: str
  workdir: str
  overrides: dict
  flags: tuple[str, ...] = ()
  done_files: tuple[str, ...] = (METRICS_FILE,)


def under_root(root: str, named_overrides: Sequence[tuple[str, dict]]) -> list[RunSpec]:
  """(name, overrides) pairs as runs in ROOT/name (the layout of sweeps and the grid search)."""
  return [RunSpec(name, f"{root}/{name}", overrides) for name, overrides in named_overrides]


def is_finished(run: RunSpec) -> bool:
  return all((as_path(run.workdir) / f).exists() for f in run.done_files)


@dataclasses.dataclass
class Backend:
  """Where runs execute; see the module docstring for the modes. `slots` runs go at once."""
  kind: str = "local"
  module: str = DEFAULT_MODULE
  workers: int = 1
  devices: Sequence[str] = ()          # local: the value of device_env for each worker, e.g. ('0', '1')
  device_env: str = "CUDA_VISIBLE_DEVICES"
  tpu_names: Sequence[str] = ()        # existing, set-up slices, one per worker; with tpu_per_run the name prefix
  zone: str | None = None
  project: str | None = None
  accelerator_type: str = "v4-8"
  runtime_version: str | None = None
  spot: bool = False
  preemptible: bool = False
  queued: bool = False
  tfds_data_dir: str | None = None
  retry_preempted: int = 0
  tpu_per_run: bool = False

  def __post_init__(self):
    self.devices, self.tpu_names = tuple(self.devices), tuple(self.tpu_names)
    if self.kind not in BACKENDS:
      raise ValueError(f"backend={self.kind!r}; allowed: {', '.join(BACKENDS)}")
    if self.workers < 1:
      raise ValueError(f"workers={self.workers}; allowed: >= 1")
    if self.devices and len(self.devices) < self.workers:
      raise ValueError(f"devices={self.devices}: needs one entry per worker ({self.workers})")
    if self.retry_preempted < 0:
      raise ValueError(f"retry_preempted={self.retry_preempted}; allowed: >= 0")
    if self.kind == "tpu":
      self._check_tpu()

  def _check_tpu(self) -> None:
    if not self.tpu_names or not self.zone:
      raise ValueError("tpu_names/zone: required with --backend=tpu")
    if self.devices:
      raise ValueError("devices: only with --backend=local; on TPU each slice in tpu_names is a worker")
    tpu.num_hosts(self.accelerator_type)  # a slice size the generation comes in, before any slice is used
    if self.tpu_per_run and len(self.tpu_names) != 1:
      raise ValueError(f"tpu_names={self.tpu_names}: one name with --tpu_per_run (the prefix of NAME-0, NAME-1, ...)")
    if self.tpu_per_run and self.retry_preempted:
      raise ValueError("retry_preempted: only with runs on existing slices (no --tpu_per_run); per-run slices start "
                       "detached")

  @property
  def slots(self) -> int:
    """How many runs go at once: one per device, per worker or per slice (per-run slices start one by one)."""
    if self.kind == "tpu":
      return 1 if self.tpu_per_run else len(self.tpu_names)
    return len(self.devices) or self.workers

  def slice_for(self, slot: int, index: int) -> tpu.Slice:
    name = f"{self.tpu_names[0]}-{index}" if self.tpu_per_run else self.tpu_names[slot]
    return tpu.Slice(name, self.zone, self.accelerator_type, self.runtime_version, self.project, self.spot,
                     self.preemptible, self.queued)


def local_command(backend: Backend, config: str, run: RunSpec, extra: Sequence[str], slot: int = 0) -> list[str]:
  """`[env VAR=device] python -m MODULE --config --workdir overrides flags extra` for one local run."""
  env = ["env", f"{backend.device_env}={backend.devices[slot]}"] if backend.devices else []
  return [*env, sys.executable, "-m", backend.module, f"--config={config}", f"--workdir={run.workdir}",
          *override_flags(run.overrides), *run.flags, *extra]


def _run_on_tpu(runner: Runner, backend: Backend, config: str, run: RunSpec, extra: Sequence[str], slot: int,
                index: int) -> int:
  s = backend.slice_for(slot, index)
  job = tpu.Job(config, run.workdir, [*override_flags(run.overrides), *run.flags, *extra], backend.module,
                backend.tfds_data_dir)
  if backend.tpu_per_run:  # create + setup + start detached; the tables are collected later (--collect_only)
    return tpu.do_up(runner, s, job, {}, 0, "nohup")
  if backend.retry_preempted:  # attached, so the slot's next run starts when this one ends
    return tpu.do_up(runner, s, job, {}, backend.retry_preempted, "none", create=False)
  return tpu.do_run(runner, s, job, "none")


def run_one(runner: Runner, backend: Backend, config: str, run: RunSpec, extra: Sequence[str] = (), slot: int = 0,
            index: int = 0) -> int:
  """Starts one run on worker `slot` (run `index` of the list names its own slice with tpu_per_run); its exit
  status, 1 when the launch itself failed (a failed ssh or gcloud call is a failed run, not a failed loop)."""
  try:
    if backend.kind == "local":
      return runner.run(local_command(backend, config, run, extra, slot), check=False).returncode
    return _run_on_tpu(runner, backend, config, run, extra, slot, index)
  except (ValueError, RuntimeError, OSError, subprocess.SubprocessError) as e:
    print(f"error: {run.name}: {e}", file=sys.stderr, flush=True)
    return 1


def check_runs(backend: Backend, config: str, runs: Sequence[RunSpec], extra: Sequence[str] = ()) -> None:
  """Checks here, before anything starts, the config every run would get (cli.check_config of its command line: the
  config, its overrides, then `extra`); first the config with `extra` alone, then each run, so that a ValueError
  names the run whose overrides make it invalid. Configs of TPU runs are read from the tree the slices get."""
  base_dir = tpu.REPO_ROOT if backend.kind == "tpu" else None
  if not cli.check_config([f"--config={config}", *extra], backend.module, base_dir, "config: "):
    return
  for run in runs:
    args = [f"--config={config}", *override_flags(run.overrides), *run.flags, *extra]
    cli.check_config(args, backend.module, base_dir, f"run {run.name} (overrides {run.overrides}): ")


def _pending(runner: Runner, runs: Sequence[RunSpec], rerun: bool) -> list[tuple[int, RunSpec]]:
  """(index, run) of the runs to start; finished ones are reported and left out (a dry run leaves none out)."""
  todo = []
  for i, run in enumerate(runs):
    if not rerun and not runner.dry_run and is_finished(run):
      print(f"# [{i + 1}/{len(runs)}] {run.name}: finished, skipped", flush=True)
    else:
      todo.append((i, run))
  return todo


def run_all(runner: Runner, backend: Backend, config: str, runs: Sequence[RunSpec], extra: Sequence[str] = (), *,
            rerun: bool = False, stop_on_failure: bool = False) -> dict[str, int | None]:
  """Starts the unfinished runs under `config`, backend.slots at a time, `extra` appended to each command line.

  Returns the exit status of every run started here, by name in list order (None: left running detached on its own
  slice). With stop_on_failure, no run starts after one has failed.
  """
  todo = _pending(runner, runs, rerun)
  codes: dict[str, int | None] = {}
  failed = threading.Event()
  free_slots: queue.Queue = queue.Queue()
  for slot in range(backend.slots):
    free_slots.put(slot)

  def start(item: tuple[int, RunSpec]) -> None:
    index, run = item
    if failed.is_set() and stop_on_failure:
      return
    slot = free_slots.get()
    try:
      worker = f" (worker {slot})" if backend.slots > 1 else ""
      print(f"# [{index + 1}/{len(runs)}] {run.name}{worker}", flush=True)
      rc = run_one(runner, backend, config, run, extra, slot, index)
    finally:
      free_slots.put(slot)
    codes[run.name] = None if backend.tpu_per_run and rc == 0 else rc
    if rc != 0:
      failed.set()

  if backend.slots == 1:
    for item in todo:
      start(item)
  else:
    with concurrent.futures.ThreadPoolExecutor(backend.slots) as pool:
      list(pool.map(start, todo))
  return {run.name: codes[run.name] for _, run in todo if run.name in codes}


def status_text(code: int | None) -> str:
  """The status column of the result tables for a run started here: done, launched (detached) or failed (exit N)."""
  if code is None:
    return "launched"
  return "done" if code == 0 else f"failed (exit {code})"


def unfinished(codes: dict[str, int | None]) -> dict[str, str]:
  """The runs started here that did not finish here, with their status text."""
  return {name: status_text(code) for name, code in codes.items() if code != 0}


# ---- command line: the backend options of launch.sweep, launch.grid_search and launch.search ----
def add_backend_args(parser, module: str = DEFAULT_MODULE) -> None:
  """--backend and where its runs go: local workers and devices, or TPU slices (the options of `launch.tpu up`)."""
  local = parser.add_argument_group("backend", "where the runs execute (launch.runs.Backend)")
  local.add_argument("--backend", choices=BACKENDS, default="local")
  cli.add_flag(local, "module", default=module, help="entry module of every run")
  cli.add_flag(local, "workers", type=int, default=1, help="local runs at a time")
  cli.add_flag(local, "devices", default="", help="comma list, one per local worker, exported as --device_env")
  cli.add_flag(local, "device_env", default="CUDA_VISIBLE_DEVICES")
  slices = parser.add_argument_group("tpu backend", "existing, set-up slices (launch.tpu create/setup), or one "
                                                    "new slice per run")
  slices.add_argument("--tpu_names", "--tpu-names", "--tpu_name", "--tpu-name", dest="tpu_names", default="",
                      help="comma list of slices, one worker each; with --tpu_per_run the name prefix")
  cli.add_flag(slices, "tpu_per_run", action="store_true",
               help="one slice per run (NAME-<i>, created, set up, job started detached) instead of running on "
                    "existing slices")
  cli.add_slice_args(slices)
  cli.add_flag(slices, "tfds_data_dir", default=None)
  cli.add_flag(slices, "retry_preempted", type=int, default=0,
               help="re-create a preempted slice and resume its run, up to N times")


def backend_from_args(a) -> Backend:
  """The Backend of parsed add_backend_args options; ValueError names the bad option."""
  return Backend(a.backend, a.module, a.workers, cli.names_list(a.devices), a.device_env, cli.names_list(a.tpu_names),
                 a.zone, a.project, a.accelerator_type, a.version, a.spot, a.preemptible, a.queued, a.tfds_data_dir,
                 a.retry_preempted, a.tpu_per_run)
