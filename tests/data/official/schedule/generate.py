"""Regenerates schedule.json: the training schedule the official code computes, per variant and recipe.

Not the official code: it imports the official modules from checkouts given on the command line, runs them and records
what they compute. See README.md for the commits, files, functions and arguments.

  python tests/data/official/schedule/generate.py --automl DIR --tpu DIR [--tf_keras DIR] \
      [--out tests/data/official/schedule/schedule.json]

  --automl: google/automl's efficientnetv2/ folder (main.py, hparams.py, effnetv2_configs.py, datasets.py, utils.py).
  --tpu: tensorflow/tpu's models/official/efficientnet/ folder (main.py, utils.py, model_builder_factory.py, ...).
  --tf_keras: a folder holding the `tf_keras` package (Keras 2, `pip install --no-deps --target DIR tf-keras`). Both
      official codebases were written for Keras 2 (`tf.keras` before TF 2.16); TF 2.21 serves it as `tf.keras` when
      TF_USE_LEGACY_KERAS=1, which this script sets for its children.

Each codebase runs in a child process of its own (both main.py files define the same absl flags):

* google/automl: `main.main()` runs as a whole in train mode, with the TPUEstimator replaced by a recorder whose
  `train(input_fn, max_steps)` notes max_steps, `params['image_size']`, the dataset object's augmentation fields and the
  model's dropout. So the stage loop (sizes, RandAugment, mixup, cutmix, dropout, stage ends) is the official loop. The
  learning rate is `utils.WarmupLearningRateSchedule` built with the arguments main.py's `model_fn` gives it (its
  `train_steps` = max(min_steps, epochs * steps_per_epoch), a float) and evaluated in a TF1 graph on an int64 step.
* tensorflow/tpu: its flags are parsed from main.py with their defaults; the batch becomes 4096 (the recipe's, see
  README) and train_steps the flag's own rule, int(350 epochs * num_train_images / batch), which reproduces the flag's
  default 218,949 at its default batch 2048 (checked). The LR is `utils.build_learning_rate` with main.py's model_fn
  arguments, evaluated in a TF1 graph. Image size and dropout come from model_builder_factory / efficientnet_builder.

Shims (imports only, no arithmetic): stub `tensorflow_addons` modules (AML autoaugment.py and utils.py import them at
the top; nothing here calls them), stub `tensorflow.python.estimator` and `tensorflow.compat.v1.estimator` modules for tensorflow/tpu's main.py (removed
from TF), and a `tf.estimator` namespace holding the recorder for AML's main.py.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

V2_MODELS = ('s', 'm', 'l', 'xl', 'b0', 'b1', 'b2', 'b3')
V2_DATASETS = {'imagenet': 'ImageNet', 'imagenet21k': 'ImageNet21k'}
V1_MODELS = ('b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7')
V1_BATCH = 4096  # tensorflow/tpu#546: every v1 model was trained at 4096 for 350 epochs
V1_EPOCHS = 350
FRACTIONS = (0.01, 0.025) + tuple(k / 20 for k in range(1, 20)) + (0.975, 0.99, 0.995, 0.999)


# ----------------------------------------------------------------------------------------------------------------------
# Which steps to record the LR at (chosen here in float64; the official code then computes each value)
# ----------------------------------------------------------------------------------------------------------------------
def lr_steps(total_steps, steps_per_epoch, warmup_epochs, decay_epochs, stage_ends, exponential):
  """Start, warm-up end, both sides of every decay boundary, stage boundaries, fractions of the run, the last steps."""
  warmup = int(warmup_epochs * steps_per_epoch)
  steps = {0, 1, 2, max(warmup - 1, 0), warmup, warmup + 1, total_steps - 3, total_steps - 2, total_steps - 1,
           total_steps}
  if exponential:
    period = decay_epochs * steps_per_epoch
    for k in range(1, int(total_steps / period) + 1):
      edge = k * period
      steps.update((math.floor(edge) - 1, math.floor(edge), math.floor(edge) + 1, math.ceil(edge)))
  for end in stage_ends:
    steps.update((end - 1, end))
  steps.update(int(f * total_steps) for f in FRACTIONS)
  return sorted(s for s in steps if 0 <= s <= total_steps)


def _graph_values(build, steps):
  """Evaluates `build(global_step)` in a TF1 graph for each int64 step (the Estimator's global step dtype)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  v1 = tf.compat.v1
  with tf.Graph().as_default():
    step = v1.placeholder(tf.int64, [])
    value = build(step)
    with v1.Session() as sess:
      out = [sess.run(value, {step: s}) for s in steps]
  assert all(np.asarray(v).dtype == np.float32 for v in out), 'the official LR is float32'
  return [[int(s), float(v)] for s, v in zip(steps, out)]


# ----------------------------------------------------------------------------------------------------------------------
# google/automl efficientnetv2
# ----------------------------------------------------------------------------------------------------------------------
def _stub_modules(names):
  for name in names:
    sys.modules.setdefault(name, types.ModuleType(name))
  for name in names:
    parent, _, child = name.rpartition('.')
    if parent in sys.modules:
      setattr(sys.modules[parent], child, sys.modules[name])


class _Recorder:
  """Stands in for TPUEstimator: records what each `train` call of main.py's stage loop would train with."""
  calls = []

  def __init__(self, params=None, **_):
    self.params = params

  def train(self, input_fn, max_steps, hooks=None):
    del hooks
    ds, cfg = input_fn.__self__, self.params['config']
    _Recorder.calls.append(dict(
        max_steps=int(max_steps), image_size=int(self.params['image_size']), dataset_image_size=int(ds.image_size),
        augname=ds.augname, randaug_magnitude=float(ds.ra_magnitude), mixup_alpha=float(ds.mixup_alpha or 0),
        cutmix_alpha=float(ds.cutmix_alpha or 0), dropout_rate=float(cfg.model.dropout_rate),
        steps_per_epoch=float(self.params['steps_per_epoch']), config=cfg))


def _estimator_namespace():
  tpu = types.SimpleNamespace(
      RunConfig=lambda **kw: kw, TPUConfig=lambda **kw: kw, TPUEstimator=_Recorder,
      InputPipelineConfig=types.SimpleNamespace(PER_HOST_V2='PER_HOST_V2'))
  return types.SimpleNamespace(tpu=tpu)


def _aml_main(path):
  sys.path.insert(0, path)
  _stub_modules(('tensorflow_addons', 'tensorflow_addons.layers', 'tensorflow_addons.image'))
  import main  # pylint: disable=g-import-not-at-top
  namespace = types.ModuleType('tf_compat_v1_with_recorder')
  namespace.__dict__.update({k: getattr(main.tf, k) for k in dir(main.tf) if not k.startswith('__')})
  namespace.estimator = _estimator_namespace()
  main.tf = namespace  # only main.py's own name `tf` changes: it now finds tf.estimator.tpu.* above
  main.tf.disable_eager_execution()  # as main.py's __main__ does
  main.FLAGS(['main.py', '--use_tpu=false', '--mode=train'])
  return main


def _aml_recipe(main, model, dataset, workdir):
  import utils  # pylint: disable=g-import-not-at-top  (AML utils, on sys.path via _aml_main)
  main.FLAGS.model_name, main.FLAGS.dataset_cfg = f'efficientnetv2-{model}', V2_DATASETS[dataset]
  main.FLAGS.model_dir = os.path.join(workdir, f'{model}_{dataset}')
  _Recorder.calls = []
  main.main(None)
  calls, cfg = _Recorder.calls, _Recorder.calls[-1]['config']
  spe = calls[-1]['steps_per_epoch']
  num_images = cfg.data.splits[cfg.train.split or 'train'].num_images
  total_steps = calls[-1]['max_steps']
  lr_total = max(cfg.train.min_steps, cfg.train.epochs * spe)  # model_fn's train_steps (float)
  scaled_lr = cfg.train.lr_base * (cfg.train.batch_size / 256.0)
  stages, start = [], 0
  for i, c in enumerate(calls):
    assert c['image_size'] == c['dataset_image_size']
    stages.append(dict(index=i, start_step=start, end_step=c['max_steps'], image_size=c['image_size'],
                       augment=c['augname'], randaug_magnitude=c['randaug_magnitude'], mixup_alpha=c['mixup_alpha'],
                       cutmix_alpha=c['cutmix_alpha'], dropout_rate=c['dropout_rate']))
    start = c['max_steps']
  steps = lr_steps(total_steps, spe, cfg.train.lr_warmup_epoch, cfg.train.lr_decay_epoch,
                   [s['end_step'] for s in stages[:-1]], cfg.train.lr_sched == 'exponential')
  schedule = utils.WarmupLearningRateSchedule(
      scaled_lr, steps_per_epoch=spe, decay_epochs=cfg.train.lr_decay_epoch, warmup_epochs=cfg.train.lr_warmup_epoch,
      decay_factor=cfg.train.lr_decay_factor, lr_decay_type=cfg.train.lr_sched, total_steps=lr_total,
      minimal_lr=cfg.train.lr_min * (cfg.train.batch_size / 256.0))
  return dict(
      source='automl', model_name=f'efficientnetv2-{model}', dataset_cfg=V2_DATASETS[dataset],
      batch_size=cfg.train.batch_size, epochs=cfg.train.epochs, min_steps=cfg.train.min_steps,
      num_train_images=num_images, steps_per_epoch=spe, total_steps=total_steps, lr_total_steps=lr_total,
      lr=dict(lr_base=cfg.train.lr_base, scaled_lr=scaled_lr, schedule=cfg.train.lr_sched,
              warmup_epochs=cfg.train.lr_warmup_epoch, decay_epochs=cfg.train.lr_decay_epoch,
              decay_factor=cfg.train.lr_decay_factor, lr_min=cfg.train.lr_min),
      eval_image_size=cfg.eval.isize, stages=stages, lr_at=_graph_values(schedule, steps))


def automl_part(path):
  main = _aml_main(path)
  out = {}
  with tempfile.TemporaryDirectory() as workdir:
    for dataset in V2_DATASETS:
      for model in V2_MODELS:
        out[f'v2-{model}/{dataset}'] = _aml_recipe(main, model, dataset, workdir)
  return out


# ----------------------------------------------------------------------------------------------------------------------
# tensorflow/tpu efficientnet (v1)
# ----------------------------------------------------------------------------------------------------------------------
def _tpu_main(path):
  sys.path.insert(0, path)
  _stub_modules(('tensorflow.python.estimator', 'tensorflow.python.estimator.estimator',
                 'tensorflow.compat.v1.estimator'))
  import main  # pylint: disable=g-import-not-at-top
  main.FLAGS(['main.py'])
  flags = main.FLAGS
  default_steps = int(V1_EPOCHS * flags.num_train_images / flags.train_batch_size)
  assert default_steps == flags.train_steps, (default_steps, flags.train_steps)  # the flag's rule, checked
  assert not flags.holdout_shards
  flags.train_batch_size = V1_BATCH
  flags.train_steps = int(V1_EPOCHS * flags.num_train_images / flags.train_batch_size)
  return main


def _tpu_recipe(main, model):
  import efficientnet_builder, model_builder_factory, utils  # pylint: disable=g-import-not-at-top,g-multiple-import
  f, name = main.FLAGS, f'efficientnet-{model}'
  spe = f.num_train_images / f.train_batch_size  # main.py's params['steps_per_epoch']
  scaled_lr = f.base_learning_rate * (f.train_batch_size / 256.0)  # model_fn
  dropout = f.dropout_rate if f.dropout_rate is not None else efficientnet_builder.efficientnet_params(name)[3]
  stage = dict(index=0, start_step=0, end_step=f.train_steps,
               image_size=f.input_image_size or model_builder_factory.get_model_input_size(name),
               augment=f.augment_name, randaug_magnitude=float(f.randaug_magnitude),
               mixup_alpha=float(f.mixup_alpha), cutmix_alpha=0.0, dropout_rate=float(dropout))
  steps = lr_steps(f.train_steps, spe, f.lr_warmup_epochs, f.lr_decay_epoch, [], f.lr_schedule == 'exponential')
  build = lambda step: utils.build_learning_rate(  # noqa: E731
      scaled_lr, step, spe, decay_epochs=f.lr_decay_epoch, warmup_epochs=f.lr_warmup_epochs,
      decay_factor=f.lr_decay_factor, lr_decay_type=f.lr_schedule, total_steps=f.train_steps)
  return dict(
      source='tpu', model_name=name, batch_size=f.train_batch_size, epochs=V1_EPOCHS, num_train_images=f.num_train_images,
      steps_per_epoch=spe, total_steps=f.train_steps, lr_total_steps=f.train_steps,
      lr=dict(lr_base=f.base_learning_rate, scaled_lr=scaled_lr, schedule=f.lr_schedule,
              warmup_epochs=f.lr_warmup_epochs, decay_epochs=f.lr_decay_epoch, decay_factor=f.lr_decay_factor,
              lr_min=0.0),
      stages=[stage], lr_at=_graph_values(build, steps))


def tpu_part(path):
  main = _tpu_main(path)
  return {f'v1-{m}/imagenet': _tpu_recipe(main, m) for m in V1_MODELS}


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------
def _child(part, args):
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join(p for p in (args.tf_keras, os.environ.get('PYTHONPATH')) if p))
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    subprocess.run([sys.executable, __file__, '--part', part, '--automl', args.automl, '--tpu', args.tpu,
                    '--part_out', out.name], env=env, check=True)
    with open(out.name) as f:
      return json.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--automl', required=True)
  p.add_argument('--tpu', required=True)
  p.add_argument('--tf_keras', default=None)
  p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'schedule.json'))
  p.add_argument('--part', choices=('automl', 'tpu'), default=None)
  p.add_argument('--part_out', default=None)
  args = p.parse_args()
  if args.part:
    result = automl_part(args.automl) if args.part == 'automl' else tpu_part(args.tpu)
    with open(args.part_out, 'w') as f:
      json.dump(result, f)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  recipes = {**_child('automl', args), **_child('tpu', args)}
  doc = dict(generated_with=dict(tensorflow=tf.__version__, tf_keras='2.21.0 (TF_USE_LEGACY_KERAS=1)'),
             recipes=recipes)
  with open(args.out, 'w') as f:
    json.dump(doc, f, indent=1, sort_keys=True)
    f.write('\n')
  print(f'wrote {len(recipes)} recipes to {args.out}')


if __name__ == '__main__':
  main()
