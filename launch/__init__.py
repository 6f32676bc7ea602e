"""Launch helpers: run the same `effnet.main` on a laptop, a TPU VM / pod slice, a SLURM cluster, or as a sweep.

Why a package of its own: launching is host-side orchestration (gcloud, ssh, sbatch, subprocesses) that must never be
imported by training code. Every tool here builds its commands as argument lists and sends them through one `Runner`,
so that each command is printed and logged exactly as it is executed, and `--dry-run` prints the same lines without
executing anything.

  runs.py         the one run loop (Backend, run_all) of sweep.py, grid_search.py and search.py
  cli.py          what every command line shares: the split at `--`, the parser, the TPU slice options, and
                  check_config, the local check of a run's config before anything is created or submitted
  tpu.py, local.py, slurm.py, sweep.py, grid_search.py, search.py, plot.py: the command-line tools
"""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from typing import Sequence

DEFAULT_MODULE = "effnet.main"


class Runner:
  """Executes argument lists (never shell strings); echoes and logs each one; `dry_run` only echoes."""

  def __init__(self, dry_run: bool = False, log_file: str | None = None, stream=None):
    self.dry_run = dry_run
    self.log_file = log_file
    self.stream = stream if stream is not None else sys.stdout
    self.commands: list[list[str]] = []  # everything run (or that would have been run), in order

  def note(self, text: str) -> None:
    """A comment line in the transcript (plans, retries), prefixed with '#'."""
    for line in text.splitlines():
      print(f"# {line}", file=self.stream, flush=True)
    self._log(f"# {text}")

  def _log(self, line: str) -> None:
    if self.dry_run or not self.log_file:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.log_file)), exist_ok=True)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(self.log_file, "a") as f:
      f.write(f"{stamp} {line}\n")

  def run(self, argv: Sequence[str], *, check: bool = True, capture: bool = False,
          timeout: float | None = None) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    self.commands.append(argv)
    line = shlex.join(argv)
    print(line if self.dry_run else f"+ {line}", file=self.stream, flush=True)
    self._log(line)
    if self.dry_run:
      return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")
    proc = subprocess.run(argv, check=False, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    self._log(f"# exit status {proc.returncode}")
    if check and proc.returncode != 0:
      raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def format_override_value(value) -> str:
  """How a Python value is written after `--config.key=` so that ml_collections' config_flags parses it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "None"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def override_flags(overrides: dict) -> list[str]:
  """{'optim.lr_base': 0.01} -> ['--config.optim.lr_base=0.01'] (order kept)."""
  flags = []
  for key, value in overrides.items():
    if not isinstance(key, str) or not key or key.startswith("-") or "=" in key:
      raise ValueError(f"override key {key!r}: must be a dotted config field name such as 'optim.lr_base'")
    flags.append(f"--config.{key}={format_override_value(value)}")
  return flags
