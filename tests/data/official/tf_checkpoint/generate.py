"""Regenerates the official TF checkpoints and logits in this folder (see README.md for what each holds).

Not the official code: it imports the official model builders from checkouts named on the command line, builds each
model as the official main.py's model_fn does (TF1 graph, tf.train.ExponentialMovingAverage over
utils.get_ema_vars(), an RMSProp optimizer whose slots land in the checkpoint), writes random weights, BN statistics
and EMA shadows, saves with tf.compat.v1.train.Saver (TPUEstimator's default saver: sharded, relative paths), and
records the logits of the official eval graph restored from that checkpoint: raw (a plain Saver) and EMA
(Saver(ema.variables_to_restore()), what main.py's eval scaffold and eval_ckpt_main do).

  pip install --target /tmp/tfk 'tf-keras==2.21.*'   # Keras 2 for the official tf.keras / tf.layers code
  python tests/data/official/tf_checkpoint/generate.py --tpu DIR --automl DIR --tf_keras /tmp/tfk

  --tpu: tensorflow/tpu's models/official/efficientnet folder; --automl: google/automl's efficientnetv2 folder.

Shims (imports only, no arithmetic): TF_USE_LEGACY_KERAS=1 so tf.keras is Keras 2 (tf_keras), and an empty
`tensorflow_addons` module (automl utils.py imports it for GroupNormalization, which these models do not use).
"""
import argparse
import os
import shutil
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = 64
NUM_IMAGES = 2
SEED = 0
# name -> (codebase, builder, official model name, overrides). Each small: width/depth far below 1, 10 classes.
MODELS = {
    'v1_b0': ('tpu', 'efficientnet_builder', 'efficientnet-b0',
              dict(width_coefficient=0.1, depth_coefficient=0.25, num_classes=10)),
    'edgetpu_s': ('tpu', 'edgetpu.efficientnet_edgetpu_builder', 'efficientnet-edgetpu-S',
                  dict(width_coefficient=0.1, depth_coefficient=0.25, num_classes=10)),
    'v2_b0': ('automl', 'effnetv2_model', 'efficientnetv2-b0',
              dict(width_coefficient=0.1, depth_coefficient=0.25, num_classes=10)),
}


def _import_official(args):
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  if args.tf_keras:
    sys.path.insert(0, args.tf_keras)
  addons = types.ModuleType('tensorflow_addons')
  addons.layers = types.ModuleType('tensorflow_addons.layers')
  sys.modules.update({'tensorflow_addons': addons, 'tensorflow_addons.layers': addons.layers})
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  tf.disable_eager_execution()
  return tf


def images():
  """Blocky random images (8x8 noise upsampled, plus fine noise), already normalised as the official input."""
  rng = np.random.default_rng(SEED)
  coarse = rng.standard_normal((NUM_IMAGES, 8, 8, 3))
  fine = 0.3 * rng.standard_normal((NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3))
  return (np.repeat(np.repeat(coarse, 8, 1), 8, 2) + fine).astype(np.float32)


class _Codebase:
  """One checkout's builder, utils and optimizer, loaded from its folder (the two share module names)."""

  def __init__(self, folder, builder):
    for name in ('utils', 'efficientnet_model', 'efficientnet_builder', 'effnetv2_model', 'effnetv2_configs',
                 'hparams', 'edgetpu', 'edgetpu.efficientnet_edgetpu_builder', 'condconv', 'lars_optimizer'):
      sys.modules.pop(name, None)
    sys.path.insert(0, folder)
    import importlib  # pylint: disable=g-import-not-at-top
    self.builder = importlib.import_module(builder)
    self.utils = importlib.import_module('utils')
    sys.path.remove(folder)


def _logits(tf, code, kind, model_name, overrides, x, training):
  if kind == 'automl':  # main.py model_fn: set_learning_phase, then EffNetV2Model(name, config.model)(x)
    tf.keras.backend.set_learning_phase(training)
    return code.builder.EffNetV2Model(model_name, dict(overrides))(x, training=training)
  return code.builder.build_model(x, model_name, training=training, override_params=dict(overrides))[0]


