"""Imports timm EfficientNet weights (v1, V2, Lite, EdgeTPU), keras.applications EfficientNets and official TF
checkpoints (tensorflow/tpu, google/automl) into our variables.

Why: timm's `tf_*` models are faithful ports of the official TF checkpoints (TF 'SAME' padding, BN eps 1e-3), so
their state dicts are the easiest way to start from the released ImageNet weights and the reference we check our
forward pass against. The mapping is derived from our own block list (`model_blocks`), never guessed from the
state dict, and every tensor is checked against the shapes our model expects: a wrong variant or width fails
loudly on the first tensor that disagrees instead of producing a silently broken network.

What shapes cannot show (padding, BN epsilon, activation) comes from the timm model's name (`timm_requirements`):
timm's PyTorch-native `efficientnet_*` ports have the same tensor names and shapes as the `tf_*` ones but pad
symmetrically and use BN eps 1e-5, so they convert only into a config with model.padding='symmetric' and
model.bn_epsilon=1e-5; timm models whose layers we do not build are refused with the reason.

Keras (`from_keras`): the same mapping from our block list onto Keras' layer names. Keras puts the input
preprocessing inside the model; it is checked against effnet's data.normalization (never folded into the weights,
since zero padding after the stem would then pad other values), and BN epsilon, activation and padding are read from
the Keras layers and checked against the config.

Official TF checkpoints (`from_tf_checkpoint`): the variable names the official main.py saves, read with
tf.train.load_checkpoint; the EMA shadows by default, as the official eval restores them.

One name table (`_Names`) says how each source names a layer's tensors; `_conv` / `_bn` build the entries from it.
No torch, Keras or TensorFlow import at module level: tensors are converted through `.detach().cpu().numpy()` when
they have it.
"""
from __future__ import annotations

from typing import Any, Mapping

import collections
import logging
import os
import re

import jax
import numpy as np

from effnet.data import NORMALIZATIONS, normalize
from effnet.models import abstract_variables, build_model, model_blocks, scan_variables

__all__ = ['from_keras', 'from_tf_checkpoint', 'from_timm', 'keras_weights', 'tf_checkpoint_weights',
           'timm_requirements']

# timm architecture name (without its '.tag') -> (what the name means, model fields the weights need). Sources:
# timm/models/efficientnet.py: the tf_* entry points set bn_eps=1e-3 and pad_type='same'; the others keep PyTorch's
# BatchNorm2d eps 1e-5 and symmetric padding; Lite's builder uses ReLU6, EdgeTPU's ReLU, all others SiLU.
_TF = dict(padding='same', bn_epsilon=1e-3)
_TORCH = dict(padding='symmetric', bn_epsilon=1e-5)
_TIMM_CONVERTIBLE = (
    (r'tf_efficientnet_(b[0-8]|l2)', "a port of the official TF EfficientNet", dict(_TF, activation='silu')),
    (r'tf_efficientnetv2_(s|m|l|xl|b[0-3])', "a port of the official TF EfficientNetV2", dict(_TF, activation='silu')),
    (r'tf_efficientnet_lite[0-4]', "a port of the official TF EfficientNet-Lite", dict(_TF, activation='relu6')),
    (r'tf_efficientnet_e[sml]', "a port of the official TF EfficientNet-EdgeTPU", dict(_TF, activation='relu')),
    (r'efficientnet_(b[0-8]|l2)', "timm's PyTorch-native EfficientNet", dict(_TORCH, activation='silu')),
    (r'efficientnetv2_(s|m|l|xl)', "timm's PyTorch-native EfficientNetV2", dict(_TORCH, activation='silu')),
    (r'efficientnet_lite[0-4]', "timm's PyTorch-native EfficientNet-Lite", dict(_TORCH, activation='relu6')),
    (r'efficientnet_e[sml]', "timm's PyTorch-native EfficientNet-EdgeTPU", dict(_TORCH, activation='relu')),
)
_TIMM_REFUSED = (
    (r'.*_pruned', 'per-layer pruned channel counts, which block strings cannot express'),
    (r'(gc_)?efficientnetv2_rw_.*', "Ross Wightman's pre-release V2 layout (rw_s/rw_m: an expand+project e=1 first "
                                    "stage, a 272-wide last stage and a 1792 head; rw_t: V2-S scaled 0.8/0.9 with "
                                    "timm's rounding; gc_: global-context attention instead of SE), no official model"),
    (r'.*_cc_.*', 'CondConv (per-example mixtures of expert kernels)'),
    (r'.*(_gn|_evos)', 'GroupNorm / EvoNorm layers instead of BatchNorm'),
    (r'.*blur.*', 'blur-pool anti-aliased downsampling'),
    (r'efficientnet_[xh]_.*', 'EfficientNet-X/H (space-to-depth stem and other layer changes)'),
)


