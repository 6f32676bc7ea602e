"""Imports timm `tf_efficientnet_*` / `tf_efficientnetv2_*` weights into our variable tree.

Why: timm's `tf_*` models are faithful ports of the official TF checkpoints (TF 'SAME' padding, BN eps 1e-3), so
their state dicts are the easiest way to start from the released ImageNet weights and the reference we check our
forward pass against. The mapping is derived from our own block list (`model_blocks`), never guessed from the
state dict, and every tensor is checked against the shapes our model expects: a wrong variant or width fails
loudly on the first tensor that disagrees instead of producing a silently broken network.

No torch import here: tensors are converted through `.detach().cpu().numpy()` when they have it.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from effnet.models import abstract_variables, build_model, model_blocks, scan_variables

__all__ = ['from_timm']

# How a timm tensor becomes ours.
_OIHW = 'conv'        # torch conv [O, I, kh, kw] -> HWIO [kh, kw, I, O]
_DEPTHWISE = 'dw'     # torch depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]
_LINEAR = 'linear'    # torch Linear [out, in] -> [in, out]
_VECTOR = 'vector'    # biases, BN vectors: unchanged

_BN_FIELDS = (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
              ('running_mean', 'batch_stats', 'mean'), ('running_var', 'batch_stats', 'var'))


def _conv(timm_name: str, ours: str, kind: str = _OIHW, bias: bool = False):
  out = [(f'{timm_name}.weight', ('params',) + tuple(ours.split('/')) + ('kernel',), kind)]
  if bias:
    out.append((f'{timm_name}.bias', ('params',) + tuple(ours.split('/')) + ('bias',), _VECTOR))
  return out


def _bn(timm_name: str, ours: str):
  return [(f'{timm_name}.{t}', (col,) + tuple(ours.split('/')) + (leaf,), _VECTOR) for t, col, leaf in _BN_FIELDS]


def _se(timm_prefix: str, ours_prefix: str):
  return (_conv(f'{timm_prefix}.se.conv_reduce', f'{ours_prefix}/se/reduce', bias=True) +
          _conv(f'{timm_prefix}.se.conv_expand', f'{ours_prefix}/se/expand', bias=True))


def _block_entries(block, j: int):
  """(timm name, our path, kind) for one block, in forward order. timm block type from our spec:
  MBConv e=1 -> 'ds', MBConv e>1 -> 'ir', Fused e>1 -> 'er', Fused e=1 -> 'cn'."""
  spec = block.spec
  t = f'blocks.{block.stage}.{j}'
  o = f'blocks_{block.index}'
  se = bool(spec.se_ratio)
  if spec.fused and spec.expand_ratio != 1:  # er
    out = _conv(f'{t}.conv_exp', f'{o}/expand_conv') + _bn(f'{t}.bn1', f'{o}/expand_bn')
    if se:
      out += _se(t, o)
    return out + _conv(f'{t}.conv_pwl', f'{o}/project_conv') + _bn(f'{t}.bn2', f'{o}/project_bn')
  if spec.fused:  # cn (timm ConvBnAct has no SE; if ours does, its SE tensors are reported as missing)
    return (_se(t, o) if se else []) + _conv(f'{t}.conv', f'{o}/project_conv') + _bn(f'{t}.bn1', f'{o}/project_bn')
  if spec.expand_ratio == 1:  # ds
    out = _conv(f'{t}.conv_dw', f'{o}/dw_conv', _DEPTHWISE) + _bn(f'{t}.bn1', f'{o}/dw_bn')
    if se:
      out += _se(t, o)
    return out + _conv(f'{t}.conv_pw', f'{o}/project_conv') + _bn(f'{t}.bn2', f'{o}/project_bn')
  out = (_conv(f'{t}.conv_pw', f'{o}/expand_conv') + _bn(f'{t}.bn1', f'{o}/expand_bn') +
         _conv(f'{t}.conv_dw', f'{o}/dw_conv', _DEPTHWISE) + _bn(f'{t}.bn2', f'{o}/dw_bn'))
  if se:
    out += _se(t, o)
  return out + _conv(f'{t}.conv_pwl', f'{o}/project_conv') + _bn(f'{t}.bn3', f'{o}/project_bn')


def _entries(model_config, with_classifier: bool):
  blocks, _, _ = model_blocks(model_config)
  out = _conv('conv_stem', 'stem_conv') + _bn('bn1', 'stem_bn')
  seen: dict[int, int] = {}
  for blk in blocks:
    j = seen.get(blk.stage, 0)
    seen[blk.stage] = j + 1
    out += _block_entries(blk, j)
  out += _conv('conv_head', 'head_conv') + _bn('bn2', 'head_bn')
  if with_classifier:
    out += [('classifier.weight', ('params', 'head_dense', 'kernel'), _LINEAR),
            ('classifier.bias', ('params', 'head_dense', 'bias'), _VECTOR)]
  return out


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    try:
      value = value.numpy()
    except TypeError:  # bfloat16 and other dtypes numpy lacks
      value = value.float().numpy()
  return np.asarray(value)


def _transform(arr: np.ndarray, kind: str):
  """The converted array, or None when `arr` has the wrong rank for `kind` (reported as a shape mismatch)."""
  if kind in (_OIHW, _DEPTHWISE):
    return arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else None
  if kind == _LINEAR:
    return arr.T if arr.ndim == 2 else None
  return arr if arr.ndim == 1 else None


def _flatten(tree) -> dict[tuple[str, ...], Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[tuple(getattr(k, 'key', str(k)) for k in path)] = leaf
  return flat


def _set(tree: dict, path: tuple[str, ...], value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def from_timm(state_dict: Mapping[str, Any], model_config, image_size: int = 64) -> dict:
  """Maps a timm `tf_efficientnet*` state dict onto the variables of `build_model(model_config)`.

  `state_dict`: name -> torch tensor or numpy array (`num_batches_tracked` entries are ignored).
  Returns `{'params': ..., 'batch_stats': ...}` (nested dicts of float32 numpy arrays) ready for `module.apply`,
  in the model's layout: per block, or stacked per scan group with `model.scan_blocks` (names, shapes and errors
  are checked and reported per block either way).
  Raises ValueError naming the first tensor (in forward order) whose name or shape does not match: a timm key we
  need but the dict lacks, a timm tensor whose converted shape differs from ours, a timm key we did not use, or
  one of our variables nothing maps to. `image_size` only feeds the shape-only trace (any size works).
  """
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'state_dict: expected a mapping name -> tensor, got {type(state_dict).__name__}')
  module = build_model(model_config)
  expected = _flatten(abstract_variables(module.clone(scan_blocks=False), image_size))
  sd = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  with_classifier = ('params', 'head_dense', 'kernel') in expected
  out: dict = {}
  filled = set()
  for timm_name, path, kind in _entries(model_config, with_classifier):
    ours = '/'.join(path)
    if path not in expected:
      raise ValueError(f'timm tensor {timm_name!r} maps to our variable {ours!r}, which the model does not have '
                       f'(architecture mismatch)')
    want = tuple(expected[path].shape)
    if timm_name not in sd:
      raise ValueError(f'missing key: timm tensor {timm_name!r} (for our {ours!r}, shape {want}) is not in the '
                       f'state dict')
    arr = _to_numpy(sd[timm_name])
    conv = _transform(arr, kind)
    if conv is None or tuple(conv.shape) != want:
      got = None if conv is None else tuple(conv.shape)
      raise ValueError(f'shape mismatch at timm tensor {timm_name!r} {tuple(arr.shape)} (converted {got}) -> our '
                       f'{ours!r} {want}; wrong variant / width / config for this state dict?')
    _set(out, path, np.ascontiguousarray(conv, dtype=np.float32))
    filled.add(path)
  used = {name for name, _, _ in _entries(model_config, with_classifier)}
  leftover = [k for k in sd if k not in used]
  if leftover:
    raise ValueError(f'unexpected key: timm tensor {leftover[0]!r} {tuple(_to_numpy(sd[leftover[0]]).shape)} has no '
                     f'counterpart in our model ({len(leftover)} unused keys; wrong depth / variant?)')
  unfilled = [p for p in expected if p not in filled]
  if unfilled:
    p = unfilled[0]
    raise ValueError(f'our variable {"/".join(p)!r} {tuple(expected[p].shape)} has no timm tensor '
                     f'({len(unfilled)} unfilled)')
  return scan_variables(out, module) if module.scan_blocks else out
