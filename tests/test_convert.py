"""effnet.convert.from_timm against timm's own forward pass (the reference: timm's `tf_*` ports of the official TF
models, docs/fidelity.md §1 (padding, BN ε, depthwise layout) and §7).

The timm models get random weights and random BN statistics, so a wrong eps, a mean/var swap or a transposed
kernel changes the logits; the odd input size exercises TF-SAME's asymmetric stride-2 padding (timm Conv2dSame).
The last BN of every residual branch is halved: with U(0.5, 1.5) BN scales the random 40-block V2-S grows its
activations to ~1e7 and turns chaotic (timm float32 vs timm float64 differ by ~60%), which would test nothing.
"""
import numpy as np
import pytest
import torch
import timm  # after conftest's torchvision shim

from effnet.config_lib import base_config
from effnet.convert import from_timm
from effnet.models import build_model, variant_settings

MODELS = {  # timm name -> (family, variant)
    'tf_efficientnet_b0': ('v1', 'b0'),
    'tf_efficientnetv2_s': ('v2', 's'),
    'tf_efficientnetv2_b0': ('v2', 'b0'),
}
B0 = 'tf_efficientnet_b0'  # a bare state dict needs the name of the timm model it came from
SIZES = (67, 64)  # odd and even: stride-2 TF-SAME pads (1,1) vs (0,1)
TOL = 1e-4


def _config(family, variant, **over):
  return {**base_config().model.to_dict(), **variant_settings(family, variant), 'num_classes': 1000,
          'dtype': 'float32', 'depthwise_impl': 'conv', **over}


def _randomised_timm(name, seed=0):
  torch.manual_seed(seed)
  m = timm.create_model(name, pretrained=False)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        n = mod.num_features
        mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
        mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    for stage in m.blocks:
      for blk in stage:
        if blk.has_skip:
          last_bn = [x for x in blk.modules() if isinstance(x, torch.nn.BatchNorm2d)][-1]
          last_bn.weight.mul_(0.5)
          last_bn.bias.mul_(0.5)
  return m.eval()


def _images(size, seed):
  return np.random.RandomState(seed).standard_normal((2, size, size, 3)).astype(np.float32)