def timm_requirements(timm_name: str) -> tuple[str, dict]:
  """(description, {model field: value}) that weights of the timm model `timm_name` need to give timm's logits.

  Raises ValueError naming why for timm models effnet does not build (the layers differ, or no official model)."""
  arch_name = str(timm_name).split('.')[0]
  for pattern, what, needs in _TIMM_CONVERTIBLE:
    if re.fullmatch(pattern, arch_name):
      return what, needs
  for pattern, why in _TIMM_REFUSED:
    if re.fullmatch(pattern, arch_name):
      raise ValueError(f'timm model {timm_name!r} is not converted: it has {why}; effnet builds only the official '
                       f'layer types, so its weights would give other logits')
  allowed = ', '.join(p for p, _, _ in _TIMM_CONVERTIBLE)
  raise ValueError(f'timm model {timm_name!r} is not an EfficientNet family effnet builds; allowed: {allowed}')


def _check_timm_source(timm_name: str, model_config) -> None:
  """Refuses a conversion whose padding / BN eps / activation differ from the timm model's (same shapes, wrong
  logits): e.g. timm's PyTorch-native efficientnet_b0 into a TF-'SAME' config."""
  what, needs = timm_requirements(timm_name)
  wrong = {k: v for k, v in needs.items() if model_config[k] != v}
  if wrong:
    fix = ', '.join(f'model.{k}={v!r} (got {model_config[k]!r})' for k, v in wrong.items())
    raise ValueError(f'timm model {timm_name!r} is {what}: its weights give its logits only with {fix}; '
                     f'set those fields (effnet.convert.timm_requirements({timm_name!r}) lists them)')


def _timm_source(source, timm_name):
  """(state dict, timm name) from a timm model or a state dict plus the name it came from."""
  if hasattr(source, 'state_dict') and callable(source.state_dict):
    name = timm_name or (getattr(source, 'pretrained_cfg', None) or {}).get('architecture')
    if not name:
      raise ValueError('timm_name: the model carries no pretrained_cfg["architecture"]; pass timm_name="..."')
    return source.state_dict(), name
  if not isinstance(source, Mapping):
    raise ValueError(f'state_dict: expected a timm model or a mapping name -> tensor, got {type(source).__name__}')
  if not timm_name:
    raise ValueError("timm_name=None: a bare state dict does not say which timm model it came from, and timm's "
                     "tf_* and PyTorch-native ports share names and shapes but not padding or BN eps; pass "
                     "timm_name (e.g. 'tf_efficientnet_b0') or the timm model itself")
  return source, timm_name

# How a timm tensor becomes ours.
_OIHW = 'conv'        # torch conv [O, I, kh, kw] -> HWIO [kh, kw, I, O]
_DEPTHWISE = 'dw'     # torch depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]
_LINEAR = 'linear'    # torch Linear [out, in] -> [in, out]
_VECTOR = 'vector'    # biases, BN vectors: unchanged
_HWIO = 'hwio'        # Keras conv [kh, kw, I, O]: unchanged
_KERAS_DEPTHWISE = 'kdw'  # Keras depthwise [kh, kw, C, 1] -> [kh, kw, 1, C]
_DENSE = 'dense'      # Keras Dense [in, out]: unchanged

# How each source names a layer's tensors: separator, conv kernel and bias leaves, the BN leaves in the order of
# _OUR_BN, and how its conv kernels are laid out. One table drives `_conv` / `_bn` for timm, Keras and TF.
_Names = collections.namedtuple('_Names', 'sep kernel bias bn conv_kind')
_TIMM_NAMES = _Names('.', 'weight', 'bias', ('weight', 'bias', 'running_mean', 'running_var'), _OIHW)
_KERAS_NAMES = _Names('/', 'kernel', 'bias', ('gamma', 'beta', 'moving_mean', 'moving_variance'), _HWIO)
_OUR_BN = (('params', 'scale'), ('params', 'bias'), ('batch_stats', 'mean'), ('batch_stats', 'var'))
T, K = _TIMM_NAMES, _KERAS_NAMES  # short names for the entry builders below


def _conv(names: _Names, layer: str, ours: str, kind: str | None = None, bias: bool = False, kernel: str = ''):
  """(source name, our path, kind) of a conv's kernel (leaf `kernel` if given) and optional bias."""
  path = ('params',) + tuple(ours.split('/'))
  out = [(f'{layer}{names.sep}{kernel or names.kernel}', path + ('kernel',), kind or names.conv_kind)]
  if bias:
    out.append((f'{layer}{names.sep}{names.bias}', path + ('bias',), _VECTOR))
  return out


