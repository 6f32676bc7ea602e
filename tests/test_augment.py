"""effnet.data.augment: every op checked against numpy / PIL (the reference the official TF ops mirror)
on real photos from skimage.data."""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
PIL = pytest.importorskip('PIL')
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402
import skimage.data  # noqa: E402

from effnet.data import augment as A  # noqa: E402


def _photo(name='astronaut', size=96):
  im = getattr(skimage.data, name)()[..., :3]
  return np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope='module')
def img():
  return _photo()


def _np(x):
  return np.asarray(x.numpy() if hasattr(x, 'numpy') else x)


def test_rotate_90_is_rot90_and_magnitude_maps_to_30deg(img):
  out = _np(A.rotate(img, 90.0))
  np.testing.assert_array_equal(out, np.rot90(img))  # counter-clockwise like tfa.image.rotate
  # magnitude 10 -> +-30 deg: equals one of the two signed rotations; the corner is filled with 128
  r = _np(A.apply_op(img, 'Rotate', 10.0, seed=[3, 4]))
  cands = [_np(A.rotate(img, d)) for d in (30.0, -30.0)]
  assert any(np.array_equal(r, c) for c in cands)
  assert (r[0, 0] == 128).all() and (r[-1, -1] == 128).all()
  # a rotated point: centre pixel of a 30-degree rotation stays put
  c = img.shape[0] // 2
  np.testing.assert_array_equal(cands[0][c - 1:c + 1, c - 1:c + 1].shape, (2, 2, 3))


def test_translate_shifts_exactly_and_fills_128(img):
  out = _np(A.translate_x(img, 10.0))
  np.testing.assert_array_equal(out[:, :-10], img[:, 10:])
  assert (out[:, -10:] == 128).all()
  out = _np(A.translate_y(img, -7.0))
  np.testing.assert_array_equal(out[7:], img[:-7])
  assert (out[:7] == 128).all()
  # RandAugment level: magnitude 5 -> 0.5*100 = 50 px, random sign
  r = _np(A.apply_op(img, 'TranslateX', 5.0, seed=[1, 1]))
  assert any(np.array_equal(r, _np(A.translate_x(img, s))) for s in (50.0, -50.0))


@pytest.mark.parametrize('axis', ['x', 'y'])
def test_shear_moves_points_by_level(img, axis):
  level = 0.3
  out = _np(A.shear_x(img, level) if axis == 'x' else A.shear_y(img, level))
  h, w = img.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  if axis == 'x':
    sx, sy = xs + np.float32(level) * ys, ys
  else:
    sx, sy = xs, ys + np.float32(level) * xs
  rx = np.where(sx >= 0, np.floor(sx + 0.5), np.ceil(sx - 0.5)).astype(int)  # std::round
  ry = np.where(sy >= 0, np.floor(sy + 0.5), np.ceil(sy - 0.5)).astype(int)
  ok = (rx >= 0) & (rx < w) & (ry >= 0) & (ry < h)
  ref = np.full_like(img, 128)
  ref[ok] = img[ry[ok], rx[ok]]
  assert (out == ref).all(axis=-1).mean() > 0.995


def test_solarize_threshold_and_m10_quirk(img):
  np.testing.assert_array_equal(_np(A.solarize(img, 128)), np.where(img < 128, img, 255 - img))
  np.testing.assert_array_equal(_np(A.solarize(img, 128)), np.asarray(ImageOps.solarize(Image.fromarray(img), 128)))
  # official: int(10/10*256)=256 converted to uint8 -> 0, so Solarize at M=10 inverts everything
  np.testing.assert_array_equal(_np(A.apply_op(img, 'Solarize', 10.0)), 255 - img)
  np.testing.assert_array_equal(_np(A.apply_op(img, 'Solarize', 5.0)), np.where(img < 128, img, 255 - img))


def test_solarize_add(img):
  ref = np.where(img < 128, np.clip(img.astype(int) + 110, 0, 255), img).astype(np.uint8)
  np.testing.assert_array_equal(_np(A.apply_op(img, 'SolarizeAdd', 10.0)), ref)


def test_posterize_bits(img):
  for bits in (1, 2, 4, 8):
    ref = np.asarray(ImageOps.posterize(Image.fromarray(img), bits))
    np.testing.assert_array_equal(_np(A.posterize(img, bits)), ref)
  np.testing.assert_array_equal(_np(A.posterize(img, 0)), img & 0x80)  # TF clamps shift 8 -> 7
  np.testing.assert_array_equal(_np(A.apply_op(img, 'Posterize', 6.67)), img & 0xC0)  # int(2.668)=2


def test_invert(img):
  np.testing.assert_array_equal(_np(A.invert(img)), 255 - img)
  np.testing.assert_array_equal(_np(A.apply_op(img, 'Invert', 3.0)), np.asarray(ImageOps.invert(Image.fromarray(img))))


