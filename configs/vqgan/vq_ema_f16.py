"""VQGAN f=16 with an EMA codebook and dead-code restarts (VQ-VAE-2 style).

1024 codes looked up in 32 l2-normalized dimensions (ViT-VQGAN's low-dim,
cosine lookup) and learned by EMA (decay 0.99), restarting codes whose EMA
count falls below 0.01 from the batch (at decay 0.99, after about 460 idle
steps for a code whose count is 1, about 730 for one of 16 a step).
"""

from configs.vqgan import _base


def get_config():
  config = _base.with_quantizer('vq')
  q = config.model.quantizer
  q.codebook_size = 1024
  q.embedding_dim = 256
  q.projection_dim = 32
  q.l2_normalize = True
  q.ema = True
  q.decay = 0.99
  q.restart_threshold = 0.01
  return config
