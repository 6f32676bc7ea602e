"""Sweeps: sweep() expansion from a config file, workdir names, running with a fake entry module, skipping finished
runs, results.csv/results.json, and the plot PNG."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from launch import plot as plot_lib
from launch import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = textwrap.dedent('''
  import ml_collections

  def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(variant=arg or "s", dropout_rate=0.2, se_ratio=0.25)
    c.optim = dict(lr_base=0.016)
    c.train = dict(batch_size=64)
    return c

  def sweep(name=None):
    if name in (None, "lr"):
      return [{"optim.lr_base": lr} for lr in (0.004, 0.016, 0.064)]
    if name == "grid":
      return [{"optim.lr_base": lr, "model.dropout_rate": d} for lr in (0.01, 0.02) for d in (0.1, 0.3)]
    if name == "typo":
      return [{"optim.lr_bse": 0.1}]
    if name == "fail":
      return [{"optim.lr_base": 0.01}, {"optim.lr_base": -1.0}, {"optim.lr_base": 0.02}]
    raise ValueError(f"sweep name={name!r}: allowed values are 'lr', 'grid', 'typo', 'fail'")
''')

# Fake effnet.main: final metrics are a known function of the overrides; counts its invocations.
FAKE_MAIN = textwrap.dedent('''
  import json, os, sys
  flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
  wd = flags["workdir"]
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(os.path.dirname(wd), "calls.txt"), "a") as f:
    f.write(os.path.basename(wd) + "\\n")
  lr = float(flags.get("config.optim.lr_base", 0.016))
  if lr < 0:
    sys.exit(5)
  d = float(flags.get("config.model.dropout_rate", 0.2))
  m = dict(eval_top1=0.5 + lr * 10 - d / 10, eval_loss=1.0 - lr, steps=100.0, wall_s=1.5,
           macs=1e6 * (1 + lr * 100), params=21.5e6)
  with open(os.path.join(wd, "final_metrics.json"), "w") as f:
    json.dump(m, f)
''')


@pytest.fixture
def env(tmp_path, monkeypatch):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(CONFIG)
  (tmp_path / "fake_main.py").write_text(FAKE_MAIN)
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  return tmp_path, f"{cfg}:s"


def test_expand_and_names(env):
  tmp, _ = env
  mod = sweep_lib.load_config_module(str(tmp / "cfg.py"))
  assert sweep_lib.expand(mod, "lr") == [{"optim.lr_base": 0.004}, {"optim.lr_base": 0.016},
                                         {"optim.lr_base": 0.064}]
  assert sweep_lib.expand(mod) == sweep_lib.expand(mod, "lr")  # name optional
  grid = sweep_lib.expand(mod, "grid")
  assert len(grid) == 4
  assert sweep_lib.run_names(grid) == [
      "optim.lr_base=0.01,model.dropout_rate=0.1", "optim.lr_base=0.01,model.dropout_rate=0.3",
      "optim.lr_base=0.02,model.dropout_rate=0.1", "optim.lr_base=0.02,model.dropout_rate=0.3"]
  assert sweep_lib.run_name({}) == "base"
  assert sweep_lib.run_name({"data.data_dir": "gs://b/x y", "model.blocks": ("a", "b")}) == \
      "data.data_dir=gs_b_x_y,model.blocks=_a_,_b"  # unsafe runs -> _, ends trimmed
  long = sweep_lib.run_name({f"model.field_{i}": i for i in range(30)})
  assert len(long) <= 120 and long != sweep_lib.run_name({f"model.field_{i}": i + 1 for i in range(30)})
  assert sweep_lib.run_names([{"a.b": "x/y"}, {"a.b": "x_y"}]) == ["a.b=x_y", "a.b=x_y_1"]
  sweep_lib.validate(grid, mod.get_config("s"))
  with pytest.raises(ValueError, match="optim.lr_bse"):
    sweep_lib.validate(sweep_lib.expand(mod, "typo"), mod.get_config("s"))
  assert sweep_lib.split_config_arg("configs/efficientnetv2.py:s,runlocal") == ("configs/efficientnetv2.py",
                                                                                "s,runlocal")
  with pytest.raises(ValueError, match="config"):
    sweep_lib.split_config_arg("configs/efficientnetv2:s")


def test_sweep_signatures(tmp_path):
  (tmp_path / "noarg.py").write_text("def sweep():\n  yield {'a.b': 1}\n  yield {'a.b': 2}\n")
  (tmp_path / "named.py").write_text("def sweep(name):\n  return [{'a.b': name}]\n")
  (tmp_path / "bad.py").write_text("def sweep():\n  return [('a.b', 1)]\n")
  noarg = sweep_lib.load_config_module(str(tmp_path / "noarg.py"))
  named = sweep_lib.load_config_module(str(tmp_path / "named.py"))
  assert sweep_lib.expand(noarg) == [{"a.b": 1}, {"a.b": 2}]  # generator accepted
  assert sweep_lib.expand(named, "x") == [{"a.b": "x"}]
  with pytest.raises(ValueError, match="takes no name"):
    sweep_lib.expand(noarg, "x")
  with pytest.raises(ValueError, match="needs a name"):
    sweep_lib.expand(named)
  with pytest.raises(ValueError, match="item 0"):
    sweep_lib.expand(sweep_lib.load_config_module(str(tmp_path / "bad.py")))


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_run_collect_skip_and_plot(env, capsys):
  tmp, config = env
  root = tmp / "sweeps" / "grid"
  argv = [f"--config={config}", "--sweep=grid", f"--workdir_root={root}", "--module=fake_main", "--",
          "--config.train.batch_size=32"]
  assert sweep_lib.main(argv) == 0
  calls = (root / "calls.txt").read_text().split()
  assert len(calls) == 4
  rows = _rows(root / "results.csv")
  assert [r["run"] for r in rows] == sweep_lib.run_names(sweep_lib.expand(
      sweep_lib.load_config_module(str(tmp / "cfg.py")), "grid"))
  assert list(rows[0])[:4] == ["run", "status", "optim.lr_base", "model.dropout_rate"]
  r = rows[3]  # lr 0.02, dropout 0.3: eval_top1 = 0.5 + 0.2 - 0.03 (FAKE_MAIN's formula, by hand)
  assert r["status"] == "done" and float(r["optim.lr_base"]) == 0.02 and float(r["model.dropout_rate"]) == 0.3
  assert float(r["eval_top1"]) == pytest.approx(0.67) and float(r["macs"]) == pytest.approx(3e6)
  assert r["workdir"] == str(root / r["run"])
  js = json.loads((root / "results.json").read_text())
  assert js[3]["overrides"] == {"optim.lr_base": 0.02, "model.dropout_rate": 0.3}
  assert js[3]["metrics"]["eval_loss"] == pytest.approx(0.98) and js[3]["status"] == "done"

  # the common override after `--` reached every run; a second invocation skips all finished runs
  assert sweep_lib.main(argv) == 0
  assert len((root / "calls.txt").read_text().split()) == 4
  assert "finished, skipped" in capsys.readouterr().out

  # a half-finished sweep: only the missing run is launched again
  os.remove(root / rows[1]["run"] / "final_metrics.json")
  assert sweep_lib.main(argv) == 0
  assert (root / "calls.txt").read_text().split()[4:] == [rows[1]["run"]]

  # dry run prints the command lines and runs nothing
  assert sweep_lib.main([f"--config={config}", "--sweep=lr", f"--workdir_root={tmp / 'dry'}", "--module=fake_main",
                         "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "-m fake_main" in out and "--config.optim.lr_base=0.004" in out and not (tmp / "dry").exists()

  # plot: eval_top1 vs macs, one line per dropout value
  png = tmp / "plot.png"
  assert plot_lib.main([str(root / "results.csv"), "--x", "macs", "--y", "eval_top1", "--group",
                        "model.dropout_rate", "--out", str(png)]) == 0
  data = png.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  import matplotlib.image
  img = matplotlib.image.imread(str(png))
  assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not a blank canvas
  pts = plot_lib.read_points(str(root / "results.csv"), "macs", "eval_top1", "run", "model.dropout_rate")
  assert sorted(pts) == ["0.1", "0.3"] and [p[0] for p in pts["0.1"]] == pytest.approx([2e6, 3e6])
  with pytest.raises(ValueError, match="x='flops'"):
    plot_lib.read_points(str(root / "results.csv"), "flops", "eval_top1")


def test_failed_run_recorded_and_cli(env):
  tmp, config = env
  root = tmp / "fail"
  assert sweep_lib.main([f"--config={config}", "--sweep=fail", f"--workdir_root={root}", "--module=fake_main"]) == 1
  rows = _rows(root / "results.csv")
  assert [r["status"] for r in rows] == ["done", "failed (exit 5)", "done"]
  assert rows[1]["eval_top1"] == ""
  assert sweep_lib.main([f"--config={config}", "--sweep=typo", f"--workdir_root={root}", "--module=fake_main"]) == 2
  # the real CLI entry points, as a user runs them
  out = subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={config}", "--sweep=lr",
                        f"--workdir_root={tmp / 'cli'}", "--module=fake_main"], cwd=REPO, capture_output=True,
                       text=True, timeout=80, env=os.environ)
  assert out.returncode == 0, out.stderr
  assert len(_rows(tmp / "cli" / "results.csv")) == 3
  out = subprocess.run([sys.executable, "-m", "launch.plot", str(tmp / "cli" / "results.csv"), "--x", "macs",
                        "--y", "eval_top1", "--out", str(tmp / "p.png")], cwd=REPO, capture_output=True, text=True,
                       timeout=80)
  assert out.returncode == 0, out.stderr
  assert (tmp / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_tpu_backend_dry_run(env, capsys):
  tmp, config = env
  assert sweep_lib.main([f"--config={config}", "--sweep=lr", f"--workdir_root=gs://b/sweeps/lr", "--backend=tpu",
                         "--tpu_name=pod", "--zone=us-central2-b", "--accelerator_type=v4-32", "--dry-run",
                         "--no_validate"]) == 0  # a toy config effnet.main could not train
  lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("gcloud")]
  assert len(lines) == 3 and all("tpu-vm ssh pod" in x and "--worker=all" in x for x in lines)
  assert "--workdir=gs://b/sweeps/lr/optim.lr_base=0.064" in lines[2]
  assert "--config.optim.lr_base=0.064" in lines[2] and "--config.distributed.initialize=auto" in lines[2]


def test_summary_groups_seeds_into_mean_and_std(tmp_path):
  """Runs that differ only in train.seed form one row: mean and sample std (statistics.stdev) of each metric;
  an unfinished run is counted as missing, not averaged; the markdown shows top-1 in percent."""
  recs = [
      {"overrides": {"train.seed": 0}, "status": "done", "metrics": {"eval_top1": 0.98, "train_step_s": 10.0}},
      {"overrides": {"train.seed": 1}, "status": "done", "metrics": {"eval_top1": 0.96, "train_step_s": 12.0}},
      {"overrides": {"progressive.enabled": True, "train.seed": 0}, "status": "done",
       "metrics": {"eval_top1": 0.965, "train_step_s": 6.0}},
      {"overrides": {"progressive.enabled": True, "train.seed": 1}, "status": "failed (exit 1)", "metrics": {}},
  ]
  rows = sweep_lib.summarize(recs)
  assert [r["setting"] for r in rows] == ["base", "progressive.enabled=true"]
  assert rows[0]["runs"] == 2 and rows[0]["missing"] == 0
  assert abs(rows[0]["eval_top1_mean"] - 0.97) < 1e-12 and abs(rows[0]["eval_top1_std"] - 0.02 ** 0.5 / 10) < 1e-12
  assert rows[0]["train_step_s_std"] == pytest.approx(2.0 ** 0.5)
  assert rows[1]["runs"] == 1 and rows[1]["missing"] == 1 and rows[1]["eval_top1_std"] == 0.0
  text = sweep_lib.write_summary(str(tmp_path), rows)
  assert rows[1]["eval_top1_vs_first"] == pytest.approx(-0.005)
  assert rows[1]["train_step_s_vs_first"] == pytest.approx(6 / 11)
  assert "| base | 2 | 97.00 ± 1.41 | 11.0 ± 1.4 | +0.00 | 1.00 |" in text
  assert "| progressive.enabled=true | 1 | 96.50 ± 0.00 | 6.0 ± 0.0 | -0.50 | 0.55 |" in text
  assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("setting,runs,missing,eval_top1_mean")
  from launch import plot
  assert plot.plot_summary(rows, str(tmp_path / "s.png")).endswith("s.png") and (tmp_path / "s.png").stat().st_size


# Fake entry module for the run loop's modes: records the device it was given and when it ran.
FAKE_DEVICE_MAIN = textwrap.dedent('''
  import json, os, sys, time
  flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
  start = time.time()
  time.sleep(1.5)
  os.makedirs(flags["workdir"], exist_ok=True)
  with open(os.path.join(flags["workdir"], "final_metrics.json"), "w") as f:
    json.dump(dict(device=os.environ.get("FAKE_DEVICE", ""), start=start, end=time.time()), f)
''')


def test_local_workers_get_one_device_each(env, capsys):
  """`--devices=0,1`: two runs at a time, each seeing only its worker's device through --device_env."""
  tmp, config = env
  (tmp / "fake_device_main.py").write_text(FAKE_DEVICE_MAIN)
  root = tmp / "devices"
  argv = [f"--config={config}", "--sweep=lr", f"--workdir_root={root}", "--module=fake_device_main",
          "--devices=0,1", "--device_env=FAKE_DEVICE"]
  assert sweep_lib.main([*argv, "--dry-run"]) == 0
  lines = [x for x in capsys.readouterr().out.splitlines() if "-m fake_device_main" in x]
  assert len(lines) == 3 and all(x.startswith("env FAKE_DEVICE=") for x in lines)
  assert sweep_lib.main(argv) == 0
  runs = [json.loads((root / r["run"] / "final_metrics.json").read_text()) for r in _rows(root / "results.csv")]
  assert all(m["device"] in ("0", "1") for m in runs)
  first, second = runs[0], runs[1]
  assert max(first["start"], second["start"]) < min(first["end"], second["end"])  # they ran at the same time
  assert {first["device"], second["device"]} == {"0", "1"}


