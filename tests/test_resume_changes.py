"""Resuming with another config than the checkpoint was written with.

Every step stores the config of the run that wrote it. A changed model fails at once, naming each changed model
field and the first variable that no longer fits (a checkpoint from before configs were stored keeps the
variable-level message). A changed global batch or device count trains on, and the log says what that changes: the
LR (the official lr_base × global batch / 256), the step → epoch mapping, the total steps and the progressive stage
boundaries. The expected numbers below are the official formulas worked by hand, not the trainer's code.
"""
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _train_helpers as h
from conftest import TINY_BLOCKS
from effnet import checkpoint, schedule, train


def _json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _tree(step: int) -> dict:
  return {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * step, 'step': jnp.int32(step)}


def _abstract(tree) -> dict:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_every_step_stores_the_config_it_was_written_with(tmp_path):
  config = _json(h.tiny_config())
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=True, config=config)
  for step in (1, 2):
    ckpt.save(step, _tree(step), meta={'step': step})
  ckpt.close()
  for step in (1, 2):
    with open(tmp_path / str(step) / 'config' / 'metadata') as f:
      stored = json.load(f)
    assert stored == config and stored['model']['blocks'] == list(TINY_BLOCKS)
    with open(tmp_path / str(step) / '_CHECKPOINT_METADATA') as f:  # an item of the step, committed with it
      assert set(json.load(f)['item_handlers']) == {'state', 'meta', 'config'}
  reopened = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=True, config=config)
  state, meta = reopened.restore(_abstract(_tree(0)))
  assert int(state['step']) == 2 and meta == {'step': 2} and reopened.restored_config == config
  reopened.close()


def _written_by(directory, config) -> None:
  """A checkpoint at step 1 of `config`'s tiny model (zero arrays of its train state), as a run of it leaves."""
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), h.abstract_train_state(config))
  ckpt = checkpoint.Checkpointer(directory, keep=5, every_steps=1, use_async=False, config=_json(config))
  ckpt.save(1, zeros)
  ckpt.close()


def test_a_changed_model_fails_naming_the_changed_fields_and_the_first_variable(tmp_path):
  _written_by(str(tmp_path), h.tiny_config())
  changed = h.tiny_config({'model.head_filters': 96, 'model.dropout_rate': 0.3})
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=False, config=_json(changed))
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    ckpt.restore(h.abstract_train_state(changed))
  message = str(info.value)
  assert 'changed since it was written: model.dropout_rate: 0.1 → 0.3; model.head_filters: 64 → 96;' in message
  # The head's width is head_filters: its BN statistics are the first variable (in path order) that differs.
  assert 'first mismatched variable: batch_stats/head_bn/mean has shape (64,) in the checkpoint but (96,)' in message
  ckpt.close()


def test_training_with_a_changed_model_fails_before_any_data_loads(tmp_path, monkeypatch):
  _written_by(str(tmp_path / 'checkpoints'), h.tiny_config())
  from effnet.data import pipeline

  def no_data(*args, **kwargs):
    raise AssertionError('the dataset was touched before the model check')

  monkeypatch.setattr(pipeline, 'get_builder', no_data)
  changed = h.tiny_config({'model.head_filters': 96})
  with pytest.raises(checkpoint.CheckpointMismatchError, match='model.head_filters: 64 → 96; first mismatched '
                     'variable: batch_stats/head_bn/mean has shape'):
    train.train_and_evaluate(changed, str(tmp_path))


