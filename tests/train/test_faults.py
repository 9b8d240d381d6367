"""The faults a user hits in a run's first hour, each with the one line they
see and no checkpoint lost or overwritten: a partial newest step (set aside,
then saved over by the rerun), a changed config (stops before anything is
written), a readable checkpoint of another model (never called corrupt),
a full disk during a save, a workdir locked by another run, Ctrl-C, SIGTERM
during startup and during the final save, and kill -9 during an async save.
"""

import contextlib
import errno
import fcntl
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from tests import compile_options
from tests import paths
from tests import tiny
from vqlab import data as data_lib
from vqlab.data import token_shards
from vqlab.errors import CheckpointError
from vqlab.errors import ConfigError
from vqlab.errors import TrainingDivergedError
from vqlab.errors import WorkdirError
from vqlab.nn import stack
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import loop
from vqlab.train import preemption
from vqlab.train import pretokenize
from vqlab.train import progress as progress_lib
from vqlab.train import read_failures
from vqlab.train import run_record
from vqlab.train import state_mismatch
from vqlab.train import workdir_lock
from vqlab.train import writers as writers_lib
from vqlab.train.tasks import generator_checks

STEPS = 5
ROOT = paths.ROOT


def _devices():
  return jax.devices()[:2]


def _config(**train):
  config = tiny.tokenizer_config(steps=STEPS)
  config.eval.lpips = config.eval.fid = 'off'
  config.train.update(train)
  return config


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {row['step']: row['loss'] for row in rows if 'loss' in row}


def _listing(workdir):
  """Every file under workdir with its bytes (what 'nothing written' means),
  but the lock, which says who uses the run now."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in set(files) - {workdir_lock.LOCK_FILE}:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def _checkpoints(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('finished'))
  return workdir, loop.train_and_evaluate(_config(), workdir,
                                          devices=_devices())


@pytest.fixture
def run_copy(finished, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished[0], workdir)
  return workdir


def test_partial_newest_step_is_set_aside_and_the_rerun_saves_over_it(
    finished, run_copy, capsys):
  shutil.rmtree(os.path.join(run_copy, 'checkpoints', '5', 'default'))
  result = loop.train_and_evaluate(_config(), run_copy, devices=_devices())
  out = capsys.readouterr().out
  unreadable = [line for line in out.splitlines() if 'unreadable' in line]
  assert len(unreadable) == 1 and '5.corrupt' in unreadable[0], out
  assert 'Traceback' not in out
  assert result['step'] == STEPS
  assert _checkpoints(run_copy) == ['2', '4', '5', '5.corrupt']
  # Step 5 was logged by the first attempt and again by the rerun: once in
  # metrics.jsonl (the first attempt's row is dropped).
  with open(os.path.join(run_copy, 'metrics.jsonl')) as f:
    logged = [json.loads(line)['step'] for line in f if '"loss"' in line]
  assert logged == sorted(set(logged)) and STEPS in logged
  # The retrained step 5 continues the same trajectory...
  np.testing.assert_allclose(
      _losses(run_copy)[STEPS],
      _losses(finished[0])[STEPS], rtol=1e-6)
  # ...and --mode=eval now sees the step that final_metrics.json reports.
  evaluated = loop.evaluate_checkpoint(_config(), run_copy, devices=_devices())
  assert evaluated['step'] == STEPS
  assert evaluated['psnr'] == pytest.approx(result['psnr'], rel=1e-6)


def test_changed_config_stops_before_anything_is_written(run_copy):
  before = _listing(run_copy)
  changed = _config()
  changed.model.channels = 16
  changed.train.num_steps = 50  # Free to change: not reported.
  for run in (loop.train_and_evaluate, loop.evaluate_checkpoint):
    with pytest.raises(ConfigError) as e:
      run(changed, run_copy, devices=_devices())
    message = str(e.value)
    assert message.startswith('model.channels: differs from the run in ')
    assert '8 -> 16' in message and '--allow_config_change' in message
    assert 'num_steps' not in message
  assert _listing(run_copy) == before


def test_run_length_is_fixed_where_the_learning_rate_decays_over_it(tmp_path):
  """train.num_steps is free under constant learning rates only: a cosine
  or linear schedule ends at it, so another length moves every later
  step's rate (and jumps the rate where the run resumes)."""
  workdir = str(tmp_path)
  config = _config()
  run_record.write(workdir, config)
  longer = _config()
  longer.train.num_steps *= 2
  assert not run_record.differences(run_record.read(workdir), longer)
  config.optimizer.discriminator.schedule = 'cosine'
  run_record.write(workdir, config)
  longer.optimizer.discriminator.schedule = 'cosine'
  assert run_record.differences(run_record.read(workdir), longer) == {
      'train.num_steps': (STEPS, 2 * STEPS)
  }
  with pytest.raises(
      ConfigError, match=r'^train.num_steps: differs .* Its '
      'learning rate decays to 0 at train.num_steps'):
    run_record.check(longer, workdir, allow_change=False)
  # Evaluating or sampling the run trains nothing: its length is free there.
  assert not run_record.check(longer, workdir, allow_change=False, trains=False)


def test_a_record_made_before_block_styles_and_adam_eps_reads_as_it_ran():
  """Generator runs recorded before model.block_style, optimizer.eps and
  loss.observed_frames ran vqlab's pre-LN blocks, Adam's 1e-8 and no frame
  prediction: a config of the papers' blocks, another epsilon or frame
  prediction differs from them (a resume would switch them silently: the
  state has the same shape)."""
  config = tiny.generator_config('unused')
  recorded = run_record.as_json_tree(config)
  del recorded['model']['block_style'], recorded['optimizer']['eps']
  del recorded['loss']['observed_frames']
  del recorded['loss']['observed_frames_rate']
  assert not run_record.differences(recorded, config)
  config.model.block_style = 'bert'
  config.optimizer.eps = 1e-10
  config.loss.observed_frames = 1
  assert run_record.differences(recorded, config) == {
      'model.block_style': ('pre_ln', 'bert'),
      'optimizer.eps': (1e-8, 1e-10),
      'loss.observed_frames': (0, 1)
  }


