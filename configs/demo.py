r"""The `make demo` job: an EfficientNetV2-family model compound-scaled down (φ < 0) trained on the built-in
digits set (scikit-learn's 1,797 real 8×8 handwritten digits, resized on the fly) through the same pipeline,
train step and checkpointing a pod uses. Sized for a 2-core CPU: XLA's CPU convolutions are slow, so the net is
V2-B0's block list at φ=-3 (width β^φ, depth α^φ) and 32 px images.

  python -m effnet.main --config=configs/demo.py --workdir=/tmp/demo
  python -m effnet.main --config=configs/demo.py:progressive --workdir=/tmp/demo_prog
  python -m launch.sweep --config=configs/demo.py --sweep=progressive --workdir_root=/tmp/sweeps/prog

Arg tokens: phi=<float> (default -3), epochs=<float> (default 30), `progressive` (4 stages, 16 → 16 → 32 → 32 px,
with growing regularization), `canvas` (data.name='digits_canvas': the digits at 8-12 px on noisy 32 px canvases,
effnet/data/digits.py; this recipe does not learn it yet, README "Does it pay off?").

The recipe is the official one except where a 674-step run on 1,438 images needs otherwise. Each suspect of the
first demo's underfitting was measured (README "The demo"; seed 0, test top-1 of the EMA weights, last train top-1):

* Learning rate: constant after the warm-up (`optim.schedule='constant'`) instead of a staircase decay. The official
  ×0.97 every 2.4 epochs is tuned for 350 ImageNet epochs; the first demo's ×0.9 per epoch left 4% of the LR for
  the last third of the run and the net underfit (train 96.1%, test 96.1%); constant: train 98.6%, test 98.1%.
  The EMA then does the averaging the decay did. This is the one change the demo makes for it.
* Measured and left official: RMSProp's mean-square starting at 1 (at 0 the net fits faster, test no better),
  stochastic depth 0.8 (off: fits, generalises worse), BN momentum 0.9 (0.99: training identical, the moving
  statistics lag more and early evals collapse), coupled L2 1e-5 and dropout 0.1 (off: within seed noise).
* `optim.ema_decay` 0.998 is never reached: the warm-up min(decay, (1+t)/(10+t)) stays below 0.99 for 674 steps,
  so the average spans the last ~t/9 steps whatever the decay.
* `optim.ema_per_stage`: with progressive learning the EMA restarts its warm-up at each stage, so the final average
  holds only weights and BN statistics of the final image size (see effnet/optim.py).
* lr_base 0.064 (4× the official per-256 rate), warm-up 2 epochs, BN momentum 0.9, float32 on a CPU.
* No augmentation (`data.train_preprocess='resize'`). Measured on seeds 0-4 against none (98.05 / 98.33 / 96.94 /
  98.33 / 98.61, mean 98.05): the small-image shift `pad_crop` (up to S/8 = one source pixel in x and y, zero fill)
  gives 97.77 / 98.89 / 88.30 / 97.77 / 94.71 (mean 95.49) with a last train top-1 of 82-92%: 674 steps cannot
  fit the shifted digits, and the spread grows. The inception crops keep 5-8% of the area (a digit cut apart) and
  RandAugment's translate constant (100 px per 10 levels) is ImageNet-sized, so neither was a better bet. No
  measured change lifts the floor yet: with today's code seeds 0 / 1 / 2 give 97.49 / 98.61 / 96.10 (README).
* `progressive.size_multiple` 16 (the paper preset's): stages 16, 16, 32, 32 px. With 8 they were 16, 24, 24, 32,
  and a step at 24 px costs about what one at 32 px does: the net's stride-16 and stride-32 feature maps are 2×2
  and 1×1 at every size from 17 to 32 px (ceil(S/16), ceil(S/32)), so only the early stages shrink (README).
"""
from effnet import config_lib
from effnet import models

SWEEP_SEEDS = (0, 1, 2)
DROPOUT = 0.1


def get_config(arg=None):
  a = config_lib.parse_arg(arg, phi=-3.0, progressive=False, canvas=False, epochs=30.0)
  c = config_lib.base_config()
  s = models.variant_settings('v2', 'b0')
  config_lib.apply_model_settings(c, s)
  width, depth, _ = models.arch.phi_coefficients(a.phi)
  c.model.variant = f'b0,phi={a.phi}'
  c.model.width_coefficient, c.model.depth_coefficient = width, depth
  c.model.num_classes = 10
  c.model.dtype = 'float32'        # bfloat16 buys nothing on a CPU
  c.model.dropout_rate = DROPOUT
  c.model.bn_momentum = 0.9

  c.data.name = 'digits_canvas' if a.canvas else 'digits'
  c.data.train_split, c.data.eval_split = 'train', 'test'
  c.data.image_size = c.data.eval_image_size = 32
  c.data.train_preprocess, c.data.eval_preprocess = 'resize', 'resize'  # pad_crop measured: underfits (docstring)
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
  c.optim.schedule = 'constant'    # the official staircase decay underfits a 674-step run (docstring)
  c.optim.ema_decay = 0.998
  c.optim.ema_per_stage = True     # progressive stages never share one average (effnet/optim.py)
  c.optim.weight_decay_rule = 'automl'

  # Progressive learning (V2 paper, Algorithm 1, the paper's rule): 4 stages, 16 → 32 px, dropout 0 → 0.1.
  c.progressive.enabled = a.progressive
  c.progressive.rule = 'paper'
  c.progressive.num_stages = 4
  c.progressive.size_min, c.progressive.size_max = 16, 32
  c.progressive.size_multiple = 16      # 16 → 16 → 32 → 32 px: the stride-16 maps change size (docstring)
  c.progressive.dropout_min, c.progressive.dropout_max = 0.0, DROPOUT
  c.progressive.randaug_min = c.progressive.randaug_max = 0.0
  c.lock()
  return c


def _progressive_settings():
  """The V2 paper's comparison: fixed size at the final size, progressive sizes without and with adaptive
  regularization; plus fixed at the first stage's size, which tells whether the data carries detail above it."""
  return [
      {},
      {'progressive.enabled': True, 'progressive.dropout_min': DROPOUT},  # regularization fixed at its final value
      {'progressive.enabled': True},
      {'data.image_size': 16, 'data.eval_image_size': 16},
  ]


def sweep(name='se'):
  """Ablations on the built-in set: 'se' (squeeze-excite on/off), 'survival' (stochastic depth off/on), 'phi',
  'progressive' (progressive learning against fixed sizes, 3 seeds each: launch.sweep prints mean ± std)."""
  if name == 'se':
    return [{'model.se_ratio': r} for r in (0.0, 0.25)]
  if name == 'survival':
    return [{'model.survival_prob': p} for p in (1.0, 0.8)]
  if name == 'phi':
    return [{'model.width_coefficient': 1.1 ** p, 'model.depth_coefficient': 1.2 ** p} for p in (-4.0, -3.0, -2.0)]
  if name == 'progressive':
    return [{**setting, 'train.seed': seed} for setting in _progressive_settings() for seed in SWEEP_SEEDS]
  raise ValueError(f'sweep name {name!r}; allowed: se, survival, phi, progressive')
