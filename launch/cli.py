"""What every launch command line shares: the split at `--`, the parser, flags in both spellings, the TPU slice
options and the error exit.

Why one module: the tools (launch.local, slurm, tpu, sweep, grid_search, search) all take their own options, then
`--`, then arguments passed on unchanged to the entry module. Writing that preamble and the TPU options once keeps
their spelling and defaults the same in every tool: a sweep's `--accelerator_type` is `launch.tpu`'s. The same goes
for `check_config`, the one local check of the config a run will get, which every tool calls before it creates,
copies or submits anything (also with --dry-run).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

# Entry modules that take effnet.main's flags (--config=SPEC, --config.KEY=VALUE): their config can be checked here.
CONFIG_MODULES = ("effnet.main", "effnet.search.worker")


def split_passthrough(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
  """(the tool's own arguments, the arguments after the first `--`); argv=None reads sys.argv."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def add_flag(parser, name: str, **kw) -> None:
  """Registers --a_b and its --a-b spelling (both are in use in commands people have written down)."""
  names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
  parser.add_argument(*names, dest=name, **kw)


def make_parser(prog: str, doc: str, epilog: str, *, dry_run: bool = True) -> argparse.ArgumentParser:
  """A parser whose description is the first paragraph of the tool's docstring, with --dry-run unless dry_run=False
  (launch.tpu puts it on each sub-command instead)."""
  parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  if dry_run:
    add_flag(parser, "dry_run", action="store_true", help="print the commands, run nothing")
  return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """Parses the tool's own arguments; returns them with the pass-through arguments (after `--`)."""
  own, extra = split_passthrough(argv)
  return parser.parse_args(own), extra


def add_slice_args(parser, *, zone_required: bool = False) -> None:
  """The options that describe a TPU slice (`launch.tpu.Slice`): zone, project, type, runtime, spot/preemptible,
  queued."""
  add_flag(parser, "zone", required=zone_required, default=None, help="e.g. us-central2-b")
  add_flag(parser, "project", default=None)
  add_flag(parser, "accelerator_type", default="v4-8")
  add_flag(parser, "version", default=None, help="runtime version; default per generation (tpu-ubuntu2204-base for v4)")
  add_flag(parser, "spot", action="store_true")
  add_flag(parser, "preemptible", action="store_true")
  add_flag(parser, "queued", action="store_true", help="create through a queued resource (queued-resources create)")


def names_list(text: str) -> tuple[str, ...]:
  """'s0,s1' -> ('s0', 's1'); empty items dropped."""
  return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def fail(error: Exception, status: int = 2) -> int:
  """Prints `error: ...` to stderr and returns the exit status (2: a bad argument, nothing was run)."""
  print(f"error: {error}", file=sys.stderr)
  return status


def check_config(args: Sequence[str], module: str = "effnet.main", base_dir: str | None = None,
                 context: str = "") -> bool:
  """Loads and validates, here, the config `python -m module args` would train (effnet.config_lib's check: the
  config file, its arg, each --config.KEY=VALUE in order, every field), so that a mistake fails before a slice is
  created, code is copied or a job is submitted. A relative config path is read from `base_dir` (where the run's
  working directory will be; default: here). Raises ValueError prefixed with `context` (which run); returns False
  without checking for an entry module whose flags are not effnet.main's."""
  if module not in CONFIG_MODULES:
    return False
  from effnet import config_lib  # pylint: disable=g-import-not-at-top  (jax: only for the tools that run configs)
  try:
    config_lib.config_from_command_line(args, base_dir)
  except ValueError as e:
    raise ValueError(f"{context}{e}") from None
  return True