def test_another_eval_batch_size_is_another_eval_where_eval_draws(tmp_path):
  """MaskGIT's eval masks and VQ-Diffusion's timesteps are drawn per eval
  batch: under another eval.batch_size --mode=eval writes its numbers beside
  the run's own eval; a GPT's and a tokenizer's evals draw nothing."""
  for name, config in (('maskgit', tiny.generator_config('unused')),
                       ('vq_diffusion',
                        tiny.generator_config('unused', 'vq_diffusion')),
                       ('gpt', tiny.generator_config('unused',
                                                     'gpt')), ('tokenizer',
                                                               _config())):
    workdir = str(tmp_path / name)
    os.makedirs(workdir)
    run_record.write(workdir, config)
    config.eval.batch_size *= 2
    changes = run_record.eval_differences(workdir, config)
    draws = name in ('maskgit', 'vq_diffusion')
    assert changes == ({
        'eval.batch_size': (config.eval.batch_size // 2, config.eval.batch_size)
    } if draws else {}), name


def test_a_record_made_before_a_data_key_existed_is_read_as_it_ran(tmp_path):
  """Video runs recorded before data.eval_clip evaluated their videos'
  first clips: resumed under today's default (the middle clip) the record
  differs, and token shards of those clips are not taken for middle ones."""
  config = _config()
  config.data = data_lib.default_config('tfds_video')
  recorded = run_record.as_json_tree(config)
  del recorded['data']['eval_clip']
  workdir = str(tmp_path)
  with open(os.path.join(workdir, run_record.CONFIG_FILE), 'w') as f:
    json.dump(recorded, f)
  assert run_record.differences(run_record.read(workdir), config) == {
      'data.eval_clip': ('first', 'center')
  }
  config.data.eval_clip = 'first'
  assert not run_record.differences(run_record.read(workdir), config)
  joint = data_lib.as_recorded({'name': 'joint', 'video': recorded['data']})
  assert joint['video']['eval_clip'] == 'first'
  config.data.eval_clip = 'center'
  with pytest.raises(ConfigError,
                     match=r"data.eval_clip 'first' there, 'center' here"):
    generator_checks.check_shards_data(recorded['data'], config.data, 'tokens')
  # --mode=tokenize resumes such shards under the clips they were made of.
  metadata = {'data': recorded['data']}
  with pytest.raises(ConfigError,
                     match=r"data.eval_clip 'first' there, 'center' here"):
    pretokenize._check_resume(  # pylint: disable=protected-access
        metadata, {'data': run_record.as_json_tree(config)['data']}, 'tokens')
  config.data.eval_clip = 'first'
  with pytest.raises(ConfigError, match='made with tokenizer'):
    pretokenize._check_resume(  # pylint: disable=protected-access
        {
            **metadata, 'tokenizer': {
                'workdir': 'a',
                'step': 1
            }
        }, {
            'data': run_record.as_json_tree(config)['data'],
            'tokenizer': {
                'workdir': 'b',
                'step': 1
            }
        }, 'tokens')


def test_the_record_may_change_only_before_the_first_checkpoint(
    finished, run_copy, capsys):
  changed = _config()
  changed.model.channels = 16
  # A record that is not a config is never taken for one (or overwritten).
  for text, what in (('[]', 'holds a JSON list, not a config'),
                     ('{"seed": ', 'is not valid JSON')):
    with open(os.path.join(run_copy, 'config.json'), 'w') as f:
      f.write(text)
    with pytest.raises(ConfigError, match=f'^--workdir: .*config.json {what}'):
      experiment.Experiment(changed, run_copy, _devices())
  # Checkpoints without the record of how they were trained: refused.
  os.remove(os.path.join(run_copy, 'config.json'))
  before = _listing(run_copy)
  with pytest.raises(
      ConfigError, match=r'^--workdir: .* holds checkpoints but no '
      r'config\.json.*--allow_config_change'):
    experiment.Experiment(changed, run_copy, _devices())
  assert _listing(run_copy) == before
  # A run stopped before its first checkpoint (e.g. out of memory in the
  # first compile) kept nothing: rerun with another config, it starts anew.
  shutil.rmtree(os.path.join(run_copy, 'checkpoints'))
  shutil.copy(os.path.join(finished[0], 'config.json'), run_copy)
  experiment.Experiment(changed, run_copy, _devices())
  assert ('saved no checkpoint, so its config may change (model.channels 8 '
          '-> 16)') in capsys.readouterr().out


def test_a_readable_checkpoint_of_another_model_is_never_called_corrupt(
    run_copy):
  changed = _config()
  changed.model.channels = 16
  before = _listing(run_copy)
  with pytest.raises(checkpoint_lib.StateMismatchError) as e:
    loop.train_and_evaluate(changed, run_copy, devices=_devices(),
                            allow_config_change=True)
  message = str(e.value)
  assert 'is readable but holds a different state' in message
  assert re.search(r'params/generator/\S+ is \(', message), message
  assert 'corrupt' not in message and 'remove' not in message.lower()
  assert 'The params are the same' not in message
  assert _listing(run_copy) == before  # Nothing renamed or rewritten.
  # The same model with gradient clipping switched: the optimizer's state
  # differs, and the message says which settings shape it.
  clipped = _config()
  clipping = clipped.optimizer.generator
  clipping.grad_clip_norm = 0.0 if clipping.grad_clip_norm else 1.0
  with pytest.raises(
      checkpoint_lib.StateMismatchError,
      match=r'The params are the same: .* \(opt_state\), '
      r'which optimizer\.\*\.grad_clip_norm'):
    loop.train_and_evaluate(clipped, run_copy, devices=_devices(),
                            allow_config_change=True)
  assert _listing(run_copy) == before


def test_an_optimizer_state_of_another_tree_shape_restores(
    finished, run_copy, tmp_path, capsys):
  """Weight decay on kernels only wraps an optimizer state that holds no
  arrays (optax's MaskedState around EmptyState): the same arrays in another
  tree. It restores; it was called unreadable and moved aside."""
  changed = _config(num_steps=STEPS + 1)
  changed.optimizer.generator.weight_decay_on = 'kernels'
  loop.train_and_evaluate(changed, run_copy, devices=_devices(),
                          allow_config_change=True)
  out = capsys.readouterr().out
  assert 'unreadable' not in out and 'corrupt' not in out, out
  assert _checkpoints(run_copy)[-1] == str(STEPS + 1)
  assert not [
      n for n in os.listdir(os.path.join(run_copy, 'checkpoints'))
      if 'corrupt' in n
  ]
  # Restored exactly: with weight decay 0 the step goes as it would have.
  plain = str(tmp_path / 'plain')
  shutil.copytree(finished[0], plain)
  loop.train_and_evaluate(_config(num_steps=STEPS + 1), plain,
                          devices=_devices(), allow_config_change=True)
  assert _losses(run_copy)[STEPS + 1] == _losses(plain)[STEPS + 1]


def test_allowed_config_change_keeps_the_old_record(run_copy, capsys):
  changed = _config()
  changed.optimizer.generator.learning_rate = 1e-5  # Fine-tuning.
  exp = experiment.Experiment(changed, run_copy, _devices(),
                              allow_config_change=True, lock='train')
  _, step = exp.initial_state()
  exp.record_config(step)
  assert 'changed config (optimizer.generator.learning_rate 0.0004 -> 1e-05)' \
      in capsys.readouterr().out
  changed.optimizer.generator.learning_rate = 2e-5  # Changed again.
  exp = experiment.Experiment(changed, run_copy, _devices(),
                              allow_config_change=True, lock='train')
  exp.record_config(step)  # Never over the first record.
  for name, lr in (('config.json', 2e-5), (f'config_until_step_{STEPS}.json',
                                           4e-4),
                   (f'config_until_step_{STEPS}.1.json', 1e-5)):
    with open(os.path.join(run_copy, name)) as f:
      assert json.load(f)['optimizer']['generator']['learning_rate'] == lr


def _two_processes(workdir: str) -> list[str]:
  """Runs tests/train/two_process_restore.py as processes 0 and 1."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = str(s.getsockname()[1])
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=paths.ROOT,
             XLA_FLAGS=compile_options.subprocess_xla_flags(1))
  script = os.path.join(paths.ROOT, 'tests', 'train', 'two_process_restore.py')
  processes = [
      subprocess.Popen([sys.executable, script,
                        str(i), port, workdir], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True) for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=120)[0] for p in processes]
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    outputs = [p.communicate()[0] for p in processes]
    pytest.fail(f'the two processes hung: {outputs}')
  assert all(p.returncode == 0 for p in processes), outputs
  return outputs


def test_two_processes_set_aside_a_step_that_one_of_them_cannot_read(tmp_path):
  """Real jax.distributed processes: process 1 alone is denied step 4's
  metadata file; both refuse in one line, nothing moved (it hung: process 1
  skipped the checksums' collectives). Then process 1 alone fails to read
  step 4 (Orbax's restore ends in a barrier only the other would reach);
  both agree, set step 4 aside and restore step 2, each its own shard.
  Both read step 2 as another run's and put it on their mesh (it was
  committed to one device, which cannot go to another host's: a warm start
  crashed on two hosts). (Steps 2 and 4
  of w = arange(6) * step are saved here, over 2 devices: a pair of
  processes more only to save them cost seconds of imports.)"""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('x',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('x'))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (2, 4):
    checkpointer.save(step, {
        'w': jax.device_put(np.arange(6.0, dtype=np.float32) * step, sharding)
    })
  checkpointer.wait()
  checkpointer.close()
  outputs = _two_processes(str(tmp_path))
  for output in outputs:
    assert 'refused could not restore checkpoint' in output, outputs
  assert 'Permission denied (process 1 only)' in outputs[1]
  assert 'restored 2 [0.0, 2.0, 4.0]' in outputs[0], outputs
  assert 'restored 2 [6.0, 8.0, 10.0]' in outputs[1], outputs
  assert 'copied 2 [0.0, 2.0, 4.0]' in outputs[0], outputs
  assert 'copied 2 [6.0, 8.0, 10.0]' in outputs[1], outputs
  assert 'process 1 could not read it' in outputs[0]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4.corrupt']


def test_a_run_keeps_reading_the_tokenizer_step_it_started_from(
    tmp_path, capsys):
  """tokenizer.step = -1 (the newest) is pinned when a generator run starts:
  resumed after the tokenizer trained on, it must not learn other tokens."""
  config = tiny.generator_config('/runs/tokenizer')
  newest = {'/runs/tokenizer': 7}
  workdir = str(tmp_path)
  run_record.pin_newest_steps(config, workdir, newest.get)
  assert config.tokenizer.step == 7
  assert 'tokenizer.step = -1 is step 7 of /runs/tokenizer' in (
      capsys.readouterr().out)
  run_record.write(workdir, config)
  newest['/runs/tokenizer'] = 9  # The tokenizer run went on.
  resumed = tiny.generator_config('/runs/tokenizer')
  run_record.pin_newest_steps(resumed, workdir, newest.get)
  assert resumed.tokenizer.step == 7
  assert 'the step this run started from (its newest is 9' in (
      capsys.readouterr().out)
  # The other processes (no announce) look the newest step up as process 0
  # does: the lookup may be a collective, and one process skipping it hung
  # all of them (a generator's --mode=sample on two processes).
  asked = []
  quiet = tiny.generator_config('/runs/tokenizer')
  run_record.pin_newest_steps(quiet, workdir,
                              lambda run: asked.append(run) or newest[run],
                              announce=False)
  assert asked == ['/runs/tokenizer'] and quiet.tokenizer.step == 7
  assert not capsys.readouterr().out
  assert not run_record.differences(run_record.read(workdir), resumed)
  # An explicit step is the user's: compared with the record as any key.
  resumed.tokenizer.step = 9
  run_record.pin_newest_steps(resumed, workdir, newest.get)
  assert run_record.differences(run_record.read(workdir), resumed) == {
      'tokenizer.step': (7, 9)
  }
  # --mode=tokenize continues shards of the same tokenizer run at their step.
  tokens = tmp_path / 'tokens'
  tokens.mkdir()
  token_shards.write_metadata(
      str(tokens), {
          'format': token_shards.FORMAT_VERSION,
          'tokenizer': {
              'workdir': '/runs/tokenizer',
              'step': 7
          }
      })
  fresh = tiny.generator_config('/runs/tokenizer')
  assert pretokenize._tokenizer_step(fresh, str(tokens)) == 7  # pylint: disable=protected-access
  # ...and a new generator run on them trains at their step, not at the
  # tokenizer's newest (9), which their check would refuse.
  new_run = str(tmp_path / 'new_run')
  made = generator_checks.made_from(fresh, new_run)
  assert made == {} and fresh.tokens.source == 'shards'  # Not its shards.
  fresh.tokens.dir = str(tokens)
  made = generator_checks.made_from(fresh, new_run)
  assert made == {'tokenizer.step': 7}
  run_record.pin_newest_steps(fresh, new_run, newest.get, made_from=made)
  assert fresh.tokenizer.step == 7
  assert 'is step 7 of /runs/tokenizer, the step of what this run starts' in (
      capsys.readouterr().out)
  fresh.tokenizer.step = 9  # Explicit: compared with the shards as before.
  assert pretokenize._tokenizer_step(fresh, str(tokens)) == 9  # pylint: disable=protected-access
  # A run recorded with -1 (before steps were pinned) keeps -1.
  config.tokenizer.step = -1
  run_record.write(workdir, config)
  resumed.tokenizer.step = -1
  run_record.pin_newest_steps(resumed, workdir, newest.get)
  assert resumed.tokenizer.step == -1


def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(
    run_copy, monkeypatch):
  exp = experiment.Experiment(_config(), run_copy, _devices(), lock='train')
  state, step = exp.initial_state()

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(exp.checkpointer._manager, 'save', full)  # pylint: disable=protected-access
  with pytest.raises(CheckpointError) as e:
    exp.checkpointer.save(step + 1, state)
  message = str(e.value)
  assert '\n' not in message and 'No space left on device' in message
  assert f'step {STEPS} is the newest intact one' in message
  assert f'the checkpoint of step {STEPS + 1}' in message
  # An async save that fails is raised by Orbax at the next save: the error
  # names the step that failed, not the one being started.
  saves = iter([True, OSError(28, 'No space left on device')])

  def full_later(*args, **kwargs):
    result = next(saves)
    if isinstance(result, Exception):
      raise result
    return result

  monkeypatch.setattr(exp.checkpointer._manager, 'save', full_later)  # pylint: disable=protected-access
  assert exp.checkpointer.save(STEPS + 2, state)  # Never lands on disk.
  with pytest.raises(CheckpointError,
                     match=f'the checkpoint of step {STEPS + 2} '):
    exp.checkpointer.save(STEPS + 4, state)
  monkeypatch.undo()
  _, restored_step = experiment.Experiment(_config(), run_copy,
                                           _devices()).initial_state()
  assert restored_step == STEPS


def test_a_full_disk_stops_a_run_with_the_checkpoint_error(
    tmp_path, monkeypatch):
  """TensorBoard's flush fails on the full disk too, as the run stops: the
  checkpoint's error is the one raised (not the flush's OSError, which
  main.py would print as a traceback), the flush's a line of its own."""

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, 'save', full)
  close = writers_lib.MetricWriter.close

  def close_on_a_full_disk(self):
    close(self)
    full()

  monkeypatch.setattr(writers_lib.MetricWriter, 'close', close_on_a_full_disk)
  with pytest.raises(CheckpointError, match='No space left on device'):
    loop.train_and_evaluate(_config(), str(tmp_path), devices=_devices())


