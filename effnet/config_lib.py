"""Config building blocks shared by every file in configs/: defaults of the official recipe, big_vision-style
`parse_arg`, the `runlocal` shrink and validation with errors that name the field and the allowed values.

Configs are ml_collections ConfigDicts, locked after construction so a typo'd field (`--config.optim.lrr=1`,
`config.optim.lrr = 1`) fails at once instead of being silently ignored.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from effnet import data, models, optim, progressive

NAN_POLICIES = ('stop', 'skip')
DIST_INIT = ('auto', 'yes', 'no')


def parse_arg(arg: str | None, lazy: bool = False, **spec):
  """Parses 'b3,runlocal,res=128' into a ConfigDict typed by `spec` defaults (big_vision's convention).

  A bare token sets a bool spec to True or, for the first str spec, its value; key=value casts to the spec type.
  """
  cfg = ml_collections.ConfigDict(dict(spec), type_safe=False)
  if not arg:
    return cfg
  str_keys = [k for k, v in spec.items() if isinstance(v, str)]
  for tok in arg.split(','):
    tok = tok.strip()
    if not tok:
      continue
    if '=' in tok:
      k, v = tok.split('=', 1)
      if k not in spec:
        if lazy:
          cfg[k] = v
          continue
        raise ValueError(f'config arg {k!r} in {arg!r}; allowed: {sorted(spec)}')
      t = type(spec[k])
      if spec[k] is None:  # an optional number: e.g. phi=None means "not given"
        cfg[k] = float(v)
      else:
        cfg[k] = (v.lower() in ('1', 'true', 'yes')) if t is bool else t(v)
    elif tok in spec and isinstance(spec[tok], bool):
      cfg[tok] = True
    elif str_keys:
      cfg[str_keys[0]] = tok
    else:
      raise ValueError(f'config arg {tok!r} in {arg!r}; allowed: {sorted(spec)}')
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the v1 recipe's defaults (tensorflow/tpu, see README "Fidelity")."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      family='v1', variant='b0', blocks=models.arch.V1_BASE_BLOCKS, width_coefficient=1.0, depth_coefficient=1.0,
      head_filters=1280, round_rule='tpu', depth_divisor=8, min_depth=config_dict.placeholder(int),
      num_classes=1000, dropout_rate=0.2, survival_prob=0.8, bn_momentum=0.99, bn_epsilon=1e-3, bn_group_size=0,
      dtype='bfloat16', depthwise_impl='auto', se_ratio=config_dict.placeholder(float), scan_blocks=False))

  c.data = ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir=config_dict.placeholder(str), manual_dir=config_dict.placeholder(str),
      train_split='train', eval_split='validation', minival_split=config_dict.placeholder(str),
      image_size=224, eval_image_size=224,
      train_preprocess='inception_v1', eval_preprocess='center_crop_v1', crop_padding=32,
      # None: legacy bicubic for the *_v1 recipes, bilinear otherwise (as the official pipelines do).
      resize_method=config_dict.placeholder(str), flip=True, shuffle_files=True, augment='none', randaug_num_layers=2, randaug_magnitude=10.0, randaug_on_device=False,
      mixup_alpha=0.0, cutmix_alpha=0.0, normalization='imagenet', shuffle_buffer=16_384, cache=False,
      prefetch=2))

  c.optim = ml_collections.ConfigDict(dict(
      lr_base=0.016, lr=config_dict.placeholder(float), warmup_epochs=5.0, decay_epochs=2.4, decay_factor=0.97,
      schedule='exponential', rmsprop_decay=0.9, rmsprop_initial_scale=1.0, momentum=0.9, eps=1e-3,
      weight_decay=1e-5, weight_decay_rule='tpu', ema_decay=0.9999, ema_per_stage=False, label_smoothing=0.1))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=4096, eval_batch_size=1024, num_epochs=350.0, total_steps=config_dict.placeholder(int),
      num_train_examples=config_dict.placeholder(int), seed=0, log_every_steps=100,
      eval_every_steps=config_dict.placeholder(int), checkpoint_every_steps=1000, keep_checkpoints=3,
      async_checkpointing=True, nan_policy='stop', early_stopping_patience=0, eval_ema=True,
      compile_cache_dir=config_dict.placeholder(str), compile_ahead=True))

  c.progressive = ml_collections.ConfigDict(dict(
      enabled=False, rule='code', num_stages=4, size_min=128, size_max=config_dict.placeholder(int),
      size_multiple=16, randaug_min=5.0, randaug_max=10.0, mixup_min=0.0, mixup_max=0.0, cutmix_min=0.0,
      cutmix_max=0.0, dropout_min=config_dict.placeholder(float), dropout_max=config_dict.placeholder(float),
      scale_batch=False, batch_multiple=8))

  c.distributed = ml_collections.ConfigDict(dict(
      initialize='auto', coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int), process_id=config_dict.placeholder(int),
      initialization_timeout=300))
  return c


def apply_model_settings(c: ml_collections.ConfigDict, settings: dict) -> None:
  """Copies a `models.variant_settings` dict into the config's model and data sections."""
  for k in ('family', 'variant', 'blocks', 'width_coefficient', 'depth_coefficient', 'round_rule', 'dropout_rate',
            'bn_momentum'):
    c.model[k] = settings[k]
  c.data.image_size = settings['image_size']
  c.data.eval_image_size = settings['eval_image_size']


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a real config to something that trains a few steps on a laptop CPU with the built-in dataset."""
  c.data.name = 'digits'
  c.data.train_split, c.data.eval_split = 'train', 'test'
  c.data.image_size = c.data.eval_image_size = 32
  c.data.train_preprocess, c.data.eval_preprocess = 'resize', 'resize'
  c.data.augment = 'none'
  c.data.flip = False
  c.data.shuffle_buffer = 2048
  c.model.num_classes = 10
  c.model.width_coefficient *= 0.25
  c.model.depth_coefficient *= 0.25
  c.model.dtype = 'float32'
  c.train.num_train_examples = None  # from the digits builder, so epochs (warmup, decay) mean digits epochs
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
  c.train.total_steps = 4
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_steps = 4
  c.progressive.size_min, c.progressive.size_max = 16, 32
  c.progressive.size_multiple = 8


def _check(value, allowed, field):
  if value not in allowed:
    raise ValueError(f'{field}={value!r}; allowed: {tuple(allowed)}')


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every enumerated or bounded field before anything is built or compiled."""
  models.build_model(c.model)  # validates blocks, widths, rounding, survival, dtype, dropout, classes, BN groups
  _check(c.model.family, models.FAMILIES, 'model.family')
  _check(c.data.train_preprocess, data.TRAIN_PREPROCESS, 'data.train_preprocess')
  _check(c.data.eval_preprocess, data.EVAL_PREPROCESS, 'data.eval_preprocess')
  _check(c.data.augment, data.AUGMENTS, 'data.augment')
  _check(c.data.normalization, data.NORMALIZATIONS, 'data.normalization')
  _check(c.data.resize_method, (None,) + data.RESIZE_METHODS, 'data.resize_method')
  _check(c.optim.schedule, optim.SCHEDULES, 'optim.schedule')
  _check(c.optim.weight_decay_rule, optim.WEIGHT_DECAY_RULES, 'optim.weight_decay_rule')
  _check(c.train.nan_policy, NAN_POLICIES, 'train.nan_policy')
  _check(c.distributed.initialize, DIST_INIT, 'distributed.initialize')
  _check(c.progressive.rule, progressive.RULES, 'progressive.rule')
  positive = {'train.batch_size': c.train.batch_size, 'train.eval_batch_size': c.train.eval_batch_size,
              'data.image_size': c.data.image_size, 'data.eval_image_size': c.data.eval_image_size,
              'model.width_coefficient': c.model.width_coefficient,
              'model.depth_coefficient': c.model.depth_coefficient, 'train.log_every_steps': c.train.log_every_steps}
  for field, v in positive.items():
    if v is None or v <= 0:
      raise ValueError(f'{field}={v!r}; allowed: > 0')
  nonneg = {'optim.weight_decay': c.optim.weight_decay, 'optim.label_smoothing': c.optim.label_smoothing,
            'data.mixup_alpha': c.data.mixup_alpha, 'data.cutmix_alpha': c.data.cutmix_alpha,
            'data.randaug_magnitude': c.data.randaug_magnitude, 'optim.warmup_epochs': c.optim.warmup_epochs}
  for field, v in nonneg.items():
    if v < 0:
      raise ValueError(f'{field}={v!r}; allowed: >= 0')
  if not 0.0 <= c.optim.ema_decay < 1.0:
    raise ValueError(f'optim.ema_decay={c.optim.ema_decay}; allowed: [0, 1)')
  if not 0.0 <= c.optim.label_smoothing < 1.0:
    raise ValueError(f'optim.label_smoothing={c.optim.label_smoothing}; allowed: [0, 1)')
  if c.train.total_steps is None and (c.train.num_epochs is None or c.train.num_epochs <= 0):
    raise ValueError('train.num_epochs must be > 0 when train.total_steps is not set')


def split_config_spec(spec: str) -> tuple[str, Optional[str]]:
  """'configs/efficientnetv2.py:s,runlocal' -> ('configs/efficientnetv2.py', 's,runlocal'); no arg -> None."""
  if not spec:
    raise ValueError('--config: expected "path/to/config.py[:arg]", got an empty string')
  path, sep, arg = spec.partition(':')
  if not path.endswith('.py'):
    raise ValueError(f'--config={spec!r}: the path must name a .py file, e.g. "configs/efficientnet.py:b0"')
  return path, (arg if sep and arg else None)


def load_config_module(path: str):
  """Imports a config file by path (config files live outside the package, as with config_flags)."""
  if not os.path.isfile(path):
    raise ValueError(f'--config: no such file {path!r}')
  name = '_effnet_config_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str):
  """Loads `path/to/config.py[:arg]` and returns `get_config(arg)` (or `get_config()` without an arg): the same
  convention as `--config` of effnet.main, for notebooks and the tools."""
  path, arg = split_config_spec(spec)
  module = load_config_module(path)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'--config={spec!r}: {path} defines no get_config()')
  return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current: Any) -> Any:
  """Casts an override string like the existing field: bools accept true/false/1/0, strings stay strings."""
  if isinstance(current, bool):
    low = text.lower()
    if low not in ('true', 'false', '1', '0', 'yes', 'no'):
      raise ValueError(f'expected a bool (true/false), got {text!r}')
    return low in ('true', '1', 'yes')
  if isinstance(current, str):
    return text
  if text.lower() in ('none', 'null'):
    return None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  return value


def apply_override(config, assignment: str) -> None:
  """Applies one `section.field=value` override in place; unknown fields raise ValueError naming them."""
  key, sep, text = assignment.partition('=')
  key = key.strip()
  if not sep or not key:
    raise ValueError(f'--set {assignment!r}: expected "section.field=value", e.g. "model.dropout_rate=0.3"')
  *parents, leaf = key.split('.')
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise ValueError(f'--set {key}: no field {".".join(parents[:i + 1])!r}; allowed: {sorted(node.keys())}')
    node = node[part]
  if not hasattr(node, 'keys') or leaf not in node:
    allowed = sorted(node.keys()) if hasattr(node, 'keys') else []
    raise ValueError(f'--set {key}: no such field; allowed in {".".join(parents) or "config"}: {allowed}')
  try:
    node[leaf] = _parse_value(text, node[leaf])
  except (TypeError, ValueError) as e:
    raise ValueError(f'--set {key}={text!r}: {e}') from None
