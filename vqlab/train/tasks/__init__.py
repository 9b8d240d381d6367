"""Tasks: what a config's `task` names. The loop is generic; a task supplies
`default_config()`, `validate(config)`, `MODEL_REGISTRY` (where
`model.name` is looked up), and `build(config, workdir)`
returning an object with pure `init`, `train_step`, `eval_step`,
`summarize_eval` and `image_rows`. Optional hooks: `data_source(split, ...)`
(data other than the `data` section, e.g. token shards) and `sample_images`
(eval pictures are generated samples)."""

from vqlab.errors import ConfigError
from vqlab.train.tasks import generator
from vqlab.train.tasks import proxy_codes
from vqlab.train.tasks import tokenizer

TASKS = {'tokenizer': tokenizer, 'generator': generator,
         'titok_proxy': proxy_codes}


def get(name: str):
  """The task module registered under `name`."""
  if name not in TASKS:
    raise ConfigError('task', f'unknown task {name!r}; known: '
                      f'{", ".join(sorted(TASKS))}')
  return TASKS[name]
