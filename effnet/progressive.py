"""EfficientNetV2 progressive learning: which image size / regularization / batch each training step uses.

Why a pure module: the stage of a step must be a pure function of the global step (plus config), so a run resumed from
any checkpoint lands in the same stage with the same values, and the trainer, the data pipeline and the tests all agree
on it without TensorFlow or device state. The trainer rebuilds its input pipeline (and recompiles) at stage
boundaries; this module only says what each stage is.

Two rules (``config.progressive.rule``), because the paper and the released code disagree
(docs/fidelity.md §4 and §8):

* ``'paper'`` (P2 Algorithm 1 / Table 6): stage i of M uses ``S_i = S0 + (Se - S0) * i / (M - 1)`` and every
  regularization ``r_i = r0 + (re - r0) * i / (M - 1)``, including the head dropout; stage 0 trains at S0 = 128.
* ``'code'`` (google/automl efficientnetv2 main.py, the code behind the released checkpoints):
  ``size_i = int(ibase + (Se - ibase) * (i + 1) / M)`` with ibase = ``size_min`` = 128 (so stage 0 never uses 128:
  S 171/214/257/300), RandAugment ``linspace(randaug_min, randaug_max, M)``, mixup = cutmix ``linspace(0, alpha, M)``,
  and **no dropout schedule** (the model keeps its rate: ``Stage.dropout_rate`` is ``dropout_max`` or None).

Default rule: ``'code'``. It is what produced the published V2 checkpoints and accuracies, its values equal those of
AML main.py's stage loop run for every V2 variant (tests/test_official_schedule.py; the paper's Table 6 is known here
only through third-party transcriptions), and it needs no run-time dropout change in the model. ``'paper'`` is
available for ablations.

In both rules stage i ends at ``int((i + 1) / M * total_steps)`` (the reference's ``max_steps``); ``M = 1`` gives one
stage at the final (max) values. The last stage always trains at exactly the target size (``size_max``, or the
``train_size`` argument when ``size_max`` is None), never rounded, since the train/eval size ratio is tuned for it.

Size rounding (``size_multiple``, default 16): the other stages are rounded to the *nearest* multiple (half up,
``arch.round_to_multiple``), clamped to [size_multiple, target]. 16 keeps every stage's feature maps integer through
4 stride-2 levels and shapes tile-friendly on TPU. With ``size_multiple`` 0/None the sizes are unrounded: the 'code'
rule then reproduces the reference exactly (int() truncation, S 171/214/257/300) and 'paper' rounds to the nearest integer.
:func:`presets` sets 0 for 'code' (exact reference) and 16 for 'paper'.

Optional per-stage batch (``scale_batch``): ``batch_i = base * (Se / S_i)**2`` floored to a multiple of
``batch_multiple`` (never below the base batch), so activation memory per step stays ~constant. Stage boundaries stay
in steps, so early stages then see more images than at the base batch; :func:`lr_scale` / :func:`lr_scale_schedule`
give the linear LR factor ``batch_i / base``. The official code keeps the batch fixed (scale_batch False).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from effnet.models import arch

RULES = ('paper', 'code')
DEFAULT_RULE = 'code'  # config_lib.base_config's progressive.rule, and presets' rule when none is given
VARIANTS = tuple(arch.V2_TABLE)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One progressive-learning stage: steps [start_step, end_step) and the values to train them with.

  ``dropout_rate`` None means "keep the model's configured rate" (the 'code' rule without dropout_max).
  """
  index: int
  start_step: int
  end_step: int
  image_size: int
  randaug_magnitude: float
  mixup_alpha: float
  cutmix_alpha: float
  dropout_rate: float | None
  batch_size: int


def _linspace(lo: float, hi: float, i: int, m: int) -> float:
  if m == 1:
    return float(hi)
  return float(np.linspace(float(lo), float(hi), m)[i])


