"""Tasks: what a config's `task` names. The loop is generic; a task supplies
`default_config()`, `validate(config)`, and an object with pure `init`,
`train_step`, `eval_step` and `summarize_eval`."""

from vqlab.errors import ConfigError
from vqlab.train.tasks import tokenizer

TASKS = {'tokenizer': tokenizer}


def get(name: str):
  """The task module registered under `name`."""
  if name not in TASKS:
    raise ConfigError('task', f'unknown task {name!r}; known: '
                      f'{", ".join(sorted(TASKS))}')
  return TASKS[name]
