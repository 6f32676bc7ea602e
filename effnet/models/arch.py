"""Architecture specs: block strings, the official rounding rules and the B0..L2 / V2 tables.

Everything here is plain Python (no JAX), so configs, the NAS sampler and the summary tool can reason about an
architecture without building it. The numbers are the official ones (tensorflow/tpu `efficientnet_builder.py`,
google/automl `efficientnetv2/effnetv2_configs.py`); docs/fidelity.md §1 and §8 say where papers and code
disagree.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

# Compound-scaling constants found by the φ=1 grid search (EfficientNet paper §3.3): α·β²·γ² ≈ 2.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15

V1_BASE_BLOCKS = (
    'r1_k3_s11_e1_i32_o16_se0.25',
    'r2_k3_s22_e6_i16_o24_se0.25',
    'r2_k5_s22_e6_i24_o40_se0.25',
    'r3_k3_s22_e6_i40_o80_se0.25',
    'r3_k5_s11_e6_i80_o112_se0.25',
    'r4_k5_s22_e6_i112_o192_se0.25',
    'r1_k3_s11_e6_i192_o320_se0.25',
)

# (width, depth, resolution, dropout) — hand-rounded table values, not α^φ (tensorflow/tpu efficientnet_builder.py).
V1_TABLE = {
    'b0': (1.0, 1.0, 224, 0.2),
    'b1': (1.0, 1.1, 240, 0.2),
    'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3),
    'b4': (1.4, 1.8, 380, 0.4),
    'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5),
    'b7': (2.0, 3.1, 600, 0.5),
    'b8': (2.2, 3.6, 672, 0.5),
    'l2': (4.3, 5.3, 800, 0.5),
}

# EfficientNet-Lite (tensorflow/tpu lite/efficientnet_lite_builder.py): the B0 block strings with SE switched off
# (`use_se=False`), ReLU6, and `fix_head_stem`: stem (32) and head (1280) keep their width and the first and last
# stages their repeats. (width, depth, resolution, dropout); note lite3/lite4 differ from b3/b4 in resolution.
LITE_TABLE = {
    'lite0': (1.0, 1.0, 224, 0.2),
    'lite1': (1.0, 1.1, 240, 0.2),
    'lite2': (1.1, 1.2, 260, 0.3),
    'lite3': (1.2, 1.4, 280, 0.3),
    'lite4': (1.4, 1.8, 300, 0.3),
}

# EfficientNet-EdgeTPU (tensorflow/tpu edgetpu/efficientnet_edgetpu_builder.py): fused (c1) blocks in the first
# three stages, no SE, ReLU, a 32-wide stem (round_filters(32)) feeding a first block whose string says i24, and
# no skip in that first stage. The official head has 1001 classes (background first); ours keeps num_classes.
EDGETPU_BLOCKS = (
    'r1_k3_s11_e4_i24_o24_c1_noskip',
    'r2_k3_s22_e8_i24_o32_c1',
    'r4_k3_s22_e8_i32_o48_c1',
    'r5_k5_s22_e8_i48_o96',
    'r4_k5_s11_e8_i96_o144',
    'r2_k5_s22_e8_i144_o192',
)
EDGETPU_TABLE = {  # (width, depth, resolution, dropout)
    'edgetpu_s': (1.0, 1.0, 224, 0.2),
    'edgetpu_m': (1.0, 1.1, 240, 0.2),
    'edgetpu_l': (1.2, 1.4, 300, 0.3),
}

V2_BASE_BLOCKS = (
    'r1_k3_s1_e1_i32_o16_c1',
    'r2_k3_s2_e4_i16_o32_c1',
    'r2_k3_s2_e4_i32_o48_c1',
    'r3_k3_s2_e4_i48_o96_se0.25',
    'r5_k3_s1_e6_i96_o112_se0.25',
    'r8_k3_s2_e6_i112_o192_se0.25',
)
V2_S_BLOCKS = (
    'r2_k3_s1_e1_i24_o24_c1',
    'r4_k3_s2_e4_i24_o48_c1',
    'r4_k3_s2_e4_i48_o64_c1',
    'r6_k3_s2_e4_i64_o128_se0.25',
    'r9_k3_s1_e6_i128_o160_se0.25',
    'r15_k3_s2_e6_i160_o256_se0.25',
)
V2_M_BLOCKS = (
    'r3_k3_s1_e1_i24_o24_c1',
    'r5_k3_s2_e4_i24_o48_c1',
    'r5_k3_s2_e4_i48_o80_c1',
    'r7_k3_s2_e4_i80_o160_se0.25',
    'r14_k3_s1_e6_i160_o176_se0.25',
    'r18_k3_s2_e6_i176_o304_se0.25',
    'r5_k3_s1_e6_i304_o512_se0.25',
)
V2_L_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r7_k3_s2_e4_i32_o64_c1',
    'r7_k3_s2_e4_i64_o96_c1',
    'r10_k3_s2_e4_i96_o192_se0.25',
    'r19_k3_s1_e6_i192_o224_se0.25',
    'r25_k3_s2_e6_i224_o384_se0.25',
    'r7_k3_s1_e6_i384_o640_se0.25',
)
V2_XL_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r8_k3_s2_e4_i32_o64_c1',
    'r8_k3_s2_e4_i64_o96_c1',
    'r16_k3_s2_e4_i96_o192_se0.25',
    'r24_k3_s1_e6_i192_o256_se0.25',
    'r32_k3_s2_e6_i256_o512_se0.25',
    'r8_k3_s1_e6_i512_o640_se0.25',
)

# variant -> (blocks, width, depth, train size, eval size, dropout, randaug magnitude, mixup alpha)
# (google/automl effnetv2_configs.py). The B-variants use the base blocks and v1's AutoAugment.
V2_TABLE = {
    's': (V2_S_BLOCKS, 1.0, 1.0, 300, 384, 0.2, 10, 0.0),
    'm': (V2_M_BLOCKS, 1.0, 1.0, 384, 480, 0.3, 15, 0.2),
    'l': (V2_L_BLOCKS, 1.0, 1.0, 384, 480, 0.4, 20, 0.5),
    'xl': (V2_XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4, 20, 0.5),
    'b0': (V2_BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2, 0, 0.0),
    'b1': (V2_BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2, 0, 0.0),
    'b2': (V2_BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3, 0, 0.0),
    'b3': (V2_BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3, 0, 0.0),
}

ROUND_RULES = ('tpu', 'automl')

@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One stage of blocks, as in the official block strings (`r2_k3_s22_e6_i16_o24_se0.25[_c1][_noskip]`)."""
  num_repeat: int
  kernel_size: int
  stride: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: Optional[float] = None
  fused: bool = False
  id_skip: bool = True

  FORMAT = ('r<repeats>_k<kernel>_s<stride>_e<expand>_i<in>_o<out>[_se<ratio>][_c1][_noskip], '
            'e.g. "r2_k3_s22_e6_i16_o24_se0.25"')

  @classmethod
  def decode(cls, text: str) -> 'BlockSpec':
    """Parses an official block string; raises ValueError naming the bad token."""
    if not isinstance(text, str) or not text:
      raise ValueError(f'model.blocks: expected a block string {cls.FORMAT}, got {text!r}')
    opts = {}
    for tok in text.split('_'):
      m = re.match(r'^([a-z]+)([0-9.]*)$', tok)
      if not m:
        raise ValueError(f'model.blocks: bad token {tok!r} in {text!r}; allowed format: {cls.FORMAT}')
      opts[m.group(1)] = m.group(2)
    allowed = {'r', 'k', 's', 'e', 'i', 'o', 'se', 'c', 'noskip'}
    unknown = set(opts) - allowed
    if unknown:
      raise ValueError(f'model.blocks: unknown keys {sorted(unknown)} in {text!r}; allowed: {sorted(allowed)}')
    missing = {'r', 'k', 's', 'e', 'i', 'o'} - set(opts)
    if missing:
      raise ValueError(f'model.blocks: {text!r} lacks {sorted(missing)}; allowed format: {cls.FORMAT}')
    s = opts['s']
    # v1 strings spell strides as two digits ("s22"), v2 as one ("s2"); only square strides exist.
    if len(s) == 2 and s[0] != s[1]:
      raise ValueError(f'model.blocks: non-square stride {s!r} in {text!r}')
    spec = cls(
        num_repeat=int(opts['r']), kernel_size=int(opts['k']), stride=int(s[0]), expand_ratio=int(opts['e']),
        input_filters=int(opts['i']), output_filters=int(opts['o']),
        se_ratio=float(opts['se']) if 'se' in opts else None,
        fused=opts.get('c') == '1', id_skip='noskip' not in opts)
    spec.validate()
    return spec

  def encode(self) -> str:
    parts = [f'r{self.num_repeat}', f'k{self.kernel_size}', f's{self.stride}{self.stride}', f'e{self.expand_ratio}',
             f'i{self.input_filters}', f'o{self.output_filters}']
    if self.se_ratio:
      parts.append(f'se{self.se_ratio:g}')
    if self.fused:
      parts.append('c1')
    if not self.id_skip:
      parts.append('noskip')
    return '_'.join(parts)

  def validate(self):
    checks = {'num_repeat': self.num_repeat >= 1, 'kernel_size': self.kernel_size >= 1 and self.kernel_size % 2 == 1,
              'stride': self.stride in (1, 2), 'expand_ratio': self.expand_ratio >= 1,
              'input_filters': self.input_filters >= 1, 'output_filters': self.output_filters >= 1,
              'se_ratio': self.se_ratio is None or 0 <= self.se_ratio <= 1}
    allowed = {'num_repeat': '>= 1', 'kernel_size': 'odd >= 1', 'stride': '1 or 2', 'expand_ratio': '>= 1',
               'input_filters': '>= 1', 'output_filters': '>= 1', 'se_ratio': 'None or in [0, 1]'}
    for name, ok in checks.items():
      if not ok:
        raise ValueError(f'model.blocks: {name}={getattr(self, name)!r} in {self.encode()!r}; allowed: {allowed[name]}')


