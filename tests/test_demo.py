"""The `make demo` target: the demo config reaches ≥ 95% test top-1 on the built-in digits set (runs in CI)."""
import pytest

from effnet import train
from effnet.tools.summary import load_config


@pytest.mark.demo
@pytest.mark.slow
def test_demo_reaches_95_percent(tmp_path):
  final = train.train_and_evaluate(load_config('configs/demo.py'), str(tmp_path))
  print({k: final[k] for k in ('eval_top1', 'eval_num_examples', 'wall_s', 'steps')})
  assert final['eval_num_examples'] == 359  # every test example counted exactly once
  assert final['eval_top1'] >= 0.95