def test_reading_another_runs_checkpoint_out_of_memory_is_not_corruption(
    finished, monkeypatch):
  """restore_on_host (a tokenizer for a generator, a warm start) tells a
  failure of this program from a bad checkpoint, as restore does."""

  def out_of_memory(*args, **kwargs):
    raise MemoryError('RESOURCE_EXHAUSTED: out of memory allocating 2.0GiB')

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, 'restore',
                      out_of_memory)
  with pytest.raises(CheckpointError) as e:
    checkpoint_lib.restore_on_host(finished[0])
  assert 'not a corrupt checkpoint' in str(e.value)
  assert 'missing or corrupt' not in str(e.value)
  monkeypatch.undo()
  tree, step = checkpoint_lib.restore_on_host(finished[0])
  assert step == STEPS and 'generator' in tree['params']


@pytest.mark.parametrize('asked', [None, 4])
def test_reading_a_step_another_run_deletes_meanwhile_is_not_corruption(
    tmp_path, monkeypatch, asked):
  """A generator starting beside its tokenizer's run in progress: the
  tokenizer saves step 6 and deletes step 4 (max_to_keep = 1) while step 4
  is read. The newest asked for reads step 6; step 4 asked for is gone, and
  the error says so instead of 'missing or corrupt'."""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (4, 6):
    checkpointer.save(step, {'w': jnp.arange(6.0) * step})
  checkpointer.wait()
  checkpoints = tmp_path / 'checkpoints'
  shutil.move(checkpoints / '6', tmp_path / 'next_save')
  restore = checkpoint_lib.ocp.CheckpointManager.restore
  reads = []

  def restore_while_the_other_run_moves_on(manager, step, *args, **kwargs):
    if not reads:
      shutil.move(tmp_path / 'next_save', checkpoints / '6')
      shutil.rmtree(checkpoints / str(step) / 'default')
      shutil.rmtree(checkpoints / str(step))
    reads.append(step)
    return restore(manager, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, 'restore',
                      restore_while_the_other_run_moves_on)
  if asked is None:
    tree, step = checkpoint_lib.restore_on_host(str(tmp_path))
    assert reads == [4, 6] and step == 6
    np.testing.assert_array_equal(tree['w'], np.arange(6.0) * 6)
  else:
    with pytest.raises(CheckpointError) as e:
      checkpoint_lib.restore_on_host(str(tmp_path), asked, 'tokenizer.step')
    assert 'no checkpoint at step 4' in str(e.value)
    assert 'steps there: [6]' in str(e.value)
    assert 'deleted it since' in str(e.value)
    assert 'corrupt' not in str(e.value)


def test_a_step_deleted_while_orbax_lists_it_is_named_as_such(
    tmp_path, monkeypatch):
  """Orbax reads each listed step's metadata: a step that a run in progress
  deleted meanwhile failed there as 'metadata may be damaged', or, when the
  steps were listed again after a failed read, as a bare FileNotFoundError."""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  checkpointer.save(2, {'w': jnp.arange(6.0)})
  checkpointer.close()
  gone = FileNotFoundError(2, 'No such file or directory',
                           str(tmp_path / 'checkpoints' / '2'))

  def deleted_meanwhile(*args, **kwargs):
    raise gone

  manager = checkpoint_lib.ocp.CheckpointManager
  monkeypatch.setattr(manager, 'restore', deleted_meanwhile)
  monkeypatch.setattr(manager, 'reload', deleted_meanwhile)
  message = 'was deleted while the steps were listed .* run again$'
  with pytest.raises(CheckpointError, match=message):
    checkpoint_lib.restore_on_host(str(tmp_path))
  monkeypatch.setattr(manager, '__init__', deleted_meanwhile)
  with pytest.raises(CheckpointError, match=message):
    checkpoint_lib.newest_step(str(tmp_path))


