"""Tasks: what a config's `task` names (the contract: `tasks/base.py`).

Each is registered with its `TaskSpec`: the task's config sections and their
checks, where its `model.name` is looked up, and the `build(config, workdir)`
that reads what the task needs and returns a `base.Task` for the loop.
"""

from vqlab import generators
from vqlab import tokenizers
from vqlab.losses import discriminators
from vqlab.registry import Registry
from vqlab.train.tasks import base
from vqlab.train.tasks import generator
from vqlab.train.tasks import generator_checks
from vqlab.train.tasks import generator_config
from vqlab.train.tasks import proxy_codes
from vqlab.train.tasks import tokenizer
from vqlab.train.tasks import tokenizer_config

REGISTRY = Registry('task', key_prefix='task', name_key='task')
for _spec in (
    base.TaskSpec(name='tokenizer',
                  default_config=tokenizer_config.default_config,
                  validate=tokenizer_config.validate, model_registry=tokenizers,
                  build=tokenizer.build,
                  subcomponents={'discriminator': discriminators.REGISTRY}),
    base.TaskSpec(name='generator',
                  default_config=generator_config.default_config,
                  validate=generator_config.validate, model_registry=generators,
                  build=generator.build, made_from=generator_checks.made_from),
    base.TaskSpec(name='titok_proxy', default_config=proxy_codes.default_config,
                  validate=proxy_codes.validate, model_registry=tokenizers,
                  build=proxy_codes.build),
):
  REGISTRY.register(_spec.name, default_config=_spec.default_config,
                    builder=_spec.build, api=_spec)
del _spec

names = REGISTRY.names


def get(name: str) -> base.TaskSpec:
  """The task registered under `name` (ConfigError naming `task` if none)."""
  return REGISTRY.get_api(name)
