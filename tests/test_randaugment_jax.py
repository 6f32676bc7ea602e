"""effnet.data.randaugment_jax (on-device RandAugment) against the host TF ops of effnet.data.augment
on real photos (skimage.data), plus the batched randaugment() contract (per-sample ops, traced
magnitude, one compile).

Tolerance: every op is compared EXACTLY (0 differing pixels) against the host op with the same
random draws (sign, cutout centre) and the same argument vector at magnitudes 3, 7, 10; the geometric
ops included (nearest sampling, half-away-from-zero rounding, products rounded like the TF kernel).
Both against the official code's outputs: tests/test_official_augment.py."""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from effnet.data import augment as A  # noqa: E402
from effnet.data import policy as P  # noqa: E402
from effnet.data import randaugment_jax as R  # noqa: E402

SIZE = 64
_apply_op = jax.jit(R.apply_op, static_argnums=(1,))
_randaugment = jax.jit(R.randaugment, static_argnums=(2,))
_layer = jax.jit(R.apply_layer)


def _photo(name, size=SIZE):
  im = getattr(skimage.data, name)()[..., :3]
  return np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope='module')
def batch():
  return np.stack([_photo(n) for n in ('astronaut', 'chelsea', 'coffee', 'rocket')])


@pytest.fixture(scope='module')
def layer_fn():
  return jax.jit(R.apply_layer)


def _host_ref(name, im, magnitude, sign, cy, cx):
  """The host op with the same draws (sign for geometric ops, cutout centre)."""
  return A.apply_op(im, name, magnitude, sign=sign, centre=(cy, cx))


@pytest.mark.parametrize('magnitude', [3.0, 7.0, 10.0])
def test_every_op_matches_host_exactly(batch, layer_fn, magnitude):
  b, h, w, _ = batch.shape
  p = R.layer_params(jax.random.key(int(magnitude)), b, h, w)
  signs = np.asarray(p['sign'])
  assert set(signs.tolist()) <= {-1.0, 1.0}
  for k, name in enumerate(R.RANDAUGMENT_OPS):
    out = np.asarray(layer_fn(batch, jnp.full((b,), k), P.level_arguments(magnitude), p['sign'], p['cy'],
                              p['cx']))
    ref = np.stack([np.asarray(_host_ref(name, batch[i], magnitude, float(signs[i]),
                                         int(p['cy'][i]), int(p['cx'][i]))) for i in range(b)])
    assert out.dtype == np.uint8
    n_bad = int((out != ref).any(-1).sum())
    assert n_bad == 0, f'{name} M={magnitude}: {n_bad} pixels differ from the host op'


def test_op_effects_on_photo(batch):
  """Sanity of the forced-op helper (independent of the host module): fills, inversion, signs."""
  img = batch[:1]
  inv = np.asarray(_apply_op(img, 'Invert', 5.0, jax.random.key(0)))
  np.testing.assert_array_equal(inv, 255 - img)
  sol = np.asarray(_apply_op(img, 'Solarize', 10.0, jax.random.key(0)))  # threshold 256 -> 0
  np.testing.assert_array_equal(sol, 255 - img)
  rot = np.asarray(_apply_op(img, R.OP_INDEX['Rotate'], 10.0, jax.random.key(0)))[0]
  assert (rot[0, 0] == 128).all() and (rot[-1, -1] == 128).all()
  cands = [np.asarray(A.rotate(img[0], d)) for d in (30.0, -30.0)]
  assert any(np.array_equal(rot, c) for c in cands)
  tx = np.asarray(_apply_op(img, 'TranslateX', 1.0, jax.random.key(3)))[0]  # +-10 px
  ok = [np.array_equal(tx[:, :-10], img[0][:, 10:]) and (tx[:, -10:] == 128).all(),
        np.array_equal(tx[:, 10:], img[0][:, :-10]) and (tx[:, :10] == 128).all()]
  assert any(ok)
  with pytest.raises(ValueError, match='op_index'):
    R.apply_op(img, 'Blur', 5.0, jax.random.key(0))
  with pytest.raises(ValueError, match='dtype'):
    R.randaugment(jax.random.key(0), img.astype(np.float32))


def test_equalize_subset_and_fallback_agree(batch):
  """More Equalize samples than the fast-path capacity -> full path; both equal the host op."""
  big = np.concatenate([batch] * 8)  # B=32, capacity 13
  b = big.shape[0]
  assert R.EQUALIZE_CAPACITY(b) < b
  z = jnp.zeros((b,), jnp.int32)
  for n_eq in (5, b):  # subset path / fallback path
    op = np.full((b,), R.OP_INDEX['Invert'], np.int32)
    op[:n_eq] = R.OP_INDEX['Equalize']
    op[n_eq:n_eq + 3] = R.OP_INDEX['Sharpness']
    out = np.asarray(_layer(big, jnp.asarray(op), 5.0, z.astype(jnp.float32) + 1, z, z))
    for i in (0, n_eq - 1):
      np.testing.assert_array_equal(out[i], np.asarray(A.equalize(big[i])))
    if n_eq < b:
      np.testing.assert_array_equal(out[n_eq], np.asarray(A.sharpness(big[n_eq], 1.0)))
      np.testing.assert_array_equal(out[-1], 255 - big[-1])


