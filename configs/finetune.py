r"""Fine-tuning with the official transfer recipe (google/automl efficientnetv2 datasets.py, `*Ft` configs), on the
four transfer sets of the EfficientNetV2 paper or on a user's own image folder.

  python -m effnet.tools.convert --config=configs/efficientnetv2.py:s --source=timm:tf_efficientnetv2_s \
      --out=/tmp/v2s_in1k
  python -m effnet.main --config=configs/finetune.py:cifar10,model=v2-s --workdir=/tmp/ft_cifar10 \
      --config.train.init_from=/tmp/v2s_in1k
  python -m effnet.main --config=configs/finetune.py:folder,path=/data/pets,model=v2-b0 --workdir=/tmp/ft_pets \
      --config.train.init_from=/tmp/my_pretraining_workdir [--config.train.freeze=backbone]

Arg tokens: the dataset (cifar10, cifar100, oxford_flowers102, cars196, folder); model=<family-variant> (v2-s,
v2-m, v2-l, v2-xl, v2-b0..b3, v1-b0..b7; default v2-s); path=<dir> for dataset=folder (the tfds ImageFolder
layout DIR/<split>/<class>/<image>, README "Fine-tuning"); `freeze` (train.freeze='backbone': only the classifier
trains).

`train.init_from` names the pretrained weights (a training workdir, its checkpoints folder or a tools.convert
output); their EMA copies are read unless train.init_ema=False (automl's ft_init_ema=True). A classifier of another
class count is re-initialised (the log says so). Every value below names its source: `ImagenetFt` / `Cifar10Ft`
(datasets.py, the `*Ft` classes all share ImagenetFt's values), the dataset input classes (datasets.py
`CIFAR10Input` ...), main.py, preprocessing.py.
"""
from effnet import config_lib
from effnet import models
from effnet.data import folder

# datasets.py ImagenetFt (every *Ft config inherits it).
BATCH = 512                # train.batch_size=512
EPOCHS = 15.0              # train.epochs=15
MIN_STEPS = 10_000         # train.min_steps=10000; main.py: train_steps = max(min_steps, epochs * steps_per_epoch)
LR_BASE = 0.0005           # train.lr_base=0.0005 per 256 images (x 512 / 256 = 0.001), lr_sched='constant'
WARMUP_EPOCHS = 1.0        # train.lr_warmup_epoch=1
EMA_DECAY = 0.9996         # train.ema_decay=0.9996
WEIGHT_DECAY = 1e-5        # train.weight_decay=1e-5 (hparams.py weight_decay_exclude '.*(bias|gamma|beta).*')
LABEL_SMOOTHING = 0.1      # train.label_smoothing=0.1
DROPOUT = 0.000001         # model.dropout_rate=0.000001 ("less regularization due to the limited training steps")
SURVIVAL_PROB = 0.8        # model.survival_prob=0.8

