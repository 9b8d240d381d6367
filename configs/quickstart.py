"""The README's main job: a small VQGAN on the built-in photo crops, on CPU.

Trains in under 10 minutes on 2 CPU cores at 64x64 and reports PSNR and
codebook usage on whole photos held out from training.
"""

from vqlab.train import experiment
from vqlab.train.tasks import tokenizer


def get_config():
  config = experiment.base_config()
  config.update(tokenizer.default_config())
  config.seed = 0

  config.data.image_size = 64

  config.model.channels = 32
  config.model.channel_multipliers = (1, 2, 2)   # f = 4: 16x16 tokens.
  config.model.num_res_blocks = 1
  config.model.z_channels = 64
  config.model.quantizer.codebook_size = 512
  config.model.quantizer.embedding_dim = 16

  config.loss.disc_start = 700
  config.discriminator.base_features = 32
  config.discriminator.num_layers = 2

  config.optimizer.generator.learning_rate = 4e-4
  config.optimizer.generator.warmup_steps = 50
  config.optimizer.discriminator.learning_rate = 4e-4

  config.train.num_steps = 1000
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 16
  return config
