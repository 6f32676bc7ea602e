"""Launchers: gcloud command lines (checked against gcloud's documented synopses, and against the gcloud parser when
the SDK is installed), the preemption retry loop with a fake gcloud, the SLURM script, and the local multi-process
launcher starting 2 JAX processes that compute one cross-process sum together."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from launch import Runner, format_override_value, override_flags
from launch import local as local_lib
from launch import slurm as slurm_lib
from launch import tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Flags per command, copied from the SYNOPSIS of the gcloud reference pages (cloud.google.com/sdk/gcloud/reference/
# compute/tpus/...; SDK 528): only the ones this launcher may use, plus gcloud-wide flags.
DOCUMENTED = {
    ("tpu-vm", "create"): {"--zone", "--version", "--accelerator-type", "--spot", "--preemptible", "--async",
                           "--network", "--subnetwork", "--labels", "--metadata", "--service-account", "--reserved"},
    ("queued-resources", "create"): {"--zone", "--runtime-version", "--accelerator-type", "--node-id", "--spot",
                                     "--guaranteed", "--reserved", "--async", "--network", "--valid-until-duration"},
    ("tpu-vm", "ssh"): {"--zone", "--worker", "--command", "--internal-ip", "--ssh-flag", "--dry-run"},
    ("tpu-vm", "scp"): {"--zone", "--worker", "--recurse", "--compress", "--internal-ip", "--dry-run"},
    ("tpu-vm", "delete"): {"--zone", "--async"},
    ("queued-resources", "delete"): {"--zone", "--async", "--force"},
    ("tpu-vm", "describe"): {"--zone"},
    ("queued-resources", "describe"): {"--zone"},
}
GCLOUD_WIDE = {"--project", "--quiet", "--format", "--verbosity", "--account"}


def _check_documented(argv):
  assert argv[:3] == ["gcloud", "compute", "tpus"], argv
  allowed = DOCUMENTED[(argv[3], argv[4])] | GCLOUD_WIDE
  flags = [a.split("=", 1)[0] for a in argv[5:] if a.startswith("--")]
  assert set(flags) <= allowed, (set(flags) - allowed, argv)
  assert len(flags) == len(set(flags)), argv  # no flag given twice


def _flag(argv, name):
  vals = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(vals) == 1, (name, argv)
  return vals[0]


V4_8 = tpu.Slice("t-v4", "us-central2-b", "v4-8", project="proj")
V5E_8 = tpu.Slice("t-v5e", "us-west4-a", "v5litepod-8", spot=True)
V4_32_QR = tpu.Slice("t-pod", "us-central2-b", "v4-32", spot=True, queued=True, project="proj")
V4_32_PRE = tpu.Slice("t-pod2", "us-central2-b", "v4-32", preemptible=True)


def test_create_commands_argument_by_argument():
  assert V4_8.create() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t-v4", "--zone=us-central2-b",
                           "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base", "--project=proj"]
  assert V5E_8.create() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t-v5e", "--zone=us-west4-a",
                            "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite", "--spot"]
  assert V4_32_PRE.create()[-1] == "--preemptible"
  assert V4_32_QR.create() == ["gcloud", "compute", "tpus", "queued-resources", "create", "t-pod-qr",
                               "--node-id=t-pod", "--zone=us-central2-b", "--accelerator-type=v4-32",
                               "--runtime-version=tpu-ubuntu2204-base", "--spot", "--project=proj"]
  for s in (V4_8, V5E_8, V4_32_QR, V4_32_PRE):
    for argv in (s.create(), s.delete(), s.describe_state(), s.ssh("true"), s.scp_to("/tmp/a", "a")):
      _check_documented(argv)


def test_hosts_and_bad_input():
  # Workers per slice (cloud.google.com/tpu/docs/v4, v5e): v4-8 one host, v4-32 = 16 chips / 4 per host.
  assert [tpu.num_hosts(t) for t in ("v4-8", "v4-32", "v5litepod-8", "v5litepod-16", "v3-32", "v5p-128")] == \
      [1, 4, 1, 4, 4, 16]
  with pytest.raises(ValueError, match="accelerator_type"):
    tpu.Slice("x", "z", "tpu-9000")
  with pytest.raises(ValueError, match="spot/preemptible"):
    tpu.Slice("x", "z", "v4-8", spot=True, preemptible=True)
  with pytest.raises(ValueError, match="preemptible"):
    tpu.Slice("x", "z", "v4-8", preemptible=True, queued=True)
  with pytest.raises(ValueError, match="name"):
    tpu.Slice("Bad_Name", "z")
  with pytest.raises(ValueError, match="detach"):
    tpu.remote_run("r", [], {}, detach="screen")


def test_delete_commands():
  assert V4_8.delete() == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t-v4", "--zone=us-central2-b",
                           "--quiet", "--project=proj"]
  assert V4_32_QR.delete() == ["gcloud", "compute", "tpus", "queued-resources", "delete", "t-pod-qr",
                               "--zone=us-central2-b", "--force", "--quiet", "--project=proj"]


def test_setup_commands_copy_and_install_on_every_worker():
  r = Runner(dry_run=True, stream=open(os.devnull, "w"))
  tpu.do_setup(r, V4_32_QR)
  tar, scp, unpack, install = r.commands
  assert tar[:2] == ["tar", "-czf"] and "--exclude=.venv" in tar and tar[-3:] == ["-C", REPO, "."]
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tar[2]]
  assert scp[6] == "t-pod:effnet_code.tgz" and _flag(scp, "--worker") == "all"
  for ssh in (unpack, install):
    assert ssh[3:6] == ["tpu-vm", "ssh", "t-pod"] and _flag(ssh, "--worker") == "all"
    assert _flag(ssh, "--zone") == "us-central2-b"
  assert shlex.split(_flag(unpack, "--command"))[-4:] == ["-xzf", "effnet_code.tgz", "-C", "effnet_run/code"]
  steps = [shlex.split(s) for s in _flag(install, "--command").split(" && ")]
  assert ["python3.12", "-m", "venv", "effnet_run/venv"] in steps
  assert ["effnet_run/venv/bin/pip", "install", "-q", "-r", "effnet_run/code/requirements.txt"] in steps
  # jax[tpu] pinned to requirements.txt's jax version (one place: tpu.tpu_jax_requirement)
  assert steps[-1] == ["effnet_run/venv/bin/pip", "install", "-q", tpu.tpu_jax_requirement()]
  assert tpu.tpu_jax_requirement().startswith("jax[tpu]")
  r2 = Runner(dry_run=True, stream=open(os.devnull, "w"))
  tpu.do_setup(r2, V4_8, git_repo="https://github.com/x/effnet.git", git_ref="v1; rm -rf /")
  (clone, _) = r2.commands
  cmd = _flag(clone, "--command")
  assert "'v1; rm -rf /'" in cmd  # user input is quoted, never spliced into the remote shell
  assert ["git", "-C", "effnet_run/code", "checkout", "--quiet", "v1; rm -rf /"] in \
      [shlex.split(s) for s in cmd.split(" && ")]


def test_remote_install_makes_a_python312_venv_with_the_pinned_jax_tpu():
  steps = [shlex.split(s) for s in tpu.remote_install("r").split(" && ")]
  assert ["sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-qq", "install", "-y", "python3.12",
          "python3.12-venv"] in steps
  assert ["python3.12", "-m", "venv", "r/venv"] in steps
  with open(os.path.join(REPO, "requirements.txt")) as f:
    jax_pin = next(line.split("==")[1].split()[0] for line in f if line.startswith("jax=="))
  assert tpu.tpu_jax_requirement() == f"jax[tpu]=={jax_pin}"
  assert steps[-1] == ["r/venv/bin/pip", "install", "-q", f"jax[tpu]=={jax_pin}"]
  assert tpu.tpu_jax_requirement(requirements=None).startswith("jax[tpu]")  # no requirements.txt: installed jax


@pytest.mark.parametrize("detach", ["nohup", "tmux", "none"])
def test_run_command_all_workers_with_distributed_flags(detach):
  r = Runner(dry_run=True, stream=open(os.devnull, "w"))
  job = tpu.Job("configs/efficientnetv2.py:s", "gs://b/effnet/run1", ["--config.train.batch_size=4096"],
                tfds_data_dir="gs://b/tfds")
  tpu.do_run(r, V4_32_QR, job, detach)
  (argv,) = r.commands
  _check_documented(argv)
  assert argv[3:6] == ["tpu-vm", "ssh", "t-pod"] and _flag(argv, "--worker") == "all"
  remote = _flag(argv, "--command")
  words = shlex.split(remote)
  (job_word,) = [w for w in words if "effnet.main" in w]  # the job is nested once more (bash -c / tmux)
  job = job_word.removeprefix("set -o pipefail; ").split(" 2>&1 | tee")[0].split(" >> ")[0]
  inner = shlex.split(job)
  assert inner[0] == "env"
  assert "TFDS_DATA_DIR=gs://b/tfds" in inner and "JAX_COMPILATION_CACHE_DIR=gs://b/effnet/jax_cache" in inner
  i = inner.index("-m")
  assert inner[i - 1] == "../venv/bin/python" and inner[i + 1] == "effnet.main"
  assert inner[i + 2:i + 6] == ["--config=configs/efficientnetv2.py:s", "--workdir=gs://b/effnet/run1",
                                "--config.distributed.initialize=auto", "--config.train.batch_size=4096"]
  assert words[:2] == ["cd", "effnet_run/code"]
  if detach == "nohup":
    assert "nohup" in words and remote.rstrip().endswith("&")
  if detach == "tmux":
    assert ["tmux", "new-session", "-d", "-s", "effnet"] == words[words.index("new-session") - 1:][:5]


def test_up_dry_run_cli_runs_nothing(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  marker = tmp_path / "called"
  for exe in ("gcloud", "tar"):
    (bin_dir / exe).write_text(f"#!/bin/sh\necho called >> {marker}\n")
    (bin_dir / exe).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", EFFNET_LAUNCH_LOG=str(tmp_path / "log"))
  out = subprocess.run([PY, "-m", "launch.tpu", "up", "t-pod", "--zone=us-central2-b", "--accelerator_type=v4-32",
                        "--spot", "--queued", "--retry-preempted=2", "--workdir=gs://b/w", "--project=proj",
                        "--dry-run", "--", "--config=configs/efficientnetv2.py:s", "--config.train.num_epochs=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert not marker.exists() and not (tmp_path / "log").exists()
  cmds = [shlex.split(line) for line in out.stdout.splitlines() if line and not line.startswith("#")]
  assert cmds[0] == V4_32_QR.create()
  assert [c[0] for c in cmds] == ["gcloud", "tar", "gcloud", "gcloud", "gcloud", "gcloud"]
  assert "--config.distributed.initialize=auto" in _flag(cmds[-1], "--command")
  assert "--config.train.num_epochs=1" in _flag(cmds[-1], "--command")
  assert "queued-resources delete t-pod-qr" in out.stdout  # the retry plan is printed


FAKE_GCLOUD = r'''#!{py}
import json, os, sys
d = os.environ["FAKE_GCLOUD_DIR"]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\n")
state_file = os.path.join(d, "state")
state = open(state_file).read() if os.path.exists(state_file) else "READY"
args = sys.argv[1:]
if args[3] == "describe":
  print(state); sys.exit(0)
if args[3] == "create":
  open(state_file, "w").write("READY"); sys.exit(0)
if args[3] == "ssh" and "effnet.main" in " ".join(args):
  runs = os.path.join(d, "runs")
  n = int(open(runs).read()) if os.path.exists(runs) else 0
  open(runs, "w").write(str(n + 1))
  if n == 0:  # first run: the slice is preempted under it
    open(state_file, "w").write("PREEMPTED"); sys.exit(255)
sys.exit(0)
'''


def test_up_retry_after_preemption_with_fake_gcloud(tmp_path, capsys):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD.replace("{py}", PY))
  (bin_dir / "gcloud").chmod(0o755)
  old_path = os.environ["PATH"]
  os.environ["PATH"] = f"{bin_dir}:{old_path}"
  os.environ["FAKE_GCLOUD_DIR"] = str(tmp_path)
  try:
    code = tpu.main(["up", "t-v4", "--zone=us-central2-b", "--accelerator_type=v4-8", "--spot",
                     "--retry-preempted=2", "--workdir=gs://b/w", f"--log_file={tmp_path / 'cmds.log'}", "--",
                     "--config=configs/efficientnetv2.py:s"])
  finally:
    os.environ["PATH"] = old_path
    del os.environ["FAKE_GCLOUD_DIR"]
    tarball = os.path.join(tempfile.gettempdir(), "effnet-code-t-v4.tgz")  # the real tar ran; remove its output
    if os.path.exists(tarball):
      os.remove(tarball)
  assert code == 0
  calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
  verbs = [f"{c[2]} {c[3]}" for c in calls]
  # create, setup (scp, unpack, install), run -> preempted, describe, delete, create, setup, run -> ok
  assert verbs == ["tpu-vm create", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm describe",
                   "tpu-vm delete", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh"]
  run_calls = [c for c in calls if "effnet.main" in " ".join(c)]
  assert len(run_calls) == 2 and run_calls[0] == run_calls[1]  # same command, same workdir -> resumes
  logged = (tmp_path / "cmds.log").read_text()
  assert logged.count("gcloud compute tpus tpu-vm create t-v4") == 2 and "exit status 255" in logged


@pytest.mark.skipif(shutil.which("gcloud") is None or "fake" in (shutil.which("gcloud") or ""),
                    reason="Google Cloud SDK not installed")
def test_gcloud_parser_accepts_every_command(tmp_path):
  """gcloud parses flags before it needs credentials: exit 2 + 'unrecognized arguments' is a syntax error; with an
  empty config dir a well-formed command stops at 'no active account' (exit 1). Nothing reaches the network."""
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / "cfg"), CLOUDSDK_CORE_DISABLE_PROMPTS="1")
  r = Runner(dry_run=True, stream=open(os.devnull, "w"))
  job = tpu.Job("configs/efficientnetv2.py:s", "gs://b/w")
  for s in (V4_8, V5E_8, V4_32_QR, V4_32_PRE):
    s = tpu.Slice(**{**s.__dict__, "project": "proj"})
    r.commands += [s.create(), s.delete(), s.describe_state()]
    tpu.do_setup(r, s)
    tpu.do_run(r, s, job, "nohup")
  cmds = [c for c in r.commands if c[0] == "gcloud"]
  assert len(cmds) == 4 * 7
  shapes = {}  # one command per (verb, flag names): same syntax, different values, need not be parsed twice
  for c in cmds:
    shapes.setdefault((tuple(c[3:5]), tuple(sorted(a.split("=")[0] for a in c if a.startswith("--")))), c)
  cmds = list(shapes.values())
  bad = subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "create", "x", "--zone=z", "--version=v",
                        "--accelerator-typo=v4-8"], env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr  # the check can fail
  for c in cmds:
    r2 = subprocess.run(c, env=env, capture_output=True, text=True, timeout=120)
    assert r2.returncode != 2 and "unrecognized" not in r2.stderr and "argument" not in r2.stderr.split("\n")[0], \
        (c, r2.stderr)
    assert "active account" in r2.stderr or "credential" in r2.stderr.lower(), (c, r2.stderr)


def test_slurm_script(tmp_path):
  args = ["--config=configs/efficientnetv2.py:s", "--workdir=/shared/w"]
  s = slurm_lib.sbatch_script(args, nodes=2, gpus_per_node=8, partition="gpu", tfds_data_dir="/shared/tfds",
                              repo_dir="/home/me/effnet")
  lines = s.splitlines()
  assert lines[0] == "#!/bin/bash"
  for want in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8", "#SBATCH --partition=gpu",
               "cd /home/me/effnet", "source .venv/bin/activate", "export TFDS_DATA_DIR=/shared/tfds"):
    assert want in lines, want
  srun = shlex.split([line for line in lines if line.startswith("srun")][0])
  assert srun[:5] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "effnet.main"]
  assert srun[5:] == args + ["--config.distributed.initialize=auto"]
  assert not any("JAX_LOCAL_DEVICE_IDS" in x for x in lines)
  node = slurm_lib.sbatch_script(args, nodes=4, gpus_per_node=4, mode="per_node").splitlines()
  assert "#SBATCH --ntasks-per-node=1" in node and "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in node
  p = tmp_path / "x.sbatch"
  p.write_text(s)
  assert subprocess.run(["bash", "-n", str(p)]).returncode == 0
  with pytest.raises(ValueError, match="mode"):
    slurm_lib.sbatch_script(args, mode="per_rack")
  with pytest.raises(ValueError, match="workdir"):
    slurm_lib.sbatch_script(["--config=c.py"])
  out = subprocess.run([PY, "-m", "launch.slurm", "--nodes=2", "--dry-run", f"--out={tmp_path / 'y'}", "--", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0 and "#SBATCH --nodes=2" in out.stdout and not (tmp_path / "y").exists()


def test_override_formatting():
  assert override_flags({"optim.lr_base": 0.01, "model.blocks": ["a", "b"], "data.cache": True,
                         "data.augment": "randaugment"}) == [
      "--config.optim.lr_base=0.01", "--config.model.blocks=('a', 'b')", "--config.data.cache=true",
      "--config.data.augment=randaugment"]
  assert format_override_value(1e-5) == "1e-05"
  with pytest.raises(ValueError, match="override key"):
    override_flags({"--x": 1})


FAKE_DISTRIBUTED = textwrap.dedent('''
  """Fake entry point: joins jax.distributed like effnet.main and computes a global sum over both processes."""
  import json, os, sys, time
  flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
  pid = int(flags["config.distributed.process_id"])
  mode = flags.get("mode", "sum")
  if mode == "fail":
    if pid == 1:
      sys.exit(3)
    time.sleep(120)
  if mode == "hang":
    time.sleep(120)
  import jax
  import numpy as np
  jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))
  jax.distributed.initialize(flags["config.distributed.coordinator_address"],
                             int(flags["config.distributed.num_processes"]), pid)
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  local = np.arange(4, dtype=np.float32) + 10 * jax.process_index()  # this process's rows of the global batch
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
  total = jax.jit(lambda a: (a * a).sum(), out_shardings=NamedSharding(mesh, P()))(x)
  out = dict(total=float(np.asarray(total.addressable_data(0))), shape=list(x.shape),
             devices=jax.device_count(), local_devices=jax.local_device_count(), processes=jax.process_count())
  with open(os.path.join(flags["workdir"], f"result_{pid}.json"), "w") as f:
    json.dump(out, f)
  print("done", out, flush=True)
  jax.distributed.shutdown()
''')


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
  (tmp_path / "fake_dist_entry.py").write_text(FAKE_DISTRIBUTED)
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  return "fake_dist_entry"


@pytest.mark.multiprocess
def test_local_launcher_two_processes_compute_together(tmp_path, fake_module, capsys):
  code = local_lib.main(["--num_processes", "2", "--cpu_devices_per_process", "2", "--module", fake_module,
                         "--timeout", "80", "--log_dir", str(tmp_path / "logs"), "--",
                         "--config=configs/x.py", f"--workdir={tmp_path}"])
  out = capsys.readouterr().out
  assert code == 0, out
  r0 = json.loads((tmp_path / "result_0.json").read_text())
  r1 = json.loads((tmp_path / "result_1.json").read_text())
  # global batch = [0,1,2,3] from process 0 and [10,11,12,13] from process 1: sum of squares by hand = 14 + 534
  assert r0 == r1 == {"total": 548.0, "shape": [8], "devices": 4, "local_devices": 2, "processes": 2}
  assert "[0] done" in out and "[1] done" in out  # log lines are prefixed with the process id
  assert (tmp_path / "logs" / "process_1.log").read_text().startswith("") and \
      "done" in (tmp_path / "logs" / "process_1.log").read_text()


def test_local_launcher_failure_and_timeout_kill_the_rest(tmp_path, fake_module, capsys):
  import time
  t = time.monotonic()
  code = local_lib.launch(["--mode=fail", f"--workdir={tmp_path}"], 2, fake_module, timeout_s=60)
  assert code == 3 and time.monotonic() - t < 30  # process 0 (sleeping) was killed, not waited for
  t = time.monotonic()
  code = local_lib.launch(["--mode=hang", f"--workdir={tmp_path}"], 2, fake_module, timeout_s=1.5)
  assert code == 124 and time.monotonic() - t < 20
  cmds = local_lib.process_commands(2, ["--workdir=w"], 1234, "m", python="py")
  assert cmds[1] == ["py", "-m", "m", "--workdir=w", "--config.distributed.initialize=yes",
                     "--config.distributed.coordinator_address=127.0.0.1:1234",
                     "--config.distributed.num_processes=2", "--config.distributed.process_id=1"]
  assert local_lib.process_env(1, gpus_per_process=2, base={})["CUDA_VISIBLE_DEVICES"] == "2,3"
  with pytest.raises(ValueError, match="num_processes"):
    local_lib.process_commands(0, [], 1)
