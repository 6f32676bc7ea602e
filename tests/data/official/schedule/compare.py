"""Measures effnet's schedule against schedule.json: per recipe, the max abs / rel LR difference over the recorded
steps, and every stage value or step count that differs.

  .venv/bin/python tests/data/official/schedule/compare.py

The effnet side is what tests/test_official_schedule.py checks (the same helper builds it).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))  # tests/
import test_official_schedule as ref  # noqa: E402  pylint: disable=g-import-not-at-top


def main():
  doc = ref.load()
  worst_abs = worst_rel = 0.0
  for name, recipe in sorted(doc['recipes'].items()):
    ours = ref.effnet_schedule(name, recipe)
    steps = np.asarray([s for s, _ in recipe['lr_at']])
    want = np.asarray([v for _, v in recipe['lr_at']], np.float64)
    got = ref.lr_values(ours['lr_args'], steps)
    diff = np.abs(got - want)
    rel = np.max(diff / np.maximum(np.abs(want), 1e-30) * (want != 0)) if len(want) else 0.0
    worst_abs, worst_rel = max(worst_abs, float(diff.max())), max(worst_rel, float(rel))
    i = int(np.argmax(np.where(want != 0, diff / np.maximum(np.abs(want), 1e-30), 0)))
    print(f'{name:24s} LR max abs {diff.max():.3e} max rel {rel:.3e} (worst rel at step {steps[i]}: '
          f'official {float(want[i])!r}, effnet {float(got[i])!r}); outside the test\'s tolerance: '
          f'{int(np.sum(diff > 1e-6 * np.abs(want) + ref.lr_atol(recipe)))} of {len(steps)} steps')
    for line in ref.stage_differences(recipe, ours):
      print(f'{"":24s} {line}')
  print(f'ALL: LR max abs {worst_abs:.3e}, max rel {worst_rel:.3e}')


if __name__ == '__main__':
  main()
