"""On-device Mixup / CutMix (JAX only, jit-friendly, traced alphas).

Why on device: progressive learning (EfficientNetV2) changes mixup/cutmix alpha per stage; with the
alphas as traced scalars one compiled train step serves every stage, and the host pipeline stays
free of batch-level work.

Semantics follow google/automl efficientnetv2/datasets.py @6a54c87 (`mixup`, `cutmix_mask`,
`cutmix`, `mixing`), quirks included:
  * partner = the batch reversed (`image[::-1]`). When BOTH alphas are > 0 the batch is split:
    the first B//2 samples get mixup, the remaining B - B//2 get cutmix, and each half is
    reversed on its own (`mixup(image[:bs])`, `cutmix(image[bs:])`), so the partner of sample i
    is bs-1-i in the first half and B-1-(i-bs) in the second. With one alpha only, the whole
    batch is mixed with the whole batch reversed. alpha == 0 (or None in the official) = off.
  * mixup: lam ~ Beta(a, a) per sample, lam = max(lam, 1-lam); x = lam*x + (1-lam)*x_rev and the
    same for labels (own weight >= 0.5).
  * cutmix (per sample, `cutmix_mask`): centre r_x ~ U{0..W-1}, r_y ~ U{0..H-1};
    area ~ Beta(a, a) WITHOUT the max(); side ratio sqrt(1-area); r_w = int(ratio*W),
    r_h = int(ratio*H); box [r_x - r_w//2, r_x + r_w//2) clipped to [0, W] (same for y).
    Pixels inside the box come from the partner. The LABEL weight is the mean of the masks over
    the whole cutmix group (batch-mean box area, not the per-sample area):
    y = (1-a_bar)*y + a_bar*y_rev.
AML mixes the normalised images (bf16 on TPU); this function works on whatever float images it
gets. The TPU v1 code's mixup (0-255 images) is not reproduced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _safe_alpha(alpha):
  a = jnp.asarray(alpha, jnp.float32)
  return jnp.where(a > 0, a, 1.0)


def partner_index(batch_size: int, both_on):
  """Partner of each sample: whole batch reversed, or each half reversed when both mixes are on."""
  i = jnp.arange(batch_size)
  bs = batch_size // 2
  split = jnp.where(i < bs, bs - 1 - i, batch_size - 1 - (i - bs))
  return jnp.where(both_on, split, batch_size - 1 - i)


def cutmix_boxes(rng, batch_size: int, height: int, width: int, cutmix_alpha):
  """Per-sample boxes (y0, y1, x0, x1), int32 [B] each, from the official cutmix_mask rule."""
  k_x, k_y, k_b = jax.random.split(rng, 3)
  r_x = jax.random.randint(k_x, (batch_size,), 0, width)
  r_y = jax.random.randint(k_y, (batch_size,), 0, height)
  area = jax.random.beta(k_b, _safe_alpha(cutmix_alpha), _safe_alpha(cutmix_alpha), (batch_size,))
  ratio = jnp.sqrt(1.0 - area)
  r_w = (ratio * width).astype(jnp.int32)  # tf.cast float->int truncates
  r_h = (ratio * height).astype(jnp.int32)
  x0 = jnp.clip(r_x - r_w // 2, 0, width)
  x1 = jnp.clip(r_x + r_w // 2, 0, width)
  y0 = jnp.clip(r_y - r_h // 2, 0, height)
  y1 = jnp.clip(r_y + r_h // 2, 0, height)
  return y0, y1, x0, x1


def box_masks(boxes, height: int, width: int):
  """[B, H, W] bool masks, True inside each box [y0, y1) x [x0, x1) (int [B] each; the image clips them). Also
  RandAugment's on-device Cutout box (effnet.data.randaugment_jax)."""
  y0, y1, x0, x1 = boxes
  ys = jnp.arange(height)[None, :, None]
  xs = jnp.arange(width)[None, None, :]
  return ((ys >= y0[:, None, None]) & (ys < y1[:, None, None]) &
          (xs >= x0[:, None, None]) & (xs < x1[:, None, None]))


def mixup_cutmix(rng, images, labels, mixup_alpha, cutmix_alpha):
  """Mix a batch. images: float [B,H,W,C]; labels: [B,K] (one-hot or smoothed). Alphas may be traced.

  Returns (images, labels) with the input dtypes. With both alphas 0 the outputs equal the inputs.
  """
  b, h, w = images.shape[0], images.shape[1], images.shape[2]
  mix_a = jnp.asarray(mixup_alpha, jnp.float32)
  cut_a = jnp.asarray(cutmix_alpha, jnp.float32)
  mix_on, cut_on = mix_a > 0, cut_a > 0
  both = mix_on & cut_on
  k_mix, k_cut = jax.random.split(rng)

  i = jnp.arange(b)
  first_half = i < b // 2
  # mode per sample: mixup / cutmix / none (the AML `mixing` dispatch)
  is_mix = jnp.where(both, first_half, mix_on)
  is_cut = jnp.where(both, ~first_half, cut_on & ~mix_on)
  partner = partner_index(b, both)

  lam = jax.random.beta(k_mix, _safe_alpha(mix_a), _safe_alpha(mix_a), (b,))
  lam = jnp.maximum(lam, 1.0 - lam)

  masks = box_masks(cutmix_boxes(k_cut, b, h, w, cut_a), h, w).astype(jnp.float32)  # [B,H,W]
  area = masks.mean(axis=(1, 2))
  # batch-mean box area over the cutmix group only (AML: reduce_sum(mask)/size(mask) on image[bs:])
  n_cut = jnp.maximum(is_cut.sum(), 1)
  mean_area = jnp.where(is_cut, area, 0.0).sum() / n_cut

  # own-image weight per pixel: lam (mixup), 1-mask (cutmix), 1 (none)
  own = jnp.where(is_mix[:, None, None], lam[:, None, None],
                  jnp.where(is_cut[:, None, None], 1.0 - masks, 1.0))
  own_img = own[..., None].astype(images.dtype)
  x_p = images[partner]
  mixed = images * own_img + x_p * (1 - own_img)

  own_lab = jnp.where(is_mix, lam, jnp.where(is_cut, 1.0 - mean_area, 1.0))[:, None]
  own_lab = own_lab.astype(labels.dtype)
  mixed_labels = labels * own_lab + labels[partner] * (1 - own_lab)
  return mixed, mixed_labels
