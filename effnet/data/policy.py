"""RandAugment's op list and constants (official order and values), shared by the host TensorFlow implementation
(effnet.data.augment) and the batched on-device JAX one (effnet.data.randaugment_jax). No TensorFlow import."""

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
# Cutout's half-side and Translate's pixels at MAX_LEVEL: RandAugment's, and AutoAugment policy v0's (host only).
RANDAUGMENT_CUTOUT, RANDAUGMENT_TRANSLATE = 40, 100
AUTOAUGMENT_CUTOUT, AUTOAUGMENT_TRANSLATE = 100, 250
