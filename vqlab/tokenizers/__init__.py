"""Tokenizers: `names()`, `default_config(name)`, `build(config, dtype=...)`.

A tokenizer module has `encode(x, train) -> (indices, QuantizerOutput)`,
`decode_indices(indices) -> x`, `__call__(x, train) -> (x_rec, QuantizerOutput)`
and, for GAN training, `forward_with_features`, `last_layer` and `LAST_LAYER`.
"""

from vqlab import quantizers
from vqlab.registry import Registry
from vqlab.tokenizers import vqgan

REGISTRY = Registry('tokenizer', key_prefix='model',
                    subcomponents={'quantizer': quantizers.REGISTRY})
REGISTRY.register('vqgan', default_config=vqgan.default_config,
                  builder=vqgan.build)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
validate = REGISTRY.validate