def _timm_logits(m, x_nhwc):
  with torch.no_grad():
    return m(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _errors(ours, ref):
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  return (float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
          float(np.abs(ours - ref).max() / np.abs(ref).max()))


@pytest.fixture(scope='module')
def timm_models():
  return {name: _randomised_timm(name) for name in MODELS}


@pytest.fixture(scope='module')
def b0_state(timm_models):
  return timm_models['tf_efficientnet_b0'].state_dict()


@pytest.mark.parametrize('name', list(MODELS))
def test_logits_match_timm(timm_models, name):
  m = timm_models[name]
  cfg = _config(*MODELS[name])
  variables = from_timm(m, cfg)
  model = build_model(cfg)
  for size in SIZES:
    x = _images(size, seed=size)
    ref = _timm_logits(m, x)
    ours = model.apply(variables, x, train=False)
    assert ours.shape == ref.shape == (2, 1000)
    rel, max_rel = _errors(ours, ref)
    print(f'\n[convert] {name} {size}x{size}: |ours-timm|/|timm| = {rel:.3e}, '
          f'max|ours-timm|/max|timm| = {max_rel:.3e}')
    assert rel < TOL, (name, size, rel)


def test_shift_depthwise_and_bn_eps_sensitivity(timm_models):
  """depthwise_impl='shift' gives timm's logits too; BN eps 1e-5 (Flax default) must fail the tolerance by >10x,
  which shows the random BN statistics make the comparison sensitive to it."""
  m = timm_models['tf_efficientnet_b0']
  cfg = _config('v1', 'b0')
  variables = from_timm(m, cfg)
  x = _images(67, seed=67)
  ref = _timm_logits(m, x)
  shift = build_model(dict(cfg, depthwise_impl='shift')).apply(variables, x, train=False)
  rel, max_rel = _errors(shift, ref)
  print(f'\n[convert] tf_efficientnet_b0 67x67 depthwise_impl=shift: |ours-timm|/|timm| = {rel:.3e}, '
        f'max rel = {max_rel:.3e}')
  assert rel < TOL
  wrong_eps = build_model(dict(cfg, bn_epsilon=1e-5)).apply(variables, x, train=False)
  rel_eps, _ = _errors(wrong_eps, ref)
  print(f'[convert] same with bn_epsilon=1e-5: {rel_eps:.3e}')
  assert rel_eps > 10 * TOL


def test_numpy_state_dict_and_output_layout(b0_state):
  cfg = _config('v1', 'b0')
  from_torch = from_timm(b0_state, cfg, timm_name=B0)
  from_np = from_timm({k: v.numpy() for k, v in b0_state.items()}, cfg, timm_name=B0)
  assert set(from_torch) == {'params', 'batch_stats'}
  np.testing.assert_array_equal(from_torch['params']['blocks_1']['dw_conv']['kernel'],
                                from_np['params']['blocks_1']['dw_conv']['kernel'])
  # Layouts, element by element: OIHW -> HWIO, depthwise [C,1,k,k] -> [k,k,1,C], Linear [out,in] -> [in,out].
  stem = b0_state['conv_stem.weight'].numpy()  # [32, 3, 3, 3]
  assert from_np['params']['stem_conv']['kernel'][2, 1, 0, 5] == stem[5, 0, 2, 1]
  dw = b0_state['blocks.1.0.conv_dw.weight'].numpy()  # [96, 1, 3, 3]
  assert from_np['params']['blocks_1']['dw_conv']['kernel'].shape == (3, 3, 1, 96)
  assert from_np['params']['blocks_1']['dw_conv']['kernel'][0, 2, 0, 7] == dw[7, 0, 0, 2]
  fc = b0_state['classifier.weight'].numpy()  # [1000, 1280]
  assert from_np['params']['head_dense']['kernel'][11, 3] == fc[3, 11]
  np.testing.assert_array_equal(from_np['batch_stats']['blocks_1']['dw_bn']['var'],
                                b0_state['blocks.1.0.bn2.running_var'].numpy())
  np.testing.assert_array_equal(from_np['params']['blocks_1']['se']['reduce']['bias'],
                                b0_state['blocks.1.0.se.conv_reduce.bias'].numpy())


def test_wrong_width_names_first_mismatched_tensor(b0_state):
  # Width 1.1 keeps stem 32 and stages 1-2 at 16/24 (round_filters), but stage 3 goes 40 -> 48: the first tensor
  # that disagrees is stage 3's project conv (global block 3), after its expand, depthwise and SE tensors matched.
  with pytest.raises(ValueError) as e:
    from_timm(b0_state, _config('v1', 'b0', width_coefficient=1.1), timm_name=B0)
  msg = str(e.value)
  assert 'blocks.2.0.conv_pwl.weight' in msg and 'blocks_3/project_conv/kernel' in msg
  assert '(40, 144, 1, 1)' in msg and '(1, 1, 144, 48)' in msg


def test_missing_and_unexpected_keys_are_named(b0_state):
  cfg = _config('v1', 'b0')
  sd = dict(b0_state)
  del sd['blocks.4.1.bn2.running_var']
  with pytest.raises(ValueError, match=r"missing key.*'blocks\.4\.1\.bn2\.running_var'"):
    from_timm(sd, cfg, timm_name=B0)
  sd = dict(b0_state, **{'blocks.6.1.conv_pw.weight': np.zeros((1, 1, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected key.*'blocks\.6\.1\.conv_pw\.weight'"):
    from_timm(sd, cfg, timm_name=B0)
  # Depth 1.1 turns stage 1's single block into two (ceil(1.1)): the extra block's first tensor is missing.
  with pytest.raises(ValueError, match=r"missing key.*'blocks\.0\.1\.conv_dw\.weight'"):
    from_timm(b0_state, _config('v1', 'b0', depth_coefficient=1.1), timm_name=B0)
  # A head with another class count.
  with pytest.raises(ValueError, match=r"'classifier\.weight'.*head_dense/kernel"):
    from_timm(b0_state, _config('v1', 'b0', num_classes=10), timm_name=B0)
