"""Cloud TPU launcher: create a TPU VM or queued-resource slice, ship the code, install, run on every worker, collect
logs, delete; `up` does all of it and can re-create a preempted spot slice and re-run so training resumes.

Why: a pod slice is N hosts that must all run the identical command at once (`--worker=all`), each calling
`jax.distributed.initialize()` which on Cloud TPU discovers the coordinator and its process id by itself. This module
only builds gcloud argument lists (flag names as documented in the `gcloud compute tpus` reference, SDK 528) and hands
them to `launch.Runner`, so the exact commands are printed/logged and `--dry-run` runs nothing. The command run on the
workers is necessarily a shell string; it is assembled with `shlex.join`/`shlex.quote` from argument lists.

    python -m launch.tpu up my-v4 --zone=us-central2-b --accelerator_type=v4-32 --spot --queued \
        --retry-preempted=3 --workdir=gs://BUCKET/effnet/v2s -- --config=configs/efficientnetv2.py:s
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from launch import DEFAULT_MODULE, Runner, cli

GCLOUD_TPU = ["gcloud", "compute", "tpus"]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_TARBALL = "effnet_code.tgz"  # name on the workers (in $HOME)
TAR_EXCLUDES = (".venv", ".git", "workdirs", "__pycache__", "*.pyc", ".pytest_cache", ".tfds", ".whl", "*.egg-info")

# Runtime ("software") versions recommended for JAX per TPU generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                    "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
                    "v6e": "v2-alpha-tpuv6e"}
_ACCEL_RE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class _Sizes:
  """The N of `<gen>-N` a generation's slices come in: the listed sizes, and with `cube` every multiple of it up to
  `largest` (slices of whole 4x4x4-chip cubes)."""
  listed: tuple[int, ...]
  cube: int = 0
  largest: int = 0

  def allows(self, n: int) -> bool:
    return n in self.listed or (self.cube > 0 and n % self.cube == 0 and self.cube <= n <= self.largest)

  def __str__(self) -> str:
    text = ", ".join(map(str, self.listed))
    return f"{text} or a multiple of {self.cube} up to {self.largest}" if self.cube else text


# Slice sizes per generation, from the "supported configurations" tables of the Cloud TPU docs
# (cloud.google.com/tpu/docs/v2, /v3, /v4, /v5p, /v5e, /v6e). N counts TensorCores for v2/v3/v4/v5p (2 per chip) and
# chips for v5e/v6e. v4 and v5p: the sub-cube shapes 2x2x1, 2x2x2, 2x2x4 and 2x4x4 chips, then whole 4x4x4-chip
# cubes (128 TensorCores each) up to the 4096-chip v4 pod and the 16x16x24-chip largest v5p slice.
SLICE_SIZES = {
    "v2": _Sizes((8, 32, 128, 256, 512)),
    "v3": _Sizes((8, 32, 64, 128, 256, 512, 1024, 2048)),
    "v4": _Sizes((8, 16, 32, 64), cube=128, largest=8192),
    "v5p": _Sizes((8, 16, 32, 64), cube=128, largest=12288),
    "v5litepod": _Sizes((1, 4, 8, 16, 32, 64, 128, 256)),
    "v6e": _Sizes((1, 4, 8, 16, 32, 64, 128, 256)),
}
SLICE_SIZES["v5e"] = SLICE_SIZES["v5litepod"]


def _parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
  """('v4', 32) of 'v4-32'; ValueError naming the option, the value and the sizes its generation comes in."""
  m = _ACCEL_RE.match(accelerator_type or "")
  if not m:
    raise ValueError(f"accelerator_type={accelerator_type!r}: expected <gen>-<size> with gen in "
                     f"{sorted(RUNTIME_VERSIONS)}, e.g. v4-8, v4-32, v5litepod-8")
  gen, size = m.group(1), int(m.group(2))
  if not SLICE_SIZES[gen].allows(size):
    unit = "chips" if gen in ("v5litepod", "v5e", "v6e") else "TensorCores"
    raise ValueError(f"accelerator_type={accelerator_type!r}: no {gen} slice has {size} {unit}; allowed sizes "
                     f"({unit}): {SLICE_SIZES[gen]}")
  return gen, size
# States after which a slice must be deleted and created again (tpu-vm: Node.State; queued: QueuedResourceState).
GONE_STATES = {"PREEMPTED", "TERMINATED", "STOPPED", "STOPPING", "SUSPENDED", "SUSPENDING", "FAILED", "DELETING", ""}


def tpu_jax_requirement(requirements: str | None = os.path.join(REPO_ROOT, "requirements.txt")) -> str:
  """The one place that says how JAX is installed on TPU workers: `jax[tpu]` at the version requirements.txt pins
  (its `tpu` extra pins the same jaxlib and the libtpu built for it). Without requirements.txt (effnet installed
  from a wheel), the jax version installed here."""
  if requirements and os.path.exists(requirements):
    with open(requirements) as f:
      for line in f:
        m = re.match(r"^\s*jax\s*==\s*([\w.]+)", line)
        if m:
          return f"jax[tpu]=={m.group(1)}"
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return f"jax[tpu]=={metadata.version('jax')}"
  except Exception:  # pylint: disable=broad-except  (jax not installed on the launching machine)
    return "jax[tpu]"


def num_hosts(accelerator_type: str) -> int:
  """Workers (VMs) in a slice, checked against the docs' tables: v2/v3/v4/v5p names count TensorCores (8 per 4-chip
  host: v5p-16 is 2 hosts, v5p-128 16); v5e/v6e count chips (one VM up to 8 chips, multi-host slices have 4 chips
  per VM: v6e-16 is 4 VMs, v6e-256 64)."""
  gen, size = _parse_accelerator_type(accelerator_type)
  if gen in ("v5litepod", "v5e", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


@dataclasses.dataclass(frozen=True)
class Slice:
  """What to create, and how to address it afterwards (ssh/scp always go to the TPU VM node `name`)."""
  name: str
  zone: str
  accelerator_type: str = "v4-8"
  runtime_version: str | None = None  # None: RUNTIME_VERSIONS[generation]
  project: str | None = None
  spot: bool = False
  preemptible: bool = False
  queued: bool = False  # create through `queued-resources create --node-id=name`
  qr_id: str | None = None  # queued resource id; None: f"{name}-qr"
  num_workers: int | None = None  # None: from accelerator_type

  def __post_init__(self):
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", self.name or ""):
      raise ValueError(f"name={self.name!r}: TPU names are lowercase letters, digits and '-', starting with a letter")
    if not self.zone:
      raise ValueError("zone: required, e.g. us-central2-b")
    hosts = num_hosts(self.accelerator_type)  # validates accelerator_type
    if self.spot and self.preemptible:
      raise ValueError("spot/preemptible: choose one (gcloud accepts --spot or --preemptible)")
    if self.queued and self.preemptible:
      raise ValueError("preemptible: queued-resources create has --spot, not --preemptible; use spot=True")
    if self.num_workers is None:
      object.__setattr__(self, "num_workers", hosts)

  @property
  def version(self) -> str:
    return self.runtime_version or RUNTIME_VERSIONS[_ACCEL_RE.match(self.accelerator_type).group(1)]

  @property
  def queued_resource(self) -> str:
    return self.qr_id or f"{self.name}-qr"

  @property
  def can_be_preempted(self) -> bool:
    return self.spot or self.preemptible

  def _wide(self) -> list[str]:
    return [f"--project={self.project}"] if self.project else []

  # ---- gcloud argument lists ----
  def create(self) -> list[str]:
    if self.queued:
      argv = GCLOUD_TPU + ["queued-resources", "create", self.queued_resource, f"--node-id={self.name}",
                           f"--zone={self.zone}", f"--accelerator-type={self.accelerator_type}",
                           f"--runtime-version={self.version}"]
    else:
      argv = GCLOUD_TPU + ["tpu-vm", "create", self.name, f"--zone={self.zone}",
                           f"--accelerator-type={self.accelerator_type}", f"--version={self.version}"]
    if self.spot:
      argv.append("--spot")
    if self.preemptible:
      argv.append("--preemptible")
    return argv + self._wide()

  def describe_state(self) -> list[str]:
    if self.queued:
      return GCLOUD_TPU + ["queued-resources", "describe", self.queued_resource, f"--zone={self.zone}",
                           "--format=value(state.state)"] + self._wide()
    return GCLOUD_TPU + ["tpu-vm", "describe", self.name, f"--zone={self.zone}",
                         "--format=value(state)"] + self._wide()

  def delete(self) -> list[str]:
    if self.queued:  # --force deletes the node(s) first, then the request
      return GCLOUD_TPU + ["queued-resources", "delete", self.queued_resource, f"--zone={self.zone}", "--force",
                           "--quiet"] + self._wide()
    return GCLOUD_TPU + ["tpu-vm", "delete", self.name, f"--zone={self.zone}", "--quiet"] + self._wide()

  def ssh(self, command: str, worker: str | int = "all") -> list[str]:
    return GCLOUD_TPU + ["tpu-vm", "ssh", self.name, f"--zone={self.zone}", f"--worker={worker}",
                         f"--command={command}"] + self._wide()

  def scp_to(self, local: str, remote: str, worker: str | int = "all") -> list[str]:
    return GCLOUD_TPU + ["tpu-vm", "scp", local, f"{self.name}:{remote}", f"--zone={self.zone}",
                         f"--worker={worker}"] + self._wide()


# ---- what runs on the workers (shell strings built from argument lists) ----
def _and(*argvs: Sequence[str]) -> str:
  return " && ".join(shlex.join(list(a)) for a in argvs)


def remote_install(remote_root: str, python: str = "python3.12", apt: bool = True,
                   jax_requirement: str | None = None) -> str:
  """Make a Python 3.12 venv on the worker and install requirements.txt + jax[tpu] into it.

  requirements.txt (jax >= 0.12) needs Python >= 3.12. The Ubuntu 22.04 TPU images ship python3.10 and their
  archive has no python3.12, so with `apt` the deadsnakes PPA is added first (on Ubuntu 24.04 images python3.12
  is the system Python and comes from the main archive all the same)."""
  venv = posixpath.join(remote_root, "venv")
  pip = posixpath.join(venv, "bin", "pip")
  steps = []
  if apt:
    steps += [["sudo", "DEBIAN_FRONTEND=noninteractive", "add-apt-repository", "-y", "ppa:deadsnakes/ppa"],
              ["sudo", "apt-get", "-qq", "update"],
              ["sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-qq", "install", "-y", python, f"{python}-venv"]]
  steps += [[python, "-m", "venv", venv],
            [pip, "install", "-q", "-U", "pip"],
            [pip, "install", "-q", "-r", posixpath.join(remote_root, "code", "requirements.txt")],
            [pip, "install", "-q", jax_requirement or tpu_jax_requirement()]]
  return _and(*steps)


def remote_unpack(remote_root: str) -> str:
  code = posixpath.join(remote_root, "code")
  return _and(["rm", "-rf", code], ["mkdir", "-p", code], ["tar", "-xzf", CODE_TARBALL, "-C", code])


def remote_clone(remote_root: str, repo: str, ref: str | None) -> str:
  code = posixpath.join(remote_root, "code")
  steps = [["rm", "-rf", code], ["git", "clone", "--quiet", repo, code]]
  if ref:
    steps.append(["git", "-C", code, "checkout", "--quiet", ref])
  return _and(*steps)


def train_args(config: str, workdir: str, extra: Sequence[str] = ()) -> list[str]:
  """Flags for effnet.main on a pod: every worker runs the same flags; jax finds its process id itself."""
  if not config:
    raise ValueError("config: required, e.g. configs/efficientnetv2.py:s")
  if not workdir:
    raise ValueError("workdir: required (gs://bucket/path for multi-host slices)")
  return [f"--config={config}", f"--workdir={workdir}", "--config.distributed.initialize=auto", *extra]


def run_env(workdir: str, tfds_data_dir: str | None = None, compilation_cache_dir: str | None = None,
            extra_env: Sequence[str] = ()) -> dict[str, str]:
  env = {}
  if tfds_data_dir:
    env["TFDS_DATA_DIR"] = tfds_data_dir
  # A gs:// cache survives re-creating a preempted slice; a local one is per VM.
  env["JAX_COMPILATION_CACHE_DIR"] = compilation_cache_dir or (
      posixpath.join(posixpath.dirname(workdir.rstrip("/")), "jax_cache") if workdir.startswith("gs://")
      else "/tmp/jax_cache")
  for item in extra_env:
    key, sep, value = item.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
      raise ValueError(f"env={item!r}: expected NAME=VALUE")
    env[key] = value
  return env


def remote_run(remote_root: str, args: Sequence[str], env: dict[str, str], module: str = DEFAULT_MODULE,
               detach: str = "nohup", session: str = "effnet") -> str:
  """cd to the code, run `venv/bin/python -m module args` with env; output appended to <root>/logs/run.log.

  detach: 'nohup' / 'tmux' return at once (the job keeps running after ssh exits); 'none' blocks until the job ends
  and returns its exit status (used by `up --retry-preempted`)."""
  if detach not in ("nohup", "tmux", "none"):
    raise ValueError(f"detach={detach!r}: allowed values are 'nohup', 'tmux', 'none'")
  job = shlex.join(["env", *[f"{k}={v}" for k, v in env.items()], "../venv/bin/python", "-m", module, *args])
  log = "../logs/run.log"
  head = _and(["cd", posixpath.join(remote_root, "code")], ["mkdir", "-p", "../logs"])
  if detach == "none":
    return f"{head} && {shlex.join(['bash', '-c', f'set -o pipefail; {job} 2>&1 | tee -a {log}'])}"
  inner = f"{job} >> {log} 2>&1"
  if detach == "tmux":
    return (f"{head} && (tmux kill-session -t {shlex.quote(session)} 2>/dev/null || true) && "
            f"{shlex.join(['tmux', 'new-session', '-d', '-s', session, inner])}")
  return f"{head} && {shlex.join(['nohup', 'bash', '-c', inner])} > /dev/null 2>&1 < /dev/null &"


# ---- actions ----
@dataclasses.dataclass
class Job:
  config: str
  workdir: str
  extra: Sequence[str] = ()
  module: str = DEFAULT_MODULE
  tfds_data_dir: str | None = None
  compilation_cache_dir: str | None = None
  env: Sequence[str] = ()
  remote_root: str = "effnet_run"
  session: str = "effnet"


def do_create(runner: Runner, s: Slice, wait_timeout_s: float = 24 * 3600, poll_s: float = 30) -> None:
  runner.run(s.create())
  if not s.queued:
    return  # `tpu-vm create` returns when the VM is READY
  if runner.dry_run:
    runner.note(f"then poll until the queued resource is ACTIVE: {shlex.join(s.describe_state())}")
    return
  deadline = time.monotonic() + wait_timeout_s
  while True:
    state = runner.run(s.describe_state(), check=False, capture=True).stdout.strip()
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED") or time.monotonic() > deadline:
      raise RuntimeError(f"queued resource {s.queued_resource} is {state or 'unknown'}; not ACTIVE")
    time.sleep(poll_s)


def do_setup(runner: Runner, s: Slice, remote_root: str = "effnet_run", git_repo: str | None = None,
             git_ref: str | None = None, python: str = "python3.12", apt: bool = True,
             repo_root: str = REPO_ROOT) -> None:
  if git_repo:
    runner.run(s.ssh(remote_clone(remote_root, git_repo, git_ref)))
  else:
    tarball = os.path.join(tempfile.gettempdir(), f"effnet-code-{s.name}.tgz")
    runner.run(["tar", "-czf", tarball, *[f"--exclude={p}" for p in TAR_EXCLUDES], "-C", repo_root, "."])
    runner.run(s.scp_to(tarball, CODE_TARBALL))
    runner.run(s.ssh(remote_unpack(remote_root)))
  runner.run(s.ssh(remote_install(remote_root, python=python, apt=apt,
                                  jax_requirement=tpu_jax_requirement(os.path.join(repo_root, "requirements.txt")))))


def do_run(runner: Runner, s: Slice, job: Job, detach: str = "nohup") -> int:
  if s.num_workers > 1 and not job.workdir.startswith("gs://"):
    runner.note(f"warning: {s.num_workers} workers but workdir {job.workdir!r} is not gs://; each host would "
                "checkpoint to its own disk and a re-created slice could not resume")
  env = run_env(job.workdir, job.tfds_data_dir, job.compilation_cache_dir, job.env)
  cmd = remote_run(job.remote_root, train_args(job.config, job.workdir, job.extra), env, job.module, detach,
                   job.session)
  return runner.run(s.ssh(cmd, "all"), check=detach != "none").returncode


def do_logs(runner: Runner, s: Slice, remote_root: str = "effnet_run", lines: int = 100, follow: bool = False,
            out_dir: str | None = None) -> None:
  log = posixpath.join(remote_root, "logs", "run.log")
  if follow:  # streams every worker's log until interrupted
    runner.run(s.ssh(shlex.join(["tail", "-n", str(lines), "-F", log]), "all"), check=False)
    return
  for w in range(s.num_workers):
    proc = runner.run(s.ssh(shlex.join(["tail", "-n", str(lines), log]), w), check=False, capture=True)
    text = proc.stdout or ""
    for line in text.splitlines():
      print(f"[worker {w}] {line}")
    if out_dir and not runner.dry_run:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, f"{s.name}-worker{w}.log"), "w") as f:
        f.write(text)


def slice_state(runner: Runner, s: Slice) -> str:
  proc = runner.run(s.describe_state(), check=False, capture=True)
  return (proc.stdout or "").strip() if proc.returncode == 0 else ""


def do_up(runner: Runner, s: Slice, job: Job, setup_kw: dict, retry_preempted: int = 0, detach: str = "nohup",
          create: bool = True) -> int:
  """create + setup + run. With retry_preempted > 0 the run is attached; if it fails because the slice was
  preempted, delete it, create it again, set it up and run the same command in the same workdir (resumes)."""
  if retry_preempted < 0:
    raise ValueError(f"retry_preempted={retry_preempted}: must be >= 0")
  if create:
    do_create(runner, s)
  do_setup(runner, s, remote_root=job.remote_root, **setup_kw)
  if retry_preempted == 0:
    return do_run(runner, s, job, detach)
  if not s.can_be_preempted:
    runner.note("note: --retry-preempted on an on-demand slice; it only re-runs if the slice is found preempted")
  for attempt in range(retry_preempted + 1):
    rc = do_run(runner, s, job, "none")
    if runner.dry_run:
      runner.note(f"if the run exits non-zero: {shlex.join(s.describe_state())}; if the state is one of "
                  f"{sorted(x for x in GONE_STATES if x)} (or the slice is gone): {shlex.join(s.delete())}, then "
                  f"create + setup + the same run again (resumes from {job.workdir}); at most {retry_preempted} "
                  "times")
      return 0
    if rc == 0:
      return 0
    state = slice_state(runner, s)
    if state not in GONE_STATES:
      runner.note(f"run failed with exit status {rc} while the slice is {state}: not a preemption; giving up")
      return rc
    if attempt == retry_preempted:
      break
    runner.note(f"slice {s.name} is {state or 'gone'}: re-creating (retry {attempt + 1}/{retry_preempted})")
    runner.run(s.delete(), check=False)
    do_create(runner, s)
    do_setup(runner, s, remote_root=job.remote_root, **setup_kw)
  runner.note(f"still preempted after {retry_preempted} retries")
  return 1


# ---- CLI ----
_add = cli.add_flag


def _parser() -> argparse.ArgumentParser:
  ap = cli.make_parser("python -m launch.tpu", __doc__,
                       "Arguments after `--` are passed to effnet.main (e.g. --config=... overrides).", dry_run=False)
  sub = ap.add_subparsers(dest="action", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("name", help="TPU VM (node) name")
  cli.add_slice_args(common, zone_required=True)
  _add(common, "qr_id", default=None, help="queued resource id (default NAME-qr)")
  _add(common, "num_workers", type=int, default=None)
  _add(common, "remote_root", default="effnet_run", help="dir on each worker (relative to $HOME) for code/venv/logs")
  _add(common, "dry_run", action="store_true", help="print the commands, run nothing")
  _add(common, "log_file", default=os.environ.get("EFFNET_LAUNCH_LOG",
                                                  os.path.expanduser("~/.cache/effnet/launch_commands.log")))
  setup = argparse.ArgumentParser(add_help=False)
  _add(setup, "git_repo", default=None, help="clone this repo on the workers instead of copying the local tree")
  _add(setup, "git_ref", default=None)
  _add(setup, "python", default="python3.12")
  _add(setup, "no_apt", action="store_true", help="do not apt-get install the python interpreter")
  run = argparse.ArgumentParser(add_help=False)
  _add(run, "config", default="configs/efficientnetv2.py:s")
  _add(run, "workdir", required=True, help="gs://bucket/path (required for multi-host resume) or a local path")
  _add(run, "module", default=DEFAULT_MODULE)
  _add(run, "tfds_data_dir", default=None)
  _add(run, "compilation_cache_dir", default=None)
  _add(run, "env", action="append", default=[], help="extra NAME=VALUE for the job (repeatable)")
  _add(run, "detach", choices=["nohup", "tmux", "none"], default="nohup")
  _add(run, "session", default="effnet")
  sub.add_parser("create", parents=[common])
  sub.add_parser("setup", parents=[common, setup])
  sub.add_parser("run", parents=[common, run])
  logs = sub.add_parser("logs", parents=[common])
  _add(logs, "lines", type=int, default=100)
  _add(logs, "follow", action="store_true")
  _add(logs, "out_dir", default=None, help="also save worker logs here")
  sub.add_parser("delete", parents=[common])
  up = sub.add_parser("up", parents=[common, setup, run])
  _add(up, "retry_preempted", type=int, default=0, help="re-create + re-run up to N times after a preemption")
  _add(up, "no_create", action="store_true", help="reuse an existing slice")
  return ap


def _job(a, extra: Sequence[str]) -> Job | None:
  """The job of `run` / `up`: a --config after `--` wins over --config."""
  if a.action not in ("run", "up"):
    return None
  cfg = [x for x in extra if x.startswith("--config=")]
  config = cfg[-1].split("=", 1)[1] if cfg else a.config
  return Job(config, a.workdir, [x for x in extra if not x.startswith("--config=")], a.module, a.tfds_data_dir,
             a.compilation_cache_dir, a.env, a.remote_root, a.session)


def _act(runner: Runner, s: Slice, a, job: Job | None) -> int:
  """Runs the sub-command; the exit status of the job for run/up, else 0 (a failed gcloud call raises)."""
  setup_kw = {}
  if a.action in ("setup", "up"):
    setup_kw = dict(git_repo=a.git_repo, git_ref=a.git_ref, python=a.python, apt=not a.no_apt)
  actions = {
      "create": lambda: do_create(runner, s),
      "setup": lambda: do_setup(runner, s, remote_root=a.remote_root, **setup_kw),
      "run": lambda: do_run(runner, s, job, a.detach),
      "logs": lambda: do_logs(runner, s, a.remote_root, a.lines, a.follow, a.out_dir),
      "delete": lambda: runner.run(s.delete()),
      "up": lambda: do_up(runner, s, job, setup_kw, a.retry_preempted, a.detach, create=not a.no_create),
  }
  result = actions[a.action]()
  return result if a.action in ("run", "up") else 0


def check_job(job: Job | None) -> None:
  """Checks here the config the workers will train (launch.cli.check_config), read from the tree they get."""
  if job is not None:
    cli.check_config([*train_args(job.config, job.workdir), *job.extra], job.module, REPO_ROOT)


def main(argv: Sequence[str] | None = None) -> int:
  a, extra = cli.parse(_parser(), argv)
  if extra and a.action not in ("run", "up"):
    return cli.fail(f"arguments after -- are only for run/up: {extra}")
  try:
    s = Slice(a.name, a.zone, a.accelerator_type, a.version, a.project, a.spot, a.preemptible, a.queued, a.qr_id,
              a.num_workers)
    job = _job(a, extra)
    check_job(job)  # before any slice is created or code copied, also with --dry-run
    return _act(Runner(dry_run=a.dry_run, log_file=a.log_file), s, a, job)
  except subprocess.CalledProcessError as e:
    return cli.fail(f"command failed with exit status {e.returncode}: {shlex.join(e.cmd)}", e.returncode or 1)
  except ValueError as e:
    return cli.fail(e)


if __name__ == "__main__":
  sys.exit(main())
