"""Expand a config file's `sweep()` into runs, run them (through launch.runs: locally, N at a time, or on TPU
slices), and collect every run's final_metrics.json with its overrides into one table (results.csv / results.json).

Why: the kauldron/big_vision convention keeps a sweep next to the config it varies: `sweep(name=None)` returns a list
of override dicts such as {'optim.lr_base': 0.01}. Each run gets a readable workdir name derived from its overrides,
so re-running the same sweep finds finished runs (a final_metrics.json) and skips them, and an interrupted run
resumes from the checkpoint in its workdir. Workdirs may be local or gs:// (etils.epath, as orbax and tfds use).

    python -m launch.sweep --config=configs/efficientnetv2.py:s --sweep=lr --workdir_root=/tmp/sweeps/lr
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import json
import math
import re
import statistics
import sys
from typing import Any, Sequence

from effnet import config_lib
from launch import Runner, cli, format_override_value
from launch import runs as runs_lib
from launch.runs import METRICS_FILE, as_path  # as_path: effnet.workdir.as_path

_MAX_NAME = 120


# The config-file conventions are effnet's own (effnet.main's --config): one implementation, re-used here.
split_config_arg = config_lib.split_config_spec
load_config_module = config_lib.load_config_module


def expand(module, name: str | None = None) -> list[dict[str, Any]]:
  """Calls module.sweep(name) (or sweep() when no name is given and it takes none); returns a list of dicts."""
  fn = getattr(module, "sweep", None)
  if fn is None:
    raise ValueError(f"sweep: config module {getattr(module, '__file__', module)} defines no sweep() function")
  params = [p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if name is not None:
    if not params:
      raise ValueError(f"sweep={name!r}: this config's sweep() takes no name; run without --sweep")
    runs = fn(name)
  elif not params or params[0].default is not inspect.Parameter.empty:
    runs = fn()
  else:
    raise ValueError("sweep: this config's sweep(name) needs a name; pass --sweep=NAME")
  runs = list(runs)  # generators are fine too
  for i, r in enumerate(runs):
    if not isinstance(r, dict) or not all(isinstance(k, str) and k for k in r):
      raise ValueError(f"sweep: item {i} is {r!r}; expected a dict of 'section.field' -> value")
  return runs


def _has_field(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def validate(overrides: Sequence[dict], config) -> None:
  """Every key must name an existing field of the config (catches typos before N runs start)."""
  for key in (k for r in overrides for k in r):
    if not _has_field(config, key):
      raise ValueError(f"sweep override {key!r}: no such config field")


def run_name(overrides: dict) -> str:
  """{'optim.lr_base': 0.01, 'model.dropout_rate': 0.3} -> 'optim.lr_base=0.01,model.dropout_rate=0.3'."""
  if not overrides:
    return "base"
  text = ",".join(f"{k}={format_override_value(v)}" for k, v in overrides.items())
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "run"
  if len(name) > _MAX_NAME:
    name = name[:_MAX_NAME - 9].rstrip("_,") + "_" + hashlib.sha1(text.encode()).hexdigest()[:8]
  return name


def run_names(runs: Sequence[dict]) -> list[str]:
  names, seen = [], {}
  for r in runs:
    n = run_name(r)
    if n in seen:
      seen[n] += 1
      n = f"{n}_{seen[n]}"
    else:
      seen[n] = 0
    names.append(n)
  return names


def read_metrics(workdir: str) -> dict | None:
  p = as_path(workdir) / METRICS_FILE
  if not p.exists():
    return None
  return json.loads(p.read_text())


def collect(workdir_root: str, runs: Sequence[dict], names: Sequence[str],
            status: dict[str, str] | None = None) -> list[dict]:
  """One record per run: name, workdir, status, overrides, metrics; also writes results.csv/results.json."""
  status = status or {}
  records = []
  for r, n in zip(runs, names):
    wd = str(as_path(workdir_root) / n)
    m = read_metrics(wd)
    records.append({"run": n, "workdir": wd, "status": "done" if m is not None else status.get(n, "missing"),
                    "overrides": dict(r), "metrics": m or {}})
  root = as_path(workdir_root)
  root.mkdir(parents=True, exist_ok=True)
  (root / "results.json").write_text(json.dumps(records, indent=2, default=str))
  okeys = list(dict.fromkeys(k for rec in records for k in rec["overrides"]))
  mkeys = list(dict.fromkeys(k for rec in records for k in rec["metrics"]))
  rows = [["run", "status", *okeys, *mkeys, "workdir"]]
  for rec in records:
    rows.append([rec["run"], rec["status"], *[format_cell(rec["overrides"].get(k, "")) for k in okeys],
                 *[format_cell(rec["metrics"].get(k, "")) for k in mkeys], rec["workdir"]])
  write_csv(root / "results.csv", rows)
  return records


def write_csv(path, rows) -> None:
  """Writes rows (lists of cells) as CSV to a local or gs:// path (etils.epath)."""
  import io
  buf = io.StringIO()
  csv.writer(buf, lineterminator="\n").writerows(rows)
  path.write_text(buf.getvalue())