def test_an_error_right_after_a_save_keeps_that_checkpoint(
    tmp_path, monkeypatch):
  """An eval that fails (a bad eval file, memory) right after the save of its
  step: the save lands before the error leaves the run. It used to stay a
  temporary directory, Orbax unable to commit it at the interpreter's exit."""

  def failing_eval(self, state):
    del self, state
    raise ValueError('the eval set is unreadable')

  monkeypatch.setattr(experiment.Experiment, 'evaluate', failing_eval)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='eval set is unreadable'):
    loop.train_and_evaluate(_config(checkpoint_every=2, eval_every=2), workdir,
                            devices=_devices())
  assert _checkpoints(workdir) == ['2']
  # TensorBoard's events are written out too (main.py leaves a failed
  # multi-process run without the interpreter's exit, which flushed them).
  events, = glob.glob(os.path.join(workdir, 'tensorboard', 'events.*'))
  assert os.path.getsize(events) > 0


def test_a_tokenizer_run_starts_on_a_caption_dataset(tmp_path):
  """The captions stay on the host (only a text generator reads them); they
  failed the init with a TypeError on strings, after the workdir was made."""
  config = _config()
  config.data = data_lib.default_config('captioned_shapes')
  config.data.image_size = 16
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  state, _ = exp.initial_state()
  assert int(state.step) == 0
  local = next(exp.train_data.batches())
  assert 'caption' in local
  batch = exp.global_batch(local)
  assert set(batch) == set(local) - {'caption'}
  assert batch['image'].shape == (8, 16, 16, 3)


def test_a_run_that_cannot_save_stops_before_it_trains(run_copy, monkeypatch):
  """E.g. a checkpoint directory (or bucket) without write access."""
  write = checkpoint_lib.fileio.write_atomically

  def read_only(path, *args, **kwargs):
    if '/checkpoints/' in path:
      raise OSError(errno.EROFS, 'Read-only file system')
    return write(path, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.fileio, 'write_atomically', read_only)
  before = _listing(run_copy)
  changed = _config()
  changed.train.num_steps = STEPS + 2
  with pytest.raises(
      CheckpointError, match=r'cannot write into .*checkpoints \(OSError: '
      r'\[Errno 30\] Read-only file system\)'):
    loop.train_and_evaluate(changed, run_copy, devices=_devices())
  assert _listing(run_copy) == before


def test_a_locked_workdir_names_the_other_run(tmp_path):
  workdir = str(tmp_path / 'busy')
  os.makedirs(workdir)  # The line of a run long gone: replaced, not added to.
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'w') as f:
    f.write('pid 1 on vm, --mode=train, started 2026-01-01T00:00:00: x\n')
  holder = subprocess.Popen([
      sys.executable, '-c', 'import sys; from vqlab.train import workdir_lock; '
      f'workdir_lock.acquire({workdir!r}, "train"); print("locked", '
      'flush=True); sys.stdin.read()'
  ], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(WorkdirError) as e:
      loop.train_and_evaluate(_config(), workdir, devices=_devices())
    message = str(e.value)
    assert f'in use by another vqlab run (pid {holder.pid} on ' in message
    assert '--mode=train' in message and '\n' not in message
    assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]
    # Sampling needs this run: no advice to use another --workdir.
    with pytest.raises(
        WorkdirError, match=r'; wait for it to finish '
        r'\(--mode=eval reads a run in progress\)$'):
      workdir_lock.acquire(workdir, 'sample')
    # A generator started from it is warned that its later steps are unused.
    assert workdir_lock.trainer(workdir).startswith(f'pid {holder.pid} on ')
    assert 'WARNING: that run is still training' in run_record.in_training(
        workdir)
  finally:
    holder.kill()  # kill -9: the kernel drops the lock with the process.
    holder.wait()
  assert workdir_lock.trainer(workdir) is None
  assert not run_record.in_training(workdir)
  workdir_lock.acquire(workdir, 'train')
  assert workdir_lock.trainer(workdir) is None  # This process's own.


def _locked_by_another_description(workdir) -> bool:
  """Whether a new open file (this process's too) is refused the lock."""
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(f, fcntl.LOCK_UN)
  return False


def test_the_last_held_block_releases_the_lock_and_a_rerun_takes_it_again(
    tmp_path):
  """A notebook's training cell run twice locks the workdir both times; a
  block inside another (a sample inside a training run's block) neither
  refuses its own process nor releases the lock early."""
  workdir = str(tmp_path / 'run')
  for _ in range(2):
    with workdir_lock.held(workdir):
      workdir_lock.acquire(workdir, 'train')
      with workdir_lock.held(workdir):
        workdir_lock.acquire(workdir, 'sample')
      assert _locked_by_another_description(workdir)
    assert not _locked_by_another_description(workdir)


def test_only_a_training_holder_is_said_to_train(tmp_path):
  """A generator is warned that its tokenizer run trains on only when the
  lock's holder trains (not when it samples or tokenizes)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  for mode, training in (('sample', False), ('train', True)):
    (workdir / workdir_lock.LOCK_FILE).write_text(f'pid 9 on vm, --mode={mode}')
    holder = subprocess.Popen([
        sys.executable, '-c', 'import fcntl, sys; '
        f'f = open({str(workdir / workdir_lock.LOCK_FILE)!r}); '
        'fcntl.flock(f, fcntl.LOCK_EX); print("holding", flush=True); '
        'sys.stdin.read()'
    ], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
      assert holder.stdout.readline().strip() == 'holding'
      assert (workdir_lock.trainer(str(workdir)) is not None) == training
    finally:
      holder.kill()
      holder.wait()


def test_a_look_at_the_lock_does_not_refuse_a_run(tmp_path):
  """A generator looks at a tokenizer run's lock (a brief shared flock,
  `workdir_lock.trainer`) just as that run restarts: the run waits past it."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / workdir_lock.LOCK_FILE).write_text('pid 1 on vm, --mode=train\n')
  look = subprocess.Popen([
      sys.executable, '-c', 'import fcntl, time; '
      f'f = open({str(workdir / workdir_lock.LOCK_FILE)!r}); '
      'fcntl.flock(f, fcntl.LOCK_SH); print("looking", flush=True); '
      'time.sleep(0.1)'
  ], stdout=subprocess.PIPE, text=True)
  try:
    assert look.stdout.readline().strip() == 'looking'
    workdir_lock.acquire(str(workdir), 'train')
  finally:
    look.wait()


def test_a_workdir_that_cannot_be_made_is_one_line():
  with pytest.raises(WorkdirError, match=r'^cannot create /proc/vqlab_run: '):
    workdir_lock.acquire('/proc/vqlab_run', 'train')


def _two_main_processes(config, workdir, timeout: float, env=lambda i: {}):
  """Runs `main.py --config=config --workdir=workdir` as the two processes
  of one jax.distributed run (gloo, one CPU device each), process i with
  the extra environment env(i) -> (the Popen objects, their stderr), killing
  what is left after `timeout` seconds."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  processes = [
      subprocess.Popen([
          sys.executable,
          os.path.join(ROOT, 'main.py'), f'--config={config}',
          f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
          '--num_processes=2', f'--process_id={i}', '--cpu_collectives=gloo',
          '--compilation_cache_dir='
      ], env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
                  XLA_FLAGS=compile_options.subprocess_xla_flags(1), **env(i)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, cwd=ROOT) for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=timeout)[1] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return processes, outputs


def test_two_processes_refused_by_a_locked_workdir_stop_with_a_line_each(
    tmp_path):
  """Process 0 alone reads the lock and tells process 1: both stop with one
  line (process 1 used to wait in Orbax's first barrier, and process 0 in
  jax.distributed's shutdown for it)."""
  workdir = str(tmp_path / 'busy')
  os.makedirs(workdir)
  # Held by this (live) process, the file written as workdir_lock writes it.
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'a+',
            encoding='utf-8') as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder = (f'pid {os.getpid()} on {socket.gethostname()}, --mode=train, '
              'started 2025-01-01T00:00:00: pytest')
    held.write(holder + '\n')
    held.flush()
    processes, outputs = _two_main_processes(
        os.path.join(ROOT, 'tests', 'tiny_tokenizer_config.py'), workdir, 60)
  lines = [o.strip().splitlines()[-1] if o.strip() else '' for o in outputs]
  assert all(p.returncode == 1 for p in processes), outputs
  assert all('Traceback' not in o for o in outputs), outputs
  assert lines == [
      f'process 0: workdir error: {workdir} is in use by another vqlab run '
      f'({holder}); wait for it to finish or use another --workdir',
      f'process 1: workdir error: {workdir} is in use by another vqlab run '
      '(process 0 found its lock); wait for it to finish or use another '
      '--workdir'
  ], outputs
  assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]


_IMAGE_FOLDER_FROM_ENV = """
import os
from tests import tiny
from vqlab import data

def get_config():
  config = tiny.tokenizer_config(steps=5)
  config.data = data.default_config('image_folder')
  config.data.path = os.environ['TEST_IMAGES']
  config.data.image_size = 16
  config.data.eval_fraction = 0.5
  return config
"""