def _bn(names: _Names, layer: str, ours: str):
  return [(f'{layer}{names.sep}{leaf}', (col,) + tuple(ours.split('/')) + (our_leaf,), _VECTOR)
          for leaf, (col, our_leaf) in zip(names.bn, _OUR_BN)]


def _se(timm_prefix: str, ours_prefix: str):
  return (_conv(_TIMM_NAMES, f'{timm_prefix}.se.conv_reduce', f'{ours_prefix}/se/reduce', bias=True) +
          _conv(_TIMM_NAMES, f'{timm_prefix}.se.conv_expand', f'{ours_prefix}/se/expand', bias=True))


def _block_entries(block, j: int):
  """(timm name, our path, kind) for one block, in forward order. timm block type from our spec:
  MBConv e=1 -> 'ds', MBConv e>1 -> 'ir', Fused e>1 -> 'er', Fused e=1 -> 'cn'."""
  spec = block.spec
  t = f'blocks.{block.stage}.{j}'
  o = f'blocks_{block.index}'
  se = bool(spec.se_ratio)
  if spec.fused and spec.expand_ratio != 1:  # er
    out = _conv(T, f'{t}.conv_exp', f'{o}/expand_conv') + _bn(T, f'{t}.bn1', f'{o}/expand_bn')
    if se:
      out += _se(t, o)
    return out + _conv(T, f'{t}.conv_pwl', f'{o}/project_conv') + _bn(T, f'{t}.bn2', f'{o}/project_bn')
  if spec.fused:  # cn (timm ConvBnAct has no SE; if ours does, its SE tensors are reported as missing)
    return ((_se(t, o) if se else []) + _conv(T, f'{t}.conv', f'{o}/project_conv') +
            _bn(T, f'{t}.bn1', f'{o}/project_bn'))
  if spec.expand_ratio == 1:  # ds
    out = _conv(T, f'{t}.conv_dw', f'{o}/dw_conv', _DEPTHWISE) + _bn(T, f'{t}.bn1', f'{o}/dw_bn')
    if se:
      out += _se(t, o)
    return out + _conv(T, f'{t}.conv_pw', f'{o}/project_conv') + _bn(T, f'{t}.bn2', f'{o}/project_bn')
  out = (_conv(T, f'{t}.conv_pw', f'{o}/expand_conv') + _bn(T, f'{t}.bn1', f'{o}/expand_bn') +
         _conv(T, f'{t}.conv_dw', f'{o}/dw_conv', _DEPTHWISE) + _bn(T, f'{t}.bn2', f'{o}/dw_bn'))
  if se:
    out += _se(t, o)
  return out + _conv(T, f'{t}.conv_pwl', f'{o}/project_conv') + _bn(T, f'{t}.bn3', f'{o}/project_bn')


def _with_index_in_stage(blocks):
  """(block, its index within its stage): timm and Keras name a block by its stage and that index."""
  seen: dict[int, int] = {}
  for blk in blocks:
    yield blk, seen.get(blk.stage, 0)
    seen[blk.stage] = seen.get(blk.stage, 0) + 1


def _entries(model_config, with_classifier: bool):
  blocks, _, _ = model_blocks(model_config)
  out = _conv(T, 'conv_stem', 'stem_conv') + _bn(T, 'bn1', 'stem_bn')
  for blk, j in _with_index_in_stage(blocks):
    out += _block_entries(blk, j)
  out += _conv(T, 'conv_head', 'head_conv') + _bn(T, 'bn2', 'head_bn')
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
  if kind == _HWIO:
    return arr if arr.ndim == 4 else None
  if kind == _KERAS_DEPTHWISE:
    return arr.transpose(0, 1, 3, 2) if arr.ndim == 4 else None
  if kind == _DENSE:
    return arr if arr.ndim == 2 else None
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


def from_timm(state_dict, model_config, image_size: int = 64, *, timm_name: str | None = None) -> dict:
  """Maps the weights of a timm EfficientNet onto the variables of `build_model(model_config)`.

  `state_dict`: a timm model (its name read from `pretrained_cfg`), or its state dict (name -> torch tensor or
  numpy array; `num_batches_tracked` entries are ignored) together with `timm_name`, e.g. 'tf_efficientnet_lite0'.
  The name decides what shapes cannot: `timm_requirements` gives the padding, BN eps and activation the config
  must have (ValueError naming the fields otherwise) and refuses timm models whose layers we do not build.
  Returns `{'params': ..., 'batch_stats': ...}` (nested dicts of float32 numpy arrays) ready for `module.apply`,
  in the model's layout: per block, or stacked per scan group with `model.scan_blocks` (names, shapes and errors
  are checked and reported per block either way).
  Raises ValueError naming the first tensor (in forward order) whose name or shape does not match: a timm key we
  need but the dict lacks, a timm tensor whose converted shape differs from ours, a timm key we did not use, or
  one of our variables nothing maps to. `image_size` only feeds the shape-only trace (any size works).
  """
  state_dict, timm_name = _timm_source(state_dict, timm_name)
  _check_timm_source(timm_name, model_config)
  module = build_model(model_config)
  expected = _flatten(abstract_variables(module.clone(scan_blocks=False), image_size))
  sd = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  with_classifier = ('params', 'head_dense', 'kernel') in expected
  out = _assign(_entries(model_config, with_classifier), sd, expected, _TIMM_WORDS)
  return scan_variables(out, module) if module.scan_blocks else out


