"""effnet.weights.load_variables: the three kinds of weights directory, EMA or raw, step choice, the two errors and
the classifier-free read of a fine-tune.

The reference for every read is the tree that was saved (a TrainState built here, or the variables handed to
tools.convert.write_weights), compared exactly: the code under test only reads.
"""
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from conftest import tiny_config
from effnet import checkpoint as ckpt_lib
from effnet import models, weights
from effnet import state as state_lib
from effnet.tools import convert as convert_tool


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir with TrainState steps 3 and 7 written by an SGD run (not the config's RMSProp: the reader must not
  need the optimizer). Step 7's EMA weights are its raw weights + 1, its raw weights step 3's + 2."""
  config = tiny_config()
  shapes = models.abstract_variables(models.build_model(config.model), 16)  # nothing compiled: random values
  rng = np.random.default_rng(0)
  fill = lambda s: rng.standard_normal(s.shape).astype(np.float32)  # noqa: E731
  params, batch_stats = jax.tree.map(fill, dict(shapes['params'])), jax.tree.map(fill, dict(shapes['batch_stats']))
  state = state_lib.TrainState(step=np.zeros((), np.int32), params=params, batch_stats=batch_stats,
                               opt_state=optax.sgd(0.1, momentum=0.9).init(params), ema_params=params,
                               ema_batch_stats=batch_stats, rng=np.zeros(2, np.uint32))
  root = tmp_path_factory.mktemp('weights') / 'work'
  checkpointer = ckpt_lib.Checkpointer(str(root / 'checkpoints'), use_async=False)
  saved = {}
  for step, offset in ((3, 0.0), (7, 2.0)):
    params = jax.tree.map(lambda p: p + offset, state.params)  # noqa: B023
    s = state.replace(step=state.step + step, params=params, ema_params=jax.tree.map(lambda p: p + 1.0, params))
    checkpointer.save(step, s, force=True)
    saved[step] = _host(s)
  checkpointer.close()
  return config, root, saved


def _assert_tree_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, w)


def test_workdir_and_checkpoints_folder_ema_raw_and_step(workdir):
  config, root, saved = workdir
  for path in (root, root / 'checkpoints'):
    for ema, step in ((True, None), (False, None), (False, 3), (True, 3)):
      want = saved[7 if step is None else step].eval_variables(ema)
      _assert_tree_equal(weights.load_variables(str(path), config, ema=ema, step=step), want)
  # ema=None follows config.train.eval_ema
  for eval_ema in (True, False):
    config.train.eval_ema = eval_ema
    _assert_tree_equal(weights.load_variables(str(root), config), saved[7].eval_variables(eval_ema))


def test_convert_output(workdir, tmp_path):
  """tools.convert's layout (only the four variable items, step 0), through read_weights and load_variables."""
  config, _, saved = workdir
  variables = saved[3].eval_variables(False)
  out = str(tmp_path / 'converted')
  convert_tool.write_weights(out, variables, config, {'source': 'test'})
  for ema in (True, False):
    _assert_tree_equal(weights.load_variables(out, config, ema=ema), variables)
  _assert_tree_equal(convert_tool.read_weights(out, config), variables)


def test_bad_path_and_step(workdir, tmp_path):
  config, root, _ = workdir
  for path in (tmp_path, tmp_path / 'missing'):
    with pytest.raises(ValueError, match=rf"path='{path}'; allowed: a training workdir, its checkpoints folder, "
                                         r'or a `python -m effnet.tools.convert` output directory'):
      weights.load_variables(str(path), config)
  with pytest.raises(ValueError, match=r'step=5; allowed: a step of .*/work/checkpoints: \[3, 7\]'):
    weights.load_variables(str(root), config, step=5)


def test_other_model_names_first_variable(workdir):
  config, root, _ = workdir
  other = tiny_config()
  other.model.blocks = ('r1_k3_s1_e1_i16_o16_c1', 'r1_k3_s2_e4_i16_o32_se0.25')  # block 1 outputs 32, not 24
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r'first mismatched variable: ema_batch_stats/blocks_1/project_bn/mean has shape '
                           r'\(24,\) in the checkpoint but \(32,\) in the model'):
    weights.load_variables(str(root), other, ema=True)


def test_skip_head_reads_backbone_of_other_class_count(workdir):
  config, root, saved = workdir
  other = tiny_config()
  other.model.num_classes = 3
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r'params/head_dense/bias has shape \(10,\)'):
    weights.load_variables(str(root), other, ema=False)
  got = weights.load_variables(str(root), other, ema=False, skip_head=True)
  want = saved[7].eval_variables(False)
  want = {'params': {k: v for k, v in want['params'].items() if k != weights.CLASSIFIER},
          'batch_stats': want['batch_stats']}
  _assert_tree_equal(got, want)


def test_newest_step_damaged_walks_back(workdir, tmp_path, caplog):
  """The newest step lost its array metadata (one of the damages effnet.checkpoint recognises): step=None reads the
  previous step, as a resume does, and says so; the damaged step asked for by number fails."""
  config, root, saved = workdir
  copy = tmp_path / 'work'
  shutil.copytree(root, copy)
  os.remove(copy / 'checkpoints' / '7' / 'state' / '_METADATA')
  _assert_tree_equal(weights.load_variables(str(copy), config, ema=False), saved[3].eval_variables(False))
  assert 'checkpoint step 7' in caplog.text and 'is damaged' in caplog.text
  with pytest.raises(FileNotFoundError, match='_METADATA'):
    weights.load_variables(str(copy), config, ema=False, step=7)
