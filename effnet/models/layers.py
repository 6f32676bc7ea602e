"""Layers with the official EfficientNet semantics: TF 'SAME' convs, TF-initialised kernels, BN eps 1e-3 with
optional per-group statistics, squeeze-excite in float32, per-sample stochastic depth, dropout with a traced rate.

All parameters and BN statistics are float32; activations run in `dtype` (bfloat16 on accelerators).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
DEPTHWISE_IMPLS = ('auto', 'conv', 'shift')
# The official families' activations: swish (v1, v2), ReLU6 (Lite: quantises well), ReLU (EdgeTPU).
ACTIVATIONS = {'silu': nn.silu, 'relu6': nn.relu6, 'relu': nn.relu}
# 'same': TF 'SAME' (the official code, timm tf_*); 'symmetric': PyTorch's ((s-1)+(k-1))//2 on every side (timm's
# PyTorch-native efficientnet_* ports). Stride-2 layers see different pixels, so weights only fit their own padding.
PADDINGS = ('same', 'symmetric')


def conv_kernel_init(depthwise: bool):
  """Normal(0, sqrt(2/fan_out)), fan_out = kh·kw·out (TF `conv_kernel_initializer`, not truncated).

  TF's depthwise kernel is [k,k,C,1], so its fan_out is k·k; ours is [k,k,1,C] (feature_group_count=C)."""
  def init(key, shape, dtype=jnp.float32):
    kh, kw = shape[0], shape[1]
    fan_out = kh * kw * (1 if depthwise else shape[-1])
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)
  return init


def dense_kernel_init(key, shape, dtype=jnp.float32):
  """U(±1/sqrt(num_classes)) (TF `dense_kernel_initializer`)."""
  limit = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME': total = max((ceil(n/s)−1)·s + k − n, 0), the odd pixel going after (bottom/right)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv_padding(size: int, kernel: int, stride: int, padding: str = 'same') -> tuple[int, int]:
  """(before, after) padding of one spatial axis: TF 'SAME', or PyTorch's symmetric ((s−1)+(k−1))//2 (timm)."""
  if padding == 'symmetric':
    pad = ((stride - 1) + (kernel - 1)) // 2
    return pad, pad
  return same_padding(size, kernel, stride)


def resolve_depthwise_impl(impl: str) -> str:
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'model.depthwise_impl={impl!r}; allowed: {DEPTHWISE_IMPLS}')
  if impl == 'auto':
    # XLA:CPU's grouped convolution is ~6x (forward) to ~12x (weight gradient) slower than k·k shifted
    # multiply-adds; GPU/TPU have fast native depthwise kernels.
    return 'shift' if jax.default_backend() == 'cpu' else 'conv'
  return impl


