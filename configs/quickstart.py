"""The README's main job: a small VQGAN on the built-in photo crops, on CPU.

Trains in under 10 minutes on 2 CPU cores and reports PSNR and codebook usage
at 64x64 on whole photos held out from training. The fully convolutional model
trains on 32x32 crops cut at the pixel scale of 64x64 ones (4x cheaper steps)
and is evaluated at 64x64. Cosine (l2-normalized) lookup of 8-dim codes keeps
the codebook in use; the GAN switches on for the last 300 steps with a small
weight (MaskGIT's 0.1), since a strong GAN term costs PSNR in a short run.
"""

from vqlab.train import experiment
from vqlab.train.tasks import tokenizer


def get_config():
  config = experiment.base_config()
  config.update(tokenizer.default_config())
  config.seed = 0

  config.data.image_size = 64        # Eval tiles: 64x64 -> 16x16 tokens.
  config.data.train_image_size = 32  # Train crops.

  config.model.channels = 16
  config.model.channel_multipliers = (1, 2, 4)   # f = 4.
  config.model.num_res_blocks = 1
  config.model.z_channels = 64
  config.model.num_groups = 8
  config.model.quantizer.codebook_size = 512
  config.model.quantizer.embedding_dim = 8
  config.model.quantizer.l2_normalize = True

  config.loss.disc_start = 1000
  config.loss.disc_weight = 0.1
  config.discriminator.base_features = 16
  config.discriminator.num_layers = 2

  config.optimizer.generator.learning_rate = 4e-4
  config.optimizer.generator.warmup_steps = 50
  config.optimizer.discriminator.learning_rate = 4e-4

  config.train.num_steps = 1300
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 650
  config.train.checkpoint_every = 650
  config.eval.batch_size = 16
  return config
