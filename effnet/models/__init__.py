"""Model API: `build_model(model_config)`, the official variant settings, fast initialisation and counting.

Stable names used by notebooks and outside checks: build_model, variant_settings, init_variables, count_params,
count_macs, scan_variables, unscan_variables.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from effnet.models import arch
from effnet.models.arch import BlockSpec, Block
from effnet.models.efficientnet import EfficientNet, block_groups, group_name
from effnet.models.layers import DEPTHWISE_IMPLS  # noqa: F401  (config_lib.validate's allowed model.depthwise_impl)
from effnet.models import layers

FAMILIES = ('v1', 'v2')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ACTIVATIONS = tuple(layers.ACTIVATIONS)
PADDINGS = layers.PADDINGS
V1_VARIANTS = tuple(arch.V1_TABLE)
LITE_VARIANTS = tuple(arch.LITE_TABLE)
EDGETPU_VARIANTS = tuple(arch.EDGETPU_TABLE)
V2_VARIANTS = tuple(arch.V2_TABLE)
# The model options of the B0..L2 / V2 networks; Lite and EdgeTPU change them (`_v1_edge_settings`).
_SWISH_SE = dict(activation='silu', se_ratio=None, stem_filters=None, fix_head_stem=False)


def _v1_edge_settings(variant: str):
  """(blocks, width, depth, resolution, dropout, model options) of an EfficientNet-Lite or -EdgeTPU variant."""
  if variant in arch.LITE_TABLE:
    options = dict(activation='relu6', se_ratio=0.0, stem_filters=None, fix_head_stem=True)
    return (arch.V1_BASE_BLOCKS, *arch.LITE_TABLE[variant], options)
  options = dict(activation='relu', se_ratio=None, stem_filters=32, fix_head_stem=False)
  return (arch.EDGETPU_BLOCKS, *arch.EDGETPU_TABLE[variant], options)


def variant_settings(family: str, variant: str) -> dict:
  """The official architecture and recipe numbers of a named variant (or v1 'phi=<float>').

  Returns a plain dict: blocks, width/depth coefficients, round rule, image sizes, dropout, BN momentum, the model
  options activation / se_ratio / stem_filters / fix_head_stem and, for v2, the RandAugment magnitude and mixup
  alpha of google/automl's effnetv2_configs.py. Family v1 also holds tensorflow/tpu's Lite and EdgeTPU variants.
  """
  if family == 'v1':
    options = _SWISH_SE
    blocks = arch.V1_BASE_BLOCKS
    if variant in arch.LITE_TABLE or variant in arch.EDGETPU_TABLE:
      blocks, width, depth, res, drop, options = _v1_edge_settings(variant)
    elif variant.startswith('phi='):
      try:
        phi = float(variant[4:])
      except ValueError:
        raise ValueError(f'model.variant={variant!r}: phi must be a number, e.g. "phi=1.5"') from None
      width, depth, _ = arch.phi_coefficients(phi)
      res, drop = arch.phi_resolution(phi), arch.phi_dropout(phi)
    elif variant in arch.V1_TABLE:
      width, depth, res, drop = arch.V1_TABLE[variant]
    else:
      raise ValueError(f'model.variant={variant!r} for family v1; allowed: '
                       f'{V1_VARIANTS + LITE_VARIANTS + EDGETPU_VARIANTS} or "phi=<float>"')
    return dict(family='v1', variant=variant, blocks=blocks, width_coefficient=width,
                depth_coefficient=depth, round_rule='tpu', image_size=res, eval_image_size=res, dropout_rate=drop,
                bn_momentum=0.99, randaug_magnitude=0.0, mixup_alpha=0.0, **options)
  if family == 'v2':
    if variant not in arch.V2_TABLE:
      raise ValueError(f'model.variant={variant!r} for family v2; allowed: {V2_VARIANTS}')
    blocks, width, depth, train, ev, drop, ra, mix = arch.V2_TABLE[variant]
    # BN momentum: the v2 paper says 0.99, google/automl's code trains with 0.9. We follow the code (the released
    # checkpoints were trained with it); set model.bn_momentum=0.99 for the paper's value.
    return dict(family='v2', variant=variant, blocks=blocks, width_coefficient=width, depth_coefficient=depth,
                round_rule='automl', image_size=train, eval_image_size=ev, dropout_rate=drop, bn_momentum=0.9,
                randaug_magnitude=float(ra), mixup_alpha=mix, **_SWISH_SE)
  raise ValueError(f'model.family={family!r}; allowed: {FAMILIES}')


def model_blocks(model_config) -> tuple[list[Block], int, int]:
  """Scaled, unrolled blocks plus stem and head widths of a whole `config.model` (a ConfigDict or its `.to_dict()`).

  The fields are read as they are: their defaults are `config_lib.base_config`'s and their checks
  `config_lib.validate`'s (block strings are parsed, and so checked, by `arch.BlockSpec.decode`).
  """
  blocks, width, rule = model_config['blocks'], float(model_config['width_coefficient']), model_config['round_rule']
  divisor, min_depth = int(model_config['depth_divisor']), model_config['min_depth']
  fixed = bool(model_config['fix_head_stem'])
  stages = arch.scale_stages(blocks, width, float(model_config['depth_coefficient']), rule, divisor, min_depth,
                             model_config['se_ratio'], fix_first_last=fixed)
  stem, head = arch.stem_and_head(blocks, width, int(model_config['head_filters']), rule, divisor, min_depth,
                                  model_config['stem_filters'], fixed)
  return arch.expand_blocks(stages, float(model_config['survival_prob'])), stem, head


def build_model(model_config) -> EfficientNet:
  """Builds the Linen module described by a whole `config.model` (a ConfigDict or its `.to_dict()`), validated by
  `config_lib.validate`; a mapping of a few fields is not enough (there are no defaults here)."""
  blocks, stem, head = model_blocks(model_config)
  return EfficientNet(
      blocks=tuple(blocks), stem_filters=stem, head_filters=head, num_classes=int(model_config['num_classes']),
      dropout_rate=float(model_config['dropout_rate']), bn_momentum=float(model_config['bn_momentum']),
      bn_epsilon=float(model_config['bn_epsilon']), bn_group_size=int(model_config['bn_group_size']),
      dtype=DTYPES[model_config['dtype']], depthwise_impl=model_config['depthwise_impl'],
      scan_blocks=bool(model_config['scan_blocks']), activation=model_config['activation'],
      padding=model_config['padding'])


def abstract_variables(module: EfficientNet, image_size: int, batch: int = 1):
  """Variable shapes from `jax.eval_shape` (nothing is computed or compiled)."""
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)


def count_params(module: EfficientNet, image_size: int = 224) -> int:
  params = abstract_variables(module, image_size)['params']
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def _scan_groups(module: EfficientNet) -> list[tuple[Block, ...]]:
  """The groups of blocks that `scan_blocks=True` stacks (whatever `module.scan_blocks` is)."""
  return [g for g in block_groups(module.blocks, scan=True) if len(g) > 1]


def _stack(leaves):
  """numpy stays numpy (e.g. `effnet.convert` output), anything else (jax arrays, tracers) goes through jnp."""
  if all(isinstance(a, np.ndarray) for a in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _restack(tree, module: EfficientNet, stack: bool):
  """Stacks (or splits) each scan group's blocks in every mapping of `tree`; see `scan_variables`."""
  groups = [(group_name(g), [f'blocks_{b.index}' for b in g]) for g in _scan_groups(module)]

  def convert(node):
    if not isinstance(node, Mapping):
      return node
    node = {k: convert(v) for k, v in node.items()}
    for whole, names in groups:
      present = [n for n in names if n in node]
      if stack and present:
        if len(present) != len(names):
          raise ValueError(f'cannot stack {whole}: the tree has {present} but not all of {names}')
        node[whole] = jax.tree_util.tree_map(lambda *a: _stack(a), *[node.pop(n) for n in names])
      elif not stack and whole in node:
        parts = node.pop(whole)
        node.update({n: jax.tree_util.tree_map(lambda a, j=j: a[j], parts) for j, n in enumerate(names)})
    return node

  return jax.tree_util.tree_map(convert, tree, is_leaf=lambda x: isinstance(x, Mapping))


