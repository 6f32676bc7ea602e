"""Config tests: every get_config arg loads and validates, and the values are the official recipe's
(docs/fidelity.md §1–§3: tensorflow/tpu and google/automl tables).

Configs are loaded from their file path, as `--config=configs/x.py:arg` does, so nothing depends on `configs`
being importable as a package.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from effnet import config_lib
from effnet import apply_override, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
V1 = str(CONFIGS / 'efficientnet.py')
V2 = str(CONFIGS / 'efficientnetv2.py')


def _v1(arg=None):
  return load_config(f'{V1}:{arg}' if arg else V1)


def _v2(arg=None):
  pytest.importorskip('effnet.progressive')   # configs/efficientnetv2.py imports it (written by another developer)
  return load_config(f'{V2}:{arg}' if arg else V2)


# Reference §1 scaling table (TPU builder): image size (train = eval for TPU v1) and dropout; bn_momentum 0.99.
V1_TABLE = {'b0': (224, 0.2), 'b1': (240, 0.2), 'b2': (260, 0.3), 'b3': (300, 0.3), 'b4': (380, 0.4),
            'b5': (456, 0.4), 'b6': (528, 0.5), 'b7': (600, 0.5), 'b8': (672, 0.5), 'l2': (800, 0.5)}
V1_WD = {'b0': (1.0, 1.0), 'b1': (1.0, 1.1), 'b2': (1.1, 1.2), 'b3': (1.2, 1.4), 'b4': (1.4, 1.8),
         'b5': (1.6, 2.2), 'b6': (1.8, 2.6), 'b7': (2.0, 3.1), 'b8': (2.2, 3.6), 'l2': (4.3, 5.3)}
# Reference §2 per-model table (AML effnetv2_configs.py): train, eval, dropout, RandAugment magnitude, mixup α.
V2_TABLE = {'s': (300, 384, 0.2, 10, 0.0), 'm': (384, 480, 0.3, 15, 0.2), 'l': (384, 480, 0.4, 20, 0.5),
            'xl': (384, 512, 0.4, 20, 0.5), 'b0': (192, 224, 0.2, 0, 0.0), 'b1': (192, 240, 0.2, 0, 0.0),
            'b2': (208, 260, 0.3, 0, 0.0), 'b3': (240, 300, 0.3, 0, 0.0)}


@pytest.mark.parametrize('variant', sorted(V1_TABLE))
def test_v1_variants_match_official_table(variant):
  c = _v1(variant)
  config_lib.validate(c)
  size, drop = V1_TABLE[variant]
  assert (c.model.family, c.model.variant) == ('v1', variant)
  assert c.data.image_size == c.data.eval_image_size == size
  assert c.model.dropout_rate == drop
  assert (c.model.width_coefficient, c.model.depth_coefficient) == V1_WD[variant]
  assert c.model.bn_momentum == 0.99 and c.model.bn_epsilon == 1e-3
  assert c.model.round_rule == 'tpu' and c.model.survival_prob == 0.8
  assert c.model.head_filters == 1280 and c.model.depth_divisor == 8


def test_v1_default_is_b0_and_b4_recipe():
  assert _v1().model.variant == 'b0'
  c = _v1('b4')
  assert (c.data.image_size, c.model.dropout_rate, c.model.bn_momentum) == (380, 0.4, 0.99)
  # tensorflow/tpu recipe (docs/fidelity.md §2): lr 0.016 per 256, RMSProp decay 0.9 eps 1e-3, wd 1e-5, EMA 0.9999.
  assert (c.optim.lr_base, c.optim.rmsprop_decay, c.optim.eps) == (0.016, 0.9, 1e-3)
  assert (c.optim.weight_decay, c.optim.ema_decay, c.optim.label_smoothing) == (1e-5, 0.9999, 0.1)


def test_v1_phi_and_runlocal_and_aml():
  c = _v1('phi=1.5')
  config_lib.validate(c)
  assert c.model.variant == 'phi=1.5'
  assert c.model.width_coefficient == pytest.approx(1.1 ** 1.5)
  assert c.model.depth_coefficient == pytest.approx(1.2 ** 1.5)
  assert 224 < c.data.image_size < 300 and c.data.image_size % 8 == 0   # 224·1.15^1.5 = 276.3 → 280
  r = _v1('b0,runlocal')
  config_lib.validate(r)
  assert r.data.name == 'digits' and r.model.num_classes == 10 and r.model.dtype == 'float32'
  assert r.data.image_size == 32 and r.train.total_steps is not None
  assert _v1('runlocal').data.name == 'digits'
  # google/automl trains v1 at int(0.8·eval)//16·16 (docs/fidelity.md §8): b0 176, b4 304, b7 480.
  for variant, size in (('b0', 176), ('b4', 304), ('b7', 480)):
    c = _v1(f'{variant},aml')
    assert (c.data.image_size, c.data.eval_image_size) == (size, V1_TABLE[variant][0])


@pytest.mark.parametrize('variant', sorted(V2_TABLE))
def test_v2_variants_match_official_table(variant):
  c = _v2(variant)
  config_lib.validate(c)
  train, ev, drop, ra, mix = V2_TABLE[variant]
  assert (c.model.family, c.model.variant) == ('v2', variant)
  assert (c.data.image_size, c.data.eval_image_size, c.model.dropout_rate) == (train, ev, drop)
  assert c.model.bn_momentum == 0.9          # AML code (the paper says 0.99; docs/fidelity.md §8)
  assert c.model.round_rule == 'automl'
  assert c.progressive.enabled
  if variant.startswith('b'):
    assert c.data.augment == 'autoaugment'
  else:
    assert c.data.augment == 'randaugment'
    assert c.data.randaug_magnitude == ra
    assert c.data.mixup_alpha == mix


@pytest.mark.parametrize('variant', ['lite0', 'lite4', 'edgetpu_s', 'edgetpu_l'])
def test_edge_models_normalize_as_their_builders(variant):
  # tensorflow/tpu lite/ and edgetpu/ builders: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3
  c = _v1(variant)
  config_lib.validate(c)
  assert c.data.normalization == 'edge'


def test_v2_m_recipe_and_runlocal():
  c = _v2('m')
  assert (c.data.image_size, c.data.eval_image_size, c.model.dropout_rate) == (384, 480, 0.3)
  assert (c.data.randaug_magnitude, c.data.mixup_alpha, c.model.bn_momentum) == (15, 0.2, 0.9)
  assert c.data.normalization == 'inception_128'      # docs/fidelity.md §3: V2 (x-128)/128
  assert c.train.num_train_examples == 1_256_144       # docs/fidelity.md §2: train minus minival
  assert _v2().model.variant == 's'
  r = _v2('s,runlocal')
  config_lib.validate(r)
  assert r.data.name == 'digits' and r.data.image_size == 32
  p = _v2('s,paper')
  config_lib.validate(p)
  assert p.progressive.rule == 'paper'


def test_locked_config_rejects_typos():
  c = _v1('b0')
  with pytest.raises(AttributeError, match='lrr'):
    c.optim.lrr = 1
  with pytest.raises(AttributeError):
    c.modle = None
  with pytest.raises(ValueError, match=r'^optim\.lrr: no such config field; the fields of optim: decay_epochs'):
    apply_override(c, 'optim.lrr=1')


@pytest.mark.parametrize('field,value', [
    ('data.augment', 'autoaug'), ('data.train_preprocess', 'inception'), ('data.eval_preprocess', 'crop'),
    ('data.normalization', 'none'), ('optim.schedule', 'linear'), ('optim.weight_decay_rule', 'adamw'),
    ('train.nan_policy', 'ignore'), ('distributed.initialize', 'maybe'), ('progressive.rule', 'table'),
    ('model.dtype', 'int8'), ('model.family', 'v3'), ('model.round_rule', 'floor'),
])
def test_validate_rejects_bad_enums_naming_field(field, value):
  c = _v1('b0')
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert field in msg and 'allowed' in msg, msg


@pytest.mark.parametrize('field,value', [
    # out of range
    ('train.batch_size', 0), ('model.width_coefficient', -1.0), ('optim.weight_decay', -1e-5),
    ('optim.ema_decay', 1.0), ('model.survival_prob', 0.0),
    # enumerated or bounded fields that build_model / the pipeline would otherwise only catch later
    ('model.depthwise_impl', 'fft'), ('data.resize_method', 'nearest'), ('model.dropout_rate', 1.5),
    ('model.num_classes', -3), ('model.bn_group_size', -1),
])
def test_validate_rejects_bad_values(field, value):
  c = _v1('b0')
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    config_lib.validate(c)


# Fields that were checked only once the dataset had loaded, the optimizer was built or the stage schedule was made
# (in effnet.data.pipeline, effnet.optim, effnet.progressive, effnet.train): config_lib.validate rejects them first.
LATE_FIELDS = [
    ('data.name', ''), ('data.crop_padding', -1),
    ('optim.rmsprop_decay', 1.0), ('optim.momentum', 1.5), ('optim.eps', 0.0), ('optim.rmsprop_initial_scale', -1.0),
    ('optim.decay_epochs', 0.0), ('optim.decay_factor', 0.0),
    ('progressive.num_stages', 0), ('progressive.size_min', 512), ('progressive.randaug_max', -1.0),
    ('progressive.mixup_min', -0.1), ('progressive.dropout_max', 1.0), ('progressive.size_multiple', -16),
    ('progressive.batch_multiple', 0), ('train.early_stopping_patience', 2), ('train.keep_checkpoints', 0),
]
RUNLOCAL_V2 = 'efficientnetv2.py:s,runlocal'  # digits, progressive on, the exponential schedule


def _with(field, value):
  c = load_config(str(CONFIGS / RUNLOCAL_V2))
  section, name = field.split('.')
  c[section][name] = value
  return c


@pytest.mark.parametrize('field,value', LATE_FIELDS)
def test_validate_rejects_fields_formerly_checked_late(field, value):
  with pytest.raises(ValueError) as e:
    config_lib.validate(_with(field, value))
  msg = str(e.value)
  assert field in msg and 'allowed' in msg, msg


@pytest.mark.parametrize('field,value', LATE_FIELDS)
def test_train_rejects_them_before_anything_runs(field, value, tmp_path):
  """train_and_evaluate (what `python -m effnet.main` calls) validates first: no workdir, no data, no compile."""
  from effnet import train
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    train.train_and_evaluate(_with(field, value), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize('flag,message', [('optim.momentum=1.5', 'optim.momentum=1.5; allowed: [0, 1)'),
                                          ('progressive.num_stages=0', 'progressive.num_stages=0; allowed: >= 1')])
def test_main_rejects_them_on_the_command_line(flag, message, tmp_path):
  repo = CONFIGS.parent
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(repo))
  proc = subprocess.run([sys.executable, '-m', 'effnet.main', f'--config=configs/{RUNLOCAL_V2}',
                         f'--workdir={tmp_path / "run"}', f'--config.{flag}'], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'run').exists()  # rejected before the workdir, the dataset or any compile


def test_parse_arg_rejects_unknown_args():
  with pytest.raises(ValueError, match='allowed'):
    _v1('b0,foo=1')
  with pytest.raises(ValueError, match='model.variant'):
    _v1('b9')
  with pytest.raises(ValueError):
    _v1('phi=abc')
  pytest.importorskip('effnet.progressive')
  with pytest.raises(ValueError, match='allowed'):
    _v2('s,foo=1')
  with pytest.raises(ValueError, match='model.variant'):
    _v2('xxl')


def test_parse_arg_types():
  a = config_lib.parse_arg('b3,runlocal,res=128', variant='b0', runlocal=False, res=224)
  assert (a.variant, a.runlocal, a.res) == ('b3', True, 128)
  assert config_lib.parse_arg(None, variant='b0').variant == 'b0'
  with pytest.raises(ValueError, match='allowed'):
    config_lib.parse_arg('x=1', variant='b0')


def _get_path(c, key):
  node = c
  for part in key.split('.'):
    assert part in node, f'sweep key {key!r} is not a config field'
    node = node[part]
  return node


@pytest.mark.parametrize('path,names', [(V1, ('lr', 'dropout', 'se')), (V2, ('stages', 'lr', 'randaug'))])
def test_sweep_keys_exist_and_apply(path, names):
  if path == V2:
    pytest.importorskip('effnet.progressive')
  import importlib.util
  spec = importlib.util.spec_from_file_location('_sweep_cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.sweep()                         # the default sweep
  for name in names:
    overrides = mod.sweep(name)
    assert overrides and all(isinstance(o, dict) and o for o in overrides)
    for o in overrides:
      c = mod.get_config()
      for key, value in o.items():
        _get_path(c, key)
        apply_override(c, f'{key}={value}')
        assert _get_path(c, key) == value
      config_lib.validate(c)
  with pytest.raises(ValueError, match='allowed'):
    mod.sweep('nope')


def test_load_config_errors():
  with pytest.raises(ValueError, match='no such file'):
    load_config('configs/does_not_exist.py:b0')
  with pytest.raises(ValueError, match='.py'):
    load_config('configs/efficientnet:b0')


def test_summary_tool_b0(capsys):
  from effnet.tools import summary
  s = summary.summarize(_v1('b0'))
  assert (s['family'], s['variant'], s['params']) == ('v1', 'b0', 5_288_548)      # timm tf_efficientnet_b0
  assert abs(s['macs_b'] - 0.39) < 0.01 and (s['image_size'], s['eval_image_size']) == (224, 224)
  assert [st['output_shape'][1:] for st in s['stages']] == [
      (112, 112, 16), (56, 56, 24), (28, 28, 40), (14, 14, 80), (14, 14, 112), (7, 7, 192), (7, 7, 320)]
  assert [st['num_blocks'] for st in s['stages']] == [1, 2, 2, 3, 3, 4, 1]
  assert [st['kernel_size'] for st in s['stages']] == [3, 3, 5, 3, 5, 5, 3]
  assert s['pooled_width'] == 1280 and s['stem']['width'] == 32
  # A model-only mapping works too (notebooks): a whole model section, since the library has no defaults of its own.
  from effnet import models
  m = dict(config_lib.base_config().model.to_dict(), **models.variant_settings('v1', 'b0'), num_classes=10,
           dtype='float32')
  assert summary.summarize(m)['params'] == 5_288_548 - 1281 * 990
  assert summary.main([f'--config={V1}:b0', '--set', 'model.num_classes=10', '--set', 'model.dtype=float32']) == 0
  out = capsys.readouterr().out
  assert '4,020,358' in out and 'stage_7' in out
  assert summary.main([f'--config={V1}:b0', '--set', 'model.nope=1']) == 2
  assert 'model.nope' in capsys.readouterr().err


def test_phi_argument_has_no_sentinel_value():
  """Every φ is honoured, including values a sentinel default could have swallowed."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('_cfg_v1', 'configs/efficientnet.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config('phi=-1000')
  assert c.model.variant == 'phi=-1000.0'
  assert c.model.width_coefficient == pytest.approx(1.1 ** -1000)
