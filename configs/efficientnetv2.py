r"""EfficientNetV2 S/M/L/XL and B0..B3 with the google/automl recipe and progressive learning.

  python -m effnet.main --config=configs/efficientnetv2.py:s --workdir=/tmp/s
  python -m effnet.main --config=configs/efficientnetv2.py:s,runlocal --workdir=/tmp/s_local

Arg tokens: the variant (s, m, l, xl, b0..b3), `runlocal` (tiny CPU run on the built-in digits set),
`paper` (progressive learning with the paper's Table 6 values instead of the official code's).
"""
from effnet import config_lib
from effnet import models
from effnet import progressive


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant='s', runlocal=False, paper=False)
  s = models.variant_settings('v2', a.variant)
  c = config_lib.base_config()
  config_lib.apply_model_settings(c, s)
  # google/automl efficientnetv2 recipe (hparams.py, effnetv2_configs.py, datasets.py).
  c.optim.weight_decay_rule = 'automl'
  if a.variant.startswith('b'):
    c.data.augment = 'autoaugment'
  else:
    c.data.train_preprocess, c.data.eval_preprocess = 'inception_v2', 'center_crop_v2'
    c.data.normalization = 'inception_128'
    c.data.augment = 'randaugment'
    c.data.randaug_magnitude = s['randaug_magnitude']
    c.data.mixup_alpha = c.data.cutmix_alpha = s['mixup_alpha']
  c.train.num_train_examples = 1_256_144  # ImageNet train minus the 25,022-image minival (AML datasets.py)
  rule = 'paper' if a.paper else 'code'
  c.progressive.rule = rule
  c.progressive.enabled = True
  for k, v in progressive.presets(a.variant, rule).items():
    c.progressive[k] = v
  # Ends as configs/efficientnet.py does (and its sweep() below has the same form): each config file reads alone.
  if a.runlocal:
    config_lib.apply_runlocal(c)
  c.lock()
  return c


def sweep(name='stages'):
  """Override lists for launch.sweep: 'stages' (progressive on/off and stage count), 'lr', 'randaug'."""
  if name == 'stages':
    return [{'progressive.enabled': False}] + [{'progressive.num_stages': m} for m in (2, 4)]
  if name == 'lr':
    return config_lib.lr_sweep()
  if name == 'randaug':
    return [{'data.randaug_magnitude': m} for m in (5.0, 10.0, 15.0)]
  raise ValueError(f'sweep name {name!r}; allowed: stages, lr, randaug')
