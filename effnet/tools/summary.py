r"""Architecture summary of a config: parameters, multiply-adds, resolutions and per-stage shapes.

  python -m effnet.tools.summary --config=configs/efficientnetv2.py:s
  python -m effnet.tools.summary --config=configs/efficientnet.py:b3 --set model.round_rule=automl

Why a separate tool: checking a port against the published parameter/FLOP tables, or seeing what a `--set` override
does to the network, should not need a training run, a dataset or an accelerator. Everything is computed from
shapes only (`jax.eval_shape` / `jax.make_jaxpr`), so even L2 at 800 px is summarised in seconds on a CPU.

It uses argparse, not absl flags: only effnet/main.py defines absl flags. Config files are loaded from their path
with `effnet.config_lib.load_config`, the same `path[:arg]` convention as ml_collections' config_flags.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from effnet import models
from effnet.config_lib import apply_override, load_config


def _field(cfg, name):
  """cfg[name] for mappings and ConfigDicts, None when absent (model-only configs have no .data)."""
  if cfg is None:
    return None
  if isinstance(cfg, Mapping) or hasattr(cfg, 'keys'):
    return cfg[name] if name in cfg else None
  return getattr(cfg, name, None)


def summarize(config) -> dict:
  """Shape-only summary of `config` (a full config with .model and .data, or just a model config).

  Returns a plain dict: family, variant, activation, params (int), params_m, macs (int, at the eval resolution),
  macs_b, image_size (train), eval_image_size, num_blocks, stem {'width', 'shape'}, head_width, pooled_width and
  stages: a list with, per stage, index, name, num_blocks, kernel_size, stride, expand_ratio, se_ratio, fused,
  input_filters, output_filters and output_shape (batch 1 at the eval resolution).
  """
  model_cfg = _field(config, 'model') or config
  data_cfg = _field(config, 'data')
  eval_size = int(_field(data_cfg, 'eval_image_size') or 224)
  train_size = int(_field(data_cfg, 'image_size') or eval_size)
  blocks, stem, head = models.model_blocks(model_cfg)
  module = models.build_model(model_cfg)
  variables = models.abstract_variables(module, eval_size)
  x = jax.ShapeDtypeStruct((1, eval_size, eval_size, 3), jnp.float32)
  _, feats = jax.eval_shape(lambda v, im: module.apply(v, im, train=False, return_features=True), variables, x)
  params = int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables['params'])))
  macs = models.count_macs(module, eval_size, variables)

  stages = []
  for blk in blocks:
    if not stages or stages[-1]['index'] != blk.stage + 1:
      s = blk.spec
      stages.append(dict(index=blk.stage + 1, name=f'stage_{blk.stage + 1}', num_blocks=0,
                         kernel_size=s.kernel_size, stride=s.stride, expand_ratio=s.expand_ratio,
                         se_ratio=s.se_ratio, fused=s.fused, input_filters=s.input_filters,
                         output_filters=s.output_filters))
    stages[-1]['num_blocks'] += 1
  for st in stages:
    st['output_shape'] = tuple(feats[st['name']].shape)
  return dict(
      family=_field(model_cfg, 'family'), variant=_field(model_cfg, 'variant'),
      activation=_field(model_cfg, 'activation'),
      params=params, params_m=params / 1e6, macs=int(macs), macs_b=macs / 1e9,
      image_size=train_size, eval_image_size=eval_size, num_blocks=len(blocks),
      stem=dict(width=stem, shape=tuple(feats['stem'].shape)), head_width=head,
      head_shape=tuple(feats['head'].shape), pooled_width=int(feats['pooled'].shape[-1]),
      dtype=str(_field(model_cfg, 'dtype') or 'float32'), stages=stages)


def format_summary(s: dict) -> str:
  lines = [
      f'variant:    {s["family"]} {s["variant"]} ({s["activation"]})',
      f'params:     {s["params"]:,} ({s["params_m"]:.2f}M)',
      f'MACs:       {s["macs"]:,} ({s["macs_b"]:.3f}B) at {s["eval_image_size"]}x{s["eval_image_size"]}',
      f'resolution: train {s["image_size"]}, eval {s["eval_image_size"]}',
      f'blocks:     {s["num_blocks"]}',
      '',
      f'{"stage":<8}{"blocks":>6}{"k":>3}{"s":>3}{"exp":>4}{"se":>6}{"type":>7}{"in":>6}{"out":>6}  output shape',
      f'{"stem":<8}{1:>6}{3:>3}{2:>3}{"-":>4}{"-":>6}{"conv":>7}{3:>6}{s["stem"]["width"]:>6}  {s["stem"]["shape"]}',
  ]
  for st in s['stages']:
    se = f'{st["se_ratio"]:g}' if st['se_ratio'] else '-'
    kind = 'fused' if st['fused'] else 'mbconv'
    lines.append(f'{st["name"]:<8}{st["num_blocks"]:>6}{st["kernel_size"]:>3}{st["stride"]:>3}'
                 f'{st["expand_ratio"]:>4}{se:>6}{kind:>7}{st["input_filters"]:>6}{st["output_filters"]:>6}'
                 f'  {st["output_shape"]}')
  last = s['stages'][-1]['output_filters'] if s['stages'] else s['stem']['width']
  lines.append(f'{"head":<8}{1:>6}{1:>3}{1:>3}{"-":>4}{"-":>6}{"conv":>7}{last:>6}{s["head_width"]:>6}'
               f'  {s["head_shape"]}')
  lines.append(f'pooled width {s["pooled_width"]}')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m effnet.tools.summary', description=__doc__.split('\n\n')[1])
  parser.add_argument('--config', required=True, help='path/to/config.py[:arg], e.g. configs/efficientnet.py:b0')
  parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                      help='override a config field (repeatable), e.g. --set model.width_coefficient=1.2')
  args = parser.parse_args(argv)
  try:
    config = load_config(args.config)
    for assignment in args.overrides:
      apply_override(config, assignment)
    print(format_summary(summarize(config)))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
