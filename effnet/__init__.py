"""effnet: EfficientNet v1/v2 in JAX/Flax, exact to the official TensorFlow models.

Data flow, top to bottom: configs/ → effnet.models → effnet.state → effnet.data → effnet.steps →
effnet.checkpoint / effnet.metrics, tied together by effnet.train.train_and_evaluate.
"""
__version__ = '0.1.0'

# The one way scripts and notebooks load configs: `effnet.load_config('configs/demo.py:progressive')`.
from effnet.config_lib import apply_override, load_config  # noqa: E402

__all__ = ['apply_override', 'load_config']
