r"""The `make demo` job: an EfficientNetV2-family model compound-scaled down (φ < 0) trained on the built-in
digits set (scikit-learn's 1,797 real 8×8 handwritten digits, resized on the fly) through the same pipeline,
train step and checkpointing a pod uses. Sized for a 2-core CPU: XLA's CPU convolutions are slow, so the net is
V2-B0's block list at φ=-3 (width β^φ, depth α^φ) and 32 px images.

  python -m effnet.main --config=configs/demo.py --workdir=/tmp/demo
  python -m effnet.main --config=configs/demo.py:phi=-2,progressive --workdir=/tmp/demo2

Arg tokens: phi=<float> (default -3), `progressive` (4 stages from 16 to 32 px with growing regularization).
"""
from effnet import config_lib
from effnet import models


def get_config(arg=None):
  a = config_lib.parse_arg(arg, phi=-3.0, progressive=False, epochs=30.0)
  c = config_lib.base_config()
  s = models.variant_settings('v2', 'b0')
  config_lib.apply_model_settings(c, s)
  width, depth, _ = models.arch.phi_coefficients(a.phi)
  c.model.variant = f'b0,phi={a.phi}'
  c.model.width_coefficient, c.model.depth_coefficient = width, depth
  c.model.num_classes = 10
  c.model.dtype = 'float32'        # bfloat16 buys nothing on a CPU
  c.model.dropout_rate = 0.1
  c.model.bn_momentum = 0.9

  c.data.name = 'digits'
  c.data.train_split, c.data.eval_split = 'train', 'test'
  c.data.image_size = c.data.eval_image_size = 32
  c.data.train_preprocess, c.data.eval_preprocess = 'resize', 'resize'
  c.data.resize_method = 'bilinear'
  c.data.flip = False              # digits are not mirror-symmetric
  c.data.augment = 'none'
  c.data.normalization = 'inception_128'
  c.data.shuffle_buffer = 2048
  c.data.cache = True

  c.train.batch_size = 64
  c.train.eval_batch_size = 128
  c.train.num_epochs = a.epochs
  c.train.num_train_examples = None
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 200
  c.train.eval_every_steps = 200
  c.optim.lr_base = 0.064          # 0.016 per 256 images is tuned for 350 ImageNet epochs; a short run needs more
  c.optim.warmup_epochs = 2.0
  c.optim.decay_epochs = a.epochs / 30.0  # ×0.9 thirty times over the run, whatever `epochs` is
  c.optim.decay_factor = 0.9
  c.optim.ema_decay = 0.998
  c.optim.weight_decay_rule = 'automl'

  if a.progressive:
    c.progressive.enabled = True
    c.progressive.rule = 'paper'
    c.progressive.num_stages = 4
    c.progressive.size_min, c.progressive.size_max = 16, 32
    c.progressive.size_multiple = 8
    c.progressive.dropout_min, c.progressive.dropout_max = 0.0, 0.1
    c.progressive.randaug_min = c.progressive.randaug_max = 0.0
  c.lock()
  return c


def sweep(name='se'):
  """Ablations on the built-in set: 'se' (squeeze-excite on/off), 'survival' (stochastic depth off/on), 'phi'."""
  if name == 'se':
    return [{'model.se_ratio': r} for r in (0.0, 0.25)]
  if name == 'survival':
    return [{'model.survival_prob': p} for p in (1.0, 0.8)]
  if name == 'phi':
    return [{'model.width_coefficient': 1.1 ** p, 'model.depth_coefficient': 1.2 ** p} for p in (-4.0, -3.0, -2.0)]
  raise ValueError(f'sweep name {name!r}; allowed: se, survival, phi')
