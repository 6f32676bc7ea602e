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
and returns the message the pipeline stops with. Counts are per host (each host reads its own examples).

Train counts last across a resume: each checkpoint records, per host, the train examples skipped before its step
(`checkpoint_record`, in the step's JSON meta), and a resumed run starts from that (`resume`), so the summary states
the total since the run began. The pipeline reads a few batches ahead of the train step (the warning for each
example comes then), so the record and the summary at a step take only the examples at stream positions before
the step; the ones read ahead are met again after a resume, and a position met twice (read ahead, then again by the
next progressive stage's pipeline) counts once.

TensorFlow-free, so that the trainer and config validation can import it.
"""
from __future__ import annotations

import collections
import json
import logging
import threading

POLICIES = ('skip', 'fail')

_lock = threading.Lock()
_skipped = collections.Counter()  # (role, split) -> examples dropped so far (a record counts once per epoch)
_records = collections.defaultdict(set)  # (role, split) -> distinct record ids dropped
_positions = collections.defaultdict(dict)  # train split -> {(epoch, index in epoch): record key} dropped here
_restored = {}  # train split -> (count, record ids) a resumed run started from (its checkpoint's record)
_run = {}  # the train split, position(step) and host_epoch_examples of the run (`resume`)


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
    for epoch, index, key in zip(epochs, indices, keys):
      if role == 'train':
        if (int(epoch), int(index)) in _positions[split]:
          continue  # that stream position was read before (read ahead by the previous stage's pipeline)
        _positions[split][(int(epoch), int(index))] = key
      _skipped[(role, split)] += 1
      _records[(role, split)].add(key)
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


def summary(role: str = 'train', step: int | None = None) -> str | None:
  """One line for the log: the undecodable examples of `role` dropped so far, per split; None when there were
  none. Train with `step` (in a run, after `resume`): those before the step since the run began, resumes included;
  without: all the pipeline has read."""
  with _lock:
    per_split = {split: (n, len(_records[(r, split)])) for (r, split), n in sorted(_skipped.items()) if r == role}
    before = sum(count for count, _ in _restored.values()) if role == 'train' else 0
  if role == 'train' and step is not None and _run:
    count, ids = _trained(step)
    per_split = {_run['split']: (count, len(ids))} if count else {}
  if not per_split:
    return None
  parts = ', '.join(f'split {split!r}: {n} ({k} distinct records)' for split, (n, k) in per_split.items())
  total = sum(n for n, _ in per_split.values())
  since = f'since the run began, {before} of them before its last resume' if before else 'so far'
  return f'data.bad_examples=skip: {total} undecodable {role} examples skipped {since} on this host ({parts})'


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
  line = eval_summary() if role == 'eval' else summary(role, step)
  if line:
    logging.info('step %d: %s', step, line)


def checkpoint_record(step: int) -> dict:
  """What a checkpoint at `step` records: per host, the train examples skipped before the step (`_trained`). Every
  host calls it at the same steps (a gather when there are several); the record is the same on every host."""
  count, ids = _trained(step)
  return {'hosts': _gathered({'split': _run['split'], 'skipped': count, 'records': sorted(ids)})}


def _trained(step: int) -> tuple[int, set]:
  """(count, record ids) of the train examples skipped at this host's stream positions before `step` (the ones it
  trained on; those read ahead are left out), with what the run had before its last resume."""
  consumed, per_epoch = _run['position'](step), _run['host_epoch_examples']
  with _lock:
    count, ids = _restored.get(_run['split'], (0, set()))
    before = [key for (epoch, index), key in _positions[_run['split']].items()
              if epoch * per_epoch + index < consumed]
  return count + len(before), set(ids) | set(before)


def _gathered(mine: dict) -> list[dict]:
  """[host 0's, host 1's, ...] of a JSON-able dict, on every host."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return [mine]
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(mine).encode(), np.uint8)
  size = int(np.max(multihost_utils.process_allgather(np.int32(data.size))))
  rows = multihost_utils.process_allgather(np.pad(data, (0, size - data.size), constant_values=ord(' ')))
  return [json.loads(bytes(row).decode()) for row in np.asarray(rows).reshape(jax.process_count(), size)]


def resume(record: dict | None, split: str, host_epoch_examples: int, position) -> None:
  """Starts this process's train counts from a checkpoint's record (None: from zero, a fresh run), and says how to
  tell what was trained: `position(step)` is this host's stream position at `step` (the examples it read before),
  an epoch `host_epoch_examples` long. With another number of hosts than the record's, each host reads other
  examples than before: host 0 takes the whole run's count and the others start from zero."""
  import jax  # pylint: disable=g-import-not-at-top
  _run.update(split=split, position=position, host_epoch_examples=host_epoch_examples)
  hosts = (record or {}).get('hosts', [])
  if len(hosts) == jax.process_count():
    hosts = [hosts[jax.process_index()]]
  elif jax.process_index() != 0:
    hosts = []
  with _lock:
    for key in [k for k in _skipped if k[0] == 'train']:
      del _skipped[key]
      _records.pop(key, None)
    _positions.clear()
    _restored.clear()
    for host in hosts:
      count, ids = _restored.get(host['split'], (0, set()))
      _restored[host['split']] = (count + int(host['skipped']), ids | set(host['records']))
    for split, (count, ids) in _restored.items():
      _skipped[('train', split)], _records[('train', split)] = count, set(ids)
  if _restored:
    logging.info('data.bad_examples: %s', summary('train'))


def reset(role: str | None = None, split: str | None = None) -> None:
  """Forgets the counts of (role, split), or every count: a new eval dataset starts its own (each of its passes
  drops the same examples), and tests start from zero."""
  with _lock:
    for key in [k for k in _skipped if role is None or k == (role, split)]:
      del _skipped[key]
      _records.pop(key, None)
    if role is None:
      _positions.clear()
      _restored.clear()
      _run.clear()
