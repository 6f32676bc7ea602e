"""Write (and optionally submit) a SLURM batch script that trains effnet.main on GPU nodes.

Why: on SLURM, `jax.distributed.initialize()` with no arguments reads SLURM_JOB_ID / SLURM_STEP_NODELIST /
SLURM_NTASKS / SLURM_PROCID / SLURM_LOCALID (jax/_src/clusters/slurm_cluster.py), so the training command is the same
on every task: `srun python -m effnet.main ... --config.distributed.initialize=auto`. Two layouts:
- per_gpu (default): one task per GPU; jax then restricts each task to GPU number SLURM_LOCALID.
- per_node: one task per node that drives all its GPUs; jax would still restrict it to GPU SLURM_LOCALID (=0), so the
  script exports JAX_LOCAL_DEVICE_IDS=0,...,G-1, which jax.distributed.initialize reads before auto-detection.

    python -m launch.slurm --nodes=2 --gpus_per_node=8 --out=train.sbatch -- \
        --config=configs/efficientnetv2.py:s --workdir=/shared/effnet/v2s
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from launch import DEFAULT_MODULE, Runner, cli


def sbatch_script(args: Sequence[str], nodes: int = 1, gpus_per_node: int = 8, mode: str = "per_gpu",
                  job_name: str = "effnet", time_limit: str = "24:00:00", partition: str | None = None,
                  account: str | None = None, cpus_per_task: int | None = None, mem: str | None = None,
                  repo_dir: str = ".", venv: str | None = ".venv", module: str = DEFAULT_MODULE,
                  tfds_data_dir: str | None = None, compilation_cache_dir: str | None = None,
                  log_dir: str = "slurm_logs", requeue: bool = False, extra_sbatch: Sequence[str] = ()) -> str:
  if mode not in ("per_gpu", "per_node"):
    raise ValueError(f"mode={mode!r}: allowed values are 'per_gpu', 'per_node'")
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"nodes={nodes}, gpus_per_node={gpus_per_node}: must be >= 1")
  if not any(a.startswith("--workdir=") for a in args):
    raise ValueError("workdir: pass --workdir=DIR (on a filesystem every node sees) after --")
  tasks_per_node = gpus_per_node if mode == "per_gpu" else 1
  cpus = cpus_per_task or (8 if mode == "per_gpu" else 8 * gpus_per_node)
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={tasks_per_node}", f"#SBATCH --gres=gpu:{gpus_per_node}",
           f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --time={time_limit}",
           f"#SBATCH --output={log_dir}/%x-%j.out"]
  lines += [f"#SBATCH --{opt}={value}" for opt, value in
            (("partition", partition), ("account", account), ("mem", mem)) if value]
  if requeue:  # a requeued job re-runs this script with the same workdir and resumes from its checkpoint
    lines.append("#SBATCH --requeue")
  lines += [f"#SBATCH {x}" for x in extra_sbatch]
  lines += ["", "# Written by launch/slurm.py. One task per " + ("GPU" if mode == "per_gpu" else "node") +
            f": {nodes * tasks_per_node} JAX processes in all.", "set -euo pipefail",
            f"cd {shlex.quote(repo_dir)}", f"mkdir -p {shlex.quote(log_dir)}"]
  if venv:
    lines.append(f"source {shlex.quote(os.path.join(venv, 'bin', 'activate'))}")
  lines += [f"export {name}={shlex.quote(value)}" for name, value in
            (("TFDS_DATA_DIR", tfds_data_dir), ("JAX_COMPILATION_CACHE_DIR", compilation_cache_dir)) if value]
  if mode == "per_node":
    lines.append("export JAX_LOCAL_DEVICE_IDS=" + ",".join(str(g) for g in range(gpus_per_node)))
  cmd = ["srun", "--kill-on-bad-exit=1", "python", "-m", module, *args, "--config.distributed.initialize=auto"]
  lines += ["", shlex.join(cmd), ""]
  return "\n".join(lines)


def _parser():
  ap = cli.make_parser("python -m launch.slurm", __doc__,
                       "Arguments after `--` go to effnet.main (--config=..., --workdir=..., overrides).")
  ap.add_argument("--nodes", type=int, default=1)
  cli.add_flag(ap, "gpus_per_node", type=int, default=8)
  ap.add_argument("--mode", choices=["per_gpu", "per_node"], default="per_gpu")
  cli.add_flag(ap, "job_name", default="effnet")
  ap.add_argument("--time", default="24:00:00")
  ap.add_argument("--partition", default=None)
  ap.add_argument("--account", default=None)
  cli.add_flag(ap, "cpus_per_task", type=int, default=None)
  ap.add_argument("--mem", default=None)
  cli.add_flag(ap, "repo_dir", default=os.getcwd())
  ap.add_argument("--venv", default=".venv", help="virtualenv to activate, relative to repo_dir ('' for none)")
  ap.add_argument("--module", default=DEFAULT_MODULE)
  cli.add_flag(ap, "tfds_data_dir", default=None)
  cli.add_flag(ap, "compilation_cache_dir", default=None)
  cli.add_flag(ap, "log_dir", default="slurm_logs")
  ap.add_argument("--requeue", action="store_true")
  ap.add_argument("--sbatch", action="append", default=[], help="extra '#SBATCH' option, e.g. --sbatch=--qos=high")
  ap.add_argument("--out", default="effnet.sbatch", help="script path to write")
  ap.add_argument("--submit", action="store_true", help="run sbatch on the written script")
  return ap


def main(argv: Sequence[str] | None = None) -> int:
  a, args = cli.parse(_parser(), argv)
  try:
    script = sbatch_script(args, a.nodes, a.gpus_per_node, a.mode, a.job_name, a.time, a.partition, a.account,
                           a.cpus_per_task, a.mem, a.repo_dir, a.venv or None, a.module, a.tfds_data_dir,
                           a.compilation_cache_dir, a.log_dir, a.requeue, a.sbatch)
    # the config the tasks will train, read from --repo_dir (their working directory), before anything is written
    cli.check_config([*args, "--config.distributed.initialize=auto"], a.module, a.repo_dir)
  except ValueError as e:
    return cli.fail(e)
  if a.dry_run:  # prints the script only
    print(script, end="")
    if a.submit:
      Runner(dry_run=True).run(["sbatch", a.out])
    return 0
  with open(a.out, "w") as f:
    f.write(script)
  print(f"wrote {a.out}")
  if a.submit:
    return Runner().run(["sbatch", a.out], check=False).returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
