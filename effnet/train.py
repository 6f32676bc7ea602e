"""`train_and_evaluate(config, workdir)`: the one training entry point, for a notebook, a CPU, a GPU box or a pod.

Top to bottom: validate the config and the workdir → start distributed JAX, hold the workdir (effnet.workdir: one
run per workdir) and open the compile cache → `_setup` (mesh, checkpointer and the model checked against its newest
step, dataset sizes, the run's schedule from effnet.schedule, optimizer, steps and their compiler, eval data) →
`_restore_or_create` (the newest intact checkpoint or a fresh state, with what a resume changes logged; every
executable the run needs requested at once, in order of use, compiling in the background) → `_train_stage` per
stage (its executable, its values, its input pipeline; steps, logs, evals, checkpoints, preemption) → `_finish`
(final eval, final_metrics.json, stages.json).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import time
from typing import Any, Optional

import jax

from effnet import checkpoint as ckpt_lib
from effnet import compile as compile_lib
from effnet import config_lib, models, optim, parallel, progressive, schedule, steps
from effnet import metrics as metrics_lib
from effnet import state as state_lib
from effnet import workdir as workdir_lib


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final metrics."""
  config_lib.validate(config)
  workdir = os.fspath(workdir)
  workdir_lib.check_usable(workdir)  # a file or an unwritable directory: named here, not as a bare OSError later
  parallel.initialize_distributed(config.distributed)
  workdir_lib.as_path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs:// alike
  with workdir_lib.hold(workdir):  # process 0 holds the workdir: a second run on it fails here, naming the holder
    with parallel.compilation_cache(config.train.compile_cache_dir or os.path.join(workdir, 'jax_cache')):
      return _train_and_evaluate(config, workdir)


@dataclasses.dataclass
class _Run:
  """Everything built once before the first step: the fixed context of every stage and step."""
  config: Any
  workdir: str
  mesh: Any
  builder: Any
  stages: list
  total_steps: int
  host_epoch_examples: int
  module: Any
  tx: Any
  step_cfg: steps.StepConfig
  abstract: Any
  compiler: compile_lib.StepCompiler
  checkpointer: ckpt_lib.Checkpointer
  eval_data: Any
  minival_data: Any
  eval_every: int
  # What a checkpoint records beside the config, so that a resume can say what a new batch or device count changes.
  resume_facts: dict = dataclasses.field(default_factory=dict)
  input_pool: Any = dataclasses.field(
      default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='next-stage-input'))


@dataclasses.dataclass
class _Loop:
  """What changes while training: the step, evals, early stopping, the per-stage log and the time accounting."""
  step: int
  best: dict
  stage_log: list
  writer: Any = None
  progress: Any = None
  flag: Any = None
  last_eval: dict = dataclasses.field(default_factory=dict)
  train_scalars: dict = dataclasses.field(default_factory=dict)
  stop_reason: Optional[str] = None
  last_step_time: Optional[float] = None
  train_step_s: float = 0.0   # wall time of training steps, without compiles, stage switches and evals
  eval_s: float = 0.0
  next_input: Optional[tuple] = None  # (stage index, future of its input iterator with the first batch fetched)


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
  t_start = time.perf_counter()
  run = _setup(config, workdir)
  state, loop = _restore_or_create(run)
  try:
    for stage in run.stages:
      if loop.step < stage.end_step and not loop.stop_reason:
        state = _train_stage(run, loop, stage, state)
    if loop.stop_reason != 'preempted':
      loop.last_eval = _timed_evals(run, loop, state)
    _save(run, loop, state, force=True)
    run.checkpointer.wait()
  finally:
    loop.flag.restore_handlers()
    run.checkpointer.close()
    run.compiler.close()
    run.input_pool.shutdown(wait=True, cancel_futures=True)
    loop.writer.flush()
  return _finish(run, loop, state, time.perf_counter() - t_start)


