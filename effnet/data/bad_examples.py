"""Accounting of undecodable examples (`config.data.bad_examples`): what the host pipeline dropped, and the log.

Why: one truncated JPEG in a dataset of millions must not kill a long run minutes (or days) in, and the user must
be able to find it. The tf.data side (`effnet.data.pipeline`) drops an example whose decode raised and calls
`report` (only then: the normal path runs no Python) with where it was: the split, the host stream it was read in
(train: epoch and index in that epoch's order; eval: index), and its tfds record id '<file>__<index in file>'.
The record id is what names the example: a stream position means nothing without replaying the seeded shuffle,
and an index in the split depends on the file order (shuffled per epoch with data.shuffle_files); the id reads back
with
`tf.data.TFRecordDataset(<data_dir>/<file>).skip(<index>).take(1)`.

'skip' logs each one and counts it (`summary` for the train log, `eval_summary` for the eval log); 'fail' logs it
and returns the message the pipeline stops with. Counts are per process (each host reads its own examples) and
since the process started: a resumed run counts again from zero, and meets the same examples (the stream is
deterministic). They count when the pipeline reads an example, which is a few batches ahead of the train step.

TensorFlow-free, so that the trainer and config validation can import it.
"""
from __future__ import annotations

import collections
import logging
import threading

POLICIES = ('skip', 'fail')

_lock = threading.Lock()
_skipped = collections.Counter()  # (role, split) -> examples dropped so far (a record counts once per epoch)
_records = collections.defaultdict(set)  # (role, split) -> distinct record ids dropped


def describe(split: str, role: str, epoch: int, index: int, record_id: str) -> str:
  """Where an undecodable example is: its split, its tfds record id and its place in this host's stream (train:
  the epoch and its index in that epoch's shuffled order; eval: its index in the host's part of the split)."""
  record = f'record {record_id}' if record_id else 'no record id (the reader gives none)'
  where = f'epoch {epoch}, example {index} of this host' if epoch >= 0 else f'example {index} of this host'
  # no quotes: the 'fail' message reaches the user through a TF error, which escapes them
  return f'undecodable example in {role} split {split}, {record} ({where})'


def report(policy: str, split: str, role: str, epochs, indices, record_ids) -> str:
  """Called by the pipeline for the examples of one batch it could not decode; logs and counts them. Returns, for
  'fail', the message the pipeline then stops with (it raises inside tf.data, so it travels back as a string)."""
  keys = [_text(r) or f'<{role} example {int(i)}>' for i, r in zip(indices, record_ids)]
  lines = [describe(split, role, int(e), int(i), _text(r)) for e, i, r in zip(epochs, indices, record_ids)]
  if not lines:
    return ''
  if policy == 'fail':
    message = (f'data.bad_examples=fail: {lines[0]}; data.bad_examples=skip drops such examples and logs them '
               f'instead')
    logging.error('%s', message)
    return message
  with _lock:
    _skipped[(role, split)] += len(lines)
    _records[(role, split)].update(keys)
    total = sum(_skipped.values())
  for line in lines:
    logging.warning('data.bad_examples=skip: dropped %s; %d skipped so far', line, total)
  return ''


def _text(value) -> str:
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def counts() -> dict[tuple[str, str], int]:
  """{(role, split): examples dropped so far in this process}."""
  with _lock:
    return dict(_skipped)


def records(role: str, split: str) -> list[str]:
  """Distinct record ids dropped so far from `split` read as `role` ('train' or 'eval'), sorted."""
  with _lock:
    return sorted(_records[(role, split)])


def summary(role: str = 'train') -> str | None:
  """One line for the log: the undecodable examples of `role` dropped so far, per split; None when there were none."""
  with _lock:
    per_split = {split: (n, len(_records[(r, split)])) for (r, split), n in sorted(_skipped.items()) if r == role}
  if not per_split:
    return None
  parts = ', '.join(f'split {split!r}: {n} ({k} distinct records)' for split, (n, k) in per_split.items())
  total = sum(n for n, _ in per_split.values())
  return f'data.bad_examples=skip: {total} undecodable {role} examples skipped so far on this host ({parts})'


def eval_summary() -> str | None:
  """One line for the eval log: the eval examples that could not be decoded and are in no metric. An eval pass
  reads every example once, so the distinct records are what each pass dropped; None when there were none."""
  with _lock:
    per_split = {split: sorted(_records[(r, split)]) for (r, split) in sorted(_skipped) if r == 'eval'}
  if not per_split:
    return None
  parts = '; '.join(f'split {split!r}: {len(ids)} ({", ".join(ids[:5])}{", ..." if len(ids) > 5 else ""})'
                    for split, ids in per_split.items())
  return (f'data.bad_examples=skip: undecodable eval examples dropped on this host and counted in no metric '
          f'(eval num_examples excludes them): {parts}')


def log_summary(role: str, step: int) -> None:
  """The trainer's call at each train log step ('train': `summary`) and after each evaluation ('eval':
  `eval_summary`): logs the line when any example was dropped, nothing otherwise."""
  line = eval_summary() if role == 'eval' else summary(role)
  if line:
    logging.info('step %d: %s', step, line)


def reset(role: str | None = None, split: str | None = None) -> None:
  """Forgets the counts of (role, split), or every count: a new eval dataset starts its own (each of its passes
  drops the same examples), and tests start from zero."""
  with _lock:
    for key in [k for k in _skipped if role is None or k == (role, split)]:
      del _skipped[key]
      _records.pop(key, None)
