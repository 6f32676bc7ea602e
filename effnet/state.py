"""The train state and its sharded creation.

Created by one jitted function straight into its shardings (replicated over the 'data' mesh), from abstract
shapes: no host round trip and no jitted `module.init` (which traces the network and compiles one RNG kernel per
variable). The same abstract state is the restore target for checkpoints.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from effnet import models


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: step, weights, BN statistics, optimizer slots, EMA copies and the RNG.

  `rng` is raw key data (uint32[2]) so it checkpoints like any array; per-step keys are fold_in(rng, step), so a
  resumed run draws the same dropout / stochastic-depth masks as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any
  rng: jax.Array

  def step_key(self):
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def eval_variables(self, ema: bool = True):
    if ema:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def make_state_initializer(module, tx: optax.GradientTransformation, image_size: int):
  init_vars = models.make_initializer(module, image_size)

  def init(seed):
    key = jax.random.key(seed)
    init_key, state_key = jax.random.split(key)
    variables = init_vars(init_key)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    copy = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), ema_params=copy(params), ema_batch_stats=copy(batch_stats),
                      rng=jax.random.key_data(state_key))
  return init


def abstract_state(module, tx, image_size: int, sharding):
  """ShapeDtypeStructs (with shardings) of the train state, e.g. as a checkpoint restore target."""
  shapes = jax.eval_shape(make_state_initializer(module, tx, image_size), 0)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def create_train_state(module, tx, image_size: int, seed: int, sharding) -> TrainState:
  """A fresh state created directly with `sharding` (replicated over the mesh)."""
  return jax.jit(make_state_initializer(module, tx, image_size), static_argnums=(), out_shardings=sharding)(seed)
