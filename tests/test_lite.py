"""EfficientNet-Lite and -EdgeTPU (tensorflow/tpu `lite/`, `edgetpu/` builders, docs/fidelity.md §1) against timm's
ports of them, and `from_timm`'s handling of timm's PyTorch-native (non-`tf_`) EfficientNets.

References, none computed by effnet: timm's parameter counts (models built on the 'meta' device, so no weights are
made or downloaded) and timm's float32 forward pass on random weights with random BN statistics
(test_convert._randomised_timm), at 64×64 to keep the suite fast.
"""
import jax
import numpy as np
import pytest
import torch
import timm  # after conftest's torchvision shim

from effnet import config_lib, models
from effnet.convert import from_timm, timm_requirements
from effnet.tools import summary
from test_convert import TOL, _config, _errors, _images, _randomised_timm, _timm_logits

TIMM_NAMES = {  # our configs/efficientnet.py variant -> timm's port of the official model
    'lite0': 'tf_efficientnet_lite0', 'lite1': 'tf_efficientnet_lite1', 'lite2': 'tf_efficientnet_lite2',
    'lite3': 'tf_efficientnet_lite3', 'lite4': 'tf_efficientnet_lite4',
    'edgetpu_s': 'tf_efficientnet_es', 'edgetpu_m': 'tf_efficientnet_em', 'edgetpu_l': 'tf_efficientnet_el',
}
PYTORCH_PADDING = dict(padding='symmetric', bn_epsilon=1e-5)  # what timm's non-tf_ ports need


def _logits(cfg, variables, x):
  """Our eval logits, jitted: on CPU one compile is about half the time of op-by-op dispatch."""
  model = models.build_model(cfg)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def test_every_new_variant_is_covered():
  assert set(TIMM_NAMES) == set(models.LITE_VARIANTS + models.EDGETPU_VARIANTS)


@pytest.mark.parametrize('variant', list(TIMM_NAMES))
def test_param_count_matches_timm(variant):
  with torch.device('meta'):
    ref = sum(p.numel() for p in timm.create_model(TIMM_NAMES[variant], pretrained=False).parameters())
  cfg = config_lib.load_config(f'configs/efficientnet.py:{variant}')
  config_lib.validate(cfg)
  ours = models.count_params(models.build_model(dict(cfg.model.to_dict(), depthwise_impl='conv')), image_size=32)
  assert ours == ref, (variant, ours, ref)


def test_official_builder_facts():
  """Widths and repeats the official builders give (fix_head_stem, EdgeTPU's round_filters(32) stem)."""
  lite4, stem, head = models.model_blocks(config_lib.load_config('configs/efficientnet.py:lite4').model)
  stage_sizes = np.bincount([b.stage for b in lite4]).tolist()
  # depth 1.8: ceil(1.8·r) for stages 2..6, stages 1 and 7 fixed at 1; width 1.4 scales blocks, not stem/head.
  assert (stem, head, stage_sizes) == (32, 1280, [1, 4, 4, 6, 6, 8, 1])
  assert all(b.spec.se_ratio is None for b in lite4) and lite4[-1].spec.output_filters == 448
  el, stem, head = models.model_blocks(config_lib.load_config('configs/efficientnet.py:edgetpu_l').model)
  assert (stem, head) == (40, 1536)  # round_filters(32 · 1.2), round_filters(1280 · 1.2)
  assert [b.spec.fused for b in el[:3]] == [True] * 3 and not any(b.has_residual for b in el[:2])  # noskip stage


@pytest.fixture(scope='module')
def converted():
  """name -> (timm model, our config, our variables) for the forward-pass comparisons."""
  cases = {'tf_efficientnet_lite0': ('lite0', {}), 'tf_efficientnet_es': ('edgetpu_s', {}),
           'efficientnet_lite0': ('lite0', PYTORCH_PADDING)}
  out = {}
  for name, (variant, over) in cases.items():
    m = _randomised_timm(name)
    cfg = _config('v1', variant, depthwise_impl='conv', **over)
    out[name] = (m, cfg, from_timm(m, cfg))
  return out


@pytest.mark.parametrize('name', ['tf_efficientnet_lite0', 'tf_efficientnet_es', 'efficientnet_lite0'])
def test_logits_match_timm(converted, name):
  m, cfg, variables = converted[name]
  x = _images(64, seed=64)
  rel, max_rel = _errors(_logits(cfg, variables, x), _timm_logits(m, x))
  print(f'\n[lite] {name} 64x64: |ours-timm|/|timm| = {rel:.3e}, max rel = {max_rel:.3e}')
  assert rel < TOL and max_rel < TOL, (name, rel, max_rel)


