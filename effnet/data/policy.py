"""RandAugment's op list, constants and magnitude -> argument rule (official order, values and arithmetic), shared
by the host TensorFlow implementation (effnet.data.augment) and the batched on-device JAX one
(effnet.data.randaugment_jax). No TensorFlow import."""
import math

import numpy as np

FILL_VALUE = 128
MAX_LEVEL = 10.0
RANDAUGMENT_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'Color', 'Contrast',
    'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')
OP_INDEX = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')

# Official `level_to_arg`: argument = magnitude / MAX_LEVEL * scale (floored for Posterize / Solarize / SolarizeAdd).
LEVEL_SCALES = {'Rotate': 30.0, 'ShearX': 0.3, 'ShearY': 0.3, 'Posterize': 4.0, 'Solarize': 256.0,
                'SolarizeAdd': 110.0}
ENHANCE_SCALE, ENHANCE_OFFSET = 1.8, 0.1  # Color / Contrast / Brightness / Sharpness: level * 1.8 + 0.1
# Cutout's half-side and Translate's pixels at MAX_LEVEL: RandAugment's, and AutoAugment policy v0's (host only).
RANDAUGMENT_CUTOUT, RANDAUGMENT_TRANSLATE = 40, 100
AUTOAUGMENT_CUTOUT, AUTOAUGMENT_TRANSLATE = 100, 250

# Positions in the vector `level_arguments` returns (both implementations index it by these names).
ARGUMENTS = ('degrees', 'cos', 'sin', 'shear', 'translate', 'enhance', 'posterize', 'solarize', 'solarize_add',
             'cutout')
ARG = {name: i for i, name in enumerate(ARGUMENTS)}


def level_arguments(magnitude, cutout_const=RANDAUGMENT_CUTOUT, translate_const=RANDAUGMENT_TRANSLATE):
  """float32 [len(ARGUMENTS)]: every op's argument at `magnitude`, in the official code's precision.

  The official `level_to_arg` runs in Python float64 — `(level / 10.) * 30.`, `(level / 10.) * 1.8 + 0.1`,
  `int((level / 10.) * 256)` — and the float results become float32 only when they meet a tensor; so the float64
  value is rounded once to float32 here (a float32 magnitude or float32 arithmetic moves some of them by 1 ulp,
  enough to flip nearest-pixel ties: docs/fidelity.md §3). Rotate's radians are float32(degrees) · float32(π/180)
  in float32 (the official tensor product); cos / sin are taken in float64 and rounded once, which equals TF's
  float32 cos / sin (glibc cosf) for every angle of the golden set and is within 1 ulp of it otherwise.
  Signs (Rotate, Shear, Translate) are applied by the caller.
  """
  level = float(magnitude) / MAX_LEVEL
  degrees = np.float32(level * LEVEL_SCALES['Rotate'])
  radians = float(degrees * np.float32(math.pi / 180.0))
  values = {'degrees': degrees, 'cos': math.cos(radians), 'sin': math.sin(radians),
            'shear': level * LEVEL_SCALES['ShearX'], 'translate': level * float(translate_const),
            'enhance': level * ENHANCE_SCALE + ENHANCE_OFFSET,
            'posterize': int(level * LEVEL_SCALES['Posterize']), 'solarize': int(level * LEVEL_SCALES['Solarize']),
            'solarize_add': int(level * LEVEL_SCALES['SolarizeAdd']), 'cutout': int(level * cutout_const)}
  return np.asarray([values[name] for name in ARGUMENTS], np.float64).astype(np.float32)