def _setup(config, workdir: str) -> _Run:
  """Mesh, dataset sizes, stage schedule, model, optimizer, steps and their compiler, checkpointer, eval data."""
  mesh = parallel.make_mesh()
  batch = config.train.batch_size
  parallel.check_batch_size(batch, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh, 'train.eval_batch_size')
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints,
                                       every_steps=config.train.checkpoint_every_steps,
                                       use_async=config.train.async_checkpointing,
                                       config=json.loads(config.to_json_best_effort()))
  module = models.build_model(config.model)
  # A resume with a changed model fails here, naming the changed fields and the first variable, before any data
  # loads or anything compiles (restore checks the step it restores again).
  checkpointer.check_model(models.abstract_variables(module, config.data.image_size))

  from effnet.data import pipeline  # host-side TF; imported here so the rest of the package runs without TF
  builder = _prepared_builder(pipeline, config.data)  # fails on unknown datasets / missing data before any compile
  n_train = pipeline.num_train_examples(config.data, config.train.num_train_examples, builder)
  steps_per_epoch = n_train / batch
  total_steps = schedule.total_train_steps(config.train, n_train)
  stages = schedule.run_stages(config, total_steps)
  for st in stages:
    parallel.check_batch_size(st.batch_size, mesh, f'progressive stage {st.index} batch size')

  lr_scale = progressive.lr_scale_schedule(stages, batch) if config.progressive.scale_batch else 1.0
  tx, lr_schedule = optim.build_optimizer(config.optim, batch, steps_per_epoch, total_steps, lr_scale=lr_scale,
                                          cosine_steps=schedule.lr_period_steps(config.train, n_train))
  tx = optim.with_freeze(tx, config.train.freeze)  # train.freeze=backbone: only the classifier trains
  use_mixing = any(st.mixup_alpha > 0 or st.cutmix_alpha > 0 for st in stages)
  step_cfg = steps.StepConfig.from_config(config, models.DTYPES[config.model.dtype], use_mixing)
  train_step = steps.make_train_step(module, tx, lr_schedule, step_cfg)
  eval_step = steps.make_eval_step(module, step_cfg, ema=config.train.eval_ema)
  abstract = state_lib.abstract_state(module, tx, config.data.image_size, parallel.replicated(mesh))
  return _Run(
      config=config, workdir=workdir, mesh=mesh, builder=builder, stages=stages, total_steps=total_steps,
      host_epoch_examples=pipeline.host_split_num_examples(builder, config.data.train_split, jax.process_index(),
                                                           jax.process_count()),
      module=module, tx=tx, step_cfg=step_cfg, abstract=abstract,
      compiler=compile_lib.StepCompiler(train_step, eval_step, abstract, mesh, steps.hyper_defaults(),
                                        image_dtype=config.data.image_dtype),
      checkpointer=checkpointer,
      eval_data=pipeline.create_eval_dataset(config.data, global_batch_size=config.train.eval_batch_size,
                                             builder=builder),
      minival_data=_minival_data(pipeline, config, builder),
      eval_every=config.train.eval_every_steps or max(1, int(round(steps_per_epoch))),
      resume_facts={'device_count': jax.device_count(), 'process_count': jax.process_count(),
                    'num_train_examples': n_train})


def _prepared_builder(pipeline, data_cfg):
  """The tfds builder, its data prepared once by process 0 (e.g. the built-in set), not by every process."""
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      pipeline.get_builder(data_cfg)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('effnet:dataset_prepared')
  return pipeline.get_builder(data_cfg)


def _minival_data(pipeline, config, builder):
  if config.train.early_stopping_patience <= 0:
    return None
  minival_cfg = config.data.copy_and_resolve_references()
  with minival_cfg.unlocked():
    minival_cfg.eval_split = config.data.minival_split
  return pipeline.create_eval_dataset(minival_cfg, global_batch_size=config.train.eval_batch_size, builder=builder)


def _restore_or_create(run: _Run):
  """The latest checkpoint's state and bookkeeping, or a fresh state; then every compile the run will need."""
  config = run.config
  if run.checkpointer.latest_step() is not None:
    state, meta = run.checkpointer.restore(run.abstract)
    logging.info('restored step %d from %s', int(state.step), run.checkpointer.directory)
    _log_resume_changes(run, int(state.step), run.checkpointer.restored_config, meta.get('run'))
  else:
    state = state_lib.create_train_state(run.module, run.tx, config.data.image_size, config.train.seed,
                                         parallel.replicated(run.mesh))
    if config.train.init_from:  # only without a checkpoint of its own: a preempted fine-tune resumes, never restarts
      state = _initialised_from(config, state, parallel.replicated(run.mesh))
    meta = {}
  from effnet.data import bad_examples  # pylint: disable=g-import-not-at-top  (TF-free)
  bad_examples.resume(meta.get('bad_examples'), config.data.train_split, run.host_epoch_examples,  # count on
                      lambda step: schedule.examples_before(run.stages, step) // jax.process_count())
  loop = _Loop(step=int(state.step), best=dict(meta.get('best', {'minival_top1': -1.0, 'evals_since_best': 0})),
               stage_log=list(meta.get('stage_log', [])))
  loop.writer = metrics_lib.create_writer(run.workdir)
  if loop.step == 0:
    metrics_lib.log_parameter_overview(state.params)
    loop.writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()
                               if isinstance(v, (int, float, str, bool))})
    metrics_lib.write_json(os.path.join(run.workdir, 'config.json'), config.to_dict())
  _request_compiles(run, loop.step)
  loop.progress = metrics_lib.report_progress(run.total_steps, loop.writer)
  loop.flag = ckpt_lib.PreemptionFlag()
  return state, loop


