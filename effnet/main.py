"""Command line: `python -m effnet.main --config=configs/efficientnetv2.py:s --workdir=DIR [--config.x=y ...]`
(installed: `effnet-train ...`, the same flags).

The only module that defines flags; it parses them and calls `effnet.train.train_and_evaluate`.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from effnet import train

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
  final = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info('final metrics: %s', final)
  print({k: final[k] for k in sorted(final)})


def run():
  """The `effnet-train` console script (pyproject.toml): absl parses the flags, then calls `main`."""
  app.run(main)


if __name__ == '__main__':
  run()
