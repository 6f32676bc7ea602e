"""Fine-tuning end to end, offline: a tiny pretraining run on digits is the source; the test writes a folder of PNG
digits (4 classes, train/test split folders) and fine-tunes on it with `data.name=folder:...`,
`train.init_from=<the source's workdir>` and a frozen backbone; a second start resumes its own checkpoint.
The recipes of configs/finetune.py are checked against google/automl datasets.py's `*Ft` values.

References not computed by the code under test: the source's weights are read with plain orbax; the folder's
class and image counts are the ones the test writes; the recipe numbers are automl's (datasets.py ImagenetFt,
CIFAR10Input / CIFAR100Input / FlowersInput / CarsInput, main.py's train size rule).
"""
import logging
import os
import pathlib
import re

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import _train_helpers as h
from effnet import config_lib, load_config, models, parallel, train
from effnet import state as state_lib

FINETUNE = str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'finetune.py')
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 16, 5
def _write_digit_folder(root: pathlib.Path) -> str:
  """root/{train,test}/digit_<k>/<i>.png: sklearn's first digits of classes 0..3 as 8x8 RGB PNGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  for k in range(CLASSES):
    rows = np.flatnonzero(d.target == k)
    for split, chosen in (('train', rows[:TRAIN_PER_CLASS]),
                          ('test', rows[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])):
      out = root / split / f'digit_{k}'
      out.mkdir(parents=True)
      for i in chosen:
        pixels = np.repeat(np.rint(d.images[i] * 255 / 16).astype(np.uint8)[..., None], 3, axis=-1)
        Image.fromarray(pixels).save(out / f'{i}.png')
  return str(root)


def _state(workdir, step: int) -> dict:
  """The stored train state of one step, read with plain orbax (no target: every array as stored)."""
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _backbone(params: dict) -> dict:
  return {'/'.join(map(str, p)): np.asarray(x) for p, x in _flat(params) if 'head_dense' not in p}


def _flat(tree, prefix=()):
  for k, v in tree.items():
    yield from (_flat(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), v)])


@pytest.fixture(scope='module')
def source_and_folder(tmp_path_factory, digits_dir, jax_cache_dir):
  """(the workdir of a 2-step pretraining on the 10 digits, the 4-class PNG folder)."""
  root = tmp_path_factory.mktemp('finetune')
  source = str(root / 'source')
  config = h.tiny_config({'data.data_dir': digits_dir, 'train.total_steps': 2,
                          'train.compile_cache_dir': jax_cache_dir})
  saved = {k: getattr(jax.config, k) for k in h.JAX_CACHE_FLAGS}
  train.train_and_evaluate(config, source)
  for k, v in saved.items():
    jax.config.update(k, v)
  return source, _write_digit_folder(root / 'images')


def _finetune_config(source: str, images: str, jax_cache_dir: str, **extra):
  return h.tiny_config({'data.name': f'folder:{images}', 'data.train_split': 'train', 'data.eval_split': 'test',
                        'model.num_classes': CLASSES, 'train.init_from': source, 'train.freeze': 'backbone',
                        'train.total_steps': 2, 'train.compile_cache_dir': jax_cache_dir, **extra})


def test_finetune_from_checkpoint_on_a_folder_with_a_frozen_backbone_then_resume(
    tmp_path, source_and_folder, jax_cache_dir, caplog, restore_jax_config):
  source, images = source_and_folder
  caplog.set_level(logging.INFO)
  final = train.train_and_evaluate(_finetune_config(source, images, jax_cache_dir), str(tmp_path))
  log = caplog.text
  assert re.search(r'the source classifier head_dense kernel has shape \((\d+), 10\), model.num_classes=4 needs '
                   r'\(\1, 4\): it is re-initialised', log), log
  assert f'initialised from the EMA weights of {source}' in log
  # The eval ran on the folder's test split: every test image once.
  assert final['eval_num_examples'] == CLASSES * TEST_PER_CLASS
  assert 0.0 <= final['eval_top1'] <= 1.0 and final['steps'] == 2
  # The backbone is the source's EMA copy, bit for bit, after every step (frozen); the classifier trains.
  src = _state(source, 2)
  expected = _backbone(src['ema_params'])
  for step in (1, 2):
    state = _state(str(tmp_path), step)
    for tree in ('params', 'ema_params'):
      got = _backbone(state[tree])
      assert got.keys() == expected.keys()
      for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=f'{tree}/{name} at step {step}')
    assert state['params']['head_dense']['kernel'].shape == (64, CLASSES)
  heads = [_state(str(tmp_path), s)['params']['head_dense']['kernel'] for s in (1, 2)]
  assert np.abs(heads[1] - heads[0]).max() > 0
  # A second start in the same workdir resumes its own checkpoint: init_from is not read again.
  caplog.clear()
  final = train.train_and_evaluate(
      _finetune_config(source, images, jax_cache_dir, **{'train.total_steps': 3}), str(tmp_path))
  assert 'restored step 2' in caplog.text and 'train.init_from' not in caplog.text
  assert final['steps'] == 3
  np.testing.assert_array_equal(_state(str(tmp_path), 3)['params']['head_dense']['bias'].shape, (CLASSES,))


def test_init_from_raw_weights_gives_the_step_0_state(source_and_folder, caplog):
  """train.init_ema=False: the raw weights and BN statistics of the source become both copies of the step-0 state;
  the classifier of another class count keeps the fresh state's initialisation."""
  source, images = source_and_folder
  config = _finetune_config(source, images, '', **{'train.init_ema': False, 'train.freeze': 'none'})
  sharding = parallel.replicated(parallel.make_mesh())
  fresh = state_lib.create_train_state(models.build_model(config.model), optax.identity(), 16, 0, sharding)
  caplog.set_level(logging.INFO)
  state = train._initialised_from(config, fresh, sharding)  # pylint: disable=protected-access
  assert f'initialised from the raw weights of {source}' in caplog.text
  src = _state(source, 2)
  for tree, expected in (('params', 'params'), ('ema_params', 'params'), ('batch_stats', 'batch_stats'),
                         ('ema_batch_stats', 'batch_stats')):
    got, want = _backbone(jax.device_get(getattr(state, tree))), _backbone(src[expected])
    assert got.keys() == want.keys()
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=f'{tree}/{name}')
  for tree in ('params', 'ema_params'):
    np.testing.assert_array_equal(getattr(state, tree)['head_dense']['kernel'], fresh.params['head_dense']['kernel'])


