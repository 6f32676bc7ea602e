"""The one EfficientNet module (v1 and v2): stem → blocks built from specs → head, float32 logits."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from effnet.models.arch import Block
from effnet.models.blocks import FusedMBConv, MBConv
from effnet.models.layers import BatchNorm, Conv, dense_kernel_init, dropout

Dtype = Any


class EfficientNet(nn.Module):
  """EfficientNet built from a concrete list of blocks (see `effnet.models.build_model`).

  `__call__(images_nhwc, train=False)` returns float32 logits; with `return_features=True` it returns
  `(logits, features)` where features holds 'stem', 'stage_1'..'stage_S' (each stage's last block output),
  'head' (after the 1×1 head conv) and 'pooled'. `dropout_rate` may be passed per call (a traced scalar) so that
  progressive learning changes it without rebuilding the module. num_classes=0 drops the classifier.
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

  @nn.compact
  def __call__(self, x, train: bool = False, dropout_rate: Optional[Any] = None, return_features: bool = False):
    bn_kw = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon, group_size=self.bn_group_size, dtype=self.dtype)
    blk_kw = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size,
                  dtype=self.dtype, depthwise_impl=self.depthwise_impl)
    features = {}
    x = x.astype(self.dtype)
    x = Conv(self.stem_filters, 3, 2, dtype=self.dtype, name='stem_conv')(x)
    x = nn.silu(BatchNorm(**bn_kw, name='stem_bn')(x, train))
    features['stem'] = x
    for i, blk in enumerate(self.blocks):
      cls = FusedMBConv if blk.spec.fused else MBConv
      x = cls(blk, **blk_kw, name=f'blocks_{blk.index}')(x, train)
      if i + 1 == len(self.blocks) or self.blocks[i + 1].stage != blk.stage:
        features[f'stage_{blk.stage + 1}'] = x
    x = Conv(self.head_filters, 1, dtype=self.dtype, name='head_conv')(x)
    x = nn.silu(BatchNorm(**bn_kw, name='head_bn')(x, train))
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