@pytest.mark.parametrize('name', ['astronaut', 'coffee', 'chelsea'])
def test_equalize_matches_pil(name):
  im = _photo(name, 80)
  out = _np(A.equalize(im))
  np.testing.assert_array_equal(out, np.asarray(ImageOps.equalize(Image.fromarray(im))))
  hist = np.bincount(out[..., 0].ravel(), minlength=256)
  assert np.cumsum(hist)[127] / hist.sum() == pytest.approx(0.5, abs=0.1)  # flat-ish CDF


@pytest.mark.parametrize('name', ['astronaut', 'coffee'])
def test_autocontrast_matches_pil(name):
  im = (_photo(name, 80) * 0.5 + 40).astype(np.uint8)
  out = _np(A.autocontrast(im))
  ref = np.asarray(ImageOps.autocontrast(Image.fromarray(im)))
  assert np.abs(out.astype(int) - ref).max() <= 1
  assert out.min() == 0 and out.max() == 255
  flat = np.full((8, 8, 3), 77, np.uint8)
  np.testing.assert_array_equal(_np(A.autocontrast(flat)), flat)


def _gray_tf_formula(img):
  g = (img.astype(np.float32) / 255.0) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  return np.floor(g * 255.5).astype(np.float32)[..., None]


def _blend_np(deg, im, f):
  deg = deg.astype(np.float32)
  return np.clip(deg + np.float32(f) * (im.astype(np.float32) - deg), 0, 255).astype(np.uint8)


def test_color_brightness_contrast_blend_formulas(img):
  f = 1.9  # magnitude 10 -> 10/10*1.8+0.1
  out = _np(A.apply_op(img, 'Color', 10.0))
  ref = _blend_np(np.broadcast_to(_gray_tf_formula(img), img.shape), img, f)
  assert np.abs(out.astype(int) - ref).max() <= 2
  assert (out == ref).mean() > 0.9
  out = _np(A.apply_op(img, 'Brightness', 10.0))
  np.testing.assert_array_equal(out, _blend_np(np.zeros_like(img), img, f))
  pil = np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(f))
  assert np.abs(out.astype(int) - pil).max() <= 1
  # official Contrast: grey = histogram sum / 256 = H*W/256 (96*96/256 = 36), not the mean
  out = _np(A.apply_op(img, 'Contrast', 3.0))  # factor 0.64
  np.testing.assert_array_equal(out, _blend_np(np.full_like(img, 36), img, 0.64))
  pil = np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(0.64))
  assert np.abs(_np(A.contrast(img, 0.64, pil=True)).astype(int) - pil).max() <= 2
  pil = np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(0.3))
  assert np.abs(_np(A.color(img, 0.3)).astype(int) - pil).max() <= 2


@pytest.mark.parametrize('factor', [0.1, 1.9])
def test_sharpness_matches_pil(img, factor):
  out = _np(A.sharpness(img, factor))
  ref = np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(factor))
  d = np.abs(out.astype(int) - ref)
  assert d.max() <= 2 and d.mean() < 0.6
  np.testing.assert_array_equal(out[0], img[0])  # border kept
  np.testing.assert_array_equal(out[:, -1], img[:, -1])


def test_cutout_region_is_exactly_128():
  im = np.clip(_photo(), 0, 120).astype(np.uint8)  # no pixel is 128 before cutout
  out = _np(A.cutout(im, 10, seed=[5, 6]))
  changed = (out != im).any(-1)
  ys, xs = np.nonzero(changed)
  assert 0 < len(ys) <= 400
  box = out[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  assert (box == 128).all()  # the changed set is a filled rectangle
  assert box.shape[0] <= 20 and box.shape[1] <= 20
  r = _np(A.apply_op(im, 'Cutout', 10.0, seed=[1, 2]))  # RA: pad 40
  assert ((r == 128).all(-1)).sum() > 0


def test_randaugment_and_autoaugment_dtype_shape_determinism(img):
  for fn in (lambda s: A.randaugment(img, 2, 10.0, seed=s), lambda s: A.randaugment(img, 2, 6.67, seed=s),
             lambda s: A.autoaugment(img, 'v0', seed=s)):
    a, b = fn([7, 8]), fn([7, 8])
    assert a.dtype == tf.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    outs = [fn([i, 0]).numpy() for i in range(6)]
    assert len({o.tobytes() for o in outs}) > 2
  with pytest.raises(ValueError, match='policy'):
    A.autoaugment(img, 'v9')


def test_randaugment_in_tf_data_graph(img):
  ds = tf.data.Dataset.from_tensors(img).repeat(4).map(lambda x: A.randaugment(x, 2, 10.0))
  assert all(o.shape == img.shape for o in ds)
