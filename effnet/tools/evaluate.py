r"""Top-1 / top-5 / loss of a checkpoint on a tfds split, with the variant's official eval preprocessing.

  python -m effnet.tools.evaluate --config=configs/demo.py --weights=workdirs/demo
  python -m effnet.tools.evaluate --config=configs/efficientnet.py:b0 --weights=/tmp/b0 --split=validation \
      --config.data.data_dir=~/tensorflow_datasets --batch_size=256 --json=/tmp/b0_eval.json
  (`effnet-evaluate` is the same command; `--config.KEY=VALUE` overrides as for effnet.main.)

`--weights`: a training workdir, its checkpoints folder, or a `python -m effnet.tools.convert` output
(effnet.weights). `--ema` / `--raw` choose the EMA or the raw weights (default: config.train.eval_ema, what the
trainer evaluates); `--step` a stored step (default: the newest).

Why this is the trainer's evaluation and not a second one: the batches are effnet.data.pipeline's eval dataset
(config.data.eval_preprocess at config.data.eval_image_size, the last batch padded with mask-0 rows that count in
no metric, so every example of the split counts exactly once), and the step is effnet.steps.make_eval_step run by
effnet.train.evaluate. The example count printed is the metrics' own count of mask-1 rows; it is checked against
the split's size.

Every argument is checked before anything loads or compiles: the config (config_lib), --weights and --step
(effnet.weights' errors), --batch_size against the device count; --split against the dataset's splits once its
builder is ready, before the weights load.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  weights: str
  split: Optional[str] = None  # None: config.data.eval_split (or the dataset's default eval split)
  ema: Optional[bool] = None  # None: config.train.eval_ema
  step: Optional[int] = None  # None: the newest stored step
  batch_size: Optional[int] = None  # None: config.train.eval_batch_size
  json: Optional[str] = None  # a file to write the results to


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m effnet.tools.evaluate', description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help='path/to/config.py[:arg]; --config.KEY=VALUE overrides a field')
  p.add_argument('--weights', required=True, help='training workdir, its checkpoints folder, or a convert output')
  p.add_argument('--split', default=None, help='tfds split (default: config.data.eval_split), e.g. validation')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--ema', dest='ema', action='store_const', const=True, help='the EMA weights')
  which.add_argument('--raw', dest='ema', action='store_const', const=False, help='the raw weights')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  p.add_argument('--batch_size', type=int, default=None, help='global eval batch (default: train.eval_batch_size)')
  p.add_argument('--json', default=None, help='also write the results to this JSON file')
  return p


def parse_args(argv: Sequence[str]):
  """(config, EvalOptions), both checked; ValueError naming the argument otherwise. Nothing loads here."""
  from effnet import config_lib, weights  # pylint: disable=g-import-not-at-top
  args = _parser().parse_args([a for a in argv if not a.startswith('--config.')])
  opts = EvalOptions(weights=args.weights, split=args.split, ema=args.ema, step=args.step,
                     batch_size=args.batch_size, json=args.json)
  config = config_lib.config_from_command_line(argv)
  weights.check_step(opts.weights, opts.step, '--weights', '--step')
  if opts.split is not None and not opts.split:
    raise ValueError("--split=''; allowed: a split name of the dataset, e.g. 'validation' or 'test'")
  check_batch_size(_batch(config, opts), 'train.eval_batch_size' if opts.batch_size is None else '--batch_size')
  if opts.json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(opts.json))):
    raise ValueError(f'--json={opts.json!r}; allowed: a file path in an existing directory')
  return config, opts


def _batch(config, opts: EvalOptions) -> int:
  return int(config.train.eval_batch_size if opts.batch_size is None else opts.batch_size)


def check_batch_size(batch: int, field: str) -> None:
  from effnet import parallel  # pylint: disable=g-import-not-at-top
  if batch < 1:
    raise ValueError(f'{field}={batch}; allowed: a batch size >= 1')
  parallel.check_batch_size(batch, parallel.make_mesh(), field)


def _eval_data_config(config, opts: EvalOptions):
  """config.data with --split as its eval split."""
  data_cfg = config.data.copy_and_resolve_references()
  if opts.split is not None:
    with data_cfg.unlocked():
      data_cfg.eval_split = opts.split
  return data_cfg


def _check_split(builder, split: str) -> None:
  """ValueError naming --split and the dataset's splits when the split's base name is not one of them."""
  known = list(builder.info.splits.keys()) if builder.info.splits else []
  base = split.split('[')[0]
  if known and base not in known:
    raise ValueError(f'--split={split!r}: not a split of {builder.info.name}; allowed: {sorted(known)} (or a '
                     f'sub-split such as {known[0] + "[:10%]"!r})')


def evaluated_state(config, opts: EvalOptions, mesh):
  """A TrainState holding only the chosen weights (as its raw weights: make_eval_step(ema=False) reads those),
  replicated over `mesh`; the optimizer slots, EMA copies and RNG are absent (None)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from effnet import parallel, state as state_lib, weights  # pylint: disable=g-import-not-at-top
  variables = weights.load_variables(opts.weights, config, ema=opts.ema, step=opts.step)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                               batch_stats=variables['batch_stats'], opt_state=None, ema_params=None,
                               ema_batch_stats=None, rng=None)
  return jax.device_put(state, parallel.replicated(mesh))


