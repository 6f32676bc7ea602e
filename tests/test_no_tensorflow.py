"""TensorFlow stays on the host: the model, optimizer, steps, trainer module and benchmarks import without it, so
they run on accelerator machines where TF is absent (the GPU machines have no TensorFlow)."""
import subprocess
import sys


def test_device_side_modules_do_not_import_tensorflow():
  code = (
      'import sys\n'
      'import effnet.models, effnet.optim, effnet.progressive, effnet.steps, effnet.state, effnet.parallel\n'
      'import effnet.compile, effnet.checkpoint, effnet.train, effnet.convert, effnet.tools.benchmark\n'
      'import effnet.data, effnet.data.mix, effnet.data.randaugment_jax, effnet.data.synthetic\n'
      'bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))\n'
      'assert not bad, bad[:5]\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