def test_padding_and_activation_matter(converted):
  """The comparisons above can fail: the non-tf_ weights with TF 'SAME' padding, or Lite with ReLU instead of
  ReLU6, miss timm's logits by far more than the tolerance."""
  x = _images(64, seed=64)
  m, cfg, variables = converted['efficientnet_lite0']
  rel_pad, _ = _errors(_logits(dict(cfg, padding='same'), variables, x), _timm_logits(m, x))
  m, cfg, variables = converted['tf_efficientnet_lite0']
  rel_act, _ = _errors(_logits(dict(cfg, activation='relu'), variables, x), _timm_logits(m, x))
  print(f'\n[lite] efficientnet_lite0 with same padding: {rel_pad:.3e}; tf lite0 with relu: {rel_act:.3e}')
  assert rel_pad > 10 * TOL and rel_act > 10 * TOL


def test_wrong_padding_eps_or_activation_is_refused(converted):
  m, cfg, _ = converted['efficientnet_lite0']
  with pytest.raises(ValueError, match=r"PyTorch-native.*model\.padding='symmetric' \(got 'same'\).*"
                                       r"model\.bn_epsilon=1e-05 \(got 0\.001\)"):
    from_timm(m, _config('v1', 'lite0'))
  m, cfg, _ = converted['tf_efficientnet_lite0']
  with pytest.raises(ValueError, match=r"model\.activation='relu6' \(got 'silu'\)"):
    from_timm(m, dict(cfg, activation='silu'))
  with pytest.raises(ValueError, match=r'timm_name=None.*padding or BN eps'):
    from_timm(m.state_dict(), cfg)  # a bare state dict cannot say which port it came from


@pytest.mark.parametrize('name,why', [
    ('efficientnetv2_rw_s', 'pre-release V2 layout'), ('efficientnetv2_rw_t.ra2_in1k', 'pre-release V2 layout'),
    ('efficientnet_b3_pruned', 'pruned'), ('tf_efficientnet_cc_b0_4e', 'CondConv'),
    ('efficientnet_b0_gn', 'GroupNorm'), ('efficientnet_blur_b0', 'blur-pool'), ('mobilenetv3_large_100', 'allowed')])
def test_other_timm_models_are_refused_with_the_reason(name, why):
  with pytest.raises(ValueError, match=why):
    timm_requirements(name)


@pytest.mark.parametrize('name,padding,eps,act', [
    ('tf_efficientnet_b0.ns_jft_in1k', 'same', 1e-3, 'silu'), ('efficientnet_b0', 'symmetric', 1e-5, 'silu'),
    ('efficientnetv2_s', 'symmetric', 1e-5, 'silu'), ('efficientnet_el', 'symmetric', 1e-5, 'relu'),
    ('tf_efficientnet_lite3', 'same', 1e-3, 'relu6')])
def test_requirements_follow_timm_builders(name, padding, eps, act):
  assert timm_requirements(name)[1] == dict(padding=padding, bn_epsilon=eps, activation=act)


@pytest.mark.parametrize('name', ['tf_efficientnet_em', 'efficientnet_em'])
def test_requirements_match_the_timm_modules(name):
  """What the name promises is what timm builds: stem padding, BN eps and activation read off the modules."""
  with torch.device('meta'):
    m = timm.create_model(name, pretrained=False)
  padding, eps, act = timm_requirements(name)[1].values()
  assert (m.bn1.eps, type(m.bn1.act)) == (eps, {'relu': torch.nn.ReLU}[act])
  stem_pads = m.conv_stem.padding
  assert (type(m.conv_stem).__name__, stem_pads) == (
      ('Conv2dSame', (0, 0)) if padding == 'same' else ('Conv2d', (1, 1)))  # Conv2dSame pads at run time


def test_summary_tool_prints_new_variants(capsys):
  assert summary.main(['--config=configs/efficientnet.py:edgetpu_s']) == 0
  out = capsys.readouterr().out
  assert '5,438,392' in out and '(relu)' in out and 'fused' in out and 'MACs' in out  # timm tf_efficientnet_es


@pytest.mark.parametrize('field,value,allowed', [
    ('activation', 'gelu', ("'silu'", "'relu6'", "'relu'")), ('padding', 'valid', ("'same'", "'symmetric'")),
    ('stem_filters', 0, ('None', '>= 1'))])  # (a non-bool fix_head_stem is refused by ConfigDict's type check)
def test_new_model_options_are_validated(field, value, allowed):
  c = config_lib.load_config('configs/efficientnet.py:lite0')
  c.model[field] = value
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert f'model.{field}' in msg and repr(value) in msg and all(a in msg for a in allowed), msg