def round_filters(filters: float, width: float, rule: str = 'tpu', divisor: int = 8,
                  min_depth: Optional[int] = None) -> int:
  """Scales a channel count by `width` and rounds to a multiple of `divisor`.

  'tpu' (v1, tensorflow/tpu) bumps by one divisor when rounding lost more than 10%; 'automl' (v2) does not.
  This is why v1-B3's first stage has 24 channels where AutoML's rounding gives 16.
  """
  # A wrong name would silently round like 'automl', and callers outside a config pass plain values: the one check
  # of the name it dispatches on.
  if rule not in ROUND_RULES:
    raise ValueError(f'model.round_rule={rule!r}; allowed: {ROUND_RULES}')
  min_depth = min_depth or divisor
  f = filters * width
  new = max(min_depth, int(f + divisor / 2) // divisor * divisor)
  if rule == 'tpu' and new < 0.9 * f:
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth: float) -> int:
  """Scales a stage's block count by `depth`, rounding up (official `int(math.ceil(d * r))`)."""
  return int(math.ceil(depth * repeats))


def phi_coefficients(phi: float):
  """Compound scaling d=α^φ, w=β^φ, r=γ^φ (EfficientNet eq. 3); returns (width, depth, resolution multiplier)."""
  return BETA ** phi, ALPHA ** phi, GAMMA ** phi


