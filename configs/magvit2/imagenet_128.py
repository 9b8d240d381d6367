"""The MAGVIT-v2 tokenizer trained on images only (ImageNet 128x128 ->
16x16 tokens): the same causal 3D model, every image a 1-frame video, so the
codebook can later be shared with video training. Needs the prepared tfds
`imagenet2012`; LPIPS needs the VGG16 file.
"""

from configs.magvit2 import ucf101_17x128
from vqlab import data


def get_config():
  config = ucf101_17x128.get_config()
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 128
  return config
