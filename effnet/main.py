"""Command line: `python -m effnet.main --config=configs/efficientnetv2.py:s --workdir=DIR [--config.x=y ...]`
(installed: `effnet-train ...`, the same flags).

The only module that defines flags; it parses them and calls `effnet.train.train_and_evaluate`. Before absl parses
them, the config, its arg and every `--config.KEY=VALUE` are loaded and validated by `effnet.config_lib` (the check
every launcher runs too), and the workdir is checked before training starts: a mistake is one `error:` line naming
it, exit status 2, before any data loads.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from effnet import checkpoint
from effnet import config_lib
from effnet import train
from effnet import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:args]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs (local or gs://).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops orbax's per-save INFO chatter from the log so the training lines stay readable."""

  def filter(self, record):
    return record.levelno >= 30 or '/orbax/' not in record.pathname


def main(argv):
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  for handler in py_logging.getLogger().handlers + py_logging.getLogger('absl').handlers:
    handler.addFilter(_QuietLibraries())
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _exit_on_error(workdir_lib.check_usable, _WORKDIR.value)
  final = _exit_on_error(train.train_and_evaluate, _CONFIG.value, _WORKDIR.value, errors=_RUN_REFUSALS)
  logging.info('final metrics: %s', final)
  print({k: final[k] for k in sorted(final)})


# What a run refuses before its first step, each with a message that says what to do: one `error:` line, not a
# traceback (a held workdir, a checkpoint that does not fit the model, no intact checkpoint to resume from).
_RUN_REFUSALS = (workdir_lib.WorkdirBusyError, checkpoint.CheckpointMismatchError, checkpoint.DamagedCheckpointError)


def _exit_on_error(check, *args, errors=(ValueError,)):
  """Runs `check(*args)` and returns its result; an exception in `errors` becomes one `error: ...` line on stderr
  and exit status 2 (no traceback)."""
  try:
    return check(*args)
  except errors as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, after config_lib checked the config the command line gives (one message naming the bad
  file, arg, override or field, where config_flags would print a traceback). Forms it cannot read (`--config.KEY`
  without `=VALUE`) are left to config_flags."""
  args = argv[1:]
  if not any(a.startswith('--config.') and '=' not in a for a in args):
    spec, _ = config_lib.parse_command_line(args)
    if spec is not None:
      _exit_on_error(config_lib.config_from_command_line, args)
  return app.parse_flags_with_usage(argv)


def run():
  """The `effnet-train` console script (pyproject.toml): absl parses the flags, then calls `main`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