def test_a_data_error_on_one_of_two_processes_stops_both_at_once(tmp_path):
  """Process 1's image folder is missing (a host's local disk): it names
  its error and leaves, and process 0, waiting for it in a collective,
  stops too, in seconds. Both used to wait in jax.distributed's shutdown
  barrier for five minutes, then abort with a C++ log."""
  config = tmp_path / 'config.py'
  config.write_text(_IMAGE_FOLDER_FROM_ENV)
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(8):
    Image.fromarray(np.full((16, 16, 3), 30 * i,
                            np.uint8)).save(images / f'{i}.png')
  processes, outputs = _two_main_processes(
      config, tmp_path / 'run', 90,
      lambda i: {'TEST_IMAGES': str(images if i == 0 else tmp_path / 'none')})
  assert [p.returncode for p in processes] == [1, 1], outputs
  last = [o.strip().splitlines()[-1] for o in outputs]
  assert last[1].startswith('process 1: data error: ') and 'none' in last[1]
  assert last[0].startswith('process 0: '), outputs[0][-2000:]


def test_the_lock_outcome_of_process_0_reaches_every_process(
    tmp_path, monkeypatch):
  """As process 1 of 2 (a broadcast that answers what process 0 found), and
  as process 0 that fails to lock (it tells the others, then raises)."""
  told = []

  def broadcast(outcome):
    told.append(int(outcome))
    return np.int32(answer)

  monkeypatch.setattr(workdir_lock.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(workdir_lock.multihost_utils, 'broadcast_one_to_all',
                      broadcast)
  monkeypatch.setattr(workdir_lock.jax, 'process_index', lambda: 1)
  workdir = str(tmp_path / 'run')
  for answer, message in ((1, 'is in use by another vqlab run (process 0 '
                           'found its lock)'), (2,
                                                'process 0 could not lock it')):
    with pytest.raises(WorkdirError, match=re.escape(message)):
      workdir_lock.acquire(workdir, 'train')
  answer = 0
  workdir_lock.acquire(workdir, 'train')
  assert not os.path.exists(workdir)  # Process 0 makes it.
  assert told == [0, 0, 0]

  def unwritable(path):
    raise PermissionError(errno.EACCES, 'Permission denied', path)

  monkeypatch.setattr(workdir_lock.jax, 'process_index', lambda: 0)
  monkeypatch.setattr(workdir_lock.fileio, 'makedirs', unwritable)
  with pytest.raises(WorkdirError, match='cannot create .*Permission denied'):
    workdir_lock.acquire(workdir, 'train')
  assert told[-1] == 2


def test_a_model_that_does_not_fit_stops_before_the_workdir_is_made(tmp_path):
  """Config errors found by the state's shapes (the task's init) or its
  shardings: no workdir, no vqlab.lock left behind."""
  fits = lambda c: c.model.update({'in_channels': 1})  # RGB data.
  rules = lambda *r: lambda c: c.mesh.update({'rules': r})
  cases = [
      (fits, r'^model\.in_channels: 1, but the data has 3 channels'),
      (rules(('.*', 'shard')), r"^mesh\.rules: unknown action 'shard'"),
      (rules(('[enc', 'fsdp')),
       r"^mesh\.rules: '\[enc' is not a regular expression: unterminated"),
      (rules(('.*', 'fsdp', 'x')),
       r"^mesh\.rules: \('\.\*', 'fsdp', 'x'\) is not a \(pattern, action\) "
       'pair'),
  ]
  for mutate, message in cases:
    config = _config()
    mutate(config)
    workdir = str(tmp_path / 'new')
    with pytest.raises(ConfigError, match=message):
      loop.train_and_evaluate(config, workdir, devices=_devices())
    assert not os.path.exists(workdir)


def test_ctrl_c_saves_the_current_step_and_twice_aborts(run_copy, capsys):

  def ctrl_c_at_6(step, metrics):
    del metrics
    if step == 6:
      os.kill(os.getpid(), signal.SIGINT)

  result = loop.train_and_evaluate(_config(num_steps=8, eval_every=6), run_copy,
                                   devices=_devices(),
                                   step_callback=ctrl_c_at_6)
  assert result == {'step': 6, 'preempted': True}
  assert '6' in _checkpoints(run_copy)
  # The signal came before step 6's eval: saved and stopped without it.
  assert not os.path.exists(os.path.join(run_copy, 'eval_6.json'))
  out = capsys.readouterr().out
  assert 'SIGINT received; saving once the current step is done' in out
  assert 'interrupted; checkpoint saved at step 6' in out
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.should_stop()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_sigterm_during_startup_exits_with_a_line(run_copy, monkeypatch,
                                                  capsys):
  restore = experiment.Experiment.initial_state

  def preempted_while_restoring(self):
    os.kill(os.getpid(), signal.SIGTERM)
    return restore(self)

  monkeypatch.setattr(experiment.Experiment, 'initial_state',
                      preempted_while_restoring)
  result = loop.train_and_evaluate(_config(num_steps=8), run_copy,
                                   devices=_devices())
  assert result == {'step': STEPS, 'preempted': True}
  assert 'stopped before the first step' in capsys.readouterr().out
  assert _checkpoints(run_copy) == ['2', '4', '5']


def test_sigterm_during_the_final_save_keeps_it_and_the_rerun_evaluates(
    run_copy, monkeypatch):
  wait = checkpoint_lib.Checkpointer.wait

  def preempted_while_saving(self):
    os.kill(os.getpid(), signal.SIGTERM)
    wait(self)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'wait',
                      preempted_while_saving)
  result = loop.train_and_evaluate(_config(num_steps=6), run_copy,
                                   devices=_devices())
  assert result == {'step': 6, 'preempted': True}
  monkeypatch.undo()
  assert _checkpoints(run_copy) == ['4', '5', '6']
  rerun = loop.train_and_evaluate(_config(num_steps=6), run_copy,
                                  devices=_devices())
  assert rerun['step'] == 6 and not rerun['preempted']
  with open(os.path.join(run_copy, 'final_metrics.json')) as f:
    assert json.load(f)['step'] == 6