def _initialised_from(config, state, sharding):
  """`state` with its weights and BN statistics (raw and EMA copies alike) read from train.init_from (its EMA
  copies with train.init_ema, as automl's ft_init_ema). A classifier of another class count keeps its fresh
  initialisation, said in the log; any other difference fails naming the variable (effnet.weights)."""
  from effnet import weights  # pylint: disable=g-import-not-at-top
  source, ema = os.path.expanduser(config.train.init_from), config.train.init_ema
  stored_head = weights.classifier_shape(source, ema=ema)
  fresh_kernel = state.params.get(weights.CLASSIFIER, {}).get('kernel')
  fresh_head = None if fresh_kernel is None else tuple(fresh_kernel.shape)
  skip_head = stored_head != fresh_head  # another class count: the classifier keeps its fresh initialisation
  loaded = weights.load_variables(source, config, ema=ema, skip_head=skip_head)  # any other difference raises
  if skip_head:
    logging.warning('train.init_from: the source classifier %s kernel has shape %s, model.num_classes=%d needs %s: '
                    'it is re-initialised', weights.CLASSIFIER, stored_head, config.model.num_classes, fresh_head)
  logging.info('train.init_from: initialised from the %s weights of %s', 'EMA' if ema else 'raw', source)
  # Each copy gets buffers of its own: the train step donates the state, and no buffer may appear in it twice.
  return state.replace(params=_overlaid(state.params, loaded['params'], sharding),
                       batch_stats=_overlaid(state.batch_stats, loaded['batch_stats'], sharding),
                       ema_params=_overlaid(state.ema_params, loaded['params'], sharding),
                       ema_batch_stats=_overlaid(state.ema_batch_stats, loaded['batch_stats'], sharding))


def _overlaid(fresh, loaded: dict, sharding):
  """`fresh` with every leaf that `loaded` holds (same path) replaced by it, in the fresh leaf's dtype."""
  def pick(path, leaf):
    node = loaded
    for key in path:
      node = node.get(key.key) if isinstance(node, dict) else None
    return leaf if node is None else jax.device_put(node.astype(leaf.dtype), sharding)

  return jax.tree_util.tree_map_with_path(pick, fresh)


def _log_resume_changes(run: _Run, step: int, stored_config: Optional[dict], stored_facts: Optional[dict]) -> None:
  """Logs, when the run resumes with another config, batch or device count than the checkpoint was written with,
  what that changes: the LR, the step → epoch mapping, the total steps and the progressive stage boundaries."""
  if stored_config is None:
    logging.info('checkpoint step %d stores no config (written before checkpoints recorded theirs): what changed '
                 'since cannot be reported', step)
    return
  facts = {**run.resume_facts, **(stored_facts or {})}  # older checkpoints: assume what is unknown is unchanged
  old = schedule.schedule_at(schedule.config_as_stored(run.config, stored_config), facts['num_train_examples'],
                             facts['device_count'], facts['process_count'], step)
  new = schedule.schedule_at(run.config, run.resume_facts['num_train_examples'], run.resume_facts['device_count'],
                             run.resume_facts['process_count'], step)
  changed = ckpt_lib.changed_fields(
      {k: v for k, v in stored_config.items() if k != 'model'},  # model changes: the checkpointer logged them
      {k: v for k, v in json.loads(run.config.to_json_best_effort()).items() if k != 'model'})
  changed_line = [f'config changed since it was written: {"; ".join(changed)}'] if changed else []
  lines = changed_line + schedule.resume_changes(old, new, step)
  for line in lines:
    logging.warning('resuming at step %d: %s', step, line)


