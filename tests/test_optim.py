"""effnet.optim against hand-written TF formulas (docs/fidelity.md §2)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effnet import config_lib, optim

# AML trains on 1,256,144 images (minival held out) at global batch 4096.
N_TRAIN = 1_256_144
SPE = N_TRAIN / 4096  # 306.67578125
WARMUP_STEPS = 1533  # int(5 * 306.67578125) = int(1533.378...)
DECAY_STEPS = 2.4 * SPE  # 736.021875


# ----------------------------------------------------------------------------------------------------------------------
# RMSProp
# ----------------------------------------------------------------------------------------------------------------------
def _tf_rmsprop_reference(w0, grads, lrs, rho=0.9, mu=0.9, eps=1e-3, ms0=1.0):
  """TF1 ApplyRMSProp, written from the TF kernel doc: ms starts at 1 (ms0), lr inside the momentum."""
  w = np.array(w0, np.float64)
  ms = np.full_like(w, ms0)
  mom = np.zeros_like(w)
  out = []
  for g, lr in zip(grads, lrs):
    ms = rho * ms + (1 - rho) * g * g
    mom = mu * mom + lr * g / np.sqrt(ms + eps)
    w = w - mom
    out.append(w.copy())
  return out


def _warmup_lr(step):
  # Linear warmup over 10 steps to 0.5, then x0.5 every 5 steps (a schedule that changes at every step).
  return 0.5 * step / 10 if step < 10 else 0.5 * 0.5 ** ((step - 10) // 5)


def test_rmsprop_tf_matches_tf_update_rule_with_changing_lr():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(7,))
  grads = [rng.normal(size=(7,)) * (1 + 0.3 * t) for t in range(20)]
  lrs = [_warmup_lr(t) for t in range(20)]
  want = _tf_rmsprop_reference(w0, grads, lrs)

  def sched(count):  # jit-safe version of _warmup_lr
    c = jnp.asarray(count, jnp.float32)
    return jnp.where(c < 10, 0.5 * c / 10, 0.5 * 0.5 ** jnp.floor((c - 10) / 5))

  tx = optim.rmsprop_tf(sched, decay=0.9, momentum=0.9, eps=1e-3)
  params = jnp.asarray(w0, jnp.float32)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
  for t in range(20):
    params, state = step(params, state, jnp.asarray(grads[t], jnp.float32))
    np.testing.assert_allclose(np.asarray(params), want[t], rtol=1e-5, atol=1e-6, err_msg=f'step {t}')


def test_rmsprop_initial_scale_zero_follows_the_same_rule_from_ms_0():
  """optim.rmsprop_initial_scale=0: the same TF update with the mean-square slot starting at 0; and it matters:
  the first update is then lr·g/sqrt(0.1·g²+eps) ≈ 3·lr·sign(g) instead of ≈ lr·g."""
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(5,))
  grads = [rng.normal(size=(5,)) * 0.01 for _ in range(8)]
  want = _tf_rmsprop_reference(w0, grads, [0.1] * 8, ms0=0.0)
  tx = optim.rmsprop_tf(0.1, initial_scale=0.0)
  params, state = jnp.asarray(w0, jnp.float32), None
  state = tx.init(params)
  for t in range(8):
    u, state = tx.update(jnp.asarray(grads[t], jnp.float32), state, params)
    params = optax.apply_updates(params, u)
    np.testing.assert_allclose(np.asarray(params), want[t], rtol=1e-5, atol=1e-6, err_msg=f'step {t}')
  official = _tf_rmsprop_reference(w0, grads, [0.1] * 8)[0]
  assert np.all(np.abs(want[0] - w0) > 10 * np.abs(official - w0))
  with pytest.raises(ValueError, match='optim.rmsprop_initial_scale'):
    config_lib.validate(_config(rmsprop_initial_scale=-1.0))


def test_rmsprop_tf_lr_outside_momentum_would_differ():
  # Guard that the test above is sensitive: scaling the trace by the current lr gives a different trajectory.
  w0 = np.ones(3)
  grads = [np.full(3, 1.0)] * 12
  lrs = [_warmup_lr(t) for t in range(12)]
  tf_w = _tf_rmsprop_reference(w0, grads, lrs)[-1]
  w, ms, mom = w0.copy(), np.ones(3), np.zeros(3)
  for g, lr in zip(grads, lrs):
    ms = 0.9 * ms + 0.1 * g * g
    mom = 0.9 * mom + g / np.sqrt(ms + 1e-3)
    w = w - lr * mom
  assert not np.allclose(w, tf_w, rtol=1e-3)


def test_rmsprop_tf_first_step_constant_lr_by_hand():
  # g=2, ms = 0.9*1 + 0.1*4 = 1.3; mom = 0.1 * 2 / sqrt(1.301); w = 1 - mom.
  tx = optim.rmsprop_tf(0.1)
  p = jnp.ones((2,), jnp.float32)
  u, _ = tx.update(jnp.full((2,), 2.0), tx.init(p), p)
  np.testing.assert_allclose(np.asarray(optax.apply_updates(p, u)), 1 - 0.2 / math.sqrt(1.301), rtol=1e-6)


@pytest.mark.parametrize('kw,field', [({'rmsprop_decay': 1.0}, 'optim.rmsprop_decay'),
                                      ({'momentum': -0.1}, 'optim.momentum'), ({'eps': 0.0}, 'optim.eps')])
def test_rmsprop_tf_bad_args(kw, field):
  """rmsprop_tf's arguments come from these fields; config_lib.validate rejects bad ones before anything is built."""
  with pytest.raises(ValueError, match=field):
    config_lib.validate(_config(**kw))


