"""The `make demo` target: the demo config reaches ≥ 96% test top-1 on the built-in digits set (runs in CI).

README "The demo" gives the measured figures on the development machine: seed 0 (this test) 98.05, and 97.49 after
later changes to the code; the five seeds span 96.1-98.6. The bar sits about one seed-to-seed spread (1-2 points)
below seed 0, because another CPU computes slightly different floats and lands like another draw of the seed; the
EMA weights must not be worse than the raw ones by more than one such spread.
"""
import pytest

from effnet import train
from effnet import load_config


@pytest.mark.demo
@pytest.mark.slow
def test_demo_reaches_96_percent(tmp_path):
  final = train.train_and_evaluate(load_config('configs/demo.py'), str(tmp_path))
  print({k: final[k] for k in ('eval_top1', 'eval_raw_top1', 'eval_num_examples', 'wall_s', 'steps')})
  assert final['eval_num_examples'] == 359  # every test example counted exactly once
  assert final['steps'] == 30 * 1438 // 64  # floor(epochs × examples / batch), as the official main.py
  assert final['eval_top1'] >= 0.96
  assert final['eval_top1'] >= final['eval_raw_top1'] - 0.01
