"""The one EfficientNet module (v1 and v2): stem → blocks built from specs → head, float32 logits."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from effnet.models.arch import Block
from effnet.models.blocks import FusedMBConv, MBConv
from effnet.models.layers import ACTIVATIONS, BatchNorm, Conv, dense_kernel_init, dropout

Dtype = Any


def block_groups(blocks: Sequence[Block], scan: bool) -> list[tuple[Block, ...]]:
  """The blocks in call order, grouped: each block alone, except that with `scan` a stage's repeats 2..r form one
  group when there are at least two of them. Those repeats share every shape (stride 1, in = out), so one `nn.scan`
  body runs them all and XLA compiles the block once; the first block (stride, width change) and a lone repeat stay
  unrolled, since a scan of length 1 buys nothing."""
  groups = []
  for _, stage in itertools.groupby(blocks, key=lambda b: b.stage):
    stage = tuple(stage)
    groups += [stage[:1], stage[1:]] if scan and len(stage) > 2 else [(b,) for b in stage]
  return groups


def group_name(group: Sequence[Block]) -> str:
  """Variable name of a group: `blocks_{i}` for one block, `blocks_{i}_to_{j}` for stacked blocks i..j (axis 0)."""
  first, last = group[0].index, group[-1].index
  return f'blocks_{first}' if len(group) == 1 else f'blocks_{first}_to_{last}'


class EfficientNet(nn.Module):
  """EfficientNet built from a concrete list of blocks (see `effnet.models.build_model`).

  `__call__(images_nhwc, train=False)` returns float32 logits; with `return_features=True` it returns
  `(logits, features)` where features holds 'stem', 'stage_1'..'stage_S' (each stage's last block output),
  'head' (after the 1×1 head conv) and 'pooled'. `dropout_rate` may be passed per call (a traced scalar) so that
  progressive learning changes it without rebuilding the module. num_classes=0 drops the classifier.
  `scan_blocks` runs each stage's repeated blocks as one `nn.scan` (see `block_groups`): same maths, fewer ops to
  compile, variables stacked under `blocks_{i}_to_{j}` (`effnet.models.scan_variables` converts). It is off by
  default because on XLA:CPU it lost: V2-S's train step compiled ~12% faster but ran ~5x slower, as XLA:CPU only
  rewrites convolutions into its fast Eigen form in the entry computation, so the backward k×k convolutions inside
  the scan's loop body run as naive loops. Accelerators were not measured.
  `activation` (silu, relu6 for Lite, relu for EdgeTPU) is used everywhere an official `relu_fn` is: stem, blocks,
  SE and head. `padding` is TF 'SAME' (official) or 'symmetric' (PyTorch, for timm's non-`tf_` weights).
  """
  blocks: Sequence[Block]
  stem_filters: int
  head_filters: int
  num_classes: int = 1000
  dropout_rate: float = 0.2
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0
  dtype: Dtype = jnp.float32
  depthwise_impl: str = 'auto'
  scan_blocks: bool = False
  activation: str = 'silu'
  padding: str = 'same'

  @nn.compact
  def __call__(self, x, train: bool = False, dropout_rate: Optional[Any] = None, return_features: bool = False):
    bn_kw = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon, group_size=self.bn_group_size, dtype=self.dtype)
    blk_kw = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size,
                  dtype=self.dtype, depthwise_impl=self.depthwise_impl, activation=self.activation,
                  padding=self.padding)
    act = ACTIVATIONS[self.activation]
    features = {}
    x = x.astype(self.dtype)
    x = Conv(self.stem_filters, 3, 2, dtype=self.dtype, padding=self.padding, name='stem_conv')(x)
    x = act(BatchNorm(**bn_kw, name='stem_bn')(x, train))
    features['stem'] = x
    for group in block_groups(self.blocks, self.scan_blocks):
      x = self._group(group, x, train, blk_kw)
      features[f'stage_{group[-1].stage + 1}'] = x  # a stage's later groups overwrite: its last block's output
    x = Conv(self.head_filters, 1, dtype=self.dtype, name='head_conv')(x)
    x = act(BatchNorm(**bn_kw, name='head_bn')(x, train))
    features['head'] = x
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    features['pooled'] = x
    if self.num_classes:
      rate = self.dropout_rate if dropout_rate is None else dropout_rate
      if train and (not isinstance(rate, (int, float)) or rate > 0):
        x = dropout(x, rate, self.make_rng('dropout'))
      x = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=dense_kernel_init,
                   name='head_dense')(x)
    logits = x.astype(jnp.float32)
    return (logits, features) if return_features else logits

  def _group(self, group, x, train, blk_kw):
    """One block, or identical repeats as one `nn.scan` over their stacked variables. The per-block survival
    probabilities are the scanned input, so the stochastic-depth ramp is exactly the unrolled one; the template
    block carries the group's smallest, which only decides (statically) whether masks are drawn at all."""
    cls = FusedMBConv if group[0].spec.fused else MBConv
    if len(group) == 1:
      return cls(group[0], **blk_kw, name=group_name(group))(x, train)
    template = dataclasses.replace(group[0], survival_prob=min(b.survival_prob for b in group))
    scan = nn.scan(lambda block, carry, p: (block(carry, train, p), None),
                   variable_axes={'params': 0, 'batch_stats': 0}, split_rngs={'params': True, 'dropout': True},
                   length=len(group))
    probs = jnp.asarray([b.survival_prob for b in group], jnp.float32)
    x, _ = scan(cls(template, **blk_kw, name=group_name(group)), x, probs)
    return x
