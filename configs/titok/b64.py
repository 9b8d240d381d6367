"""TiTok-B-64 at 256x256 (Yu et al. 2024): 64 tokens of 4096 12-dim
l2-normalized codes, ViT-B encoder and decoder, patch size 16.

Stage 1 predicts the codes of the MaskGIT VQGAN (configs/vqgan/maskgit_f16.py,
1024 codes on a 16x16 grid) trained in workdirs/vqgan_maskgit_f16; stage 2
fine-tunes the decoder in pixel space. ImageNet through tfds (imagenet2012).

  python main.py --config=configs/titok/b64.py:1 --workdir=workdirs/titok_b64_stage1
  python main.py --config=configs/titok/b64.py:2 --workdir=workdirs/titok_b64_stage2
"""

from configs.titok import _common
from vqlab import data


def get_config(stage: str = '1'):
  model = _common.titok_model('B', num_tokens=64, image_size=256,
                              patch_size=16, codebook_size=4096,
                              proxy_codebook_size=1024)
  if stage == '1':
    config = _common.stage1(model, 'workdirs/vqgan_maskgit_f16')
    # Paper: AdamW (0.9, 0.99), lr 1e-4, weight decay 1e-4, cosine schedule
    # with 10k warmup steps, batch 1024 (TiTok-L-32: 1M steps).
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = 10_000
    config.optimizer.schedule = 'cosine'
    config.train.num_steps = 1_000_000
  elif stage == '2':
    config = _common.stage2(model, 'workdirs/titok_b64_stage1')
    config.train.num_steps = 500_000
  else:
    raise ValueError(f"stage must be '1' or '2', got {stage!r}")
  config.compute_dtype = 'bfloat16'
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  config.train.batch_size = 1024
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  return config