def test_an_eval_a_sigterm_skipped_is_made_when_the_run_resumes(
    run_copy, monkeypatch):
  """Also on several hosts, where step 6 is not a step of the preemption
  check (every 4): the eval step checks (it ran the eval, then trained on to
  step 8 before it saved)."""
  config = _config(num_steps=8, eval_every=6, preemption_check_every=4)

  def preempt_at_6(step, metrics):
    del metrics
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  # The watcher as on two hosts, the other never signalled.
  monkeypatch.setattr(preemption, 'jax',
                      types.SimpleNamespace(process_count=lambda: 2))
  monkeypatch.setattr(
      preemption, 'multihost_utils',
      types.SimpleNamespace(
          process_allgather=lambda flag: np.stack([flag, np.array(False)])))
  result = loop.train_and_evaluate(config, run_copy, devices=_devices(),
                                   step_callback=preempt_at_6)
  monkeypatch.undo()
  assert result == {'step': 6, 'preempted': True}
  assert not os.path.exists(os.path.join(run_copy, 'eval_6.json'))
  # An eval of step 6 by --mode=eval meanwhile writes eval_6.json, but no
  # row in the run's metrics.jsonl: the resumed run still makes its own.
  loop.evaluate_checkpoint(config, run_copy, devices=_devices())
  assert os.path.exists(os.path.join(run_copy, 'eval_6.json'))
  loop.train_and_evaluate(config, run_copy, devices=_devices())
  with open(os.path.join(run_copy, 'eval_6.json')) as f:
    assert json.load(f)['step'] == 6
  with open(os.path.join(run_copy, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  evals = [r['step'] for r in rows if any(k.startswith('eval/') for k in r)]
  assert evals == [STEPS, 6, 8]


def _poison_batch(monkeypatch, index):
  """One NaN pixel in the `index`-th global batch the loop makes (batch 1
  is its first step's; the loop makes one batch ahead)."""
  made = experiment.Experiment.global_batch
  count = iter(range(1, 1000))

  def poisoned(self, batch):
    if next(count) == index:
      batch = dict(batch, image=np.array(batch['image']))
      batch['image'][0, 0, 0, 0] = np.nan
    return made(self, batch)

  monkeypatch.setattr(experiment.Experiment, 'global_batch', poisoned)


def test_a_diverged_run_stops_without_saving_over_its_good_steps(
    run_copy, monkeypatch):
  """A NaN step saved on would be followed by NaN checkpoints, and
  max_to_keep would delete the last good ones: the save refuses a state
  that is not finite (step 7, never logged here), and the loop stops at the
  first logged step whose metrics are not (step 7 of the rerun)."""
  _poison_batch(monkeypatch, 2)  # Step 7's.
  config = _config(num_steps=9, checkpoint_every=1, log_every=100,
                   max_to_keep=3)
  with pytest.raises(
      TrainingDivergedError, match=r'^training diverged: the state of step 7 '
      r'holds NaN or Inf values \(params/\S+, params/\S+, params/\S+ and '
      r'\d+ more\)\. '
      r'Nothing of it was saved; its newest checkpoint, step 6, is kept'):
    loop.train_and_evaluate(config, run_copy, devices=_devices())
  assert _checkpoints(run_copy) == ['4', '5', '6']
  _poison_batch(monkeypatch, 1)  # Step 7's again, logged now.
  config.train.log_every = 1
  with pytest.raises(
      TrainingDivergedError, match=r'^training diverged: the train metrics '
      r'of step 7 are not finite \(.*loss=nan.*\)\. Nothing of it was '
      r'saved; its newest checkpoint, step 6, is kept\. Lower the learning'):
    loop.train_and_evaluate(config, run_copy, devices=_devices())
  assert _checkpoints(run_copy) == ['4', '5', '6']

  def strict(constant):
    raise ValueError(f'{constant} is no JSON')

  with open(os.path.join(run_copy, 'metrics.jsonl')) as f:
    rows = [json.loads(line, parse_constant=strict) for line in f]
  assert rows[-1]['step'] == 7 and rows[-1]['loss'] is None


def test_an_infinite_metric_is_a_divergence_too(tmp_path):
  """(An Inf loss trained on turns the state NaN a step later.)"""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'),
                                             max_to_keep=1)
  exp = types.SimpleNamespace(checkpointer=checkpointer)
  loop._check_finite(exp, 3, {'loss': np.float32(0.5), 'grad_norm': 2.0})  # pylint: disable=protected-access
  with pytest.raises(
      TrainingDivergedError, match=r'^training diverged: the train metrics of '
      r'step 3 are not finite \(loss=inf\)\. Nothing of it was saved; it has '
      r'no checkpoint\.'):
    loop._check_finite(exp, 3, {'loss': np.float32(np.inf), 'grad_norm': 2.0})  # pylint: disable=protected-access
  checkpointer.close()


def test_a_failed_checksum_pass_is_a_failed_save(tmp_path, monkeypatch):
  """E.g. the device out of memory for the checksums' program: one line
  naming the step, as any failed save."""

  def out_of_memory(leaves):
    raise RuntimeError('RESOURCE_EXHAUSTED: out of memory')

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'),
                                             max_to_keep=1)
  monkeypatch.setattr(checkpoint_lib.checksums, 'summarize', out_of_memory)
  with pytest.raises(
      CheckpointError, match=r'^could not write the checkpoint of step 1 to '
      r'.*RESOURCE_EXHAUSTED'):
    checkpointer.save(1, {'w': jnp.zeros(2)})
  checkpointer.close()


def test_progress_lines_come_at_a_fixed_rate_when_not_a_terminal(monkeypatch):
  clock = iter(range(0, 1000, 7))  # A step every 7 s.
  monkeypatch.setattr(progress_lib.time, 'perf_counter', lambda: next(clock))
  stream = io.StringIO()
  progress = progress_lib.Progress(0, 40, 8, stream=stream, log_interval_s=30)
  for step in range(1, 41):
    progress.update(step)
  steps = [
      int(line.split()[1].split('/')[0])
      for line in stream.getvalue().splitlines()
  ]
  assert steps == [1, 6, 11, 16, 21, 26, 31, 36, 40]  # First, 35 s, last.


def test_kill_9_during_an_async_save_then_resume(finished, tmp_path):
  """main.py killed the moment it reports a save under way; the rerun
  resumes from a complete step and continues the same trajectory. The
  console of the killed run carries no library INFO logs."""
  workdir = str(tmp_path / 'run')
  cache = tmp_path / 'compilation_cache'
  command = [
      sys.executable,
      os.path.join(ROOT, 'main.py'),
      '--config=' + os.path.join(ROOT, 'tests', 'tiny_tokenizer_config.py'),
      f'--workdir={workdir}', f'--compilation_cache_dir={cache}'
  ]
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=compile_options.subprocess_xla_flags(2))
  run = subprocess.Popen(command, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  lines = []
  for line in run.stdout:
    lines.append(line)
    if 'saving the checkpoint of step 4' in line:
      run.kill()
      break
  run.wait()
  assert run.returncode == -signal.SIGKILL, ''.join(lines)
  assert not [line for line in lines if re.match(r'I\d{4} ', line)
             ], ''.join(lines)
  assert os.listdir(cache)  # The compiled programs, for the next run.
  # And a save cut short at a step the rerun never saves again (a SIGTERM's,
  # killed in its grace period): removed, not left for ever.
  os.makedirs(
      os.path.join(workdir, 'checkpoints', '3.orbax-checkpoint-tmp', 'default'))
  result = loop.train_and_evaluate(_config(), workdir, devices=_devices())
  assert result['step'] == STEPS
  assert not [d for d in _checkpoints(workdir) if not d.isdigit()]
  expected, got = _losses(finished[0]), _losses(workdir)
  for step in range(1, STEPS + 1):
    np.testing.assert_allclose(got[step], expected[step], rtol=1e-6,
                               err_msg=f'step {step}')


def _state_in_layout(scanned: bool) -> dict:
  """A train-state-like tree (params and an Adam moment of one res-block run
  and one layer stack, a step) in the scanned or unrolled layout."""
  rng = np.random.default_rng(0)
  res = {
      f'ResBlock3D_{i}': {
          'conv1': {
              'kernel': rng.standard_normal((3, 2)).astype(np.float32)
          }
      } for i in range(3)
  }
  layers = {
      f'block_{i}': {
          'mlp': {
              'bias': np.full((4,), i, np.float32)
          }
      } for i in range(2)
  }
  layers['final_norm'] = {'scale': np.ones((4,), np.float32)}
  params = {'encoder': res, 'transformer': layers}
  if scanned:
    params = {
        'encoder': stack.stack_like(res, {'ResBlock3D_0_to_2': None}),
        'transformer': stack.stack_layers(layers)
    }
  moment = jax.tree.map(lambda x: 2 * x, params)
  return {
      'step': np.int32(7),
      'params': params,
      'opt_state': [{
          'mu': moment
      }, {}]
  }


@pytest.mark.parametrize('saved_scanned', [False, True])
def test_a_checkpoint_of_the_other_stacking_layout_restores_converted(
    tmp_path, saved_scanned):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
  checkpointer.save(7, _state_in_layout(saved_scanned), force=True)
  checkpointer.wait()
  want = _state_in_layout(not saved_scanned)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), want)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    state, step = checkpointer.restore(abstract)
  checkpointer.close()
  assert step == 7 and 'other layout (scanned or unrolled)' in out.getvalue()
  assert jax.tree.structure(state) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, state, want)
  assert os.listdir(tmp_path / 'checkpoints') == ['7']  # Left as it was.


def test_a_state_mismatch_is_told_whichever_the_stacking_layout():
  # Scanned or unrolled blocks alone are no mismatch (restore converts);
  # a real difference is named in unrolled paths under either layout.
  unrolled, scanned = _state_in_layout(False), _state_in_layout(True)
  assert state_mismatch.describe(unrolled, scanned) is None
  assert state_mismatch.describe(scanned, unrolled) is None
  wider = jax.tree.map(lambda x: x, scanned)
  kernel = wider['params']['encoder']['ResBlock3D_0_to_2']['conv1']['kernel']
  wider['params']['encoder']['ResBlock3D_0_to_2']['conv1']['kernel'] = \
      np.zeros(kernel.shape[:-1] + (5,), np.float32)
  told = state_mismatch.describe(unrolled, wider)
  assert told.startswith('params/encoder/ResBlock3D_0/conv1/kernel is (3, 2) '
                         'float32 there, (3, 5) float32 here'), told


def test_a_maskgit_checkpoint_of_the_other_head_kind_names_the_switch():
  dense = {'kernel': np.zeros((4, 8), np.float32)}
  untied = {'params': {'head_0': dense}}
  tied = {'params': {'tied_head_0': dense, 'tied_head_bias_0': np.zeros(8)}}
  assert state_mismatch.describe(untied, tied).endswith(
      '(vqlab before 2026-12): resume it with model.tied_heads = False')
  assert state_mismatch.describe(
      tied, untied).endswith('resume it with model.tied_heads = True')


