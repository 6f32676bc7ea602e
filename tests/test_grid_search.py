"""Compound-scaling grid search. The candidate set is checked against an exact Decimal brute force, and the scaled
resolutions against hand-computed values. A tiny real search on the digits set runs end to end: results.csv and
best.json are written, and the φ=1..7 configs load and build models."""
import csv
import itertools
import json
import os
from decimal import Decimal

import pytest

from launch import grid_search as gs
from launch import runs as runs_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.blocks=('r1_k3_s1_e1_i16_o16_c1','r1_k3_s2_e4_i16_o24_se0.25')",
        "--config.model.head_filters=64", "--config.model.width_coefficient=1.0",
        "--config.model.depth_coefficient=1.0", "--config.data.image_size=16", "--config.data.eval_image_size=16",
        "--config.train.batch_size=16", "--config.train.checkpoint_every_steps=1000"]


def brute_force(step: str, tol: str, max_coef: str, target: str = "2"):
  """Every grid triple whose exact decimal product a·b²·g² lies within tol of the target."""
  step, tol, max_coef, target = map(Decimal, (step, tol, max_coef, target))
  vals, v = [], Decimal(1)
  while v <= max_coef:
    vals.append(v)
    v += step
  return {(float(a), float(b), float(g)) for a, b, g in itertools.product(vals, repeat=3)
          if abs(a * b * b * g * g - target) <= tol}


@pytest.mark.parametrize("step,tol,max_coef", [("0.05", "0.1", "2.0"), ("0.1", "0.05", "1.5"),
                                               ("0.05", "0.02", "1.3"), ("0.2", "0.02", "1.4")])
def test_candidates_match_brute_force(step, tol, max_coef):
  cands = gs.candidates(float(step), float(tol), float(max_coef))
  assert len(cands) == len(set(cands))
  assert set(cands) == brute_force(step, tol, max_coef)
  for a, b, g in cands:
    assert min(a, b, g) >= 1.0 and max(a, b, g) <= float(max_coef)
    assert abs(a * b * b * g * g - 2.0) <= float(tol) + 1e-9
  dist = [abs(a * b * b * g * g - 2.0) for a, b, g in cands]
  assert all(d1 <= d2 + 1e-9 for d1, d2 in zip(dist, dist[1:]))  # closest to α·β²·γ² = 2 first
  assert cands == gs.candidates(float(step), float(tol), float(max_coef))  # deterministic


def test_candidates_contents():
  cands = gs.candidates()  # step 0.05, tol 0.1, max 2.0
  assert len(cands) == len(brute_force("0.05", "0.1", "2.0")) == 109
  # the paper's constants are on the default grid: 1.2·1.1²·1.15² = 1.2·1.21·1.3225 = 1.92027
  assert (1.2, 1.1, 1.15) in cands
  assert gs.product(1.2, 1.1, 1.15) == pytest.approx(1.92027)
  assert (1.0, 1.0, 1.0) not in cands and (2.0, 1.0, 1.0) in cands  # α alone doubles the FLOPs
  # step 0.2 up to 1.4, tol 0.02: only 1.4·1.2²·1² = 1.4·1.44 = 2.016 and the same with β and γ swapped
  assert gs.candidates(0.2, 0.02, 1.4) == [(1.4, 1.0, 1.2), (1.4, 1.2, 1.0)]
  assert gs.candidates(0.1, 0.0, 1.2) == []
  for kw, field in [(dict(step=0.0), "step"), (dict(tol=-0.1), "tol"), (dict(max_coef=0.9), "max_coef")]:
    with pytest.raises(ValueError, match=field):
      gs.candidates(**kw)
  assert gs.parse_candidates("1.2,1.1,1.15; 1,1.2,1.2") == [(1.2, 1.1, 1.15), (1.0, 1.2, 1.2)]
  with pytest.raises(ValueError, match="candidates"):
    gs.parse_candidates("0.9,1,1")


