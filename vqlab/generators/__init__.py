"""Token generators: `names()`, `default_config(name)`, `build(config)`.

Generators (gpt, maskgit, vq_diffusion) register here as they are added; the
registry exists from the start so configs and tasks address all parts alike.
"""

from vqlab.registry import Registry

REGISTRY = Registry('generator', key_prefix='model')

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
validate = REGISTRY.validate