def test_a_generator_checkpoint_of_the_other_block_style_names_the_switch():
  norm = {'scale': np.zeros(8, np.float32)}
  pre_ln = {'params': {'transformer': {'final_norm': norm}}}
  bert = {'params': {'embed_norm': norm, 'transformer': {}}}
  assert state_mismatch.describe(pre_ln, bert).endswith(
      "before 2026-12-06): resume it with model.block_style = 'pre_ln'")
  assert state_mismatch.describe(
      bert, pre_ln).endswith("resume it with model.block_style = 'bert'")
  # GPT: taming's blocks have a head without bias.
  kernel = np.zeros((4, 8), np.float32)
  biased = {'params': {'head': {'kernel': kernel, 'bias': np.zeros(8)}}}
  taming = {'params': {'head': {'kernel': kernel}}}
  assert state_mismatch.describe(biased, taming).endswith(
      "before 2026-12-06): resume it with model.block_style = 'pre_ln'")
  assert state_mismatch.describe(
      taming, biased).endswith("resume it with model.block_style = 'taming'")


def test_an_old_class_vq_diffusion_checkpoint_says_it_cannot_resume():
  dense = {'kernel': np.zeros((4, 8), np.float32)}
  old = {
      'params': {
          'class_embed': {
              'embedding': np.zeros((4, 8))
          },
          'block_0': {
              'cross_attention': {
                  'query': dense
              }
          }
      }
  }
  new = {
      'params': {
          'block_0': {
              'class_embed': {
                  'embedding': np.zeros((4, 8))
              }
          }
      }
  }
  assert state_mismatch.describe(
      old, new).endswith('no config of this vqlab restores it, train it again')


def _save_steps_2_and_4(tmp_path):
  """Checkpoints of {'w': arange(6) * step} at steps 2 and 4 in tmp_path;
  returns the state's abstract tree (what restore takes)."""
  state = {'w': jnp.arange(6.0)}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (2, 4):
    checkpointer.save(step, jax.tree.map(lambda x, s=step: x * s, state))
  checkpointer.wait()
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)


def test_an_unreadable_step_that_cannot_be_moved_stops_the_run(
    tmp_path, monkeypatch):
  """Left listed, an unreadable newest step would skip every save up to it
  without a word and refuse a save at it: the restore says what to move and
  which step then continues; the good step is untouched."""
  abstract = _save_steps_2_and_4(tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints' / '4' / 'default')

  def refuse(src, dst):
    raise PermissionError(f'read-only: {src}')

  monkeypatch.setattr(checkpoint_lib.fileio, 'replace', refuse)
  with pytest.raises(CheckpointError) as error:
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(abstract)
  message = str(error.value)
  assert 'could not be moved aside' in message and '/4 (' in message
  assert 'read-only' in message and 'step 2 is readable' in message
  assert 'Traceback' not in message
  monkeypatch.undo()
  shutil.move(tmp_path / 'checkpoints' / '4', tmp_path / 'elsewhere')
  restored, step = checkpoint_lib.Checkpointer(str(tmp_path),
                                               max_to_keep=5).restore(abstract)
  assert step == 2
  np.testing.assert_array_equal(restored['w'], np.arange(6.0) * 2)


def test_out_of_memory_or_a_read_only_mode_never_sets_a_step_aside(
    tmp_path, monkeypatch, capsys):
  abstract = _save_steps_2_and_4(tmp_path)
  listing = lambda: sorted(os.listdir(tmp_path / 'checkpoints'))
  before = listing()

  def out_of_memory(self, *args, **kwargs):
    raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                       'allocate 6.00GiB')

  with monkeypatch.context() as patch:
    patch.setattr(checkpoint_lib.ocp.StandardCheckpointHandler, 'restore',
                  out_of_memory)
    with pytest.raises(CheckpointError, match='not a corrupt checkpoint'):
      checkpoint_lib.Checkpointer(str(tmp_path),
                                  max_to_keep=5).restore(abstract)
  assert listing() == before
  # An eval beside a trainer skips an unreadable newest step, renames nothing.
  shutil.rmtree(tmp_path / 'checkpoints' / '4' / 'default')
  _, step = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(
      abstract, set_aside=False)
  assert step == 2 and listing() == before
  assert 'left as it is; using step 2' in capsys.readouterr().out


@pytest.mark.parametrize('error', [
    ValueError('UNAVAILABLE: Error reading "d/abc" from GCS: HTTP response '
               'code: 503'),
    MemoryError(),
])
def test_a_transient_error_inside_orbaxs_array_read_sets_nothing_aside(
    tmp_path, monkeypatch, error):
  """Orbax re-raises any error of an array read as a bare Exception naming
  the array: a 503 on gs:// (or memory) had the good newest step renamed
  <step>.corrupt and the run sent back to the older one."""
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top
  abstract = _save_steps_2_and_4(tmp_path)
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  read_shard = serialization._read_shard  # pylint: disable=protected-access

  async def flaky(*args, t, **kwargs):
    if f'{os.sep}checkpoints{os.sep}4{os.sep}' in str(t.spec()):
      raise error
    return await read_shard(*args, t=t, **kwargs)

  monkeypatch.setattr(serialization, '_read_shard', flaky)
  with pytest.raises(
      CheckpointError, match=rf'\({type(error).__name__}: .*not a corrupt '
      'checkpoint. Nothing was changed'):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(abstract)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before


def test_the_error_chain_skips_a_suppressed_context():
  """json raises JSONDecodeError `from None` inside its scanner's
  StopIteration: the unreadable-step line named 'StopIteration: 8'."""
  try:
    try:
      raise StopIteration(8)
    except StopIteration:
      raise ValueError('Expecting value: line 1 column 9') from None
  except ValueError as e:
    chain = read_failures._chain(e)  # pylint: disable=protected-access
  assert [type(link) for link in chain] == [ValueError]


def test_a_step_this_user_may_not_read_is_never_called_corrupt(
    tmp_path, monkeypatch):
  """A run shared between users (one's umask kept its files private): Orbax
  names no permission problem, but the step is good. Nothing is renamed;
  the error says which file is denied. (os.access is patched: root reads
  every file.)"""
  abstract = _save_steps_2_and_4(tmp_path)
  step_4 = str(tmp_path / 'checkpoints' / '4')
  private = glob.glob(os.path.join(step_4, '**', 'd', '*'), recursive=True)[0]
  access = os.access
  monkeypatch.setattr(checkpoint_lib.os, 'access',
                      lambda path, mode: path != private and access(path, mode))
  read = checkpoint_lib.ocp.StandardCheckpointHandler.restore

  def orbax_on_a_private_file(self, directory, *args, **kwargs):
    if str(directory).startswith(step_4):
      raise ValueError('Unable to retrieve default item. Please ensure that a '
                       'handler for the default item is registered')
    return read(self, directory, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.ocp.StandardCheckpointHandler, 'restore',
                      orbax_on_a_private_file)
  with pytest.raises(CheckpointError) as e:
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(abstract)
  assert f'permission denied: cannot read {private}' in str(e.value)
  assert 'not a corrupt checkpoint' in str(e.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']

  def orbax_on_another_runs_private_file(*args, **kwargs):
    raise ValueError('Encountered error while reading array index')

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, 'restore',
                      orbax_on_another_runs_private_file)
  with pytest.raises(CheckpointError, match='permission denied: cannot read'):
    checkpoint_lib.restore_on_host(str(tmp_path), 4)


