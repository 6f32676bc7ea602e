"""The training entry point end to end: a real config shrunk with `runlocal`, config errors raised before anything
compiles, and the NaN policy (a non-finite step never reaches the state or a checkpoint).

References not computed by the code under test: the digits test split has 359 examples (20% of sklearn's 1,797
digits, stratified: counted by tests/test_pipeline.py against sklearn); the allowed enum values are the ones each
module owns (effnet.data, effnet.optim, effnet.progressive, effnet.models).
"""
import json
import math
import os

import jax
import numpy as np
import pytest

import _train_helpers as h
import effnet
from effnet import train


# ---------------------------------------------------------------------------------------------------------------
# A real config, shrunk with runlocal: one train step and one (full) eval.
# ---------------------------------------------------------------------------------------------------------------
def test_runlocal_real_config_one_train_and_eval_step(tmp_path, digits_dir, jax_cache_dir, restore_jax_config):
  config = effnet.load_config(os.path.join(h.REPO, 'configs/efficientnetv2.py:s,runlocal'))
  assert config.data.name == 'digits' and config.model.family == 'v2'
  config.data.data_dir = digits_dir
  config.train.total_steps = 1
  config.train.compile_cache_dir = jax_cache_dir
  final = train.train_and_evaluate(config, str(tmp_path))

  with open(tmp_path / 'final_metrics.json') as f:
    written = json.load(f)
  assert written['stopped'] == 'completed'
  assert written['steps'] == 1 and written['total_steps'] == 1
  assert written['eval_num_examples'] == h.DIGITS_TEST_SIZE  # every test example exactly once (padded + masked)
  for k in ('train_loss', 'eval_loss'):
    assert math.isfinite(written[k]), (k, written[k])
  # An untrained 10-class net: cross entropy near ln(10) = 2.303 (label smoothing moves the train loss a bit).
  assert 1.0 < written['eval_loss'] < 5.0
  assert 0.0 <= written['eval_top1'] <= written['eval_top5'] <= 1.0
  assert final['eval_num_examples'] == h.DIGITS_TEST_SIZE and final['stopped'] == 'completed'

  with open(tmp_path / 'stages.json') as f:
    stages = json.load(f)['stages']
  assert len(stages) == 1  # one step: only the last progressive stage (the others have no steps) ran
  assert stages[0]['image_size'] == config.progressive.size_max == 32
  assert stages[0]['batch_size'] == 16 and stages[0]['compile_s'] >= 0.0
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path))
  assert h.checkpoint_steps(str(tmp_path)) == [1]


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the field, before anything compiles.
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_dataset_fails_before_compiling(tmp_path, digits_dir, no_compile, restore_jax_config):
  config = h.tiny_config({'data.name': 'imagenet2013', 'data.data_dir': digits_dir})
  with pytest.raises(ValueError, match=r"data\.name='imagenet2013'") as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert 'digits' in str(e.value) and 'imagenet2012' in str(e.value)  # says what would work


def test_bad_enum_fails_before_compiling(tmp_path, digits_dir, no_compile, restore_jax_config):
  config = h.tiny_config({'optim.schedule': 'linear', 'data.data_dir': digits_dir})
  with pytest.raises(ValueError, match=r"optim\.schedule='linear'") as e:
    train.train_and_evaluate(config, str(tmp_path))
  for allowed in ('exponential', 'cosine', 'constant'):
    assert allowed in str(e.value)
  config = h.tiny_config({'train.nan_policy': 'ignore', 'data.data_dir': digits_dir})
  with pytest.raises(ValueError, match=r"train\.nan_policy='ignore'.*stop.*skip"):
    train.train_and_evaluate(config, str(tmp_path))


def test_config_field_typo_fails():
  config = h.tiny_config()
  with pytest.raises(AttributeError, match='lrr'):
    config.optim.lrr = 1
  with pytest.raises(ValueError, match='lrr'):
    effnet.apply_override(config, 'optim.lrr=1')
  assert 'lrr' not in config.optim