def _random_values(variables, rng):
  """Raw values: conv/dense kernels N(0, 2/fan_out) (the official initialiser's scale), BN gamma U(0.5, 1.5),
  beta / biases N(0, 0.1), moving mean N(0, 0.1), moving variance U(0.5, 1.5)."""
  out = {}
  for v in variables:
    shape, name = v.shape.as_list(), v.op.name
    if name.endswith(('gamma', 'moving_variance')):
      out[v] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(('beta', 'bias', 'moving_mean')):
      out[v] = rng.normal(0.0, 0.1, shape)
    else:
      out[v] = rng.normal(0.0, np.sqrt(2.0 / (np.prod(shape[:-2] or [1]) * shape[-1])), shape)
  return out


def _shadow_values(raw, rng):
  """EMA shadows that differ from the raw values: scales x U(0.8, 1.2), offsets + N(0, 0.05), kernels x (1+0.2 N)."""
  out = {}
  for v, value in raw.items():
    name = v.op.name
    if name.endswith(('gamma', 'moving_variance')):
      out[v] = value * rng.uniform(0.8, 1.2, value.shape)
    elif name.endswith(('beta', 'bias', 'moving_mean')):
      out[v] = value + rng.normal(0.0, 0.05, value.shape)
    else:
      out[v] = value * (1.0 + 0.2 * rng.standard_normal(value.shape))
  return out


def write_checkpoint(tf, code, kind, model_name, overrides, directory, seed):
  """The training graph of main.py's model_fn, random weights and shadows, saved as TPUEstimator saves."""
  with tf.Graph().as_default():
    x = tf.placeholder(tf.float32, [NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3])
    logits = _logits(tf, code, kind, model_name, overrides, x, training=True)
    global_step = tf.train.get_or_create_global_step()
    optimizer = code.utils.build_optimizer(0.1, 'rmsprop')
    train_op = optimizer.minimize(tf.reduce_mean(tf.square(logits)), global_step)
    ema = tf.train.ExponentialMovingAverage(decay=0.9999, num_updates=global_step)
    ema_vars = sorted(code.utils.get_ema_vars(), key=lambda v: v.op.name)
    with tf.control_dependencies([train_op]):
      ema.apply(ema_vars)
    rng = np.random.default_rng(seed)
    raw = _random_values(ema_vars, rng)
    shadow = _shadow_values(raw, rng)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for v in ema_vars:
        v.load(raw[v].astype(np.float32), sess)
        ema.average(v).load(shadow[v].astype(np.float32), sess)
      saver = tf.train.Saver(sharded=True, save_relative_paths=True)
      return saver.save(sess, os.path.join(directory, 'model.ckpt'), global_step=0, write_meta_graph=False)


def eval_logits(tf, code, kind, model_name, overrides, path, batch, use_ema):
  """The official eval graph (training=False) restored from `path`: EMA via ema.variables_to_restore()."""
  with tf.Graph().as_default():
    x = tf.placeholder(tf.float32, batch.shape)
    logits = _logits(tf, code, kind, model_name, overrides, x, training=False)
    ema_vars = code.utils.get_ema_vars()
    var_list = tf.train.ExponentialMovingAverage(decay=0.9999).variables_to_restore(ema_vars) if use_ema else None
    with tf.Session() as sess:
      tf.train.Saver(var_list).restore(sess, path)
      return sess.run(logits, {x: batch})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tpu', required=True, help="tensorflow/tpu's models/official/efficientnet folder")
  parser.add_argument('--automl', required=True, help="google/automl's efficientnetv2 folder")
  parser.add_argument('--tf_keras', default='', help='a folder holding tf_keras (pip install --target)')
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  tf = _import_official(args)
  batch = images()
  record = {'images': batch}
  for seed, (name, (kind, builder, model_name, overrides)) in enumerate(MODELS.items()):
    code = _Codebase(args.tpu if kind == 'tpu' else args.automl, builder)
    directory = os.path.join(args.out, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    path = write_checkpoint(tf, code, kind, model_name, overrides, directory, seed)
    for use_ema in (False, True):
      record[f'{name}/{"ema" if use_ema else "raw"}'] = eval_logits(
          tf, code, kind, model_name, overrides, path, batch, use_ema)
    print(name, os.path.basename(path), {k: np.round(v[0, :4], 3) for k, v in record.items() if k.startswith(name)})
  np.savez(os.path.join(args.out, 'logits.npz'), **record)


if __name__ == '__main__':
  main()
