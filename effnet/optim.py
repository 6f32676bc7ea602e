"""Optimizer, learning-rate schedule, weight decay and EMA of the official EfficientNet recipe, in optax.

Why a module of its own: the published EfficientNet v1/v2 numbers depend on details that the usual optax / Keras /
PyTorch defaults get wrong (docs/fidelity.md §2), so each one is pinned
here once and tested against the TF formulas:

* TF1 ``RMSPropOptimizer``: the mean-square slot starts at **1** (not 0), eps sits **inside** the sqrt, and the learning
  rate is applied **inside** the momentum accumulator (``mom <- mu*mom + lr*g/sqrt(ms+eps)``; ``w <- w - mom``).
* The LR is ``lr_base * global_batch / 256``, staircase-exponential counted from step 0 and *replaced* (not multiplied)
  by a linear warmup, so it drops from ~lr to lr*0.97**2 when warmup ends at 5 epochs.
* Weight decay is a coupled L2 term ``wd * 0.5 * sum(w**2)`` added to the loss (its gradient goes through RMSProp); the
  set of decayed variables differs per official codebase, hence the three named rules.
* EMA of the weights with TF's ``num_updates`` warm-up: ``decay_t = min(decay, (1+t)/(10+t))``.

Pure JAX/optax, no TensorFlow and no config parsing beyond :func:`build_optimizer`, so it is usable from a notebook.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ('exponential', 'cosine', 'constant')
WEIGHT_DECAY_RULES = ('tpu', 'automl', 'kernels')

ScalarOrSchedule = Union[float, optax.Schedule]


# ----------------------------------------------------------------------------------------------------------------------
# RMSProp with TF1 semantics
# ----------------------------------------------------------------------------------------------------------------------
def rmsprop_tf(learning_rate: ScalarOrSchedule, decay: float = 0.9, momentum: float = 0.9,
               eps: float = 1e-3, initial_scale: float = 1.0) -> optax.GradientTransformation:
  """TF1 ``tf.compat.v1.train.RMSPropOptimizer(lr, decay, momentum, eps)`` (non-centered) as an optax transform.

  TF update per step t (``ApplyRMSProp``)::

      ms  <- decay*ms + (1-decay)*g**2                  (ms initialised to 1.0)
      mom <- momentum*mom + lr_t * g / sqrt(ms + eps)  (mom initialised to 0)
      w   <- w - mom

  Built as ``scale_by_rms -> scale_by_learning_rate -> trace``. The learning rate is applied *before* the momentum
  trace, so the trace accumulates ``-lr_t*g/sqrt(ms+eps)`` = ``-mom`` exactly as TF does. This order matters when the
  LR changes over time (warmup, decay steps): the alternative ``trace -> scale(lr)`` would rescale the whole past
  momentum by the *current* lr, which is not TF's rule. ``optax.rmsprop(..., initial_scale=1., eps_in_sqrt=True,
  momentum=...)`` uses this same order in optax 0.2.8; the chain is spelled out here so a future optax change cannot
  silently move the LR outside the momentum. Step t uses ``learning_rate(t)`` with t counted from 0 (TF reads the
  global step before incrementing it).

  ``initial_scale`` is the mean-square slot's start value: 1.0 in TF1 (the official recipe). With gradients far below
  1 it divides the first few dozen updates by ~1 instead of by their RMS, a slow start that 350 epochs never notice
  and a run of a few hundred steps does (``optim.rmsprop_initial_scale``; README "The demo" measures 0 against 1).

  The arguments' ranges are those of optim.rmsprop_decay, optim.momentum, optim.eps and optim.rmsprop_initial_scale,
  checked by ``config_lib.validate``.
  """
  return optax.chain(
      optax.scale_by_rms(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=True, bias_correction=False),
      optax.scale_by_learning_rate(learning_rate),  # multiplies by -lr_t (flip_sign) before the trace: lr inside.
      optax.trace(decay=momentum, nesterov=False),
  )


# ----------------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------------------------------
def lr_schedule(base_lr: float, steps_per_epoch: float, warmup_epochs: float = 5, decay_epochs: float = 2.4,
                decay_factor: float = 0.97, schedule: str = 'exponential', total_steps: float | None = None,
                staircase: bool = True) -> optax.Schedule:
  """The official ``build_learning_rate`` (TPU utils.py / AML utils.py) as an optax schedule (jit-safe).

  * ``'exponential'``: ``base_lr * decay_factor ** floor(step / (decay_epochs * steps_per_epoch))``, counted from
    step 0 (``staircase=False`` drops the floor).
  * ``'cosine'``: ``0.5 * base_lr * (1 + cos(pi * step / total_steps))``, also counted from step 0 as in the official
    code (not from the end of warmup); the step is clamped at ``total_steps`` so the LR stays 0 afterwards.
    ``total_steps`` may be a float: the official period is ``epochs * steps_per_epoch``, not the rounded step count.
  * ``'constant'``: ``base_lr``.

  Then, while ``step < warmup_steps = int(warmup_epochs * steps_per_epoch)``, the value is *replaced* by
  ``base_lr * step / warmup_steps``. ``steps_per_epoch`` is a float (n_train / global_batch), as in the official code.
  Computed in float32 with the official operations in the official order, so the values equal those of the official
  code run with TF (tests/test_official_schedule.py: relative 1e-6 at every recorded step, docs/fidelity.md §2).
  The config fields' ranges (warmup, decay) are checked by ``config_lib.validate``.
  """
  # A wrong name would silently give the constant branch, and notebooks call this without a config: the one check
  # of the name it dispatches on.
  if schedule not in SCHEDULES:
    raise ValueError(f'optim.schedule={schedule!r}; allowed: {SCHEDULES}')
  # Both come from the dataset size, which config_lib.validate cannot see.
  if not steps_per_epoch > 0:
    raise ValueError(f'steps_per_epoch={steps_per_epoch!r}; allowed: > 0')
  if schedule == 'cosine' and not (total_steps and total_steps > 0):
    raise ValueError(f'total_steps={total_steps!r}; allowed: > 0 for optim.schedule=cosine')

  base_lr = float(base_lr)
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  decayed = _decayed_lr(base_lr, schedule, float(decay_epochs) * float(steps_per_epoch), decay_factor, staircase,
                        total_steps)

  def fn(step):
    step_f = jnp.asarray(step).astype(jnp.float32)
    lr = decayed(step_f)
    if warmup_steps > 0:
      lr = jnp.where(step_f < warmup_steps, _divide(base_lr * step_f, warmup_steps), lr)
    return lr.astype(jnp.float32)

  return fn


def _divide(x, divisor: float):
  """``x / divisor`` as one IEEE float32 division, as TF computes it.

  XLA turns a division by a constant into a multiplication by its reciprocal, which is 1 ulp off for about half the
  steps (measured on CPU): late in a cosine schedule ``1 + cos`` amplifies that ulp to ~1e-6 of the LR at 90 % and
  more later, and at a decay boundary it can move ``floor`` into the neighbouring period. The barrier keeps the
  divisor from being seen as a constant (for a scalar step, the trainer's case; a vector of steps is still rewritten).
  """
  return x / jax.lax.optimization_barrier(jnp.float32(divisor))


def _decayed_lr(base_lr: float, schedule: str, decay_steps: float, decay_factor: float, staircase: bool,
                total_steps: float | None) -> Callable[[jax.Array], jax.Array]:
  """The schedule before warm-up, a function of the float32 step."""
  if schedule == 'exponential':
    # The official code raises float32(decay_factor) (0.9700000286...) to the power: 4.7e-6 above 0.97**145 at 145
    # periods. Its log is taken on the host in float64; exp(p * log f) on device is closer than a float32 pow.
    log_factor = math.log(float(np.float32(decay_factor)))

    def exponential(step_f):
      p = _divide(step_f, decay_steps)
      return base_lr * jnp.exp((jnp.floor(p) if staircase else p) * log_factor)

    return exponential
  if schedule == 'cosine':
    period = float(total_steps)
    return lambda step_f: 0.5 * base_lr * (1.0 + jnp.cos(_divide(math.pi * jnp.minimum(step_f, period), period)))
  return lambda step_f: jnp.full_like(step_f, base_lr)


# ----------------------------------------------------------------------------------------------------------------------
# Weight decay (coupled L2)
# ----------------------------------------------------------------------------------------------------------------------
def _key_name(k: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path_names(path) -> list[str]:
  return [_key_name(k) for k in path]


_BN_TOKEN = re.compile(r'^bn\d*$')


def is_batchnorm_module(name: str) -> bool:
  """True for a BatchNorm module name: any '_'-separated token 'bn'/'bn<digits>' ('bn', 'stem_bn', 'bn0', 'bn_exp',
  'proj_bn1'), or Flax/TF default names containing 'batchnorm' / 'batch_norm' / 'batch_normalization'."""
  n = name.lower()
  if 'batchnorm' in n or 'batch_norm' in n:
    return True
  return any(_BN_TOKEN.match(tok) for tok in n.split('_'))


def weight_decay_mask(params, rule: str = 'tpu'):
  """A pytree of bools (same structure as ``params``): True = the leaf gets L2 weight decay.

  * ``'tpu'`` (tensorflow/tpu efficientnet): every trainable variable except BatchNorm ones (TF: name lacks
    'batch_normalization'), so SE and classifier biases ARE decayed. A leaf is BN when any module on its path is a BN
    module per :func:`is_batchnorm_module` (our BN modules are named ``*bn*``; Flax's default ``BatchNorm_<i>`` too).
  * ``'automl'`` (google/automl efficientnetv2 main.py): excludes TF regex ``.*(bias|gamma|beta).*``; in Flax naming
    that is every leaf whose *leaf name* contains bias/scale/gamma/beta (BN scale+bias, conv/dense biases).
  * ``'kernels'`` (automl main_tf2.py, regex ``.*(kernel|weight):0$``): only leaves named 'kernel' or 'weight'.
  """
  # A wrong name would silently decay like 'kernels', and the train step calls this with a plain value: the one
  # check of the name it dispatches on.
  if rule not in WEIGHT_DECAY_RULES:
    raise ValueError(f'optim.weight_decay_rule={rule!r}; allowed: {WEIGHT_DECAY_RULES}')

  def decide(path, _):
    names = _path_names(path)
    leaf = names[-1] if names else ''
    if rule == 'tpu':
      return not any(is_batchnorm_module(n) for n in names[:-1])
    if rule == 'automl':
      return re.search(r'(bias|scale|gamma|beta)', leaf) is None
    return re.fullmatch(r'(kernel|weight)', leaf) is not None

  return jax.tree_util.tree_map_with_path(decide, params)


def l2_loss(params, mask=None) -> jax.Array:
  """``sum over masked leaves of tf.nn.l2_loss(w) = 0.5 * sum(w**2)``, in float32 (mask None = every leaf).

  The train step adds ``weight_decay * l2_loss(params, mask)`` to the loss (coupled L2: the gradient ``wd * w`` then
  passes through RMSProp, as in the official code; it is not AdamW-style decoupled decay).
  """
  leaves = jax.tree.leaves(params)
  if mask is None:
    keep = [True] * len(leaves)
  else:
    keep = jax.tree.leaves(mask)
    if len(keep) != len(leaves):
      raise ValueError(f'mask has {len(keep)} leaves but params has {len(leaves)}; build it with weight_decay_mask')
  total = jnp.zeros((), jnp.float32)
  for w, m in zip(leaves, keep):
    if m:
      total = total + jnp.sum(jnp.square(jnp.asarray(w).astype(jnp.float32)))
  return 0.5 * total


# ----------------------------------------------------------------------------------------------------------------------
# Exponential moving average of the weights
# ----------------------------------------------------------------------------------------------------------------------
def ema_decay_at(step, decay: float) -> jax.Array:
  """TF ``ExponentialMovingAverage(decay, num_updates=step)``: ``min(decay, (1 + step) / (10 + step))`` (float32)."""
  step_f = jnp.asarray(step).astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step_f) / (10.0 + step_f))


# Progressive learning and the EMA (``optim.ema_per_stage``): the official code keeps one EMA across stages, with
# num_updates = the global step. Weights and BN statistics of a stage are tuned to that stage's image size, so an
# average that reaches back over a switch mixes in statistics of another size: in the 674-step progressive demo
# ~8% of the final average comes from the 24 px stage, and that run evaluated 92.5% with the EMA against 95.5% with
# the raw weights. With ``ema_per_stage`` the warm-up restarts at every stage (num_updates = steps since the stage
# began: the trainer passes the stage's first step as ``ema_start_step``), so within ~10 steps of a switch the average
# holds only weights of the current size. Over a 350-epoch run the last stage alone is longer than the 10k-step
# window of decay 0.9999, so the final EMA is the same either way; the default stays official (False).
def ema_update(ema_tree, new_tree, step, decay: float):
  """One EMA step in float32: ``ema <- ema - (1 - d) * (ema - new)`` with ``d = ema_decay_at(step, decay)`` (TF form).

  ``step`` plays TF's ``num_updates``: the official code applies the EMA after the optimizer step has incremented the
  global step, so pass the step count *after* the update (1 for the first update) to match it.
  """
  d = ema_decay_at(step, decay)

  def upd(e, n):
    e = jnp.asarray(e).astype(jnp.float32)
    return e - (1.0 - d) * (e - jnp.asarray(n).astype(jnp.float32))

  return jax.tree.map(upd, ema_tree, new_tree)


# ----------------------------------------------------------------------------------------------------------------------
# Frozen backbone (fine-tuning)
# ----------------------------------------------------------------------------------------------------------------------
FREEZE_MODES = ('none', 'backbone')
CLASSIFIER = 'head_dense'  # the final Dense: what trains when the backbone is frozen


def freeze_labels(params, mode: str = 'backbone'):
  """A pytree of 'train' / 'frozen' labels like ``params`` for ``optax.multi_transform``: with 'backbone' only the
  classifier (``head_dense``) trains; with 'none' everything does."""
  if mode not in FREEZE_MODES:  # plain-value callers (notebooks); a config's value is checked by config_lib
    raise ValueError(f'train.freeze={mode!r}; allowed: {FREEZE_MODES}')

  def label(path, _):
    return 'train' if mode == 'none' or CLASSIFIER in _path_names(path) else 'frozen'

  return jax.tree_util.tree_map_with_path(label, params)


def with_freeze(tx: optax.GradientTransformation, mode: str) -> optax.GradientTransformation:
  """``tx`` for the trained parameters, ``optax.set_to_zero`` for the frozen ones (``train.freeze``).

  A frozen parameter gets a zero update, its coupled L2 gradient included, so it and its EMA copy stay bit for bit
  what they were initialised with, and it has no optimizer slots. BatchNorm is not frozen: as with the official
  fine-tuning code's only way to train a subset of variables (automl efficientnetv2 ``train.varsexp``, a filter of the
  variables the optimizer updates), the network still runs in training mode, so batch statistics normalise and the
  moving statistics keep updating (README "Fine-tuning").
  """
  if mode == 'none':
    return tx
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               lambda params: freeze_labels(params, mode))


# ----------------------------------------------------------------------------------------------------------------------
# From config
# ----------------------------------------------------------------------------------------------------------------------
def scaled_base_lr(lr_base: float, global_batch: int) -> float:
  """The official linear scaling rule ``lr_base * global_batch / 256``: the peak LR before warmup and decay (also
  what a resume with another batch reports as changed)."""
  return float(lr_base) * global_batch / 256.0


def build_optimizer(optim_cfg, global_batch: int, steps_per_epoch: float, total_steps: int | None,
                    lr_scale: Union[float, Callable[[Any], Any]] = 1.0, cosine_steps: float | None = None):
  """Returns ``(tx, schedule)`` from a whole, validated ``config.optim``; ``lr = lr_base * global_batch / 256``.

  Reads lr_base, warmup_epochs, decay_epochs, decay_factor, schedule, rmsprop_decay, momentum, eps and
  rmsprop_initial_scale straight from the config (their defaults are ``config_lib.base_config``'s, their checks
  ``config_lib.validate``'s). ``weight_decay`` and ``weight_decay_rule`` are NOT part of ``tx`` (coupled L2 goes in
  the loss: :func:`weight_decay_mask`, :func:`l2_loss`).
  ``lr_scale``: a float or a jit-safe function of the step (e.g. ``progressive.lr_scale_schedule``) multiplying the
  schedule, for per-stage batch sizes. The returned schedule includes it (log it as the effective LR).
  ``cosine_steps``: the cosine schedule's period when it is not ``total_steps``. The official model_fn divides by
  ``epochs * steps_per_epoch``, a float (186,332.15 for 60 ImageNet-21k epochs, where the run lasts 186,332 steps):
  ``schedule.lr_period_steps`` gives it (docs/fidelity.md §2).
  """
  base_lr = scaled_base_lr(optim_cfg.lr_base, global_batch)
  sched = lr_schedule(
      base_lr, steps_per_epoch, warmup_epochs=optim_cfg.warmup_epochs, decay_epochs=optim_cfg.decay_epochs,
      decay_factor=optim_cfg.decay_factor, schedule=optim_cfg.schedule,
      total_steps=total_steps if cosine_steps is None else cosine_steps)
  if callable(lr_scale):
    base_sched = sched
    sched = lambda step: base_sched(step) * jnp.asarray(lr_scale(step), jnp.float32)  # noqa: E731
  elif float(lr_scale) != 1.0:
    base_sched, factor = sched, float(lr_scale)
    sched = lambda step: base_sched(step) * factor  # noqa: E731
  tx = rmsprop_tf(sched, decay=optim_cfg.rmsprop_decay, momentum=optim_cfg.momentum, eps=optim_cfg.eps,
                  initial_scale=optim_cfg.rmsprop_initial_scale)
  return tx, sched