# datasets.py input classes: (tfds name, train split, eval split, num_images of the train split, num_classes).
# num_images is what the official steps_per_epoch divides (so warm-up and epochs count as there): FlowersInput
# says 1,020 for 'train+validation', which holds 2,040 images; kept, as it sets the official warm-up length.
DATASETS = {
    'cifar10': ('cifar10', 'train', 'test', 50_000, 10),                                   # CIFAR10Input
    'cifar100': ('cifar100', 'train', 'test', 50_000, 100),                                # CIFAR100Input
    'oxford_flowers102': ('oxford_flowers102', 'train+validation', 'test', 1_020, 102),    # FlowersInput
    'cars196': ('cars196', 'train', 'test', 8_144, 196),                                   # CarsInput
}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, dataset='cifar10', model='v2-s', path='', freeze=False)
  c = config_lib.base_config()
  _set_model(c, a.model)
  c.model.dropout_rate, c.model.survival_prob = DROPOUT, SURVIVAL_PROB
  _set_data(c, a.dataset, a.path)
  # preprocessing.py preprocess_for_finetune (augname='ft'): the whole image resized (no crop) in train and eval,
  # flip, cutout of pad image_size // 4 in train; (x / 255 - 0.5) / 0.5 ('inception'). ImagenetFt:
  # mixup_alpha=cutmix_alpha=0.
  c.data.train_preprocess = c.data.eval_preprocess = 'resize'
  c.data.resize_method = 'bilinear'  # tf.image.resize's default
  c.data.augment = 'ft'
  c.data.normalization = 'inception'
  c.data.mixup_alpha = c.data.cutmix_alpha = 0.0
  c.optim.schedule, c.optim.lr_base, c.optim.warmup_epochs = 'constant', LR_BASE, WARMUP_EPOCHS
  c.optim.ema_decay, c.optim.weight_decay, c.optim.label_smoothing = EMA_DECAY, WEIGHT_DECAY, LABEL_SMOOTHING
  c.optim.weight_decay_rule = 'automl'  # main.py's weight_decay_exclude
  c.train.batch_size = BATCH
  c.train.num_epochs = EPOCHS
  c.train.total_steps = max(MIN_STEPS, int(EPOCHS * c.train.num_train_examples / BATCH))
  c.progressive.enabled = False  # ImagenetFt: stages=0
  c.train.freeze = 'backbone' if a.freeze else 'none'
  c.lock()
  return c


def _set_model(c, name: str) -> None:
  """model=v2-s / v1-b3 ...: the variant's architecture; train size = eval size // 16 * 16 (ImagenetFt isize=1.0,
  main.py: int(eval_size * isize) // 16 * 16)."""
  family, _, variant = name.partition('-')
  if family not in ('v1', 'v2') or not variant:
    raise ValueError(f'config arg model={name!r}; allowed: v2-<{"|".join(models.V2_VARIANTS)}> or '
                     f'v1-<{"|".join(models.V1_VARIANTS)}>, e.g. model=v2-s')
  s = models.variant_settings(family, variant)
  config_lib.apply_model_settings(c, s)
  c.data.image_size = s['eval_image_size'] // 16 * 16


def _set_data(c, dataset: str, path: str) -> None:
  """The dataset's splits, class count and train size (datasets.py), or those of a user's folder."""
  if dataset == 'folder':
    if not path:
      raise ValueError("config arg dataset=folder needs path=<dir>, e.g. 'folder,path=/data/pets'")
    name = folder.PREFIX + path
    c.data.name, c.data.train_split = name, 'train'
    c.data.eval_split = folder.default_eval_split(name)
    c.model.num_classes = len(folder.check(name, [('data.train_split', 'train')]))  # one output per class folder
    c.train.num_train_examples = folder.num_images(name, 'train')
    return
  if dataset not in DATASETS:
    raise ValueError(f'config arg dataset={dataset!r}; allowed: {sorted(DATASETS) + ["folder"]}')
  name, train_split, eval_split, num_images, num_classes = DATASETS[dataset]
  c.data.name, c.data.train_split, c.data.eval_split = name, train_split, eval_split
  c.data.cache = True  # hparams.py data.cache=True
  c.train.num_train_examples = num_images
  c.model.num_classes = num_classes


def sweep(name='lr'):
  """Override lists for launch.sweep: 'lr' (half, the official and double per-256 LR), 'freeze' (all layers or the
  classifier only), 'init_ema' (the source's EMA or raw weights)."""
  if name == 'lr':
    return [{'optim.lr_base': lr} for lr in (LR_BASE / 2, LR_BASE, LR_BASE * 2)]
  if name == 'freeze':
    return [{'train.freeze': mode} for mode in ('none', 'backbone')]
  if name == 'init_ema':
    return [{'train.init_ema': ema} for ema in (True, False)]
  raise ValueError(f'sweep name {name!r}; allowed: lr, freeze, init_ema')