# How `_assign` names a source and its tensors in errors: (one tensor, the container).
_TIMM_WORDS = ('timm tensor', 'state dict')
_KERAS_WORDS = ('Keras weight', 'Keras model')


def _assign(entries, source: Mapping, expected: dict, words: tuple[str, str]) -> dict:
  """Our variable tree from `source` (name -> array) along `entries` (source name, our path, kind), in order.

  Raises ValueError naming the first source tensor (in forward order) whose name or shape does not match: one we
  need but `source` lacks, one whose converted shape differs from ours, one nothing used, or one of our variables
  no entry fills."""
  tensor, container = words
  out: dict = {}
  filled = set()
  for tensor_name, path, kind in entries:
    ours = '/'.join(path)
    if path not in expected:
      raise ValueError(f'{tensor} {tensor_name!r} maps to our variable {ours!r}, which the model does not have '
                       f'(architecture mismatch)')
    want = tuple(expected[path].shape)
    if tensor_name not in source:
      raise ValueError(f'missing key: {tensor} {tensor_name!r} (for our {ours!r}, shape {want}) is not in the '
                       f'{container}')
    arr = _to_numpy(source[tensor_name])
    conv = _transform(arr, kind)
    if conv is None or tuple(conv.shape) != want:
      got = None if conv is None else tuple(conv.shape)
      raise ValueError(f'shape mismatch at {tensor} {tensor_name!r} {tuple(arr.shape)} (converted {got}) -> our '
                       f'{ours!r} {want}; wrong variant / width / config for this {container}?')
    _set(out, path, np.ascontiguousarray(conv, dtype=np.float32))
    filled.add(path)
  used = {name for name, _, _ in entries}
  leftover = [k for k in source if k not in used]
  if leftover:
    raise ValueError(f'unexpected key: {tensor} {leftover[0]!r} {tuple(_to_numpy(source[leftover[0]]).shape)} has '
                     f'no counterpart in our model ({len(leftover)} unused keys; wrong depth / variant?)')
  unfilled = [p for p in expected if p not in filled]
  if unfilled:
    p = unfilled[0]
    raise ValueError(f'our variable {"/".join(p)!r} {tuple(expected[p].shape)} has no {tensor} '
                     f'({len(unfilled)} unfilled)')
  return out


# --- Keras (keras.applications EfficientNetB0-B7, EfficientNetV2B0-B3/S/M/L) ---------------------------------------
#
# Facts from keras/src/applications/efficientnet.py and efficientnet_v2.py (Keras 3):
# - Layer names: stem_conv/stem_bn, block{stage+1}{a,b,...}_{expand_conv,expand_bn,dwconv (v1) | dwconv2 (V2),bn,
#   se_reduce,se_expand,project_conv,project_bn}, top_conv/top_bn, predictions (Dense). Conv kernels are HWIO like
#   ours, depthwise kernels [kh, kw, C, 1], SE convs carry biases; BN weights gamma/beta/moving_mean/moving_variance.
# - BatchNormalization keeps Keras' default epsilon 1e-3 (the official value); activation 'swish' (= silu).
# - Padding: V2 uses padding='same' (TF SAME). v1 pads stride-2 layers with ZeroPadding2D(correct_pad) + 'valid',
#   which is TF SAME when the model was built for a fixed input size; built for any size (input_shape None)
#   correct_pad assumes even inputs, so it equals SAME only when every stride-2 layer sees an even size (224, 64...).
# - Preprocessing inside the model: v1 Rescaling(1/255) + Normalization (+ Rescaling(1/sqrt(std)) with
#   weights='imagenet', because its weight file stores the std where Normalization expects the variance); V2 B0-B3
#   Rescaling(1/255) + Normalization(ImageNet mean, std**2); V2 S/M/L Rescaling(1/128, offset=-1). These are
#   checked against effnet's data.normalization (`_keras_preprocessing`), never converted.
_KERAS_ACTIVATIONS = {'swish': 'silu', 'silu': 'silu', 'relu': 'relu', 'relu6': 'relu6'}
_KERAS_PREPROCESSING = ('Rescaling', 'Normalization')


