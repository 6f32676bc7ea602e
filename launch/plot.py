"""Plot a sweep's results.csv as a PNG, the papers' Figure 1 style: one metric against cost (e.g. eval_top1 vs macs
or wall_s), points joined per group in order of x and labelled.

Why: a sweep's table is read most quickly as an accuracy/cost curve; this needs only the CSV, so it also works on
results copied off a pod. matplotlib runs with the Agg backend (no display).

    python -m launch.plot /tmp/sweeps/lr/results.csv --x macs --y eval_top1 --label run --out /tmp/lr.png
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from typing import Sequence


def _num(v) -> float | None:
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def read_points(csv_path: str, x: str, y: str, label: str | None = "run", group: str | None = None):
  """{group: [(x, y, label), ...] sorted by x}; rows without numeric x and y are skipped."""
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"csv {csv_path!r}: no rows")
  cols = set(rows[0])
  for field, col in (("x", x), ("y", y), ("label", label), ("group", group)):
    if col is not None and col not in cols:
      raise ValueError(f"{field}={col!r}: not a column of {csv_path}; allowed values are {sorted(cols)}")
  series: dict[str, list] = {}
  for r in rows:
    xv, yv = _num(r[x]), _num(r[y])
    if xv is None or yv is None:
      continue
    series.setdefault(r[group] if group else "", []).append((xv, yv, r[label] if label else ""))
  if not series:
    raise ValueError(f"csv {csv_path!r}: no row has numeric {x!r} and {y!r}")
  return {k: sorted(v) for k, v in series.items()}


def plot(csv_path: str, x: str, y: str, out: str, label: str | None = "run", group: str | None = None,
         logx: bool = False, title: str | None = None, line: bool = True) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  series = read_points(csv_path, x, y, label, group)
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  for name, pts in series.items():
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.plot(xs, ys, "o-" if line and len(pts) > 1 else "o", label=name or None, markersize=6, linewidth=1.5)
    for xv, yv, lab in pts:
      if lab:
        ax.annotate(lab, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7).set_in_layout(False)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  ax.set_title(title or f"{y} vs {x}")
  ax.grid(True, alpha=0.3)
  if group:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, format="png")
  plt.close(fig)
  return out


def plot_summary(rows, out: str, x: str = "train_step_s", y: str = "eval_top1") -> str:
  """A sweep summary (launch.sweep.summarize) as mean ± std error bars of `y` (top-1 in %) against `x`, one
  labelled point per setting: the V2 paper's accuracy-vs-training-time comparison."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  scale = 100.0 if "top1" in y else 1.0
  for r in rows:
    ax.errorbar(r[f"{x}_mean"], r[f"{y}_mean"] * scale, xerr=r[f"{x}_std"], yerr=r[f"{y}_std"] * scale, fmt="o",
                capsize=4, label=f"{r['setting']} (n={r['runs']})")
  ax.set_xlabel(f"{x} (mean ± std over seeds)")
  ax.set_ylabel(f"{y}{' (%)' if scale != 1.0 else ''} (mean ± std over seeds)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, format="png")
  plt.close(fig)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m launch.plot", description=__doc__.split("\n\n")[0])
  ap.add_argument("csv", help="results.csv written by launch.sweep")
  ap.add_argument("--x", default="macs")
  ap.add_argument("--y", default="eval_top1")
  ap.add_argument("--label", default="run", help="column used to label points ('' for none)")
  ap.add_argument("--group", default=None, help="column whose values get separate lines (e.g. model.variant)")
  ap.add_argument("--logx", action="store_true")
  ap.add_argument("--no_line", "--no-line", action="store_true", help="scatter only")
  ap.add_argument("--title", default=None)
  ap.add_argument("--out", default="plot.png")
  a = ap.parse_args(argv)
  try:
    plot(a.csv, a.x, a.y, a.out, a.label or None, a.group, a.logx, a.title, not a.no_line)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
