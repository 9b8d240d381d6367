"""Tiny configs shared by tests: every component small enough for CPU."""

from configs import quickstart


def tokenizer_config(image_size: int = 16, steps: int = 4):
  """A VQGAN experiment that compiles and steps in seconds on CPU."""
  config = quickstart.get_config()
  config.data.image_size = image_size
  config.data.train_image_size = 0
  config.model.channels = 8
  config.model.channel_multipliers = (1, 2)
  config.model.z_channels = 8
  config.model.num_groups = 4
  config.model.quantizer.codebook_size = 32
  config.model.quantizer.embedding_dim = 4
  config.discriminator.base_features = 8
  config.discriminator.num_layers = 2
  config.loss.disc_start = 1
  config.optimizer.generator.warmup_steps = 0
  config.train.num_steps = steps
  config.train.batch_size = 8
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 2
  config.eval.batch_size = 8
  config.eval.max_batches = 1
  config.eval.num_images = 4
  return config