def _keras_block_entries(block, j: int, dwconv: str):
  """(Keras weight path, our path, kind) for one block in forward order; the same four block types as timm's."""
  spec = block.spec
  k = f'block{block.stage + 1}{chr(ord("a") + j)}_'
  o = f'blocks_{block.index}'
  se = (_conv(K, f'{k}se_reduce', f'{o}/se/reduce', bias=True) +
        _conv(K, f'{k}se_expand', f'{o}/se/expand', bias=True)) if spec.se_ratio else []
  project = _conv(K, f'{k}project_conv', f'{o}/project_conv') + _bn(K, f'{k}project_bn', f'{o}/project_bn')
  expand = (_conv(K, f'{k}expand_conv', f'{o}/expand_conv') + _bn(K, f'{k}expand_bn', f'{o}/expand_bn')
            if spec.expand_ratio != 1 else [])
  if spec.fused:
    return expand + se + project
  depthwise = _conv(K, f'{k}{dwconv}', f'{o}/dw_conv', _KERAS_DEPTHWISE) + _bn(K, f'{k}bn', f'{o}/dw_bn')
  return expand + depthwise + se + project


def _keras_entries(model_config, with_classifier: bool, dwconv: str):
  blocks, _, _ = model_blocks(model_config)
  out = _conv(K, 'stem_conv', 'stem_conv') + _bn(K, 'stem_bn', 'stem_bn')
  for blk, j in _with_index_in_stage(blocks):
    out += _keras_block_entries(blk, j, dwconv)
  out += _conv(K, 'top_conv', 'head_conv') + _bn(K, 'top_bn', 'head_bn')
  if with_classifier:
    out += [('predictions/kernel', ('params', 'head_dense', 'kernel'), _DENSE),
            ('predictions/bias', ('params', 'head_dense', 'bias'), _VECTOR)]
  return out


def _keras_model(model_or_path):
  """The Keras model itself, or the one a saved `.keras` file holds (loaded without compiling)."""
  if hasattr(model_or_path, 'layers') and hasattr(model_or_path, 'get_layer'):
    return model_or_path
  if not isinstance(model_or_path, (str, os.PathLike)):
    raise ValueError(f'model_or_path: expected a Keras model or the path of a saved .keras file, got '
                     f'{type(model_or_path).__name__}')
  path = os.fspath(model_or_path)
  if not path.endswith('.keras') or not os.path.isfile(path):
    raise ValueError(f'model_or_path={path!r}: expected an existing .keras file (keras.Model.save("x.keras"))')
  import keras  # pylint: disable=g-import-not-at-top  (only this converter needs Keras)
  return keras.models.load_model(path, compile=False)


def _keras_preprocessing(model) -> list:
  """The layers between the input and the stem: Rescaling / Normalization only (anything else is refused)."""
  layers = []
  for layer in model.layers:
    if layer.name in ('stem_conv_pad', 'stem_conv'):
      return layers
    kind = type(layer).__name__
    if kind == 'InputLayer':
      continue
    if kind not in _KERAS_PREPROCESSING:
      raise ValueError(f'Keras layer {layer.name!r} ({kind}) before the stem: only {_KERAS_PREPROCESSING} are '
                       f'understood there (not a keras.applications EfficientNet?)')
    layers.append(layer)
  raise ValueError('Keras model has no layer named stem_conv: not a keras.applications EfficientNet')


def _check_keras_preprocessing(model, normalization: str) -> None:
  """Keras' built-in preprocessing must be effnet's `normalization`: the test images 0 and 255 must map alike.

  An un-adapted Normalization layer (what weights=None builds for v1: mean 0, variance 1) gives x / 255, which no
  effnet normalisation gives: refused, so a wrong preprocessing never passes as converted weights."""
  layers = _keras_preprocessing(model)
  if not layers:
    logging.warning('the Keras model has no preprocessing layers (include_preprocessing=False): it expects inputs '
                    'normalised by its caller, which cannot be checked; effnet feeds data.normalization=%r',
                    normalization)
    return
  pixels = np.stack([np.zeros((1, 1, 3)), np.full((1, 1, 3), 255.0)]).astype(np.float32)
  keras_out = pixels
  for layer in layers:
    keras_out = np.asarray(layer(keras_out))
  ours = np.asarray(normalize(pixels, normalization))
  if not np.allclose(keras_out, ours, rtol=1e-5, atol=1e-5):
    show = lambda a: [round(float(v), 4) for v in a[0, 0]]  # noqa: E731
    raise ValueError(f"the Keras model's preprocessing layers ({', '.join(l.name for l in layers)}) map pixel 0 to "
                     f'{show(keras_out[0])} and 255 to {show(keras_out[1])}, but data.normalization='
                     f'{normalization!r} maps them to {show(ours[0])} and {show(ours[1])}; the weights expect the '
                     'Keras inputs. Pass the '
                     'normalization that matches, or set the Normalization layer (keras.applications v1 built with '
                     'weights=None leaves it at mean 0, variance 1)')