SEED_KEY = "train.seed"
SUMMARY_METRICS = ("eval_top1", "eval_raw_top1", "train_step_s", "compile_s", "switch_stall_s", "wall_s")
# compare_to_first's columns: (markdown header, scale, format); the top-1 difference shown in points.
RELATIVE_COLUMNS = {"eval_top1_vs_first": ("top-1 vs first (points)", 100.0, "{:+.2f}"),
                    "train_step_s_vs_first": ("train_step_s ÷ first", 1.0, "{:.2f}")}


def summarize(records: Sequence[dict], metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict]:
  """Groups runs that differ only in `train.seed` and gives each metric's mean and sample std over the seeds.

  Why: a single run's top-1 moves by tenths of a point with the seed (and with the CPU it ran on), so a
  comparison between settings is only worth reporting as mean ± std over seeds, as the papers' tables do.
  Unfinished runs are left out of the statistics and counted in `missing`.
  """
  groups: dict[str, dict] = {}
  for rec in records:
    setting = {k: v for k, v in rec["overrides"].items() if k != SEED_KEY}
    g = groups.setdefault(run_name(setting), {"setting": run_name(setting), "runs": 0, "missing": 0, "values": {}})
    if rec["status"] != "done":
      g["missing"] += 1
      continue
    g["runs"] += 1
    for m in metrics:
      if isinstance(rec["metrics"].get(m), (int, float)):
        g["values"].setdefault(m, []).append(float(rec["metrics"][m]))
  rows = []
  for g in groups.values():
    row = {"setting": g["setting"], "runs": g["runs"], "missing": g["missing"]}
    for m, vals in g.pop("values").items():
      row[f"{m}_mean"] = statistics.fmean(vals)
      row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    rows.append(row)
  return compare_to_first(rows)


def compare_to_first(rows: list[dict]) -> list[dict]:
  """Adds `eval_top1_vs_first` (difference of the mean top-1s) and `train_step_s_vs_first` (ratio of the mean
  train-step seconds) against the first setting, the sweep's reference (e.g. fixed size at the final size).

  Why: the V2 paper's claim is a pair - accuracy kept, training time cut - so a sweep testing it states both as
  computed figures, not as a reader's subtraction."""
  first = rows[0] if rows else {}
  for r in rows:
    if "eval_top1_mean" in r and "eval_top1_mean" in first:
      r["eval_top1_vs_first"] = r["eval_top1_mean"] - first["eval_top1_mean"]
    if r.get("train_step_s_mean") is not None and first.get("train_step_s_mean"):
      r["train_step_s_vs_first"] = r["train_step_s_mean"] / first["train_step_s_mean"]
  return rows