class Conv(nn.Module):
  """k×k convolution, TF 'SAME' padding, NHWC/HWIO, kernel in float32 and computed in `dtype`.

  1×1 stride-1 convs run as a matmul over channels (same maths, cheaper gradients on CPU). Depthwise convs
  (`depthwise=True`) have kernels [k,k,1,C] and may run as k·k shifted multiply-adds (`depthwise_impl`).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  depthwise_impl: str = 'auto'
  padding: str = 'same'

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    k, s = self.kernel_size, self.strides
    if self.depthwise:
      shape = (k, k, 1, cin)
    else:
      shape = (k, k, cin, self.features)
    kernel = self.param('kernel', conv_kernel_init(self.depthwise), shape, jnp.float32)
    x = x.astype(self.dtype)
    w = kernel.astype(self.dtype)
    pads = [conv_padding(x.shape[1], k, s, self.padding), conv_padding(x.shape[2], k, s, self.padding)]
    if self.depthwise and resolve_depthwise_impl(self.depthwise_impl) == 'shift':
      y = _depthwise_shift(x, w, s, pads)
    elif k == 1 and s == 1 and not self.depthwise:
      y = jnp.einsum('nhwc,cd->nhwd', x, w[0, 0])
    else:
      y = lax.conv_general_dilated(
          x, w, window_strides=(s, s), padding=pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=cin if self.depthwise else 1)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (y.shape[-1],), jnp.float32).astype(self.dtype)
    return y


def _depthwise_shift(x, w, stride, pads):
  """Depthwise conv as a sum of k·k strided slices of the padded input (`pads`: per-axis (before, after)) times
  per-channel weights."""
  k = w.shape[0]
  n, h, wd, c = x.shape
  (ph, pw) = pads
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  oh, ow = (h + sum(ph) - k) // stride + 1, (wd + sum(pw) - k) // stride + 1
  acc = None
  for i in range(k):
    for j in range(k):
      patch = lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                        (1, stride, stride, 1))
      term = patch * w[i, j, 0]
      acc = term if acc is None else acc + term
  return acc


class BatchNorm(nn.Module):
  """Batch norm with TF defaults (eps 1e-3) and float32 statistics.

  Under `jax.jit` over a data-parallel mesh the moments are reduced over the whole global batch (sync BN).
  `group_size` > 0 instead reduces over consecutive groups of that many examples, which reproduces the official
  per-core-group statistics (a group of 8 TPU cores with 128 images each is group_size=1024), because the data
  axis splits the batch into consecutive per-device slices.
  """
  momentum: float = 0.99
  epsilon: float = 1e-3
  group_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if not train:
      mul = scale * lax.rsqrt(ra_var.value + self.epsilon)
      add = bias - ra_mean.value * mul
      return x.astype(self.dtype) * mul.astype(self.dtype) + add.astype(self.dtype)

    b = x.shape[0]
    g = self.group_size
    if g and g < b:
      if b % g:
        raise ValueError(f'model.bn_group_size={g} must divide the global batch {b}')
      xg = x.reshape((b // g, g) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axis=axes, keepdims=True, dtype=jnp.float32)
      mean_sq = jnp.mean(jnp.square(xg.astype(jnp.float32)), axis=axes, keepdims=True)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      mul = scale * lax.rsqrt(var + self.epsilon)
      add = bias - mean * mul
      y = (xg.astype(self.dtype) * mul.astype(self.dtype) + add.astype(self.dtype)).reshape(x.shape)
      batch_mean, batch_var = mean.reshape(-1, c).mean(0), var.reshape(-1, c).mean(0)
    else:
      axes = tuple(range(x.ndim - 1))
      batch_mean = jnp.mean(x, axis=axes, dtype=jnp.float32)
      mean_sq = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axes)
      batch_var = jnp.maximum(mean_sq - jnp.square(batch_mean), 0.0)
      mul = scale * lax.rsqrt(batch_var + self.epsilon)
      add = bias - batch_mean * mul
      y = x.astype(self.dtype) * mul.astype(self.dtype) + add.astype(self.dtype)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * batch_mean
      ra_var.value = m * ra_var.value + (1.0 - m) * batch_var
    return y


class SqueezeExcite(nn.Module):
  """SE: global mean (float32) → 1×1 conv+bias to `reduced` → activation → 1×1 conv+bias back → sigmoid gate.

  `reduced` = max(1, int(block_input_filters · se_ratio)), from the block INPUT width (official code). The
  activation is the network's (the official `relu_fn`): SiLU in v1/v2."""
  reduced: int
  dtype: Dtype = jnp.float32
  activation: str = 'silu'

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
    s = Conv(self.reduced, 1, use_bias=True, dtype=jnp.float32, name='reduce')(s)
    s = ACTIVATIONS[self.activation](s)
    s = Conv(c, 1, use_bias=True, dtype=jnp.float32, name='expand')(s)
    return x * nn.sigmoid(s).astype(x.dtype)


def drop_path(x, survival_prob: float, rng):
  """Stochastic depth: keeps each sample's residual branch with probability p, scaled by 1/p (x/p·floor(p+U))."""
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  keep = jnp.floor(survival_prob + jax.random.uniform(rng, shape, dtype=jnp.float32))
  return x * (keep / survival_prob).astype(x.dtype)


def dropout(x, rate, rng):
  """Inverted dropout whose `rate` may be a traced scalar, so progressive learning changes it without a retrace."""
  rate = jnp.asarray(rate, jnp.float32)
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, x.shape)
  return jnp.where(keep, x / jnp.maximum(keep_prob, 1e-6).astype(x.dtype), jnp.zeros_like(x))