def _check_keras_layers(model, model_config) -> None:
  """BN epsilon, activation and padding: what shapes cannot show. Each must equal the config's, or it names why."""
  eps = sorted({float(l.epsilon) for l in model.layers if type(l).__name__ == 'BatchNormalization'})
  if not eps:
    raise ValueError('the Keras model has no BatchNormalization layer: not a keras.applications EfficientNet')
  if eps != [float(model_config['bn_epsilon'])]:
    raise ValueError(f'the Keras BatchNormalization layers use epsilon {eps}; model.bn_epsilon='
                     f'{model_config["bn_epsilon"]!r} would give other logits (set model.bn_epsilon={eps[0]!r})')
  act = model.get_layer('stem_activation').get_config()['activation']
  needs = _KERAS_ACTIVATIONS.get(act if isinstance(act, str) else '')
  if needs is None:
    raise ValueError(f'Keras activation {act!r} (layer stem_activation) is none effnet builds; allowed: '
                     f'{sorted(_KERAS_ACTIVATIONS)}')
  if model_config['activation'] != needs:
    raise ValueError(f'the Keras model uses activation {act!r}: its weights need model.activation={needs!r} '
                     f'(got {model_config["activation"]!r})')
  if model_config['padding'] != 'same':
    raise ValueError(f"keras.applications EfficientNets pad as TF 'SAME' (V2: padding='same'; v1: ZeroPadding2D + "
                     f"'valid'): their weights need model.padding='same' (got {model_config['padding']!r})")


def keras_weights(model) -> dict[str, np.ndarray]:
  """{'layer/weight': array} of every Keras weight after the preprocessing layers (whose constants are checked
  by `_check_keras_preprocessing`, not converted)."""
  skip = {id(l) for l in _keras_preprocessing(model)}
  out = {}
  for layer in model.layers:
    if id(layer) in skip:
      continue
    for w in layer.weights:
      out[f'{layer.name}/{w.name}'] = np.asarray(w.numpy())
  return out


def from_keras(model_or_path, model_config, image_size: int = 64, *, normalization: str = 'imagenet') -> dict:
  """Maps the weights of a keras.applications EfficientNet (B0-B7, V2 B0-B3/S/M/L) onto `build_model(model_config)`.

  `model_or_path`: a Keras model, or the path of a `.keras` file it was saved to. `normalization`: the
  data.normalization effnet will feed the model ('imagenet' for v1 and V2 B0-B3, 'inception_128' for V2 S/M/L, as
  the official code); the Keras model's built-in Rescaling / Normalization layers must compute exactly that on
  0..255 pixels, else ValueError with both mappings (Keras' pretrained v1 does: its weight file stores the std as
  the Normalization variance and a third Rescaling(1/sqrt(std)) corrects it; a v1 built with weights=None has an
  un-adapted Normalization, mean 0 and variance 1, i.e. plain x/255, and is refused until it is set). A model
  without preprocessing layers (V2 include_preprocessing=False) is accepted with a warning. BN epsilon, activation
  and padding must be the config's (`_check_keras_layers`). Whether the Keras head ends in a softmax does not matter:
  ours gives the logits. Returns `{'params', 'batch_stats'}` like `from_timm`, raising ValueError that names the
  first Keras weight ('layer/weight') whose name or shape does not map.
  """
  if normalization not in NORMALIZATIONS:  # before a .keras file is loaded
    raise ValueError(f'normalization={normalization!r} (data.normalization); allowed: {NORMALIZATIONS}')
  model = _keras_model(model_or_path)
  _check_keras_preprocessing(model, normalization)  # also refuses a model without a stem_conv
  _check_keras_layers(model, model_config)
  weights = keras_weights(model)
  dwconv = 'dwconv2' if any('_dwconv2/' in k for k in weights) else 'dwconv'
  module = build_model(model_config)
  expected = _flatten(abstract_variables(module.clone(scan_blocks=False), image_size))
  with_classifier = ('params', 'head_dense', 'kernel') in expected
  out = _assign(_keras_entries(model_config, with_classifier, dwconv), weights, expected, _KERAS_WORDS)
  return scan_variables(out, module) if module.scan_blocks else out


