"""effnet.convert.from_keras and effnet.tools.convert against Keras' own forward pass (keras.applications
EfficientNetB0 and EfficientNetV2B0, built offline with weights=None; docs/fidelity.md "Keras weights").

The reference is Keras' logits on raw 0..255 pixels (its preprocessing layers inside the model); ours are effnet's
logits on `normalize(pixels, data.normalization)`. The Keras models get random BN statistics and biases, so a wrong
eps, a mean/var swap, a transposed depthwise kernel or a wrong normalisation changes the logits; the last BN of
every residual branch is halved as in test_convert (keeps the random deep net out of its chaotic regime). The BN
statistics start from one calibration batch, so the logits depend on the input (with arbitrary statistics the BN
offsets swamp it) and a wrong input normalisation shows. The v1 Normalization layer is set to ImageNet's mean and
variance (std**2): what Keras' pretrained v1 computes.
"""
import json
import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')  # Keras' jax backend builds B0 in ~50 s on CPU, TF in ~1 s

import jax
import keras
import numpy as np
import tensorflow as tf
import pytest

from effnet.config_lib import base_config
from effnet.convert import from_keras
from effnet.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from effnet.models import build_model, variant_settings
from effnet.tools import convert as convert_tool
from conftest import REPO

SIZE = 64  # every stride-2 layer sees an even size: Keras v1's correct_pad is TF SAME either way
TOL = 1e-4
MODELS = {  # (family, variant) -> (Keras constructor, data.normalization of the official model)
    ('v1', 'b0'): (keras.applications.EfficientNetB0, 'imagenet'),
    ('v2', 'b0'): (keras.applications.EfficientNetV2B0, 'imagenet'),
}


@pytest.fixture(autouse=True)
def _no_global_seed_left_behind():
  """keras.utils.set_random_seed also sets TensorFlow's global seed, which later tests of the same worker would
  inherit: with global seed 0, tf.data's shuffle with a tensor seed (effnet's train pipeline) fails to trace."""
  yield
  tf.random.set_seed(None)


def _config(family, variant, **over):
  return {**base_config().model.to_dict(), **variant_settings(family, variant), 'num_classes': 1000,
          'dtype': 'float32', 'depthwise_impl': 'conv', **over}


def _randomised_keras(ctor, seed=0):
  """Keras' random init, BN statistics calibrated on other random pixels (so every layer's output still depends
  on the input, as in a trained net) and then perturbed, with random BN scales and biases and SE / head biases."""
  keras.utils.set_random_seed(seed)  # Keras' own initialisers: the same model every run
  m = ctor(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  rs = np.random.RandomState(seed)
  bns = [layer for layer in m.layers if type(layer).__name__ == 'BatchNormalization']
  for layer in m.layers:
    if type(layer).__name__ == 'Normalization' and layer.weights:  # v1's: un-adapted (mean 0, variance 1)
      layer.set_weights([np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD) ** 2, np.asarray(0)])
      layer.finalize_state()
    elif type(layer).__name__ in ('Conv2D', 'Dense') and layer.use_bias:
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rs.randn(*bias.shape) * (0.1 if type(layer).__name__ == "Conv2D" else 0.001)])
  for layer in bns:
    layer.momentum = 0.0  # one training-mode call sets the moving statistics to that batch's
  m(_pixels(seed=seed + 100, batch=16), training=True)
  names = {layer.name for layer in m.layers}
  for layer in bns:
    n = layer.gamma.shape[0]
    damp = 0.5 if layer.name.endswith('project_bn') and layer.name[:-len('project_bn')] + 'add' in names else 1.0
    _, _, mean, var = layer.get_weights()
    var = var * (rs.rand(n) * 0.4 + 0.8)
    layer.set_weights([(rs.rand(n) + 0.5) * damp, rs.randn(n) * 0.1 * damp, mean + rs.randn(n) * 0.1 * np.sqrt(var),
                       var])
  return m