def round_to_multiple(size: float, multiple: int) -> int:
  """The nearest multiple of `multiple` (halves round up), at least `multiple`.

  The one rounding of image sizes: φ-scaled resolutions, progressive-learning stages and the scaling searches."""
  return max(int(multiple), int(multiple) * int(math.floor(size / multiple + 0.5)))


def phi_resolution(phi: float, base: int = 224, multiple: int = 8, gamma: float = GAMMA) -> int:
  """The B0 resolution scaled by γ^φ, rounded to a multiple of 8 (the official table's sizes are all multiples of 8)."""
  return round_to_multiple(base * gamma ** phi, multiple)


def phi_dropout(phi: float) -> float:
  """Dropout rising linearly from 0.2 (B0, φ=0) to 0.5 (B7, φ≈7), as the paper describes; clipped to [0.1, 0.5]."""
  return float(min(0.5, max(0.1, 0.2 + 0.3 * phi / 7.0)))


@dataclasses.dataclass(frozen=True)
class Block:
  """One concrete block of a built network (after scaling), with its global index and stage."""
  index: int
  stage: int
  spec: BlockSpec          # num_repeat=1, concrete filters and stride
  survival_prob: float     # 1 − (1 − p)·index/N for the stochastic-depth ramp

  @property
  def has_residual(self) -> bool:
    s = self.spec
    return s.id_skip and s.stride == 1 and s.input_filters == s.output_filters