def test_stop_on_failure_starts_nothing_after_a_failure(env):
  tmp, config = env
  root = tmp / "stop"
  assert sweep_lib.main([f"--config={config}", "--sweep=fail", f"--workdir_root={root}", "--module=fake_main",
                         "--stop_on_failure"]) == 1
  assert [r["status"] for r in _rows(root / "results.csv")] == ["done", "failed (exit 5)", "missing"]


def test_tpu_slice_per_run_dry_run(env, capsys):
  """--tpu_per_run: run i gets its own slice NAME-i, created, set up and started detached."""
  _, config = env
  assert sweep_lib.main([f"--config={config}", "--sweep=lr", "--workdir_root=gs://b/sweeps/lr", "--backend=tpu",
                         "--tpu_name=pod", "--tpu_per_run", "--spot", "--zone=us-central2-b", "--dry-run",
                         "--no_validate"]) == 0  # a toy config effnet.main could not train
  lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("gcloud")]
  creates = [x for x in lines if " tpu-vm create " in x]
  assert [x.split()[5] for x in creates] == ["pod-0", "pod-1", "pod-2"] and all("--spot" in x for x in creates)
  runs = [x for x in lines if "effnet.main" in x]
  assert len(runs) == 3 and all("nohup" in x for x in runs) and "tpu-vm ssh pod-2" in runs[2]


