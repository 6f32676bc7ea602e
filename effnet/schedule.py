"""The run's schedule as a pure function of the config and the dataset size, and what a resume changes in it.

Total steps, the cosine LR's period, the progressive stages and the examples consumed before a step are computed
from the config and the number of train examples alone (no data, no devices), so the trainer and a resume's report
use the same numbers: `schedule_at` gives the values at one step, and `resume_changes` lists, line by line, what a
resume with another config, batch or device count changes (the LR, the step → epoch mapping, the total steps, the
stage boundaries).
"""
from __future__ import annotations

import dataclasses

from effnet import optim, progressive


def total_train_steps(train_cfg, num_train_examples: int) -> int:
  """`train.total_steps`, else floor(epochs × examples / batch) as google/automl's main.py computes it."""
  if train_cfg.total_steps is not None:
    total = int(train_cfg.total_steps)
  else:
    total = int(train_cfg.num_epochs * num_train_examples // train_cfg.batch_size)
  if total <= 0:
    raise ValueError(f'train.total_steps={total} (from train.num_epochs={train_cfg.num_epochs}, '
                     f'{num_train_examples} examples, train.batch_size={train_cfg.batch_size}); allowed: > 0')
  return total


def lr_period_steps(train_cfg, num_train_examples: int) -> float:
  """The cosine LR's period: `train.total_steps`, else epochs × steps_per_epoch as a float, as google/automl's
  model_fn divides by it (186,332.15 for 60 ImageNet-21k epochs, where the run itself lasts 186,332 steps)."""
  if train_cfg.total_steps is not None:
    return float(train_cfg.total_steps)
  return float(train_cfg.num_epochs) * (num_train_examples / train_cfg.batch_size)


def run_stages(config, total_steps: int) -> list[progressive.Stage]:
  """The progressive stages, or one stage spanning the run when progressive learning is off: the loop treats both
  alike."""
  if config.progressive.enabled:
    return progressive.build_stages(config.progressive, total_steps, config.data.image_size,
                                    config.train.batch_size)
  return [progressive.Stage(index=0, start_step=0, end_step=total_steps, image_size=config.data.image_size,
                            randaug_magnitude=float(config.data.randaug_magnitude),
                            mixup_alpha=float(config.data.mixup_alpha), cutmix_alpha=float(config.data.cutmix_alpha),
                            dropout_rate=None, batch_size=config.train.batch_size)]


def examples_before(stages, step: int) -> int:
  """Global train examples consumed before `step` (stages may have different batch sizes)."""
  n = 0
  for st in stages:
    if step <= st.start_step:
      break
    n += (min(step, st.end_step) - st.start_step) * st.batch_size
  return n


@dataclasses.dataclass(frozen=True)
class ScheduleAt:
  """What a config, a dataset size and a device count make of one step: the numbers that a resume with another
  global batch or device count changes, compared by `resume_changes`."""
  batch: int
  devices: int
  processes: int
  base_lr: float  # optim.lr_base × batch / 256 (optim.scaled_base_lr)
  lr: float  # the schedule at the step: warmup, decay and the progressive batch scale included
  steps_per_epoch: float
  examples: int  # global examples consumed before the step
  epoch: float  # the same in epochs
  total_steps: int
  stages: tuple


def schedule_at(config, num_train_examples: int, devices: int, processes: int, step: int) -> ScheduleAt:
  """The numbers of `ScheduleAt` for `config` at `step`, computed as the trainer computes them."""
  batch = config.train.batch_size
  total = total_train_steps(config.train, num_train_examples)
  stages = run_stages(config, total)
  steps_per_epoch = num_train_examples / batch
  lr_scale = progressive.lr_scale_schedule(stages, batch) if config.progressive.scale_batch else 1.0
  _, lr_schedule = optim.build_optimizer(config.optim, batch, steps_per_epoch, total, lr_scale=lr_scale,
                                         cosine_steps=lr_period_steps(config.train, num_train_examples))  # as train
  examples = examples_before(stages, step)
  return ScheduleAt(batch=batch, devices=devices, processes=processes,
                    base_lr=optim.scaled_base_lr(config.optim.lr_base, batch), lr=float(lr_schedule(step)),
                    steps_per_epoch=steps_per_epoch, examples=examples, epoch=examples / num_train_examples,
                    total_steps=total, stages=tuple(stages))


def config_as_stored(config, stored: dict):
  """`config` with a checkpoint's stored values wherever the current schema has the field: the run as it was
  configured, read through today's fields (one added since keeps its current value)."""
  old = config.copy_and_resolve_references()
  for section, fields in stored.items():
    if not isinstance(fields, dict) or section not in old:
      continue
    for key, value in fields.items():
      if key in old[section]:
        try:
          old[section][key] = tuple(value) if isinstance(value, list) else value
        except TypeError:  # the field changed its type since: keep the current value
          pass
  return old


def resume_changes(old: ScheduleAt, new: ScheduleAt, step: int) -> list[str]:
  """One line per kind of change between the run that wrote the checkpoint (`old`) and this one (`new`)."""
  lines = [_device_change(old, new)]
  if (old.base_lr, old.lr) != (new.base_lr, new.lr):
    lines.append(f'learning rate: base LR (optim.lr_base × global batch / 256, batch {old.batch} → {new.batch}) '
                 f'{old.base_lr:.6g} → {new.base_lr:.6g}; LR at step {step} {old.lr:.6g} → {new.lr:.6g}')
  lines.append(_epoch_mapping_change(old, new, step))
  old_ends, new_ends = [st.end_step for st in old.stages], [st.end_step for st in new.stages]
  if old_ends != new_ends and max(len(old_ends), len(new_ends)) > 1:
    lines.append(f'progressive stage boundaries move: stages end at steps {old_ends} → {new_ends}; step {step} is '
                 f'in stage {_stage_index(old.stages, step)} under the old schedule and '
                 f'{_stage_index(new.stages, step)} under the new')
  return [line for line in lines if line]


def _device_change(old: ScheduleAt, new: ScheduleAt) -> str:
  if (old.devices, old.processes) == (new.devices, new.processes):
    return ''
  line = (f'devices {old.devices} → {new.devices} (processes {old.processes} → {new.processes}): batch per '
          f'device {old.batch / old.devices:g} → {new.batch / new.devices:g}')
  if old.batch == new.batch:
    line += f'; the global batch stays {new.batch}, so the LR and the step → epoch mapping stay'
  if old.processes != new.processes:
    line += '; each host now reads another share of the data, so the example order differs from here on'
  return line


def _epoch_mapping_change(old: ScheduleAt, new: ScheduleAt, step: int) -> str:
  """Steps per epoch, the epoch of the resume step under both mappings, where the input continues, total steps."""
  if (old.steps_per_epoch, old.examples) == (new.steps_per_epoch, new.examples):
    return '' if old.total_steps == new.total_steps else (
        f'total steps {old.total_steps} → {new.total_steps} (the step → epoch mapping stays: '
        f'{new.steps_per_epoch:.6g} steps per epoch)')
  shift = new.examples - old.examples
  stream = ('the input continues where it stopped' if not shift else
            'the input continues where the new mapping puts it: ' +
            (f'{shift} examples of the data stream skipped' if shift > 0 else f'{-shift} examples seen again'))
  return (f'step → epoch mapping: steps per epoch {old.steps_per_epoch:.6g} → {new.steps_per_epoch:.6g}; '
          f'step {step} is epoch {old.epoch:.4f} under the old mapping and {new.epoch:.4f} under the new '
          f'({stream}); total steps {old.total_steps} → {new.total_steps}')


def _stage_index(stages, step: int) -> int:
  return progressive.stage_at(list(stages), step).index