def test_a_step_metadata_of_another_json_kind_is_one_line(tmp_path):
  _save_steps_2_and_4(tmp_path)
  with open(tmp_path / 'checkpoints' / '4' / '_CHECKPOINT_METADATA', 'w') as f:
    f.write('[]')
  for open_them in (checkpoint_lib.newest_step,
                    lambda w: checkpoint_lib.Checkpointer(w, max_to_keep=5)):
    with pytest.raises(
        CheckpointError, match=r'cannot open the checkpoints .* nothing was '
        r'changed: .*4/_CHECKPOINT_METADATA is damaged'):
      open_them(str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


@pytest.mark.parametrize(
    'name, content',
    [('_METADATA', '[]'),
     ('array_metadatas/process_0', '{"array_metadatas": [3]}')])
def test_step_metadata_of_another_json_kind_is_a_corrupt_step(
    tmp_path, name, content):
  """Orbax fails on these with an AttributeError, otherwise the mark of this
  program's own fault (a stop with nothing changed): the file is named and
  the good step before it restored."""
  abstract = _save_steps_2_and_4(tmp_path)
  with open(tmp_path / 'checkpoints' / '4' / 'default' / name, 'w') as f:
    f.write(content)
  restored, step = checkpoint_lib.Checkpointer(str(tmp_path),
                                               max_to_keep=5).restore(abstract)
  assert step == 2
  np.testing.assert_array_equal(restored['w'], np.arange(6.0) * 2)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4.corrupt']


def test_files_deleted_while_a_step_is_listed_are_not_denied(
    tmp_path, monkeypatch):
  """Orbax deletes a step's files before its folders: a reader beside the
  trainer lists files that are gone a moment later (os.access is False
  for them too). That is a deleted step, not a permission problem."""
  step = tmp_path / '4'
  step.mkdir()
  (step / 'kept').write_bytes(b'x')
  walk = os.walk
  monkeypatch.setattr(
      checkpoint_lib.os, 'walk', lambda top:
      ((root, folders, [*files, 'deleted_meanwhile'])
       for root, folders, files in walk(top)))
  assert read_failures._denied_path(str(step)) is None  # pylint: disable=protected-access


@pytest.mark.parametrize('deleted', ['all of it', 'its files'])
def test_an_eval_beside_a_run_that_deletes_the_step_it_reads_reads_the_next(
    tmp_path, monkeypatch, capsys, deleted):
  """--mode=eval takes no lock: a trainer with train.max_to_keep = 1 may
  save step 6 and delete step 4 while the eval reads step 4 (Orbax deletes
  a step's files, then its directory). That step was removed, not
  unreadable: the eval lists the steps again and reads step 6. It used to
  stop with 'no readable checkpoint ... start over' or, with an older step
  (2, pinned by a generator) to fall back to, to evaluate step 2 and call
  step 4 unreadable."""
  state = {'w': jnp.arange(6.0)}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (2, 4, 6):
    checkpointer.save(step, jax.tree.map(lambda x, s=step: x * s, state))
  checkpointer.wait()
  checkpoints = tmp_path / 'checkpoints'
  shutil.move(checkpoints / '6', tmp_path / 'next_save')
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  read = checkpoint_lib.Checkpointer._read  # pylint: disable=protected-access
  reads = []

  def read_while_the_trainer_moves_on(directory, step, how):
    if not reads:  # The trainer's next save lands, and max_to_keep = 1.
      shutil.move(tmp_path / 'next_save', checkpoints / '6')
      shutil.rmtree(checkpoints / str(step) /
                    ('' if deleted == 'all of it' else 'default'))
    reads.append(step)
    return read(directory, step, how)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, '_read',
                      staticmethod(read_while_the_trainer_moves_on))
  restored, step = checkpoint_lib.Checkpointer(str(tmp_path),
                                               max_to_keep=5).restore(
                                                   abstract, set_aside=False)
  assert step == 6 and reads[0] == 4
  np.testing.assert_array_equal(restored['w'], np.arange(6.0) * 6)
  kept = ['2', '6'] if deleted == 'all of it' else ['2', '4', '6']
  assert sorted(os.listdir(checkpoints)) == kept
  assert 'unreadable' not in capsys.readouterr().out


def test_an_eval_that_reads_no_step_changes_nothing_and_advises_nothing(
    tmp_path):
  """A read-only mode may read a run in progress: when no step reads, it
  names each and why, and never says to start over."""
  abstract = _save_steps_2_and_4(tmp_path)
  for step in ('2', '4'):
    shutil.rmtree(tmp_path / 'checkpoints' / step / 'default')
  listing = lambda: sorted(os.listdir(tmp_path / 'checkpoints'))
  before = listing()
  with pytest.raises(CheckpointError) as error:
    checkpoint_lib.Checkpointer(str(tmp_path),
                                max_to_keep=5).restore(abstract,
                                                       set_aside=False)
  message = str(error.value)
  assert 'no readable checkpoint' in message and 'Nothing was changed' in message
  assert 'step 4: ' in message and 'step 2: ' in message
  assert 'start over' not in message and '--workdir' not in message
  assert listing() == before


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch,
                                                   capsys):

  def no_locks(f, operation):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_locks)
  workdir_lock.acquire(str(tmp_path / 'nfs'), 'train')
  out = capsys.readouterr().out
  assert 'No locks available' in out and 'no other run' in out
  assert str(tmp_path / 'nfs') not in workdir_lock._held  # pylint: disable=protected-access


def test_processes_restore_a_step_only_where_every_one_reads_it(
    tmp_path, monkeypatch, capsys):
  """On a pod each host reads the shards it needs, so a corrupt file may
  fail one host alone: all hosts then go back to the previous step together
  (training from different steps would diverge or hang), and one host's
  out-of-memory stops every host with nothing renamed."""
  abstract = _save_steps_2_and_4(tmp_path)
  listing = lambda: sorted(os.listdir(tmp_path / 'checkpoints'))
  before = listing()
  # This process reads everything; process 1 reports `kinds[step]` (a
  # read_failures.UNREADABLE etc.) for the step being read.
  read = checkpoint_lib.Checkpointer._read  # pylint: disable=protected-access
  reading = []

  def read_noting_the_step(directory, step, how):
    reading.append(step)
    return read(directory, step, how)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, '_read',
                      staticmethod(read_noting_the_step))
  monkeypatch.setattr(
      read_failures, '_gather_kinds',
      lambda kind: np.array([kind, kinds.get(reading[-1], 0)]))

  kinds = {4: read_failures.TRANSIENT}
  with pytest.raises(CheckpointError) as error:
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(abstract)
  assert 'process 1 failed to read it for want of memory or ' in str(
      error.value)
  assert listing() == before

  kinds = {4: read_failures.UNREADABLE}
  restored, step = checkpoint_lib.Checkpointer(str(tmp_path),
                                               max_to_keep=5).restore(abstract)
  assert step == 2
  np.testing.assert_array_equal(restored['w'], np.arange(6.0) * 2)
  assert listing() == ['2', '4.corrupt']
  assert 'process 1 could not read it' in capsys.readouterr().out


def test_a_metadata_file_denied_is_no_corrupt_step(tmp_path, monkeypatch):
  """The checksums' file read denied (or a storage error) is the reader's
  fault, not the step's: nothing is set aside."""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (2, 4):
    checkpointer.save(step, {'w': jnp.arange(6.0) * step})
  checkpointer.wait()
  checkpointer.close()

  def denied(manager, step):
    raise PermissionError(f'[Errno 13] Permission denied: {step}')

  monkeypatch.setattr(checkpoint_lib, '_saved_checksums', denied)
  abstract = {'w': jax.ShapeDtypeStruct((6,), jnp.float32)}
  with pytest.raises(CheckpointError, match='not a corrupt checkpoint'):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5).restore(abstract)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


@pytest.mark.parametrize('metadata', ['kept', 'emptied', 'removed'])
def test_a_bit_flipped_on_disk_sets_the_step_aside(tmp_path, capsys, metadata):
  """Orbax keeps no checksum on its data chunks: a flipped bit of a saved
  array would restore as a silently different model. The checksums saved
  with each step catch it: the step is set aside as a corrupt one, the
  previous step restores, and another run's reader names it. A step whose
  metadata file (with the checksums) is damaged too is not restored
  unchecked: it was, as a step of an older vqlab without checksums."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('data'))
  # Random floats: zstd stores them as they are, so the middle of the
  # largest data file is array data.
  noise = np.random.default_rng(0).normal(size=(128, 256)).astype(np.float32)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (2, 4):
    checkpointer.save(step, {'w': jax.device_put(noise * step, sharding)})
  checkpointer.wait()
  checkpointer.close()
  files = glob.glob(str(tmp_path / 'checkpoints' / '4' / '**' / 'd' / '*'),
                    recursive=True)
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x08]))
  step_metadata = tmp_path / 'checkpoints' / '4' / '_CHECKPOINT_METADATA'
  if metadata == 'emptied':
    step_metadata.write_text('')
  elif metadata == 'removed':
    step_metadata.unlink()
  why = ('w differs from the checksums' if metadata == 'kept' else
         '_CHECKPOINT_METADATA is missing or unreadable')

  with pytest.raises(CheckpointError, match=why) as e:
    checkpoint_lib.restore_on_host(str(tmp_path), 4, 'tokenizer.step')
  assert str(e.value).endswith(': set tokenizer.step to one of its other '
                               'steps [2], or resume that run, which sets the '
                               'step aside')
  abstract = {
      'w': jax.ShapeDtypeStruct(noise.shape, noise.dtype, sharding=sharding)
  }
  state, step = checkpoint_lib.Checkpointer(str(tmp_path),
                                            max_to_keep=5).restore(abstract)
  assert step == 2
  np.testing.assert_array_equal(np.asarray(state['w']), noise * 2)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4.corrupt']
  assert why in capsys.readouterr().out