# --- Official TF checkpoints (tensorflow/tpu v1, Lite, EdgeTPU; google/automl V2) -----------------------------------
#
# Facts from tensorflow/tpu efficientnet_model.py / efficientnet_builder.py and google/automl effnetv2_model.py,
# checked on checkpoints their training graph saves (tests/data/official/tf_checkpoint) and on released listings:
# - Everything under one scope, the model name ('efficientnet-b0', 'efficientnet-lite0', 'efficientnet-edgetpu-S',
#   'efficientnetv2-s'): stem/conv2d + stem/tpu_batch_normalization, blocks_N/ (N global, 0-based), head/conv2d +
#   head/tpu_batch_normalization, head/dense/{kernel [C, classes], bias}. Released V2 checkpoints name the classifier
#   head/dense; the automl code run as a TF1 graph today writes head_1/dense (its dense sits in a second 'head' name
#   scope): both are read.
# - Inside a block, convs are named in call order conv2d, conv2d_1, ... and BNs tpu_batch_normalization, _1, _2
#   (expand, depthwise, project); the depthwise kernel is depthwise_conv2d/depthwise_kernel [k, k, C, 1]; SE convs
#   se/conv2d, se/conv2d_1 with biases. Kernels are HWIO, like ours.
# - main.py keeps tf.train.ExponentialMovingAverage shadows of the trainable variables and the BN moving mean and
#   variance, saved as NAME/ExponentialMovingAverage, and evaluates with them; the optimizer's slots (NAME/RMSProp,
#   NAME/RMSProp_1, ...) and global_step are in the checkpoint too and are not weights. EfficientNet-L2's release
#   holds the EMA tensors only.
_TF_EMA = '/ExponentialMovingAverage'
_TF_SLOT = re.compile(r'/(RMSProp|Momentum|Adam|LARS|ExponentialMovingAverage)(_\d+)?$')
_TF_STEM = re.compile(r'^(.+)/stem/conv2d/kernel(/ExponentialMovingAverage)?$')


def _tf_block_entries(block, prefix: str, bn_name: str):
  """(checkpoint name, our path, kind) for one block: convs and BNs numbered in call order."""
  spec, o = block.spec, f'blocks_{block.index}'
  numbered = lambda base, i: f'{prefix}/{base}' + (f'_{i}' if i else '')  # noqa: E731
  out, convs, bns = [], 0, 0
  if spec.expand_ratio != 1:
    out += _conv(K, numbered('conv2d', 0), f'{o}/expand_conv') + _bn(K, numbered(bn_name, 0), f'{o}/expand_bn')
    convs, bns = 1, 1
  if not spec.fused:
    out += (_conv(K, f'{prefix}/depthwise_conv2d', f'{o}/dw_conv', _KERAS_DEPTHWISE, kernel='depthwise_kernel') +
            _bn(K, numbered(bn_name, bns), f'{o}/dw_bn'))
    bns += 1
  if spec.se_ratio:
    out += (_conv(K, f'{prefix}/se/conv2d', f'{o}/se/reduce', bias=True) +
            _conv(K, f'{prefix}/se/conv2d_1', f'{o}/se/expand', bias=True))
  return (out + _conv(K, numbered('conv2d', convs), f'{o}/project_conv') +
          _bn(K, numbered(bn_name, bns), f'{o}/project_bn'))


def _tf_entries(model_config, with_classifier: bool, scope: str, bn_name: str, dense: str):
  blocks, _, _ = model_blocks(model_config)
  out = _conv(K, f'{scope}/stem/conv2d', 'stem_conv') + _bn(K, f'{scope}/stem/{bn_name}', 'stem_bn')
  for blk in blocks:
    out += _tf_block_entries(blk, f'{scope}/blocks_{blk.index}', bn_name)
  out += _conv(K, f'{scope}/head/conv2d', 'head_conv') + _bn(K, f'{scope}/head/{bn_name}', 'head_bn')
  if with_classifier:
    out += [(f'{scope}/{dense}/kernel', ('params', 'head_dense', 'kernel'), _DENSE),
            (f'{scope}/{dense}/bias', ('params', 'head_dense', 'bias'), _VECTOR)]
  return out


