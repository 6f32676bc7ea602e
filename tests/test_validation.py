"""Every mistake is caught before anything is created, copied, submitted or loaded (issue 12, points 4 and 6).

Each launcher (tpu, slurm, local, sweep, grid search, search) loads and validates the config a run would get here,
also with --dry-run: a bad config file, arg, override or sweep point exits 2 naming it, and the fake gcloud / sbatch
/ tar on PATH record that nothing ran. TPU accelerator types are checked against the slice sizes of the Cloud TPU
docs. effnet.main gives one `error:` line (no traceback) for a typo'd field and for a workdir it cannot write.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from effnet import apply_override, config_lib, load_config
from effnet import workdir as workdir_lib
from launch import grid_search as grid_lib
from launch import local as local_lib
from launch import runs as runs_lib
from launch import search as search_lib
from launch import slurm as slurm_lib
from launch import sweep as sweep_lib
from launch import tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
  """gcloud, sbatch and tar on PATH that only record that they were called; returns the record file."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls.txt"
  for exe in ("gcloud", "sbatch", "tar"):
    (bin_dir / exe).write_text(f"#!/bin/sh\necho {exe} \"$@\" >> {calls}\n")
    (bin_dir / exe).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.chdir(REPO)
  return calls


def _fails(main, argv, capsys, *wanted):
  """main(argv) exits 2 with one `error:` line holding every `wanted` text, and prints no command."""
  assert main(argv) == 2
  out, err = capsys.readouterr()
  assert err.startswith("error: ") and all(w in err for w in wanted), err
  assert not [line for line in out.splitlines() if line and not line.startswith("#")], out
  return err


TPU_UP = ["up", "t-v4", "--zone=us-central2-b", "--workdir=gs://b/w"]


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("after_dash, wanted", [
    (["--config=configs/nope.py"], ["no such file", "configs/nope.py"]),
    (["--config=configs/demo.py:phi=abc"], ["phi='abc'", "a number"]),
    (["--config=configs/demo.py", "--config.train.totl_steps=5"],
     ["train.totl_steps", "did you mean train.total_steps"]),
    (["--config=configs/demo.py", "--config.train.total_steps=0"], ["train.total_steps=0", "None or >= 1"]),
])
def test_tpu_checks_the_config_before_creating_a_slice(fake_tools, capsys, tmp_path, dry, after_dash, wanted):
  argv = [*TPU_UP, f"--log_file={tmp_path / 'log'}", *(["--dry-run"] if dry else []), "--", *after_dash]
  _fails(tpu.main, argv, capsys, *wanted)
  assert not fake_tools.exists() and not (tmp_path / "log").exists()


def test_tpu_run_and_good_config_still_go(fake_tools, capsys, tmp_path):
  _fails(tpu.main, ["run", "t-v4", "--zone=us-central2-b", "--workdir=gs://b/w", "--config=configs/nope.py",
                    "--dry-run"], capsys, "configs/nope.py")
  assert tpu.main([*TPU_UP, "--dry-run", "--", "--config=configs/demo.py", "--config.train.total_steps=5"]) == 0
  assert not fake_tools.exists()


@pytest.mark.parametrize("dry", [True, False])
def test_slurm_checks_before_writing_or_submitting(fake_tools, capsys, tmp_path, dry):
  out = tmp_path / "job.sbatch"
  argv = ["--submit", f"--out={out}", *(["--dry-run"] if dry else []), "--", "--config=configs/demo.py",
          f"--workdir={tmp_path / 'w'}", "--config.train.keep_checkpoints=0"]
  _fails(slurm_lib.main, argv, capsys, "train.keep_checkpoints=0", ">= 1")
  assert not out.exists() and not fake_tools.exists()


@pytest.mark.parametrize("dry", [True, False])
def test_local_checks_before_starting_processes(fake_tools, capsys, tmp_path, dry):
  argv = [f"--log_dir={tmp_path / 'logs'}", *(["--dry-run"] if dry else []), "--",
          "--config=configs/efficientnet.py:b0,runlocal=maybe", f"--workdir={tmp_path / 'w'}"]
  _fails(local_lib.main, argv, capsys, "runlocal='maybe'", "runlocal=true")
  assert not (tmp_path / "logs").exists() and not (tmp_path / "w").exists()


SWEEP_CONFIG = textwrap.dedent('''
  import importlib.util
  _spec = importlib.util.spec_from_file_location("_demo", "configs/demo.py")
  _demo = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(_demo)
  get_config = _demo.get_config

  def sweep(name=None):
    return [{"optim.lr_base": 0.01}, {"optim.lr_base": -1.0}, {"train.keep_checkpoints": 2}]
''')