def scan_variables(tree, module: EfficientNet):
  """Per-block variables (`blocks_{i}`) -> the stacked layout of `scan_blocks=True` (`blocks_{i}_to_{j}`).

  Works on any pytree: every mapping in it (a variables dict, bare params, the params-shaped trees inside a train
  state's optimizer state) is converted wherever it holds a group's blocks; already stacked trees pass unchanged.
  So checkpoints, timm imports and initialisers of either layout serve either model."""
  return _restack(tree, module, stack=True)


def unscan_variables(tree, module: EfficientNet):
  """The inverse of `scan_variables`: stacked `blocks_{i}_to_{j}` -> per-block `blocks_{i}` (exact slices)."""
  return _restack(tree, module, stack=False)


def _leaf_init_rule(path, leaf):
  """How the official code initialises a variable, read from its path: ('normal', std) / ('uniform', lim) / const."""
  names = [getattr(k, 'key', str(k)) for k in path]
  name, parent = names[-1], (names[-2] if len(names) > 1 else '')
  if names[0] == 'batch_stats':
    return ('const', 0.0 if name == 'mean' else 1.0)
  if name == 'bias':
    return ('const', 0.0)
  if name == 'scale':
    return ('const', 1.0)
  if name == 'kernel' and len(leaf.shape) == 4:
    kh, kw, _, cout = leaf.shape
    fan_out = kh * kw * (1 if parent == 'dw_conv' else cout)
    return ('normal', math.sqrt(2.0 / fan_out))
  if name == 'kernel' and len(leaf.shape) == 2:
    return ('uniform', 1.0 / math.sqrt(leaf.shape[-1]))
  raise ValueError(f'no initialisation rule for variable {"/".join(names)} {leaf.shape}')