def test_a_checkpoint_without_a_stored_config_keeps_the_variable_message(tmp_path):
  old = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=False)  # no config: as before
  old.save(1, _tree(1))
  old.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=False,
                                 config={'model': {'width': 2}})
  wider = {'w': jax.ShapeDtypeStruct((4, 3), jnp.float32), 'step': jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    ckpt.restore(wider)
  assert 'first mismatched variable: w has shape (2, 3) in the checkpoint but (4, 3)' in str(info.value)
  assert 'changed since' not in str(info.value)
  assert int(ckpt.restore(_abstract(_tree(0)))[0]['step']) == 1 and ckpt.restored_config is None
  ckpt.close()


def test_a_model_change_that_keeps_every_variable_warns_and_restores(tmp_path, caplog):
  written = {'model': {'dropout_rate': 0.2, 'width': 1.0}, 'train': {'batch_size': 16}}
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=False, config=written)
  ckpt.save(1, _tree(1))
  ckpt.close()
  now = {'model': {'dropout_rate': 0.3, 'width': 1.0}, 'train': {'batch_size': 32}}
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, every_steps=1, use_async=False, config=now)
  with caplog.at_level(logging.WARNING):
    state, _ = ckpt.restore(_abstract(_tree(0)))
  assert int(state['step']) == 1
  warned = [r.getMessage() for r in caplog.records if 'other model settings' in r.getMessage()]
  assert len(warned) == 1 and warned[0].endswith(': model.dropout_rate: 0.2 → 0.3')  # train.* is the trainer's
  ckpt.close()


N_TRAIN, STEP = 1000, 400
OFFICIAL = {'optim.schedule': 'exponential', 'optim.lr_base': 0.016, 'optim.warmup_epochs': 5.0,
            'optim.decay_epochs': 2.4, 'optim.decay_factor': 0.97, 'train.total_steps': None,
            'train.num_epochs': 30.0}


def _official_lr(batch: int, step: int) -> float:
  """tensorflow/tpu build_learning_rate: 0.016·batch/256, ×0.97 every 2.4 epochs (staircase from step 0), replaced
  by a linear ramp for the first int(5 epochs) steps."""
  base, steps_per_epoch = 0.016 * batch / 256, N_TRAIN / batch
  warmup = int(5 * steps_per_epoch)
  return base * step / warmup if step < warmup else base * 0.97 ** math.floor(step / (2.4 * steps_per_epoch))


