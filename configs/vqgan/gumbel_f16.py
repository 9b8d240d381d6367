"""VQGAN f=16 with Gumbel-softmax quantization (taming's GumbelQuantize,
DALL-E's temperature annealing 1 -> 1/16)."""

from configs.vqgan import _base


def get_config():
  config = _base.with_quantizer('gumbel')
  q = config.model.quantizer
  q.codebook_size = 1024
  q.embedding_dim = 256
  q.temperature = 1.0
  q.temperature_final = 1.0 / 16
  q.temperature_anneal_steps = 150_000  # DALL-E annealed over 150k updates.
  # GumbelQuantize's default; the GumbelVQ model taming trained passes 1e-8.
  q.kl_weight = 5e-4
  return config
