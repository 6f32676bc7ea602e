"""EfficientNetV2-style non-uniform scaling of a searched base network.

Why not plain compound scaling: V2 §3.3 scales its searched base with the compound rule (width β^φ, depth α^φ,
resolution γ^φ) but (1) caps the image size, because larger images cost memory and step time for little accuracy
(480 px for V2), and (2) adds extra layers gradually to the later stages, which adds capacity with little runtime
cost. Depth is baked into each stage's repeat count here (ceil(r·d·α^φ) + extra), so the emitted block strings
show the real network and the emitted config keeps depth_coefficient = 1.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from effnet.models import arch
from effnet.models.arch import BlockSpec


@dataclasses.dataclass(frozen=True)
class Scaled:
  phi: float
  blocks: tuple[str, ...]
  width_coefficient: float
  image_size: int
  eval_image_size: int
  dropout_rate: float


def extra_layers(phi: float, num_stages: int, per_phi: Sequence[float]) -> list[int]:
  """Extra layers per stage at φ: round(per_phi[j]·φ) for the last len(per_phi) stages, 0 for the others."""
  per_phi = tuple(float(x) for x in per_phi)
  if len(per_phi) > num_stages or any(x < 0 for x in per_phi):
    raise ValueError(f'scaling.extra_layers_per_phi={per_phi!r}; allowed: at most {num_stages} values >= 0 '
                     f'(applied to the last stages)')
  extra = [0] * (num_stages - len(per_phi)) + [int(round(x * max(phi, 0.0))) for x in per_phi]
  return extra


def scale(blocks: Sequence[str], phi: float, *, base_width: float = 1.0, base_depth: float = 1.0,
          base_image_size: int = 224, base_eval_image_size: int | None = None, base_dropout: float = 0.2,
          max_image_size: int = 480, size_multiple: int = 16, extra_layers_per_phi: Sequence[float] = (1.0, 2.0),
          alpha: float = arch.ALPHA, beta: float = arch.BETA, gamma: float = arch.GAMMA) -> Scaled:
  """Scales `blocks` (searched at base_width/base_depth and base_image_size) to φ; see the module docstring."""
  if max_image_size < size_multiple:
    raise ValueError(f'scaling.max_image_size={max_image_size}; allowed: >= size_multiple ({size_multiple})')
  if size_multiple < 1:
    raise ValueError(f'scaling.size_multiple={size_multiple}; allowed: >= 1')
  specs = [BlockSpec.decode(b) for b in blocks]
  depth = base_depth * alpha ** phi
  extra = extra_layers(phi, len(specs), extra_layers_per_phi)
  out = tuple(dataclasses.replace(s, num_repeat=arch.round_repeats(s.num_repeat, depth) + e).encode()
              for s, e in zip(specs, extra))
  eval_base = base_eval_image_size or base_image_size
  r = gamma ** phi
  train = min(max_image_size, arch.round_to_multiple(base_image_size * r, size_multiple))
  ev = min(max_image_size, arch.round_to_multiple(eval_base * r, size_multiple))
  return Scaled(phi=float(phi), blocks=out, width_coefficient=base_width * beta ** phi, image_size=train,
                eval_image_size=ev, dropout_rate=max(base_dropout, arch.phi_dropout(phi)))
