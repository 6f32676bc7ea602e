"""effnet.progressive against the V2 paper (Table 6) and google/automl main.py (docs/fidelity.md §4).

Every expected number below is written from the reference tables / formulas by hand, not produced by the module.
"""
import dataclasses

import jax
import numpy as np
import pytest

from effnet import config_lib
from effnet import progressive as pg

N = 1000  # total steps for the boundary tests
ENDS = [250, 500, 750, 1000]  # int((i+1)/4 * 1000)


def _config(variant, preset_rule, **kw):
  """A whole config (config_lib.base_config, the one set of defaults) with the variant's schedule switched on."""
  c = config_lib.base_config()
  c.progressive.update(pg.presets(variant, preset_rule))
  c.progressive.enabled = True
  c.progressive.update(kw)
  return c


def _cfg(variant, preset_rule, **kw):
  return _config(variant, preset_rule, **kw).progressive


def _col(stages, field):
  return [getattr(s, field) for s in stages]


def _build(variant, preset_rule, train_size=None, base_batch=4096, total=N, **kw):
  cfg = _cfg(variant, preset_rule, **kw)
  return pg.build_stages(cfg, total, train_size or cfg.size_max, base_batch)


# ----------------------------------------------------------------------------------------------------------------------
# 'code' rule (AML main.py): size_i = int(128 + (S-128)*(i+1)/4), RA linspace(5, ram, 4), mixup=cutmix linspace(0, a, 4)
# ----------------------------------------------------------------------------------------------------------------------
def test_code_rule_v2_s():
  st = _build('s', 'code')
  assert _col(st, 'image_size') == [171, 214, 257, 300]
  np.testing.assert_allclose(_col(st, 'randaug_magnitude'), [5, 20 / 3, 25 / 3, 10], rtol=1e-12)
  assert _col(st, 'mixup_alpha') == [0, 0, 0, 0] and _col(st, 'cutmix_alpha') == [0, 0, 0, 0]
  assert _col(st, 'dropout_rate') == [0.2] * 4  # not scheduled: the model's 0.2
  assert _col(st, 'end_step') == ENDS and _col(st, 'start_step') == [0] + ENDS[:3]
  assert _col(st, 'batch_size') == [4096] * 4 and _col(st, 'index') == [0, 1, 2, 3]


def test_code_rule_v2_m_l_xl():
  m = _build('m', 'code')
  assert _col(m, 'image_size') == [192, 256, 320, 384]
  np.testing.assert_allclose(_col(m, 'randaug_magnitude'), [5, 25 / 3, 35 / 3, 15], rtol=1e-12)
  np.testing.assert_allclose(_col(m, 'mixup_alpha'), [0, 0.2 / 3, 0.4 / 3, 0.2], rtol=1e-12)
  np.testing.assert_allclose(_col(m, 'cutmix_alpha'), [0, 0.2 / 3, 0.4 / 3, 0.2], rtol=1e-12)
  assert _col(m, 'dropout_rate') == [0.3] * 4
  for v in ('l', 'xl'):
    s = _build(v, 'code')
    assert _col(s, 'image_size') == [192, 256, 320, 384]
    np.testing.assert_allclose(_col(s, 'randaug_magnitude'), [5, 10, 15, 20], rtol=1e-12)
    np.testing.assert_allclose(_col(s, 'mixup_alpha'), [0, 1 / 6, 1 / 3, 0.5], rtol=1e-12)
    assert _col(s, 'dropout_rate') == [0.4] * 4


@pytest.mark.parametrize('variant,sizes,dropout', [
    ('b0', [144, 160, 176, 192], 0.2), ('b1', [144, 160, 176, 192], 0.2),
    ('b2', [148, 168, 188, 208], 0.3), ('b3', [156, 184, 212, 240], 0.3)])
def test_code_rule_v2_b(variant, sizes, dropout):
  st = _build(variant, 'code')
  assert _col(st, 'image_size') == sizes
  assert _col(st, 'dropout_rate') == [dropout] * 4
  assert _col(st, 'mixup_alpha') == [0, 0, 0, 0]


def test_code_rule_size_multiple_16():
  # 171 -> 176 (10.69 -> 11), 214 -> 208 (13.375 -> 13), 257 -> 256; last stage stays the target 300.
  st = _build('s', 'code', size_multiple=16)
  assert _col(st, 'image_size') == [176, 208, 256, 300]


def test_code_rule_uses_train_size_when_size_max_is_none():
  cfg = config_lib.base_config().progressive
  cfg.rule, cfg.size_multiple = 'code', 0
  assert cfg.size_max is None
  st = pg.build_stages(cfg, N, 300, 256)
  assert _col(st, 'image_size') == [171, 214, 257, 300]
  assert _col(st, 'dropout_rate') == [None] * 4  # keep config.model.dropout_rate


