"""Child processes of the training-engine tests (test_train, test_distributed, test_resume) and readers of what they
leave behind. The tiny config and the data / cache fixtures they share are in conftest.py.

Why a helper module: the engine tests need the same way to run `train_and_evaluate` in a fresh process (a fresh
process is the only way to choose the number of fake CPU devices, to start `jax.distributed`, or to SIGKILL /
SIGTERM a run), and the same readers for what a run leaves in its workdir (per-step TensorBoard scalars,
checkpoints).

Run as a script it is the child process of those tests:

    python tests/_train_helpers.py WORKDIR '{"train.total_steps": 8, ...}' [--kill_after_step=N] [--emulate_hosts=2]
        [--forbid_compile]

It trains the tiny config (plus the JSON overrides) and prints one line `FINAL_METRICS {json}`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import DIGITS_TEST_SIZE, JAX_CACHE_FLAGS, REPO, tiny_config  # noqa: F401  (read through here)

PYTHON = sys.executable
FINAL_PREFIX = 'FINAL_METRICS '


def child_env(num_devices: int = 1, extra: dict | None = None) -> dict:
  """Environment of a child JAX process with `num_devices` fake CPU devices."""
  env = dict(os.environ)
  env.pop('JAX_NUM_CPU_DEVICES', None)
  env.update({'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': REPO,
              'XLA_FLAGS': f'--xla_force_host_platform_device_count={num_devices}'})
  env.update(extra or {})
  return env


def child_command(workdir, overrides: dict | None = None, *flags: str) -> list[str]:
  return [PYTHON, os.path.abspath(__file__), os.fspath(workdir), json.dumps(overrides or {}), *flags]


def run_child(workdir, overrides: dict | None = None, *flags: str, num_devices: int = 1, timeout: float = 300,
              check: bool = True) -> subprocess.CompletedProcess:
  """Runs the tiny config in a fresh process; returns the completed process (stdout/stderr as text)."""
  proc = subprocess.run(child_command(workdir, overrides, *flags), env=child_env(num_devices), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'child exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n'
                         f'--- stderr\n{proc.stderr[-8000:]}')
  return proc


def final_metrics(proc: subprocess.CompletedProcess) -> dict:
  for line in proc.stdout.splitlines():
    if line.startswith(FINAL_PREFIX):
      return json.loads(line[len(FINAL_PREFIX):])
  raise AssertionError(f'no {FINAL_PREFIX.strip()} line\n--- stdout\n{proc.stdout[-4000:]}\n'
                       f'--- stderr\n{proc.stderr[-8000:]}')


def kill_group(proc: subprocess.Popen) -> None:
  """SIGKILLs a child started with start_new_session=True (and everything it started); no-op if it ended."""
  if proc.poll() is None:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()


def scalars(workdir, tag: str) -> dict[int, float]:
  """{step: value} of one scalar tag from the TensorBoard event files of `workdir` (host 0 writes them)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(workdir)):
    if not name.startswith('events.out.tfevents'):
      continue
    for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
      for v in event.summary.value:
        if v.tag == tag:
          out[int(event.step)] = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') else float(v.simple_value)
  return out


def abstract_train_state(config):
  """The engine's restore target for `config` (shapes only; replicated over this process's devices)."""
  from effnet import models, optim, parallel  # pylint: disable=g-import-not-at-top
  from effnet import state as state_lib  # pylint: disable=g-import-not-at-top
  module = models.build_model(config.model)
  tx, _ = optim.build_optimizer(config.optim, config.train.batch_size, 100.0, int(config.train.total_steps))
  return state_lib.abstract_state(module, tx, config.data.image_size, parallel.replicated(parallel.make_mesh()))


def checkpoint_steps(workdir) -> list[int]:
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def restore(workdir, config, step: int | None = None):
  """The train state saved at `step` (default: latest) in `workdir`, as numpy leaves."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from effnet import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=1000, use_async=False)
  try:
    state, _ = ck.restore(abstract_train_state(config), step)
  finally:
    ck.close()
  return jax.tree.map(np.asarray, state)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.05) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return predicate()
    time.sleep(poll)
  return False


# ---------------------------------------------------------------------------------------------------------------
# Child process
# ---------------------------------------------------------------------------------------------------------------
def _install_kill_after(step_to_die: int) -> None:
  """SIGKILLs this process right after the train loop hands step `step_to_die` to the checkpointer: a crash at a
  known point, with no chance for Python to clean up (no finally blocks, no final save)."""
  from effnet import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  original = ckpt_lib.Checkpointer.save

  def save(self, step, state, meta=None, force=False):
    out = original(self, step, state, meta=meta, force=force)
    if step == step_to_die:
      os.kill(os.getpid(), signal.SIGKILL)
    return out
  ckpt_lib.Checkpointer.save = save


def _install_emulated_hosts(num_hosts: int) -> None:
  """Makes a single process feed the global batch a `num_hosts`-process run feeds: host i's per-host pipeline
  (tfds.split_for_jax_process slice i, its own shuffle seed), concatenated in process order. The global batch
  then equals the one `jax.make_array_from_process_local_data` assembles in a real multi-process run."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top
  original = pipeline.create_train_dataset

  def create_train_dataset(data_cfg, *, global_batch_size, skip_examples=0, start_epoch=0, **kw):
    del skip_examples, start_epoch  # the emulation is for fresh runs only
    assert kw.get('process_index') is None and kw.get('process_count') is None
    kw.pop('process_index', None), kw.pop('process_count', None)
    parts = [original(data_cfg, global_batch_size=global_batch_size, process_index=i, process_count=num_hosts,
                      **kw) for i in range(num_hosts)]
    return tf.data.Dataset.zip(tuple(parts)).map(
        lambda *bs: {k: tf.concat([b[k] for b in bs], axis=0) for k in bs[0]})
  pipeline.create_train_dataset = create_train_dataset


def _forbid_compile() -> None:
  """Fails loudly if the engine gets as far as creating the state or compiling a step."""
  from effnet import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from effnet import state as state_lib  # pylint: disable=g-import-not-at-top

  def boom(*a, **k):
    raise AssertionError('COMPILED_TOO_EARLY: the engine built the state / compiled before rejecting the config')
  compile_lib.StepCompiler.__init__ = boom
  state_lib.create_train_state = boom


def _main(argv: list[str]) -> int:
  workdir, overrides = argv[0], json.loads(argv[1])
  opts = dict(a[2:].split('=', 1) if '=' in a else (a[2:], '1') for a in argv[2:])
  if 'kill_after_step' in opts:
    _install_kill_after(int(opts['kill_after_step']))
  if 'emulate_hosts' in opts:
    _install_emulated_hosts(int(opts['emulate_hosts']))
  if 'forbid_compile' in opts:
    _forbid_compile()
  from effnet import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(overrides)
  try:
    final = train.train_and_evaluate(config, workdir)
  except (ValueError, FloatingPointError) as e:
    print(f'ERROR {type(e).__name__}: {e}', flush=True)
    return 3
  import jax  # pylint: disable=g-import-not-at-top
  print(FINAL_PREFIX + json.dumps({**final, 'device_count': jax.device_count(),
                                   'process_count': jax.process_count()}), flush=True)
  return 0


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  sys.exit(_main(sys.argv[1:]))
