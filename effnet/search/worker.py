r"""Per-candidate entry module: an `effnet.main` run (same flags, same training) followed by the step-time benchmark
on the same device, so that S in the V2 reward is measured where the candidate trained (CPU, GPU or a TPU slice).

    python -m effnet.search.worker --config=configs/demo.py --workdir=DIR --config.model.blocks="('r1_...',)" \
        --bench_steps=20 --bench_warmup=3 --bench_repeats=3

Writes DIR/final_metrics.json (the trainer's) and DIR/step_time.json (effnet.tools.benchmark.run's dict, median step
after warm-up). `--search_train=false` only benchmarks (the reference architecture when its accuracy is not needed).
Each training appends a line to DIR/trainings.txt, so a resumed search can be checked for work it redid.
Like effnet.main, this is an entry module: the only one in effnet.search that defines flags, so nothing imports it.
It checks what effnet.main checks, as early: the config, its arg and every override before absl parses the flags
(`effnet.main.parse_flags`), then the workdir, each mistake one `error:` line with exit status 2 before anything
loads or is written.
"""
import json

from absl import app, flags, logging

from effnet import main as effnet_main  # defines --config / --workdir exactly as effnet.main does
from effnet import train
from effnet import workdir as workdir_lib
from effnet.search.candidates import STEP_TIME_FILE, TRAININGS_FILE

_TRAIN = flags.DEFINE_bool('search_train', True, 'train (and evaluate) before the benchmark')
_STEPS = flags.DEFINE_integer('bench_steps', 20, 'timed steps per repeat')
_WARMUP = flags.DEFINE_integer('bench_warmup', 3, 'untimed steps after compilation')
_REPEATS = flags.DEFINE_integer('bench_repeats', 3, 'repeats; the median step time is reported')
_BATCH = flags.DEFINE_integer('bench_batch', 0, 'benchmark batch (0: config.train.batch_size)')
_SIZE = flags.DEFINE_integer('bench_image_size', 0, 'benchmark image size (0: config.data.image_size)')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config, workdir = effnet_main._CONFIG.value, effnet_main._WORKDIR.value  # pylint: disable=protected-access
  effnet_main._exit_on_error(workdir_lib.check_usable, workdir)  # pylint: disable=protected-access
  wd = workdir_lib.as_path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  if _TRAIN.value:
    with (wd / TRAININGS_FILE).open('a') as f:
      f.write('train\n')
    final = effnet_main._exit_on_error(  # pylint: disable=protected-access
        train.train_and_evaluate, config, workdir, errors=effnet_main._RUN_REFUSALS)  # pylint: disable=protected-access
    if final.get('stopped') == 'preempted':
      logging.warning('preempted: no benchmark; the next run resumes from the checkpoint')
      raise SystemExit(3)
  import jax  # pylint: disable=g-import-not-at-top
  from effnet.tools import benchmark  # pylint: disable=g-import-not-at-top
  batch = _BATCH.value or config.train.batch_size
  size = _SIZE.value or config.data.image_size
  result = benchmark.run(config, batch, size, _STEPS.value, _WARMUP.value, _REPEATS.value)
  if jax.process_index() == 0:
    (wd / STEP_TIME_FILE).write_text(json.dumps(result, indent=2))
  print(json.dumps({'step_ms': result['step_ms'], 'compile_s': result['compile_s'], 'device': result['device']}))


if __name__ == '__main__':
  app.run(main, flags_parser=effnet_main.parse_flags)
