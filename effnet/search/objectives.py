"""The papers' search objectives, as plain arithmetic on measured numbers.

V2 (EfficientNetV2 §3.3): reward = A · S^w · P^v with w = −0.07, v = −0.05; A the proxy accuracy, S the training step
time normalised by a reference architecture's (measured on the same device), P the parameter count.
V1 (EfficientNet §4 / MnasNet): ACC(m) · [FLOPs(m)/T]^w with w = −0.07 and T the target FLOPs (multiply-adds);
MnasNet's hard variant uses a different exponent above the target (`beta`).

Normalising P: the V2 paper writes the raw count. Dividing by any constant (the reference's count) multiplies every
reward by the same factor ref^(−v), so the ranking is identical either way; 'reference' (the default here) makes
the reward read like an accuracy (the reference architecture scores exactly its own accuracy), 'raw' gives the
paper's literal numbers. Step time is always normalised (S is a ratio in the paper).
"""
from __future__ import annotations

import math

PARAM_NORMS = ('reference', 'raw')
V2_W, V2_V, V1_W = -0.07, -0.05, -0.07


def _positive(name: str, value: float) -> float:
  value = float(value)
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f'{name}={value!r}; allowed: a finite number > 0')
  return value


def v2_reward(accuracy: float, step_time: float, params: float, ref_step_time: float = 1.0,
              ref_params: float = 1.0, w: float = V2_W, v: float = V2_V) -> float:
  """A · (step_time/ref_step_time)^w · (params/ref_params)^v; pass ref_params=1 for the paper's raw P."""
  s = _positive('step_time', step_time) / _positive('ref_step_time', ref_step_time)
  p = _positive('params', params) / _positive('ref_params', ref_params)
  return float(accuracy) * s ** w * p ** v


def mnas_objective(accuracy: float, flops: float, target: float, w: float = V1_W,
                   beta: float | None = None) -> float:
  """ACC · (flops/target)^w (soft constraint; EfficientNet used w=−0.07); with `beta`, that exponent applies above
  the target and `w` at or below it (MnasNet's hard variant, e.g. w=0, beta=−1)."""
  ratio = _positive('flops', flops) / _positive('target', target)
  exponent = w if beta is None or ratio <= 1.0 else beta
  return float(accuracy) * ratio ** exponent


def reference_params(norm: str, ref_params: float) -> float:
  if norm not in PARAM_NORMS:
    raise ValueError(f'objective.param_norm={norm!r}; allowed: {PARAM_NORMS}')
  return float(ref_params) if norm == 'reference' else 1.0
