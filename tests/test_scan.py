"""`model.scan_blocks`: each stage's repeats 2..r run as one `nn.scan` over stacked variables.

Same weights must give the same network as the unrolled one: eval logits and features, train-mode logits and new
BN statistics, parameter and MAC counts, timm imports and initialiser distributions; the two layouts must convert
into each other exactly. The scan splits the dropout rng per repeat, so its stochastic-depth masks differ from the
unrolled net's: train mode is compared with drop_path replaced by the deterministic x·p (which still checks the
survival ramp exactly), and the real masks are checked to get one key per block and the unrolled ramp's p.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import effnet.models.blocks as blocks_lib
from effnet import config_lib, models
from effnet.convert import from_timm
from effnet.models.efficientnet import block_groups, group_name
from test_convert import _config, _images, _randomised_timm

DEMO_GROUPS = ['blocks_0', 'blocks_1', 'blocks_2', 'blocks_3', 'blocks_4', 'blocks_5', 'blocks_6', 'blocks_7',
               'blocks_8_to_9', 'blocks_10', 'blocks_11_to_14']  # stage repeats 1 2 2 2 3 5


def _pair(model_cfg):
  """(unrolled, scanned) modules of one model config (a ConfigDict or a mapping)."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else dict(model_cfg)
  return models.build_model(dict(cfg, scan_blocks=False)), models.build_model(dict(cfg, scan_blocks=True))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_trees_close(got, want, tol=1e-5):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    assert _rel(a, b) < tol, jax.tree_util.keystr(path)


@pytest.fixture(scope='module')
def demo():
  """The demo model unrolled and scanned, its variables in both layouts (non-trivial BN statistics, so that eval
  and train mode differ) and a batch of 32 px images."""
  unrolled, scanned = _pair(config_lib.load_config('configs/demo.py').model)

  def stats(path, a):
    s = jnp.sin(jnp.arange(a.size, dtype=jnp.float32)).reshape(a.shape)
    return 1.0 + 0.5 * jnp.abs(s) if path[-1].key == 'var' else 0.1 * s

  v = models.init_variables(unrolled, jax.random.key(0), 32)
  v['batch_stats'] = jax.tree_util.tree_map_with_path(stats, v['batch_stats'])
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3), jnp.float32)
  return unrolled, scanned, v, models.scan_variables(v, scanned), x


def test_groups_and_stacked_layout(demo):
  unrolled, scanned, v, sv, _ = demo
  assert [group_name(g) for g in block_groups(scanned.blocks, scan=True)] == DEMO_GROUPS
  assert all(len(g) == 1 for g in block_groups(unrolled.blocks, scan=False))
  assert sv['params']['blocks_11_to_14']['project_conv']['kernel'].shape == (
      (4,) + v['params']['blocks_11']['project_conv']['kernel'].shape)
  # scan_variables gives exactly the scanned module's own variable tree.
  want = models.abstract_variables(scanned, 32)
  got = jax.eval_shape(lambda t: models.scan_variables(t, scanned), models.abstract_variables(unrolled, 32))
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  assert [a.shape for a in jax.tree_util.tree_leaves(got)] == [a.shape for a in jax.tree_util.tree_leaves(want)]


def test_round_trip_is_exact_on_any_tree(demo):
  _, scanned, v, sv, _ = demo
  back = models.unscan_variables(sv, scanned)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(v)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, v)
  jax.tree_util.tree_map(np.testing.assert_array_equal, models.scan_variables(sv, scanned), sv)  # idempotent
  # Mappings anywhere in a pytree convert, e.g. the params-shaped slots of an optimizer state; numpy stays numpy.
  opt = models.scan_variables(optax.scale_by_rms().init(v['params']), scanned)
  assert jax.tree_util.tree_structure(opt.nu) == jax.tree_util.tree_structure(sv['params'])
  as_np = models.scan_variables(jax.tree_util.tree_map(np.asarray, v), scanned)
  assert all(isinstance(a, np.ndarray) for a in jax.tree_util.tree_leaves(as_np))


def test_partial_group_is_an_error(demo):
  _, scanned, v, _, _ = demo
  params = dict(v['params'])
  del params['blocks_12']
  with pytest.raises(ValueError, match='blocks_11_to_14'):
    models.scan_variables(params, scanned)


