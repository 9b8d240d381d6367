"""Tasks: what a config's `task` names (the contract: `tasks/base.py`).

Each entry gives the task's config sections and their checks, where its
`model.name` is looked up, and the `build(config, workdir)` that reads what
the task needs and returns a `base.Task` for the loop.
"""

from vqlab import generators
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.losses import discriminators
from vqlab.train.tasks import base
from vqlab.train.tasks import generator
from vqlab.train.tasks import proxy_codes
from vqlab.train.tasks import tokenizer

TASKS = {
    'tokenizer': base.TaskSpec(
        name='tokenizer', default_config=tokenizer.default_config,
        validate=tokenizer.validate, model_registry=tokenizers,
        build=tokenizer.build,
        subcomponents={'discriminator': discriminators.REGISTRY}),
    'generator': base.TaskSpec(
        name='generator', default_config=generator.default_config,
        validate=generator.validate, model_registry=generators,
        build=generator.build),
    'titok_proxy': base.TaskSpec(
        name='titok_proxy', default_config=proxy_codes.default_config,
        validate=proxy_codes.validate, model_registry=tokenizers,
        build=proxy_codes.build),
}


def get(name: str) -> base.TaskSpec:
  """The task registered under `name`."""
  if name not in TASKS:
    raise ConfigError('task', f'unknown task {name!r}; known: '
                      f'{", ".join(sorted(TASKS))}')
  return TASKS[name]
