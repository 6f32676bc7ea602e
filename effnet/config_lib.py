"""Config building blocks shared by every file in configs/: defaults of the official recipe, big_vision-style
`parse_arg`, the `runlocal` shrink and validation with errors that name the field and the allowed values.

Configs are ml_collections ConfigDicts, locked after construction so a typo'd field (`--config.optim.lrr=1`,
`config.optim.lrr = 1`) fails at once instead of being silently ignored.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import numbers
import os
import re
from typing import Any, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from effnet import data, models, optim, parallel, progressive
from effnet.data import bad_examples, folder

NAN_POLICIES = ('stop', 'skip')


def parse_arg(arg: str | None, lazy: bool = False, **spec):
  """Parses 'b3,runlocal,res=128' into a ConfigDict typed by `spec` defaults (big_vision's convention).

  A bare token sets a bool spec to True or, for the first str spec, its value; key=value casts to the spec type.
  With `lazy`, unknown keys are kept as strings (for configs that pass them on).
  """
  cfg = ml_collections.ConfigDict(dict(spec), type_safe=False)
  str_keys = [k for k, v in spec.items() if isinstance(v, str)]
  for tok in filter(None, (t.strip() for t in (arg or '').split(','))):
    if '=' in tok:
      key, text = tok.split('=', 1)
      if key not in spec and not lazy:
        raise ValueError(f'config arg {key!r} in {arg!r}; allowed: {sorted(spec)}')
      cfg[key] = _typed_arg(key, text, spec[key], arg) if key in spec else text
    elif tok in spec and isinstance(spec[tok], bool):
      cfg[tok] = True
    elif str_keys:
      cfg[str_keys[0]] = tok
    else:
      raise ValueError(f'config arg {tok!r} in {arg!r}; allowed: {sorted(spec)}')
  return cfg


_BOOL_WORDS = {'1': True, 'true': True, 'yes': True, '0': False, 'false': False, 'no': False}


def _typed_arg(key: str, text: str, default, arg: str):
  """'128' -> 128 for an int spec; a None spec is an optional number (e.g. phi=None means "not given").

  A value that is not of the spec's type raises ValueError naming the token, the value and what it allows."""
  if isinstance(default, bool):
    if text.lower() not in _BOOL_WORDS:
      raise ValueError(f'config arg {key}={text!r} in {arg!r}; allowed: {key}=true or {key}=false (or the bare '
                       f'token {key!r})')
    return _BOOL_WORDS[text.lower()]
  cast = float if default is None else type(default)
  try:
    return cast(text)
  except ValueError:
    kind = {float: 'a number', int: 'an integer'}.get(cast, cast.__name__)
    example = f', e.g. {key}={default!r}' if default is not None else f', e.g. {key}=1.5'
    raise ValueError(f'config arg {key}={text!r} in {arg!r}; allowed: {kind}{example}') from None


def lr_sweep() -> list[dict]:
  """The base-LR sweep every ImageNet config offers: half, the official 0.016 and double."""
  return [{'optim.lr_base': lr} for lr in (0.008, 0.016, 0.032)]


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the v1 recipe's defaults (tensorflow/tpu, docs/fidelity.md §2).

  The one source of defaults: the library reads every field straight from the config and has no fallbacks of its
  own, so a config (or a test's) is built from this and changed, never assembled from a few fields.
  """
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      family='v1', variant='b0', blocks=models.arch.V1_BASE_BLOCKS, width_coefficient=1.0, depth_coefficient=1.0,
      head_filters=1280, round_rule='tpu', depth_divisor=8, min_depth=config_dict.placeholder(int),
      num_classes=1000, dropout_rate=0.2, survival_prob=0.8, bn_momentum=0.99, bn_epsilon=1e-3, bn_group_size=0,
      dtype='bfloat16', depthwise_impl='auto', se_ratio=config_dict.placeholder(float), scan_blocks=False,
      # Lite / EdgeTPU options (models.variant_settings): activation, stem width (None: the first block's input),
      # Lite's unscaled stem/head and first/last stage; padding 'symmetric' for timm's PyTorch-native weights.
      activation='silu', stem_filters=config_dict.placeholder(int), fix_head_stem=False, padding='same'))

  c.data = ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir=config_dict.placeholder(str), manual_dir=config_dict.placeholder(str),
      # eval_split None: 'validation' if the dataset has one, else 'test'.
      train_split='train', eval_split='validation', minival_split=config_dict.placeholder(str),
      image_size=224, eval_image_size=224,
      train_preprocess='inception_v1', eval_preprocess='center_crop_v1', crop_padding=32,
      # None: legacy bicubic for the *_v1 recipes, bilinear otherwise (as the official pipelines do).
      resize_method=config_dict.placeholder(str), flip=True, shuffle_files=True, augment='none', randaug_num_layers=2, randaug_magnitude=10.0, randaug_on_device=False,
      mixup_alpha=0.0, cutmix_alpha=0.0, normalization='imagenet', shuffle_buffer=16_384, cache=False,
      prefetch=2,  # prefetch None or < 0: tf.data.AUTOTUNE
      # tf.data autotuning (decode parallelism, RAM budget). Off: one batch decodes per core, and deleting an
      # iterator does not wait for a tf.data thread (7-59 s at the end of short CPU runs; pipeline._parallelism).
      autotune=True,
      # An example that does not decode (a truncated JPEG): 'skip' drops it, logs its split and record id and
      # counts it, so one bad file never kills a long run; 'fail' stops the run naming it (effnet.data.bad_examples).
      bad_examples='skip',
      # The dtype the host hands to the device. The official code keeps the float32 of its resize (bfloat16 with
      # TPU's use_bfloat16); 'uint8' (round, clip) copies 4x fewer bytes and is <= 0.5 level off inside [0, 255]
      # (docs/fidelity.md §3); 'float32' is the official output bit for bit. On-device RandAugment needs 'uint8'.
      image_dtype='uint8'))

  c.optim = ml_collections.ConfigDict(dict(
      lr_base=0.016, warmup_epochs=5.0, decay_epochs=2.4, decay_factor=0.97,
      schedule='exponential', rmsprop_decay=0.9, rmsprop_initial_scale=1.0, momentum=0.9, eps=1e-3,
      weight_decay=1e-5, weight_decay_rule='tpu', ema_decay=0.9999, ema_per_stage=False, label_smoothing=0.1))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=4096, eval_batch_size=1024, num_epochs=350.0, total_steps=config_dict.placeholder(int),
      num_train_examples=config_dict.placeholder(int), seed=0, log_every_steps=100,
      eval_every_steps=config_dict.placeholder(int), checkpoint_every_steps=1000, keep_checkpoints=3,
      async_checkpointing=True, nan_policy='stop', early_stopping_patience=0, eval_ema=True,
      compile_cache_dir=config_dict.placeholder(str), compile_ahead=True,
      # Fine-tuning (configs/finetune.py): start from another run's or a converted checkpoint (a workdir, its
      # checkpoints folder or a tools.convert output) when the workdir has none of its own; its EMA copies by default,
      # as automl's ft_init_ema; 'backbone' trains only the classifier (optim.freeze_labels).
      init_from=config_dict.placeholder(str), init_ema=True, freeze='none'))

  c.progressive = ml_collections.ConfigDict(dict(
      enabled=False, rule=progressive.DEFAULT_RULE, num_stages=4, size_min=128, size_max=config_dict.placeholder(int),
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
            'bn_momentum', 'activation', 'se_ratio', 'stem_filters', 'fix_head_stem'):
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


# ----------------------------------------------------------------------------------------------------------------
# Validation: the one place every field is checked, before any data loads or anything compiles. The allowed names
# stay with the module that uses them (data.AUGMENTS, optim.SCHEDULES, progressive.RULES, ...) and are read here.
# The library reads each field straight from the config; only its public functions that take plain values (no
# config) keep a check of a name they dispatch on, or of a value derived at run time (batch per process, steps).
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Range:
  """The numbers a field allows: from `low` (open or closed) up to `high` (None: unbounded), and None if optional."""
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = True
  optional: bool = False

  def allows(self, value) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return False
    above = self.low is None or (value > self.low if self.low_open else value >= self.low)
    below = self.high is None or (value < self.high if self.high_open else value <= self.high)
    return above and below

  def __str__(self) -> str:
    if self.low is None:
      text = 'a number'
    elif self.high is None:
      text = f'{">" if self.low_open else ">="} {self.low:g}'
    else:
      text = f'{"(" if self.low_open else "["}{self.low:g}, {self.high:g}{")" if self.high_open else "]"}'
    return f'None or {text}' if self.optional else text


def _above(low: float, optional: bool = False) -> _Range:
  return _Range(low, low_open=True, optional=optional)


def _at_least(low: float, optional: bool = False) -> _Range:
  return _Range(low, optional=optional)


_FRACTION = _Range(0.0, 1.0)  # [0, 1)
_OPTIONAL_FRACTION = _Range(0.0, 1.0, optional=True)

_CHOICES = {
    'model.family': models.FAMILIES, 'model.round_rule': models.arch.ROUND_RULES,
    'model.dtype': tuple(models.DTYPES), 'model.depthwise_impl': models.DEPTHWISE_IMPLS,
    'model.activation': models.ACTIVATIONS, 'model.padding': models.PADDINGS,
    'data.train_preprocess': data.TRAIN_PREPROCESS, 'data.eval_preprocess': data.EVAL_PREPROCESS,
    'data.augment': data.AUGMENTS, 'data.normalization': data.NORMALIZATIONS,
    'data.resize_method': (None,) + data.RESIZE_METHODS,  # None: per recipe (see base_config)
    'data.bad_examples': bad_examples.POLICIES, 'data.image_dtype': data.IMAGE_DTYPES,
    'optim.schedule': optim.SCHEDULES, 'optim.weight_decay_rule': optim.WEIGHT_DECAY_RULES,
    'train.freeze': optim.FREEZE_MODES,
    'train.nan_policy': NAN_POLICIES, 'progressive.rule': progressive.RULES, 'distributed.initialize': parallel.INITIALIZE_MODES,
}

_RANGES = {
    'model.width_coefficient': _above(0), 'model.depth_coefficient': _above(0), 'model.head_filters': _at_least(1),
    'model.depth_divisor': _at_least(1), 'model.min_depth': _at_least(1, optional=True),
    'model.num_classes': _at_least(0),  # 0: no classifier (features only)
    'model.dropout_rate': _FRACTION, 'model.survival_prob': _Range(0.0, 1.0, low_open=True, high_open=False),
    'model.bn_momentum': _FRACTION, 'model.bn_epsilon': _above(0),
    'model.bn_group_size': _at_least(0),  # 0: statistics over the global batch
    'model.se_ratio': _Range(0.0, 1.0, high_open=False, optional=True),
    'model.stem_filters': _at_least(1, optional=True),  # None: round_filters(first block's input filters)
    'data.image_size': _above(0), 'data.eval_image_size': _above(0), 'data.crop_padding': _at_least(0),
    'data.randaug_num_layers': _at_least(0), 'data.randaug_magnitude': _at_least(0),
    'data.mixup_alpha': _at_least(0), 'data.cutmix_alpha': _at_least(0), 'data.shuffle_buffer': _at_least(1),
    'data.prefetch': _Range(optional=True),  # None or < 0: tf.data.AUTOTUNE
    'optim.lr_base': _above(0), 'optim.warmup_epochs': _at_least(0), 'optim.rmsprop_decay': _FRACTION,
    'optim.rmsprop_initial_scale': _at_least(0), 'optim.momentum': _FRACTION, 'optim.eps': _above(0),
    'optim.weight_decay': _at_least(0), 'optim.ema_decay': _FRACTION, 'optim.label_smoothing': _FRACTION,
    'train.batch_size': _above(0), 'train.eval_batch_size': _above(0),
    'train.total_steps': _at_least(1, optional=True), 'train.num_train_examples': _at_least(1, optional=True),
    'train.log_every_steps': _above(0),
    'train.eval_every_steps': _at_least(0, optional=True),  # None or 0: once per epoch
    'train.checkpoint_every_steps': _at_least(1), 'train.keep_checkpoints': _at_least(1),
    'train.early_stopping_patience': _at_least(0),  # 0: off
    'progressive.num_stages': _at_least(1), 'progressive.size_min': _above(0),
    'progressive.size_max': _above(0, optional=True),  # None: data.image_size
    'progressive.size_multiple': _at_least(0, optional=True),  # None or 0: sizes unrounded
    'progressive.randaug_min': _at_least(0), 'progressive.randaug_max': _at_least(0),
    'progressive.mixup_min': _at_least(0), 'progressive.mixup_max': _at_least(0),
    'progressive.cutmix_min': _at_least(0), 'progressive.cutmix_max': _at_least(0),
    'progressive.dropout_min': _OPTIONAL_FRACTION,  # None: the model keeps model.dropout_rate
    'progressive.dropout_max': _OPTIONAL_FRACTION, 'progressive.batch_multiple': _at_least(1),
    'distributed.num_processes': _at_least(1, optional=True),
    'distributed.process_id': _at_least(0, optional=True), 'distributed.initialization_timeout': _above(0),
}

_FLAGS = ('model.scan_blocks', 'data.flip', 'data.shuffle_files', 'data.randaug_on_device', 'data.cache',
         'data.autotune', 'optim.ema_per_stage', 'train.async_checkpointing', 'train.eval_ema', 'train.compile_ahead',
         'train.init_ema', 'progressive.enabled', 'progressive.scale_batch', 'model.fix_head_stem')


def _field(c: ml_collections.ConfigDict, dotted: str):
  section, name = dotted.split('.')
  return c[section][name]


def _fail(field: str, value, allowed) -> None:
  raise ValueError(f'{field}={value!r}; allowed: {allowed}')


def _check_blocks(blocks) -> None:
  """Parses every block string (BlockSpec.decode names the bad token and the format)."""
  if not blocks:
    _fail('model.blocks', blocks, 'a non-empty sequence of block strings such as "r1_k3_s11_e1_i32_o16_se0.25"')
  for block in blocks:
    if isinstance(block, models.arch.BlockSpec):
      block.validate()
    else:
      models.arch.BlockSpec.decode(block)


def _check_data_name(name) -> None:
  """Only a non-empty string can name a tfds dataset; whether tfds knows it is asked when the builder loads."""
  if not isinstance(name, str) or not name:
    _fail('data.name', name, "a tfds dataset name, e.g. 'digits' (built in) or 'imagenet2012', or 'folder:/path' "
                             "(a folder of images, effnet.data.folder)")


def _check_folder_data(c: ml_collections.ConfigDict) -> None:
  """data.name='folder:/path' (effnet.data.folder): the layout, the split folders and a classifier with one output
  per class folder, checked here because the model is built (and compiled) before the data load."""
  if not folder.is_folder_name(c.data.name):
    return
  eval_split = c.data.eval_split or folder.default_eval_split(c.data.name)  # None: as pipeline.default_eval_split
  classes = folder.check(c.data.name, [('data.train_split', c.data.train_split), ('data.eval_split', eval_split)])
  if c.model.num_classes != len(classes):
    _fail('model.num_classes', c.model.num_classes,
          f'{len(classes)}, the class folders of data.name={c.data.name!r} ({", ".join(classes[:5])}'
          f'{", ..." if len(classes) > 5 else ""})')


def _check_init_from(t: ml_collections.ConfigDict) -> None:
  """train.init_from: None or a local directory holding checkpoint steps (what effnet.weights reads)."""
  path = t.init_from
  if path is None:
    return
  if not isinstance(path, str) or not path:
    _fail('train.init_from', path, 'None or a directory path')
  from effnet import weights  # pylint: disable=g-import-not-at-top  (orbax: only when a path is given)
  weights.checkpoint_dir(os.path.expanduser(path), 'train.init_from')  # ValueError naming the field


def _check_optim_relations(o: ml_collections.ConfigDict) -> None:
  if o.schedule == 'exponential':  # the staircase divides by decay_epochs and takes log(decay_factor)
    for name in ('decay_epochs', 'decay_factor'):
      if not _above(0).allows(o[name]):
        _fail(f'optim.{name}', o[name], '> 0 for optim.schedule=exponential')


def _check_data_relations(d: ml_collections.ConfigDict) -> None:
  if d.randaug_on_device and d.augment == 'randaugment' and d.image_dtype != 'uint8':  # randaugment_jax takes uint8
    _fail('data.image_dtype', d.image_dtype, "'uint8' when data.randaug_on_device=True with data.augment=randaugment")


def _check_train_relations(c: ml_collections.ConfigDict) -> None:
  t = c.train
  if t.total_steps is None and not _above(0).allows(t.num_epochs):
    _fail('train.num_epochs', t.num_epochs, '> 0 when train.total_steps is None')
  if t.early_stopping_patience > 0 and not c.data.minival_split:
    _fail('data.minival_split', c.data.minival_split,
          'a split such as "train[:25022]" when train.early_stopping_patience > 0')


def _check_progressive_relations(c: ml_collections.ConfigDict) -> None:
  """What the stage schedule needs of its fields together; checked when the schedule is built (enabled)."""
  p = c.progressive
  if not p.enabled:
    return
  final = c.data.image_size if p.size_max is None else p.size_max
  if p.size_min > final:
    _fail('progressive.size_min', p.size_min,
          f'<= the final size {final} (progressive.size_max, or data.image_size when it is None)')
  if p.rule == 'paper' and (p.dropout_min is None) != (p.dropout_max is None):
    _fail('progressive.dropout_min', p.dropout_min,
          f'set together with progressive.dropout_max (={p.dropout_max!r}) for progressive.rule=paper, or both None')


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every field of a config before anything is built, loaded or compiled; raises ValueError naming the
  field, its value and the allowed values. Strings that only the dataset can judge (splits, paths) are left to tfds.
  """
  for field, allowed in _CHOICES.items():
    if _field(c, field) not in allowed:
      _fail(field, _field(c, field), tuple(allowed))
  for field, allowed in _RANGES.items():
    if not allowed.allows(_field(c, field)):
      _fail(field, _field(c, field), allowed)
  for field in _FLAGS:
    if not isinstance(_field(c, field), bool):
      _fail(field, _field(c, field), '(True, False)')
  _check_blocks(c.model.blocks)
  _check_data_name(c.data.name)
  _check_folder_data(c)
  _check_init_from(c.train)
  _check_optim_relations(c.optim)
  _check_data_relations(c.data)
  _check_train_relations(c)
  _check_progressive_relations(c)


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
  """Applies one `section.field=value` override in place; an unknown field raises ValueError naming its full dotted
  path and the closest valid fields."""
  key, sep, text = assignment.partition('=')
  key = key.strip()
  if not sep or not key:
    raise ValueError(f'override {assignment!r}: expected "section.field=value", e.g. "model.dropout_rate=0.3"')
  node, leaf = _field_parent(config, key)
  try:
    node[leaf] = _parse_value(text, node[leaf])
  except (TypeError, ValueError) as e:
    raise ValueError(f'{key}={text!r}: {e}') from None


def _field_parent(config, key: str):
  """(the section that holds the field `key` names, the field's own name), walking nested sections."""
  parts = key.split('.')
  node = config
  for i, part in enumerate(parts):
    where = '.'.join(parts[:i])
    if not hasattr(node, 'keys'):
      raise ValueError(f'{key}: no such config field; {where} is a value ({node!r}), not a section with fields')
    if part not in node:
      raise ValueError(_no_such_field(key, where, part, list(node.keys())))
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def _no_such_field(key: str, where: str, name: str, names: Sequence[str]) -> str:
  prefix = f'{where}.' if where else ''
  close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
  hint = f'did you mean {" or ".join(prefix + c for c in close)}? ' if close else ''
  return f'{key}: no such config field; {hint}the fields of {where or "the config"}: {", ".join(sorted(names))}'


# ---- the config a command line trains: one check for effnet.main and every launcher ----
def parse_command_line(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
  """(the spec of `--config=SPEC` or `--config SPEC`, the `KEY=VALUE` of every `--config.KEY=VALUE`, in order) of
  effnet.main-style arguments; other arguments (--workdir, entry-module flags) are skipped. The spec is None when
  there is no --config. `--config.KEY` without `=VALUE` raises ValueError (it cannot be checked before the run)."""
  spec, overrides = None, []
  args = list(args)
  for i, a in enumerate(args):
    if a == '--config' and i + 1 < len(args):
      spec = args[i + 1]
    elif a.startswith('--config='):
      spec = a[len('--config='):]
    elif a.startswith('--config.'):
      if '=' not in a:
        raise ValueError(f'{a}: write config overrides as --config.KEY=VALUE so they can be checked before the run')
      overrides.append(a[len('--config.'):])
  return spec, overrides


def checked_config(spec: str, overrides: Sequence[str] = (), base_dir: Optional[str] = None):
  """The config `--config=SPEC --config.KEY=VALUE ...` gives, validated: what effnet.main would train, built here
  without loading data or compiling. A relative config path is taken from `base_dir` (default: the working
  directory). Every failure is a ValueError that names the config, the override or the field."""
  if base_dir:
    path, arg = split_config_spec(spec)
    spec = os.path.join(base_dir, path) + (f':{arg}' if arg else '')
  try:
    config = load_config(spec)
  except ValueError as e:  # get_config's own errors (a bad arg token) get the spec they came from
    raise (e if str(e).startswith('--config') else ValueError(f'--config={spec}: {e}')) from None
  except (ImportError, SyntaxError, NameError, KeyError, AttributeError, TypeError) as e:
    raise ValueError(f'--config={spec}: loading it failed: {type(e).__name__}: {e}') from None
  for assignment in overrides:
    apply_override(config, assignment)
  try:
    validate(config)
  except (KeyError, AttributeError, TypeError) as e:  # a ConfigDict that does not have base_config()'s fields
    raise ValueError(f'--config={spec}: not a training config (the fields of effnet.config_lib.base_config): '
                     f'{type(e).__name__}: {e}') from None
  return config


def config_from_command_line(args: Sequence[str], base_dir: Optional[str] = None):
  """checked_config of effnet.main-style arguments (parse_command_line); a missing --config raises ValueError."""
  spec, overrides = parse_command_line(args)
  if spec is None:
    raise ValueError('--config: required, e.g. --config=configs/efficientnetv2.py:s')
  return checked_config(spec, overrides, base_dir)
