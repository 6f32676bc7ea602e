"""`data.image_dtype`: the dtype the host pipeline hands to the device ('uint8' | 'float32' | 'bfloat16').

References: the official eval outputs in tests/data/official/eval/golden.npz (what the config's float32 path must
give), and formulas (uint8 = the float rounded and clipped; bfloat16 = the float cast; the input of on-device
RandAugment = the float clipped and truncated, as the official code converts before its ops). docs/fidelity.md §3.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from effnet import compile as compile_lib
from effnet import config_lib, models, optim, parallel, steps
from effnet import state as state_lib
from effnet.data import pipeline
from test_official_eval import EFFNET_EVAL, at, cases, golden  # noqa: F401  (golden: the module's fixture)

DTYPES = {'uint8': np.uint8, 'float32': np.float32, 'bfloat16': jnp.bfloat16}


def _first(ds):
  return next(iter(ds.as_numpy_iterator()))


def _batches(digits_dir, image_dtype, eval=True, **data_fields):  # pylint: disable=redefined-builtin
  """(train images, eval images or None) of the digits at 16 px, the same examples and seeds for every dtype."""
  data = tiny_config({'data.data_dir': digits_dir, 'data.image_dtype': image_dtype}).data
  data.update(dict(train_preprocess='inception_v1', flip=True, shuffle_buffer=64, **data_fields))  # bicubic: floats
  train = pipeline.create_train_dataset(data, global_batch_size=8, process_index=0, process_count=1, seed=3,
                                        augment='none')
  if not eval:
    return _first(train)['image'], None
  evals = pipeline.create_eval_dataset(data, global_batch_size=8, process_index=0, process_count=1)
  return _first(train)['image'], _first(evals.dataset)['image']


@pytest.fixture(scope='module')
def batches(digits_dir):
  """{image_dtype: (train images, eval images)}; 'on_device': the train images of data.randaug_on_device."""
  out = {d: _batches(digits_dir, d) for d in DTYPES}
  out['on_device'] = _batches(digits_dir, 'uint8', randaug_on_device=True, augment='randaugment', eval=False)
  return out


def test_each_dtype_comes_out_of_the_train_and_eval_datasets(batches):
  for d, kind in DTYPES.items():
    assert batches[d][0].dtype == kind and batches[d][1].dtype == kind, d
  for i in range(2):  # train, eval
    f = batches['float32'][i]
    assert np.any(f != np.round(f))  # a real float (the official output), not integral values
    np.testing.assert_array_equal(batches['uint8'][i], np.clip(np.round(f), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(batches['bfloat16'][i], f.astype(jnp.bfloat16))


def test_on_device_randaugment_input_is_truncated_like_the_official_code(batches):
  """With data.randaug_on_device the step augments, so the host converts as the official code does before its ops:
  clip and truncate (not round), the same values host RandAugment starts from."""
  on_device, f = batches['on_device'][0], batches['float32'][0]
  np.testing.assert_array_equal(on_device, np.clip(f, 0, 255).astype(np.uint8))
  assert np.any(on_device != np.clip(np.round(f), 0, 255))


def test_bad_dtype_and_on_device_randaugment_relation_fail_in_validate():
  c = config_lib.base_config()
  c.data.image_dtype = 'float16'
  with pytest.raises(ValueError, match=r"data.image_dtype='float16'; allowed: \('uint8', 'float32', 'bfloat16'\)"):
    config_lib.validate(c)
  c.data.update(dict(image_dtype='float32', randaug_on_device=True, augment='randaugment'))
  with pytest.raises(ValueError, match=r"data.image_dtype='float32'; allowed: 'uint8' when data.randaug_on_device"):
    config_lib.validate(c)
  c.data.augment = 'autoaugment'  # RandAugment on device only replaces host RandAugment: float32 is fine here
  config_lib.validate(c)


@pytest.mark.parametrize('recipe,image_dtype', [('tpu_current', 'float32'), ('tpu_pre2021', 'float32'),
                                                ('automl_v2', 'float32'), ('tpu_current_bf16', 'bfloat16')])
def test_config_eval_path_equals_official_output(golden, recipe, image_dtype):  # noqa: F811
  """The eval images create_eval_dataset maps (pipeline.eval_image_fn of a config) at the first size of each
  recipe: float32 is the official float32 output, bfloat16 TPU's use_bfloat16 output, bit for bit."""
  data = config_lib.base_config().data
  data.update(dict(eval_preprocess=EFFNET_EVAL[recipe.replace('_bf16', '')], image_dtype=image_dtype))
  size, jpeg, pos, official = cases(golden, recipe)[0]
  ours = pipeline.eval_image_fn(data, size)(jpeg)
  assert ours.dtype == tf.as_dtype(image_dtype)
  np.testing.assert_array_equal(at(tf.cast(ours, tf.float32).numpy(), pos), official)


def _tiny_steps(config):
  mesh = parallel.make_mesh()
  rep = parallel.replicated(mesh)
  module = models.build_model(config.model)
  tx, schedule = optim.build_optimizer(config.optim, 8, steps_per_epoch=10.0, total_steps=100)
  cfg = steps.StepConfig.from_config(config, jnp.float32, use_mixing=False)
  state = state_lib.create_train_state(module, tx, 16, 0, rep)
  compiler = compile_lib.StepCompiler(steps.make_train_step(module, tx, schedule, cfg),
                                      steps.make_eval_step(module, cfg), state_lib.abstract_state(module, tx, 16, rep),
                                      mesh, steps.hyper_defaults(), image_dtype=config.data.image_dtype)
  return compiler, state, jax.device_put(steps.hyper_defaults(0.1), rep)


def test_compiled_train_step_takes_float32_images():
  """The step compiled for data.image_dtype=float32 takes float32 batches and refuses the uint8 ones it would take
  if the abstract batch ignored the config."""
  config = tiny_config({'data.image_dtype': 'float32'})
  compiler, state, hyper = _tiny_steps(config)
  exe = compiler.get('train', 16, 8)
  compiler.close()
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  labels = np.arange(8, dtype=np.int32)
  with pytest.raises(TypeError, match='float32'):
    exe(state, {'image': images, 'label': labels}, hyper)
  state, metrics = exe(state, {'image': images.astype(np.float32), 'label': labels}, hyper)
  assert int(state.step) == 1 and np.isfinite(float(metrics.compute()['loss']))