def test_eval_logits_and_features_match(demo):
  unrolled, scanned, v, sv, x = demo
  want, want_f = unrolled.apply(v, x, train=False, return_features=True)
  got, got_f = scanned.apply(sv, x, train=False, return_features=True)
  assert list(got_f) == list(want_f)
  assert _rel(got, want) < 1e-5
  _assert_trees_close(got_f, want_f)


def test_train_mode_matches_with_deterministic_drop_path(demo, monkeypatch):
  """drop_path → x·p: the outputs then depend on every block's survival probability, so equal logits and BN
  statistics show the scanned-in ramp is the unrolled one. Head dropout (traced rate) uses the same rng in both."""
  unrolled, scanned, v, sv, x = demo
  monkeypatch.setattr(blocks_lib, 'drop_path', lambda y, p, rng: y * p)
  kw = dict(train=True, dropout_rate=jnp.float32(0.3), rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
  want, want_s = unrolled.apply(v, x, **kw)
  got, got_s = scanned.apply(sv, x, **kw)
  assert _rel(got, want) < 1e-5
  _assert_trees_close(models.unscan_variables(got_s, scanned), want_s)
  eval_logits = unrolled.apply(v, x, train=False)
  assert _rel(want, eval_logits) > 1e-2  # train mode really differs (batch statistics, dropout, the x·p ramp)


def test_stochastic_depth_draws_one_key_per_block_with_the_ramp(demo, monkeypatch):
  _, scanned, _, sv, x = demo
  seen = []

  def record(y, p, rng):
    # A pure_callback whose result feeds the output: flax's nn.scan refuses a side-effect-only callback that
    # depends on the scanned inputs.
    def cb(k, q):
      seen.append((np.asarray(k).tobytes(), float(q)))
      return np.float32(0)
    zero = jax.pure_callback(cb, jax.ShapeDtypeStruct((), jnp.float32), jax.random.key_data(rng), p)
    return y + zero.astype(y.dtype)

  monkeypatch.setattr(blocks_lib, 'drop_path', record)
  scanned.apply(sv, x, train=True, rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
  jax.effects_barrier()
  want = sorted(np.float32(b.survival_prob) for b in scanned.blocks if b.has_residual)
  assert sorted(np.float32(p) for _, p in seen) == want
  assert len({k for k, _ in seen}) == len(want)  # each scanned repeat gets its own dropout key


@pytest.mark.parametrize('config', ['configs/demo.py', 'configs/efficientnetv2.py:s'])
def test_param_and_mac_counts_equal(config):
  unrolled, scanned = _pair(dict(config_lib.load_config(config).model.to_dict(), depthwise_impl='conv'))
  assert models.count_params(scanned, 64) == models.count_params(unrolled, 64)
  assert models.count_macs(scanned, 64) == models.count_macs(unrolled, 64)  # scan body × its length


def test_initializer_draws_the_unrolled_weights_stacked(demo):
  """A seed gives the same network with or without scan, so each stacked slice keeps its block's distribution
  (fan-out from the per-block kernel, not the stack) and the unrolled init tests carry over."""
  unrolled, scanned, _, _, _ = demo
  got = models.init_variables(scanned, jax.random.key(0), 32)
  want = models.abstract_variables(scanned, 32)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  assert [a.shape for a in jax.tree_util.tree_leaves(got)] == [a.shape for a in jax.tree_util.tree_leaves(want)]
  flat = models.init_variables(unrolled, jax.random.key(0), 32)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, models.scan_variables(flat, scanned))
  kernel = got['params']['blocks_8_to_9']['project_conv']['kernel']  # 2 blocks, 1×1 528 → 88
  assert kernel.shape == (2, 1, 1, 528, 88)
  assert abs(float(jnp.std(kernel)) / math.sqrt(2 / 88) - 1) < 0.02


def test_from_timm_into_scanned_config():
  m = _randomised_timm('tf_efficientnetv2_b0')
  cfg = _config('v2', 'b0')
  flat = from_timm(m, cfg)
  stacked = from_timm(m, dict(cfg, scan_blocks=True))
  unrolled, scanned = _pair(cfg)
  assert 'blocks_14_to_20' in stacked['params']                  # stage 6: repeats 2..8 of blocks 13..20
  jax.tree_util.tree_map(np.testing.assert_array_equal, stacked, models.scan_variables(flat, scanned))
  x = _images(64, seed=64)
  assert _rel(scanned.apply(stacked, x), unrolled.apply(flat, x)) < 1e-5