def write_summary(workdir_root: str, rows: Sequence[dict]) -> str:
  """summary.csv (one row per setting) and summary.md (mean ± std, top-1 in percent); returns the markdown."""
  root = as_path(workdir_root)
  keys = list(dict.fromkeys(k for r in rows for k in r))
  write_csv(root / "summary.csv", [keys] + [[format_cell(r.get(k, "")) for k in keys] for r in rows])
  metrics = [m for m in SUMMARY_METRICS if any(f"{m}_mean" in r for r in rows)]
  relative = [k for k in RELATIVE_COLUMNS if any(k in r for r in rows)]
  header = metrics + [RELATIVE_COLUMNS[k][0] for k in relative]
  lines = ["| setting | runs | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
  for r in rows:
    cells = []
    for m in metrics:
      if f"{m}_mean" not in r:
        cells.append("")
        continue
      scale, digits = (100.0, 2) if "top1" in m else (1.0, 1)
      cells.append(f"{r[f'{m}_mean'] * scale:.{digits}f} ± {r[f'{m}_std'] * scale:.{digits}f}")
    cells += [RELATIVE_COLUMNS[k][2].format(r[k] * RELATIVE_COLUMNS[k][1]) if k in r else "" for k in relative]
    lines.append(f"| {r['setting']} | {r['runs']} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  (root / "summary.md").write_text(text)
  return text


def format_cell(v) -> str:
  if isinstance(v, float) and math.isfinite(v):
    return repr(v)
  return format_override_value(v) if not isinstance(v, str) else v


def _parser():
  parser = cli.make_parser("python -m launch.sweep", __doc__,
                           "Arguments after `--` go to every run (common overrides). For --backend=tpu, the TPU "
                           "options are those of `python -m launch.tpu up`.")
  parser.add_argument("--config", required=True, help="PATH.py[:ARG], as for effnet.main")
  parser.add_argument("--sweep", default=None, help="name passed to the config's sweep(name)")
  cli.add_flag(parser, "workdir_root", required=True, help="local dir or gs://bucket/path")
  cli.add_flag(parser, "collect_only", action="store_true", help="only (re)write results.csv/json")
  parser.add_argument("--rerun", action="store_true", help="run even when final_metrics.json exists")
  cli.add_flag(parser, "stop_on_failure", action="store_true")
  cli.add_flag(parser, "no_validate", action="store_true",
               help="do not check the sweep's override keys and every run's config here before starting")
  runs_lib.add_backend_args(parser)
  return parser


def _load_runs(a) -> tuple[list[dict], Any]:
  """The config's sweep() and its get_config(ARG) (None without one), each override key checked against that
  config unless --no_validate."""
  path, arg = split_config_arg(a.config)
  module = load_config_module(path)
  runs = expand(module, a.sweep)
  if not hasattr(module, "get_config"):
    return runs, None
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except ValueError:
    if not a.no_validate:
      raise
    return runs, None  # unchecked, as asked: the runs report their own config errors
  if not a.no_validate:
    validate(runs, config)
  return runs, config


CACHE_KEY = "train.compile_cache_dir"


def with_shared_compile_cache(root: str, config, extra: Sequence[str], runs: Sequence[dict] = ()) -> list[str]:
  """`extra` plus `--config.train.compile_cache_dir=ROOT/jax_cache` unless `extra` already names a cache.

  Why: the points of a sweep mostly share their step shapes (every seed, every LR, the final stage of a progressive
  run), so one persistent XLA cache lets each shape compile once for the whole sweep. On a small host this also
  keeps a later point's steps from sharing the CPU with its own background compiles, which would otherwise inflate
  the train-step seconds the sweep compares. A config without that field, or a cache named in `extra` or by the
  sweep's own points, is left as it is."""
  extra = list(extra)
  named = any(f"--config.{CACHE_KEY}" in e for e in extra) or any(CACHE_KEY in r for r in runs)
  if config is None or not _has_field(config, CACHE_KEY) or named:
    return extra
  return [*extra, f"--config.{CACHE_KEY}={root}/jax_cache"]


def main(argv: Sequence[str] | None = None) -> int:
  a, extra = cli.parse(_parser(), argv)
  root = a.workdir_root.rstrip("/")
  try:
    runs, config = _load_runs(a)
    extra = with_shared_compile_cache(root, config, extra, runs)
    names = run_names(runs)
    backend = runs_lib.backend_from_args(a)
    specs = runs_lib.under_root(root, list(zip(names, runs)))
    if not a.no_validate and not a.collect_only:  # every point's config, before anything starts (also dry runs)
      runs_lib.check_runs(backend, a.config, specs, extra)
  except ValueError as e:
    return cli.fail(e)
  print(f"# sweep {a.sweep or '(default)'} of {a.config}: {len(runs)} runs under {root}", flush=True)
  status = {}
  if not a.collect_only:
    codes = runs_lib.run_all(Runner(dry_run=a.dry_run), backend, a.config, specs, extra, rerun=a.rerun,
                             stop_on_failure=a.stop_on_failure)
    status = runs_lib.unfinished(codes)
    if a.dry_run:
      return 0
  records = collect(root, runs, names, status)
  done = sum(r["status"] == "done" for r in records)
  print(f"# {done}/{len(records)} finished; wrote {root}/results.csv and {root}/results.json", flush=True)
  _report(root, records)
  return 1 if any(v.startswith("failed") for v in status.values()) else 0


def _report(root: str, records: Sequence[dict]) -> None:
  """With more than one seed per setting: the mean ± std table (printed, summary.md/csv) and its plot."""
  if len({r["overrides"].get(SEED_KEY) for r in records}) < 2:
    return
  rows = summarize(records)
  print(write_summary(root, rows), flush=True)
  if all(r["runs"] for r in rows):
    from launch import plot  # pylint: disable=g-import-not-at-top
    out = plot.plot_summary(rows, str(as_path(root) / "summary.png"))
    print(f"# wrote {root}/summary.md, summary.csv and {out}", flush=True)


if __name__ == "__main__":
  sys.exit(main())