# ----------------------------------------------------------------------------------------------------------------------
# LR schedule
# ----------------------------------------------------------------------------------------------------------------------
def _official():
  return optim.lr_schedule(0.256, SPE, warmup_epochs=5, decay_epochs=2.4, decay_factor=0.97)


@pytest.mark.parametrize('step,want', [
    (0, 0.0),
    (1, 0.256 / 1533),
    (766, 0.256 * 766 / 1533),  # mid warmup
    (1532, 0.256 * 1532 / 1533),  # last warmup step, ~0.2558
    (1533, 0.256 * 0.97 ** 2),  # 1533 / 736.02 = 2.08 -> floor 2: the drop to ~0.2409 at the end of warmup
    (2208, 0.256 * 0.97 ** 2),  # 2208 / 736.02 = 2.99991 -> 2
    (2209, 0.256 * 0.97 ** 3),  # 3.0013 -> 3
    (7360, 0.256 * 0.97 ** 9),  # 9.99970 -> 9
    (7361, 0.256 * 0.97 ** 10),  # 10 decay periods
    # Last step of 350 epochs (107,336 steps): 145.83 -> 145. TF raises float32(0.97) = 0.97000002861 to the power,
    # 4.2e-6 above 0.97**145 here (tests/test_official_schedule.py checks every boundary against the official run).
    (107_335, 0.256 * float(np.float32(0.97)) ** 145),
])
def test_lr_exponential_official_values(step, want):
  np.testing.assert_allclose(float(_official()(step)), want, rtol=1e-6, atol=1e-9)


def test_lr_end_of_warmup_reference_number():
  assert abs(float(_official()(WARMUP_STEPS)) - 0.2409) < 1e-4


def test_lr_is_jittable_and_vectorised():
  steps = jnp.asarray([0, 766, 7361])
  got = jax.jit(_official())(steps)
  np.testing.assert_allclose(np.asarray(got), [0.0, 0.256 * 766 / 1533, 0.256 * 0.97 ** 10], rtol=1e-6)


def test_lr_no_staircase():
  s = optim.lr_schedule(0.256, SPE, warmup_epochs=0, staircase=False)
  np.testing.assert_allclose(float(s(1000)), 0.256 * 0.97 ** (1000 / DECAY_STEPS), rtol=1e-5)


def test_lr_cosine_and_constant():
  total = 10_000
  c = optim.lr_schedule(0.256, SPE, warmup_epochs=5, schedule='cosine', total_steps=total)
  np.testing.assert_allclose(float(c(766)), 0.256 * 766 / 1533, rtol=1e-6)  # warmup
  np.testing.assert_allclose(float(c(1533)), 0.5 * 0.256 * (1 + math.cos(math.pi * 1533 / total)), rtol=1e-5)
  np.testing.assert_allclose(float(c(5000)), 0.128, rtol=1e-5)  # half-way: cos(pi/2) = 0
  assert abs(float(c(total))) < 1e-7 and abs(float(c(total + 500))) < 1e-7
  k = optim.lr_schedule(0.1, SPE, warmup_epochs=5, schedule='constant')
  np.testing.assert_allclose([float(k(766)), float(k(1533)), float(k(99_999))], [0.1 * 766 / 1533, 0.1, 0.1],
                             rtol=1e-6)


def test_lr_bad_values():
  with pytest.raises(ValueError, match=r"optim\.schedule.*exponential.*cosine.*constant"):
    optim.lr_schedule(0.1, SPE, schedule='linear')
  with pytest.raises(ValueError, match='total_steps'):
    optim.lr_schedule(0.1, SPE, schedule='cosine')


