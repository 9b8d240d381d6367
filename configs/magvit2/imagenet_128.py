"""The MAGVIT-v2 tokenizer trained on images only (ImageNet 128x128 ->
16x16 tokens): the same causal 3D model, every image a 1-frame video, so the
codebook can later be shared with video training. Needs the prepared tfds
`imagenet2012`; LPIPS needs the VGG16 file.

The model keeps the video config's layout (scanned, rematerialized res
blocks), so either run's checkpoint starts the other. Images need no
microbatches: 32 per device compile to a 26.5 GiB peak estimate, 8 to 12.3
(XLA:CPU, benchmarks/README.md). Train images are flipped at random (the
tfds default); Open-MAGVIT2's image loader (its data/base.py: resize, random
crop) does not flip: `--config.data.random_flip=false` for its recipe.
"""

from configs.magvit2 import ucf101_17x128
from vqlab import data


def get_config():
  config = ucf101_17x128.get_config()
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 128
  config.train.microbatches = 1
  # The video config's schedule counts UCF-101 epochs: 500k steps here,
  # 1 ImageNet epoch of warmup at batch 256, then cosine decay.
  config.train.num_steps = 500_000
  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.warmup_steps = 1_281_167 // 256
  return config
