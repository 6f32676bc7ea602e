"""The `make demo` target: the demo config reaches ≥ 96% test top-1 on the built-in digits set (runs in CI).

README "The demo" gives the measured figures on the development machine: seed 0 (this test) 99.16, seeds 0-4 span
98.05-99.16 (mean 98.38). The bar sits two such spreads below the lowest seed, because another CPU computes slightly
different floats and lands like another draw of the seed; the EMA weights must not be worse than the raw ones by
more than 1 point (3-4 of the 359 digits; measured over seeds 0-4: −0.28 to 0).
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
