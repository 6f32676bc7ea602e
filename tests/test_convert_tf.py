"""effnet.convert.from_tf_checkpoint against the official TF code's own logits.

The fixtures (tests/data/official/tf_checkpoint, README.md there) are checkpoints that the official training graphs
of tensorflow/tpu (EfficientNet-B0, EfficientNet-EdgeTPU-S) and google/automl (EfficientNetV2-B0) saved at width
0.1, depth 0.25 and 10 classes, with random weights, BN statistics and EMA shadows, beside the logits that the
official eval graph restored from them gives: raw (plain Saver) and EMA (ema.variables_to_restore()).
"""
import functools
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from effnet.config_lib import base_config
from effnet.convert import from_tf_checkpoint
from effnet.models import build_model, variant_settings
from effnet.tools import convert as convert_tool
from conftest import REPO

FIXTURES = os.path.join(REPO, 'tests/data/official/tf_checkpoint')
MODELS = {'v1_b0': ('v1', 'b0'), 'edgetpu_s': ('v1', 'edgetpu_s'), 'v2_b0': ('v2', 'b0')}  # fixture -> variant
SMALL = dict(width_coefficient=0.1, depth_coefficient=0.25, num_classes=10)  # generate.py's overrides
TOL = 1e-4


@pytest.fixture(scope='module')
def official():
  return dict(np.load(os.path.join(FIXTURES, 'logits.npz')))


def _config(name, **over):
  family, variant = MODELS[name]
  return {**base_config().model.to_dict(), **variant_settings(family, variant), **SMALL, 'dtype': 'float32',
          'depthwise_impl': 'conv', **over}


def _max_rel(ours, ref):
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@functools.lru_cache(maxsize=None)
def _forward(name):
  """The eval forward pass of a fixture's model, jitted once (op-by-op it costs ~3x the test's time on CPU)."""
  model = build_model(_config(name))
  return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def _logits(name, variables, images):
  return np.asarray(_forward(name)(variables, images))


@pytest.mark.parametrize('name', list(MODELS))
def test_converted_logits_equal_the_official_ones(name, official):
  config = _config(name)
  for kind in ('raw', 'ema'):
    variables = from_tf_checkpoint(os.path.join(FIXTURES, name), config, ema=kind == 'ema')
    err = _max_rel(_logits(name, variables, official['images']), official[f'{name}/{kind}'])
    print(f'\n[convert_tf] {name} {kind}: max rel error {err:.2e}')
    assert err < TOL, (name, kind, err)
  assert _max_rel(official[f'{name}/raw'], official[f'{name}/ema']) > 0.1  # the two really differ


def test_a_wrong_config_names_the_variable():
  path = os.path.join(FIXTURES, 'v1_b0')
  with pytest.raises(ValueError, match=r"shape mismatch at TF checkpoint variable 'efficientnet-b0/stem/conv2d/"):
    from_tf_checkpoint(path, _config('v1_b0', width_coefficient=0.5))
  with pytest.raises(ValueError, match=r"variable 'efficientnet-b0/blocks_4/depthwise_conv2d/depthwise_kernel' \(5, 5"):
    from_tf_checkpoint(path, _config('v1_b0', depth_coefficient=0.5))  # blocks_4: another stage, 5x5 kernels
  with pytest.raises(ValueError, match=r"missing key: TF checkpoint variable 'efficientnet-edgetpu-S/blocks_0/se/"):
    from_tf_checkpoint(os.path.join(FIXTURES, 'edgetpu_s'), _config('edgetpu_s', se_ratio=0.25))
  with pytest.raises(ValueError, match=r"unexpected key: TF checkpoint variable 'efficientnetv2-b0/blocks_\d+/se/"):
    from_tf_checkpoint(os.path.join(FIXTURES, 'v2_b0'), _config('v2_b0', se_ratio=0.0))
  with pytest.raises(ValueError, match=r"model.padding='same' \(got 'symmetric'\)"):
    from_tf_checkpoint(path, _config('v1_b0', padding='symmetric'))
  with pytest.raises(ValueError, match=r"path='/no/such/ckpt': no TF checkpoint"):
    from_tf_checkpoint('/no/such/ckpt', _config('v1_b0'))


def _rewrite(src, prefix, keep):
  """A copy of checkpoint `src` with the variables `keep(name)` accepts (as tf.train.Saver writes them)."""
  reader = tf.train.load_checkpoint(src)
  names = sorted(n for n in reader.get_variable_to_shape_map() if keep(n))
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[reader.get_tensor(n) for n in names])
  return prefix


def test_ema_only_and_partly_shadowed_checkpoints(tmp_path, official, caplog):
  """EMA tensors only (how EfficientNet-L2 is released): ema=True converts, ema=False is refused; a variable without
  a shadow is taken raw and named in a warning."""
  src, config = os.path.join(FIXTURES, 'v2_b0'), _config('v2_b0')
  (tmp_path / 'l2').mkdir()  # a folder without a "checkpoint" file, as the released .tgz files unpack
  _rewrite(src, str(tmp_path / 'l2' / 'model.ckpt'), lambda n: n.endswith('/ExponentialMovingAverage'))
  ema_only = str(tmp_path / 'l2')
  err = _max_rel(_logits('v2_b0', from_tf_checkpoint(ema_only, config), official['images']), official['v2_b0/ema'])
  assert err < TOL, err
  with pytest.raises(ValueError, match='holds only the EMA shadow of .* convert it with ema=True'):
    from_tf_checkpoint(ema_only, config, ema=False)
  unshadowed = 'efficientnetv2-b0/head/conv2d/kernel'
  partial = _rewrite(src, str(tmp_path / 'partial'), lambda n: n != unshadowed + '/ExponentialMovingAverage')
  with caplog.at_level(logging.WARNING):
    variables = from_tf_checkpoint(partial, config)
  assert f'1 variables have no EMA shadow and are taken raw: {unshadowed}' in caplog.text
  raw = tf.train.load_checkpoint(src).get_tensor(unshadowed)
  np.testing.assert_array_equal(variables['params']['head_conv']['kernel'], raw)
  raw_only = _rewrite(src, str(tmp_path / 'raw_only'), lambda n: 'ExponentialMovingAverage' not in n)
  with pytest.raises(ValueError, match='has no ExponentialMovingAverage variables .* pass ema=False'):
    from_tf_checkpoint(raw_only, config)


def test_cli_writes_a_checkpoint_that_restores_to_the_official_logits(tmp_path, official):
  spec = os.path.join(REPO, 'configs/efficientnetv2.py:b0')
  overrides = [f'model.{k}={v}' for k, v in SMALL.items()] + ['model.dtype=float32', 'model.depthwise_impl=conv']
  out = str(tmp_path / 'ckpt')
  argv = [f'--config={spec}', f'--source=tf:{FIXTURES}/v2_b0', f'--out={out}'] + [f'--config.{o}' for o in overrides]
  assert convert_tool.main(argv) == 0
  config = convert_tool.checked_config(spec, overrides)
  ours = _logits('v2_b0', convert_tool.read_weights(out, config), official['images'])  # the same model
  err = _max_rel(ours, official['v2_b0/ema'])
  print(f'\n[convert_tf] CLI checkpoint vs official EMA logits: {err:.2e}')
  assert err < TOL, err
  assert convert_tool.main([f'--config={spec}', f'--source=tf:{tmp_path}/none', f'--out={tmp_path}/o']) == 2
  assert not (tmp_path / 'o').exists()
