"""effnet.tools.export: SavedModel, TF Lite and ONNX files run by TF / LiteRT / onnxruntime against the JAX model.

References are the Flax module's own `apply` (and effnet.data.normalize for uint8 serving), not the exported
function; the tiny model at 32 px keeps each export to a few seconds. The int8 check on a trained demo model is
tests/data/export_int8_agreement.py (README "Export" has its figure); here int8 conversion runs on random weights.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from conftest import REPO, tiny_config
from effnet import checkpoint as ckpt_lib
from effnet import data, models, optim, parallel
from effnet import state as state_lib
from effnet.tools import export as ex


def _config(digits_dir=None):
  c = tiny_config()
  c.data.image_size = c.data.eval_image_size = 32
  if digits_dir:
    c.data.data_dir = digits_dir
  return c


def _images(n, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)


def _rel_error(got, want):
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope='module')
def model_and_variables():
  config = _config()
  module, variables = ex.load_variables(config, ex.ExportOptions(weights='none', format='tflite', out='unused'))
  return config, module, variables


def _export_saved_and_tflite(config, module, variables, tmp_path, **kw):
  opts = ex.ExportOptions(weights='none', format='tflite', out=str(tmp_path / 'm.tflite'), **kw)
  ex.check_options(opts)
  saved = str(tmp_path / 'saved')
  ex.save_saved_model(ex.serving_function(ex.serving_module(module), config, opts), variables, 32, opts, saved)
  ex.save_tflite(saved, opts.out)
  return saved, opts.out


def test_float_logits_saved_model_tflite_onnx_dynamic_batch(model_and_variables, tmp_path):
  config, module, variables = model_and_variables
  saved, tflite = _export_saved_and_tflite(config, module, variables, tmp_path)
  onnx_opts = ex.ExportOptions(weights='none', format='onnx', out=str(tmp_path / 'm.onnx'))
  ex.check_options(onnx_opts)
  ex.export(config, onnx_opts)  # the command line's path: random init (seed 0), the same weights as the fixture's
  x = np.asarray(data.normalize(_images(3), config.data.normalization))
  want = np.asarray(module.apply(variables, x, train=False))
  for batch in (1, 3):  # one file, two batch sizes: the batch dimension is dynamic
    assert _rel_error(ex.run_saved_model(saved, x[:batch]), want[:batch]) <= 1e-4
    assert _rel_error(ex.run_tflite(tflite, x[:batch]), want[:batch]) <= 1e-4
    assert _rel_error(ex.run_onnx(onnx_opts.out, x[:batch]), want[:batch]) <= 1e-4  # measured 4.7e-07


def test_uint8_serving_features(model_and_variables, tmp_path):
  """uint8 in, the normalisation inside; the pooled features out (width = the head's 64 filters)."""
  config, module, variables = model_and_variables
  saved, tflite = _export_saved_and_tflite(config, module, variables, tmp_path, serving='uint8',
                                           output='features')
  images = _images(3, seed=1)
  _, features = module.apply(variables, data.normalize(images, config.data.normalization), train=False,
                             return_features=True)
  want = np.asarray(features['pooled'])
  assert want.shape == (3, 64)
  onnx_opts = ex.ExportOptions(weights='none', format='onnx', out=str(tmp_path / 'm.onnx'), serving='uint8',
                               output='features')
  # A bfloat16 model (the ImageNet configs' dtype) still gives a float32 graph, equal to the float32 reference.
  ex.save_onnx(ex.serving_module(module.clone(dtype=jnp.bfloat16)), variables, config, onnx_opts, onnx_opts.out)
  (signature,) = onnx.load(onnx_opts.out).graph.input  # uint8 NHWC, the batch symbolic
  assert signature.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert [d.dim_param or d.dim_value for d in signature.type.tensor_type.shape.dim] == ['batch', 32, 32, 3]
  for run, path in ((ex.run_saved_model, saved), (ex.run_tflite, tflite), (ex.run_onnx, onnx_opts.out)):
    got = run(path, images)
    assert got.shape == (3, 64)
    assert _rel_error(got, want) <= 1e-4


def test_int8_tflite_from_eval_pipeline(model_and_variables, digits_dir, tmp_path):
  """int8 post-training quantization with digits eval images as the representative set runs, takes float input,
  and keeps the float model's top-1 on most of a batch (random weights; the trained-model figure is in README)."""
  config, module, variables = model_and_variables
  config = _config(digits_dir)
  opts = ex.ExportOptions(weights='none', format='tflite', out=str(tmp_path / 'q.tflite'), quantize='int8',
                          representative=32)
  ex.check_options(opts)
  images = ex.representative_images(config, 32, opts)
  assert len(images) == 32 and images[0].shape == (32, 32, 3) and images[0].dtype == np.float32
  saved = str(tmp_path / 'saved')
  ex.save_saved_model(ex.serving_function(ex.serving_module(module), config, opts), variables, 32, opts, saved)
  ex.save_tflite(saved, opts.out, images)
  x = np.stack(images)
  want = np.asarray(module.apply(variables, x, train=False))
  got = ex.run_tflite(opts.out, x)
  agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
  assert agreement >= 0.9, agreement  # measured 32/32
  assert _rel_error(got, want) <= 0.1  # measured 0.019: int8 rounding, not a broken graph (that is O(1))


def test_checkpoint_weights_ema_or_raw(tmp_path):
  """--weights=WORKDIR restores the EMA weights when config.train.eval_ema (the trainer's eval), else the raw ones."""
  config = _config()
  module = models.build_model(config.model)
  tx, _ = optim.build_optimizer(config.optim, config.train.batch_size, steps_per_epoch=10.0, total_steps=40)
  sharding = parallel.replicated(parallel.make_mesh())
  state = state_lib.create_train_state(module, tx, 32, 0, sharding)
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'work' / 'checkpoints'), use_async=False)
  checkpointer.save(7, state, force=True)
  checkpointer.close()
  kernel = lambda v: np.asarray(v['params']['head_dense']['kernel'])  # noqa: E731
  for variables_opt, eval_ema, offset in (('auto', True, 1.0), ('auto', False, 0.0), ('raw', True, 0.0),
                                          ('ema', False, 1.0)):
    config.train.eval_ema = eval_ema
    opts = ex.ExportOptions(weights=str(tmp_path / 'work'), format='tflite', out=str(tmp_path / 'x.tflite'),
                            variables=variables_opt)
    ex.check_options(opts)
    _, variables = ex.load_variables(config, opts)
    np.testing.assert_array_equal(kernel(variables), kernel(jax.device_get(state.eval_variables(False))) + offset)
  with pytest.raises(ValueError, match=r'--step=3; allowed: a step of .*checkpoints: \[7\]'):
    ex.check_options(ex.ExportOptions(weights=str(tmp_path / 'work'), format='tflite', out='x.tflite', step=3))


