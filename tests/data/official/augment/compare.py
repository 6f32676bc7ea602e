"""Prints, per op, the max abs difference between effnet's ops and the official outputs in golden.npz.

  python tests/data/official/augment/compare.py

Host: effnet.data.augment through tf.data (as the pipeline runs it). Device: effnet.data.randaugment_jax under one
jit per image size. Both take the golden case's pinned sign and Cutout centre and the argument vector of
effnet.data.policy.level_arguments at its magnitude. 'traced': the device ops given the magnitude as a traced float32
scalar instead of that vector (randaugment_jax's other accepted form; its arguments are computed in float32).
"""
import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from effnet.data import augment as A
from effnet.data import policy as P
from effnet.data import randaugment_jax as R


def _load():
  data = np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden.npz'))
  index = json.loads(str(data['index']))
  return data, [data[f'image_{i}'] for i in range(len(index['photos']))], index['cases']


def _columns(cases):
  args = [P.level_arguments(c['level'] or 0.0, c['cutout_const'], c['translate_const']) for c in cases]
  return (np.asarray([P.OP_INDEX[c['op']] for c in cases], np.int32), np.stack(args),
          np.asarray([c['sign'] for c in cases], np.float32),
          np.asarray([c['centre'] or (0, 0) for c in cases], np.int32))


def _host(image, cases):
  ds = tf.data.Dataset.from_tensor_slices(_columns(cases)).map(
      lambda op, args, sign, centre: A._apply_op(tf.constant(image), op, args, sign, (centre[0], centre[1])))
  return list(ds.as_numpy_iterator())


def _device(image, cases):
  layer = jax.jit(R.apply_layer)
  ops, args, signs, centres = _columns(cases)
  return [np.asarray(layer(jnp.asarray(image)[None], ops[k:k + 1], args[k], signs[k:k + 1], centres[k:k + 1, 0],
                           centres[k:k + 1, 1])[0]) for k in range(len(cases))]


def _device_traced(image, cases):
  """As _device, with the magnitude a traced float32 scalar (arguments computed in float32 on device, not the
  float64 vector the train step passes): randaugment_jax's other accepted form."""
  layer = jax.jit(R.apply_layer, static_argnums=(6, 7))
  ops, _, signs, centres = _columns(cases)
  return [np.asarray(layer(jnp.asarray(image)[None], ops[k:k + 1], jnp.float32(c['level'] or 0.0), signs[k:k + 1],
                           centres[k:k + 1, 0], centres[k:k + 1, 1], c['cutout_const'], c['translate_const'])[0])
          for k, c in enumerate(cases)]


def main():
  data, images, cases = _load()
  table = collections.OrderedDict()
  for name, run in (('host', _host), ('device', _device), ('traced', _device_traced)):
    for i, image in enumerate(images):
      mine = [c for c in cases if c['image'] == i]
      for c, out in zip(mine, run(image, mine)):
        diff = np.abs(out.astype(np.int32) - data[c['key']].astype(np.int32))
        key = (name, c['set'], c['op'])
        worst, count, total = table.get(key, (0, 0, 0))
        table[key] = (max(worst, int(diff.max())), count + int((diff > 0).sum()), total + diff.size)
  print(f"{'impl':7s} {'set':3s} {'op':13s} {'max |diff|':>10s} {'values differing':>18s}")
  for (name, set_name, op), (worst, count, total) in table.items():
    print(f'{name:7s} {set_name:3s} {op:13s} {worst:10d} {count:9d} / {total:7d}')


if __name__ == '__main__':
  main()
