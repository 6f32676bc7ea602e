r"""Training-aware architecture search (`python -m launch.search`): the V2 search space, the proxy training budget,
the step-time benchmark, the objectives and the scaling of the result.

  python -m launch.search --config=configs/search_space.py --workdir=/tmp/search          # demo: digits, CPU-sized
  python -m launch.search --config=configs/search_space.py:tiny --workdir=/tmp/search_tiny  # seconds per candidate
  python -m launch.search --config=configs/search_space.py:imagenet --workdir=gs://B/search --backend=tpu ...

Arg tokens: the preset `demo` (default: V2-B0's stages around configs/demo.py on digits), `tiny` (a 2-stage
backbone at 16 px, 2 steps: tests and smoke runs), `imagenet` (V2-B0 backbone, configs/efficientnetv2.py:b0 at
128 px for 10 epochs, as in V2 §3.3). Any field can be overridden with `--set section.field=value`.
"""
import ml_collections
from ml_collections import config_dict

from effnet import config_lib
from effnet.models import arch

TINY_BACKBONE = ('r1_k3_s1_e1_i16_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25')


def get_config(arg=None):
  a = config_lib.parse_arg(arg, preset='demo')
  if a.preset not in PRESETS:
    raise ValueError(f'config arg preset={a.preset!r}; allowed: {", ".join(PRESETS)}')
  c = ml_collections.ConfigDict()
  # The trainer config every candidate starts from, and 'section.field=value' overrides applied to every candidate
  # run and every emitted config (not the proxy budget).
  c.base_config = 'configs/demo.py'
  c.base_overrides = ()

  # V2 §3.3: per stage op ∈ {mbconv, fused}, #layers, kernel ∈ {3, 5}, expansion ∈ {1, 4, 6}; channels and strides
  # are the backbone's; no pooling-skip ops; SE on MBConv stages only.
  c.space = ml_collections.ConfigDict(dict(
      backbone=arch.V2_BASE_BLOCKS, ops=('mbconv', 'fused'), kernels=(3, 5), expansions=(1, 4, 6),
      layers=((1, 2), (1, 4), (1, 4), (2, 6), (3, 10), (4, 16)),  # (min, max) per stage; None: (⌈r/2⌉, 2r)
      se_ratio=0.25, fused_se_ratio=config_dict.placeholder(float)))

  c.search = ml_collections.ConfigDict(dict(
      num_candidates=16, seed=0,
      train_reference=True))  # also train the backbone (its accuracy in the table); False: only its step time

  # Proxy budget: reduced image size and steps (V2: ~10 epochs at reduced size). total_steps wins over num_epochs.
  c.proxy = ml_collections.ConfigDict(dict(
      image_size=24, eval_image_size=24, batch_size=64, total_steps=config_dict.placeholder(int), num_epochs=5.0,
      overrides=()))

  # Step time S: effnet.tools.benchmark.run on the candidate's device, median over `repeats` of `num_steps` steps
  # after `warmup`; batch/image 0 = the proxy run's.
  c.step_time = ml_collections.ConfigDict(dict(batch_size=0, image_size=0, num_steps=20, warmup=3, repeats=3))

  # V2 reward A·S^w·P^v; P divided by the reference's params ('reference') or raw ('raw', the paper's literal
  # formula): the ranking is the same. V1 ACC·(MACs/T)^w, T = target_macs or the reference's MACs, counted at
  # macs_image_size (None: the base config's eval size).
  c.objective = ml_collections.ConfigDict(dict(
      w=-0.07, v=-0.05, param_norm='reference', v1_w=-0.07, v1_beta=config_dict.placeholder(float),
      target_macs=config_dict.placeholder(float), macs_image_size=config_dict.placeholder(int)))

  # V2 non-uniform scaling of the best architecture: compound scaling from the base (base_config, None = the
  # search's), image sizes capped at max_image_size, round(extra_layers_per_phi[j]·φ) extra layers in the last
  # len(extra_layers_per_phi) stages.
  c.scaling = ml_collections.ConfigDict(dict(
      enabled=True, base_config=config_dict.placeholder(str), phis=(1.0, 2.0, 3.0, 4.0), max_image_size=480,
      size_multiple=16, extra_layers_per_phi=(1.0, 2.0), alpha=arch.ALPHA, beta=arch.BETA, gamma=arch.GAMMA))

  PRESETS[a.preset](c)
  c.lock()
  return c


def _demo(c) -> None:
  """The defaults above: V2-B0's stages around configs/demo.py on digits."""
  del c


def _tiny(c) -> None:
  """A 2-stage backbone at 16 px, 2 steps per candidate: tests and smoke runs."""
  c.space.backbone = TINY_BACKBONE
  c.space.layers = ((1, 2), (1, 2))
  c.base_overrides = ('model.head_filters=64', 'model.width_coefficient=1.0', 'model.depth_coefficient=1.0',
                      'data.image_size=16', 'data.eval_image_size=16', 'train.batch_size=16')
  c.search.num_candidates = 3
  c.search.train_reference = False
  c.proxy.image_size = c.proxy.eval_image_size = 16
  c.proxy.batch_size = 16
  c.proxy.total_steps = 2
  c.step_time.num_steps, c.step_time.warmup, c.step_time.repeats = 3, 1, 1
  c.scaling.phis = (1.0, 2.0)


def _imagenet(c) -> None:
  """V2 §3.3: the V2-B0 backbone, configs/efficientnetv2.py:b0 at 128 px for 10 epochs, up to 1000 models."""
  c.base_config = 'configs/efficientnetv2.py:b0'
  c.proxy.overrides = ('progressive.enabled=false',)  # one fixed proxy size; emitted configs keep the recipe's
  c.search.num_candidates = 1000
  c.proxy.image_size = c.proxy.eval_image_size = 128
  c.proxy.batch_size = 0          # keep the recipe's batch
  c.proxy.num_epochs = 10.0
  c.objective.target_macs = 400e6  # EfficientNet-B0's target (MnasNet objective)
  c.objective.macs_image_size = 224


PRESETS = {'demo': _demo, 'tiny': _tiny, 'imagenet': _imagenet}
