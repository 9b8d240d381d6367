"""Token generators: `names()`, `default_config(name)`, `build(config)`.

Generators (gpt, maskgit, vq_diffusion) register here as they are added; the
registry exists from the start so configs and tasks address all parts alike.
"""

from vqlab.generators import gpt
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion
from vqlab.registry import Registry

REGISTRY = Registry('generator', key_prefix='model')
REGISTRY.register('gpt', default_config=gpt.default_config, builder=gpt.build)
REGISTRY.register('maskgit', default_config=maskgit.default_config,
                  builder=maskgit.build)
REGISTRY.register('vq_diffusion', default_config=vq_diffusion.default_config,
                  builder=vq_diffusion.build)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
validate = REGISTRY.validate
