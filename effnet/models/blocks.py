"""MBConv and Fused-MBConv blocks (Linen), layer by layer as in the official TF code.

Parameter names are stable (`expand_conv`, `expand_bn`, `dw_conv`, `dw_bn`, `se`, `project_conv`, `project_bn`):
`effnet.convert` and checkpoints rely on them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from effnet.models.arch import Block
from effnet.models.layers import ACTIVATIONS, BatchNorm, Conv, SqueezeExcite, drop_path

Dtype = Any


class _BlockBase(nn.Module):
  block: Block
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0
  dtype: Dtype = jnp.float32
  depthwise_impl: str = 'auto'
  activation: str = 'silu'
  padding: str = 'same'

  def act(self, x):
    return ACTIVATIONS[self.activation](x)

  def bn(self, name):
    return BatchNorm(self.bn_momentum, self.bn_epsilon, self.bn_group_size, self.dtype, name=name)

  def conv(self, features, kernel, strides=1, depthwise=False, name=None):
    return Conv(features, kernel, strides, depthwise=depthwise, dtype=self.dtype,
                depthwise_impl=self.depthwise_impl, padding=self.padding, name=name)

  def se(self, x):
    spec = self.block.spec
    if spec.se_ratio:
      x = SqueezeExcite(max(1, int(spec.input_filters * spec.se_ratio)), dtype=self.dtype,
                        activation=self.activation, name='se')(x)
    return x

  def residual(self, x, inputs, train, survival_prob=None):
    """Identity skip (stride 1, in == out, id_skip) with per-sample stochastic depth in training only.

    `survival_prob` overrides the block's own: under `nn.scan` it is a traced per-repeat scalar. Whether to draw a
    mask at all stays static (`block.survival_prob < 1`), so a net without stochastic depth draws no random bits."""
    if not self.block.has_residual:
      return x
    if train and self.block.survival_prob < 1.0:
      p = self.block.survival_prob if survival_prob is None else survival_prob
      x = drop_path(x, p, self.make_rng('dropout'))
    return x + inputs


class MBConv(_BlockBase):
  """expand 1×1 (if e≠1) → depthwise k×k (stride) → SE → project 1×1 (BN, no activation) → residual."""

  @nn.compact
  def __call__(self, inputs, train: bool = False, survival_prob=None):
    spec = self.block.spec
    x = inputs
    if spec.expand_ratio != 1:
      x = self.conv(spec.input_filters * spec.expand_ratio, 1, name='expand_conv')(x)
      x = self.act(self.bn('expand_bn')(x, train))
    x = self.conv(x.shape[-1], spec.kernel_size, spec.stride, depthwise=True, name='dw_conv')(x)
    x = self.act(self.bn('dw_bn')(x, train))
    x = self.se(x)
    x = self.conv(spec.output_filters, 1, name='project_conv')(x)
    x = self.bn('project_bn')(x, train)
    return self.residual(x, inputs, train, survival_prob)


class FusedMBConv(_BlockBase):
  """e≠1: k×k expand conv (stride) → [SE] → 1×1 project (BN, no act). e=1: one k×k conv (stride) → BN → act.

  The expand width is spec.input_filters·e whatever width arrives (official `input_filters * expand_ratio`):
  EdgeTPU's first block reads the 32-wide stem and expands to 24·4, as its string 'i24' says."""
  # Same shape as MBConv.__call__ on purpose: each reads as its official layer sequence (docs/fidelity.md §1).

  @nn.compact
  def __call__(self, inputs, train: bool = False, survival_prob=None):
    spec = self.block.spec
    x = inputs
    if spec.expand_ratio != 1:
      x = self.conv(spec.input_filters * spec.expand_ratio, spec.kernel_size, spec.stride, name='expand_conv')(x)
      x = self.act(self.bn('expand_bn')(x, train))
      x = self.se(x)
      x = self.conv(spec.output_filters, 1, name='project_conv')(x)
      x = self.bn('project_bn')(x, train)
    else:
      x = self.se(x)
      x = self.conv(spec.output_filters, spec.kernel_size, spec.stride, name='project_conv')(x)
      x = self.act(self.bn('project_bn')(x, train))
    return self.residual(x, inputs, train, survival_prob)
