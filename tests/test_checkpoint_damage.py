"""A damaged newest checkpoint (a truncated or lost data file after a preemption) must not block a resume: restore
walks back to the newest intact step, logs what it skipped, deletes nothing, and the run can save that step number
again. A changed model is not damage: it fails at once, naming the variable. Only what damage raises counts as
damage: each kind is reproduced here with the exception it gives, and any other error propagates."""
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _train_helpers as h
from effnet import checkpoint

# A failed read of a damaged file can leave a TensorStore callback for orbax's event loop after it closed; Python
# reports it as unraisable, in whichever test the garbage collector runs. The restore itself raised and was classified.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _tree(step: int) -> dict:
  return {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * step, 'step': jnp.int32(step)}


def _abstract(tree=None) -> dict:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree or _tree(0))


def _saved(directory, steps=(1, 2, 3), config=None) -> checkpoint.Checkpointer:
  """A checkpointer in `directory` holding `steps`, written and closed, then opened again as a resumed run does."""
  ckpt = checkpoint.Checkpointer(directory, keep=10, every_steps=1, use_async=False, config=config)
  for step in steps:
    ckpt.save(step, _tree(step), meta={'step': step})
  ckpt.close()
  return checkpoint.Checkpointer(directory, keep=10, every_steps=1, use_async=False, config=config)


def _data_files(step_dir) -> list[str]:
  """The array data files orbax wrote for a step (the merged OCDBT data under state/d/)."""
  d = os.path.join(step_dir, 'state', 'd')
  return sorted(os.path.join(d, n) for n in os.listdir(d))


def _truncate(step_dir) -> None:
  files = _data_files(step_dir)
  assert files, f'no data files under {step_dir}: the orbax layout changed'
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _cut(path) -> None:
  os.truncate(path, os.path.getsize(path) // 2)


def _overwrite(path, tail: int = 0) -> None:
  """Overwrites the file's bytes (its last `tail` bytes; all when 0) with 0xff, keeping its size."""
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size - tail if tail else 0)
    f.write(b'\xff' * (tail or size))


# Each kind of damage, made on a real step, and the exception it was seen to raise (orbax 0.12.8, TensorStore):
# `Type: start of the message` as the skip warning and DamagedCheckpointError report it.
DAMAGE = {
    'truncated data file': (lambda d: [_cut(f) for f in _data_files(d)], 'ValueError: OUT_OF_RANGE: '),
    'lost data file': (lambda d: os.remove(_data_files(d)[0]), 'ValueError: NOT_FOUND: '),
    'overwritten data file': (lambda d: [_overwrite(f) for f in _data_files(d)], 'ValueError: DATA_LOSS: '),
    'corrupted compressed data': (lambda d: [_overwrite(f, tail=20) for f in _data_files(d)],
                                  'ValueError: Error opening "zarr" driver: '),
    'lost OCDBT manifest': (lambda d: os.remove(d / 'state' / 'manifest.ocdbt'), 'ValueError: NOT_FOUND: '),
    'lost array metadata': (lambda d: os.remove(d / 'state' / '_METADATA'),
                            'FileNotFoundError: Metadata file (named _METADATA) does not exist'),
    'cut array metadata': (lambda d: _cut(d / 'state' / '_METADATA'), 'JSONDecodeError: '),
    'cut meta JSON': (lambda d: _cut(d / 'meta' / 'metadata'), 'JSONDecodeError: '),
    'lost meta item': (lambda d: shutil.rmtree(d / 'meta'), "KeyError: 'Item \"meta\" was not found in the checkpoint"),
    'cut config JSON': (lambda d: _cut(d / 'config' / 'metadata'), 'JSONDecodeError: '),
}


@pytest.mark.parametrize('kind', list(DAMAGE))
def test_each_kind_of_damage_is_recognized_and_walked_past(tmp_path, caplog, kind):
  damage, reason = DAMAGE[kind]
  ckpt = _saved(str(tmp_path), steps=(1, 2), config={'model': {'width': 1}})
  damage(tmp_path / '2')
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(_abstract())
  assert int(state['step']) == 1 and meta == {'step': 1}
  skipped = [r.getMessage() for r in caplog.records if 'step 2' in r.getMessage() and 'damaged' in r.getMessage()]
  assert len(skipped) == 1 and skipped[0].split('trying an older step: ')[1].startswith(reason), skipped
  ckpt.close()


# Errors that are not damage: a flaky or forbidden read (the step is intact; walking past it would rename it aside
# on the next save) and bugs. The first two are in TensorStore's format (code prefix, spec suffix).
NOT_DAMAGE = [
    ValueError('UNAVAILABLE: Error reading "w/.zarray": connection reset [tensorstore_spec=\'{}\']'),
    ValueError('PERMISSION_DENIED: Error reading local file "d/x" [tensorstore_spec=\'{}\']'),
    ValueError('a bug in the restore request'), KeyError('params'), PermissionError(13, 'Permission denied'),
]


