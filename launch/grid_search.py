r"""EfficientNet's compound-scaling grid search, run as a sweep.

Step 1 fixes φ = 1 and tries every (α, β, γ) ≥ 1 on a grid with α·β²·γ² ≈ 2. Each candidate scales a base config:
depth ×α, width ×β, resolution ×γ (rounded to a multiple of 8). Each one trains for a short proxy budget, and the
best by eval top-1 wins; ties go to fewer MACs. Step 2 writes ready config files for φ = 1..7 from the winning
constants, which is how B1–B7 were made (EfficientNet §3.3 and the official reference, §7).

Why this is a sweep and not a private loop: each candidate is an override dict over the base config. Those dicts
run through launch.runs, the run loop of sweeps and the architecture search, and are tabled by launch.sweep's
`collect`. So the same code trains on this CPU, N at a time on a multi-GPU box, or on TPU slices. A re-run skips
candidates that already have a final_metrics.json, and results.csv/results.json have the sweep's format with the
grid columns added. The generated configs use effnet.search.generated_config, the template the NAS emits with.

  python -m launch.grid_search --base=configs/demo.py --workdir_root=/tmp/grid --steps=100 [--tol=0.1 --step=0.05]
  python -m launch.grid_search ... --dry-run              # candidate table and the commands; trains nothing
  python -m launch.grid_search ... -- --config.model.blocks="('r1_k3_s1_e1_i16_o16_c1',)" --config.data.image_size=16

Every `--config.KEY=VALUE` after `--` changes the base before it is scaled. It is sent to every run and written
into the generated configs. The scaled fields (model.width_coefficient, model.depth_coefficient, data.image_size,
data.eval_image_size) are set per candidate. Any other argument after `--` goes to effnet.main unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from typing import Any, Sequence

from effnet import apply_override, load_config
from effnet.models import arch
from effnet.search import generated_config
from launch import Runner, cli
from launch import runs as runs_lib
from launch import sweep as sweep_lib

TARGET = 2.0  # α·β²·γ² ≈ 2: FLOPs grow by ~2^φ (EfficientNet eq. 3)
SCALED_KEYS = ("model.width_coefficient", "model.depth_coefficient", "data.image_size", "data.eval_image_size")
RES_MULTIPLE = 8
_EPS = 1e-9


# ---- step 1: the candidate grid ----
def grid_values(step: float = 0.05, max_coef: float = 2.0) -> list[float]:
  """1, 1+step, 1+2·step, ... ≤ max_coef. Values are rounded to 10 decimals, so 1.15 really is 1.15."""
  if not step > 0:
    raise ValueError(f"step={step}; allowed: > 0")
  if not max_coef >= 1.0:
    raise ValueError(f"max_coef={max_coef}; allowed: >= 1")
  n = int(math.floor((max_coef - 1.0) / step + _EPS))
  return [round(1.0 + i * step, 10) for i in range(n + 1)]


def product(alpha: float, beta: float, gamma: float) -> float:
  return alpha * beta ** 2 * gamma ** 2


def candidates(step: float = 0.05, tol: float = 0.1, max_coef: float = 2.0,
               target: float = TARGET) -> list[tuple[float, float, float]]:
  """Every (α, β, γ) on the grid with |α·β²·γ² − target| ≤ tol.

  Sorted by distance to the target, then by α, β and γ, so the order is deterministic.
  """
  if not tol >= 0:
    raise ValueError(f"tol={tol}; allowed: >= 0")
  if not target > 0:
    raise ValueError(f"target={target}; allowed: > 0")
  vals = grid_values(step, max_coef)
  out = [(a, b, g) for a in vals for b in vals for g in vals if abs(product(a, b, g) - target) <= tol + _EPS]
  return sorted(out, key=lambda c: (round(abs(product(*c) - target), 12), c))


def parse_candidates(text: str) -> list[tuple[float, float, float]]:
  """'1.2,1.1,1.15 1.0,1.2,1.2' (or ';'-separated) -> [(1.2, 1.1, 1.15), (1.0, 1.2, 1.2)]; all must be ≥ 1."""
  out = []
  for tok in text.replace(";", " ").split():
    parts = tok.split(",")
    try:
      c = tuple(float(p) for p in parts)
    except ValueError:
      c = ()
    if len(c) != 3 or min(c) < 1.0:
      raise ValueError(f"candidates: {tok!r}; allowed: 'ALPHA,BETA,GAMMA' triples of numbers >= 1")
    out.append(c)
  if not out:
    raise ValueError("candidates: empty; allowed: 'ALPHA,BETA,GAMMA ...'")
  return out


def candidate_name(alpha: float, beta: float, gamma: float) -> str:
  """(1.2, 1.1, 1.15) -> 'a1.2_b1.1_g1.15' (the run's workdir name)."""
  return f"a{alpha:g}_b{beta:g}_g{gamma:g}"


# ---- scaling a base config ----
def scaled_resolution(base: int, gamma: float, phi: float = 1.0, multiple: int = RES_MULTIPLE) -> int:
  """base·γ^φ rounded to a multiple of 8, at least 8 (models.arch.phi_resolution's rounding, for any base size)."""
  return arch.round_to_multiple(base * gamma ** phi, multiple)


def scaled_overrides(base_config, alpha: float, beta: float, gamma: float, phi: float = 1.0) -> dict[str, Any]:
  """The override dict that compound-scales `base_config` by (α, β, γ)^φ: depth ×α^φ, width ×β^φ, resolution ×γ^φ.

  The coefficients multiply the base's own, so a base that is already scaled (configs/demo.py is V2-B0 at φ=-3)
  is scaled from where it is.
  """
  m, d = base_config.model, base_config.data
  return {
      "model.width_coefficient": round(float(m.width_coefficient) * beta ** phi, 8),
      "model.depth_coefficient": round(float(m.depth_coefficient) * alpha ** phi, 8),
      "data.image_size": scaled_resolution(int(d.image_size), gamma, phi),
      "data.eval_image_size": scaled_resolution(int(d.eval_image_size or d.image_size), gamma, phi),
  }


def split_extra(extra: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits the arguments after `--` into base overrides ('key=value', from --config.key=value) and the rest."""
  sets, rest = [], []
  for a in extra:
    if a.startswith("--config.") and "=" in a:
      sets.append(a[len("--config."):])
    elif a.startswith("--config.") or a.startswith("--config="):
      raise ValueError(f"argument {a!r} after --: base overrides must read --config.KEY=VALUE; the config itself "
                       "is --base")
    else:
      rest.append(a)
  return sets, rest


def load_base(base: str, sets: Sequence[str] = ()):
  """The base config with the `key=value` overrides applied (unknown fields raise ValueError); a bad base (file or
  arg) raises ValueError naming the --base flag."""
  try:
    config = load_config(base)
  except ValueError as e:
    raise ValueError(f"--base={base}: {e}") from None
  for s in sets:
    apply_override(config, s)
  return config


def apply_overrides(config, overrides: dict[str, Any]):
  """A copy of `config` with the override dict applied (values are already typed)."""
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"override {key!r}: no such config field")
    node[leaf] = value
  return c


def model_stats(config) -> dict[str, Any]:
  """Params and MACs (at the eval resolution), stage widths and depths of a config, from shapes only."""
  from effnet.tools import summary
  s = summary.summarize(config)
  return {"params": int(s["params"]), "macs": int(s["macs"]), "num_blocks": int(s["num_blocks"]),
          "widths": [int(s["stem"]["width"])] + [int(st["output_filters"]) for st in s["stages"]] +
                    [int(s["head_width"])],
          "depths": [int(st["num_blocks"]) for st in s["stages"]]}


@dataclasses.dataclass
class Run:
  alpha: float
  beta: float
  gamma: float
  name: str
  overrides: dict[str, Any]
  stats: dict[str, Any]

  @property
  def product(self) -> float:
    return product(self.alpha, self.beta, self.gamma)


def plan(base_config, cands: Sequence[tuple[float, float, float]], phi: float = 1.0,
         with_stats: bool = True) -> list[Run]:
  runs = []
  for a, b, g in cands:
    ov = scaled_overrides(base_config, a, b, g, phi)
    stats = model_stats(apply_overrides(base_config, ov)) if with_stats else {}
    runs.append(Run(a, b, g, candidate_name(a, b, g), ov, stats))
  names = sweep_lib.run_names([{"n": r.name} for r in runs])  # de-duplicates repeated candidates
  for r, n in zip(runs, names):
    r.name = n[len("n="):]
  return runs


# ---- results ----
def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def best_record(records: Sequence[dict]) -> dict | None:
  """The finished record with the highest eval_top1; ties go to fewer MACs, then to the candidate order."""
  done = [(i, r) for i, r in enumerate(records) if r["status"] == "done" and _finite(r["metrics"].get("eval_top1"))]
  if not done:
    return None
  return min(done, key=lambda ir: (-ir[1]["metrics"]["eval_top1"], ir[1]["grid"].get("macs", math.inf), ir[0]))[1]


def write_results(root: str, runs: Sequence[Run], status: dict[str, str]) -> list[dict]:
  """Writes the sweep's results.json/results.csv with each run's α, β, γ, product, params and MACs added."""
  records = sweep_lib.collect(root, [r.overrides for r in runs], [r.name for r in runs], status)
  for rec, r in zip(records, runs):
    rec["grid"] = {"alpha": r.alpha, "beta": r.beta, "gamma": r.gamma, "product": round(r.product, 8),
                   **{k: v for k, v in r.stats.items() if k in ("params", "macs", "num_blocks")}}
  okeys = list(SCALED_KEYS)
  gkeys = ["alpha", "beta", "gamma", "product", "params", "macs", "num_blocks"]
  mkeys = [k for k in dict.fromkeys(k for rec in records for k in rec["metrics"]) if k not in gkeys]
  rows = [["run", "status", *gkeys, *okeys, *mkeys, "workdir"]]
  for rec in records:
    g = dict(rec["grid"])
    if "params" in rec["metrics"]:
      g["params"] = rec["metrics"]["params"]
    rows.append([rec["run"], rec["status"], *[sweep_lib.format_cell(g.get(k, "")) for k in gkeys],
                 *[sweep_lib.format_cell(rec["overrides"].get(k, "")) for k in okeys],
                 *[sweep_lib.format_cell(rec["metrics"].get(k, "")) for k in mkeys],
                 rec["workdir"]])
  p = runs_lib.as_path(root)
  sweep_lib.write_csv(p / "results.csv", rows)
  (p / "results.json").write_text(json.dumps(records, indent=2, default=str))
  return records


# ---- step 2: configs for φ = 1..7 ----
def _config_file(base: str, sets: Sequence[str], scaled: dict[str, Any], constants: dict[str, float], path: str,
                 root: str) -> str:
  """The text of phi<K>.py: the base, its overrides, then the scaled fields (effnet.search.generated_config)."""
  c = constants
  return generated_config.config_source(
      path, base, sets, scaled, tool="python -m launch.grid_search", variant=f"{{base}},grid_phi={c['phi']!r}",
      title=f"{base} compound-scaled to phi={c['phi']} with alpha={c['alpha']}, beta={c['beta']}, gamma={c['gamma']} "
            f"(the best constants of the phi=1 grid search in {root or '?'}).",
      origin={**c, "grid_search": root or "?"})


def generate_configs(base: str, sets: Sequence[str], alpha: float, beta: float, gamma: float, out_dir: str,
                     phis: Sequence[float] = tuple(range(1, 8)), root: str = "", with_stats: bool = True) -> list[dict]:
  """Writes OUT_DIR/phi{K}.py for each φ (each loads the base, applies the base overrides and the scaled fields)
  and OUT_DIR/configs.json. Returns one entry per φ with the path, the scaled fields, params and MACs. Each
  entry also has `efficientnet_spec`, the same constants on the official v1-B0 base in configs/efficientnet.py."""
  base_config = load_base(base, sets)
  out = runs_lib.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  entries = []
  for phi in phis:
    phi_txt = f"{phi:g}"
    scaled = scaled_overrides(base_config, alpha, beta, gamma, phi)
    path = f"{out_dir.rstrip('/')}/phi{phi_txt}.py"
    constants = {"phi": float(phi), "alpha": alpha, "beta": beta, "gamma": gamma}
    (out / f"phi{phi_txt}.py").write_text(_config_file(base, list(sets), scaled, constants, path, root))
    entry = {"phi": float(phi), "config": path, **scaled,
             "efficientnet_spec": f"configs/efficientnet.py:phi={phi_txt},alpha={alpha:g},beta={beta:g},"
                                  f"gamma={gamma:g}"}
    if with_stats:
      entry.update(model_stats(apply_overrides(base_config, scaled)))
    entries.append(entry)
  (out / "configs.json").write_text(json.dumps(entries, indent=2))
  return entries


def format_table(rows: Sequence[dict], cols: Sequence[str]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    if isinstance(v, list):
      return " ".join(str(x) for x in v)
    return str(v)
  cells = [[str(c) for c in cols]] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
  return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells)


def _parse_phis(text: str) -> list[float]:
  """'1-7' -> [1.0, ..., 7.0]; '1,2,3.5' -> [1.0, 2.0, 3.5]."""
  m = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", text)
  try:
    vals = [float(k) for k in range(int(m.group(1)), int(m.group(2)) + 1)] if m else \
        [float(t) for t in text.split(",") if t.strip()]
  except ValueError:
    vals = []
  if not vals:
    raise ValueError(f"phis={text!r}; allowed: 'LO-HI' (integers) or a comma-separated list of numbers")
  return vals


# ---- CLI ----
def _parser():
  parser = cli.make_parser("python -m launch.grid_search", __doc__,
                           "After `--`: --config.KEY=VALUE changes the base (sent to every run and written into the "
                           "generated configs); other arguments go to effnet.main.")
  parser.add_argument("--base", default="configs/demo.py", help="base config PATH.py[:ARG] (φ=0 of the search)")
  cli.add_flag(parser, "workdir_root", required=True)
  parser.add_argument("--steps", type=int, default=100, help="proxy budget: train.total_steps of every candidate")
  parser.add_argument("--step", type=float, default=0.05, help="grid spacing of α, β, γ")
  parser.add_argument("--tol", type=float, default=0.1, help="|α·β²·γ² − target| ≤ tol")
  cli.add_flag(parser, "max_coef", type=float, default=2.0, help="largest α, β, γ on the grid")
  parser.add_argument("--target", type=float, default=TARGET)
  parser.add_argument("--candidates", default=None,
                      help="explicit 'A,B,G A,B,G ...' instead of the grid (e.g. to re-check a few points)")
  parser.add_argument("--phis", default="1-7", help="φ values of the generated configs (step 2)")
  cli.add_flag(parser, "configs_dir", default=None, help="default: WORKDIR_ROOT/configs")
  cli.add_flag(parser, "no_stats", action="store_true", help="skip the params/MACs of each candidate")
  parser.add_argument("--rerun", action="store_true", help="run even when final_metrics.json exists")
  cli.add_flag(parser, "stop_on_failure", action="store_true")
  runs_lib.add_backend_args(parser)
  return parser


def _plan_search(a, extra: Sequence[str]) -> tuple[list[str], list[str], list[Run]]:
  """(base overrides, other pass-through arguments, the candidate runs); ValueError names the bad option."""
  if a.steps <= 0:
    raise ValueError(f"steps={a.steps}; allowed: > 0")
  sets, rest = split_extra(extra)
  base_config = load_base(a.base, sets)
  cands = parse_candidates(a.candidates) if a.candidates else candidates(a.step, a.tol, a.max_coef, a.target)
  if not cands:
    raise ValueError(f"no (α, β, γ) on the grid step={a.step}, max_coef={a.max_coef} has |α·β²·γ² − "
                     f"{a.target}| ≤ tol={a.tol}; raise tol or max_coef, or lower step")
  return sets, rest, plan(base_config, cands, phi=1.0, with_stats=not a.no_stats)


def _print_plan(a, root: str, runs: Sequence[Run]) -> None:
  print(f"# compound-scaling grid search of {a.base} at φ=1: {len(runs)} candidates, {a.steps} steps each, "
        f"under {root}", flush=True)
  table = [{"run": r.name, "alpha": r.alpha, "beta": r.beta, "gamma": r.gamma, "product": r.product,
            "width": r.overrides["model.width_coefficient"], "depth": r.overrides["model.depth_coefficient"],
            "res": r.overrides["data.image_size"], **r.stats} for r in runs]
  cols = ["run", "alpha", "beta", "gamma", "product", "width", "depth", "res"] + \
      ([] if a.no_stats else ["params", "macs"])
  print(format_table(table, cols), flush=True)


def _print_results(root: str, records: Sequence[dict]) -> int:
  done = sum(r["status"] == "done" for r in records)
  print(f"# {done}/{len(records)} finished; wrote {root}/results.csv and {root}/results.json", flush=True)
  res_rows = [{"run": r["run"], "status": r["status"], **r["grid"],
               **{k: r["metrics"].get(k, "") for k in ("eval_top1", "eval_loss", "train_loss", "wall_s")}}
              for r in records]
  print(format_table(res_rows, ["run", "status", "alpha", "beta", "gamma", "product", "params", "macs",
                                "eval_top1", "eval_loss", "train_loss", "wall_s"]), flush=True)
  return done


def _write_best(a, root: str, sets: Sequence[str], phis: Sequence[float], best: dict, records: Sequence[dict],
                done: int) -> None:
  """Step 2 from the winner: the φ configs, and best.json with the constants, the grid and the configs."""
  g = best["grid"]
  configs_dir = a.configs_dir or f"{root}/configs"
  entries = generate_configs(a.base, sets, g["alpha"], g["beta"], g["gamma"], configs_dir, phis, root,
                             with_stats=not a.no_stats)
  best_out = {"alpha": g["alpha"], "beta": g["beta"], "gamma": g["gamma"], "product": g["product"],
              "eval_top1": best["metrics"]["eval_top1"], "macs": g.get("macs"), "params": g.get("params"),
              "run": best["run"], "workdir": best["workdir"], "base": a.base, "base_overrides": list(sets),
              "steps": a.steps, "num_candidates": len(records), "num_finished": done,
              "grid": {"step": a.step, "tol": a.tol, "max_coef": a.max_coef, "target": a.target,
                       "explicit": a.candidates},
              "configs": entries}
  runs_lib.as_path(root).joinpath("best.json").write_text(json.dumps(best_out, indent=2))
  print(f"# best: α={g['alpha']:g} β={g['beta']:g} γ={g['gamma']:g} (α·β²·γ²={g['product']:.4f}), "
        f"eval_top1={best['metrics']['eval_top1']:.4f}; wrote {root}/best.json", flush=True)
  print(f"# step 2: configs for φ={','.join(f'{p:g}' for p in phis)} in {configs_dir}", flush=True)
  print(format_table([{**e, "depths": e.get("depths", ""), "widths": e.get("widths", "")} for e in entries],
                     ["phi", "model.width_coefficient", "model.depth_coefficient", "data.image_size",
                      *([] if a.no_stats else ["params", "macs", "depths", "widths"]), "config"]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
  a, extra = cli.parse(_parser(), argv)
  root = a.workdir_root.rstrip("/")
  try:
    backend = runs_lib.backend_from_args(a)
    phis = _parse_phis(a.phis)
    sets, rest, runs = _plan_search(a, extra)
    # Every run gets the base overrides (except the fields the grid scales) and the proxy budget.
    common = [f"--config.{s}" for s in sets if s.partition("=")[0].strip() not in SCALED_KEYS]
    common += [f"--config.train.total_steps={a.steps}", *rest]
    specs = runs_lib.under_root(root, [(r.name, r.overrides) for r in runs])
    runs_lib.check_runs(backend, a.base, specs, common)  # every candidate's config, before anything starts
  except ValueError as e:
    return cli.fail(e)
  _print_plan(a, root, runs)
  codes = runs_lib.run_all(Runner(dry_run=a.dry_run), backend, a.base, specs, common,
                           rerun=a.rerun, stop_on_failure=a.stop_on_failure)
  if a.dry_run:
    return 0
  status = runs_lib.unfinished(codes)
  records = write_results(root, runs, status)
  done = _print_results(root, records)
  best = best_record(records)
  if best is None:
    print("error: no candidate finished with an eval_top1; no best.json written", file=sys.stderr)
    return 1
  _write_best(a, root, sets, phis, best, records, done)
  return 1 if status else 0


if __name__ == "__main__":
  sys.exit(main())