def test_config_field_typo_on_the_command_line_fails(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([h.PYTHON, '-m', 'effnet.main', '--config=configs/demo.py', f'--workdir={tmp_path}',
                         '--config.optim.lrr=1'], env=h.child_env(1), cwd=h.REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0
  assert 'lrr' in proc.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_batch_not_divisible_by_device_count_fails_before_compiling(tmp_path, digits_dir):
  proc = h.run_child(tmp_path, {'train.batch_size': 12, 'data.data_dir': digits_dir}, '--forbid_compile',
                     num_devices=8, check=False, timeout=300)
  assert proc.returncode == 3, (proc.stdout[-2000:], proc.stderr[-4000:])
  assert 'ERROR ValueError: train.batch_size=12' in proc.stdout
  assert '8 devices' in proc.stdout
  assert 'COMPILED_TOO_EARLY' not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# NaN policy.
# ---------------------------------------------------------------------------------------------------------------
def _assert_all_checkpoints_finite(workdir, config):
  steps = h.checkpoint_steps(workdir)
  assert steps, f'expected at least one checkpoint in {workdir}'
  for step in steps:
    state = h.restore(workdir, config, step)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
      if np.issubdtype(leaf.dtype, np.floating):
        assert np.isfinite(leaf).all(), f'checkpoint {step}: non-finite {jax.tree_util.keystr(path)}'
  return steps


# lr = lr_base × 16/256 × step/warmup_steps (about 9 warmup steps). lr_base=1e38: step 0 has lr 0 (a finite
# state is checkpointed at step 1), then the steps diverge: the update overflows float32 and the loss goes NaN.
_DIVERGE = {'optim.lr_base': 1e38, 'optim.warmup_epochs': 0.1, 'train.total_steps': 4}


def test_nonfinite_loss_stops_with_the_step_and_no_bad_checkpoint(tmp_path, digits_dir, jax_cache_dir,
                                                                  restore_jax_config):
  config = h.tiny_config({**_DIVERGE, 'data.data_dir': digits_dir, 'train.compile_cache_dir': jax_cache_dir})
  with pytest.raises(FloatingPointError, match=r'non-finite .*at step \d+') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert 'nan_policy' in str(e.value)
  assert not os.path.exists(tmp_path / 'final_metrics.json')
  steps = _assert_all_checkpoints_finite(str(tmp_path), config)
  bad = int(str(e.value).split('at step ')[1].split()[0])
  assert max(steps) <= bad + 1 <= config.train.total_steps


def test_nonfinite_loss_skip_policy_completes_with_finite_params(tmp_path, digits_dir, jax_cache_dir,
                                                                 restore_jax_config):
  config = h.tiny_config({**_DIVERGE, 'train.nan_policy': 'skip', 'data.data_dir': digits_dir,
                          'train.compile_cache_dir': jax_cache_dir})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['stopped'] == 'completed' and final['steps'] == 4
  assert final['train_nonfinite_steps'] > 0  # steps really were skipped
  assert os.path.exists(tmp_path / 'final_metrics.json')
  _assert_all_checkpoints_finite(str(tmp_path), config)


def test_nonfinite_update_with_finite_loss_never_reaches_a_checkpoint(tmp_path, digits_dir, jax_cache_dir,
                                                                      restore_jax_config):
  # lr_base=1e40: lr = 6.25e38 overflows float32 to inf, so the first update is inf/NaN while that step's loss
  # (computed from the initial, finite weights) is finite. The same happens when a gradient overflows.
  config = h.tiny_config({**_DIVERGE, 'optim.lr_base': 1e40, 'optim.warmup_epochs': 0.0,
                          'data.data_dir': digits_dir, 'train.compile_cache_dir': jax_cache_dir})
  with pytest.raises(FloatingPointError):
    train.train_and_evaluate(config, str(tmp_path))
  steps = h.checkpoint_steps(str(tmp_path))
  if steps:
    _assert_all_checkpoints_finite(str(tmp_path), config)