@pytest.mark.parametrize('error', NOT_DAMAGE, ids=lambda e: f'{type(e).__name__}:{str(e)[:20]}')
def test_any_other_error_propagates_and_nothing_is_walked_past(tmp_path, caplog, monkeypatch, error):
  ckpt = _saved(str(tmp_path), steps=(1, 2))

  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(ckpt._manager, 'restore', fail)
  with caplog.at_level(logging.WARNING), pytest.raises(type(error)) as info:
    ckpt.restore(_abstract())
  assert info.value is error and not isinstance(info.value, checkpoint.DamagedCheckpointError)
  assert not [r for r in caplog.records if 'damaged' in r.getMessage()]
  assert ckpt._damaged_steps == [] and ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_walks_back_past_a_truncated_step_and_deletes_nothing(tmp_path, caplog):
  ckpt = _saved(str(tmp_path))
  _truncate(tmp_path / '3')
  assert ckpt.latest_step() == 3  # the manager still opens and lists the damaged step
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(_abstract())
  assert int(state['step']) == 2 and meta == {'step': 2}
  np.testing.assert_array_equal(state['w'], np.asarray(_tree(2)['w']))
  assert any('step 3' in r.getMessage() and 'damaged' in r.getMessage() for r in caplog.records)
  assert (tmp_path / '3' / 'state').is_dir() and ckpt.all_steps() == [1, 2, 3]  # nothing deleted
  ckpt.close()


def test_every_step_damaged_raises_a_listing_error(tmp_path):
  ckpt = _saved(str(tmp_path), steps=(1, 2))
  _truncate(tmp_path / '2')
  os.remove(_data_files(tmp_path / '1')[0])
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    ckpt.restore(_abstract())
  message = str(info.value)
  assert 'step 2:' in message and 'step 1:' in message and 'new workdir' in message
  assert isinstance(info.value, ValueError)
  assert (tmp_path / '1').is_dir() and (tmp_path / '2').is_dir()
  ckpt.close()


def test_explicit_damaged_step_is_named_and_not_walked_past(tmp_path):
  ckpt = _saved(str(tmp_path))
  _truncate(tmp_path / '3')
  with pytest.raises(checkpoint.DamagedCheckpointError, match='step 3 .* is damaged'):
    ckpt.restore(_abstract(), step=3)
  assert int(ckpt.restore(_abstract(), step=2)[0]['step']) == 2
  ckpt.close()


def test_saving_the_damaged_step_number_again_moves_it_aside(tmp_path):
  ckpt = _saved(str(tmp_path))
  _truncate(tmp_path / '3')
  state, _ = ckpt.restore(_abstract())
  assert int(state['step']) == 2
  assert ckpt.save(3, _tree(30), meta={'step': 30}) is True
  ckpt.close()
  aside = [n for n in os.listdir(tmp_path) if n.startswith('3.damaged-')]
  assert len(aside) == 1 and (tmp_path / aside[0] / 'state').is_dir()  # kept for inspection
  reopened = checkpoint.Checkpointer(str(tmp_path), keep=10, every_steps=1, use_async=False)
  assert reopened.all_steps() == [1, 2, 3]
  state, meta = reopened.restore(_abstract())
  assert int(state['step']) == 30 and meta == {'step': 30}
  reopened.close()


def test_shape_mismatch_raises_at_once_naming_the_variable(tmp_path):
  ckpt = _saved(str(tmp_path))
  changed = {'w': jax.ShapeDtypeStruct((4, 3), jnp.float32), 'step': jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r'step 3 .*w has shape \(2, 3\) .* \(4, 3\)'):
    ckpt.restore(changed)
  extra = {**_abstract(), 'bias': jax.ShapeDtypeStruct((3,), jnp.float32)}
  with pytest.raises(checkpoint.CheckpointMismatchError, match='bias is in the model'):
    ckpt.restore(extra)
  ckpt.close()


def test_training_resumes_past_a_damaged_newest_step(tmp_path, digits_dir, jax_cache_dir):
  overrides = {'data.data_dir': digits_dir, 'data.train_split': 'train[:56]', 'train.total_steps': 4,
               'train.checkpoint_every_steps': 1, 'train.compile_cache_dir': jax_cache_dir}
  h.run_child(tmp_path, overrides)
  ckpt_dir = tmp_path / 'checkpoints'
  assert h.checkpoint_steps(str(tmp_path))[-1] == 4
  _truncate(ckpt_dir / '4')
  resumed = h.run_child(tmp_path, {**overrides, 'train.total_steps': 6})
  final = h.final_metrics(resumed)
  assert final['steps'] == 6 and final['stopped'] == 'completed'
  assert 'checkpoint step 4' in resumed.stderr and 'damaged' in resumed.stderr
  assert [n for n in os.listdir(ckpt_dir) if n.startswith('4.damaged-')]  # moved aside, not deleted
  assert h.checkpoint_steps(str(tmp_path))[-1] == 6
