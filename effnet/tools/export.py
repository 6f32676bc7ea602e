r"""Export a trained (or freshly initialised) model for serving: SavedModel, TF Lite or ONNX.

  python -m effnet.tools.export --config=configs/demo.py --weights=workdirs/demo --format=saved_model --out=/tmp/m
  python -m effnet.tools.export --config=configs/demo.py --weights=workdirs/demo --format=tflite --out=/tmp/m.tflite \
      --serving=uint8 --quantize=int8 --representative=256
  python -m effnet.tools.export --config=configs/efficientnet.py:b0 --weights=none --format=tflite --out=/tmp/b0.tflite
  python -m effnet.tools.export --config=configs/demo.py --weights=workdirs/demo --format=onnx --out=/tmp/m.onnx

The exported function is the eval forward pass (train=False) in float32 with a dynamic batch size. `--serving=uint8`
takes uint8 NHWC images at the config's eval size and normalises them inside (effnet.data.normalize with
config.data.normalization), so a client only resizes/crops; `--output=features` returns the pooled feature vector
(before dropout and the classifier) instead of the logits.

How: the JAX function goes through jax2tf (native serialization, the batch dimension polymorphic) into a tf.Module
whose weights are tf.Variables, saved with tf.saved_model.save. TF Lite converts that SavedModel (the converter
lowers jax2tf's StableHLO); `--quantize=int8` adds post-training quantization with N examples of the config's eval
split, through the eval pipeline, as the representative dataset. orbax-export (0.0.8 installs with the pinned set)
is not used: it wraps the same jax2tf call and adds a dependency without adding a feature needed here. ONNX comes
from the JAX function directly through jax2onnx (the weights as initializers, the batch dimension symbolic), no
TensorFlow involved; see `save_onnx` for why not tf2onnx.

Every option, path and the config are checked before anything loads, initialises or compiles.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

FORMATS = ('saved_model', 'tflite', 'onnx')
SERVINGS = ('float', 'uint8')
OUTPUTS = ('logits', 'features')
VARIABLES = ('auto', 'ema', 'raw')
QUANTIZE = ('none', 'int8')


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  """What to export, checked by `check_options` (the command line's fields, without the config)."""
  weights: str  # a workdir, its checkpoints folder, or 'none' (random init, seed 0)
  format: str
  out: str
  serving: str = 'float'
  output: str = 'logits'
  variables: str = 'auto'  # auto: the EMA weights when config.train.eval_ema (what the trainer evaluates)
  step: Optional[int] = None  # None: the newest intact checkpoint step
  quantize: str = 'none'
  representative: int = 100
  overwrite: bool = False


def _fail(option: str, value, allowed) -> None:
  raise ValueError(f'{option}={value!r}; allowed: {allowed}')


def check_options(opts: ExportOptions) -> None:
  """Raises ValueError naming the option, its value and the allowed values; touches nothing but the file system."""
  for name, allowed in (('format', FORMATS), ('serving', SERVINGS), ('output', OUTPUTS),
                        ('variables', VARIABLES), ('quantize', QUANTIZE)):
    if getattr(opts, name) not in allowed:
      _fail(f'--{name}', getattr(opts, name), ' | '.join(allowed))
  if opts.quantize != 'none' and opts.format != 'tflite':
    _fail('--quantize', opts.quantize, f"'none' with --format={opts.format} (quantization is a TF Lite step)")
  if opts.format == 'onnx' and importlib.util.find_spec('jax2onnx') is None:
    _fail('--format', opts.format, 'saved_model | tflite; onnx needs jax2onnx, installed apart from the other '
          'requirements: pip install --no-deps -r requirements-onnx.txt')
  if opts.quantize == 'int8' and opts.representative < 1:
    _fail('--representative', opts.representative, 'an example count >= 1 with --quantize=int8')
  if opts.weights != 'none':
    from effnet import weights  # pylint: disable=g-import-not-at-top
    weights.check_step(opts.weights, opts.step, '--weights', '--step')  # ValueError naming the option
  elif opts.variables != 'auto':
    _fail('--variables', opts.variables, "'auto' with --weights=none (there is no checkpoint to choose from)")
  elif opts.step is not None:
    _fail('--step', opts.step, "none with --weights=none (there is no checkpoint to choose from)")
  if not opts.out:
    _fail('--out', opts.out, 'a path to write')
  if os.path.exists(opts.out) and not opts.overwrite:
    _fail('--out', opts.out, 'a path that does not exist yet (or pass --overwrite)')
  parent = os.path.dirname(os.path.abspath(opts.out))
  if not os.path.isdir(parent):
    _fail('--out', opts.out, f'a path in an existing directory ({parent} does not exist)')


# ----------------------------------------------------------------------------------------------------- weights


def load_variables(config, opts: ExportOptions):
  """{'params', 'batch_stats'} from the checkpoint (EMA or raw, see ExportOptions.variables) or a random init."""
  import jax  # pylint: disable=g-import-not-at-top
  from effnet import models, weights  # pylint: disable=g-import-not-at-top
  module = models.build_model(config.model)
  if opts.weights == 'none':
    return module, jax.device_get(models.make_initializer(module, config.data.image_size)(jax.random.key(0)))
  ema = None if opts.variables == 'auto' else opts.variables == 'ema'
  return module, weights.load_variables(opts.weights, config, ema=ema, step=opts.step)


def serving_module(module):
  """The module every format exports: float32 whatever model.dtype trained in (the bfloat16 of the ImageNet configs
  is a TPU training choice; jax2onnx writes an invalid graph from it), and depthwise convolutions as grouped
  convolutions (model.depthwise_impl='auto' picks k*k shifted multiply-adds on a CPU host, a form for XLA:CPU that
  would make the exported graph depend on the machine that exported it)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return module.clone(dtype=jnp.float32, depthwise_impl='conv')


def serving_function(module, config, opts: ExportOptions) -> Callable:
  """(variables, images) -> logits or pooled features, float32, inference mode; uint8 serving normalises inside."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from effnet import data  # pylint: disable=g-import-not-at-top
  normalization = config.data.normalization

  def forward(variables, images):
    x = data.normalize(images, normalization) if opts.serving == 'uint8' else images.astype(jnp.float32)
    if opts.output == 'features':
      _, features = module.apply(variables, x, train=False, return_features=True)
      return features['pooled'].astype(jnp.float32)
    return module.apply(variables, x, train=False).astype(jnp.float32)
  return forward


# ----------------------------------------------------------------------------------------------------- formats


def _input_dtype(opts: ExportOptions):
  return np.uint8 if opts.serving == 'uint8' else np.float32


# The newest StableHLO that TF 2.21 (its runtime's XlaCallModule and the TF Lite converter) deserializes. jax 0.12
# writes 1.18 by default (its 4-week compatibility window), which TF 2.21 rejects ("failed to deserialize portable
# artifact using StableHLO_v1.13.7"); StableHLO downgrades the module to an older target on serialization.
TF_STABLEHLO_VERSION = '1.13.0'


@contextlib.contextmanager
def _stablehlo_for_tf(version: str):
  """Inside the block jax.export serializes for StableHLO `version`, without shape assertions, and with sigmoid
  as one `stablehlo.logistic` op.

  jax 0.12 writes the batch polymorphism's one assertion (batch >= 1) as a `shape_assertion` custom call in a form
  (vhlo.custom_call_v2) that TF 2.21 cannot read, and targets StableHLO 1.18 where TF 2.21 reads up to 1.13; jax
  has no option for either any more (jax2tf's DisabledSafetyCheck.shape_assertions is gone). The assertion is not
  needed: the signature fixes every dimension but the batch, and a batch of 0 is harmless. On CPU jax lowers
  sigmoid (SiLU, the SE gate) as 1 / (1 + exp(-x)), whose exp overflows to inf for a trained net's large negative
  activations: harmless in float, but int8 calibration then fails ("scale out of expressed type range"); TF Lite's
  LOGISTIC op is bounded and has an int8 kernel. jax's TPU lowering is this same op. This swaps the private
  functions involved and restores them on exit.
  """
  from jax._src import lax as lax_internal  # pylint: disable=g-import-not-at-top
  from jax._src.export import _export, shape_poly  # pylint: disable=g-import-not-at-top
  from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-import-not-at-top
  logistic_p = lax_internal.lax.logistic_p
  saved = (_export.hlo.get_version_from_compatibility_requirement, shape_poly.ShapeConstraints.shape_assertions,
           mlir._lowerings[logistic_p])  # pylint: disable=protected-access
  _export.hlo.get_version_from_compatibility_requirement = lambda requirement: version
  shape_poly.ShapeConstraints.shape_assertions = lambda self, evaluator: None
  mlir.register_lowering(logistic_p, lambda ctx, x, accuracy: [hlo.logistic(x)])
  try:
    yield
  finally:
    _export.hlo.get_version_from_compatibility_requirement, shape_poly.ShapeConstraints.shape_assertions = saved[:2]
    mlir._lowerings[logistic_p] = saved[2]  # pylint: disable=protected-access


def save_saved_model(forward, variables, size: int, opts: ExportOptions, path: str) -> None:
  """jax2tf (native serialization, batch polymorphic) into a tf.Module with the weights as tf.Variables."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf_variables = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
  converted = jax2tf.convert(forward, polymorphic_shapes=[None, '(b, ...)'], with_gradient=False)
  module = tf.Module()
  module.variables_tree = tf_variables
  spec = tf.TensorSpec([None, size, size, 3], tf.as_dtype(_input_dtype(opts)), name='images')
  output_name = 'features' if opts.output == 'features' else 'logits'
  module.serve = tf.function(lambda images: {output_name: converted(tf_variables, images)},
                             input_signature=[spec], autograph=False)
  with _stablehlo_for_tf(TF_STABLEHLO_VERSION):  # saving traces (and serializes) the JAX function
    tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def representative_images(config, count: int, opts: ExportOptions):
  """`count` images of the config's eval split through the eval pipeline, one per yield, as the exported function
  takes them (uint8, or normalised float32)."""
  from effnet import data  # pylint: disable=g-import-not-at-top
  from effnet.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = min(count, 64)
  eval_data = pipeline.create_eval_dataset(config.data, global_batch_size=batch, process_index=0, process_count=1)
  images = []
  for example in eval_data.dataset.as_numpy_iterator():
    valid = example['image'][example['mask'].astype(bool)]
    images.extend(valid[:count - len(images)])
    if len(images) >= count:
      break
  if opts.serving == 'float':
    images = [np.asarray(data.normalize(im, config.data.normalization)) for im in images]
  else:
    # the pipeline's uint8 from any data.image_dtype (a float one: rounded and clipped, as image_dtype='uint8' is)
    images = [np.clip(np.round(np.asarray(im, np.float32)), 0, 255).astype(np.uint8) for im in images]
  return images


def save_tflite(saved_model_dir: str, path: str, representative=None) -> None:
  """TF Lite from the SavedModel: float32, or int8 weights and activations (float input/output) calibrated on
  `representative` (a list of single images)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  if representative is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([im[None]] for im in representative)
  with open(path, 'wb') as f:
    f.write(converter.convert())


# The ONNX opset written: jax2onnx 0.17's default, which the pinned onnxruntime (1.32) runs.
ONNX_OPSET = 23


@contextlib.contextmanager
def _jax2onnx_on_jax_012():
  """Inside the block jax2onnx 0.17.1 converts on jax 0.12: `jax._src.core.ClosedJaxpr` exists, and jax2onnx's
  plugin loader logs errors only.

  jax 0.11 merged ClosedJaxpr into Jaxpr (a Jaxpr holds its constants; `Jaxpr(jaxpr, consts)` stays as the legacy
  ClosedJaxpr constructor, and jax.extend.core.ClosedJaxpr is Jaxpr), and jax 0.12 removed the private name, which
  jax2onnx's `jit` plugin (jax2onnx/plugins/jax/core/jit.py, also on its main branch) still reads: without this
  every export fails with "module 'jax._src.core' has no attribute 'ClosedJaxpr'". No upstream issue found
  (enpasos/jax2onnx); drop this once that plugin reads jax.extend.core.ClosedJaxpr. The plugin loader imports every
  plugin on the first conversion and logs a warning with a traceback for each one whose library is not installed
  (equinox, dm-pix: jax2onnx declares them, effnet needs neither, see requirements-onnx.txt).
  """
  import logging  # pylint: disable=g-import-not-at-top
  from jax._src import core as jax_core  # pylint: disable=g-import-not-at-top
  added = not hasattr(jax_core, 'ClosedJaxpr')
  if added:
    jax_core.ClosedJaxpr = jax_core.Jaxpr
  plugin_logger = logging.getLogger('jax2onnx.plugins.plugin_system')
  level = plugin_logger.level
  plugin_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    plugin_logger.setLevel(level)
    if added:
      del jax_core.ClosedJaxpr


def save_onnx(module, variables, config, opts: ExportOptions, path: str) -> None:
  """jax2onnx from the JAX function itself: the weights become initializers, the batch a symbolic input dimension;
  one self-contained file.

  `module` is `serving_module`'s: with bfloat16 (the ImageNet configs' model.dtype) jax2onnx 0.17.1 writes an
  invalid graph (onnxruntime: "Type (tensor(float)) of output arg ... of node (ReduceMean_0) does not match expected
  type (tensor(bfloat16))"). Not tf2onnx: 1.17 cannot convert the XlaCallModule op of a jax2tf SavedModel (jax 0.12's
  jax2tf serializes natively only), and from the TF Lite file it builds a graph that onnxruntime rejects.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import onnx  # pylint: disable=g-import-not-at-top
  forward = serving_function(module, config, opts)
  size = int(config.data.eval_image_size)
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'batch, {size}, {size}, 3'), _input_dtype(opts))
  output_name = 'features' if opts.output == 'features' else 'logits'
  with _jax2onnx_on_jax_012():
    import jax2onnx  # pylint: disable=g-import-not-at-top
    model = jax2onnx.to_onnx(lambda images: forward(variables, images), [spec], model_name='effnet',
                             opset=ONNX_OPSET, input_names=['images'], output_names=[output_name])
  onnx.save_model(model, path)


def export(config, opts: ExportOptions) -> dict:
  """Writes `opts.out`; returns {'seconds': wall time, 'image_size': the input size}. Call check_options first."""
  t0 = time.perf_counter()
  module, variables = load_variables(config, opts)
  module = serving_module(module)
  forward = serving_function(module, config, opts)
  size = int(config.data.eval_image_size)
  representative = None
  if opts.quantize == 'int8':
    representative = representative_images(config, opts.representative, opts)
  _remove_existing(opts)
  if opts.format == 'onnx':  # from the JAX function, no SavedModel in between
    save_onnx(module, variables, config, opts, opts.out)
    return {'seconds': time.perf_counter() - t0, 'image_size': size}
  with tempfile.TemporaryDirectory() as tmp:
    saved = opts.out if opts.format == 'saved_model' else os.path.join(tmp, 'saved_model')
    save_saved_model(forward, variables, size, opts, saved)
    if opts.format == 'tflite':
      save_tflite(saved, opts.out, representative)
  return {'seconds': time.perf_counter() - t0, 'image_size': size}


def _remove_existing(opts: ExportOptions) -> None:
  if opts.overwrite and os.path.exists(opts.out):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(opts.out) if os.path.isdir(opts.out) else os.remove(opts.out)


# ----------------------------------------------------------------------------------------------------- running


def run_tflite(path: str, images: np.ndarray) -> np.ndarray:
  """Runs a TF Lite file on a batch (the batch dimension resized to fit) and returns its single output, with the
  LiteRT interpreter (TF 2.21 deprecates tf.lite.Interpreter in its favour)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=path)
  inp = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(inp['index'], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(inp['index'], images.astype(inp['dtype']))
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
  """Runs an ONNX file on a batch with onnxruntime (CPU) and returns its single output."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  inp = session.get_inputs()[0]
  dtype = np.uint8 if inp.type == 'tensor(uint8)' else np.float32
  return session.run(None, {inp.name: images.astype(dtype)})[0]


def run_saved_model(path: str, images: np.ndarray) -> np.ndarray:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  outputs = tf.saved_model.load(path).signatures['serving_default'](images=tf.constant(images))
  return next(iter(outputs.values())).numpy()


# ----------------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m effnet.tools.export', description=__doc__.split('\n\n')[2])
  p.add_argument('--config', required=True, help='path/to/config.py[:arg]; --config.KEY=VALUE overrides a field')
  p.add_argument('--weights', required=True, help="training workdir, its checkpoints folder, or 'none'")
  p.add_argument('--format', required=True, help=' | '.join(FORMATS))
  p.add_argument('--out', required=True, help='SavedModel directory, .tflite or .onnx file to write')
  p.add_argument('--serving', default='float', help='float: normalised float32 input; uint8: raw uint8 images')
  p.add_argument('--output', default='logits', help='logits | features (the pooled vector before the classifier)')
  p.add_argument('--variables', default='auto', help='auto (EMA when config.train.eval_ema) | ema | raw')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest intact one)')
  p.add_argument('--quantize', default='none', help='none | int8 (TF Lite post-training quantization)')
  p.add_argument('--representative', type=int, default=100, help='eval examples for --quantize=int8')
  p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
  return p


def parse_args(argv: Sequence[str]):
  """(config, ExportOptions) of a command line, both checked; ValueError on any bad value."""
  from effnet import config_lib  # pylint: disable=g-import-not-at-top
  config_args = [a for a in argv if a.startswith('--config.')]
  args = _parser().parse_args([a for a in argv if not a.startswith('--config.')])
  opts = ExportOptions(weights=args.weights, format=args.format, out=args.out, serving=args.serving,
                       output=args.output, variables=args.variables, step=args.step, quantize=args.quantize,
                       representative=args.representative, overwrite=args.overwrite)
  check_options(opts)
  _, overrides = config_lib.parse_command_line(config_args)
  return config_lib.checked_config(args.config, overrides), opts


def main(argv: Optional[Sequence[str]] = None) -> int:
  try:
    config, opts = parse_args(sys.argv[1:] if argv is None else argv)
    info = export(config, opts)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {opts.out} ({opts.format}, serving {opts.serving}, output {opts.output}, '
        f'{info["image_size"]} px) in {info["seconds"]:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
