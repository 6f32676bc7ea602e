"""Progressive learning through the real trainer: stage sizes, regularization, ahead-of-time compilation and the
persistent compilation cache (issue: progressive learning)."""
import json
import os

import pytest

from conftest import tiny_model
from effnet import load_config, progressive, train


def _progressive_config(total_steps=8, cache_dir=None):
  c = tiny_model(load_config('configs/demo.py:progressive'))
  c.train.total_steps = total_steps
  c.train.batch_size = 16
  c.train.log_every_steps = 1
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  c.train.compile_cache_dir = cache_dir
  c.progressive.size_min, c.progressive.size_max, c.progressive.size_multiple = 16, 32, 8  # 16, 24, 24, 32 px
  c.progressive.dropout_min, c.progressive.dropout_max = 0.0, 0.3
  c.progressive.mixup_min, c.progressive.mixup_max = 0.0, 0.3
  # RandAugment on the device: the host only resizes; the magnitude is a traced input of the step.
  c.data.augment = 'randaugment'
  c.data.randaug_on_device = True
  c.progressive.randaug_min, c.progressive.randaug_max = 4.0, 10.0
  return c


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  """A four-stage run on an empty compilation cache; the tests below reuse its cache, so they load, not compile."""
  root = tmp_path_factory.mktemp('progressive')
  cache = str(root / 'cache')
  final = train.train_and_evaluate(_progressive_config(cache_dir=cache), str(root / 'run1'))
  return root, cache, final


def test_four_stage_digits_run_and_compile_cache(first_run):
  tmp_path, cache, final = first_run
  stages = json.load(open(tmp_path / 'run1' / 'stages.json'))['stages']
  # Paper rule, S_i = 16 + (32 − 16)·i/3 = 16, 21.3, 26.7, 32, rounded to a multiple of 8 (the last stage is exact).
  assert [s['image_size'] for s in stages] == [16, 24, 24, 32]
  # dropout 0 → 0.3 and mixup 0 → 0.3 linearly over i/(M−1); each stage trains N/M = 2 steps.
  assert [round(s['dropout_rate'], 6) for s in stages] == [0.0, 0.1, 0.2, 0.3]
  assert [round(s['mixup_alpha'], 6) for s in stages] == [0.0, 0.1, 0.2, 0.3]
  assert [round(s['randaug_magnitude'], 6) for s in stages] == [4.0, 6.0, 8.0, 10.0]
  # Every stage's executable was compiled (stage 2 reuses stage 1's) and each switch's stall was measured.
  assert all(s['compile_s'] > 0 for s in stages)
  assert all(s['switch_stall_s'] >= 0 for s in stages)
  # Each stage's steps after its first are timed into its entry, and the entries add up to the run's figure.
  assert [s['timed_steps'] for s in stages] == [1, 1, 1, 1]
  assert all(s['train_step_s'] > 0 and s['step_ms'] == pytest.approx(1e3 * s['train_step_s']) for s in stages)
  assert sum(s['train_step_s'] for s in stages) == pytest.approx(final['train_step_s'], rel=1e-9)
  assert final['steps'] == 8 and final['eval_num_examples'] == 359
  assert final['train_image_size'] == 32
  # Every distinct shape was compiled once: 3 train sizes + 1 eval, and nothing came from the (empty) cache.
  assert final['compile_cache_hits'] == 0

  # A second run with the same cache directory loads every executable and compiles nothing.
  final2 = train.train_and_evaluate(_progressive_config(cache_dir=cache), str(tmp_path / 'run2'))
  assert final2['compile_cache_misses'] == 0
  assert final2['compile_cache_hits'] >= 4
  # Same seed, same data, same executables: the second run reproduces the first.
  assert final2['train_loss'] == final['train_loss']


def test_resume_mid_stage_lands_in_the_same_stage(tmp_path, monkeypatch, first_run):
  """A run stopped inside stage 2 (steps [4, 6)) resumes in stage 2 at 24 px with stage 2's regularization."""
  from effnet import checkpoint as ckpt_lib
  from effnet import progressive
  wd = str(tmp_path / 'run')
  c = _progressive_config(total_steps=8, cache_dir=first_run[1])  # both runs load the first run's executables
  c.train.checkpoint_every_steps = 1
  stages = progressive.build_stages(c.progressive, 8, c.data.image_size, c.train.batch_size)
  assert (progressive.stage_at(stages, 5).index, progressive.stage_at(stages, 5).image_size) == (2, 24)

  # Simulate a preemption notice that arrives after step 5 (what SIGTERM does, without a signal).
  real_should_stop = ckpt_lib.should_stop
  monkeypatch.setattr(ckpt_lib, 'should_stop',
                      lambda flag, ckpt, step, sync: step >= 5 or real_should_stop(flag, ckpt, step, sync))
  first = train.train_and_evaluate(c, wd)
  assert first['stopped'] == 'preempted' and first['steps'] == 5
  assert not os.path.exists(os.path.join(wd, 'final_metrics.json'))

  monkeypatch.setattr(ckpt_lib, 'should_stop', real_should_stop)
  resumed = train.train_and_evaluate(c, wd)
  log = json.load(open(os.path.join(wd, 'stages.json')))['stages']
  resumed_stages = log[-2:]  # the resumed run logs stage 2 (entered mid-stage) and stage 3
  assert resumed_stages[0]['stage'] == 2 and resumed_stages[0]['image_size'] == 24
  assert round(resumed_stages[0]['dropout_rate'], 6) == 0.2 and round(resumed_stages[0]['mixup_alpha'], 6) == 0.2
  assert resumed_stages[1]['stage'] == 3 and resumed_stages[1]['image_size'] == 32
  assert resumed['steps'] == 8 and resumed['stopped'] == 'completed'


class _RecordingCompiler:
  def __init__(self):
    self.requested = []

  def prefetch(self, *key):
    self.requested.append(key)


def _run_for_compiles(compile_ahead, total_steps=100, eval_every=30):
  c = _progressive_config(total_steps=total_steps)
  c.train.compile_ahead = compile_ahead
  stages = progressive.build_stages(c.progressive, total_steps, c.data.image_size, c.train.batch_size)
  return train._Run(config=c, workdir='', mesh=None, builder=None, stages=stages, total_steps=total_steps,
                    host_epoch_examples=1, module=None, tx=None, step_cfg=None, abstract=None,
                    compiler=_RecordingCompiler(), checkpointer=None, eval_data=None, minival_data=None,
                    eval_every=eval_every)


def test_every_stage_is_requested_at_the_start_in_order_of_use():
  """Stages of 25 steps at 16/24/24/32 px, first eval at step 30: at step 0 the run asks the background compiler
  for stage 1's step (24 px, reused by stage 2), then the eval step, then stage 3's; stage 0's own step compiles in
  the foreground. Resumed at step 60 (stage 2), only what is left after it; compile_ahead=False asks for nothing."""
  run = _run_for_compiles(True)
  train._request_compiles(run, 0)
  assert run.compiler.requested == [('train', 24, 16), ('eval', 32, 128), ('train', 32, 16)]
  run = _run_for_compiles(True)
  train._request_compiles(run, 60)
  assert run.compiler.requested == [('train', 32, 16), ('eval', 32, 128)]
  run = _run_for_compiles(False)
  train._request_compiles(run, 0)
  assert run.compiler.requested == []
