"""VQGAN f=16 as in taming-transformers (ImageNet, 256x256, 1024 codes).

Needs the prepared tfds `imagenet2012` (tfds build imagenet2012
--manual_dir=... --data_dir=...); point data.data_dir at it. The LPIPS loss
needs the torchvision VGG16 file (vgg16-397923af.pth) in the weights directory
(`weights_dir` or $VQLAB_WEIGHTS_DIR); rFID in eval uses the pytorch-fid
Inception file when it is there.
"""

from vqlab import data
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer_config


def get_config():
  config = experiment_config.base_config()
  config.update(tokenizer_config.default_config())
  config.compute_dtype = 'bfloat16'

  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  # Taming's ImageNet loader: shorter side to 256 by albumentations'
  # SmallestMaxSize (OpenCV INTER_LINEAR, no antialiasing) and a random crop
  # (eval: the centre crop), no flip.
  config.data.random_flip = False
  config.data.resize_method = 'bilinear_no_antialias'

  config.model.channels = 128
  config.model.channel_multipliers = (1, 1, 2, 2, 4)  # f = 16: 16x16 tokens.
  config.model.num_res_blocks = 2
  config.model.attention_levels = (4,)
  config.model.z_channels = 256
  config.model.num_groups = 32
  config.model.quantizer.codebook_size = 1024
  config.model.quantizer.embedding_dim = 256

  config.loss.perceptual_weight = 1.0  # Taming: LPIPS weight 1.0.
  config.loss.disc_start = 250_001  # Taming's imagenet_vqgan.yaml.
  config.loss.adaptive_delta = 1e-4  # Taming's code (the paper: 1e-6).
  config.discriminator.base_features = 64
  config.discriminator.num_layers = 3

  # Taming: lr = 4.5e-6 * batch size, Adam(0.5, 0.9).
  config.train.batch_size = 64
  config.optimizer.generator.learning_rate = 4.5e-6 * 64
  config.optimizer.discriminator.learning_rate = 4.5e-6 * 64
  config.train.num_steps = 500_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 64
  # Its rFID was measured with torch-fidelity: the TF Inception graph's input.
  config.eval.inception_input = 'tf'
  return config
