"""Checkpoints that survive faults: a run SIGKILLed at random points (also in the middle of an async save) and
restarted after each ends bit-identical to an uninterrupted run; SIGTERM (preemption) finishes the step, saves and
exits cleanly; a checkpoint resumes on a different device count.

Bit-identity needs everything a step depends on to resume exactly: weights, BN statistics, optimizer slots, EMA,
the per-step RNG (fold_in(rng, step): dropout 0.1 and stochastic depth are on) and the data stream (shuffled; the
train split is cut to 56 examples = 3.5 batches per epoch, so the resume point is in the middle of an epoch after
an epoch boundary and the pipeline must skip exactly the examples already consumed).
"""
import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import _train_helpers as h

N = 8
KILLS = 3
ORBAX_TMP = '.orbax-checkpoint-tmp'  # suffix of orbax's temporary step folder (orbax-checkpoint 0.12.8)


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


def _kill_plan(seed: int) -> list[tuple[str, int, float]]:
  """KILLS points (mode, step, delay) at distinct steps 1..N-1, in order: 'save' kills as soon as orbax's
  temporary folder of a step >= `step` appears (mid async save), 'step' kills `delay` seconds after checkpoint
  `step` is complete (wherever the run then is: a train step, the input pipeline, the next save). At least one
  'save'."""
  rng = random.Random(seed)
  kill_steps = sorted(rng.sample(range(1, N), KILLS))
  forced = rng.randrange(KILLS)
  return [('save' if i == forced else rng.choice(('save', 'step')), s, round(rng.uniform(0.0, 0.3), 3))
          for i, s in enumerate(kill_steps)]


def _tmp_steps(names) -> dict[int, str]:
  """{step: folder} of orbax's temporary step folders (`<step>.orbax-checkpoint-tmp` in orbax-checkpoint 0.12.8)."""
  return {int(n.split('.')[0]): n for n in names if n.split('.')[0].isdigit() and n.endswith(ORBAX_TMP)}


def _run_and_kill(workdir, overrides, mode: str, step: int, delay: float) -> dict:
  """Starts the tiny run in `workdir`, SIGKILLs it at the point (mode, step, delay) and says where it died."""
  ckpt_dir, logs = os.path.join(workdir, 'checkpoints'), os.path.join(workdir, f'kill_{mode}_{step}.log')
  stale = max(_tmp_steps(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else [], default=0)  # left by a kill
  with open(logs, 'w') as log:
    proc = subprocess.Popen(h.child_command(workdir, overrides), env=h.child_env(1), cwd=h.REPO, stdout=log,
                            stderr=log, start_new_session=True)
  try:
    if mode == 'save':  # poll fast: a tiny save takes tens of milliseconds
      ready = lambda: {s: n for s, n in _tmp_steps(os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []).items()
                       if s >= step and s > stale}  # noqa: E731
      found = h.wait_for(ready, timeout=240, proc=proc, poll=0.001) and ready()
    else:
      found = h.wait_for(lambda: str(step) in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else False,
                         timeout=240, proc=proc)
      time.sleep(delay)
    assert found and proc.poll() is None, f'the run ended before kill point {(mode, step)}: see {logs}'
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
  finally:
    h.kill_group(proc)
  names = os.listdir(ckpt_dir)
  if mode == 'save':  # the kill landed mid-save when the temporary folder is still there and never became a step
    saving = min(found)
    return {'mode': 'save', 'step': saving, 'mid_save': found[saving] in names and str(saving) not in names}
  return {'mode': 'step', 'step': step, 'mid_save': False}


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path, digits_dir, jax_cache_dir, uninterrupted):
  """SIGKILL at KILLS seeded random points (at least one in the middle of an async save), a resume after each, then
  a run to the end: the final state equals the uninterrupted run's bit for bit. Replay a failure with
  EFFNET_KILL_SEED=<the printed seed>."""
  ref_dir, ref_final = uninterrupted
  seed = int(os.environ.get('EFFNET_KILL_SEED', random.SystemRandom().randrange(2 ** 31)))
  plan = _kill_plan(seed)
  print(f'EFFNET_KILL_SEED={seed} kill points (mode, step, delay s): {plan}')
  overrides = _overrides(digits_dir, jax_cache_dir, **{'train.checkpoint_every_steps': 1,
                                                       'train.async_checkpointing': True})
  kills = [_run_and_kill(str(tmp_path), overrides, *point) for point in plan]
  while not any(k['mid_save'] for k in kills) and len(kills) < KILLS + 3:  # a save finished before the kill landed
    kills.append(_run_and_kill(str(tmp_path), overrides, 'save', 1, 0.0))
  print(f'kills: {kills}')
  assert any(k['mid_save'] for k in kills), f'no kill landed mid-save: {kills} (seed {seed})'
  assert not os.path.exists(tmp_path / 'final_metrics.json')

  resumed = h.final_metrics(h.run_child(tmp_path, overrides))
  assert resumed['steps'] == N and resumed['stopped'] == 'completed', f'seed {seed}'
  config = h.tiny_config(overrides)
  ref, got = h.restore(ref_dir, config, N), h.restore(str(tmp_path), config, N)
  ref_leaves, got_leaves = _leaves(ref), _leaves(got)
  assert [p for p, _ in ref_leaves] == [p for p, _ in got_leaves]
  names = set()
  for (path, a), (_, b) in zip(ref_leaves, got_leaves):
    key = jax.tree_util.keystr(path)
    assert a.dtype == b.dtype and a.shape == b.shape, key
    assert np.array_equal(a, b), f'{key} differs (seed {seed}): max |d| = {np.abs(a - b).max()}'
    names.add(key.split('.')[1].split('[')[0] if '.' in key else '')
  assert {'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng', 'step'} <= names
  # Not vacuous: the steps after the uninterrupted run's step-4 checkpoint changed the weights, and the same eval
  # follows from the same weights.
  at4 = h.restore(ref_dir, config, 4)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(at4.params), jax.tree.leaves(ref.params)))
  assert resumed['eval_loss'] == ref_final['eval_loss'] and resumed['eval_top1'] == ref_final['eval_top1']
  # Every step's logged loss (the redone steps' from the last process that ran them) equals the uninterrupted run's.
  ref_loss, got_loss = h.scalars(ref_dir, 'train/loss'), h.scalars(str(tmp_path), 'train/loss')
  assert sorted(got_loss) == list(range(1, N + 1))
  for s in range(1, N + 1):
    assert got_loss[s] == ref_loss[s], (s, got_loss[s], ref_loss[s], f'seed {seed}')


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