# ----------------------------------------------------------------------------------------------------------------------
# 'paper' rule (Table 6, Algorithm 1): S_i = S0 + (Se-S0)*i/3
# ----------------------------------------------------------------------------------------------------------------------
def test_paper_rule_v2_s():
  st = _build('s', 'paper')
  # raw 128, 185.33, 242.67, 300 -> nearest multiple of 16: 128, 192, 240; last = 300.
  assert _col(st, 'image_size') == [128, 192, 240, 300]
  np.testing.assert_allclose(_col(st, 'randaug_magnitude'), [5, 25 / 3, 35 / 3, 15], rtol=1e-12)
  np.testing.assert_allclose(_col(st, 'dropout_rate'), [0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3], rtol=1e-12)
  assert _col(st, 'mixup_alpha') == [0, 0, 0, 0] and _col(st, 'cutmix_alpha') == [0, 0, 0, 0]
  assert _col(st, 'end_step') == ENDS
  unrounded = _build('s', 'paper', size_multiple=0)
  assert _col(unrounded, 'image_size') == [128, 185, 243, 300]


def test_paper_rule_v2_m_l():
  m = _build('m', 'paper')
  # raw 128, 212, 296, 380 -> 128, 208 (13.25), 304 (18.5 rounds half up), 380.
  assert _col(m, 'image_size') == [128, 208, 304, 380]
  np.testing.assert_allclose(_col(m, 'randaug_magnitude'), [5, 10, 15, 20], rtol=1e-12)
  np.testing.assert_allclose(_col(m, 'mixup_alpha'), [0, 0.2 / 3, 0.4 / 3, 0.2], rtol=1e-12)
  np.testing.assert_allclose(_col(m, 'dropout_rate'), [0.1, 0.2, 0.3, 0.4], rtol=1e-12)
  assert _col(m, 'cutmix_alpha') == [0, 0, 0, 0]
  ll = _build('l', 'paper')
  assert _col(ll, 'image_size') == [128, 208, 304, 380]
  np.testing.assert_allclose(_col(ll, 'randaug_magnitude'), [5, 5 + 20 / 3, 5 + 40 / 3, 25], rtol=1e-12)
  np.testing.assert_allclose(_col(ll, 'mixup_alpha'), [0, 0.4 / 3, 0.8 / 3, 0.4], rtol=1e-12)
  np.testing.assert_allclose(_col(ll, 'dropout_rate'), [0.1, 0.1 + 0.4 / 3, 0.1 + 0.8 / 3, 0.5], rtol=1e-12)


def test_one_stage_and_three_stages():
  one = _build('s', 'paper', num_stages=1)
  assert len(one) == 1 and one[0].image_size == 300 and one[0].randaug_magnitude == 15
  assert (one[0].start_step, one[0].end_step) == (0, N)
  three = _build('s', 'code', num_stages=3)
  # int(128 + 172/3) = 185, int(128 + 344/3) = 242, 300; ends int(1/3*1000) = 333, 666, 1000
  assert _col(three, 'image_size') == [185, 242, 300]
  assert _col(three, 'end_step') == [333, 666, 1000]


# ----------------------------------------------------------------------------------------------------------------------
# stage_at: pure function of the global step (resume lands in the same stage)
# ----------------------------------------------------------------------------------------------------------------------
def test_stage_at_boundaries_and_resume():
  st = _build('s', 'code')
  assert [pg.stage_at(st, s).index for s in (0, 249, 250, 499, 500, 625, 749, 750, 999)] == [0, 0, 1, 1, 2, 2, 2, 3, 3]
  assert pg.stage_at(st, 10 ** 6) == st[-1]  # beyond the end -> last stage
  # "Resume": a freshly built schedule gives the identical stage for a mid-stage-2 step.
  again = pg.build_stages(_cfg('s', 'code'), N, 300, 4096)
  s = pg.stage_at(again, 625)
  assert s == st[2] and s.image_size == 257 and abs(s.randaug_magnitude - 25 / 3) < 1e-12
  with pytest.raises(ValueError, match='step'):
    pg.stage_at(st, -1)


def test_stage_is_frozen():
  st = _build('s', 'code')
  with pytest.raises(dataclasses.FrozenInstanceError):
    st[0].image_size = 10


def test_stage_at_skips_empty_stages():
  st = _build('s', 'code', total=2)  # ends int(0.5)=0, 1, int(1.5)=1, 2
  assert _col(st, 'end_step') == [0, 1, 1, 2]
  assert [pg.stage_at(st, s).index for s in (0, 1, 5)] == [1, 3, 3]