def make_initializer(module: EfficientNet, image_size: int = 224):
  """Returns a pure `key -> variables` function (jit-able, e.g. inside a sharded state initialiser).

  Same distributions as `module.init` (different random values): all variables come from one normal and one
  uniform draw, reshaped per variable. It never traces the forward pass and compiles a handful of ops instead of
  one RNG kernel per variable: seconds instead of the 30-60 s a jitted `module.init` takes for B0-sized nets.
  With `scan_blocks` the per-block variables are drawn and then stacked, so a seed gives the same weights (and
  each stacked slice its own block's fan-out) with or without scan.
  """
  if module.scan_blocks:
    init_blocks = make_initializer(module.clone(scan_blocks=False), image_size)
    return lambda key: scan_variables(init_blocks(key), module)
  abstract = abstract_variables(module, image_size)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  rules = [_leaf_init_rule(p, l) for p, l in leaves]
  sizes = [math.prod(l.shape) for _, l in leaves]
  n_normal = sum(s for s, r in zip(sizes, rules) if r[0] == 'normal')
  n_uniform = sum(s for s, r in zip(sizes, rules) if r[0] == 'uniform')

  def init(key):
    k1, k2 = jax.random.split(key)
    normal = jax.random.normal(k1, (max(n_normal, 1),), jnp.float32)
    uniform = jax.random.uniform(k2, (max(n_uniform, 1),), jnp.float32, -1.0, 1.0)
    out, on, ou = [], 0, 0
    for (_, leaf), size, (kind, val) in zip(leaves, sizes, rules):
      if kind == 'normal':
        out.append(normal[on:on + size].reshape(leaf.shape) * val)
        on += size
      elif kind == 'uniform':
        out.append(uniform[ou:ou + size].reshape(leaf.shape) * val)
        ou += size
      else:
        out.append(jnp.full(leaf.shape, val, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)

  return init


def init_variables(module: EfficientNet, rng, image_size: int = 224, out_shardings=None):
  """Initialises all variables with `make_initializer`, optionally straight into `out_shardings`."""
  return jax.jit(make_initializer(module, image_size), out_shardings=out_shardings)(rng)


def count_macs(module: EfficientNet, image_size: int, variables=None) -> int:
  """Multiply-adds of one eval forward pass at `image_size` (what the papers call FLOPs), read off the jaxpr.

  Counts every convolution and matmul (SE and classifier included); elementwise ops are not counted, like
  tfprof's float_ops/2 that the official code reports. Depthwise convs are traced as convolutions for counting.
  A scan's body counts once per iteration, so `scan_blocks` does not change the figure.
  """
  module = module.clone(depthwise_impl='conv', dtype=jnp.float32)
  if variables is None:
    variables = abstract_variables(module, image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, train=False))(variables, x)
  return int(_jaxpr_macs(jaxpr.jaxpr))


def _jaxpr_macs(jaxpr) -> float:
  total = 0
  for eqn in jaxpr.eqns:
    prim = eqn.primitive.name
    if prim == 'conv_general_dilated':
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape  # HWIO; I is in/groups already
      total += math.prod(out) * rhs[0] * rhs[1] * rhs[2]
    elif prim == 'dot_general':
      (lc, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += math.prod(out) * math.prod(lhs[d] for d in lc)
    times = eqn.params['length'] if prim == 'scan' else 1
    for sub in _subjaxprs(eqn):
      total += times * _jaxpr_macs(sub)
  return total


def _subjaxprs(eqn):
  for v in eqn.params.values():
    if hasattr(v, 'jaxpr') and hasattr(v.jaxpr, 'eqns'):
      yield v.jaxpr
    elif hasattr(v, 'eqns'):
      yield v
