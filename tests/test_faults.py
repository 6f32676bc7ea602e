"""Faults a run meets on real machines, end to end: a learning rate that makes the training diverge, and a disk
that fills up during a checkpoint save. (SIGKILL at random points and SIGTERM are in test_resume.py, a damaged
checkpoint in test_checkpoint_damage.py, two runs on one workdir in test_workdir_lock.py.)

What must hold: a diverging run stops with an error naming the step and no checkpoint ever holds an inf or NaN (the
saves that follow the bad step included: the non-finite check runs at log steps, saves at every step); a full disk
fails the run at once with an error naming the step, the directory and ENOSPC, and the previous checkpoint
restores exactly as it was saved.
"""
import errno
import faulthandler
import json
import math
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
import orbax.checkpoint as ocp
import pytest

import _train_helpers as h
from effnet import checkpoint, optim, steps, train
from effnet import state as state_lib

HANG_S = 240  # a run that has not failed by then hangs: faulthandler prints every thread's stack and ends pytest


def _overrides(digits_dir, jax_cache_dir, **extra) -> dict:
  return {'data.data_dir': digits_dir, 'data.train_split': 'train[:56]', 'train.compile_cache_dir': jax_cache_dir,
          'train.async_checkpointing': True, 'train.checkpoint_every_steps': 1, **extra}


def _nonfinite_in_step(step_dir: str) -> list[str]:
  """Every non-finite number in one step folder, read with plain orbax (no target: every array of the state
  item as stored) and json (the other items)."""
  bad = []
  for item in sorted(os.listdir(step_dir)):
    path = os.path.join(step_dir, item)
    if item == 'state':
      tree = ocp.StandardCheckpointer().restore(path)
      bad += [f'{item}{jax.tree_util.keystr(p)}' for p, x in jax.tree_util.tree_leaves_with_path(tree)
              if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.isfinite(x).all()]
    elif os.path.isdir(path):
      with open(os.path.join(path, 'metadata')) as f:
        numbers = jax.tree.leaves(json.load(f))
      bad += [f'{item}: {v}' for v in numbers if isinstance(v, float) and not math.isfinite(v)]
  return bad


def test_huge_learning_rate_stops_naming_the_step_and_no_checkpoint_holds_a_nonfinite_value(
    tmp_path, digits_dir, jax_cache_dir, restore_jax_config):
  # lr = 1e20 × 16/256 × warm-up: the first updates throw the weights to ~1e18 and the loss overflows within a few
  # steps. Checks run at log steps (every 3rd), saves (async) at every step: the steps between the bad one and the
  # check are saved too, and must hold the state from before the bad update.
  config = h.tiny_config(_overrides(digits_dir, jax_cache_dir, **{
      'optim.lr_base': 1e20, 'train.total_steps': 6, 'train.log_every_steps': 3}))
  t0 = time.perf_counter()
  with pytest.raises(FloatingPointError, match=r'non-finite .* at step \d+ \(train\.nan_policy=stop\)') as e:
    train.train_and_evaluate(config, str(tmp_path))
  print(f'huge LR: failed after {time.perf_counter() - t0:.1f} s: {e.value}')
  bad_step = int(str(e.value).split(' at step ')[1].split()[0])
  saved = h.checkpoint_steps(str(tmp_path))
  assert 1 <= bad_step <= 3 and saved and max(saved) <= 3, (bad_step, saved)
  assert not os.path.exists(tmp_path / 'final_metrics.json')
  for step in saved:
    assert _nonfinite_in_step(str(tmp_path / 'checkpoints' / str(step))) == [], f'checkpoint step {step}'
  # The bad step's update was dropped: where it was saved, it holds the weights of the step before, bit for bit.
  if bad_step in saved and bad_step - 1 in saved:
    before, at_bad = (h.restore(str(tmp_path), config, s) for s in (bad_step - 1, bad_step))
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(at_bad.params)):
      np.testing.assert_array_equal(a, b)


class _Head(nn.Module):
  """The smallest net the train step takes: a BN and a classifier over 8 pixels (a real net's head, named alike so
  the weight-decay rule treats them alike); compiles in a second, where the tiny EfficientNet takes ten."""

  @nn.compact
  def __call__(self, images, train: bool, dropout_rate=0.0):
    del dropout_rate
    x = images.reshape(images.shape[0], -1)[:, :8].astype(jnp.float32)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='head_bn')(x)
    return nn.Dense(10, name='head_dense')(x)


def test_train_step_drops_an_update_whose_optimizer_slot_overflows():
  """A gradient above ~1.8e19 squares to inf in RMSProp's mean square while its update, g/sqrt(inf), is 0 and the
  loss is finite: only a check of the whole new state catches it. Built by hand: the BN shifts every feature to
  1e30 (a BN bias: not weight-decayed), the classifier kernel is 0 (the logits, the loss and every other gradient
  stay finite and small), so the classifier kernel's gradient is ~1e29."""
  config = h.tiny_config()
  module = _Head()
  tx, schedule = optim.build_optimizer(config.optim, 16, 10.0, 100)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), 'label': rng.integers(0, 10, 16)}
  variables = module.init(jax.random.key(0), jnp.zeros((16, 16, 16, 3)), train=False)
  params = {'head_bn': {'scale': jnp.ones(8), 'bias': jnp.full(8, 1e30)},
            'head_dense': {'kernel': jnp.zeros((8, 10)), 'bias': variables['params']['head_dense']['bias']}}
  state = state_lib.TrainState(step=jnp.int32(0), params=params, batch_stats=variables['batch_stats'],
                               opt_state=tx.init(params), ema_params=params, ema_batch_stats=variables['batch_stats'],
                               rng=jax.random.key_data(jax.random.key(1)))
  step = jax.jit(steps.make_train_step(module, tx, schedule, steps.StepConfig.from_config(config, jnp.float32, False)))
  new, metrics = step(state, batch, steps.hyper_defaults())
  computed = metrics.compute()
  assert np.isfinite(computed['loss'])  # the loss alone would not have caught it
  assert int(computed['first_nonfinite_step']) == 0 and float(computed['nonfinite_steps']) == 1.0
  assert int(new.step) == 1
  for name in ('params', 'opt_state', 'batch_stats', 'ema_params', 'ema_batch_stats'):
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(new, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)  # the whole update dropped


