"""A step that another run reads is kept by its run's retention."""

import glob
import os

import jax.numpy as jnp

from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import pins


def _steps(workdir):
  return sorted(
      int(n)
      for n in os.listdir(os.path.join(workdir, 'checkpoints'))
      if n.isdigit())


def test_a_pinned_step_outlives_max_to_keep_until_its_pin_is_released(tmp_path):
  """A tokenizer run resumed after a generator pinned its step 2 deleted
  step 2 under max_to_keep, and the generator could decode no more."""
  run, reader = str(tmp_path / 'tokenizer'), str(tmp_path / 'generator')
  checkpointer = checkpoint_lib.Checkpointer(run, max_to_keep=2)
  state = {'w': jnp.arange(4.0)}
  for step in (1, 2):
    checkpointer.save(step, state)
  checkpointer.wait()
  assert pins.pin(run, 2, reader, 'tokenizer.step') is None
  assert pins.pinned_steps(run) == ({2}, '')
  record, = glob.glob(os.path.join(run, pins.DIRECTORY, '*.json'))
  assert os.stat(record).st_mode & 0o777 == 0o644  # Its run's owner reads it.
  for step in (3, 4, 5):
    checkpointer.save(step, state)
  checkpointer.wait()
  assert _steps(run) == [2, 4, 5]
  # The reader moves on to step 5 (one record per reader and key): step 2
  # goes at the next save.
  pins.pin(run, 5, reader, 'tokenizer.step')
  assert pins.pinned_steps(run) == ({5}, '')
  for step in (6, 7):
    checkpointer.save(step, state)
  checkpointer.wait()
  checkpointer.close()
  assert _steps(run) == [5, 6, 7]


def test_a_pin_that_cannot_be_read_keeps_every_step_and_says_so(
    tmp_path, capsys):
  run = str(tmp_path / 'run')
  pins.pin(run, 1, str(tmp_path / 'a'), 'tokenizer.step')
  with open(os.path.join(run, pins.DIRECTORY, 'half.json'), 'w') as f:
    f.write('{"step": ')
  steps, problem = pins.pinned_steps(run)
  assert steps is None and problem.startswith(
      os.path.join(run, pins.DIRECTORY, 'half.json (JSONDecodeError: '))
  checkpointer = checkpoint_lib.Checkpointer(run, max_to_keep=1)
  for step in (1, 2, 3):
    checkpointer.save(step, {'w': jnp.zeros(2)})
  checkpointer.wait()
  checkpointer.close()
  assert _steps(run) == [1, 2, 3]
  # Said once, not at every save.
  assert capsys.readouterr().out.count('WARNING: cannot read the pin') == 1