@pytest.mark.parametrize("dry", [True, False])
def test_sweep_names_the_point_that_makes_the_config_invalid(fake_tools, capsys, tmp_path, dry):
  cfg = tmp_path / "sweep_cfg.py"
  cfg.write_text(SWEEP_CONFIG)
  root = tmp_path / "sweeps"
  dry_flag = ["--dry-run"] if dry else []
  _fails(sweep_lib.main, [f"--config={cfg}", f"--workdir_root={root}", *dry_flag], capsys,
         "run optim.lr_base=-1.0", "optim.lr_base=-1.0; allowed: > 0")
  _fails(sweep_lib.main, [f"--config={cfg}", f"--workdir_root={root}", *dry_flag, "--",
                          "--config.optim.lr_bse=1"], capsys, "optim.lr_bse", "did you mean optim.lr_base")
  assert not root.exists() and not fake_tools.exists()


def test_grid_search_checks_the_base_and_its_overrides(fake_tools, capsys, tmp_path):
  root = tmp_path / "grid"
  common = [f"--workdir_root={root}", "--no_stats", "--candidates=1.2,1.1,1.15"]
  _fails(grid_lib.main, ["--base=configs/demo.py:phi=x", *common], capsys, "phi='x'")
  _fails(grid_lib.main, ["--base=configs/demo.py", *common, "--dry-run", "--", "--config.train.eval_batch_size=0"],
         capsys, "train.eval_batch_size=0")
  _fails(grid_lib.main, ["--base=configs/demo.py", *common, "--backend=tpu", "--tpu_names=s0", "--zone=z",
                         "--accelerator_type=v5litepod-2"], capsys, "accelerator_type='v5litepod-2'")
  assert not root.exists() and not fake_tools.exists()


@pytest.mark.parametrize("dry", [True, False])
def test_search_checks_every_candidate_before_writing_the_store(fake_tools, capsys, tmp_path, dry):
  wd = tmp_path / "search"
  argv = ["--config=configs/search_space.py:tiny", f"--workdir={wd}", "--set", "search.num_candidates=2",
          "--set", "proxy.batch_size=-4", *(["--dry-run"] if dry else [])]
  _fails(search_lib.main, argv, capsys, "run reference", "train.batch_size=-4")
  assert not wd.exists() and not fake_tools.exists()


# ---- accelerator types: the slice sizes of cloud.google.com/tpu/docs/{v2,v3,v4,v5p,v5e,v6e} ----
VALID = ["v2-8", "v2-32", "v2-512", "v3-64", "v3-2048", "v4-8", "v4-16", "v4-64", "v4-128", "v4-384", "v4-4096",
         "v5p-8", "v5p-32", "v5p-12288", "v5litepod-1", "v5litepod-4", "v5litepod-256", "v6e-1", "v6e-16", "v6e-256"]
INVALID = ["v2-16", "v2-64", "v3-16", "v3-4096", "v4-7", "v4-4", "v4-96", "v4-8320", "v5p-4", "v5p-100",
           "v5p-12416", "v5litepod-2", "v5litepod-12", "v5litepod-512", "v6e-2", "v6e-512"]


def test_accelerator_types_against_the_documented_slice_sizes():
  for t in VALID:
    tpu.Slice("s", "z", t)
  for t in INVALID:
    gen = t.rsplit("-", 1)[0]
    with pytest.raises(ValueError) as e:
      tpu.Slice("s", "z", t)
    msg = str(e.value)
    assert msg.startswith(f"accelerator_type='{t}'") and f"no {gen} slice" in msg and "allowed sizes" in msg, msg
  assert "8, 32, 128, 256, 512" in str(pytest.raises(ValueError, tpu.num_hosts, "v2-16").value)
  # workers per slice, from the docs' tables: v5p "2x2x2: 16 cores, 2 hosts", "4x4x4: 128 cores, 16 hosts",
  # "16x16x24: 12288 cores, 1536 hosts"; v6e "4x4: 16 chips, 4 VMs", "16x16: 256 chips, 64 VMs"; v4 "2x2x1: 1 host"
  assert [tpu.num_hosts(t) for t in ("v5p-16", "v5p-128", "v5p-12288", "v6e-16", "v6e-256", "v6e-8", "v4-8")] == \
      [2, 16, 1536, 4, 64, 1, 1]


