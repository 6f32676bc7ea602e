"""Data parallelism is an implementation detail: the same global batch gives the same training on 1 device, on 8
(fake CPU) devices, and on 2 processes × 2 devices started with `jax.distributed.initialize` (CPU collectives).

Each run is a fresh process (the device count is fixed when JAX starts). Per-step losses come from the TensorBoard
events host 0 writes; final weights from the last checkpoint.

Tolerance: float32 with rtol 1e-5 on losses and rtol/atol 1e-5 on weights. The programs are the same maths but
XLA splits the batch reductions (loss mean, gradient sum, batch-norm moments) differently over 1, 4 or 8 shards, so
the float32 sums are added in a different order (relative error ~1e-7 per reduction, measured ≤ 2e-7 on the losses
here); dropout and stochastic-depth masks are the same bits on any sharding (threefry is partitionable), so any
real mismatch (a wrong mask, a missing all-reduce, a batch assembled in the wrong order) shows up at ≥ 1e-3.
"""
import json
import os
import subprocess

import jax
import numpy as np
import pytest

import _train_helpers as h

STEPS = 4
LOSS_RTOL = 1e-5
PARAM_TOL = 1e-5


def _overrides(digits_dir, **extra):
  # Dropout 0.1 and stochastic depth (survival 0.8) are on in the tiny config, shuffling too.
  return {'data.data_dir': digits_dir, 'train.total_steps': STEPS, **extra}


def _assert_same_training(workdir_a, workdir_b, config):
  loss_a, loss_b = h.scalars(workdir_a, 'train/loss'), h.scalars(workdir_b, 'train/loss')
  assert sorted(loss_a) == sorted(loss_b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([loss_b[s] for s in sorted(loss_b)], [loss_a[s] for s in sorted(loss_a)],
                             rtol=LOSS_RTOL)
  assert len(set(round(v, 3) for v in loss_a.values())) > 1  # the steps did different things
  state_a, state_b = h.restore(workdir_a, config), h.restore(workdir_b, config)
  assert int(state_a.step) == int(state_b.step) == STEPS
  np.testing.assert_array_equal(state_a.rng, state_b.rng)
  for name in ('params', 'batch_stats', 'ema_params', 'ema_batch_stats', 'opt_state'):
    leaves_a = jax.tree_util.tree_leaves_with_path(getattr(state_a, name))
    leaves_b = jax.tree.leaves(getattr(state_b, name))
    for (path, a), b in zip(leaves_a, leaves_b):
      np.testing.assert_allclose(b, a, rtol=PARAM_TOL, atol=PARAM_TOL,
                                 err_msg=f'{name}{jax.tree_util.keystr(path)}')
  init = h.restore(workdir_a, config, 1)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state_a.params),
                                                         jax.tree.leaves(init.params)))
  assert moved > 10 * PARAM_TOL  # the comparison is not vacuous: the weights changed between steps 1 and 4


def test_one_device_vs_eight_devices_same_losses(tmp_path, digits_dir):
  overrides = _overrides(digits_dir)
  runs = {}
  for n in (1, 8):
    workdir = tmp_path / f'dev{n}'
    runs[n] = h.final_metrics(h.run_child(workdir, overrides, num_devices=n, timeout=300))
    assert runs[n]['device_count'] == n and runs[n]['process_count'] == 1
    assert runs[n]['eval_num_examples'] == h.DIGITS_TEST_SIZE
  _assert_same_training(str(tmp_path / 'dev1'), str(tmp_path / 'dev8'), h.tiny_config(overrides))
  np.testing.assert_allclose(runs[8]['eval_loss'], runs[1]['eval_loss'], rtol=LOSS_RTOL)
  assert runs[8]['eval_top1'] == runs[1]['eval_top1']


@pytest.mark.multiprocess
def test_two_processes_two_devices_each_agree_with_one_process(tmp_path, digits_dir):
  """2 processes × 2 CPU devices (jax.distributed, gloo) vs 1 process × 4 devices fed the same global batches.

  Every process reads its own slice of the train split (tfds.split_for_jax_process) with its own shuffle seed, so
  the single-process reference is given the concatenation of the two per-process pipelines, in process order,
  which is the global batch that jax.make_array_from_process_local_data assembles.
  """
  overrides = _overrides(digits_dir)
  workdir = tmp_path / 'two_procs'
  port = _free_port()
  procs = []
  try:
    for i in range(2):
      dist = {'distributed.initialize': 'yes', 'distributed.coordinator_address': f'127.0.0.1:{port}',
              'distributed.num_processes': 2, 'distributed.process_id': i, 'distributed.initialization_timeout': 120}
      procs.append(subprocess.Popen(h.child_command(workdir, {**overrides, **dist}), env=h.child_env(2),
                                    cwd=h.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True))
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      h.kill_group(p)
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f'exit {p.returncode}\n{out[-3000:]}\n{err[-6000:]}'
  finals = [h.final_metrics(subprocess.CompletedProcess([], 0, out, err)) for out, err in outs]
  for f in finals:
    assert f['process_count'] == 2 and f['device_count'] == 4 and f['steps'] == STEPS
    assert f['eval_num_examples'] == h.DIGITS_TEST_SIZE  # every test example exactly once over both hosts
  assert finals[0]['eval_loss'] == finals[1]['eval_loss']  # the hosts agree on the (global) metrics
  assert finals[0]['train_loss'] == finals[1]['train_loss']
  with open(workdir / 'final_metrics.json') as f:
    assert json.load(f)['eval_num_examples'] == h.DIGITS_TEST_SIZE

  reference = tmp_path / 'one_proc'
  ref = h.final_metrics(h.run_child(reference, overrides, '--emulate_hosts=2', num_devices=4, timeout=300))
  assert ref['process_count'] == 1 and ref['device_count'] == 4
  _assert_same_training(str(reference), str(workdir), h.tiny_config(overrides))
  np.testing.assert_allclose(finals[0]['eval_loss'], ref['eval_loss'], rtol=LOSS_RTOL)
  assert finals[0]['eval_top1'] == ref['eval_top1']


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
