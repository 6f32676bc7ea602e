"""`train_and_evaluate(config, workdir)`: the one training entry point, for a notebook, a CPU, a GPU box or a pod.

Top to bottom: validate the config → start distributed JAX and the compile cache → mesh → dataset sizes and the
stage schedule → model, optimizer → restore the latest checkpoint or create the state in place → per stage:
compiled step (ahead of time, next stage in the background) and the host pipeline at that stage's size → steps,
metrics, evals, checkpoints, preemption → final eval and final_metrics.json.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from effnet import checkpoint as ckpt_lib
from effnet import compile as compile_lib
from effnet import config_lib, models, optim, parallel, progressive, steps
from effnet import metrics as metrics_lib
from effnet import state as state_lib


def _stages(config, total_steps: int) -> list[progressive.Stage]:
  if config.progressive.enabled:
    return progressive.build_stages(config.progressive, total_steps, config.data.image_size,
                                    config.train.batch_size)
  return [progressive.Stage(index=0, start_step=0, end_step=total_steps, image_size=config.data.image_size,
                            randaug_magnitude=float(config.data.randaug_magnitude),
                            mixup_alpha=float(config.data.mixup_alpha), cutmix_alpha=float(config.data.cutmix_alpha),
                            dropout_rate=None, batch_size=config.train.batch_size)]


def _examples_before(stages, step: int) -> int:
  """Global train examples consumed before `step` (stages may have different batch sizes)."""
  n = 0
  for st in stages:
    if step <= st.start_step:
      break
    n += (min(step, st.end_step) - st.start_step) * st.batch_size
  return n


def _hyper(stage, model_dropout: float, sharding):
  rate = model_dropout if stage.dropout_rate is None else stage.dropout_rate
  values = steps.hyper_defaults(rate, stage.mixup_alpha, stage.cutmix_alpha, stage.randaug_magnitude)
  return jax.device_put(values, sharding)


def evaluate(compiled_eval, state, eval_data, mesh) -> dict[str, float]:
  """Runs the eval executable over the whole (padded, masked) eval split; every example counted once."""
  merged = None
  for host_batch in eval_data.dataset.as_numpy_iterator():
    m = compiled_eval(state, parallel.global_batch(host_batch, mesh))
    merged = m if merged is None else merged.merge(m)
  out = {k: float(v) for k, v in merged.compute().items()}
  out['num_examples'] = float(merged.top1.count)
  return out


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final metrics."""
  config_lib.validate(config)
  parallel.initialize_distributed(config.distributed)
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with parallel.compilation_cache(config.train.compile_cache_dir or os.path.join(workdir, 'jax_cache')):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
  t_start = time.perf_counter()
  mesh = parallel.make_mesh()
  rep = parallel.replicated(mesh)
  batch = config.train.batch_size
  parallel.check_batch_size(batch, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh, 'train.eval_batch_size')

  from effnet.data import pipeline  # host-side TF; imported here so the rest of the package runs without TF
  if jax.process_count() > 1:  # prepare (e.g. the built-in set) once, not in every process at the same time
    if jax.process_index() == 0:
      pipeline.get_builder(config.data)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('effnet:dataset_prepared')
  builder = pipeline.get_builder(config.data)  # fails on unknown datasets / missing data before any compile
  n_train = pipeline.num_train_examples(config.data, config.train.num_train_examples, builder)
  steps_per_epoch = n_train / batch
  total_steps = int(config.train.total_steps or round(config.train.num_epochs * steps_per_epoch))
  if total_steps <= 0:
    raise ValueError(f'train.total_steps={total_steps}; allowed: > 0')
  stages = _stages(config, total_steps)
  for st in stages:
    parallel.check_batch_size(st.batch_size, mesh, f'progressive stage {st.index} batch size')
  host_epoch_examples = pipeline.host_split_num_examples(builder, config.data.train_split, jax.process_index(),
                                                         jax.process_count())

  module = models.build_model(config.model)
  lr_scale = progressive.lr_scale_schedule(stages, batch) if config.progressive.scale_batch else 1.0
  tx, schedule = optim.build_optimizer(config.optim, batch, steps_per_epoch, total_steps, lr_scale=lr_scale)
  if config.optim.lr is not None:
    raise ValueError('optim.lr is derived (lr_base × batch/256); set optim.lr_base instead')
  use_mixing = any(st.mixup_alpha > 0 or st.cutmix_alpha > 0 for st in stages)
  step_cfg = steps.StepConfig.from_config(config, models.DTYPES[config.model.dtype], use_mixing)
  train_step = steps.make_train_step(module, tx, schedule, step_cfg)
  eval_step = steps.make_eval_step(module, step_cfg, ema=config.train.eval_ema)

  abstract = state_lib.abstract_state(module, tx, config.data.image_size, rep)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints,
                                       every_steps=config.train.checkpoint_every_steps,
                                       use_async=config.train.async_checkpointing)
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(abstract)
    logging.info('restored step %d from %s', int(state.step), checkpointer.directory)
  else:
    state = state_lib.create_train_state(module, tx, config.data.image_size, config.train.seed, rep)
    meta = {}
  step = int(state.step)
  writer = metrics_lib.create_writer(workdir)
  if step == 0:
    metrics_lib.log_parameter_overview(state.params)
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})
    metrics_lib.write_json(os.path.join(workdir, 'config.json'), config.to_dict())

  compiler = compile_lib.StepCompiler(train_step, eval_step, abstract, mesh, steps.hyper_defaults())
  eval_data = pipeline.create_eval_dataset(config.data, global_batch_size=config.train.eval_batch_size,
                                           builder=builder)
  minival_data = None
  if config.train.early_stopping_patience > 0:
    if not config.data.minival_split:
      raise ValueError('train.early_stopping_patience > 0 needs data.minival_split (e.g. "train[:25022]")')
    minival_cfg = config.data.copy_and_resolve_references()
    with minival_cfg.unlocked():
      minival_cfg.eval_split = config.data.minival_split
    minival_data = pipeline.create_eval_dataset(minival_cfg, global_batch_size=config.train.eval_batch_size,
                                                builder=builder)
  eval_size = config.data.eval_image_size
  compiler.prefetch('eval', eval_size, config.train.eval_batch_size)

  flag = ckpt_lib.PreemptionFlag()
  progress = metrics_lib.report_progress(total_steps, writer)
  eval_every = config.train.eval_every_steps or max(1, int(round(steps_per_epoch)))
  log_every = config.train.log_every_steps
  best = dict(meta.get('best', {'minival_top1': -1.0, 'evals_since_best': 0}))
  stage_log = list(meta.get('stage_log', []))
  last_eval: dict[str, float] = {}
  train_scalars: dict[str, float] = {}
  stop_reason = None
  last_step_time = None
  try:
    for stage in stages:
      if step >= stage.end_step:
        continue
      t_switch = time.perf_counter()
      aot_requested = compiler.is_requested('train', stage.image_size, stage.batch_size)
      aot_ready = compiler.is_ready('train', stage.image_size, stage.batch_size)
      exe = compiler.get('train', stage.image_size, stage.batch_size)
      nxt = next((s for s in stages if s.index == stage.index + 1), None)
      if nxt is not None and config.train.aot_next_stage:
        compiler.prefetch('train', nxt.image_size, nxt.batch_size)
      hyper = _hyper(stage, config.model.dropout_rate, rep)
      consumed = _examples_before(stages, step) // jax.process_count()
      train_ds = pipeline.create_train_dataset(
          config.data, global_batch_size=stage.batch_size, image_size=stage.image_size, seed=config.train.seed,
          start_epoch=consumed // host_epoch_examples, skip_examples=consumed % host_epoch_examples,
          randaug_magnitude=stage.randaug_magnitude, builder=builder,
          augment='none' if step_cfg.randaug_layers else None)  # RandAugment then runs in the train step
      it = train_ds.as_numpy_iterator()
      train_metrics = None
      throughput = metrics_lib.Throughput(step)
      first_step_of_stage = True
      while step < stage.end_step:
        host_batch = next(it)
        state, m = exe(state, parallel.global_batch(host_batch, mesh), hyper)
        train_metrics = m if train_metrics is None else train_metrics.merge(m)
        step += 1
        if first_step_of_stage:
          jax.block_until_ready(state.step)
          now = time.perf_counter()
          entry = {'stage': stage.index, 'image_size': stage.image_size, 'batch_size': stage.batch_size,
                   'randaug_magnitude': stage.randaug_magnitude, 'mixup_alpha': stage.mixup_alpha,
                   'cutmix_alpha': stage.cutmix_alpha,
                   'dropout_rate': config.model.dropout_rate if stage.dropout_rate is None else stage.dropout_rate,
                   'compile_s': compiler.compile_seconds.get(('train', stage.image_size, stage.batch_size), 0.0),
                   'aot_requested': aot_requested, 'aot_ready': aot_ready,
                   'switch_stall_s': (now - last_step_time) if last_step_time is not None else now - t_switch}
          stage_log.append(entry)
          logging.info('stage %d: %s', stage.index, entry)
          writer.write_scalars(step, {f'stage/{k}': float(v) for k, v in entry.items()})
          first_step_of_stage = False
        progress(step)
        if step % log_every == 0 or step == stage.end_step:
          computed = train_metrics.compute()
          bad = int(computed.pop('first_nonfinite_step'))
          if bad != steps.NO_STEP and config.train.nan_policy == 'stop':
            raise FloatingPointError(
                f'non-finite loss or update at step {bad + 1} (train.nan_policy=stop): the update from step {bad} '
                f'to {bad + 1} was dropped, so the state and every checkpoint hold finite values; '
                f'train.nan_policy=skip carries on instead')
          train_scalars = metrics_lib.to_scalars(computed, 'train/')
          train_scalars.update({'train/images_per_sec': throughput.update(step, stage.batch_size),
                                'train/image_size': float(stage.image_size), 'train/stage': float(stage.index)})
          writer.write_scalars(step, train_scalars)
          train_metrics = None
        if step % eval_every == 0 and step < total_steps:
          last_eval = _run_evals(compiler, state, eval_data, minival_data, mesh, config, writer, step)
          if minival_data is not None and _early_stop(best, last_eval, config.train.early_stopping_patience):
            stop_reason = 'early_stopping'
        checkpointer.save(step, state, meta={'best': best, 'stage_log': stage_log})
        if stop_reason or ckpt_lib.should_stop(flag, checkpointer, step, sync=step % log_every == 0):
          stop_reason = stop_reason or 'preempted'
          break
        last_step_time = time.perf_counter()
      if stop_reason:
        break
      last_step_time = time.perf_counter()
    if stop_reason != 'preempted':
      last_eval = _run_evals(compiler, state, eval_data, minival_data, mesh, config, writer, step)
    checkpointer.save(step, state, meta={'best': best, 'stage_log': stage_log}, force=True)
    checkpointer.wait()
  finally:
    flag.restore_handlers()
    checkpointer.close()
    compiler.close()
    writer.flush()

  final = {'steps': float(step), 'total_steps': float(total_steps), 'wall_s': time.perf_counter() - t_start,
           'params': float(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))}
  final.update({k.replace('/', '_'): v for k, v in train_scalars.items()})
  final.update({k.replace('/', '_'): v for k, v in last_eval.items()})
  final['stopped'] = stop_reason or 'completed'
  final.update({f'compile_cache_{k}': float(v) for k, v in compile_lib.cache_stats().items()})
  if stop_reason != 'preempted':
    metrics_lib.write_json(os.path.join(workdir, 'final_metrics.json'), final)
  metrics_lib.write_json(os.path.join(workdir, 'stages.json'), {'stages': stage_log})
  return final


def _run_evals(compiler, state, eval_data, minival_data, mesh, config, writer, step) -> dict[str, float]:
  exe = compiler.get('eval', config.data.eval_image_size, config.train.eval_batch_size)
  out = {f'eval_{k}': v for k, v in evaluate(exe, state, eval_data, mesh).items()}
  if minival_data is not None:
    out.update({f'minival_{k}': v for k, v in evaluate(exe, state, minival_data, mesh).items()})
  writer.write_scalars(step, {k.replace('_', '/', 1): v for k, v in out.items()})
  return out


def _early_stop(best: dict, ev: dict, patience: int) -> bool:
  if ev['minival_top1'] > best['minival_top1']:
    best['minival_top1'], best['evals_since_best'] = ev['minival_top1'], 0
  else:
    best['evals_since_best'] += 1
  return best['evals_since_best'] >= patience


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