def scale_stages(blocks: Sequence[str | BlockSpec], width: float, depth: float, rule: str = 'tpu',
                 divisor: int = 8, min_depth: Optional[int] = None,
                 se_ratio: Optional[float] = None, fix_first_last: bool = False) -> list[BlockSpec]:
  """Applies width/depth scaling to each stage spec (filters rounded, repeats rounded up); the coefficients' range
  (> 0) is checked by `config_lib.validate`. `fix_first_last` keeps the first and last stages' repeats (Lite's
  `fix_head_stem`, official `Model._build`)."""
  out = []
  for i, b in enumerate(blocks):
    spec = BlockSpec.decode(b) if isinstance(b, str) else b
    fixed = fix_first_last and i in (0, len(blocks) - 1)
    spec = dataclasses.replace(
        spec,
        input_filters=round_filters(spec.input_filters, width, rule, divisor, min_depth),
        output_filters=round_filters(spec.output_filters, width, rule, divisor, min_depth),
        num_repeat=spec.num_repeat if fixed else round_repeats(spec.num_repeat, depth))
    if se_ratio is not None:
      spec = dataclasses.replace(spec, se_ratio=se_ratio or None)
    out.append(spec)
  return out


def expand_blocks(stages: Sequence[BlockSpec], survival_prob: float = 0.8) -> list[Block]:
  """Unrolls stages into blocks: the first block of a stage has the stride and the in→out change, repeats keep
  in=out and stride 1. The stochastic-depth survival falls linearly with the 0-based global index over all N blocks."""
  flat = []
  for si, st in enumerate(stages):
    for r in range(st.num_repeat):
      spec = st if r == 0 else dataclasses.replace(st, input_filters=st.output_filters, stride=1)
      flat.append((si, dataclasses.replace(spec, num_repeat=1)))
  n = len(flat)
  return [Block(index=i, stage=si, spec=spec, survival_prob=1.0 - (1.0 - survival_prob) * i / n)
          for i, (si, spec) in enumerate(flat)]


def stem_and_head(stages: Sequence[str | BlockSpec], width: float, head_filters: int, rule: str,
                  divisor: int = 8, min_depth: Optional[int] = None, stem_filters: Optional[int] = None,
                  fix_head_stem: bool = False) -> tuple[int, int]:
  """Stem width = round_filters(`stem_filters`, or when None the first block's input filters); head =
  round_filters(feature size). With `fix_head_stem` (Lite) neither is scaled by the width coefficient."""
  first = BlockSpec.decode(stages[0]) if isinstance(stages[0], str) else stages[0]
  stem = first.input_filters if stem_filters is None else stem_filters
  if fix_head_stem:
    return int(stem), int(head_filters)
  return (round_filters(stem, width, rule, divisor, min_depth),
          round_filters(head_filters, width, rule, divisor, min_depth))