@pytest.mark.parametrize("kw, field", [
    (dict(kind="gpu"), "backend"),
    (dict(kind="tpu"), "tpu_names/zone"),
    (dict(workers=0), "workers"),
    (dict(workers=3, devices=("0",)), "devices"),
    (dict(kind="tpu", tpu_names=("a", "b"), zone="z", tpu_per_run=True), "tpu_names"),
    (dict(kind="tpu", tpu_names=("a",), zone="z", tpu_per_run=True, retry_preempted=1), "retry_preempted"),
    (dict(kind="tpu", tpu_names=("a",), zone="z", devices=("0",)), "devices: only with --backend=local")])
def test_backend_rejects_bad_settings(kw, field):
  from launch import runs as runs_lib
  with pytest.raises(ValueError, match=field):
    runs_lib.Backend(**kw)
  assert runs_lib.Backend(devices=("0", "1", "2")).slots == 3
  assert runs_lib.Backend("tpu", tpu_names=("s0", "s1"), zone="z").slots == 2


def test_cli_split_at_double_dash():
  from launch import cli
  assert cli.split_passthrough(["--a=1", "--", "--b", "--", "c"]) == (["--a=1"], ["--b", "--", "c"])
  assert cli.split_passthrough(["--a=1"]) == (["--a=1"], [])


def test_runs_share_one_compile_cache_unless_one_is_named():
  """Every point gets ROOT/jax_cache, so a shape compiles once per sweep; a cache named after `--` or by a point,
  or a config without the field, is left alone."""
  from effnet import config_lib
  config = config_lib.base_config()
  flag = "--config.train.compile_cache_dir"
  assert sweep_lib.with_shared_compile_cache("gs://b/s", config, ["--config.train.seed=1"]) == [
      "--config.train.seed=1", f"{flag}=gs://b/s/jax_cache"]
  assert sweep_lib.with_shared_compile_cache("/r", config, [f"{flag}=/mine"]) == [f"{flag}=/mine"]
  assert sweep_lib.with_shared_compile_cache("/r", config, [], [{"train.compile_cache_dir": "/x"}]) == []
  import ml_collections
  assert sweep_lib.with_shared_compile_cache("/r", ml_collections.ConfigDict({"train": {"batch_size": 8}}), []) == []
  assert sweep_lib.with_shared_compile_cache("/r", None, ["--x=1"]) == ["--x=1"]
