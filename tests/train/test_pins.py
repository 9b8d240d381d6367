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


def test_one_pin_per_reader_and_key_whatever_the_reader_path_and_tmp_files(
    tmp_path, monkeypatch):
  """A generator reading two steps of one run (tokenizer.step and
  condition.tokenizer_step) keeps both; a reader named by a relative path
  and by an absolute one is one reader; a pin write cut short (its .tmp)
  is not read as a pin (an unreadable pin keeps every step)."""
  run, reader = str(tmp_path / 'tokenizer'), str(tmp_path / 'generator')
  pins.pin(run, 3, reader, 'tokenizer.step')
  pins.pin(run, 7, reader, 'condition.tokenizer_step')
  assert pins.pinned_steps(run) == ({3, 7}, '')
  monkeypatch.chdir(tmp_path)
  pins.pin(run, 5, 'generator', 'tokenizer.step')
  assert pins.pinned_steps(run) == ({5, 7}, '')
  with open(os.path.join(run, pins.DIRECTORY, 'cut.json.tmp'), 'w') as f:
    f.write('{"step": ')
  assert pins.pinned_steps(run) == ({5, 7}, '')


def test_a_pin_is_readable_by_the_runs_owner_whatever_the_umask(tmp_path):
  run = str(tmp_path / 'tokenizer')
  umask = os.umask(0o077)
  try:
    pins.pin(run, 2, str(tmp_path / 'generator'), 'tokenizer.step')
  finally:
    os.umask(umask)
  record, = glob.glob(os.path.join(run, pins.DIRECTORY, '*.json'))
  assert os.stat(record).st_mode & 0o777 == 0o644


def test_a_pin_that_cannot_be_written_is_a_warning(tmp_path, capsys):
  """E.g. another user's run: the step may go, and the user is told."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  pins.pin_or_warn(str(tmp_path / 'run'), 2, str(tmp_path / 'g'),
                   'tokenizer.step')
  assert 'WARNING' not in capsys.readouterr().out
  pins.pin_or_warn(str(blocker / 'run'), 2, str(tmp_path / 'g'),
                   'tokenizer.step')
  out = capsys.readouterr().out
  assert out.startswith(f'vqlab: WARNING: could not record in {blocker}/run '
                        'that ') and 'may delete the step' in out
