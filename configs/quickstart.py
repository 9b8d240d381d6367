"""The README's main job: a small VQGAN on the built-in photo crops, on CPU.

Trains in about 3 to 17 minutes on 2 CPU cores (README) and reports PSNR and
codebook usage at 64x64 on whole photos held out from training (PSNR 23.6
dB, 76% of the codes in use). The fully convolutional model trains on 32x32
crops cut at the pixel scale of 64x64 ones (4x cheaper steps) and is
evaluated at 64x64.
Cosine (l2-normalized) lookup of 8-dim codes with an EMA codebook that
restarts dead codes keeps the codebook in use; the GAN switches on for the
last 300 steps with a small weight (MaskGIT's 0.1), since a strong GAN term
costs PSNR in a short run.

`configs/quickstart.py:folder=PATH` trains the same model on your images in
PATH instead (the layouts of vqlab/data/image_folder.py; the same as
`configs/image_folder.py:PATH`).
"""

import os

from vqlab import data as data_lib
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer_config


def get_config(arg: str = ''):
  """The quickstart config; `arg` 'folder=PATH' swaps in your images."""
  config = experiment_config.base_config()
  config.update(tokenizer_config.default_config())
  config.seed = 0

  config.data.image_size = 64  # Eval tiles: 64x64 -> 16x16 tokens.
  config.data.train_image_size = 32  # Train crops.

  config.model.channels = 16
  config.model.channel_multipliers = (1, 2, 4)  # f = 4.
  config.model.num_res_blocks = 1
  config.model.z_channels = 64
  config.model.num_groups = 8
  config.model.quantizer.codebook_size = 512
  config.model.quantizer.embedding_dim = 8
  config.model.quantizer.l2_normalize = True
  # EMA codebook with dead-code restarts: 76% of the codes in use at the end
  # (a learned codebook leaves more than half of them dead in this budget).
  config.model.quantizer.ema = True
  config.model.quantizer.restart_threshold = 1.0

  config.loss.disc_start = 1000
  config.loss.disc_weight = 0.1
  config.discriminator.base_features = 16
  config.discriminator.num_layers = 2

  config.optimizer.generator.learning_rate = 4e-4
  config.optimizer.generator.warmup_steps = 50
  config.optimizer.generator.schedule = 'cosine'  # Decays to 0 at the end.
  config.optimizer.discriminator.learning_rate = 4e-4

  config.train.num_steps = 1300
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 650
  config.train.checkpoint_every = 650
  config.eval.batch_size = 16
  if arg:
    key, equals, path = arg.partition('=')
    if key != 'folder' or not equals:
      raise ValueError(f'configs/quickstart.py:{arg}: the only argument is '
                       'folder=PATH (the folder of your images).')
    use_folder(config, path)
  return config


def use_folder(config, path: str):
  """Trains on the images in `path` (see vqlab/data/image_folder.py) instead
  of the built-in photos, at the same sizes: eval on the held-out images
  resized and centre-cropped to 64x64, train on 32x32 random resized crops
  (many crops from a few images, as colab/train_on_your_images.ipynb does).
  An empty `path` is an error when the data are built."""
  folder = data_lib.default_config('image_folder')
  folder.path = os.path.abspath(os.path.expanduser(path)) if path else ''
  for key in ('image_size', 'train_image_size', 'seed'):
    folder[key] = config.data[key]
  folder.train_augment = 'random_resized_crop'
  folder.crop_area_range = (0.1, 1.0)
  config.data = folder
  return config