def test_scaled_resolution_and_overrides():
  # 224·1.15^7 = 224·2.66002 = 595.84. The nearest multiple of 8 is 592, which is 3.84 away; 600 is 4.16 away.
  # The official B7 table's 600 px is hand-rounded: it implies φ≈7.05 (docs/fidelity.md §1).
  assert gs.scaled_resolution(224, 1.15, 7) == 592
  assert gs.scaled_resolution(224, 1.15, 2) == 296  # 224·1.3225 = 296.24
  assert gs.scaled_resolution(32, 1.15, 1) == 40    # 36.8 -> 40
  assert gs.scaled_resolution(16, 1.2, 1) == 16     # 19.2 -> 16
  assert gs.scaled_resolution(16, 1.0, 1) == 16
  from effnet.tools import summary
  base = summary.load_config(os.path.join(REPO, "configs/demo.py"))  # V2-B0 at φ=-3: width 1.1^-3, depth 1.2^-3
  ov = gs.scaled_overrides(base, 1.2, 1.1, 1.15)
  assert ov["model.width_coefficient"] == pytest.approx(1.1 ** -2, abs=1e-8)
  assert ov["model.depth_coefficient"] == pytest.approx(1.2 ** -2, abs=1e-8)
  assert ov["data.image_size"] == ov["data.eval_image_size"] == 40
  assert gs.split_extra(["--config.a.b=1", "--foo"]) == (["a.b=1"], ["--foo"])
  with pytest.raises(ValueError, match="--base"):
    gs.split_extra(["--config=configs/demo.py"])


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_dry_run_prints_commands_and_writes_nothing(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  root = tmp_path / "dry"
  assert gs.main(["--base=configs/demo.py", f"--workdir_root={root}", "--steps=3", "--step=0.2", "--tol=0.02",
                  "--max_coef=1.4", "--dry-run", "--", *TINY]) == 0
  out = capsys.readouterr().out
  assert not root.exists()
  cmds = [line for line in out.splitlines() if "-m effnet.main" in line]
  assert len(cmds) == 2
  assert f"--workdir={root}/a1.4_b1_g1.2" in cmds[0] and f"--workdir={root}/a1.4_b1.2_g1" in cmds[1]
  assert "--config.model.width_coefficient=1.2" in cmds[1] and "--config.model.depth_coefficient=1.4" in cmds[1]
  assert "--config.model.head_filters=64" in cmds[0] and "--config.train.total_steps=3" in cmds[0]
  # the base's 16 px is scaled per candidate, not passed through after the candidate's value
  assert cmds[0].count("--config.data.image_size=") == 1


def test_tiny_search_end_to_end(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  root = tmp_path / "grid"
  argv = ["--base=configs/demo.py", f"--workdir_root={root}", "--steps=3", "--step=0.2", "--tol=0.02",
          "--max_coef=1.4", "--", *TINY]
  assert gs.main(argv) == 0
  rows = _rows(root / "results.csv")
  assert [r["run"] for r in rows] == ["a1.4_b1_g1.2", "a1.4_b1.2_g1"]
  for r in rows:
    assert r["status"] == "done" and float(r["steps"]) == 3 and 0.0 <= float(r["eval_top1"]) <= 1.0
    assert float(r["product"]) == pytest.approx(2.016)
    assert float(r["model.depth_coefficient"]) == pytest.approx(1.4)
    assert int(r["data.image_size"]) == 16  # 16·1.2 = 19.2 -> 16
    with open(os.path.join(r["workdir"], "config.json")) as f:  # what the run really trained
      trained = json.load(f)
    assert trained["model"]["head_filters"] == 64 and trained["train"]["total_steps"] == 3
    assert trained["model"]["width_coefficient"] == pytest.approx(float(r["model.width_coefficient"]))
  assert float(rows[0]["model.width_coefficient"]) == 1.0 and float(rows[1]["model.width_coefficient"]) == 1.2
  assert float(rows[1]["macs"]) > float(rows[0]["macs"])  # wider at the same resolution and depth

  best = json.loads((root / "best.json").read_text())
  top = max(float(r["eval_top1"]) for r in rows)
  winners = sorted((float(r["macs"]), r) for r in rows if float(r["eval_top1"]) == top)
  win = winners[0][1]
  assert (best["alpha"], best["beta"], best["gamma"]) == (float(win["alpha"]), float(win["beta"]),
                                                          float(win["gamma"]))
  assert best["eval_top1"] == pytest.approx(top) and best["run"] == win["run"]

  # step 2: φ = 1..7 from the best constants; φ=1 is the winning candidate itself
  entries = json.loads((root / "configs" / "configs.json").read_text())
  assert [e["phi"] for e in entries] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
  a, b, g = best["alpha"], best["beta"], best["gamma"]
  for e in entries:
    k = e["phi"]
    assert e["model.width_coefficient"] == pytest.approx(b ** k) and e["model.depth_coefficient"] == pytest.approx(a ** k)
    assert e["data.image_size"] == max(8, round(16 * g ** k / 8) * 8)
    assert e["efficientnet_spec"] == f"configs/efficientnet.py:phi={int(k)},alpha={a:g},beta={b:g},gamma={g:g}"
  assert entries[0]["model.width_coefficient"] == pytest.approx(float(win["model.width_coefficient"]))
  assert entries[0]["macs"] == int(float(win["macs"]))
  assert entries[-1]["macs"] > entries[0]["macs"]

  from effnet import models
  from effnet.tools import summary
  cfg = summary.load_config(str(root / "configs" / "phi7.py"))
  assert cfg.model.depth_coefficient == pytest.approx(a ** 7) and cfg.model.head_filters == 64
  assert cfg.data.image_size == entries[-1]["data.image_size"] and cfg.data.name == "digits"
  module = models.build_model(cfg.model)
  assert models.count_params(module, cfg.data.image_size) == entries[-1]["params"]
  # depth 1.4^7 = 10.54 -> ceil: 11 blocks per stage (the tiny base has 2 stages of 1 block)
  assert entries[-1]["depths"] == [11, 11]
  out = capsys.readouterr().out
  assert "# best: α=" in out and "phi7.py" in out

  # Run the candidates again and both are skipped, because they have finished (no subprocess starts).
  from launch import Runner
  runs = gs.plan(gs.load_base("configs/demo.py", gs.split_extra(TINY)[0]), gs.candidates(0.2, 0.02, 1.4),
                 with_stats=False)
  runner = Runner()
  assert runs_lib.run_all(runner, runs_lib.Backend(), "configs/demo.py",
                          runs_lib.under_root(str(root), [(r.name, r.overrides) for r in runs])) == {}
  assert runner.commands == [] and capsys.readouterr().out.count("finished, skipped") == 2


def test_tpu_backend_dry_run(tmp_path, monkeypatch, capsys):
  """On a pod, the candidates are the same override dicts, run one after another with launch.tpu's job command."""
  monkeypatch.chdir(REPO)
  assert gs.main(["--base=configs/efficientnet.py:b0", "--workdir_root=gs://bucket/grid", "--steps=2000",
                  "--candidates=1.2,1.1,1.15", "--backend=tpu", "--tpu_name=pod", "--zone=us-central2-b",
                  "--accelerator_type=v4-32", "--no_stats", "--dry-run"]) == 0
  cmds = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gcloud ")]
  assert len(cmds) == 1
  c = cmds[0]
  assert c.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all")
  # B0 is 224 px: 224·1.15 = 257.6 -> 256; width 1.0·1.1, depth 1.0·1.2
  for flag in ("--config=configs/efficientnet.py:b0", "--workdir=gs://bucket/grid/a1.2_b1.1_g1.15",
               "--config.model.width_coefficient=1.1", "--config.model.depth_coefficient=1.2",
               "--config.data.image_size=256", "--config.train.total_steps=2000"):
    assert flag in c
  assert gs.main(["--workdir_root=/tmp/x", "--backend=tpu", "--dry-run"]) == 2  # tpu_name/zone missing


def test_best_record_tie_break():
  def rec(name, status, top1, macs):
    return {"run": name, "status": status, "metrics": {} if top1 is None else {"eval_top1": top1},
            "grid": {"macs": macs}}
  records = [rec("a", "done", 0.5, 300), rec("b", "done", 0.7, 500), rec("c", "done", 0.7, 400),
             rec("d", "failed (exit 1)", 0.9, 1), rec("e", "done", float("nan"), 1), rec("f", "done", 0.7, 400)]
  assert gs.best_record(records)["run"] == "c"  # highest top-1, then fewer MACs, then the first in order
  assert gs.best_record([rec("d", "failed (exit 1)", None, 1)]) is None
