"""VQGAN f=16 with lookup-free quantization at K = 2^18 (MAGVIT-v2).

18 bits factorized into two 2^9 sub-tokens (indices [B, 16, 16, 2]); the
batch entropy is exact over all 2^18 codes, as one product of the two 9-bit
halves' marginals (memory O(tokens * 2^9 + 2^18), see vqlab/quantizers/lfq.py).
Commitment 0.25, entropy penalty 0.1 at tau = 0.01.
"""

from configs.vqgan import _base


def get_config():
  config = _base.with_quantizer('lfq')
  q = config.model.quantizer
  q.codebook_size = 2**18
  q.factor_bits = (9, 9)
  q.commitment_weight = 0.25
  q.entropy_weight = 0.1
  q.entropy_temperature = 0.01
  return config