def evaluate(config, opts: EvalOptions) -> dict:
  """{'top1', 'top5', 'loss', 'num_examples', ...}: the trainer's eval of the chosen weights on the split.
  Call parse_args (or its checks) first."""
  import jax  # pylint: disable=g-import-not-at-top
  from effnet import models, parallel, steps, train, weights  # pylint: disable=g-import-not-at-top
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top  (host-side TensorFlow)
  t0 = time.perf_counter()
  mesh = parallel.make_mesh()
  data_cfg = _eval_data_config(config, opts)
  builder = pipeline.get_builder(data_cfg)
  split = data_cfg.eval_split or pipeline.default_eval_split(builder)
  _check_split(builder, split)
  state = evaluated_state(config, opts, mesh)
  module = models.build_model(config.model)
  step_cfg = steps.StepConfig.from_config(config, models.DTYPES[config.model.dtype], use_mixing=False)
  eval_step = jax.jit(steps.make_eval_step(module, step_cfg, ema=False))
  eval_data = pipeline.create_eval_dataset(data_cfg, global_batch_size=_batch(config, opts), builder=builder)
  results = train.evaluate(eval_step, state, eval_data, mesh)
  if int(results['num_examples']) != eval_data.num_examples:  # only undecodable examples (data.bad_examples=skip)
    print(f'warning: {eval_data.num_examples - int(results["num_examples"])} of the {eval_data.num_examples} '
          f'examples of {split!r} were not decodable and count in no metric', file=sys.stderr)
  ema = bool(config.train.eval_ema) if opts.ema is None else opts.ema
  step = weights.checkpoint_steps(opts.weights)[-1] if opts.step is None else opts.step  # a damaged one is logged
  results.update(split=split, split_examples=eval_data.num_examples, weights=opts.weights, ema=ema,
                 step=step, image_size=int(config.data.eval_image_size),
                 eval_preprocess=config.data.eval_preprocess, seconds=time.perf_counter() - t0)
  return results


def report(results: dict) -> str:
  return (f'{results["weights"]} (step {results["step"]}, {"EMA" if results["ema"] else "raw"} weights) on '
          f'{results["split"]}: {int(results["num_examples"])} examples at {results["image_size"]} px '
          f'({results["eval_preprocess"]})\n'
          f'top-1 {100 * results["top1"]:.2f}%  top-5 {100 * results["top5"]:.2f}%  loss {results["loss"]:.4f}  '
          f'({results["seconds"]:.1f} s)')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    config, opts = parse_args(argv)
    results = evaluate(config, opts)
  except (ValueError, FileNotFoundError) as e:
    print(f'effnet.tools.evaluate: {e}', file=sys.stderr)
    return 2
  print(report(results))
  if opts.json:
    with open(opts.json, 'w') as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
