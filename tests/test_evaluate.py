"""effnet.tools.evaluate and effnet.tools.predict against the model applied directly.

The weights are a random initialisation written with tools.convert.write_weights. The reference is computed here on
another path: the digits test split read by tfds (decoded arrays, not the pipeline's encoded bytes), all 359
examples at once through `module.apply`, top-1 / top-5 / cross-entropy in numpy. The tool evaluates in batches of
64 (the last one 39 examples and 25 mask-0 rows), so a padding row counted, an example dropped or counted twice,
or the wrong weights would show in the count or the figures.
"""
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import DIGITS_TEST_SIZE, REPO, TINY_BLOCKS, tiny_config
from effnet import data, models
from effnet.data import pipeline
from effnet.tools import convert as convert_tool
from effnet.tools import evaluate as evaluate_tool
from effnet.tools import predict as predict_tool


@pytest.fixture(scope='module')
def setup(digits_dir, tmp_path_factory):
  """(config, weights dir, image files, the split's labels, direct logits of the split then of the files).

  The files: test digits 0 and 1 as PNG (lossless: their logits are the split's) and digit 2 as JPEG (its
  reference is its decoded pixels, appended after the split's 359 rows)."""
  config = tiny_config({'data.data_dir': digits_dir})
  module = models.build_model(config.model)
  variables = jax.device_get(models.make_initializer(module, 16)(jax.random.key(1)))
  root = tmp_path_factory.mktemp('evaluate')
  convert_tool.write_weights(str(root / 'weights'), variables, config, {'source': 'test: random init'})
  split = tfds.builder('digits', data_dir=digits_dir).as_dataset(split='test', shuffle_files=False)
  preprocess = pipeline.eval_image_fn(config.data, 16)
  whole = split.map(lambda ex: (ex['image'], preprocess(ex['image']), ex['label'])).batch(1000).get_single_element()
  raw, images, labels = (t.numpy() for t in whole)
  paths = [str(root / 'digit0.png'), str(root / 'digit1.png'), str(root / 'digit2.jpg')]
  for path, image in zip(paths, raw):
    tf.io.write_file(path, tf.io.encode_png(image) if path.endswith('png') else tf.io.encode_jpeg(image, quality=100))
  jpeg_pixels = tf.io.decode_jpeg(tf.io.read_file(paths[2]), channels=3)
  images = np.concatenate([images, preprocess(jpeg_pixels).numpy()[None]])
  forward = jax.jit(lambda v, x: module.apply(v, data.normalize(x, config.data.normalization), train=False))
  return config, str(root / 'weights'), paths, labels, np.asarray(forward(variables, images))


def _config_args(config):
  return [f'--config={REPO}/configs/demo.py', f'--config.data.data_dir={config.data.data_dir}',
          f'--config.model.blocks={TINY_BLOCKS!r}',
          '--config.model.head_filters=64', '--config.model.width_coefficient=1.0',
          '--config.model.depth_coefficient=1.0', '--config.data.image_size=16', '--config.data.eval_image_size=16']


def test_evaluate_counts_every_example_once(setup, tmp_path, capsys):
  config, out, _, labels, logits = setup
  logits = logits[:DIGITS_TEST_SIZE]
  argv = _config_args(config) + [f'--weights={out}', '--batch_size=64', f'--json={tmp_path}/r.json']
  assert evaluate_tool.main(argv) == 0
  results = json.loads((tmp_path / 'r.json').read_text())
  assert results['num_examples'] == results['split_examples'] == DIGITS_TEST_SIZE == len(labels)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  shifted = logits - logits.max(1, keepdims=True)
  log_probs = shifted - np.log(np.sum(np.exp(shifted), 1, keepdims=True))
  assert results['top1'] == pytest.approx(np.mean(logits.argmax(1) == labels), abs=1e-6)  # 1 example = 2.8e-3
  assert results['top5'] == pytest.approx(np.mean(np.any(top5 == labels[:, None], 1)), abs=1e-6)
  assert results['loss'] == pytest.approx(-np.mean(log_probs[np.arange(len(labels)), labels]), rel=1e-4)
  assert f'test: {DIGITS_TEST_SIZE} examples' in capsys.readouterr().out


def test_predict_image_files(setup):
  """Two PNG files and a JPEG: the top-5 classes, their names and probabilities."""
  config, out, paths, _, logits = setup
  want = np.concatenate([logits[:2], logits[-1:]])
  want = np.exp(want - want.max(1, keepdims=True))
  want /= want.sum(1, keepdims=True)
  _, opts = predict_tool.parse_args(_config_args(config) + [f'--weights={out}'] + paths)
  results = predict_tool.predict(config, opts)
  for result, p in zip(results, want):
    top = result['top']
    assert [i for i, _, _ in top] == list(np.argsort(-p, kind='stable')[:5])
    assert [name for _, name, _ in top] == [str(i) for i, _, _ in top]  # digits' label names are '0'..'9'
    np.testing.assert_allclose([q for _, _, q in top], p[[i for i, _, _ in top]], rtol=1e-5)
  lines = predict_tool.format_results(results).splitlines()
  assert lines[0] == paths[0] and len(lines) == 3 * 6
  assert lines[1] == f'  {100 * results[0]["top"][0][2]:6.2f}%  {results[0]["top"][0][1]}'


@pytest.mark.parametrize('tool, extra, message', [
    (evaluate_tool, ['--weights={empty}'], "--weights='.*'; allowed: a training workdir"),
    (evaluate_tool, ['--weights={out}', '--step=3'], r'--step=3; allowed: a step of .*: \[0\]'),
    (evaluate_tool, ['--weights={out}', '--batch_size=0'], '--batch_size=0; allowed: a batch size >= 1'),
    (evaluate_tool, ['--weights={out}', '--json=/nonexistent/r.json'], "--json='/nonexistent/r.json'"),
    (evaluate_tool, ['--weights={out}', '--config.data.eval_preprocess=crop'], 'data.eval_preprocess'),
    (predict_tool, ['--weights={out}', '{empty}/x.png'], r"IMAGE='.*/x.png'; allowed: an existing image file"),
    (predict_tool, ['--weights={out}', '{notimage}'], 'not a JPEG or PNG file'),
    (predict_tool, ['--weights={out}', '--top=11', '{notimage}'], r'--top=11; allowed: 1 .. model.num_classes'),
])
def test_bad_arguments_fail_before_loading(setup, tool, extra, message, tmp_path):
  config, out, _, _, _ = setup
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'notes.txt').write_text('not an image')
  fill = {'empty': str(tmp_path / 'empty'), 'out': out, 'notimage': str(tmp_path / 'notes.txt')}
  with pytest.raises(ValueError, match=message):
    tool.parse_args(_config_args(config) + [e.format(**fill) for e in extra])


def test_unknown_split_named_before_weights_load(setup):
  config, out, _, _, _ = setup
  opts = evaluate_tool.EvalOptions(weights=out, split='validation')
  with pytest.raises(ValueError, match=r"--split='validation': not a split of digits; allowed: \['test', 'train'\]"):
    evaluate_tool.evaluate(config, opts)
