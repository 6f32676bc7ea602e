r"""Converts released weights into an effnet checkpoint directory.

  python -m effnet.tools.convert --config=configs/efficientnet.py:b0 --source=timm:tf_efficientnet_b0 --out=/tmp/b0
  python -m effnet.tools.convert --config=configs/efficientnetv2.py:s --source=keras:/path/v2s.keras --out=/tmp/s
  python -m effnet.tools.convert --config=configs/efficientnet.py:b0 --source=tf:/ckpts/efficientnet-b0 --out=/tmp/b0
  (`--config.KEY=VALUE` overrides as for effnet.main; `effnet-convert` is the same command.)

Why a checkpoint and not an .npz: training, evaluation and export already restore orbax checkpoints through
`effnet.checkpoint.Checkpointer`, with the config stored next to the arrays so a mismatched model is named.

Layout written (`write_weights`), one step, number 0, in `--out`:
  state  {'params', 'batch_stats', 'ema_params', 'ema_batch_stats'}: float32 arrays in the model's layout (per
         block, or stacked with model.scan_blocks); the EMA copies equal the weights, so an EMA eval (the default
         of `TrainState.eval_variables`) gives the converted logits.
  meta   {'source': 'timm:NAME' | 'keras:PATH' | 'tf:PATH', 'normalization': the data.normalization the weights expect}
  config the full config the weights were converted for.
`read_weights` restores it as `{'params', 'batch_stats'}` for `module.apply`.

Every argument is checked before anything is loaded: the config, the source kind and its name or file, and that
`--out` holds no checkpoint yet. `tf:PATH` is an official TF checkpoint (tensorflow/tpu or google/automl main.py:
a prefix such as .../model.ckpt-NNN, or its folder), converted with its EMA shadow weights as the official eval
uses them (`effnet.convert.from_tf_checkpoint`). A timm name whose weights are not in timm's (Hugging Face hub)
cache is downloaded by timm into that cache; the tool says so before it starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from effnet import convert, weights
from effnet.checkpoint import Checkpointer
from effnet.config_lib import checked_config, parse_command_line

SOURCE_KINDS = ('timm', 'keras', 'tf')
_STEP = 0


def parse_source(source: str) -> tuple[str, str]:
  """'keras:/x/m.keras' -> ('keras', '/x/m.keras'), checked: the kind, a non-empty name, an existing .keras file,
  an existing TF checkpoint prefix or folder, a timm name effnet converts. ValueError naming --source otherwise."""
  kind, sep, name = (source or '').partition(':')
  if not sep or kind not in SOURCE_KINDS or not name:
    raise ValueError(f'--source={source!r}: expected timm:NAME, keras:PATH or tf:PATH; allowed kinds: '
                     f'{SOURCE_KINDS}')
  if kind == 'tf' and not (os.path.isdir(name) or os.path.isfile(name + '.index')):
    raise ValueError(f'--source={source!r}: expected an existing TF checkpoint: a prefix whose .index file exists '
                     '(.../model.ckpt-NNN) or a folder holding one')
  if kind == 'keras' and (not name.endswith('.keras') or not os.path.isfile(name)):
    raise ValueError(f'--source={source!r}: expected an existing .keras file (keras.Model.save("x.keras"))')
  if kind == 'timm':
    try:
      convert.timm_requirements(name)
    except ValueError as e:
      raise ValueError(f'--source={source!r}: {e}') from None
  return kind, name


def check_out_dir(out: str) -> str:
  """An absolute --out that holds no checkpoint step yet (never overwrite converted or trained weights)."""
  if not out:
    raise ValueError('--out: expected a directory for the checkpoint, got an empty string')
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'--out={out!r}: exists and is not a directory')
  if os.path.isdir(out) and os.listdir(out):
    raise ValueError(f'--out={out!r}: the directory is not empty; choose a new one (nothing is overwritten)')
  return out


def _timm_model(name: str):
  """timm's pretrained model through timm's own cache; says so first when the weights must be downloaded."""
  import timm  # pylint: disable=g-import-not-at-top  (only this source needs torch / timm)
  cfg = timm.models.get_pretrained_cfg(name)
  hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
  if hub_id and not _in_hub_cache(hub_id):
    print(f'timm:{name}: the pretrained weights ({hub_id}) are not in the local Hugging Face cache; timm '
          'downloads them now into that cache', file=sys.stderr)
  return timm.create_model(name, pretrained=True).eval()


def _in_hub_cache(hub_id: str) -> bool:
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  return any(isinstance(huggingface_hub.try_to_load_from_cache(hub_id, f), str)
             for f in ('model.safetensors', 'pytorch_model.bin', 'open_clip_pytorch_model.bin'))


def convert_source(kind: str, name: str, config, source_model=None) -> dict:
  """The converted `{'params', 'batch_stats'}`; `source_model` (a timm or Keras model object) skips loading."""
  model_cfg = config.model.to_dict()
  if kind == 'timm':
    convert.timm_requirements(name)  # refuse before anything loads
    model = source_model if source_model is not None else _timm_model(name)
    return convert.from_timm(model, model_cfg, timm_name=name)
  if kind == 'tf':
    return convert.from_tf_checkpoint(name, model_cfg)
  return convert.from_keras(source_model if source_model is not None else name, model_cfg,
                            normalization=config.data.normalization)


def write_weights(out: str, variables: dict, config, meta: dict) -> None:
  """One checkpoint step (layout in the module docstring) in `out`, written synchronously."""
  as_f32 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float32), tree)  # noqa: E731
  state = {'params': as_f32(variables['params']), 'batch_stats': as_f32(variables.get('batch_stats', {})),
           'ema_params': as_f32(variables['params']), 'ema_batch_stats': as_f32(variables.get('batch_stats', {}))}
  ckpt = Checkpointer(out, keep=1, use_async=False, config=json.loads(config.to_json_best_effort()))
  try:
    ckpt.save(_STEP, state, meta=meta, force=True)
  finally:
    ckpt.close()


def read_weights(directory: str, config, ema: bool = True) -> dict:
  """`{'params', 'batch_stats'}` of a `write_weights` directory for `config`'s model (the EMA copies by default);
  a checkpoint of another model raises effnet.checkpoint's CheckpointMismatchError naming the first variable."""
  return weights.load_variables(directory, config, ema=ema)


def run(config_spec: str, overrides: Sequence[str], source: str, out: str, source_model=None) -> str:
  """Checks every argument, converts, writes; returns the checkpoint directory."""
  config = checked_config(config_spec, overrides)
  kind, name = parse_source(source)
  out = check_out_dir(out)
  variables = convert_source(kind, name, config, source_model)
  write_weights(out, variables, config, {'source': f'{kind}:{name}', 'normalization': config.data.normalization})
  logging.info('wrote %s weights to %s (step %d)', source, out, _STEP)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='path/to/config.py[:arg], as for effnet.main')
  parser.add_argument('--source', required=True, help='timm:NAME, keras:PATH.keras or tf:CHECKPOINT')
  parser.add_argument('--out', required=True, help='new (or empty) directory for the checkpoint')
  args, _ = parser.parse_known_args(argv)
  _, overrides = parse_command_line(argv)
  try:
    out = run(args.config, overrides, args.source, args.out)
  except ValueError as e:
    print(f'effnet.tools.convert: {e}', file=sys.stderr)
    return 2
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
