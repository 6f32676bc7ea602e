"""Model tests against numbers from outside our code: timm's parameter counts, the official formulas (rounding,
SE width, stochastic depth, TF 'SAME' padding, initialisers) and the reference's MAC table.

Everything heavy runs on shapes only (jax.eval_shape / make_jaxpr); the numeric tests use one small block.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from effnet import config_lib, models
from effnet.models import arch
from effnet.models.arch import Block, BlockSpec
from effnet.models.blocks import MBConv
from effnet.models.layers import Conv


def _base_model():
  """The whole model section of config_lib.base_config() (the one set of defaults: build_model has none)."""
  return config_lib.base_config().model.to_dict()


def _model_cfg(family, variant, **kw):
  s = models.variant_settings(family, variant)
  # 'conv' depthwise traces one op per depthwise conv instead of k·k slices ('shift', the CPU default): same
  # parameters, faster eval_shape.
  cfg = dict(_base_model(), **s, dtype='float32', depthwise_impl='conv')
  cfg.update(kw)
  return cfg


def _build(family, variant, **kw):
  return models.build_model(_model_cfg(family, variant, **kw))


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts. Source: timm 1.x, `sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())`
# for tf_efficientnet_b0..b8, tf_efficientnet_l2 and tf_efficientnetv2_{s,m,l,xl,b0..b3} (run once by hand, on the
# 'meta' device; timm is not used here). They agree with timm's results-imagenet.csv and with the reference
# (docs/fidelity.md §1). BN running statistics are buffers in torch and
# `batch_stats` here, so neither side counts them.
TIMM_PARAMS = {
    ('v1', 'b0'): 5_288_548, ('v1', 'b1'): 7_794_184, ('v1', 'b2'): 9_109_994, ('v1', 'b3'): 12_233_232,
    ('v1', 'b4'): 19_341_616, ('v1', 'b5'): 30_389_784, ('v1', 'b6'): 43_040_704, ('v1', 'b7'): 66_347_960,
    ('v1', 'b8'): 87_413_142, ('v1', 'l2'): 480_309_308,
    ('v2', 's'): 21_458_488, ('v2', 'm'): 54_139_356, ('v2', 'l'): 118_515_272, ('v2', 'xl'): 208_119_808,
    ('v2', 'b0'): 7_139_704, ('v2', 'b1'): 8_141_052, ('v2', 'b2'): 10_096_086, ('v2', 'b3'): 14_358_406,
}


def test_every_named_variant_is_covered():
  assert {v for f, v in TIMM_PARAMS if f == 'v1'} == set(models.V1_VARIANTS)
  assert {v for f, v in TIMM_PARAMS if f == 'v2'} == set(models.V2_VARIANTS)


@pytest.mark.parametrize('family,variant', sorted(TIMM_PARAMS))
def test_param_count_matches_timm_exactly(family, variant):
  # Parameter shapes do not depend on the image size; 32 px keeps eval_shape cheap even for L2.
  assert models.count_params(_build(family, variant), image_size=32) == TIMM_PARAMS[(family, variant)]


# Multiply-adds at the native (eval) resolution. Reference §6 "(calc)" rows: B0 0.39B @224, B4 4.39B @380,
# V2-S 8.37B @384, V2-M 24.58B @480 (tfprof float_ops/2, what the papers call FLOPs).
@pytest.mark.parametrize('family,variant,size,ref_b', [
    ('v1', 'b0', 224, 0.39), ('v1', 'b4', 380, 4.39), ('v2', 's', 384, 8.37), ('v2', 'm', 480, 24.58)])
def test_macs_match_reference(family, variant, size, ref_b):
  assert models.variant_settings(family, variant)['eval_image_size'] == size
  macs = models.count_macs(_build(family, variant), size)
  assert abs(macs / 1e9 - ref_b) / ref_b < 0.02, macs


# ---------------------------------------------------------------------------------------------------------------
# Rounding rules and derived widths (docs/fidelity.md §1).

def _stage_table(cfg):
  blocks, stem, head = models.model_blocks(cfg)
  outs, reps = [], []
  for b in blocks:
    if b.stage == len(reps):
      outs.append(b.spec.output_filters)
      reps.append(0)
    reps[-1] += 1
  return stem, outs, head, reps


def test_b3_ten_percent_rule():
  # 16·1.2 = 19.2 → nearest multiple of 8 is 16 < 0.9·19.2 = 17.28, so the TPU rule bumps it to 24.
  assert arch.round_filters(16, 1.2, 'tpu') == 24
  assert arch.round_filters(16, 1.2, 'automl') == 16
  stem, outs, head, reps = _stage_table(_model_cfg('v1', 'b3'))
  assert (stem, outs, head) == (40, [24, 32, 48, 96, 136, 232, 384], 1536)
  assert reps == [2, 3, 3, 5, 5, 6, 2]
  _, outs_aml, _, _ = _stage_table(_model_cfg('v1', 'b3', round_rule='automl'))
  assert outs_aml[0] == 16


@pytest.mark.parametrize('variant,stem,outs,head,reps', [
    ('b0', 32, [16, 24, 40, 80, 112, 192, 320], 1280, [1, 2, 2, 3, 3, 4, 1]),
    ('b2', 32, [16, 24, 48, 88, 120, 208, 352], 1408, [2, 3, 3, 4, 4, 5, 2]),
    ('b7', 64, [32, 48, 80, 160, 224, 384, 640], 2560, [4, 7, 7, 10, 10, 13, 4]),
    ('l2', 136, [72, 104, 176, 344, 480, 824, 1376], 5504, [6, 11, 11, 16, 16, 22, 6]),
])
def test_v1_widths_and_repeats_table(variant, stem, outs, head, reps):
  assert _stage_table(_model_cfg('v1', variant)) == (stem, outs, head, reps)


def test_v2_b3_widths_and_repeats():
  # Reference §2: v2-B3 (w1.2, d1.4, AML rounding) stem 40 | 16 40 56 112 136 232 | head 1536, repeats 2 3 3 5 7 12.
  assert _stage_table(_model_cfg('v2', 'b3')) == (40, [16, 40, 56, 112, 136, 232], 1536, [2, 3, 3, 5, 7, 12])


def test_round_repeats_is_ceil():
  assert arch.round_repeats(1, 1.1) == 2
  assert arch.round_repeats(2, 1.1) == 3       # 2.2 → 3, not round() = 2
  assert arch.round_repeats(3, 1.4) == 5       # 4.2 → 5
  assert arch.round_repeats(4, 1.0) == 4
  assert arch.round_repeats(8, 1.4) == 12      # 11.2 → 12


def test_se_width_from_block_input_filters():
  # B0 stage 2 first block: input 16, expanded 96 → SE squeezes to int(16·0.25) = 4, not int(96·0.25) = 24.
  v = models.abstract_variables(_build('v1', 'b0'), 32)['params']
  assert v['blocks_1']['se']['reduce']['kernel'].shape == (1, 1, 96, 4)
  assert v['blocks_1']['se']['expand']['kernel'].shape == (1, 1, 4, 96)
  assert v['blocks_1']['se']['reduce']['bias'].shape == (4,)          # SE convs have a bias
  # floor, and at least 1: int(24·0.3) = 7 (round would give 7 too, so also 20·0.3 = 6 and 8·0.1 = 0.8 → 1).
  cfg = dict(_base_model(), blocks=('r1_k3_s11_e6_i24_o24_se0.3', 'r1_k3_s11_e6_i24_o8_se0.1',
                                    'r1_k3_s11_e2_i8_o8_se0.1'), num_classes=0, dtype='float32')
  p = models.abstract_variables(models.build_model(cfg), 8)['params']
  assert p['blocks_0']['se']['reduce']['kernel'].shape[-1] == 7
  assert p['blocks_1']['se']['reduce']['kernel'].shape[-1] == 2      # int(24·0.1) = int(2.4)
  assert p['blocks_2']['se']['reduce']['kernel'].shape[-1] == 1      # max(1, int(0.8))


# ---------------------------------------------------------------------------------------------------------------
# Stochastic depth (docs/fidelity.md §1).

def test_survival_ramp_b0():
  blocks, _, _ = models.model_blocks(_model_cfg('v1', 'b0'))
  n = len(blocks)
  assert n == 16
  assert blocks[0].survival_prob == 1.0
  assert blocks[-1].survival_prob == pytest.approx(0.8125)
  for i, b in enumerate(blocks):
    assert b.index == i
    assert b.survival_prob == pytest.approx(1 - 0.2 * i / n)


def _block_module(spec_str, survival):
  blk = Block(index=1, stage=0, spec=BlockSpec.decode(spec_str), survival_prob=survival)
  return MBConv(blk, dtype=jnp.float32, depthwise_impl='conv')


N_DRAWS = 2000  # rng draws for the expectation test


@pytest.fixture(scope='module')
def drop_results():
  """Every stochastic-depth forward pass the tests below need, in ONE jit (XLA:CPU compiles are the slow part).

  Residual block r1_k3_s11_e6_i8_o8 (survival 0.5 and 0.8, plus p=1 for the undropped branch) and two
  non-residual blocks (stride 2; in≠out) with survival 0.5; batch 16 of 6×6 images; train-mode BN."""
  specs = {'res': 'r1_k3_s11_e6_i8_o8_se0.25', 'stride2': 'r1_k3_s22_e6_i8_o8_se0.25',
           'widen': 'r1_k3_s11_e6_i8_o16_se0.25'}
  x = jax.random.normal(jax.random.key(1), (16, 6, 6, 8), jnp.float32)

  def run(x):
    out = {}

    def variables_for(module):
      v = module.init(jax.random.key(0), x, train=False)
      # Non-trivial BN statistics and affine parameters, so that eval and train outputs differ.
      return jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.abs(jnp.sin(jnp.arange(a.size).reshape(a.shape))), v)

    def train(module, v, seed):
      y, _ = module.apply(v, x, train=True, rngs={'dropout': jax.random.key(seed)}, mutable=['batch_stats'])
      return y

    m_half, m_full, m_08 = (_block_module(specs['res'], p) for p in (0.5, 1.0, 0.8))
    v = variables_for(m_half)                      # same variable tree for every survival_prob
    out['branch'] = train(m_full, v, 0) - x        # the residual branch in train mode, never dropped
    out['half'] = jnp.stack([train(m_half, v, s) for s in range(4)]) - x
    out['mean08'] = jax.vmap(lambda s: train(m_08, v, s))(jnp.arange(N_DRAWS)).mean(0) - x
    out['eval'] = jnp.stack([m_half.apply(v, x, train=False, rngs={'dropout': jax.random.key(s)}) for s in (0, 1)])
    out['eval_full'] = m_full.apply(v, x, train=False)
    for name in ('stride2', 'widen'):
      m = _block_module(specs[name], 0.5)
      assert not m.block.has_residual
      vn = variables_for(m)
      out[name] = jnp.stack([train(m, vn, s) for s in (0, 1)])
    return out

  assert _block_module(specs['res'], 0.5).block.has_residual
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.jit(run)(x))


def test_drop_path_drops_whole_samples(drop_results):
  branch, half = drop_results['branch'], drop_results['half']
  assert np.abs(branch).max(axis=(1, 2, 3)).min() > 0.1     # the branch is non-zero for every sample
  kept = dropped = 0
  for delta in half:                                         # 4 rng draws × 16 samples, survival 0.5
    for i in range(delta.shape[0]):
      if np.all(delta[i] == 0.0):                            # dropped: output is exactly the shortcut
        dropped += 1
      else:                                                  # kept: the whole branch, scaled by 1/p = 2
        np.testing.assert_allclose(delta[i], branch[i] / 0.5, rtol=1e-4, atol=1e-5)
        kept += 1
  assert kept > 0 and dropped > 0


def test_drop_path_preserves_expectation(drop_results):
  p, n = 0.8, N_DRAWS
  branch = drop_results['branch'].reshape(16, -1)
  delta = drop_results['mean08'].reshape(16, -1)
  # Per sample the mean residual is branch·(#kept/n)/p: a scalar multiple of the branch (whole-sample drops).
  ratio = (delta * branch).sum(1) / (branch * branch).sum(1)
  np.testing.assert_allclose(delta, ratio[:, None] * branch, atol=1e-4)
  # Each sample's #kept ~ Binomial(n, p), so its ratio has mean 1 and sd sqrt((1-p)/(p·n)) = 0.011 for n = 2000,
  # p = 0.8. 5 sd per sample, and 5 sd/√16 for the mean over the 16 independent samples (false-failure odds < 1e-5).
  sd = math.sqrt((1 - p) / (p * n))
  assert np.all(np.abs(ratio - 1.0) < 5 * sd)
  assert abs(ratio.mean() - 1.0) < 5 * sd / math.sqrt(16)


@pytest.mark.parametrize('name', ['stride2', 'widen'])
def test_no_drop_path_without_residual(drop_results, name):
  a, b = drop_results[name]                                  # train mode, survival 0.5, two different rngs
  np.testing.assert_array_equal(a, b)


def test_eval_mode_is_deterministic(drop_results):
  a, b = drop_results['eval']
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a, drop_results['eval_full'], rtol=1e-6, atol=1e-6)  # no 1/p scaling in eval


# ---------------------------------------------------------------------------------------------------------------
# TF 'SAME' padding (docs/fidelity.md §1).

def _explicit_conv(x, w, stride, pads, groups=1):
  xp = jnp.pad(x, ((0, 0), pads, pads, (0, 0)))
  return lax.conv_general_dilated(xp, w, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups, precision=lax.Precision.HIGHEST)


def tf_same_pads(n, k, s):
  """TF 'SAME' pads written out from the TF docs (independent of effnet.models.layers.same_padding)."""
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


SAME_CASES = [  # size, kernel, stride, hand-computed pads
    (8, 3, 2, (0, 1)),    # even input, stride 2: TF puts the single pad pixel at the bottom/right
    (7, 3, 2, (1, 1)),    # odd input: (4-1)·2+3-7 = 2
    (8, 5, 2, (1, 2)),    # (4-1)·2+5-8 = 3
    (7, 5, 1, (2, 2)),
]
DW_CASES = [(7, 1, 3), (8, 2, 3), (7, 2, 5), (8, 1, 5)]  # size, stride, kernel: odd/even × stride 1/2, k 3 and 5


@pytest.fixture(scope='module')
def conv_results():
  """Our Conv (dense and depthwise 'conv'/'shift') next to explicit pad + VALID convs, all in one jit."""
  def run(key):
    out = {}
    for size, kernel, stride, pads in SAME_CASES:
      x = jax.random.normal(key, (2, size, size, 3), jnp.float32)
      conv = Conv(4, kernel, stride)
      v = conv.init(jax.random.key(1), x)
      w = v['params']['kernel']
      out[('same', size, kernel, stride)] = (conv.apply(v, x), _explicit_conv(x, w, stride, pads),
                                             _explicit_conv(x, w, stride, (1, 1)))
    for size, stride, kernel in DW_CASES:
      x = jax.random.normal(key, (2, size, size, 6), jnp.float32)
      conv = Conv(6, kernel, stride, depthwise=True, depthwise_impl='conv')
      v = conv.init(jax.random.key(1), x)
      out[('dw', size, stride, kernel)] = (
          conv.apply(v, x), conv.clone(depthwise_impl='shift').apply(v, x),
          _explicit_conv(x, v['params']['kernel'], stride, tf_same_pads(size, kernel, stride), groups=6),
          v['params']['kernel'].shape)
      # model.padding='symmetric' (timm's PyTorch-native ports): torch pads (k-1)//2 per side for odd k, s 1 or 2.
      sym = conv.clone(padding='symmetric')
      out[('dw_sym', size, stride, kernel)] = (
          sym.apply(v, x), sym.clone(depthwise_impl='shift').apply(v, x),
          _explicit_conv(x, v['params']['kernel'], stride, ((kernel - 1) // 2,) * 2, groups=6))
    return out
  res = jax.jit(run)(jax.random.key(0))
  return jax.tree_util.tree_map(np.asarray, res)


@pytest.mark.parametrize('size,kernel,stride,pads', SAME_CASES)
def test_conv_tf_same_padding(conv_results, size, kernel, stride, pads):
  assert tf_same_pads(size, kernel, stride) == pads
  ours, ref, sym = conv_results[('same', size, kernel, stride)]
  out = -(-size // stride)
  assert ours.shape == ref.shape == (2, out, out, 4)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  if pads == (0, 1):   # a symmetric (1,1) pad (PyTorch style) gives a different answer on even inputs
    assert not np.allclose(ours, sym[:, :out, :out], atol=1e-3)


@pytest.mark.parametrize('size,stride,kernel', DW_CASES)
def test_depthwise_shift_equals_conv(conv_results, size, stride, kernel):
  conv, shift, ref, kshape = conv_results[('dw', size, stride, kernel)]
  assert tuple(kshape) == (kernel, kernel, 1, 6)              # TF [k,k,C,1] → Flax [k,k,1,C]
  assert conv.shape == (2, -(-size // stride), -(-size // stride), 6)
  np.testing.assert_allclose(conv, shift, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size,stride,kernel', DW_CASES)
def test_symmetric_padding_is_pytorchs(conv_results, size, stride, kernel):
  conv, shift, ref = conv_results[('dw_sym', size, stride, kernel)]
  assert conv.shape == ref.shape == shift.shape
  np.testing.assert_allclose(conv, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(shift, ref, rtol=1e-4, atol=1e-4)

# ---------------------------------------------------------------------------------------------------------------
# Dtypes and features.

def test_bfloat16_policy():
  module = _build('v1', 'b0', dtype='bfloat16')
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda k, im: module.init(k, im, train=False), jax.random.key(0), x)
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  assert {str(l.dtype) for _, l in leaves} == {'float32'}
  assert any(p[0].key == 'batch_stats' for p, _ in leaves)
  logits, feats = jax.eval_shape(lambda v, im: module.apply(v, im, train=False, return_features=True), variables, x)
  assert logits.dtype == jnp.float32
  for name in ['stem', 'head'] + [f'stage_{i}' for i in range(1, 8)]:
    assert feats[name].dtype == jnp.bfloat16, name
  # Training too: logits float32, updated BN statistics float32.
  (logits, upd) = jax.eval_shape(
      lambda v, im: module.apply(v, im, train=True, rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats']),
      variables, x)
  assert logits.dtype == jnp.float32
  assert {str(l.dtype) for l in jax.tree_util.tree_leaves(upd)} == {'float32'}


def test_return_features_b0_224():
  module = _build('v1', 'b0')
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = models.abstract_variables(module, 224)
  logits, feats = jax.eval_shape(lambda v, im: module.apply(v, im, return_features=True), variables, x)
  assert logits.shape == (1, 1000)
  sizes = [112, 56, 28, 14, 14, 7, 7]
  widths = [16, 24, 40, 80, 112, 192, 320]
  assert sorted(k for k in feats if k.startswith('stage_')) == [f'stage_{i}' for i in range(1, 8)]
  for i, (s, w) in enumerate(zip(sizes, widths), start=1):
    assert feats[f'stage_{i}'].shape == (1, s, s, w)
  assert feats['stem'].shape == (1, 112, 112, 32)
  assert feats['head'].shape == (1, 7, 7, 1280)
  assert feats['pooled'].shape == (1, 1280)


# ---------------------------------------------------------------------------------------------------------------
# Fast initialisation (docs/fidelity.md §1).

def test_init_variables_matches_module_init_and_tf_initialisers():
  module = _build('v1', 'b0')
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  expected = jax.eval_shape(lambda k, im: module.init(k, im, train=False), jax.random.key(0), x)
  got = models.init_variables(module, jax.random.key(0), image_size=32)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(expected)):
    assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)

  p, bs = got['params'], got['batch_stats']

  def check_normal(w, fan_out):
    w = np.asarray(w, np.float64).ravel()
    std = math.sqrt(2.0 / fan_out)
    # sample sd of n normals has relative sd 1/sqrt(2n); 6 sd bounds (n >= 10k here → < 4.3%).
    assert abs(w.std() / std - 1) < 6 / math.sqrt(2 * w.size), (w.std(), std)
    assert abs(w.mean()) < 6 * std / math.sqrt(w.size)
    # Not truncated (TF's conv_kernel_initializer is a plain normal; keras' truncated one stops at 2 sd).
    assert np.abs(w).max() > 3 * std

  check_normal(p['head_conv']['kernel'], 1 * 1 * 1280)                 # 1x1, 320→1280
  check_normal(p['blocks_15']['project_conv']['kernel'], 1 * 1 * 320)    # 1x1, 1152→320
  check_normal(p['blocks_15']['dw_conv']['kernel'], 3 * 3)               # depthwise [3,3,1,1152]: fan_out k·k
  check_normal(p['blocks_14']['dw_conv']['kernel'], 5 * 5)               # depthwise 5x5, 1152 channels
  dense = np.asarray(p['head_dense']['kernel'])
  lim = 1 / math.sqrt(1000)
  assert dense.shape == (1280, 1000)
  assert dense.min() >= -lim and dense.max() <= lim
  assert dense.min() < -0.99 * lim and dense.max() > 0.99 * lim
  assert abs(dense.std() / (lim / math.sqrt(3)) - 1) < 0.01             # uniform sd = lim/sqrt(3)
  np.testing.assert_array_equal(p['head_dense']['bias'], 0.0)
  for path, leaf in jax.tree_util.tree_leaves_with_path(p):
    name = path[-1].key
    if name == 'scale':
      np.testing.assert_array_equal(leaf, 1.0)
    elif name == 'bias':
      np.testing.assert_array_equal(leaf, 0.0)
  for path, leaf in jax.tree_util.tree_leaves_with_path(bs):
    np.testing.assert_array_equal(leaf, 0.0 if path[-1].key == 'mean' else 1.0)
  # Different draws for different variables (no accidental reuse of one slice).
  assert not np.allclose(np.asarray(p['blocks_1']['dw_conv']['kernel']).ravel()[:50] / math.sqrt(2 / 9),
                         np.asarray(p['blocks_2']['dw_conv']['kernel']).ravel()[:50] / math.sqrt(2 / 9))


# ---------------------------------------------------------------------------------------------------------------
# Compound scaling φ (docs/fidelity.md §1; configs/efficientnet.py:phi=...).

def _phi_cfg(phi):
  return _model_cfg('v1', f'phi={phi}')


def test_phi_macs_grow_about_two_to_the_phi():
  macs = {}
  for phi in (0, 1, 2):
    s = models.variant_settings('v1', f'phi={phi}')
    macs[phi] = models.count_macs(models.build_model(_phi_cfg(phi)), s['eval_image_size'])
  assert models.variant_settings('v1', 'phi=0')['width_coefficient'] == 1.0   # φ=0 is B0
  # Measured: MACs(1)/MACs(0) = 2.229 and MACs(2)/MACs(0) = 4.693, i.e. 1.16× and 1.27× the ideal 1.92^φ
  # (α·β²·γ² = 1.2·1.1²·1.15² = 1.92, not 2). The excess comes from rounding, which is mostly upward:
  # repeats are rounded UP per stage (ceil(1.2·1) = 2 doubles stages 1 and 7 at φ=1; ceil(1.44·r) adds up to +39%
  # per stage at φ=2), while width (nearest multiple of 8, e.g. 1.1·16 → 16, 1.1·40 → 48) and resolution
  # (nearest multiple of 8: 257.6 → 256, 296.2 → 296, ±1.5% in r², i.e. ±3% in MACs) move it a few % either way.
  # Bound: from 0.9·1.92^φ (widths/resolution rounding down a little) to 1.4·1.92^φ (repeat ceiling at φ ≤ 2).
  for phi in (1, 2):
    ratio = macs[phi] / macs[0]
    assert 0.9 * 1.92 ** phi <= ratio <= 1.4 * 1.92 ** phi, (phi, ratio)
  assert macs[0] < macs[1] < macs[2]


def _all_widths(cfg):
  blocks, stem, head = models.model_blocks(cfg)
  return [stem, head] + [w for b in blocks for w in (b.spec.input_filters, b.spec.output_filters)]


def test_negative_phi_builds_smaller_model_with_min_8_channels():
  for phi in (-2, -50):
    cfg = _phi_cfg(phi)
    s = models.variant_settings('v1', f'phi={phi}')
    assert s['width_coefficient'] < 1 and s['depth_coefficient'] < 1 and s['image_size'] < 224
    assert min(_all_widths(cfg)) >= 8
    module = models.build_model(cfg)
    assert models.count_params(module, 32) < TIMM_PARAMS[('v1', 'b0')]
    size = s['eval_image_size']
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    _, feats = jax.eval_shape(lambda v, im: module.apply(v, im, return_features=True),
                              models.abstract_variables(module, size), x)
    assert all(f.shape[-1] >= 8 for k, f in feats.items() if k != 'pooled')
  assert min(_all_widths(_phi_cfg(-50))) == 8
  blocks, _, _ = models.model_blocks(_phi_cfg(-50))
  assert len(blocks) == 7                                            # ceil keeps one block per stage


# ---------------------------------------------------------------------------------------------------------------
# Bad input → ValueError naming the field and the allowed values (CONTRACT). Model fields are checked by
# config_lib.validate before anything is built; variant names and block strings also by the functions that parse
# them (variant_settings, BlockSpec.decode).

def _validate(family, variant, **model_fields):
  c = config_lib.base_config()
  config_lib.apply_model_settings(c, models.variant_settings(family, variant))
  c.model.update(model_fields)
  config_lib.validate(c)


@pytest.mark.parametrize('make,field,allowed', [
    (lambda: models.variant_settings('v1', 'b9'), 'model.variant', "'b0'"),
    (lambda: models.variant_settings('v2', 'xxl'), 'model.variant', "'s'"),
    (lambda: models.variant_settings('v3', 'b0'), 'model.family', "'v1'"),
    (lambda: models.variant_settings('v1', 'phi=abc'), 'model.variant', 'phi'),
    (lambda: _validate('v1', 'b0', width_coefficient=-1.0), 'model.width_coefficient', '> 0'),
    (lambda: _validate('v1', 'b0', depth_coefficient=0.0), 'model.depth_coefficient', '> 0'),
    (lambda: _validate('v1', 'b0', dtype='int8'), 'model.dtype', "'bfloat16'"),
    (lambda: _validate('v1', 'b0', depthwise_impl='fft'), 'model.depthwise_impl', "'shift'"),
    (lambda: _validate('v1', 'b0', round_rule='floor'), 'model.round_rule', "'automl'"),
    (lambda: _validate('v1', 'b0', survival_prob=0.0), 'model.survival_prob', '(0, 1]'),
    (lambda: _validate('v1', 'b0', dropout_rate=1.0), 'model.dropout_rate', '[0, 1)'),
    (lambda: _build('v1', 'b0', blocks=('r1_k3_s11_e1_i32_o16_zz3',)), 'model.blocks', "'se'"),
    (lambda: _build('v1', 'b0', blocks=('r1_k4_s11_e1_i32_o16',)), 'model.blocks', 'odd'),
    (lambda: _build('v1', 'b0', blocks=('r1_k3_s33_e1_i32_o16',)), 'model.blocks', '1 or 2'),
    (lambda: _build('v1', 'b0', blocks=('r1_k3_s12_e1_i32_o16',)), 'model.blocks', 'stride'),
    (lambda: _validate('v1', 'b0', blocks=()), 'model.blocks', 'r1_k3'),
])
def test_bad_input_raises_value_error_naming_field(make, field, allowed):
  with pytest.raises(ValueError) as e:
    make()
  msg = str(e.value)
  assert field in msg and allowed in msg, msg


@pytest.mark.parametrize('text', ['r1_k3_s11_e1_i32_o16_SE0.25', 'r1_k3_s11_e1_i32'])
def test_malformed_block_string_lists_format(text):
  with pytest.raises(ValueError) as e:
    BlockSpec.decode(text)
  assert 'model.blocks' in str(e.value) and 'allowed' in str(e.value), str(e.value)