@pytest.mark.parametrize('override, message', [
    ({'data.name': 'folder:/nonexistent/images'}, r"data\.name='folder:/nonexistent/images'.*not a directory"),
    ({'model.num_classes': 10}, r'model\.num_classes=10; allowed: 4, the class folders'),
    ({'data.eval_split': 'validation'}, r"data\.eval_split='validation': no split folder"),
    ({'train.freeze': 'head'}, r"train\.freeze='head'; allowed: \('none', 'backbone'\)"),
])
def test_bad_finetune_inputs_fail_naming_the_field_before_compiling(
    tmp_path, source_and_folder, no_compile, override, message):
  source, images = source_and_folder
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_finetune_config(source, images, '', **override), str(tmp_path))


def test_init_from_without_checkpoints_fails_naming_the_field(tmp_path, source_and_folder, no_compile):
  source, images = source_and_folder
  with pytest.raises(ValueError, match=r"train\.init_from='.*empty'.*holding at least one step folder"):
    (tmp_path / 'empty').mkdir()
    train.train_and_evaluate(_finetune_config(str(tmp_path / 'empty'), images, ''), str(tmp_path / 'run'))


def test_class_folder_without_split_folders_is_refused(tmp_path, source_and_folder, no_compile):
  source, images = source_and_folder
  with pytest.raises(ValueError, match=r"data\.name=.*holds images directly.*without a split folder"):
    train.train_and_evaluate(_finetune_config(source, os.path.join(images, 'train'), ''), str(tmp_path))


# automl datasets.py: (tfds name, train split, eval split, CIFAR10Input-style num_images, num_classes).
OFFICIAL_DATASETS = {'cifar10': ('cifar10', 'train', 'test', 50_000, 10),
                     'cifar100': ('cifar100', 'train', 'test', 50_000, 100),
                     'oxford_flowers102': ('oxford_flowers102', 'train+validation', 'test', 1_020, 102),
                     'cars196': ('cars196', 'train', 'test', 8_144, 196)}


@pytest.mark.parametrize('dataset', sorted(OFFICIAL_DATASETS))
@pytest.mark.parametrize('model, eval_size, train_size', [('v2-s', 384, 384), ('v2-b3', 300, 288)])
def test_official_recipes_validate_and_hold_automl_ft_values(dataset, model, eval_size, train_size):
  c = load_config(f'{FINETUNE}:{dataset},model={model}')
  config_lib.validate(c)
  name, train_split, eval_split, num_images, classes = OFFICIAL_DATASETS[dataset]
  assert (c.data.name, c.data.train_split, c.data.eval_split) == (name, train_split, eval_split)
  assert (c.model.num_classes, c.train.num_train_examples) == (classes, num_images)
  # ImagenetFt: batch 512, max(min_steps 10000, 15 epochs), constant LR 0.0005 per 256, 1 warm-up epoch, EMA
  # 0.9996, wd 1e-5, smoothing 0.1, dropout 1e-6, survival 0.8, no mixup, augname 'ft', isize 1.0 (// 16 * 16).
  assert (c.train.batch_size, c.train.total_steps) == (512, max(10_000, int(15 * num_images / 512)))
  assert (c.optim.schedule, c.optim.lr_base, c.optim.warmup_epochs) == ('constant', 0.0005, 1.0)
  assert (c.optim.ema_decay, c.optim.weight_decay, c.optim.label_smoothing) == (0.9996, 1e-5, 0.1)
  assert (c.model.dropout_rate, c.model.survival_prob) == (0.000001, 0.8)
  assert (c.data.mixup_alpha, c.data.cutmix_alpha, c.data.augment) == (0.0, 0.0, 'ft')
  assert (c.data.eval_image_size, c.data.image_size) == (eval_size, train_size)
  assert not c.progressive.enabled and c.train.freeze == 'none' and c.train.init_ema


def test_folder_recipe_takes_the_class_count_from_the_folder(source_and_folder):
  _, images = source_and_folder
  c = load_config(f'{FINETUNE}:folder,path={images},model=v2-b0,freeze')
  config_lib.validate(c)
  assert c.model.num_classes == CLASSES and c.train.num_train_examples == CLASSES * TRAIN_PER_CLASS
  assert (c.data.name, c.data.eval_split, c.train.freeze) == (f'folder:{images}', 'test', 'backbone')
