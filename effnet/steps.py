"""Pure train and eval steps (jit them with the shardings in effnet.parallel / effnet.compile).

The train step: images (data.image_dtype) → normalise on device → optional mixup/cutmix → forward (bf16 activations,
f32 logits) → label-smoothed cross entropy + coupled L2 → TF-RMSProp → EMA. Per-stage values (dropout rate, mixup and
cutmix alphas) are traced scalars, so they change between progressive-learning stages without a recompile. A
non-finite loss, update or new state value (weights, optimizer slots, BN statistics, EMA) never reaches the state: the
update is dropped and the step is reported, and the trainer stops (nan_policy='stop') or carries on
(nan_policy='skip').
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics

from effnet import optim
from effnet.data import normalize
from effnet.data.mix import mixup_cutmix
from effnet.data.policy import level_arguments

NO_STEP = 2 ** 31 - 1


@flax.struct.dataclass
class FirstStep(metrics.Metric):
  """The smallest step number seen (NO_STEP when none): which step first produced a non-finite loss."""
  value: jnp.ndarray

  @classmethod
  def from_model_output(cls, bad_step, **_):
    return cls(value=jnp.asarray(bad_step, jnp.int32))

  def merge(self, other):
    return type(self)(value=jnp.minimum(self.value, other.value))

  def compute(self):
    return self.value


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  ce_loss: metrics.Average.from_output('ce_loss')
  l2_loss: metrics.Average.from_output('l2_loss')
  top1: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  nonfinite_steps: metrics.Average.from_output('nonfinite')
  first_nonfinite_step: FirstStep


@jax.jit
def merge_train_metrics(total: TrainMetrics, step_metrics: TrainMetrics) -> TrainMetrics:
  """`total.merge(step_metrics)` as one compiled call, once per step. Why: clu's merge is ~20 eager jnp operations,
  each dispatched from Python on the thread that also drives the step: in a py-spy profile of the demo they were a
  quarter of the main thread's samples, and alone they take 0.13-0.21 ms per merge against 0.04-0.06 jitted (quiet
  2-core CPU)."""
  return total.merge(step_metrics)


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  top1: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the steps (hashable; part of the compiled program)."""
  num_classes: int
  normalization: str = 'imagenet'
  label_smoothing: float = 0.1
  weight_decay: float = 1e-5
  weight_decay_rule: str = 'tpu'
  ema_decay: float = 0.9999
  use_mixing: bool = False
  compute_dtype: Any = jnp.float32
  randaug_layers: int = 0   # > 0: RandAugment on the device with this many ops (data.randaug_on_device)

  @classmethod
  def from_config(cls, config, compute_dtype, use_mixing):
    on_device = config.data.randaug_on_device and config.data.augment == 'randaugment'
    return cls(num_classes=config.model.num_classes, normalization=config.data.normalization,
               label_smoothing=config.optim.label_smoothing, weight_decay=config.optim.weight_decay,
               weight_decay_rule=config.optim.weight_decay_rule, ema_decay=config.optim.ema_decay,
               use_mixing=use_mixing, compute_dtype=compute_dtype,
               randaug_layers=config.data.randaug_num_layers if on_device else 0)


def _topk_correct(logits, labels, k):
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


def hyper_defaults(dropout_rate=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, randaug_magnitude=0.0, ema_start_step=0):
  """The traced per-stage values the train step takes.

  `ema_start_step`: the step the EMA's warm-up counts from (TF's num_updates = step − ema_start_step). 0 is the
  official rule; the trainer passes each stage's first step with `optim.ema_per_stage` (see effnet.optim).
  """
  return {'dropout_rate': jnp.float32(dropout_rate), 'mixup_alpha': jnp.float32(mixup_alpha),
          'cutmix_alpha': jnp.float32(cutmix_alpha),
          # RandAugment's op arguments at this magnitude, float64 then float32 as the official code (docs/fidelity.md §3)
          'randaug_magnitude': jnp.asarray(level_arguments(randaug_magnitude)),
          'ema_start_step': jnp.int32(ema_start_step)}


