"""TiTok stage 1 on CPU: 16 tokens per 32x32 crop of the built-in photos,
predicting the codes of the quickstart VQGAN (f = 4: an 8x8 grid of 512
codes). Run the README's main job first (workdirs/quickstart), then

  python main.py --config=configs/titok/tiny_stage1.py --workdir=workdirs/titok_tiny_stage1
  python main.py --config=configs/titok/tiny_stage2.py --workdir=workdirs/titok_tiny_stage2
"""

from configs.titok import _common


def get_config():
  model = _common.titok_model('tiny', num_tokens=16, image_size=32,
                              patch_size=4, codebook_size=256,
                              proxy_codebook_size=512)
  config = _common.stage1(model, 'workdirs/quickstart')
  config.data.train_image_size = 0
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  config.train.num_steps = 1000
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 32
  return config