# ----------------------------------------------------------------------------------------------------------------------
# Per-stage batch
# ----------------------------------------------------------------------------------------------------------------------
def test_scale_batch_code_s():
  st = _build('s', 'code', scale_batch=True, batch_multiple=8)
  # 4096*(300/171)^2 = 12606.96 -> 12600; (300/214)^2 -> 8049.6 -> 8048; (300/257)^2 -> 5581.3 -> 5576; 4096
  assert _col(st, 'batch_size') == [12600, 8048, 5576, 4096]
  np.testing.assert_allclose([pg.lr_scale(s, 4096) for s in st], [12600 / 4096, 8048 / 4096, 5576 / 4096, 1.0])
  assert _col(st, 'end_step') == ENDS  # boundaries stay in steps


def test_scale_batch_paper_s_and_lr_scale_schedule():
  st = _build('s', 'paper', base_batch=256, scale_batch=True, batch_multiple=8)
  # 256*(300/128)^2 = 1406.25 -> 1400; (300/192)^2 -> 625 -> 624; (300/240)^2 -> 400; 256
  assert _col(st, 'batch_size') == [1400, 624, 400, 256]
  fn = jax.jit(pg.lr_scale_schedule(st, 256))
  got = [float(fn(s)) for s in (0, 249, 250, 625, 750, 5000)]
  np.testing.assert_allclose(got, [1400 / 256, 1400 / 256, 624 / 256, 400 / 256, 1.0, 1.0], rtol=1e-6)
  no = _build('s', 'paper', base_batch=256)
  assert _col(no, 'batch_size') == [256] * 4


def test_stage_overrides():
  s = _build('m', 'paper')[1]
  o = pg.stage_overrides(s)
  assert o['data.image_size'] == 208 and o['train.batch_size'] == 4096 and abs(o['model.dropout_rate'] - 0.2) < 1e-12
  code = pg.stage_overrides(_build('s', 'code', dropout_max=None, dropout_min=None)[0])
  assert 'model.dropout_rate' not in code


# ----------------------------------------------------------------------------------------------------------------------
# Presets and validation
# ----------------------------------------------------------------------------------------------------------------------
def test_presets_tables():
  assert pg.presets('s', 'paper') == dict(rule='paper', num_stages=4, size_min=128, size_max=300, randaug_min=5.0,
                                          randaug_max=15.0, mixup_min=0.0, mixup_max=0.0, cutmix_min=0.0,
                                          cutmix_max=0.0, dropout_min=0.1, dropout_max=0.3, size_multiple=16)
  p = pg.presets('efficientnetv2-l', 'paper')
  assert (p['size_max'], p['randaug_max'], p['mixup_max'], p['dropout_max']) == (380, 25.0, 0.4, 0.5)
  c = pg.presets('M', 'code')
  assert (c['size_max'], c['randaug_max'], c['mixup_max'], c['cutmix_max'], c['dropout_max']) == (384, 15.0, 0.2,
                                                                                                    0.2, 0.3)
  assert [pg.presets(v, 'code')['size_max'] for v in pg.VARIANTS] == [300, 384, 384, 384, 192, 192, 208, 240]
  assert pg.presets('s')['rule'] == pg.DEFAULT_RULE == 'code' == config_lib.base_config().progressive.rule


def test_presets_bad_values():
  with pytest.raises(ValueError, match=r"model\.variant.*'s'.*'b3'"):
    pg.presets('b7', 'code')
  with pytest.raises(ValueError, match=r"model\.variant.*paper"):
    pg.presets('xl', 'paper')
  with pytest.raises(ValueError, match=r"progressive\.rule.*paper.*code"):
    pg.presets('s', 'fixres')


@pytest.mark.parametrize('kw,field', [
    (dict(num_stages=0), 'progressive.num_stages'),
    (dict(rule='linear'), 'progressive.rule'),
    (dict(size_min=400, size_max=300), 'progressive.size_min'),
    (dict(randaug_max=-1.0), 'progressive.randaug_max'),
    (dict(mixup_min=-0.1), 'progressive.mixup_min'),
    (dict(cutmix_max=-0.5), 'progressive.cutmix_max'),
    (dict(dropout_max=1.0), 'progressive.dropout_max'),
    (dict(size_multiple=-16), 'progressive.size_multiple'),
    (dict(batch_multiple=0), 'progressive.batch_multiple'),
])
def test_validate_errors(kw, field):
  """config_lib.validate rejects bad progressive fields before any data loads (build_stages no longer checks)."""
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    config_lib.validate(_config('s', 'paper', **kw))


def test_build_stages_bad_final_size():
  c = config_lib.base_config()
  c.progressive.enabled, c.progressive.size_min = True, 256
  with pytest.raises(ValueError, match='progressive.size_min'):
    config_lib.validate(c)  # size_max None -> data.image_size 224 < 256
  defaults = config_lib.base_config()
  config_lib.validate(defaults)  # the defaults are valid, with the schedule off
  defaults.progressive.enabled = True
  config_lib.validate(defaults)  # and on
  with pytest.raises(ValueError, match='total_steps'):
    pg.build_stages(defaults.progressive, 0, 224, 256)  # from the dataset size: build_stages' own check