def make_train_step(module, tx: optax.GradientTransformation, schedule: Callable, cfg: StepConfig):
  """Returns train_step(state, batch, hyper) -> (state, TrainMetrics)."""

  def train_step(state, batch, hyper):
    key = state.step_key()
    mix_key, drop_key, aug_key = jax.random.split(key, 3)
    images = batch['image']
    if cfg.randaug_layers:
      from effnet.data import randaugment_jax  # pylint: disable=g-import-not-at-top
      images = randaugment_jax.randaugment(aug_key, images, cfg.randaug_layers, hyper['randaug_magnitude'])
    images = normalize(images, cfg.normalization, cfg.compute_dtype)
    labels = batch['label'].astype(jnp.int32)
    targets = jax.nn.one_hot(labels, cfg.num_classes, dtype=jnp.float32)
    if cfg.use_mixing:
      images, targets = mixup_cutmix(mix_key, images, targets, hyper['mixup_alpha'], hyper['cutmix_alpha'])
      images = images.astype(cfg.compute_dtype)
    if cfg.label_smoothing:
      targets = targets * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / cfg.num_classes
    wd_mask = optim.weight_decay_mask(state.params, cfg.weight_decay_rule)

    def loss_fn(params):
      logits, new_vars = module.apply({'params': params, 'batch_stats': state.batch_stats}, images, train=True,
                                      dropout_rate=hyper['dropout_rate'], mutable=['batch_stats'],
                                      rngs={'dropout': drop_key})
      ce = optax.softmax_cross_entropy(logits, targets).mean()
      l2 = optim.l2_loss(params, wd_mask)
      return ce + cfg.weight_decay * l2, (logits, new_vars['batch_stats'], ce, l2)

    (loss, (logits, new_bs, ce, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema_updates = step - hyper['ema_start_step']
    new_ema = optim.ema_update(state.ema_params, new_params, ema_updates, cfg.ema_decay)
    new_ema_bs = optim.ema_update(state.ema_batch_stats, new_bs, ema_updates, cfg.ema_decay)
    # A finite loss can still come with a non-finite update (an LR that overflows float32) or a non-finite
    # optimizer slot (a gradient above ~1.8e19 squares to inf in RMSProp's mean square while its update g/sqrt(inf)
    # is 0): guard the loss, the update and the gradient, so no inf/NaN ever reaches the state or a checkpoint.
    # Their global norms overflow exactly when (or slightly before) a squared entry would, and cost two reductions
    # over the tree, where a per-leaf check of every state variable multiplied the XLA compile time (V2-S: 13x).
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates)) & jnp.isfinite(optax.tree.norm(grads))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = state.replace(
        step=step, params=keep(new_params, state.params), batch_stats=keep(new_bs, state.batch_stats),
        opt_state=keep(new_opt, state.opt_state), ema_params=keep(new_ema, state.ema_params),
        ema_batch_stats=keep(new_ema_bs, state.ema_batch_stats))
    m = TrainMetrics.single_from_model_output(
        loss=loss, ce_loss=ce, l2_loss=l2, top1=_topk_correct(logits, labels, 1).mean(),
        top5=_topk_correct(logits, labels, min(5, cfg.num_classes)).mean(), learning_rate=schedule(state.step),
        nonfinite=1.0 - finite.astype(jnp.float32), bad_step=jnp.where(finite, NO_STEP, state.step))
    return new_state, m

  return train_step


def make_eval_step(module, cfg: StepConfig, ema: bool = True):
  """Returns eval_step(state, batch) -> {'': EvalMetrics[, 'raw_': EvalMetrics]}, counting only mask == 1.

  The '' entry uses the EMA weights when `ema` (the official eval), else the raw ones. With `ema` the raw weights
  are evaluated too, in the same pass over the data: a run then shows at every eval whether averaging helps.
  """

  def metrics_for(variables, images, labels, mask):
    logits = module.apply(variables, images, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return EvalMetrics.single_from_model_output(
        loss=ce, top1=_topk_correct(logits, labels, 1), top5=_topk_correct(logits, labels, min(5, cfg.num_classes)),
        mask=mask)

  def eval_step(state, batch):
    images = normalize(batch['image'], cfg.normalization, cfg.compute_dtype)
    labels = batch['label'].astype(jnp.int32)
    mask = batch['mask'].astype(jnp.float32)
    out = {'': metrics_for(state.eval_variables(ema), images, labels, mask)}
    if ema:
      out['raw_'] = metrics_for(state.eval_variables(False), images, labels, mask)
    return out

  return eval_step
