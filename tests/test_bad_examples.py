"""data.bad_examples: undecodable examples are dropped and named ('skip') or stop the stream naming them ('fail').

The dataset is built here, offline: a tfds builder of 16x16 JPEGs of one colour each (example `key` has red 5*key,
so a decoded image names its example), written in key order, in two configs: 'clean', and 'damaged', where a few
keys hold bytes no decoder reads (a truncated JPEG, a JPEG header followed by garbage, bytes of no image format).
The references are independent of the code under test: the record ids come from a plain tfds read, and the stream
an undamaged dataset gives (the 'clean' twin has the same keys, so the same files and order) is what the damaged one
must give with each bad slot refilled by the rule the pipeline documents.
"""
import collections
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import _train_helpers as h
from effnet import config_lib
from effnet.data import bad_examples
from effnet.data import pipeline

NUM_TRAIN, NUM_TEST = 40, 20
BAD_TRAIN = {5: 'truncated', 17: 'garbage_after_header'}
BAD_TEST = {3: 'not_an_image', 19: 'truncated'}  # 19: the last example of the split (and of the second host)
BATCH = 8


def _jpeg(key, damage=None):
  image = np.zeros([16, 16, 3], np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = 5 * key, 200 - 4 * key, 90
  data = tf.io.encode_jpeg(image, quality=95).numpy()
  if damage == 'truncated':
    return data[:len(data) // 2]
  if damage == 'garbage_after_header':
    return data[:4] + b'\x17' * 200
  if damage == 'not_an_image':
    return b'no image format starts like this' * 4
  return data


class BadExamplesSet(tfds.core.GeneratorBasedBuilder):
  """Test data: JPEGs in key order; the 'damaged' config has undecodable bytes at BAD_TRAIN / BAD_TEST."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='clean'), tfds.core.BuilderConfig(name='damaged')]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True, supervised_keys=('image', 'label'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(16, 16, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=10), 'key': np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    damaged = self.builder_config.name == 'damaged'
    return {'train': self._generate_examples(NUM_TRAIN, BAD_TRAIN if damaged else {}),
            'test': self._generate_examples(NUM_TEST, BAD_TEST if damaged else {})}

  def _generate_examples(self, count, bad):  # pylint: disable=arguments-differ
    for key in range(count):
      yield key, {'image': _jpeg(key, bad.get(key)), 'label': key % 10, 'key': key}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('bad_examples_tfds'))
  for config in ('clean', 'damaged'):
    tfds.builder(f'bad_examples_set/{config}', data_dir=d).download_and_prepare()
  return d


def data_cfg(data_dir, config='damaged', **fields):
  cfg = config_lib.base_config().data
  cfg.update(dict(name=f'bad_examples_set/{config}', data_dir=data_dir, train_split='train', eval_split='test',
                  image_size=16, eval_image_size=16, train_preprocess='resize', eval_preprocess='resize',
                  resize_method='bilinear', flip=True, shuffle_buffer=64, shuffle_files=False))
  cfg.update(fields)
  return cfg


def record_ids(data_dir, split):
  """key -> tfds record id, by a plain tfds read of the damaged set (bytes not decoded)."""
  builder = tfds.builder('bad_examples_set/damaged', data_dir=data_dir)
  ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(add_tfds_id=True))
  return {int(ex['key']): ex['tfds_id'].decode() for ex in tfds.as_numpy(ds)}


def keys_of(images):
  """The example each image shows (red = 5 * key; JPEG moves a flat colour by a level or two at most)."""
  return np.rint(images[..., 0].astype(np.float64).mean(axis=(1, 2)) / 5).astype(int)


def train_batches(cfg, count, **kwargs):
  ds = pipeline.create_train_dataset(cfg, global_batch_size=BATCH, process_index=0, process_count=1, **kwargs)
  return list(ds.take(count).as_numpy_iterator())


def refilled(keys, bad):
  """The documented rule: a bad slot holds the next good example of its batch, else the last good one."""
  out = []
  for batch in keys:
    good = [k for k in batch if k not in bad]
    row = []
    for i, k in enumerate(batch):
      later = [j for j in batch[i:] if j not in bad]
      row.append(later[0] if later else good[-1]) if k in bad else row.append(k)
    out.append(row)
  return out


class _Messages(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def logged(fn, *args, **kwargs):
  """fn(...) with the counts reset first; returns (its result, the messages logged meanwhile)."""
  bad_examples.reset()
  handler, root = _Messages(), logging.getLogger()
  level = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    return fn(*args, **kwargs), handler.messages
  finally:
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope='module')
def two_epochs(data_dir):
  """{'clean', 'damaged'}: the batches of two epochs (10 batches), and what the damaged run counted and logged."""
  clean = train_batches(data_cfg(data_dir, 'clean'), 10, num_epochs=2)
  damaged, messages = logged(train_batches, data_cfg(data_dir), 10, num_epochs=2)
  return {'clean': clean, 'damaged': damaged, 'messages': messages, 'counts': bad_examples.counts(),
          'records': bad_examples.records('train', 'train'), 'summary': bad_examples.summary('train')}


def test_skip_drops_exactly_the_bad_examples_and_names_them(data_dir, two_epochs):
  clean = [keys_of(b['image']).tolist() for b in two_epochs['clean']]
  assert sorted(k for b in clean[:5] for k in b) == list(range(NUM_TRAIN))  # an epoch: every example once
  assert sorted(k for b in clean[5:] for k in b) == list(range(NUM_TRAIN))
  damaged = two_epochs['damaged']
  assert [keys_of(b['image']).tolist() for b in damaged] == refilled(clean, BAD_TRAIN)
  for batch in damaged:  # a refilled slot is an exact copy (augmentation included) of an example that decoded
    assert len({row.tobytes() for row in batch['image']}) == len(set(keys_of(batch['image'])))
  ids = record_ids(data_dir, 'train')
  assert two_epochs['records'] == sorted(ids[k] for k in BAD_TRAIN)
  assert two_epochs['counts'] == {('train', 'train'): 2 * len(BAD_TRAIN)}  # met once per epoch
  for key in BAD_TRAIN:
    assert sum(f'train split train, record {ids[key]} (epoch' in m for m in two_epochs['messages']) == 2
  # the line effnet.train logs at each log step (bad_examples.log_summary)
  assert two_epochs['summary'] == ("data.bad_examples=skip: 4 undecodable train examples skipped so far on this "
                                   "host (split 'train': 4 (2 distinct records))")


def test_resumed_stream_equals_uninterrupted(data_dir, two_epochs):
  whole = two_epochs['damaged']
  for step in (3, 7):  # mid-epoch in epochs 0 and 1, each before a bad example of its epoch
    consumed = step * BATCH  # what effnet.train resumes with: the host's raw examples before the step
    resumed = train_batches(data_cfg(data_dir), 10 - step, start_epoch=consumed // NUM_TRAIN,
                            num_epochs=2 - consumed // NUM_TRAIN, skip_examples=consumed % NUM_TRAIN)
    assert len(resumed) == len(whole[step:])
    for a, b in zip(whole[step:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])


def test_fail_stops_naming_the_record(data_dir):
  ids = record_ids(data_dir, 'train')
  names = '|'.join(ids[k] for k in BAD_TRAIN)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'data.bad_examples=fail: undecodable example in train split train, '
                           f'record ({names}) \\(epoch 0, example \\d+ of this host\\)'):
    train_batches(data_cfg(data_dir, bad_examples='fail'), 5)


def test_eval_counts_every_decodable_example_once(data_dir):
  ids = record_ids(data_dir, 'test')
  for process_count in (1, 2):
    seen = collections.Counter()
    for host in range(process_count):
      bad_examples.reset()
      ev = pipeline.create_eval_dataset(data_cfg(data_dir), global_batch_size=BATCH * process_count,
                                        process_index=host, process_count=process_count)
      batches = list(ev.dataset.as_numpy_iterator())
      assert len(batches) == ev.num_batches == -(-NUM_TEST // process_count // BATCH)
      assert (ev.num_examples, ev.host_num_examples) == (NUM_TEST, NUM_TEST // process_count)
      for b in batches:
        assert b['image'].shape == (BATCH, 16, 16, 3)
        seen.update(keys_of(b['image'][b['mask'] == 1]).tolist())
      host_keys = range(host * NUM_TEST // process_count, (host + 1) * NUM_TEST // process_count)
      bad = sorted(ids[k] for k in BAD_TEST if k in host_keys)
      assert bad_examples.eval_summary() == (
          'data.bad_examples=skip: undecodable eval examples dropped on this host and counted in no metric '
          f"(eval num_examples excludes them): split 'test': {len(bad)} ({', '.join(bad)})")
    assert seen == collections.Counter(k for k in range(NUM_TEST) if k not in BAD_TEST)


def test_bad_examples_field_is_validated():
  c = config_lib.base_config()
  assert c.data.bad_examples == 'skip'
  c.data.bad_examples = 'drop'
  with pytest.raises(ValueError, match=r"data.bad_examples='drop'; allowed: \('skip', 'fail'\)"):
    config_lib.validate(c)


def test_checkpoint_record_counts_only_positions_before_the_step():
  """The record and the summary at a step count the examples skipped before it, not those the pipeline read ahead;
  a position read twice (the next stage's pipeline re-reading what the last one read ahead) counts once; `resume`
  goes on from a record. Epochs of 40 examples, 8 a step."""
  bad_examples.reset()
  bad_examples.resume(None, 'train', 40, lambda step: 8 * step)
  bad_examples.report('skip', 'train', 'train', [0, 0, 1], [3, 30, 2], [b'f__3', b'f__30', b'f__3'])
  bad_examples.report('skip', 'train', 'train', [0], [30], [b'f__30'])  # read again after a stage switch
  record = bad_examples.checkpoint_record(3)  # positions 3 | 30 and 40 + 2 were read ahead
  assert record == {'hosts': [{'split': 'train', 'skipped': 1, 'records': ['f__3']}]}
  assert bad_examples.counts() == {('train', 'train'): 3}  # as read
  assert bad_examples.summary('train', 3) == ("data.bad_examples=skip: 1 undecodable train examples skipped so far "
                                              "on this host (split 'train': 1 (1 distinct records))")
  bad_examples.resume(record, 'train', 40, lambda step: 8 * step)  # resumed at step 3: meets 30 and 40 + 2 again
  bad_examples.report('skip', 'train', 'train', [0, 1], [30, 2], [b'f__30', b'f__3'])
  assert bad_examples.checkpoint_record(5) == {'hosts': [{'split': 'train', 'skipped': 2,
                                                         'records': ['f__3', 'f__30']}]}
  assert bad_examples.summary('train', 6) == (
      "data.bad_examples=skip: 3 undecodable train examples skipped since the run began, 1 of them before its "
      "last resume on this host (split 'train': 3 (2 distinct records))")
  bad_examples.reset()


def _stored_record(workdir, step):
  with open(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')) as f:
    return json.load(f)['bad_examples']['hosts'][0]


def test_resumed_run_counts_on_from_its_checkpoint(data_dir, two_epochs, tmp_path, jax_cache_dir, monkeypatch,
                                                   restore_jax_config):
  """A run that skipped a bad example before its checkpoint, then resumed: the count goes on from the checkpoint,
  and the resumed run ends with what its two epochs hold (2 bad examples × 2), no more (read ahead) and no less
  (the restart). The first run is stopped as a preemption would stop it: same config, so the second compiles
  nothing new, and no final eval."""
  from effnet import checkpoint, train
  config = h.tiny_config({'data.name': 'bad_examples_set/damaged', 'data.data_dir': data_dir,
                          'data.train_split': 'train', 'data.eval_split': 'test', 'data.shuffle_buffer': 64,
                          'data.shuffle_files': False, 'train.compile_cache_dir': jax_cache_dir,
                          'train.total_steps': 2 * NUM_TRAIN // 16, 'train.batch_size': 16})
  # The reference: where the bad keys sit in the stream (the undamaged twin read with the same seed and shuffle).
  assert config.train.seed == 0
  order = [k for b in two_epochs['clean'] for k in keys_of(b['image']).tolist()]
  bad_positions = [p for p, k in enumerate(order) if k in BAD_TRAIN]
  assert len(order) == 2 * NUM_TRAIN and len(bad_positions) == 4
  cut = bad_positions[0] // 16 + 1  # the first step after the first bad example
  before = sum(p < cut * 16 for p in bad_positions)
  ids = record_ids(data_dir, 'train')

  with monkeypatch.context() as m:
    m.setattr(checkpoint, 'should_stop', lambda flag, ckpt, step, sync: step >= cut)
    assert train.train_and_evaluate(config, str(tmp_path))['stopped'] == 'preempted'
  assert _stored_record(tmp_path, cut) == {'split': 'train', 'skipped': before,
                                           'records': sorted({ids[order[p]] for p in bad_positions[:before]})}
  _, messages = logged(train.train_and_evaluate, config, str(tmp_path))
  assert _stored_record(tmp_path, config.train.total_steps) == {'split': 'train', 'skipped': 4,
                                                                'records': sorted(ids[k] for k in BAD_TRAIN)}
  at_restore = (f'data.bad_examples: data.bad_examples=skip: {before} undecodable train examples skipped since the '
                f'run began, {before} of them before its last resume on this host')
  assert any(m.startswith(at_restore) for m in messages), messages
  at_end = (f'step {config.train.total_steps}: data.bad_examples=skip: 4 undecodable train examples skipped since '
            f"the run began, {before} of them before its last resume on this host (split 'train': 4 (2 distinct "
            "records))")  # the examples trained on: the pipeline has read further
  assert at_end in messages, [m for m in messages if 'undecodable train' in m]
