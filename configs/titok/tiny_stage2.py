"""TiTok stage 2 on CPU: the decoder of configs/titok/tiny_stage1.py's run
(workdirs/titok_tiny_stage1) fine-tuned in pixel space through the decoder of
its proxy, the quickstart VQGAN (workdirs/quickstart); encoder and quantizer
frozen. Tokens for generators: 16 per image, `--config.tokenizer.workdir=`
this run's workdir with `model.token_shape=(16,)` and `vocab_size=256`."""

from configs import quickstart
from configs.titok import _common
from vqlab import data


def get_config():
  model = _common.titok_model('tiny', num_tokens=16, image_size=32,
                              patch_size=4, codebook_size=256,
                              proxy_codebook_size=512)
  config = _common.stage2(model, 'workdirs/titok_tiny_stage1',
                          'workdirs/quickstart',
                          quickstart.get_config().model)
  config.data = data.default_config('photos')
  config.data.image_size = 32
  config.data.train_image_size = 0
  config.loss.perceptual_weight = 0.0  # No VGG16 file needed on CPU.
  config.loss.r1_weight = 0.0
  config.loss.disc_start = 500
  config.discriminator.base_features = 16
  config.discriminator.channel_multipliers = (1, 2)
  config.ema.decay = 0.0
  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.learning_rate = 4e-4
  config.train.num_steps = 1000
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 32
  return config