# ----------------------------------------------------------------------------------------------------------------------
# Weight decay
# ----------------------------------------------------------------------------------------------------------------------
def _params():
  return {
      'stem': {'conv': {'kernel': jnp.full((3, 3, 3, 4), 1.0)}, 'bn': {'scale': jnp.full((4,), 2.0),
                                                                       'bias': jnp.full((4,), 3.0)}},
      'blocks_0': {'se': {'reduce': {'kernel': jnp.full((1, 1, 4, 2), 0.5), 'bias': jnp.full((2,), 4.0)}},
                   'bn_exp': {'scale': jnp.ones((4,)), 'bias': jnp.ones((4,))}},
      'head': {'dense': {'kernel': jnp.full((4, 10), 0.1), 'bias': jnp.full((10,), -1.0)},
               'BatchNorm_0': {'scale': jnp.ones((4,)), 'bias': jnp.ones((4,))}},
  }


def _flat(mask):
  return {'/'.join(str(getattr(k, 'key', k)) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_weight_decay_mask_rules():
  m = {r: _flat(optim.weight_decay_mask(_params(), r)) for r in ('tpu', 'automl', 'kernels')}
  decayed = {r: sorted(k for k, v in mm.items() if v) for r, mm in m.items()}
  assert decayed['tpu'] == sorted(['stem/conv/kernel', 'blocks_0/se/reduce/kernel', 'blocks_0/se/reduce/bias',
                                   'head/dense/kernel', 'head/dense/bias'])
  assert decayed['automl'] == sorted(['stem/conv/kernel', 'blocks_0/se/reduce/kernel', 'head/dense/kernel'])
  assert decayed['kernels'] == decayed['automl']
  # The mask has the params' structure.
  assert jax.tree.structure(optim.weight_decay_mask(_params(), 'tpu')) == jax.tree.structure(_params())


def test_is_batchnorm_module_names():
  for n in ('bn', 'stem_bn', 'bn0', 'bn_exp', 'proj_bn1', 'BatchNorm_3', 'tpu_batch_normalization'):
    assert optim.is_batchnorm_module(n), n
  for n in ('conv', 'se', 'reduce', 'head', 'dense', 'blocks_0', 'expand_conv', 'cbn_like'):
    assert not optim.is_batchnorm_module(n), n


def test_l2_loss_values():
  p = _params()
  # kernels: 27*4 ones -> 108; SE kernel 8*0.25 = 2; dense 40*0.01 = 0.4  => 0.5*110.4 = 55.2
  kern = optim.l2_loss(p, optim.weight_decay_mask(p, 'kernels'))
  np.testing.assert_allclose(float(kern), 55.2, rtol=1e-6)
  # tpu adds SE bias 2*16 = 32 and dense bias 10*1 = 10 => 0.5*152.4 = 76.2
  np.testing.assert_allclose(float(optim.l2_loss(p, optim.weight_decay_mask(p, 'tpu'))), 76.2, rtol=1e-6)
  # no mask: + stem bn 4*4 + 4*9 = 52, bn_exp 8, BatchNorm_0 8 => 0.5*220.4 = 110.2
  np.testing.assert_allclose(float(optim.l2_loss(p)), 110.2, rtol=1e-6)
  assert optim.l2_loss(p).dtype == jnp.float32
  bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
  assert optim.l2_loss(bf, optim.weight_decay_mask(bf, 'kernels')).dtype == jnp.float32


def test_l2_gradient_is_wd_times_w():
  p = _params()
  mask = optim.weight_decay_mask(p, 'tpu')
  g = jax.grad(lambda q: 1e-5 * optim.l2_loss(q, mask))(p)
  np.testing.assert_allclose(np.asarray(g['head']['dense']['bias']), 1e-5 * -1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g['stem']['bn']['scale']), 0.0)


def test_weight_decay_bad_rule():
  with pytest.raises(ValueError, match=r"optim\.weight_decay_rule.*tpu.*automl.*kernels"):
    optim.weight_decay_mask(_params(), 'adamw')


# ----------------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('step,want', [(0, 0.1), (1, 2 / 11), (10, 11 / 20), (1000, 1001 / 1010),
                                       (89_990, 0.9999), (1_000_000, 0.9999)])
def test_ema_decay_at(step, want):
  # (1+t)/(10+t) reaches 0.9999 at t = 89,990.
  np.testing.assert_allclose(float(optim.ema_decay_at(step, 0.9999)), want, rtol=1e-6)


