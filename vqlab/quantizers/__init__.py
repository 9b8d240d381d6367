"""Quantizers: `names()`, `default_config(name)`, `build(config)`.

`build(config)` returns a linen module `q`; `q(z, train=...)` on z: [..., d]
returns a `QuantizerOutput`; `q.codebook_size`, `q.code_dim` and
`q.indices_to_codes(indices)` describe and invert the code space.

  vq           VQ-VAE/VQGAN codebook; options: EMA codebook, dead-code
               restart, l2-normalized lookup, low-dimensional lookup.
  gumbel       Gumbel-softmax VQ with an annealed temperature.
  regularized  Regularized VQ: prior (KL to uniform) and stochastic mask.
  lfq          Lookup-free quantization (MAGVIT-v2), up to 2^30 codes.
  fsq          Finite scalar quantization.

Non-param state: `quantizer_stats` (vq EMA statistics and codebook) and
`quantizer_state` (train-step counter for gumbel's temperature and lfq's
entropy-weight schedules). Both advance only when called with `train=True`
and the collection mutable. Randomness (gumbel, regularized, vq restarts)
comes from the 'quantizer' rng stream.
"""

from vqlab.quantizers import fsq
from vqlab.quantizers import gumbel
from vqlab.quantizers import lfq
from vqlab.quantizers import regularized
from vqlab.quantizers import vq
from vqlab.quantizers.base import QuantizerOutput
from vqlab.registry import Registry

REGISTRY = Registry('quantizer', key_prefix='quantizer')
REGISTRY.register('vq', default_config=vq.default_config, builder=vq.build)
REGISTRY.register('gumbel', default_config=gumbel.default_config,
                  builder=gumbel.build)
REGISTRY.register('regularized', default_config=regularized.default_config,
                  builder=regularized.build)
REGISTRY.register('lfq', default_config=lfq.default_config, builder=lfq.build)
REGISTRY.register('fsq', default_config=fsq.default_config, builder=fsq.build)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
build_validated = REGISTRY.build_validated
validate = REGISTRY.validate

__all__ = [
    'QuantizerOutput', 'names', 'default_config', 'build', 'build_validated',
    'validate'
]
