r"""EfficientNet v1: B0..B8, L2, or any compound coefficient φ, with the tensorflow/tpu recipe.

  python -m effnet.main --config=configs/efficientnet.py:b3 --workdir=/tmp/b3
  python -m effnet.main --config=configs/efficientnet.py:phi=2.5,runlocal --workdir=/tmp/phi
  python -m effnet.main --config=configs/efficientnet.py:b0 --config.data.augment=autoaugment ...

Arg tokens: the variant (b0..b8, l2, phi=<float> [alpha=,beta=,gamma= to replace 1.2, 1.1, 1.15]; or the
tensorflow/tpu edge models lite0..lite4, edgetpu_s, edgetpu_m, edgetpu_l), `runlocal`
(tiny CPU run on the built-in digits set),
`aml` (train at 0.8× eval size as google/automl trains v1 models).
"""
from effnet import config_lib
from effnet import models


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant='b0', runlocal=False, aml=False, phi=None, alpha=0.0, beta=0.0, gamma=0.0)
  variant = a.variant if a.phi is None else f'phi={a.phi}'
  c = config_lib.base_config()
  config_lib.apply_model_settings(c, models.variant_settings('v1', variant))
  # The official v1 infeed is bfloat16 (tensorflow/tpu use_bfloat16): its legacy-bicubic eval crop overshoots
  # [0, 255] at ~1% of values, which uint8 would clip (up to 44 levels; docs/fidelity.md §3 "Output dtype").
  c.data.image_dtype = 'bfloat16'
  if variant in models.LITE_VARIANTS + models.EDGETPU_VARIANTS:
    c.data.normalization = 'edge'  # their builders normalise (x - 127) / 128 (MEAN_RGB 127, STDDEV_RGB 128)
  if a.alpha or a.beta or a.gamma:  # compound scaling with other constants (e.g. from launch.grid_search)
    if a.phi is None:
      raise ValueError('config args alpha/beta/gamma need phi=<float>')
    alpha, beta, gamma = (a.alpha or models.arch.ALPHA, a.beta or models.arch.BETA, a.gamma or models.arch.GAMMA)
    c.model.depth_coefficient, c.model.width_coefficient = alpha ** a.phi, beta ** a.phi
    c.model.variant = f'phi={a.phi},alpha={alpha},beta={beta},gamma={gamma}'
    c.data.image_size = c.data.eval_image_size = models.arch.phi_resolution(a.phi, gamma=gamma)
  if a.aml:
    c.data.image_size = int(0.8 * c.data.eval_image_size) // 16 * 16
  if a.runlocal:
    config_lib.apply_runlocal(c)
  c.lock()
  return c


def sweep(name='lr'):
  """Override lists for launch.sweep. 'lr': base learning rate; 'scale': B0..B3 (top-1 vs FLOPs plot)."""
  if name == 'lr':
    return config_lib.lr_sweep()
  if name == 'dropout':
    return [{'model.dropout_rate': r} for r in (0.1, 0.2, 0.3)]
  if name == 'se':
    return [{'model.se_ratio': r} for r in (0.0, 0.25)]
  raise ValueError(f'sweep name {name!r}; allowed: lr, dropout, se')
