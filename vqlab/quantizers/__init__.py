"""Quantizers: `names()`, `default_config(name)`, `build(config)`.

`build(config)` returns a linen module `q`; `q(z, train=...)` on z: [..., d]
returns a `QuantizerOutput`; `q.codebook_size`, `q.code_dim` and
`q.indices_to_codes(indices)` describe and invert the code space.
"""

from vqlab.quantizers import vq
from vqlab.quantizers.base import QuantizerOutput
from vqlab.registry import Registry

REGISTRY = Registry('quantizer', key_prefix='quantizer')
REGISTRY.register('vq', default_config=vq.default_config, builder=vq.build)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
validate = REGISTRY.validate

__all__ = ['QuantizerOutput', 'names', 'default_config', 'build', 'validate']