def test_onnx_without_jax2onnx_says_how_to_install(monkeypatch, tmp_path):
  """jax2onnx is installed apart (requirements-onnx.txt, --no-deps): without it --format=onnx fails before loading."""
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'jax2onnx' else find_spec(name, *a))
  with pytest.raises(ValueError, match=r"--format='onnx'; allowed: saved_model \| tflite; onnx needs jax2onnx.*"
                                       r"pip install --no-deps -r requirements-onnx.txt"):
    ex.check_options(ex.ExportOptions(weights='none', format='onnx', out=str(tmp_path / 'm.onnx')))


@pytest.mark.parametrize('args, message', [
    (['--format=coreml'], "--format='coreml'; allowed: saved_model | tflite | onnx"),
    (['--format=onnx', '--quantize=int8'], "--quantize='int8'; allowed: 'none' with --format=onnx"),
    (['--serving=int8'], "--serving='int8'; allowed: float | uint8"),
    (['--output=pooled'], "--output='pooled'; allowed: logits | features"),
    (['--quantize=int4'], "--quantize='int4'; allowed: none | int8"),
    (['--format=saved_model', '--quantize=int8'], "--quantize='int8'; allowed: 'none' with --format=saved_model"),
    (['--quantize=int8', '--representative=0'], '--representative=0; allowed: an example count >= 1'),
    (['--variables=raw'], "--variables='raw'; allowed: 'auto' with --weights=none"),
    (['--weights=/nonexistent/dir'], "--weights='/nonexistent/dir'; allowed: a training workdir"),
    (['--out=/nonexistent/dir/m.tflite'], 'allowed: a path in an existing directory'),
    (['--config.model.dropout_rate=2.0'], 'model.dropout_rate'),
])
def test_bad_arguments_fail_before_loading(args, message, tmp_path, capsys):
  base = {'--config': os.path.join(REPO, 'configs/demo.py'), '--weights': 'none', '--format': 'tflite',
          '--out': str(tmp_path / 'm.tflite')}
  for a in args:
    base.pop(a.split('=')[0], None)
  argv = [f'{k}={v}' for k, v in base.items()] + args
  assert ex.main(argv) == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'm.tflite')