def _tf_reader(path: str):
  """A checkpoint reader for a prefix ('.../model.ckpt-1000') or a folder: the newest checkpoint its "checkpoint"
  file names, else its only *.index (the released .tgz files hold e.g. model.ckpt.index and no step number)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only this converter needs TensorFlow)
  path = os.fspath(path)
  prefix = path
  if os.path.isdir(path):
    indexes = sorted(f[:-len('.index')] for f in os.listdir(path) if f.endswith('.index'))
    prefix = tf.train.latest_checkpoint(path) or (os.path.join(path, indexes[0]) if len(indexes) == 1 else None)
  if not prefix or not os.path.exists(prefix + '.index'):
    raise ValueError(f'path={path!r}: no TF checkpoint there (expected a checkpoint prefix such as '
                     f'.../model.ckpt-NNN whose .index file exists, or a folder with a "checkpoint" file or a '
                     f'single *.index)')
  return tf.train.load_checkpoint(prefix), prefix


def _tf_layout(names, prefix: str):
  """(scope, BN layer name, classifier layer) of an official checkpoint's variable names."""
  scopes = sorted({m.group(1) for m in map(_TF_STEM.match, names) if m})
  if len(scopes) != 1:
    found = f'several: {scopes}' if scopes else 'none'
    raise ValueError(f'TF checkpoint {prefix!r}: expected exactly one SCOPE/stem/conv2d/kernel (the variable names '
                     f'of tensorflow/tpu or google/automl main.py; object-based Keras checkpoints are not read), '
                     f'found {found}')
  scope = scopes[0]
  base = lambda n: n[:-len(_TF_EMA)] if n.endswith(_TF_EMA) else n  # noqa: E731
  plain = {base(n) for n in names}
  bn_name = 'tpu_batch_normalization' if f'{scope}/stem/tpu_batch_normalization/gamma' in plain else \
      'batch_normalization'
  dense = 'head/dense' if f'{scope}/head/dense/kernel' in plain else 'head_1/dense'
  return scope, bn_name, dense


def tf_checkpoint_weights(path, ema: bool = True) -> tuple[dict[str, np.ndarray], str]:
  """({variable name: array}, checkpoint prefix) of an official TF checkpoint's model variables.

  ema=True takes each variable's NAME/ExponentialMovingAverage shadow (what the official eval restores) and logs
  the variables that have none (they keep their raw value); a checkpoint without any shadow is refused (pass
  ema=False). ema=False takes the raw values; a variable saved only as a shadow (EfficientNet-L2) is refused.
  Optimizer slots and anything outside the model's scope are left out."""
  reader, prefix = _tf_reader(path)
  names = list(reader.get_variable_to_shape_map())
  scope, _, _ = _tf_layout(names, prefix)
  model = {n for n in names if n.startswith(scope + '/')}
  raw = {n for n in model if not _TF_SLOT.search(n)}
  shadowed = {n[:-len(_TF_EMA)] for n in model if n.endswith(_TF_EMA)}
  if ema and not shadowed:
    raise ValueError(f'TF checkpoint {prefix!r} has no {_TF_EMA[1:]} variables (trained without EMA?); pass '
                     'ema=False to convert its raw weights')
  if not ema and shadowed - raw:
    missing = sorted(shadowed - raw)
    raise ValueError(f'TF checkpoint {prefix!r} holds only the EMA shadow of {len(missing)} variables (e.g. '
                     f'{missing[0]!r}; EfficientNet-L2 is released like that): convert it with ema=True')
  if ema:
    lacking = sorted(raw - shadowed)
    if lacking:
      logging.warning('TF checkpoint %s: %d variables have no EMA shadow and are taken raw: %s', prefix,
                      len(lacking), ', '.join(lacking))
    return {n: reader.get_tensor(n + _TF_EMA if n in shadowed else n) for n in sorted(raw | shadowed)}, prefix
  return {n: reader.get_tensor(n) for n in sorted(raw)}, prefix


def from_tf_checkpoint(path, model_config, ema: bool = True, image_size: int = 64) -> dict:
  """Maps an official TF checkpoint (tensorflow/tpu EfficientNet / Lite / EdgeTPU, google/automl EfficientNetV2, as
  their main.py saves it) onto the variables of `build_model(model_config)`.

  `path`: a checkpoint prefix ('.../model.ckpt-NNN') or its folder. ema=True (default): the EMA shadows, which the
  official eval uses and the published accuracies come from; ema=False: the raw weights (`tf_checkpoint_weights`).
  The official models pad as TF 'SAME' with BN epsilon 1e-3: the config must say so. Returns
  `{'params', 'batch_stats'}` like `from_timm`, raising ValueError that names the first checkpoint variable that
  does not fit (missing, extra, or of another shape) in forward order.
  """
  wrong = {k: v for k, v in (('padding', 'same'), ('bn_epsilon', 1e-3)) if model_config[k] != v}
  if wrong:
    raise ValueError('the official TF EfficientNets pad as TF "SAME" with BN epsilon 1e-3: their weights need ' +
                     ', '.join(f'model.{k}={v!r} (got {model_config[k]!r})' for k, v in wrong.items()))
  weights, prefix = tf_checkpoint_weights(path, ema)
  scope, bn_name, dense = _tf_layout(list(weights), prefix)
  module = build_model(model_config)
  expected = _flatten(abstract_variables(module.clone(scan_blocks=False), image_size))
  with_classifier = ('params', 'head_dense', 'kernel') in expected
  entries = _tf_entries(model_config, with_classifier, scope, bn_name, dense)
  out = _assign(entries, weights, expected, ('TF checkpoint variable', 'checkpoint'))
  return scan_variables(out, module) if module.scan_blocks else out