def _request_compiles(run: _Run, step: int) -> None:
  """Asks for every executable the rest of the run needs after the current stage's, in the order it needs them,
  compiling one after another in the background. The current stage's step compiles meanwhile in the main thread
  (its first step waits for it anyway), so the next stage's is ready as early as two compiles in parallel allow."""
  upcoming = [st for st in run.stages if st.end_step > step]
  if not upcoming:
    return
  eval_key = ('eval', run.config.data.eval_image_size, run.config.train.eval_batch_size)
  first_eval = min(run.total_steps, (step // run.eval_every + 1) * run.eval_every)
  wanted = [(max(st.start_step, step), ('train', st.image_size, st.batch_size)) for st in upcoming]
  wanted.append((first_eval, eval_key))
  wanted.sort(key=lambda item: item[0])
  keys = list(dict.fromkeys(key for _, key in wanted))  # stages of the same shape share one executable
  for key in keys[1:] if run.config.train.compile_ahead else []:
    run.compiler.prefetch(*key)
def _train_stage(run: _Run, loop: _Loop, stage, state):
  """One progressive stage (the whole run without progressive learning): its executable, its per-stage values
  and its input pipeline at its image size, then steps until the stage ends or the run must stop."""
  times = {'start': time.perf_counter()}
  key = ('train', stage.image_size, stage.batch_size)
  aot_ready = run.compiler.is_ready(*key)
  exe = run.compiler.get(*key)
  times['executable'] = time.perf_counter()
  hyper = _hyper(stage, run.config, parallel.replicated(run.mesh))
  batches = _prefetched_input(loop, stage) or _train_batches(run, stage, loop.step)
  train_metrics, throughput = None, metrics_lib.Throughput(loop.step)
  t_steps, stage_entry, eval_s_before = None, None, loop.eval_s
  while loop.step < stage.end_step:
    host_batch = next(batches)
    times.setdefault('first_batch', time.perf_counter())
    state, m = exe(state, parallel.global_batch(host_batch, run.mesh), hyper)
    train_metrics = m if train_metrics is None else steps.merge_train_metrics(train_metrics, m)
    loop.step += 1
    if t_steps is None:  # the first step of a stage carries the switch: pipeline start and any compile wait
      jax.block_until_ready(state.step)
      t_steps = times['first_step'] = time.perf_counter()
      stage_entry = _log_stage_start(run, loop, stage, times, aot_ready)
      _prefetch_next_input(run, loop, stage)
    loop.progress(loop.step)
    if loop.step % run.config.train.log_every_steps == 0 or loop.step == stage.end_step:
      _log_train(run, loop, stage, train_metrics.compute(), throughput)
      train_metrics = None
    if loop.step % run.eval_every == 0 and loop.step < run.total_steps:
      loop.last_eval = _timed_evals(run, loop, state)
      if run.minival_data is not None and _early_stop(loop.best, loop.last_eval,
                                                      run.config.train.early_stopping_patience):
        loop.stop_reason = 'early_stopping'
    _save(run, loop, state)
    sync = loop.step % run.config.train.log_every_steps == 0
    if loop.stop_reason or ckpt_lib.should_stop(loop.flag, run.checkpointer, loop.step, sync=sync):
      loop.stop_reason = loop.stop_reason or 'preempted'
      break
  finished_input = [batches]
  del batches  # the list now holds the only reference: the input thread drops it (see _retire_input)
  _retire_input(run, finished_input)
  jax.block_until_ready(state.step)
  loop.last_step_time = time.perf_counter()
  if t_steps is not None:
    stage_step_s = loop.last_step_time - t_steps - (loop.eval_s - eval_s_before)
    loop.train_step_s += stage_step_s
    _log_stage_steps(stage_entry, stage_step_s, last_step=loop.step)
  return state


def _log_stage_steps(entry: dict, step_s: float, last_step: int) -> None:
  """Adds the stage's step seconds (its steps after the first, without evals; checkpoint saves included) to its
  stages.json entry, whose `step` is the stage's first step. Why: the sum over stages is `train_step_s`, and a
  progressive run's saving comes from its small stages' steps being cheaper; the per-stage ms per step shows how
  much cheaper, measured in the run itself."""
  timed_steps = last_step - entry['step'] - 1
  entry.update(train_step_s=step_s, timed_steps=timed_steps,
               step_ms=1e3 * step_s / timed_steps if timed_steps else None)


def _train_batches(run: _Run, stage, step: int):
  """The host input pipeline of `stage`, resumed at `step` (same per-host, per-epoch order as a run from 0)."""
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top
  consumed = schedule.examples_before(run.stages, step) // jax.process_count()
  ds = pipeline.create_train_dataset(
      run.config.data, global_batch_size=stage.batch_size, image_size=stage.image_size, seed=run.config.train.seed,
      start_epoch=consumed // run.host_epoch_examples, skip_examples=consumed % run.host_epoch_examples,
      randaug_magnitude=stage.randaug_magnitude, builder=run.builder,
      augment='none' if run.step_cfg.randaug_layers else None)  # RandAugment then runs in the train step
  return ds.as_numpy_iterator()


def _prefetch_next_input(run: _Run, loop: _Loop, stage) -> None:
  """Starts the next stage's input pipeline in the background and fetches its first batch (filling the shuffle
  buffer takes seconds), so that a stage switch waits for neither the compiler nor the input."""
  nxt = next((s for s in run.stages if s.index == stage.index + 1), None)
  if nxt is None or not run.config.train.compile_ahead:
    return

  def start():
    batches = _train_batches(run, nxt, nxt.start_step)
    return itertools.chain([next(batches)], batches)

  loop.next_input = (nxt.index, run.input_pool.submit(start))


def _retire_input(run: _Run, finished_input: list) -> None:
  """Drops a finished stage's input iterator (the list's only item) on the input thread: tearing a tf.data
  iterator down waits for its in-flight work, which blocked the main thread for 15–38 s at stage switches on the
  2-core CPU."""
  run.input_pool.submit(finished_input.clear)


def _prefetched_input(loop: _Loop, stage):
  """The input iterator `_prefetch_next_input` started for `stage`, or None."""
  if loop.next_input is None or loop.next_input[0] != stage.index:
    return None
  return loop.next_input[1].result()


def _log_stage_start(run: _Run, loop: _Loop, stage, times: dict, aot_ready: bool) -> dict:
  """stages.json / TensorBoard entry of a stage: its values, compile seconds and the switch stall (wall time from
  the previous stage's last step, or from the stage start for the first stage of a process, to its first step),
  split into the wait for the executable, the input pipeline's first batch and the first step itself; returns it."""
  key = ('train', stage.image_size, stage.batch_size)
  since = loop.last_step_time if loop.last_step_time is not None else times['start']
  entry = {'stage': stage.index, 'step': loop.step - 1, 'image_size': stage.image_size,
           'batch_size': stage.batch_size, 'randaug_magnitude': stage.randaug_magnitude,
           'mixup_alpha': stage.mixup_alpha, 'cutmix_alpha': stage.cutmix_alpha,
           'dropout_rate': run.config.model.dropout_rate if stage.dropout_rate is None else stage.dropout_rate,
           'compile_s': run.compiler.compile_seconds.get(key, 0.0), 'aot_ready': aot_ready,
           'switch_stall_s': times['first_step'] - since,
           'previous_stage_exit_s': times['start'] - since,
           'executable_wait_s': times['executable'] - times['start'],
           'first_batch_s': times['first_batch'] - times['executable'],
           'first_step_s': times['first_step'] - times['first_batch']}
  loop.stage_log.append(entry)
  logging.info('stage %d: %s', stage.index, entry)
  loop.writer.write_scalars(loop.step, {f'stage/{k}': float(v) for k, v in entry.items()})
  return entry


def _log_train(run: _Run, loop: _Loop, stage, computed: dict, throughput) -> None:
  bad = int(computed.pop('first_nonfinite_step'))
  if bad != steps.NO_STEP and run.config.train.nan_policy == 'stop':
    raise FloatingPointError(
        f'non-finite loss, update or optimizer state at step {bad + 1} (train.nan_policy=stop): the update from '
        f'step {bad} to {bad + 1} was dropped, so the state and every checkpoint hold finite values; '
        f'train.nan_policy=skip carries on instead')
  loop.train_scalars = metrics_lib.to_scalars(computed, 'train/')
  loop.train_scalars.update({'train/images_per_sec': throughput.update(loop.step, stage.batch_size),
                             'train/image_size': float(stage.image_size), 'train/stage': float(stage.index)})
  loop.writer.write_scalars(loop.step, loop.train_scalars)
  from effnet.data import bad_examples  # pylint: disable=g-import-not-at-top  (TF-free)
  bad_examples.log_summary('train', loop.step)  # undecodable train examples skipped so far, if any


def _save(run: _Run, loop: _Loop, state, force: bool = False) -> None:
  from effnet.data import bad_examples  # pylint: disable=g-import-not-at-top  (TF-free)
  run.checkpointer.save(loop.step, state, meta=lambda: {
      'best': loop.best, 'stage_log': loop.stage_log, 'run': run.resume_facts,
      'bad_examples': bad_examples.checkpoint_record(loop.step)}, force=force)


def _timed_evals(run: _Run, loop: _Loop, state) -> dict[str, float]:
  t0 = time.perf_counter()
  out = _run_evals(run.compiler, state, run.eval_data, run.minival_data, run.mesh, run.config, loop.writer,
                   loop.step)
  loop.eval_s += time.perf_counter() - t0
  return out


def _finish(run: _Run, loop: _Loop, state, wall_s: float) -> dict[str, float]:
  """final_metrics.json (not for a preempted run, which has not finished) and stages.json; returns the finals."""
  final = {'steps': float(loop.step), 'total_steps': float(run.total_steps), 'wall_s': wall_s,
           'train_step_s': loop.train_step_s, 'eval_s': loop.eval_s,
           'compile_s': float(sum(run.compiler.compile_seconds.values())),
           'switch_stall_s': float(sum(e['switch_stall_s'] for e in loop.stage_log[1:])),
           'params': float(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))}
  final.update({k.replace('/', '_'): v for k, v in loop.train_scalars.items()})
  final.update({k.replace('/', '_'): v for k, v in loop.last_eval.items()})
  final['stopped'] = loop.stop_reason or 'completed'
  final.update({f'compile_cache_{k}': float(v) for k, v in run.compiler.cache_stats().items()})
  if loop.stop_reason != 'preempted':
    metrics_lib.write_json(os.path.join(run.workdir, 'final_metrics.json'), final)
  metrics_lib.write_json(os.path.join(run.workdir, 'stages.json'), {'stages': loop.stage_log})
  return final


def _run_evals(compiler, state, eval_data, minival_data, mesh, config, writer, step) -> dict[str, float]:
  exe = compiler.get('eval', config.data.eval_image_size, config.train.eval_batch_size)
  out = {f'eval_{k}': v for k, v in evaluate(exe, state, eval_data, mesh).items()}
  if minival_data is not None:
    out.update({f'minival_{k}': v for k, v in evaluate(exe, state, minival_data, mesh).items()})
  writer.write_scalars(step, {k.replace('_', '/', 1): v for k, v in out.items()})
  from effnet.data import bad_examples  # pylint: disable=g-import-not-at-top  (TF-free)
  bad_examples.log_summary('eval', step)  # undecodable eval examples, in no metric, if any
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


def _hyper(stage, config, sharding):
  """The traced per-stage inputs of the train step (no recompile when they change between stages)."""
  rate = config.model.dropout_rate if stage.dropout_rate is None else stage.dropout_rate
  ema_start = stage.start_step if config.optim.ema_per_stage else 0
  values = steps.hyper_defaults(rate, stage.mixup_alpha, stage.cutmix_alpha, stage.randaug_magnitude, ema_start)
  return jax.device_put(values, sharding)


def evaluate(compiled_eval, state, eval_data, mesh) -> dict[str, float]:
  """Runs the eval executable over the whole (padded, masked) eval split; every example counted once.

  Keys: loss, top1, top5, num_examples for the eval weights (EMA by default) and raw_loss, raw_top1, raw_top5 for
  the raw weights when those are evaluated too.
  """
  merged = None
  for host_batch in eval_data.dataset.as_numpy_iterator():
    m = compiled_eval(state, parallel.global_batch(host_batch, mesh))
    merged = m if merged is None else {k: merged[k].merge(v) for k, v in m.items()}
  out = {f'{prefix}{k}': float(v) for prefix, coll in merged.items() for k, v in coll.compute().items()}
  out['num_examples'] = float(merged[''].top1.count)
  return out
