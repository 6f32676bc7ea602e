"""On-device synthetic input for benchmarks (no TensorFlow, no host pipeline).

Why: throughput benchmarks must measure the model step, not tf.data or JPEG decoding. A few batches are generated
once with jax.random directly on the device (with the requested sharding, if any) and then yielded again and again,
so each step costs nothing and every batch has the same fixed shape and dtypes as the real pipeline:
{'image': [B,S,S,3] uint8 (or `image_dtype`, data.image_dtype), 'label': int32 [B]} (+ 'mask' int32 ones when
include_mask=True, like eval batches).
"""
import itertools

import jax
import jax.numpy as jnp


def make_synthetic_batch(key, batch_size, image_size, num_classes, include_mask=False, image_dtype="uint8"):
  """One batch from `key`: uniform integer pixels in [0, 255] as `image_dtype`, uniform labels in [0, num_classes)."""
  k_img, k_lab = jax.random.split(key)
  image = jax.random.randint(k_img, (batch_size, image_size, image_size, 3), 0, 256, dtype=jnp.int32)
  batch = {"image": image.astype(image_dtype),
           "label": jax.random.randint(k_lab, (batch_size,), 0, num_classes, dtype=jnp.int32)}
  if include_mask:
    batch["mask"] = jnp.ones((batch_size,), jnp.int32)
  return batch


def synthetic_batches(batch_size, image_size, num_classes, seed=0, *, num_distinct=2, sharding=None,
                      include_mask=False, num_batches=None, image_dtype="uint8"):
  """Yields fixed-shape synthetic batches (cycling over `num_distinct` pre-generated ones).

  batch_size: the batch the consumer expects (global when `sharding` spans all devices).
  sharding: optional jax.sharding.Sharding for the batch axis (e.g. NamedSharding(mesh, P('data'))); the arrays are
    generated directly with that sharding. None -> default device.
  num_batches: stop after that many batches; None -> infinite.
  image_dtype: the images' dtype, as the host pipeline's `data.image_dtype`.
  """
  if batch_size <= 0 or image_size <= 0 or num_classes <= 0 or num_distinct <= 0:
    raise ValueError(f"synthetic_batches needs positive batch_size, image_size, num_classes, num_distinct; got "
                     f"{batch_size}, {image_size}, {num_classes}, {num_distinct}")
  make = lambda k: make_synthetic_batch(  # noqa: E731
      k, batch_size, image_size, num_classes, include_mask, image_dtype)
  if sharding is not None:
    make = jax.jit(make, out_shardings=sharding)
  keys = jax.random.split(jax.random.PRNGKey(seed), num_distinct)
  batches = [make(k) for k in keys]
  stream = itertools.cycle(batches)
  if num_batches is not None:
    stream = itertools.islice(stream, num_batches)
  yield from stream