def test_ema_update_values():
  ema = {'a': jnp.asarray([1.0, 2.0]), 'b': {'c': jnp.asarray(4.0, jnp.bfloat16)}}
  new = {'a': jnp.asarray([3.0, 2.0]), 'b': {'c': jnp.asarray(0.0, jnp.bfloat16)}}
  out = optim.ema_update(ema, new, step=1, decay=0.9999)  # d = 2/11
  d = 2 / 11
  np.testing.assert_allclose(np.asarray(out['a']), [d * 1 + (1 - d) * 3, 2.0], rtol=1e-6)
  np.testing.assert_allclose(float(out['b']['c']), d * 4.0, rtol=1e-6)
  assert out['b']['c'].dtype == jnp.float32
  out2 = optim.ema_update(ema, new, step=10 ** 7, decay=0.9999)
  np.testing.assert_allclose(np.asarray(out2['a']), [0.9999 + 0.0001 * 3, 2.0], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# build_optimizer
# ----------------------------------------------------------------------------------------------------------------------
def _config(**optim_fields):
  """config_lib.base_config() (the official optim recipe: lr_base 0.016, warmup 5, decay 0.97 every 2.4 epochs,
  RMSProp 0.9 / 0.9 / 1e-3, wd 1e-5 'tpu') with `optim_fields` changed."""
  c = config_lib.base_config()
  c.optim.update(optim_fields)
  return c


def _optim_cfg(**kw):
  return _config(**kw).optim


def test_build_optimizer_lr_and_update():
  tx, sched = optim.build_optimizer(_optim_cfg(), 4096, SPE, 107_336)
  np.testing.assert_allclose(float(sched(WARMUP_STEPS)), 0.016 * 16 * 0.97 ** 2, rtol=1e-6)
  np.testing.assert_allclose(float(sched(766)), 0.256 * 766 / 1533, rtol=1e-6)
  # One update at step 0 has lr 0 (warmup) -> no move; ms still updated: 0.9 + 0.1*g^2.
  p = {'w': jnp.ones((2,))}
  s = tx.init(p)
  u, s = tx.update({'w': jnp.full((2,), 2.0)}, s, p)
  np.testing.assert_allclose(np.asarray(u['w']), 0.0)
  np.testing.assert_allclose(np.asarray(s[0].nu['w']), 1.3, rtol=1e-6)


def test_build_optimizer_lr_scale_and_bad_fields():
  _, sched = optim.build_optimizer(_optim_cfg(schedule='constant', warmup_epochs=0), 512, 10.0, 100, lr_scale=2.0)
  np.testing.assert_allclose(float(sched(5)), 0.016 * 2 * 2.0, rtol=1e-6)
  _, sched = optim.build_optimizer(_optim_cfg(schedule='constant', warmup_epochs=0), 256, 10.0, 100,
                                   lr_scale=lambda step: jnp.where(step < 50, 3.0, 1.0))
  np.testing.assert_allclose([float(sched(10)), float(sched(60))], [0.048, 0.016], rtol=1e-6)
  with pytest.raises(ValueError, match='optim.schedule'):
    optim.build_optimizer(_optim_cfg(schedule='poly'), 256, 10.0, 100)
  with pytest.raises(ValueError, match='optim.weight_decay_rule'):
    config_lib.validate(_config(weight_decay_rule='all'))  # not part of tx: the loss's mask reads it


# ----------------------------------------------------------------------------------------------------------------------
# Cross-check against TensorFlow itself (test-only import; the module never imports TF)
# ----------------------------------------------------------------------------------------------------------------------
def test_against_tf1_rmsprop_and_exponential_decay():
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(5,))
  grads = [rng.normal(size=(5,)) for _ in range(20)]
  lrs = [_warmup_lr(t) for t in range(20)]
  w = tf.Variable(w0.astype(np.float64))
  lr = tf.Variable(0.0, dtype=tf.float64)
  opt = tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1e-3)
  tf_traj = []
  for g, lr_t in zip(grads, lrs):
    lr.assign(lr_t)
    opt.apply_gradients([(tf.constant(g), w)])
    tf_traj.append(w.numpy().copy())
  # TF1 casts decay/momentum/eps to float32 constants, hence agreement to ~1e-7 (weights ~1), not 1e-15.
  np.testing.assert_allclose(np.asarray(tf_traj), np.asarray(_tf_rmsprop_reference(w0, grads, lrs)), rtol=1e-6,
                             atol=1e-6)

  tx = optim.rmsprop_tf(lambda c: jnp.where(c < 10, 0.05 * c, 0.5 * 0.5 ** jnp.floor((c - 10) / 5)))
  p, s = jnp.asarray(w0, jnp.float32), None
  s = tx.init(p)
  for g in grads:
    u, s = tx.update(jnp.asarray(g, jnp.float32), s, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(np.asarray(p), tf_traj[-1], rtol=1e-5, atol=1e-6)

  sched = _official()
  for step in (1533, 2208, 2209, 7361, 50_000):
    want = tf.compat.v1.train.exponential_decay(0.256, tf.constant(step, tf.int64), DECAY_STEPS, 0.97,
                                                staircase=True)()
    np.testing.assert_allclose(float(sched(step)), float(want), rtol=1e-5)
