"""Start N cooperating JAX processes of effnet.main on this machine (CPU tests, or one box with several GPUs).

Why: multi-process code paths (jax.distributed, per-process data shards, global arrays) must be exercised without a
pod. Each process gets the same training flags plus an explicit coordinator (127.0.0.1:free port), process count and
id; output lines are prefixed with the process id; if one process fails or the timeout passes, the others are
killed, so a hung collective never outlives the launcher.

    python -m launch.local --num_processes 2 --cpu_devices_per_process 2 -- \
        --config=configs/efficientnetv2.py:s,runlocal --workdir=/tmp/w
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from launch import DEFAULT_MODULE, cli


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(num_processes: int, args: Sequence[str], port: int, module: str = DEFAULT_MODULE,
                     python: str = sys.executable) -> list[list[str]]:
  if num_processes < 1:
    raise ValueError(f"num_processes={num_processes}: must be >= 1")
  return [[python, "-m", module, *args, "--config.distributed.initialize=yes",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           f"--config.distributed.num_processes={num_processes}", f"--config.distributed.process_id={i}"]
          for i in range(num_processes)]


def process_env(i: int, cpu_devices_per_process: int = 0, gpus_per_process: int = 0,
                base: dict | None = None) -> dict[str, str]:
  env = dict(os.environ if base is None else base)
  if cpu_devices_per_process and gpus_per_process:
    raise ValueError("cpu_devices_per_process/gpus_per_process: give one of them")
  if cpu_devices_per_process:
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices_per_process)
  if gpus_per_process:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * gpus_per_process + g) for g in range(gpus_per_process))
  return env


def _kill(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
  """Terminate the process group we created for `proc` (start_new_session), then kill it after a grace period."""
  if proc.poll() is not None:
    return
  try:
    os.killpg(proc.pid, signal.SIGTERM)
  except ProcessLookupError:
    return
  try:
    proc.wait(grace_s)
  except subprocess.TimeoutExpired:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()


def _pump(i: int, stream, out, log_path: str | None, lock: threading.Lock) -> None:
  log = open(log_path, "w") if log_path else None
  for line in iter(stream.readline, ""):
    with lock:
      out.write(f"[{i}] {line}")
      out.flush()
    if log:
      log.write(line)
      log.flush()
  if log:
    log.close()


def launch(args: Sequence[str], num_processes: int = 2, module: str = DEFAULT_MODULE, cpu_devices_per_process: int = 0,
           gpus_per_process: int = 0, timeout_s: float | None = None, port: int | None = None,
           log_dir: str | None = None, out=None, dry_run: bool = False) -> int:
  """Runs the processes; returns 0 if all succeed, else the first failure's exit status (124 on timeout)."""
  import shlex
  out = out or sys.stdout
  port = port or free_port()
  cmds = process_commands(num_processes, args, port, module)
  envs = [process_env(i, cpu_devices_per_process, gpus_per_process) for i in range(num_processes)]
  for i, c in enumerate(cmds):
    extra = {k: envs[i][k] for k in ("JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", "CUDA_VISIBLE_DEVICES")
             if k in envs[i] and envs[i].get(k) != os.environ.get(k)}
    print(("" if dry_run else "+ ") + shlex.join(["env", *[f"{k}={v}" for k, v in extra.items()], *c]), file=out,
          flush=True)
  if dry_run:
    return 0
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  lock = threading.Lock()
  procs, pumps = [], []
  try:
    for i, (c, env) in enumerate(zip(cmds, envs)):
      p = subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
      procs.append(p)
      t = threading.Thread(target=_pump, daemon=True,
                           args=(i, p.stdout, out, os.path.join(log_dir, f"process_{i}.log") if log_dir else None,
                                 lock))
      t.start()
      pumps.append(t)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    rc = 0
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, rc = failed[0]
        print(f"[launch.local] process {i} exited with status {rc}; stopping the others", file=out, flush=True)
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        print(f"[launch.local] timeout after {timeout_s}s; stopping all processes", file=out, flush=True)
        rc = 124
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      _kill(p)
    for t in pumps:
      t.join(timeout=5)
  return rc


def main(argv: Sequence[str] | None = None) -> int:
  ap = cli.make_parser("python -m launch.local", __doc__,
                       "Arguments after `--` go to every process (e.g. --config=... --workdir=...).")
  cli.add_flag(ap, "num_processes", type=int, default=2)
  cli.add_flag(ap, "cpu_devices_per_process", type=int, default=0,
               help="force the CPU backend with this many devices per process (tests)")
  cli.add_flag(ap, "gpus_per_process", type=int, default=0,
               help="give process i CUDA_VISIBLE_DEVICES = its own block of this many GPUs")
  ap.add_argument("--module", default=DEFAULT_MODULE)
  ap.add_argument("--timeout", type=float, default=None, help="seconds; then all processes are killed (exit 124)")
  ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  cli.add_flag(ap, "log_dir", default=None, help="also write process_<i>.log files here")
  a, args = cli.parse(ap, argv)
  try:
    # the config every process will train (process 0's flags), checked before any process starts
    cli.check_config(process_commands(a.num_processes, args, 0, a.module)[0][3:], a.module)
    return launch(args, a.num_processes, a.module, a.cpu_devices_per_process, a.gpus_per_process, a.timeout, a.port,
                  a.log_dir, dry_run=a.dry_run)
  except ValueError as e:
    return cli.fail(e)


if __name__ == "__main__":
  sys.exit(main())