def _pixels(seed=1, batch=2):
  """Blocky random images plus noise, 0..255: iid noise images all pool to nearly the same features."""
  rs = np.random.RandomState(seed)
  coarse = np.kron(rs.uniform(0, 1, (batch, 4, 4, 3)), np.ones((1, SIZE // 4, SIZE // 4, 1)))
  return np.clip(255 * (0.8 * coarse + 0.2 * rs.uniform(0, 1, coarse.shape)), 0, 255).astype(np.float32)


_APPLY = {}


def _our_logits(cfg, variables, pixels, normalization):
  key = json.dumps(cfg, sort_keys=True, default=str)
  if key not in _APPLY:  # jitted once per model: on CPU one compile is cheaper than op-by-op dispatch
    model = build_model(cfg)
    _APPLY[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(_APPLY[key](variables, normalize(pixels, normalization)))


def _max_rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope='module')
def keras_models():
  return {key: _randomised_keras(ctor) for key, (ctor, _) in MODELS.items()}


@pytest.fixture(scope='module')
def keras_logits(keras_models):
  return {key: np.asarray(m(_pixels(), training=False)) for key, m in keras_models.items()}


@pytest.mark.parametrize('key', list(MODELS))
def test_logits_match_keras(keras_models, keras_logits, key):
  normalization = MODELS[key][1]
  cfg = _config(*key)
  ours = _our_logits(cfg, from_keras(keras_models[key], cfg, normalization=normalization), _pixels(),
                     normalization)
  err = _max_rel(ours, keras_logits[key])
  print(f'\n[convert_keras] {key}: max|ours-keras|/max|keras| = {err:.3e}')
  assert ours.shape == (2, 1000) and err < TOL, err
  # The comparison can fail: the same weights fed V2-S's (x - 128) / 128 instead miss by far more than TOL.
  wrong = _max_rel(_our_logits(cfg, from_keras(keras_models[key], cfg, normalization=normalization), _pixels(),
                               'inception_128'), keras_logits[key])
  print(f'[convert_keras] {key} fed inception_128 instead: {wrong:.3e}')
  assert wrong > 100 * TOL, wrong


def test_mismatches_are_refused_with_the_reason(keras_models):
  b0, v2 = keras_models[('v1', 'b0')], keras_models[('v2', 'b0')]
  # Width 1.1 keeps stem 32 and stages 1-2, but stage 3 goes 40 -> 48: its project conv is the first to disagree.
  with pytest.raises(ValueError, match=r"shape mismatch at Keras weight 'block3a_project_conv/kernel' "
                                       r"\(1, 1, 144, 40\).*blocks_3/project_conv/kernel' \(1, 1, 144, 48\)"):
    from_keras(b0, _config('v1', 'b0', width_coefficient=1.1))
  with pytest.raises(ValueError, match=r'epsilon \[0\.001\]; model\.bn_epsilon=1e-05'):
    from_keras(b0, _config('v1', 'b0', bn_epsilon=1e-5))
  with pytest.raises(ValueError, match=r"padding='same' \(got 'symmetric'\)"):
    from_keras(v2, _config('v2', 'b0', padding='symmetric'))
  # V2-B0's built-in preprocessing is ImageNet mean/std, not V2-S's (x - 128) / 128.
  with pytest.raises(ValueError, match=r"map pixel 0 to \[-2\.1179, -2\.0357, -1\.8044\].*"
                                       r"data\.normalization='inception_128' maps them to \[-1\.0, -1\.0, -1\.0\]"):
    from_keras(v2, _config('v2', 'b0'), normalization='inception_128')
  with pytest.raises(ValueError, match=r"'predictions/kernel' \(1280, 1000\).*head_dense/kernel' \(1280, 10\)"):
    from_keras(b0, _config('v1', 'b0', num_classes=10))
  with pytest.raises(ValueError, match=r"normalization='nope' \(data.normalization\); allowed"):  # before loading
    from_keras('/no/such.keras', _config('v1', 'b0'), normalization='nope')
  with pytest.raises(ValueError, match=r"model_or_path='/no/such.keras': expected an existing \.keras file"):
    from_keras('/no/such.keras', _config('v1', 'b0'))


def test_cli_arguments_are_checked_before_loading(tmp_path):
  spec = os.path.join(REPO, 'configs/efficientnet.py:b0')
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('')
  cases = {'tf:/ckpt': 'existing TF checkpoint', 'onnx:m': 'allowed kinds', 'keras:/no/such.keras': 'existing .keras',
           'timm:efficientnet_x_b3': 'EfficientNet-X/H'}
  for source, why in cases.items():
    with pytest.raises(ValueError, match=why):
      convert_tool.run(spec, [], source, str(tmp_path / 'new'))
  with pytest.raises(ValueError, match='not empty'):
    convert_tool.run(spec, [], 'timm:tf_efficientnet_b0', str(tmp_path / 'full'))
  assert convert_tool.main([f'--config={spec}', '--source=tf:/x', f'--out={tmp_path}/o']) == 2
  assert not (tmp_path / 'new').exists() and not (tmp_path / 'o').exists()


def test_cli_writes_a_checkpoint_that_restores_to_keras_logits(keras_models, keras_logits, tmp_path):
  path = str(tmp_path / 'b0.keras')
  keras_models[('v1', 'b0')].save(path)
  out = str(tmp_path / 'ckpt')
  overrides = ['model.dtype=float32', 'model.depthwise_impl=conv']
  spec = os.path.join(REPO, 'configs/efficientnet.py:b0')
  argv = [f'--config={spec}', f'--source=keras:{path}', f'--out={out}'] + [
      f'--config.{o}' for o in overrides]
  assert convert_tool.main(argv) == 0
  config = convert_tool.checked_config(spec, overrides)
  variables = convert_tool.read_weights(out, config)  # the EMA copies, as an EMA eval reads them
  ours = _our_logits(config.model.to_dict(), variables, _pixels(), config.data.normalization)
  err = _max_rel(ours, keras_logits[('v1', 'b0')])
  print(f'\n[convert_keras] CLI checkpoint vs Keras: {err:.3e}')
  assert err < TOL, err
