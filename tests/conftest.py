"""Test set-up shared by every test file: the environment, the tests' tiny model config and the session fixtures.

Environment variables must be set before jax / tensorflow are imported, which is why they live here. The tiny config
and the digits / compilation-cache fixtures are session-wide so that every engine test (in-process or in a child
process started by tests/_train_helpers.py) trains the same model on the same prepared data and reuses one persistent
XLA cache: CPU compile time is the suite's cost driver.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def _install_torchvision_shim():
  """timm imports torchvision, whose PyPI build is CUDA-only; define its op schemas so CPU torch can import it."""
  try:
    import torch
  except ImportError:
    return
  if torch.version.cuda is not None:  # a CUDA torch (PyPI's, on Python 3.12) loads torchvision's own ops
    return
  try:
    torch.ops.torchvision.nms  # noqa: B018
  except (AttributeError, RuntimeError):
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_SHIM"] = lib


# The longest files first: `make test` hands whole files to two workers in collection order, and starting the long
# ones first keeps one worker from finishing alone on the last long file. test_demo.py (one test, the longest) goes
# first; then the files that train real runs (order measured on 2 cores), then the new ones: runs that train, then
# conversions / exports and the official-code comparisons (their order is a guess until measured).
_LONG_FILES = ('test_demo.py', 'test_search.py', 'test_distributed.py', 'test_resume.py', 'test_resume_changes.py',
               'test_faults.py', 'test_grid_search.py', 'test_progressive_train.py', 'test_checkpoint_damage.py',
               'test_train.py', 'test_bad_examples.py', 'test_finetune.py', 'test_notebook.py', 'test_convert.py',
               'test_convert_tf.py', 'test_evaluate.py', 'test_convert_keras.py', 'test_export.py',
               'test_lite.py', 'test_official_augment.py', 'test_official_eval.py', 'test_official_schedule.py',
               'test_workdir_lock.py', 'test_image_dtype.py')


def _missing_long_files() -> list[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  return [name for name in _LONG_FILES if not os.path.isfile(os.path.join(here, name))]


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(_LONG_FILES)))  # stable: order within a file kept


def pytest_configure(config):
  _install_torchvision_shim()  # here, not at import: the training child processes import this module too
  if hasattr(config.option, 'loadscopereorder'):
    # pytest-xdist >= 3.6 re-sorts --dist loadfile's files by their number of tests (most first), which undid the
    # order above (test_demo.py, one test, started last): keep the collection order.
    config.option.loadscopereorder = False
  missing = _missing_long_files()
  if missing and not hasattr(config, 'workerinput'):  # once, in the controller; the order skips the missing files
    config.issue_config_time_warning(pytest.PytestConfigWarning(
        f'tests/conftest.py _LONG_FILES names files that do not exist (renamed or removed?): {missing}'), stacklevel=2)
  config.addinivalue_line("markers", "slow: long-running (still runs in CI)")
  config.addinivalue_line("markers", "multiprocess: starts several JAX processes on localhost")
  config.addinivalue_line("markers", "demo: the built-in dataset accuracy target")


# The tests' tiny model: two blocks (one fused, one MBConv with SE), a 64-wide head, 16 px images.
TINY_BLOCKS = ('r1_k3_s1_e1_i16_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25')
DIGITS_TEST_SIZE = 359  # the digits builder's test split (20% of sklearn's 1,797, stratified)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(config):
  """Puts the tiny model into `config` (any config: the demo's, a progressive one, a runlocal ImageNet one)."""
  config.model.blocks = TINY_BLOCKS
  config.model.head_filters = 64
  config.model.width_coefficient = config.model.depth_coefficient = 1.0
  return config


def tiny_config(overrides: dict | None = None, spec: str = 'configs/demo.py'):
  """`spec` (default configs/demo.py: digits, real pipeline) with the tiny model; deterministic and quick to compile.

  Checkpoints are synchronous and written every step, every step is logged, and eval runs only at the end.
  Dropout 0.1 and stochastic depth (survival 0.8) stay on, and the data are shuffled, so RNG and data order matter.
  """
  # Field assignments like config_lib.apply_runlocal's, but a different target: the real demo pipeline at 16 px.
  import effnet  # pylint: disable=g-import-not-at-top
  c = tiny_model(effnet.load_config(os.path.join(REPO, spec)))
  c.model.dropout_rate = 0.1
  c.model.survival_prob = 0.8
  c.data.image_size = c.data.eval_image_size = 16
  c.data.cache = False
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
  c.train.total_steps = 4
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 1
  c.train.keep_checkpoints = 100
  c.train.async_checkpointing = False
  c.train.eval_every_steps = 10_000
  c.train.compile_ahead = False
  c.optim.warmup_epochs = 0.1  # reach a real learning rate within a few steps so the steps do change the params
  # The engine tests' expected values (logged LRs on resume, divergence steps) were written against this optimizer;
  # the demo's own recipe (lr_base 0.008, cosine, mean-square from 0) is held to its accuracy by test_demo.
  c.optim.lr_base, c.optim.schedule, c.optim.rmsprop_initial_scale = 0.064, 'constant', 1.0
  for key, value in (overrides or {}).items():
    set_field(c, key, value)
  return c


def set_field(config, dotted: str, value) -> None:
  """config['a.b.c'] = value, with JSON lists (from a child's command line) turned back into tuples."""
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = tuple(value) if isinstance(value, list) else value


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """The built-in digits set prepared once (offline, about a second), so tests and child processes never race."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from effnet.data import digits  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('digits', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def jax_cache_dir(tmp_path_factory):
  """One persistent compilation cache for every engine test: the tiny model's steps compile once per shape."""
  return str(tmp_path_factory.mktemp('jax_cache'))


JAX_CACHE_FLAGS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
                    'jax_persistent_cache_min_entry_size_bytes', 'jax_persistent_cache_enable_xla_caches')


@pytest.fixture
def restore_jax_config():
  """train_and_evaluate points JAX's process-global compilation cache at the run's directory; put it back so the
  tests that run after these in the same pytest process are not affected."""
  import jax  # pylint: disable=g-import-not-at-top
  saved = {k: getattr(jax.config, k) for k in JAX_CACHE_FLAGS}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()


@pytest.fixture
def no_compile(monkeypatch):
  """Any attempt to build the state or compile a step fails the test: config errors must come first."""
  from effnet import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from effnet import state as state_lib  # pylint: disable=g-import-not-at-top

  def boom(*a, **k):
    raise AssertionError('the engine built the state / compiled before rejecting the config')
  monkeypatch.setattr(compile_lib.StepCompiler, '__init__', boom)
  monkeypatch.setattr(state_lib, 'create_train_state', boom)