def test_jitted_metric_merge_gives_clus_merge():
  """The loop merges each step's metrics with `steps.merge_train_metrics` (one compiled call): over steps with a
  non-finite one in the middle it must give what clu's own merge gives, the first bad step (a minimum) included."""
  def step_metrics(step, loss, bad):
    return steps.TrainMetrics.single_from_model_output(
        loss=jnp.float32(loss), ce_loss=jnp.float32(loss - 0.1), l2_loss=jnp.float32(7.0 + step),
        top1=jnp.float32(0.25 * step), top5=jnp.float32(1.0), learning_rate=jnp.float32(1e-3 / (step + 1)),
        nonfinite=jnp.float32(bad), bad_step=jnp.int32(step if bad else steps.NO_STEP))
  per_step = [step_metrics(0, 2.5, 0), step_metrics(1, 2.0, 0), step_metrics(2, 1.5, 1), step_metrics(3, 1.0, 1)]
  jitted, eager = per_step[0], per_step[0]
  for m in per_step[1:]:
    jitted, eager = steps.merge_train_metrics(jitted, m), eager.merge(m)
  got, want = jitted.compute(), eager.compute()
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, err_msg=k)
  assert int(got['first_nonfinite_step']) == 2 and float(got['nonfinite_steps']) == 0.5
  assert float(got['loss']) == pytest.approx(1.75) and float(got['learning_rate']) == pytest.approx(2.5e-4)


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KiB tmpfs mounted as tmp_path/checkpoints: the tiny model's first checkpoint (about 380 KiB on tmpfs)
  fits, the second does not. Skips where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
  mountpoint = tmp_path / 'checkpoints'
  mountpoint.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(mountpoint)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}')
  try:
    yield mountpoint
  finally:
    subprocess.run(['umount', str(mountpoint)], check=True)


def test_full_disk_during_a_save_fails_clearly_and_keeps_the_previous_checkpoint(
    tmp_path, small_disk, digits_dir, jax_cache_dir, monkeypatch, restore_jax_config):
  config = h.tiny_config(_overrides(digits_dir, jax_cache_dir, **{'train.total_steps': 6,
                                                                  'train.keep_checkpoints': 1}))
  handed = {}  # what the loop handed to the checkpointer, per step, as host arrays
  original_save = checkpoint.Checkpointer.save

  def save(self, step, state, meta=None, force=False):
    handed.setdefault(step, jax.tree.map(np.array, state))
    return original_save(self, step, state, meta=meta, force=force)
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save)

  faulthandler.dump_traceback_later(HANG_S, exit=True)
  t0 = time.perf_counter()
  try:
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
      train.train_and_evaluate(config, str(tmp_path))
  finally:
    faulthandler.cancel_dump_traceback_later()
  message = str(e.value)
  print(f'full disk: failed after {time.perf_counter() - t0:.1f} s: {message}')
  assert e.value.errno == errno.ENOSPC
  assert f'checkpoint step 2 could not be written to {small_disk}: the disk is full (ENOSPC' in message
  assert 'newest complete checkpoint, step 1, is untouched' in message
  assert max(handed) <= 3  # it failed at the save after the failed one, not at the end of the run
  # keep_checkpoints=1 did not delete step 1 for the failed step 2, and step 1 restores as it was saved.
  assert h.checkpoint_steps(str(tmp_path)) == [1]
  restored = h.restore(str(tmp_path), config, 1)
  saved_leaves, restored_leaves = jax.tree_util.tree_leaves_with_path(handed[1]), jax.tree.leaves(restored)
  assert len(saved_leaves) == len(restored_leaves)
  for (path, a), b in zip(saved_leaves, restored_leaves):
    np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('surfaces_at', ['next_step', 'wait', 'close'])
def test_a_late_async_save_failure_surfaces_naming_its_step(small_disk, surfaces_at):
  """The disk fills while the background thread writes step 4 and the loop has moved on: the failure raises at the
  next step (not only at the next saving step, 8), or at wait/close, naming step 4; nothing raises twice."""
  ckpt = checkpoint.Checkpointer(str(small_disk), keep=1, every_steps=4, use_async=True)
  noise = lambda step: {'w': jnp.asarray(np.random.default_rng(step).standard_normal(80_000, dtype=np.float32))}
  assert ckpt.save(1, noise(1))  # 320 KB (incompressible): fits the 600 KiB disk once, not twice
  ckpt.wait()
  assert ckpt.save(4, noise(4))
  with pytest.raises(checkpoint.CheckpointWriteError) as e:
    if surfaces_at == 'next_step':
      deadline = time.monotonic() + 30
      for step in range(5, 8):  # steps 5-7 save nothing; each polls the finished background save
        while time.monotonic() < deadline and not ckpt.save(step, noise(step)):
          time.sleep(0.05)  # the same step again: the write may still be running
    else:
      getattr(ckpt, surfaces_at)()
  assert e.value.errno == errno.ENOSPC
  assert f'checkpoint step 4 could not be written to {small_disk}: the disk is full' in str(e.value)
  assert 'step 1, is untouched' in str(e.value)
  ckpt.close()  # reported once: closing afterwards raises nothing
  assert h.checkpoint_steps(str(small_disk.parent)) == [1]
