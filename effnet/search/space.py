"""The EfficientNetV2 search space: stage-factorized on a backbone, one choice of op, depth, kernel and expansion
per stage; channel sizes and strides stay the backbone's.

Why this shape: V2 §3.3 searches {MBConv, Fused-MBConv} × #layers × kernel {3, 5} × expansion {1, 4, 6} per stage,
reusing the backbone's channels and dropping pooling-skip ops, which keeps the space small enough for random search.
Every candidate is a tuple of official block strings (`BlockSpec.encode()`), so it goes straight into
`config.model.blocks`. Sampling is a pure function of the seed: the i-th candidate of a search never changes, and a
longer search (larger N, same seed) extends the list instead of replacing it, so finished runs stay valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from typing import Optional, Sequence

from effnet.models import arch
from effnet.models.arch import BlockSpec

OPS = ('mbconv', 'fused')


def default_layer_bounds(backbone: Sequence[str]) -> tuple[tuple[int, int], ...]:
  """(max(1, ⌈r/2⌉), 2r) per backbone stage of r layers: around the backbone, never empty."""
  out = []
  for b in backbone:
    r = BlockSpec.decode(b).num_repeat
    out.append((max(1, math.ceil(r / 2)), 2 * r))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  backbone: tuple[str, ...] = arch.V2_BASE_BLOCKS
  ops: tuple[str, ...] = OPS
  kernels: tuple[int, ...] = (3, 5)
  expansions: tuple[int, ...] = (1, 4, 6)
  layers: Optional[tuple[tuple[int, int], ...]] = None   # per stage (min, max); None: default_layer_bounds
  se_ratio: Optional[float] = 0.25        # squeeze-excite ratio of MBConv stages (V2: MBConv stages only)
  fused_se_ratio: Optional[float] = None  # SE on Fused-MBConv stages (V2: none)

  def __post_init__(self):
    if not self.backbone:
      raise ValueError('space.backbone is empty; allowed: a tuple of block strings, e.g. arch.V2_BASE_BLOCKS')
    specs = [BlockSpec.decode(b) for b in self.backbone]  # raises ValueError naming the bad token
    object.__setattr__(self, 'backbone', tuple(s.encode() for s in specs))
    object.__setattr__(self, 'ops', tuple(self.ops))
    object.__setattr__(self, 'kernels', tuple(int(k) for k in self.kernels))
    object.__setattr__(self, 'expansions', tuple(int(e) for e in self.expansions))
    if not self.ops or any(o not in OPS for o in self.ops) or len(set(self.ops)) != len(self.ops):
      raise ValueError(f'space.ops={self.ops!r}; allowed: a non-empty subset of {OPS}')
    if not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels):
      raise ValueError(f'space.kernels={self.kernels!r}; allowed: odd sizes >= 1, e.g. (3, 5)')
    if not self.expansions or any(e < 1 for e in self.expansions):
      raise ValueError(f'space.expansions={self.expansions!r}; allowed: integers >= 1, e.g. (1, 4, 6)')
    layers = self.layers if self.layers is not None else default_layer_bounds(self.backbone)
    layers = tuple(tuple(int(v) for v in b) for b in layers)
    if len(layers) != len(specs) or any(len(b) != 2 or not 1 <= b[0] <= b[1] for b in layers):
      raise ValueError(f'space.layers={layers!r}; allowed: one (min, max) pair with 1 <= min <= max per backbone '
                       f'stage ({len(specs)} stages)')
    object.__setattr__(self, 'layers', layers)
    for name in ('se_ratio', 'fused_se_ratio'):
      v = getattr(self, name)
      if v is not None and not 0.0 <= float(v) <= 1.0:
        raise ValueError(f'space.{name}={v!r}; allowed: None or a ratio in [0, 1]')

  @classmethod
  def from_config(cls, c) -> 'SearchSpace':
    """From the `space` section of configs/search_space.py."""
    return cls(backbone=tuple(c.backbone), ops=tuple(c.ops), kernels=tuple(c.kernels),
               expansions=tuple(c.expansions), layers=None if c.layers is None else tuple(c.layers),
               se_ratio=c.se_ratio, fused_se_ratio=c.fused_se_ratio)

  @property
  def stages(self) -> list[BlockSpec]:
    return [BlockSpec.decode(b) for b in self.backbone]

  def stage_choices(self) -> int:
    return len(self.ops) * len(self.kernels) * len(self.expansions)

  @property
  def size(self) -> int:
    """Number of distinct architectures in the space."""
    return math.prod(self.stage_choices() * (hi - lo + 1) for lo, hi in self.layers)

  def make_stage(self, index: int, op: str, layers: int, kernel: int, expansion: int) -> str:
    base = self.stages[index]
    fused = op == 'fused'
    se = self.fused_se_ratio if fused else self.se_ratio
    return BlockSpec(num_repeat=layers, kernel_size=kernel, stride=base.stride, expand_ratio=expansion,
                     input_filters=base.input_filters, output_filters=base.output_filters,
                     se_ratio=float(se) if se else None, fused=fused).encode()

  def sample(self, rng: random.Random) -> tuple[str, ...]:
    """One architecture: each stage's op, layer count, kernel and expansion drawn uniformly and independently."""
    out = []
    for i, (lo, hi) in enumerate(self.layers):
      out.append(self.make_stage(i, rng.choice(self.ops), rng.randint(lo, hi), rng.choice(self.kernels),
                                 rng.choice(self.expansions)))
    return tuple(out)

  def candidates(self, n: int, seed: int = 0) -> list[tuple[str, ...]]:
    """The first `n` distinct samples of the seeded stream (deterministic; a prefix of the list for any larger n)."""
    if n < 1:
      raise ValueError(f'search.num_candidates={n}; allowed: >= 1')
    if n > self.size:
      raise ValueError(f'search.num_candidates={n}; allowed: <= {self.size} (the size of this space)')
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
      c = self.sample(rng)
      if c not in seen:
        seen.add(c)
        out.append(c)
    return out

  def describe(self, blocks: Sequence[str]) -> list[dict]:
    """Per-stage choices of an architecture: op, layers, kernel, expansion, se."""
    return [dict(op='fused' if s.fused else 'mbconv', layers=s.num_repeat, kernel=s.kernel_size,
                 expansion=s.expand_ratio, se=s.se_ratio) for s in (BlockSpec.decode(b) for b in blocks)]

  def check(self, blocks: Sequence[str]) -> None:
    """Raises ValueError unless `blocks` is an architecture of this space."""
    if len(blocks) != len(self.backbone):
      raise ValueError(f'model.blocks: {len(blocks)} stages; the space has {len(self.backbone)}')
    for i, (text, base, (lo, hi)) in enumerate(zip(blocks, self.stages, self.layers)):
      s = BlockSpec.decode(text)
      op = 'fused' if s.fused else 'mbconv'
      want_se = self.fused_se_ratio if s.fused else self.se_ratio
      problems = [
          (s.input_filters, s.output_filters, s.stride) != (base.input_filters, base.output_filters, base.stride)
          and f'channels/stride {(s.input_filters, s.output_filters, s.stride)} differ from the backbone\'s '
              f'{(base.input_filters, base.output_filters, base.stride)}',
          op not in self.ops and f'op {op!r} not in {self.ops}',
          not lo <= s.num_repeat <= hi and f'layers {s.num_repeat} not in [{lo}, {hi}]',
          s.kernel_size not in self.kernels and f'kernel {s.kernel_size} not in {self.kernels}',
          s.expand_ratio not in self.expansions and f'expansion {s.expand_ratio} not in {self.expansions}',
          (s.se_ratio or None) != (float(want_se) if want_se else None) and f'se {s.se_ratio} != {want_se}',
          not s.id_skip and 'noskip is not in the space']
      bad = [p for p in problems if p]
      if bad:
        raise ValueError(f'model.blocks[{i}]={text!r}: ' + '; '.join(bad))

  def contains(self, blocks: Sequence[str]) -> bool:
    try:
      self.check(blocks)
    except ValueError:
      return False
    return True


def arch_id(blocks: Sequence[str]) -> str:
  """Short stable hash of an architecture (used in workdir names)."""
  return hashlib.sha1('|'.join(blocks).encode()).hexdigest()[:8]
