"""RandAugment's op list and constants (official order and values), shared by the host TensorFlow implementation
(effnet.data.augment) and the batched on-device JAX one (effnet.data.randaugment_jax). No TensorFlow import."""

FILL_VALUE = 128
MAX_LEVEL = 10.0
RANDAUGMENT_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'Color', 'Contrast',
    'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')
OP_INDEX = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