def test_another_global_batch_changes_the_lr_and_the_epoch_mapping_by_the_official_rules():
  old = schedule.schedule_at(h.tiny_config(OFFICIAL), N_TRAIN, 1, 1, STEP)
  new = schedule.schedule_at(h.tiny_config({**OFFICIAL, 'train.batch_size': 32}), N_TRAIN, 1, 1, STEP)
  assert (old.base_lr, new.base_lr) == (pytest.approx(0.001), pytest.approx(0.002))
  # batch 16: 62.5 steps per epoch, warmup 312 steps, decay every 150: step 400 is past 2 decays;
  # batch 32: 31.25 steps per epoch, warmup 156, decay every 75: past 5.
  assert old.lr == pytest.approx(_official_lr(16, STEP), rel=1e-6) == pytest.approx(0.001 * 0.97 ** 2, rel=1e-6)
  assert new.lr == pytest.approx(_official_lr(32, STEP), rel=1e-6) == pytest.approx(0.002 * 0.97 ** 5, rel=1e-6)
  assert (old.steps_per_epoch, new.steps_per_epoch) == (62.5, 31.25)
  assert (old.total_steps, new.total_steps) == (30 * 1000 // 16, 30 * 1000 // 32) == (1875, 937)
  lines = schedule.resume_changes(old, new, STEP)
  assert len(lines) == 2, lines
  assert lines[0] == (f'learning rate: base LR (optim.lr_base × global batch / 256, batch 16 → 32) 0.001 → 0.002; '
                      f'LR at step 400 {old.lr:.6g} → {new.lr:.6g}')
  assert lines[1] == ('step → epoch mapping: steps per epoch 62.5 → 31.25; step 400 is epoch 6.4000 under the old '
                      'mapping and 12.8000 under the new (the input continues where the new mapping puts it: 6400 '
                      'examples of the data stream skipped); total steps 1875 → 937')


def test_another_device_count_keeps_the_lr_and_mapping_and_says_so():
  config = h.tiny_config(OFFICIAL)
  lines = schedule.resume_changes(schedule.schedule_at(config, N_TRAIN, 1, 1, STEP),
                                schedule.schedule_at(config, N_TRAIN, 8, 2, STEP), STEP)
  assert lines == ['devices 1 → 8 (processes 1 → 2): batch per device 16 → 2; the global batch stays 16, so the LR '
                   'and the step → epoch mapping stay; each host now reads another share of the data, so the '
                   'example order differs from here on']


def test_a_longer_run_at_the_same_batch_only_moves_the_total_steps():
  old = schedule.schedule_at(h.tiny_config(OFFICIAL), N_TRAIN, 1, 1, STEP)
  longer = schedule.schedule_at(h.tiny_config({**OFFICIAL, 'train.num_epochs': 40.0}), N_TRAIN, 1, 1, STEP)
  assert schedule.resume_changes(old, longer, STEP) == [  # 40 × 1000 // 16 steps; the exponential LR has no end
      'total steps 1875 → 2500 (the step → epoch mapping stays: 62.5 steps per epoch)']


def test_progressive_stage_boundaries_that_move_are_named():
  prog = {**OFFICIAL, 'progressive.enabled': True, 'progressive.num_stages': 4}
  step = 500
  old = schedule.schedule_at(h.tiny_config(prog), N_TRAIN, 1, 1, step)
  new = schedule.schedule_at(h.tiny_config({**prog, 'train.batch_size': 32}), N_TRAIN, 1, 1, step)
  # Stage i ends at int((i + 1) / 4 · total steps): total 1875 → 937.
  ends = lambda total: [int((i + 1) / 4 * total) for i in range(4)]  # noqa: E731
  assert ends(1875) == [468, 937, 1406, 1875] and ends(937) == [234, 468, 702, 937]
  assert schedule.resume_changes(old, new, step)[-1] == (
      'progressive stage boundaries move: stages end at steps [468, 937, 1406, 1875] → [234, 468, 702, 937]; '
      'step 500 is in stage 1 under the old schedule and 2 under the new')


def test_training_resumes_with_another_global_batch_and_logs_what_it_changes(tmp_path, digits_dir, jax_cache_dir,
                                                                            caplog):
  """In this process: 4 steps at batch 16 (the programs other engine tests compile), then the same run resumed at
  batch 32. It stays at 4 steps so that it compiles no new train step (the suite's time budget): it restores, logs,
  evaluates and completes; the numbers of a resume further into a run are checked above."""
  overrides = {'data.data_dir': digits_dir, 'data.train_split': 'train[:56]', 'train.total_steps': 4,
               'train.compile_cache_dir': jax_cache_dir}
  train.train_and_evaluate(h.tiny_config(overrides), str(tmp_path))
  with open(os.path.join(tmp_path, 'checkpoints', '4', 'meta', 'metadata')) as f:
    assert json.load(f)['run'] == {'device_count': 1, 'process_count': 1, 'num_train_examples': 56}
  with open(os.path.join(tmp_path, 'checkpoints', '4', 'config', 'metadata')) as f:
    assert json.load(f) == _json(h.tiny_config(overrides))
  with caplog.at_level(logging.WARNING):
    final = train.train_and_evaluate(h.tiny_config({**overrides, 'train.batch_size': 32}), str(tmp_path))
  assert final['steps'] == 4 and final['stopped'] == 'completed'
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith('resuming at step 4: ')]
  # tiny_config's lr_base 0.064 (constant after warmup) × batch / 256. 56 examples: 3.5 → 1.75 steps per epoch; the 4
  # steps are 64 examples (1.1429 epochs) at batch 16 and 128 (2.2857 epochs) at batch 32.
  assert logged == [
      'resuming at step 4: config changed since it was written: train.batch_size: 16 → 32',
      'resuming at step 4: learning rate: base LR (optim.lr_base × global batch / 256, batch 16 → 32) 0.004 → '
      '0.008; LR at step 4 0.004 → 0.008',
      'resuming at step 4: step → epoch mapping: steps per epoch 3.5 → 1.75; step 4 is epoch 1.1429 under the old '
      'mapping and 2.2857 under the new (the input continues where the new mapping puts it: 64 examples of the data '
      'stream skipped); total steps 4 → 4']
