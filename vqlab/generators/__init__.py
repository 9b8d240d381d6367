"""Token generators: `names()`, `default_config(name)`, `build(config)` and
`get_api(name)`, the generator's `api.GeneratorApi` (what tasks use).

A generator is one module with `default_config`, `build` and `API`, and one
`REGISTRY.register` line here.
"""

from vqlab.generators import gpt
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion
from vqlab.registry import Registry

REGISTRY = Registry('generator', key_prefix='model')
REGISTRY.register('gpt', default_config=gpt.default_config, builder=gpt.build,
                  api=gpt.API)
REGISTRY.register('maskgit', default_config=maskgit.default_config,
                  builder=maskgit.build, api=maskgit.API)
REGISTRY.register('vq_diffusion', default_config=vq_diffusion.default_config,
                  builder=vq_diffusion.build, api=vq_diffusion.API)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
build_validated = REGISTRY.build_validated
validate = REGISTRY.validate
get_api = REGISTRY.get_api
