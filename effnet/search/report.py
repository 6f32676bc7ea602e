"""Search outputs: the ranked CSV and the Pareto plot (the emitted config files come from generated_config).

Why a ranked table and a Pareto plot: the reward picks one architecture, but the trade-off it made (accuracy
against step time and parameters) is what tells whether the search found something better than the reference.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

COLUMNS = ('rank', 'name', 'status', 'reward', 'v1_objective', 'accuracy', 'step_ms', 'step_time_norm', 'params',
           'params_norm', 'macs', 'macs_image_size', 'device', 'is_reference', 'blocks', 'workdir')


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def rank(records: Sequence[dict]) -> list[dict]:
  """Sorted by reward (best first; records without a reward last); sets 'rank' (1-based, '' when unranked)."""
  ranked = sorted(records, key=lambda r: (not _finite(r.get('reward')), -(r.get('reward') or 0.0)
                                          if _finite(r.get('reward')) else 0.0, r['name']))
  n = 0
  for r in ranked:
    if _finite(r.get('reward')):
      n += 1
      r['rank'] = n
    else:
      r['rank'] = ''
  return ranked


def _cell(column: str, value):
  """blocks space-separated, non-finite floats empty, bools 0/1: a table that reads back with csv alone."""
  if column == 'blocks':
    return ' '.join(value)
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else ''
  if isinstance(value, bool):
    return int(value)
  return value


def table_csv(records: Sequence[dict]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  w.writerow(COLUMNS)
  for r in records:
    w.writerow([_cell(c, r.get(c, '')) for c in COLUMNS])
  return buf.getvalue()


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the points not dominated by another (lower cost x and higher accuracy y is better)."""
  front = []
  for i, (x, y) in enumerate(points):
    if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def pareto_plot(records: Sequence[dict], title: str = '') -> bytes:
  """PNG bytes: accuracy vs step time and vs params; Pareto front joined, the best reward and reference marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  pts = [r for r in records if _finite(r.get('accuracy')) and _finite(r.get('step_ms')) and _finite(r.get('params'))]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  best = next((r for r in records if r.get('rank') == 1), None)
  for ax, key, label in ((axes[0], 'step_ms', 'train step time (ms, median)'), (axes[1], 'params', 'parameters')):
    xs = [r[key] for r in pts]
    ys = [r['accuracy'] for r in pts]
    cand = [i for i, r in enumerate(pts) if not r.get('is_reference')]
    ax.scatter([xs[i] for i in cand], [ys[i] for i in cand], s=22, alpha=0.7, label='candidates')
    front = pareto_front(list(zip(xs, ys)))
    if front:
      ax.plot([xs[i] for i in front], [ys[i] for i in front], '-', color='C1', lw=1.2, label='Pareto front')
    for i, r in enumerate(pts):
      if r.get('is_reference'):
        ax.scatter([xs[i]], [ys[i]], marker='*', s=160, color='k', label='reference', zorder=3)
      if best is not None and r['name'] == best['name']:
        ax.scatter([xs[i]], [ys[i]], marker='o', s=120, facecolors='none', edgecolors='C3', lw=2,
                   label=f'best reward ({r["name"]})', zorder=3)
    ax.set_xlabel(label)
    ax.set_ylabel('proxy accuracy (eval top-1)')
    if key == 'params' and xs and max(xs) / max(min(xs), 1) > 20:
      ax.set_xscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
  fig.suptitle(title or 'architecture search: accuracy vs cost')
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110)
  plt.close(fig)
  return buf.getvalue()