# ---- point 6: each field checked before anything loads, every message naming the field ----
@pytest.mark.parametrize("value", [0, -5])
def test_total_steps_zero_or_negative_is_rejected_none_is_unset(value, tmp_path):
  c = load_config("configs/demo.py")
  c.train.total_steps = value
  with pytest.raises(ValueError, match=rf"train\.total_steps={value}; allowed: None or >= 1"):
    config_lib.validate(c)
  from effnet import train
  with pytest.raises(ValueError, match=r"train\.total_steps"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # before the workdir, the devices or the dataset
  c.train.total_steps = None  # unset: the length comes from train.num_epochs
  config_lib.validate(c)


def test_typo_in_an_override_names_the_full_path_and_the_closest_fields():
  c = load_config("configs/demo.py")
  with pytest.raises(ValueError) as e:
    apply_override(c, "train.totl_steps=5")
  assert str(e.value).startswith("train.totl_steps: no such config field; did you mean train.total_steps?")
  with pytest.raises(ValueError, match=r"^trian\.total_steps: no such config field; did you mean train\?"):
    apply_override(c, "trian.total_steps=5")
  with pytest.raises(ValueError, match=r"^train\.seed\.x: no such config field; train\.seed is a value \(0\)"):
    apply_override(c, "train.seed.x=1")
  import ml_collections
  s = ml_collections.ConfigDict({"nest": {"inner": {"depth": 1}}})  # a section inside a section
  with pytest.raises(ValueError, match=r"^nest\.inner\.dept: no such config field; did you mean nest\.inner\.depth"):
    apply_override(s, "nest.inner.dept=2")


@pytest.mark.parametrize("spec, wanted", [
    ("configs/demo.py:phi=abc", "config arg phi='abc' in 'phi=abc'; allowed: a number, e.g. phi=-3.0"),
    ("configs/efficientnet.py:phi=abc", "config arg phi='abc' in 'phi=abc'; allowed: a number, e.g. phi=1.5"),
    ("configs/efficientnetv2.py:s,runlocal=maybe", "config arg runlocal='maybe'"),
    ("configs/demo.py:epochs=ten", "config arg epochs='ten'"),
])
def test_config_arg_values_name_the_arg_and_what_it_allows(spec, wanted):
  with pytest.raises(ValueError) as e:
    load_config(spec)
  assert wanted in str(e.value)


def test_workdir_that_is_a_file_or_unwritable(tmp_path):
  f = tmp_path / "a_file"
  f.write_text("x")
  with pytest.raises(ValueError, match=r"workdir='.*a_file' is an existing file, not a directory; allowed"):
    workdir_lib.check_usable(str(f))
  with pytest.raises(ValueError, match=r"workdir='.*a_file/run' cannot be created: .*a_file is a file"):
    workdir_lib.check_usable(str(f / "run"))
  # /sys refuses new files even for root (sysfs), where chmod would not stop root
  with pytest.raises(ValueError, match=r"workdir='/sys/effnet_run' is not writable: cannot create a file in /sys"):
    workdir_lib.check_usable("/sys/effnet_run")
  workdir_lib.check_usable(str(tmp_path / "new" / "run"))  # to be created: fine, and nothing is created
  workdir_lib.check_usable("gs://bucket/run")
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "effnet.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def test_main_gives_one_error_line_no_traceback(tmp_path):
  proc = _main("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", "--config.train.totl_steps=5")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: train.totl_steps: no such config field; did you mean train.total_steps?")
  (tmp_path / "file").write_text("x")
  proc = _main("--config=configs/demo.py", f"--workdir={tmp_path / 'file'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert f"error: workdir='{tmp_path / 'file'}' is an existing file" in proc.stderr
  assert not (tmp_path / "run").exists()


def test_one_path_helper_for_workdirs():
  """launch.runs, effnet.search.candidates and the search worker open workdirs through effnet.workdir.as_path."""
  from effnet.search import candidates
  assert runs_lib.as_path is workdir_lib.as_path and candidates.path is workdir_lib.as_path
  with open(os.path.join(REPO, "effnet", "search", "worker.py")) as f:  # an entry module (flags): not imported here
    worker_source = f.read()
  assert "def _path" not in worker_source and "workdir_lib.as_path(workdir)" in worker_source
  assert workdir_lib.as_path("gs://b/x").as_uri() == "gs://b/x"
  assert str(workdir_lib.as_path("/tmp/x") / "y") == "/tmp/x/y"


def test_search_worker_checks_its_config_like_effnet_main(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "effnet.search.worker", "--config=configs/demo.py",
                         f"--workdir={tmp_path / 'run'}", "--config.train.totl_steps=5"], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: train.totl_steps: no such config field; did you mean train.total_steps?")
  assert not (tmp_path / "run").exists()  # nothing written
