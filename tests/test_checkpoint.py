"""The checkpoint module on its own: save/restore round trip, keep-N, relative workdirs."""
import jax
import jax.numpy as jnp
import numpy as np

from effnet import checkpoint


def test_relative_directory_round_trip_and_keep(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer('workdirs/run/checkpoints', keep=2, every_steps=1, use_async=True)
  tree = {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3), 'step': jnp.int32(0)}
  for step in (1, 2, 3):
    ckpt.save(step, {'w': tree['w'] * step, 'step': jnp.int32(step)}, meta={'step': step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]  # keep=2
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  restored, meta = ckpt.restore(abstract)
  np.testing.assert_array_equal(restored['w'], np.arange(6, dtype=np.float32).reshape(2, 3) * 3)
  assert int(restored['step']) == 3 and meta == {'step': 3}
  assert ckpt.save(3, tree) is False  # an existing step is not written twice
  ckpt.close()
  assert (tmp_path / 'workdirs' / 'run' / 'checkpoints' / '3').is_dir()
