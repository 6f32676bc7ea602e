r"""Export a trained (or freshly initialised) model for serving: SavedModel or TF Lite.

  python -m effnet.tools.export --config=configs/demo.py --weights=workdirs/demo --format=saved_model --out=/tmp/m
  python -m effnet.tools.export --config=configs/demo.py --weights=workdirs/demo --format=tflite --out=/tmp/m.tflite \
      --serving=uint8 --quantize=int8 --representative=256
  python -m effnet.tools.export --config=configs/efficientnet.py:b0 --weights=none --format=tflite --out=/tmp/b0.tflite

The exported function is the eval forward pass (train=False) in float32 with a dynamic batch size. `--serving=uint8`
takes uint8 NHWC images at the config's eval size and normalises them inside (effnet.data.normalize with
config.data.normalization), so a client only resizes/crops; `--output=features` returns the pooled feature vector
(before dropout and the classifier) instead of the logits.

How: the JAX function goes through jax2tf (native serialization, the batch dimension polymorphic) into a tf.Module
whose weights are tf.Variables, saved with tf.saved_model.save. TF Lite converts that SavedModel (the converter
lowers jax2tf's StableHLO); `--quantize=int8` adds post-training quantization with N examples of the config's eval
split, through the eval pipeline, as the representative dataset. orbax-export (0.0.8 installs with the pinned set)
is not used: it wraps the same jax2tf call and adds a dependency without adding a feature needed here.

Every option, path and the config are checked before anything loads, initialises or compiles.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

# No ONNX: neither converter works with this stack (README "Export"): tf2onnx 1.17 cannot read the XlaCallModule op
# of a native jax2tf SavedModel, and its TF Lite route builds a graph onnxruntime rejects (a Reshape to a wrong
# shape); jax2onnx 0.13 (the newest that installs with orbax-checkpoint 0.12) fails on jax 0.12 (jax._src.core has
# no ClosedJaxpr).
FORMATS = ('saved_model', 'tflite')
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
  if opts.quantize != 'none' and opts.format == 'saved_model':
    _fail('--quantize', opts.quantize, "'none' with --format=saved_model (quantization is a TF Lite step)")
  if opts.quantize == 'int8' and opts.representative < 1:
    _fail('--representative', opts.representative, 'an example count >= 1 with --quantize=int8')
  if opts.weights != 'none':
    if not os.path.isdir(opts.weights):
      _fail('--weights', opts.weights, "a training workdir, its 'checkpoints' folder, or 'none' (random init)")
    steps = sorted(int(d) for d in os.listdir(checkpoint_dir(opts.weights)) if d.isdigit())
    if opts.step is not None and opts.step not in steps:
      _fail('--step', opts.step, f'a step of {checkpoint_dir(opts.weights)}: {steps}')
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


def checkpoint_dir(weights: str) -> str:
  """The folder of step directories: `weights` itself, or `weights/checkpoints` for a training workdir."""
  for candidate in (os.path.join(weights, 'checkpoints'), weights):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      return candidate
  _fail('--weights', weights, 'a training workdir or checkpoints folder holding at least one step folder')


# ----------------------------------------------------------------------------------------------------- weights


def load_variables(config, opts: ExportOptions):
  """{'params', 'batch_stats'} from the checkpoint (EMA or raw, see ExportOptions.variables) or a random init."""
  import jax  # pylint: disable=g-import-not-at-top
  from effnet import models, optim, parallel  # pylint: disable=g-import-not-at-top
  from effnet import checkpoint as ckpt_lib, state as state_lib  # pylint: disable=g-import-not-at-top
  module = models.build_model(config.model)
  if opts.weights == 'none':
    return module, jax.device_get(models.make_initializer(module, config.data.image_size)(jax.random.key(0)))
  # The optimizer's slots are part of the stored tree; their structure depends on config.optim only, not on the
  # schedule's step counts, so placeholder counts give the same restore target as the run's.
  tx, _ = optim.build_optimizer(config.optim, config.train.batch_size, steps_per_epoch=1.0, total_steps=1)
  abstract = state_lib.abstract_state(module, tx, config.data.image_size,
                                      parallel.replicated(parallel.make_mesh()))
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(opts.weights), use_async=False)
  try:
    state, _ = checkpointer.restore(abstract, step=opts.step)
  finally:
    checkpointer.close()
  ema = config.train.eval_ema if opts.variables == 'auto' else opts.variables == 'ema'
  return module, jax.device_get(state.eval_variables(ema))


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
    images = [np.asarray(im).astype(np.uint8) for im in images]
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


def export(config, opts: ExportOptions) -> dict:
  """Writes `opts.out`; returns {'seconds': wall time, 'image_size': the input size}. Call check_options first."""
  t0 = time.perf_counter()
  module, variables = load_variables(config, opts)
  forward = serving_function(module, config, opts)
  size = int(config.data.eval_image_size)
  representative = None
  if opts.quantize == 'int8':
    representative = representative_images(config, opts.representative, opts)
  _remove_existing(opts)
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
  p.add_argument('--out', required=True, help='SavedModel directory or .tflite file to write')
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