def _stage_size(rule: str, s0: int, se: int, i: int, m: int, mult: int | None) -> int:
  if i == m - 1:
    return int(se)
  if rule == 'paper':
    raw = s0 + (se - s0) * i / (m - 1)  # multiply first: 128 + 252*2/3 is exactly 296.0
  else:
    raw = s0 + (se - s0) * (float(i + 1) / float(m))  # the reference's float expression
  if mult:  # nearest multiple, clamped to [mult, target]
    return max(int(mult), min(arch.round_to_multiple(raw, mult), int(se)))
  return int(math.floor(raw + 0.5)) if rule == 'paper' else int(raw)


def _stage_dropout(prog_cfg, i: int, m: int) -> float | None:
  """'paper' ramps dropout_min -> dropout_max; 'code' computes a ramp and deletes it (the reference), so the model
  keeps its rate, or dropout_max when that is set. None: keep config.model.dropout_rate."""
  if prog_cfg.rule == 'paper':
    return None if prog_cfg.dropout_min is None else _linspace(prog_cfg.dropout_min, prog_cfg.dropout_max, i, m)
  return None if prog_cfg.dropout_max is None else float(prog_cfg.dropout_max)


def _stage_batch(base_batch_size: int, size: int, final_size: int, prog_cfg) -> int:
  """With scale_batch, base * (Se / Si)**2 floored to a multiple of batch_multiple and never below the base."""
  if not prog_cfg.scale_batch or size >= final_size:
    return int(base_batch_size)
  batch = (base_batch_size * final_size * final_size) // (size * size)  # exact integer floor of base*(Se/Si)^2
  multiple = int(prog_cfg.batch_multiple)
  return int(max(base_batch_size, batch // multiple * multiple))


def build_stages(prog_cfg, total_steps: int, train_size: int, base_batch_size: int) -> list[Stage]:
  """All stages for a run of ``total_steps`` global steps.

  ``prog_cfg`` is a whole ``config.progressive`` whose fields ``config_lib.validate`` has checked (including
  size_min <= the final size). ``train_size`` is the final training image size (config.data.image_size), used when
  ``progressive.size_max`` is None; ``base_batch_size`` is config.train.batch_size (the batch of the last stage).
  """
  # total_steps comes from the dataset size, which config_lib.validate cannot see: < 1 would give only empty stages.
  if total_steps < 1:
    raise ValueError(f'total_steps={total_steps!r}; allowed: >= 1')
  m = int(prog_cfg.num_stages)
  final_size = int(train_size if prog_cfg.size_max is None else prog_cfg.size_max)
  stages, start = [], 0
  for i in range(m):
    end = int(float(i + 1) / float(m) * total_steps)
    size = _stage_size(prog_cfg.rule, int(prog_cfg.size_min), final_size, i, m, prog_cfg.size_multiple)
    stages.append(Stage(
        index=i, start_step=start, end_step=end, image_size=size,
        randaug_magnitude=_linspace(prog_cfg.randaug_min, prog_cfg.randaug_max, i, m),
        mixup_alpha=_linspace(prog_cfg.mixup_min, prog_cfg.mixup_max, i, m),
        cutmix_alpha=_linspace(prog_cfg.cutmix_min, prog_cfg.cutmix_max, i, m),
        dropout_rate=_stage_dropout(prog_cfg, i, m),
        batch_size=_stage_batch(base_batch_size, size, final_size, prog_cfg)))
    start = end
  return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage that trains global step ``step`` (0-based); past the end -> the last stage. Empty stages are skipped."""
  if not stages:
    raise ValueError('stages must be a non-empty list (see build_stages)')
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step!r}')
  for s in stages:
    if step < s.end_step:
      return s
  return stages[-1]


def lr_scale(stage: Stage, base_batch: int) -> float:
  """Linear LR scaling factor for a stage's batch: ``stage.batch_size / base_batch`` (1.0 without scale_batch)."""
  return stage.batch_size / float(base_batch)


def lr_scale_schedule(stages: list[Stage], base_batch: int) -> Callable[[Any], jnp.ndarray]:
  """A jit-safe ``step -> lr_scale(stage_at(stages, step))`` (for ``optim.build_optimizer(lr_scale=...)``)."""
  ends = jnp.asarray([s.end_step for s in stages[:-1]], jnp.int32)
  scales = jnp.asarray([lr_scale(s, base_batch) for s in stages], jnp.float32)

  def fn(step):
    idx = jnp.searchsorted(ends, jnp.asarray(step, jnp.int32), side='right')
    return scales[idx]

  return fn


def stage_overrides(stage: Stage) -> dict[str, Any]:
  """The config values a stage sets, keyed by dotted config name (dropout omitted when the stage keeps the model's)."""
  out = {
      'data.image_size': stage.image_size,
      'data.randaug_magnitude': stage.randaug_magnitude,
      'data.mixup_alpha': stage.mixup_alpha,
      'data.cutmix_alpha': stage.cutmix_alpha,
      'train.batch_size': stage.batch_size,
  }
  if stage.dropout_rate is not None:
    out['model.dropout_rate'] = stage.dropout_rate
  return out


# P2 Table 6: (size min, size max, RA min, RA max, mixup max, dropout min, dropout max).
_PAPER_TABLE = {
    's': (128, 300, 5.0, 15.0, 0.0, 0.1, 0.3),
    'm': (128, 380, 5.0, 20.0, 0.2, 0.1, 0.4),
    'l': (128, 380, 5.0, 25.0, 0.4, 0.1, 0.5),
}
PAPER_VARIANTS = tuple(_PAPER_TABLE)


def _normalize_variant(variant: str) -> str:
  v = str(variant).lower()
  for prefix in ('efficientnetv2-', 'efficientnet_v2_', 'efficientnetv2_', 'v2-', 'v2_'):
    if v.startswith(prefix):
      v = v[len(prefix):]
  return v


def _paper_preset(v: str) -> dict[str, Any]:
  s0, se, ra0, ra1, mix, d0, d1 = _PAPER_TABLE[v]
  return dict(rule='paper', num_stages=4, size_min=s0, size_max=se, randaug_min=ra0, randaug_max=ra1,
              mixup_min=0.0, mixup_max=mix, cutmix_min=0.0, cutmix_max=0.0, dropout_min=d0, dropout_max=d1,
              size_multiple=16)


def _code_preset(v: str) -> dict[str, Any]:
  """AML main.py run on the variant's row of arch.V2_TABLE (effnetv2_configs.py): sizes from 128 to its train size,
  RandAugment from 5 to its magnitude, mixup = cutmix from 0 to its alpha, its dropout not scheduled.

  B-variants train with AutoAugment ('effnetv1_autoaug'), so their RandAugment ramp linspace(5, 0, 4) is unused; it
  is kept as the reference computes it.
  """
  _, _, _, train_size, _, dropout, randaug, mix = arch.V2_TABLE[v]
  return dict(rule='code', num_stages=4, size_min=128, size_max=train_size, randaug_min=5.0,
              randaug_max=float(randaug), mixup_min=0.0, mixup_max=mix, cutmix_min=0.0, cutmix_max=mix,
              dropout_min=dropout, dropout_max=dropout, size_multiple=0)


def presets(variant: str, rule: str = DEFAULT_RULE) -> dict[str, Any]:
  """config.progressive values for a V2 variant ('s', 'm', 'l', 'xl', 'b0'..'b3'; 'efficientnetv2-s' also accepted).

  'paper' = P2 Table 6 (S, M, L only; the paper gives no schedule for XL / B0-B3); 'code' = the AML per-model
  config run through AML main.py. Does not include ``enabled``, ``scale_batch`` or ``batch_multiple``.
  """
  # Configs call this with plain values before config_lib.validate runs, and a wrong rule would silently take the
  # 'code' branch: the one check of the names it dispatches on.
  if rule not in RULES:
    raise ValueError(f'progressive.rule={rule!r}; allowed: {RULES}')
  v = _normalize_variant(variant)
  if v not in VARIANTS:
    raise ValueError(f'model.variant={variant!r} for progressive presets; allowed: {VARIANTS}')
  if rule == 'code':
    return _code_preset(v)
  if v not in PAPER_VARIANTS:
    raise ValueError(f"model.variant={variant!r} for progressive.rule='paper' (P2 Table 6); allowed: "
                     f"{PAPER_VARIANTS}, or progressive.rule='code'")
  return _paper_preset(v)