def test_randaugment_contract(batch):
  calls = []

  def fn(rng, images, magnitude):
    calls.append(1)  # Python side effect: runs once per trace/compile
    return R.randaugment(rng, images, num_layers=2, magnitude=magnitude)

  jfn = jax.jit(fn)
  big = np.concatenate([batch] * 4)  # B=16
  k = jax.random.key(42)
  out_a = np.asarray(jfn(k, big, jnp.float32(9.0)))
  out_b = np.asarray(jfn(k, big, jnp.float32(5.0)))
  assert len(calls) == 1, 'magnitude must be a traced scalar (one compile for two magnitudes)'
  assert out_a.dtype == np.uint8 and out_a.shape == big.shape
  np.testing.assert_array_equal(out_a, np.asarray(jfn(k, big, jnp.float32(9.0))))  # deterministic
  assert not np.array_equal(out_a, np.asarray(jfn(jax.random.key(43), big, jnp.float32(9.0))))
  assert not np.array_equal(out_a, out_b)

  # each sample draws its own ops: the same photo (4 copies) changes differently
  same = [out_a[i] for i in range(0, 16, 4)]
  assert len({s.tobytes() for s in same}) >= 3
  # the per-sample ops are exactly what layer_params drew (reproduce with apply_layer)
  k1, k2 = jax.random.split(k, 2)
  x = big
  for key in (k1, k2):
    p = R.layer_params(key, *big.shape[:3])
    x = _layer(x, p['op'], 9.0, p['sign'], p['cy'], p['cx'])
  np.testing.assert_array_equal(out_a, np.asarray(x))
  assert len(set(np.asarray(R.layer_params(k1, 16, SIZE, SIZE)['op']).tolist())) >= 6

  # num_layers=0 is the identity
  np.testing.assert_array_equal(np.asarray(_randaugment(k, big, 0, 9.0)), big)


def test_magnitude_zero_is_small_change(batch):
  """At M=0 the magnitude-scaled geometric ops, Posterize/Solarize quirks aside, barely change the image."""
  b = batch.shape[0]
  for name in ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd'):
    out = np.asarray(_apply_op(batch, name, 0.0, jax.random.key(1)))
    np.testing.assert_array_equal(out, batch, err_msg=name)
  # enhance ops at M=0: factor 0.1 (strong, as the official mapping); Brightness -> ~10% of pixel
  out = np.asarray(_apply_op(batch, 'Brightness', 0.0, jax.random.key(1)))
  np.testing.assert_array_equal(out, np.floor(batch.astype(np.float32) * np.float32(0.1)).astype(np.uint8))
  # random mix at M=0 vs M=10: much smaller mean change
  big = np.concatenate([batch] * 8)
  d = lambda m: np.abs(np.asarray(_randaugment(jax.random.key(5), big, 2, jnp.float32(m))).astype(int) - big).mean()
  d0, d10 = d(0.0), d(10.0)
  assert d0 < 0.75 * d10, (d0, d10)
  assert b == 4


def test_traced_magnitude_arguments_are_the_float32_approximation():
  """A traced float32 magnitude: its arguments are computed in float32 on device (module docstring). Against the
  official float64-then-float32 rule (the formulas of `level_to_arg`, written here): the float arguments within
  1 ulp, the integer ones equal except SolarizeAdd at M=23 (2.3*110 = 252.99999999999997 in float64)."""
  ms = np.arange(0, 61) / 2  # 0, 0.5, ..., 30
  got = np.asarray(jax.jit(jax.vmap(R.magnitude_args))(jnp.asarray(ms, jnp.float32)))
  col = lambda name: got[:, P.ARG[name]]
  for name, scale in (('degrees', 30.0), ('shear', 0.3), ('translate', 100.0)):
    np.testing.assert_array_max_ulp(col(name), np.float32(ms / 10.0 * scale), maxulp=1)
  np.testing.assert_array_max_ulp(col('enhance'), np.float32(ms / 10.0 * 1.8 + 0.1), maxulp=1)
  for name, scale in (('posterize', 4), ('solarize', 256), ('solarize_add', 110), ('cutout', 40)):
    want = np.floor(ms / 10.0 * scale)
    bad = ms[col(name) != want].tolist()
    assert bad == ([23.0] if name == 'solarize_add' else []), (name, bad)
