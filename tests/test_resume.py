"""Checkpoints that survive faults: a run SIGKILLed mid-way and restarted ends bit-identical to an uninterrupted run;
SIGTERM (preemption) finishes the step, saves and exits cleanly; a checkpoint resumes on a different device count.

Bit-identity needs everything a step depends on to resume exactly: weights, BN statistics, optimizer slots, EMA,
the per-step RNG (fold_in(rng, step): dropout 0.1 and stochastic depth are on) and the data stream (shuffled; the
train split is cut to 56 examples = 3.5 batches per epoch, so the resume point is in the middle of an epoch after
an epoch boundary and the pipeline must skip exactly the examples already consumed).
"""
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import _train_helpers as h

N = 8
KILL_AFTER = 5  # checkpoints every 2 steps: the last one before the kill is step 4, so step 5 is redone


def _overrides(digits_dir, jax_cache_dir, **extra):
  return {'data.data_dir': digits_dir, 'data.train_split': 'train[:56]', 'train.total_steps': N,
          'train.checkpoint_every_steps': 2, 'train.compile_cache_dir': jax_cache_dir, **extra}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, digits_dir, jax_cache_dir):
  """The reference: N steps in one go on one device."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  final = h.final_metrics(h.run_child(workdir, _overrides(digits_dir, jax_cache_dir)))
  assert final['steps'] == N and final['stopped'] == 'completed'
  return workdir, final


def _leaves(state):
  return jax.tree_util.tree_leaves_with_path(state)


def test_kill_and_resume_is_bit_identical(tmp_path, digits_dir, jax_cache_dir, uninterrupted):
  ref_dir, ref_final = uninterrupted
  overrides = _overrides(digits_dir, jax_cache_dir)
  killed = h.run_child(tmp_path, overrides, f'--kill_after_step={KILL_AFTER}', check=False)
  assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-4000:])
  # Saves every 2 steps (orbax also saves the first step it is handed, step 1); step 5 was never saved.
  assert h.checkpoint_steps(str(tmp_path))[-1] == 4 and {2, 4} <= set(h.checkpoint_steps(str(tmp_path)))
  assert not os.path.exists(tmp_path / 'final_metrics.json')

  resumed = h.final_metrics(h.run_child(tmp_path, overrides))
  assert resumed['steps'] == N and resumed['stopped'] == 'completed'

  config = h.tiny_config(overrides)
  ref, got = h.restore(ref_dir, config, N), h.restore(str(tmp_path), config, N)
  ref_leaves, got_leaves = _leaves(ref), _leaves(got)
  assert [p for p, _ in ref_leaves] == [p for p, _ in got_leaves]
  names = set()
  for (path, a), (_, b) in zip(ref_leaves, got_leaves):
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    assert np.array_equal(a, b), f'{jax.tree_util.keystr(path)} differs: max |d| = {np.abs(a - b).max()}'
    names.add(jax.tree_util.keystr(path).split('.')[1].split('[')[0] if '.' in jax.tree_util.keystr(path) else '')
  assert {'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng', 'step'} <= names
  # Not vacuous: the redone steps changed the weights, and the same eval follows from the same weights.
  at4 = h.restore(ref_dir, config, 4)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(at4.params), jax.tree.leaves(ref.params)))
  assert resumed['eval_loss'] == ref_final['eval_loss'] and resumed['eval_top1'] == ref_final['eval_top1']
  # The resumed run logged the losses of the redone steps 5..8 exactly as the uninterrupted run did.
  ref_loss, got_loss = h.scalars(ref_dir, 'train/loss'), h.scalars(str(tmp_path), 'train/loss')
  for s in range(KILL_AFTER, N + 1):
    assert got_loss[s] == ref_loss[s], (s, got_loss[s], ref_loss[s])


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, digits_dir, jax_cache_dir):
  total = 150
  overrides = _overrides(digits_dir, jax_cache_dir, **{'train.total_steps': total, 'train.checkpoint_every_steps': 1,
                                                 'train.keep_checkpoints': 3})
  proc = subprocess.Popen(h.child_command(tmp_path, overrides), env=h.child_env(1), cwd=h.REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert h.wait_for(lambda: h.checkpoint_steps(str(tmp_path)), timeout=240, proc=proc), proc.communicate()[1][-4000:]
    t_signal = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    exit_s = time.monotonic() - t_signal
  finally:
    h.kill_group(proc)
  assert proc.returncode == 0, (proc.returncode, err[-4000:])
  assert exit_s < 60
  final = h.final_metrics(subprocess.CompletedProcess([], 0, out, err))
  assert final['stopped'] == 'preempted'
  stopped_at = int(final['steps'])
  assert 1 <= stopped_at < total, 'SIGTERM arrived after the run had finished: make the run longer'
  assert h.checkpoint_steps(str(tmp_path))[-1] == stopped_at  # saved at the step it stopped
  assert not os.path.exists(tmp_path / 'final_metrics.json')
  state = h.restore(str(tmp_path), h.tiny_config(overrides))
  assert int(state.step) == stopped_at

  # The rest of the run needs no checkpoint per step (the state it resumed from is what is under test).
  resumed = h.final_metrics(h.run_child(tmp_path, {**overrides, 'train.checkpoint_every_steps': 1000}))
  assert resumed['stopped'] == 'completed' and resumed['steps'] == total
  assert os.path.exists(tmp_path / 'final_metrics.json')
  assert resumed['eval_num_examples'] == h.DIGITS_TEST_SIZE


def test_resume_on_a_different_device_count(tmp_path, digits_dir, jax_cache_dir, uninterrupted):
  """Written on 1 device, resumed on 4: the replicated state restores into the 4-device mesh and the run ends
  where the uninterrupted 1-device run ends (float tolerance: the batch reductions are split over 4 shards)."""
  ref_dir, _ = uninterrupted
  overrides = _overrides(digits_dir, jax_cache_dir)
  killed = h.run_child(tmp_path, overrides, '--kill_after_step=3', check=False, num_devices=1)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
  assert h.checkpoint_steps(str(tmp_path))[-1] == 2
  resumed = h.final_metrics(h.run_child(tmp_path, overrides, num_devices=4))
  assert resumed['device_count'] == 4 and resumed['steps'] == N and resumed['stopped'] == 'completed'
  assert resumed['eval_num_examples'] == h.DIGITS_TEST_SIZE
  config = h.tiny_config(overrides)
  ref, got = h.restore(ref_dir, config, N), h.restore(str(tmp_path), config, N)
  for (path, a), b in zip(_leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
