"""Steps of a run that other runs read, kept by that run's retention.

A generator reads one step of its tokenizer run for as long as it lives (its
token shards, samples and evals decode with it; run_record pins the step).
The tokenizer run, resumed or fine-tuned later in its own workdir, would
delete that step under train.max_to_keep, and no other step decodes the same
tokens. So the reader records its step in the other run,
`<run>/pinned/<reader id>.json` = {'reader': its workdir, 'key': the config
key, 'step': S}, and that run's Checkpointer never deletes a pinned step.
Deleting the file releases the step.
"""

import hashlib
import json
import os

import ml_collections

from vqlab import config_schema
from vqlab import fileio

DIRECTORY = 'pinned'
# The config keys whose step is read for the reader's whole life (a
# warm start reads its step once).
READ_FOR_LIFE = {
    'tokenizer.step': 'tokenizer.workdir',
    'condition.tokenizer_step': 'condition.tokenizer',
    'proxy.step': 'proxy.workdir'
}


def _path(run: str, reader: str, key: str) -> str:
  reader = fileio.absolute(reader)
  name = hashlib.sha1(f'{reader}\n{key}'.encode()).hexdigest()[:16]
  return os.path.join(run, DIRECTORY, f'{name}.json')


def pin(run: str, step: int, reader: str, key: str) -> str | None:
  """Records that `reader` (a workdir) reads `step` of `run` through config
  key `key`, replacing its earlier pin of that key. Returns None, or why the
  record could not be written (e.g. a run this user may not write to)."""
  record = {'reader': fileio.absolute(reader), 'key': key, 'step': int(step)}
  path = _path(run, reader, key)
  try:
    fileio.makedirs(os.path.dirname(path))
    fileio.write_atomically(path,
                            lambda f: f.write(json.dumps(record).encode()))
    if not fileio.is_url(path):  # The run's owner reads it whatever our umask.
      os.chmod(path, 0o644)
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


def pin_or_warn(run: str, step: int, reader: str, key: str) -> None:
  """`pin`, printing a warning where the record could not be written."""
  problem = pin(run, step, reader, key)
  if problem:
    print(
        f'vqlab: WARNING: could not record in {run} that {reader} reads its '
        f'step {step} ({problem}): if that run trains on, its '
        'train.max_to_keep may delete the step', flush=True)


def pin_read_steps(config: ml_collections.ConfigDict, reader: str) -> None:
  """`pin_or_warn` each READ_FOR_LIFE step that `config` (of the run in
  workdir `reader`) reads: its runs' retention then keeps it."""
  for step_key, run_key in READ_FOR_LIFE.items():
    run, step = (config_schema.lookup(config, run_key),
                 config_schema.lookup(config, step_key))
    if run and step is not None and step >= 0:
      pin_or_warn(run, step, reader, step_key)


def pinned_steps(run: str) -> tuple[set[int] | None, str]:
  """(the steps of `run` that other runs pinned, ''); (None, what could not
  be read) when a record cannot be read: then every step is to be kept, a
  pin never lost to a read error."""
  directory = os.path.join(run, DIRECTORY)
  steps, path = set(), directory
  try:
    if not fileio.exists(directory):
      return steps, ''
    for name in fileio.listdir(directory):
      if name.endswith('.json'):
        path = os.path.join(directory, name)
        with fileio.open(path) as f:
          steps.add(int(json.load(f)['step']))
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{path} ({type(e).__name__}: {e})'
  return steps, ''
