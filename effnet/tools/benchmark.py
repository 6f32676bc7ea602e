r"""Train-step benchmark on synthetic on-device data (no TensorFlow): images/s, step time, compile seconds,
peak device memory and XLA's FLOP estimate.

  python -m effnet.tools.benchmark --config=configs/efficientnet.py:b0 --batch=256 --image_size=224
  python -m effnet.tools.benchmark --config=configs/efficientnetv2.py:s --batch=128 --image_size=300 --steps=50

The state is created from `eval_shape` shapes straight onto the devices (no jitted `module.init`), the step is
compiled ahead of time (the compile time is reported separately), and timing covers `--steps` steps after
`--warmup` steps, ending with a block on the result. Keep XLA's GPU autotuning on: turning it off makes these
depthwise-heavy nets many times slower.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from effnet import compile as compile_lib
from effnet import config_lib, models, optim, parallel, state as state_lib, steps
from effnet.data.synthetic import synthetic_batches
from effnet import apply_override, load_config


def run(config, batch: int, image_size: int, num_steps: int = 20, warmup: int = 3, repeats: int = 3) -> dict:
  """Benchmarks the compiled train step of `config` at (batch, image_size); returns the figures as a dict."""
  config_lib.validate(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch, mesh, '--batch')
  rep = parallel.replicated(mesh)
  module = models.build_model(config.model)
  tx, schedule = optim.build_optimizer(config.optim, batch, steps_per_epoch=1000.0, total_steps=100_000)
  cfg = steps.StepConfig.from_config(config, models.DTYPES[config.model.dtype], use_mixing=False)
  train_step = steps.make_train_step(module, tx, schedule, cfg)
  eval_step = steps.make_eval_step(module, cfg)

  t0 = time.perf_counter()
  abstract = state_lib.abstract_state(module, tx, image_size, rep)
  state = state_lib.create_train_state(module, tx, image_size, 0, rep)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0

  compiler = compile_lib.StepCompiler(train_step, eval_step, abstract, mesh, steps.hyper_defaults(),
                                      image_dtype=config.data.image_dtype)
  exe = compiler.get('train', image_size, batch)
  compile_s = compiler.compile_seconds[('train', image_size, batch)]
  cost = compiler.cost.get(('train', image_size, batch))
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')

  hyper = jax.device_put(steps.hyper_defaults(config.model.dropout_rate), rep)
  data = synthetic_batches(batch, image_size, config.model.num_classes, sharding=parallel.batch_sharding(mesh),
                           image_dtype=config.data.image_dtype)
  for _ in range(warmup):
    state, m = exe(state, next(data), hyper)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(num_steps):
      state, m = exe(state, next(data), hyper)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / num_steps)
  step_s = statistics.median(times)
  peak = compile_lib.peak_memory_bytes()
  mem = compiler.memory.get(('train', image_size, batch))
  return {
      'model': f'{config.model.family}-{config.model.variant}', 'device': str(jax.devices()[0].device_kind),
      'num_devices': jax.device_count(), 'dtype': config.model.dtype, 'batch': batch, 'image_size': image_size,
      'images_per_sec': batch / step_s, 'step_ms': step_s * 1e3, 'compile_s': compile_s, 'init_s': init_s,
      'peak_memory_gib': (peak / 2 ** 30) if peak else None,
      'compiled_temp_gib': (mem.temp_size_in_bytes / 2 ** 30) if mem is not None else None,
      'xla_flops_per_step': flops, 'loss': float(m.compute()['loss']),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True, help='path[:args], e.g. configs/efficientnet.py:b0')
  p.add_argument('--batch', type=int, required=True, help='global batch size')
  p.add_argument('--image_size', type=int, required=True)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--dtype', default=None, help='override model.dtype (float32 | bfloat16)')
  p.add_argument('--set', action='append', default=[], help='override, e.g. --set model.bn_group_size=128')
  p.add_argument('--json', action='store_true', help='print one JSON line instead of a table')
  a = p.parse_args(argv)
  sets = list(a.set) + ([f'model.dtype={a.dtype}'] if a.dtype else [])
  config = load_config(a.config)
  for assignment in sets:
    apply_override(config, assignment)
  r = run(config, a.batch, a.image_size, a.steps, a.warmup, a.repeats)
  if a.json:
    print(json.dumps(r))
    return
  for k, v in r.items():
    print(f'{k:>20}: {v:.4g}' if isinstance(v, float) else f'{k:>20}: {v}')


if __name__ == '__main__':
  main()
