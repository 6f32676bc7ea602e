"""effnet.data.mix: Mixup/CutMix against the google/automl efficientnetv2 datasets.py formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet.data import mix as M

B, H, W, K = 8, 16, 12, 5


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, H, W, 3)).astype(np.float32)
  y = np.eye(K, dtype=np.float32)[rng.integers(0, K, B)]
  return jnp.asarray(x), jnp.asarray(y)


def test_alpha_zero_is_identity(batch):
  x, y = batch
  xo, yo = M.mixup_cutmix(jax.random.PRNGKey(0), x, y, 0.0, 0.0)
  np.testing.assert_array_equal(np.asarray(xo), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(yo), np.asarray(y))


def test_mixup_partner_is_reversed_batch_and_lambda_at_least_half(batch):
  x, y = batch
  xo, yo = M.mixup_cutmix(jax.random.PRNGKey(1), x, y, 0.2, 0.0)
  xn, yn, xo, yo = map(np.asarray, (x, y, xo, yo))
  for i in range(B):
    j = B - 1 - i
    # x_i' = lam x_i + (1-lam) x_{B-1-i}: recover lam by least squares and check the labels use it
    d = (xn[i] - xn[j]).ravel()
    lam = float(d @ (xo[i] - xn[j]).ravel() / (d @ d))
    assert 0.5 - 1e-5 <= lam <= 1.0 + 1e-5
    np.testing.assert_allclose(xo[i], lam * xn[i] + (1 - lam) * xn[j], atol=1e-4)
    np.testing.assert_allclose(yo[i], lam * yn[i] + (1 - lam) * yn[j], atol=1e-4)
  np.testing.assert_allclose(yo.sum(-1), 1.0, atol=1e-6)


def test_cutmix_box_pixels_from_partner_and_label_is_batch_mean_area(batch):
  x, y = batch
  key = jax.random.PRNGKey(2)
  xo, yo = M.mixup_cutmix(key, x, y, 0.0, 1.0)
  xn, yn, xo, yo = map(np.asarray, (x, y, xo, yo))
  from_partner = np.isclose(xo, xn[::-1]).all(-1) & ~np.isclose(xo, xn).all(-1)
  areas = []
  for i in range(B):
    ys, xs = np.nonzero(from_partner[i])
    if len(ys):
      y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
      assert from_partner[i][y0:y1, x0:x1].all()  # a rectangle
      # its side lengths follow 2*(int(sqrt(1-area)*side)//2) before clipping, so they are <= side
      assert y1 - y0 <= H and x1 - x0 <= W
    areas.append(from_partner[i].sum() / (H * W))
    np.testing.assert_array_equal(xo[i][~from_partner[i]], xn[i][~from_partner[i]])
  a_bar = np.mean(areas)  # AML: reduce_sum(mask) / size(mask) over the batch (one scalar)
  np.testing.assert_allclose(yo, (1 - a_bar) * yn + a_bar * yn[::-1], atol=1e-5)
  np.testing.assert_allclose(yo.sum(-1), 1.0, atol=1e-6)


def test_cutmix_box_formula():
  key = jax.random.PRNGKey(3)
  y0, y1, x0, x1 = map(np.asarray, M.cutmix_boxes(key, 64, 20, 30, 1.0))
  _, _, k_b = jax.random.split(key, 3)
  area = np.asarray(jax.random.beta(k_b, 1.0, 1.0, (64,)))
  r_w = (np.sqrt(1 - area).astype(np.float32) * 30).astype(int)
  r_h = (np.sqrt(1 - area).astype(np.float32) * 20).astype(int)
  assert ((x1 - x0) <= 2 * (r_w // 2)).all() and ((y1 - y0) <= 2 * (r_h // 2)).all()
  assert (x0 >= 0).all() and (x1 <= 30).all() and (y0 >= 0).all() and (y1 <= 20).all()


def test_both_alphas_split_batch_in_halves(batch):
  x, y = batch
  xo, yo = M.mixup_cutmix(jax.random.PRNGKey(4), x, y, 0.5, 1.0)
  xn, yn, xo, yo = map(np.asarray, (x, y, xo, yo))
  bs = B // 2
  np.testing.assert_array_equal(np.asarray(M.partner_index(B, True)), [3, 2, 1, 0, 7, 6, 5, 4])
  for i in range(bs):  # mixup half: every pixel mixed with the reversed FIRST half
    j = bs - 1 - i
    d = (xn[i] - xn[j]).ravel()
    lam = float(d @ (xo[i] - xn[j]).ravel() / (d @ d))
    assert lam >= 0.5 - 1e-5
    np.testing.assert_allclose(xo[i], lam * xn[i] + (1 - lam) * xn[j], atol=1e-4)
  for i in range(bs, B):  # cutmix half: pixels are either own or from the reversed SECOND half
    j = B - 1 - (i - bs)
    own, par = np.isclose(xo[i], xn[i]).all(-1), np.isclose(xo[i], xn[j]).all(-1)
    assert (own | par).all()
  np.testing.assert_allclose(yo.sum(-1), 1.0, atol=1e-6)


def test_jit_with_traced_alphas(batch):
  x, y = batch
  f = jax.jit(M.mixup_cutmix)
  for mix_a, cut_a in [(0.0, 0.0), (0.2, 0.0), (0.0, 1.0), (0.4, 1.0)]:
    xo, yo = f(jax.random.PRNGKey(5), x, y, jnp.float32(mix_a), jnp.float32(cut_a))
    assert xo.shape == x.shape and yo.shape == y.shape
    assert np.isfinite(np.asarray(xo)).all()
    np.testing.assert_allclose(np.asarray(yo).sum(-1), 1.0, atol=1e-6)
    if mix_a == 0 and cut_a == 0:
      np.testing.assert_array_equal(np.asarray(xo), np.asarray(x))
  assert f._cache_size() == 1  # one compilation for all alpha values


def test_bf16_images(batch):
  x, y = batch
  xo, yo = M.mixup_cutmix(jax.random.PRNGKey(6), x.astype(jnp.bfloat16), y, 0.2, 1.0)
  assert xo.dtype == jnp.bfloat16 and yo.dtype == y.dtype
