"""The train loop end to end on tiny configs: outputs, corrupt checkpoints,
eval mode, and a real 2-process run (jax.distributed with gloo CPU
collectives on localhost) that matches 1 process on the same 2 devices.

The runs use 2 of the 8 test devices, so the batch really is sharded while
compiles and checkpoint writes stay cheap; tests/train/test_sharding.py checks the
numerics on 1 vs 8 devices; tests/train/test_faults.py interrupts runs (SIGTERM,
Ctrl-C, kill -9) and checks that resumed runs continue the same trajectory.
"""

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests import compile_options
from tests import paths
from tests import retrace
from tests import tiny
from vqlab.errors import CheckpointError
from vqlab.train import experiment
from vqlab.train import loop
from vqlab.train import optimizers
from vqlab.train import workdir_lock

STEPS = 5
ROOT = paths.ROOT


def _devices():
  return jax.devices()[:2]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {
      row['step']: (row['loss'], row['d_loss']) for row in rows if 'loss' in row
  }


def _config():
  """The tiny VQGAN with its first step before disc_start and an EMA of its
  generator (a fresh run's EMA is donated beside the params it copies)."""
  config = tiny.tokenizer_config(steps=STEPS)
  config.loss.disc_start = 1
  config.ema.decay = 0.9
  return config


def _train(workdir, **kwargs):
  return loop.train_and_evaluate(_config(), workdir, devices=_devices(),
                                 **kwargs)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """A whole run: 5 steps, evals at steps 2 and 4 and at the end; the train
  step compiles once before disc_start = 1 and once after, the eval step
  once (a retrace fails here)."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  config = _config()
  config.train.eval_every = 2
  # steps_per_sec's clock: a step takes 1 s and an eval 100 s.
  clock = [0.0]

  def one_second(step, metrics):
    del step, metrics
    clock[0] += 1

  def evaluate_in_100_seconds(self, state):
    clock[0] += 100
    return evaluate(self, state)

  evaluate = experiment.Experiment.evaluate
  with retrace.traced_once() as traced, pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop, '_clock', lambda: clock[0])
    patch.setattr(experiment.Experiment, 'evaluate', evaluate_in_100_seconds)
    result = loop.train_and_evaluate(config, workdir, devices=_devices(),
                                     step_callback=one_second)
  assert traced == {('TokenizerTask.train_step', (('gan_terms', False),)),
                    ('TokenizerTask.train_step', ()),
                    ('TokenizerTask.eval_step', ())}
  return workdir, result


def test_run_writes_checkpoints_metrics_images_and_summaries(uninterrupted):
  workdir, result = uninterrupted
  assert result['step'] == STEPS and not result['preempted']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == \
      ['2', '4', '5']
  assert set(_losses(workdir)) == set(range(1, STEPS + 1))
  # The first step (state step 0 < disc_start) ran without the GAN terms.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    has_gan_metrics = {
        row['step']: 'g_adv' in row
        for row in map(json.loads, f)
        if 'loss' in row
    }
  assert has_gan_metrics == {1: False, 2: True, 3: True, 4: True, 5: True}
  # The train rate leaves out the evals at steps 2 and 4; the first step,
  # which compiled, gives none.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = {
        row['step']: (row.get('steps_per_sec'), row.get('examples_per_sec'))
        for row in map(json.loads, f)
        if 'loss' in row
    }
  batch = _config().train.batch_size
  assert rates == {1: (None, None), **{s: (1.0, batch) for s in range(2, 6)}}
  # Each network's learning rate, as its update at that step used it (the
  # discriminator's from disc_start = 1 on).
  optimizer = _config().optimizer
  generator = optimizers.learning_rate_schedule(optimizer.generator, STEPS)
  discriminator = optimizers.learning_rate_schedule(optimizer.discriminator,
                                                    STEPS - 1)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [row for row in map(json.loads, f) if 'loss' in row]
  for row in logged:
    s = row['step']
    assert row['learning_rate/generator'] == pytest.approx(generator(s - 1))
    if s > 1:
      assert row['learning_rate/discriminator'] == pytest.approx(
          discriminator(s - 2))
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    final = json.load(f)
  assert 0 < final['psnr'] < 60 and 0 < final['codebook_usage'] <= 1
  assert final['num_examples'] == 8
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['num_steps'] == STEPS
  assert glob.glob(os.path.join(workdir, 'images',
                                'eval_reconstructions_*.png'))
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.*'))


def test_a_finished_run_run_again_returns_its_final_metrics(
    uninterrupted, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = f.read()
  result = loop.train_and_evaluate(_config(), workdir, devices=_devices())
  assert result == uninterrupted[1]
  # The run returned: its lock is free (a notebook kernel that trained
  # blocked every other run in the workdir until it exited).
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and 'the run finished at step 5' in out[0], out
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert f.read() == rows  # No second final eval.
  # A changed config on a finished run trains nothing under it: the record
  # of how the run was trained stays.
  with open(os.path.join(workdir, 'config.json')) as f:
    record = f.read()
  changed = _config()
  changed.optimizer.generator.learning_rate *= 2
  loop.train_and_evaluate(changed, workdir, devices=_devices(),
                          allow_config_change=True)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == record
  assert not glob.glob(os.path.join(workdir, 'config_until_step_*'))
  # A final eval that never finished (no final_metrics.json) runs again, and
  # its row replaces the first one's.
  os.remove(os.path.join(workdir, 'final_metrics.json'))
  again = loop.train_and_evaluate(_config(), workdir, devices=_devices())
  assert again['psnr'] == pytest.approx(uninterrupted[1]['psnr'], rel=1e-6)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert json.load(f) == again
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    final_evals = [
        row for row in map(json.loads, f)
        if row['step'] == STEPS and 'eval/psnr' in row
    ]
  assert len(final_evals) == 1


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    uninterrupted, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  latest = os.path.join(workdir, 'checkpoints', '5')
  for path in glob.glob(os.path.join(latest, '**', '*'), recursive=True):
    if os.path.isfile(path) and 'ocdbt' in path or path.endswith('.data'):
      with open(path, 'wb') as f:
        f.write(b'garbage')
  shutil.rmtree(os.path.join(latest, 'default', 'd'), ignore_errors=True)
  exp = experiment.Experiment(_config(), workdir, _devices())
  state, step = exp.initial_state()
  assert step == 4 and int(state.step) == 4
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1, out  # One line, no Orbax traceback.
  assert 'checkpoints/5 is unreadable' in out[0] and '5.corrupt' in out[0]
  # Set aside, so the rerun's step 5 is saved; the earlier ones untouched.
  assert exp.checkpointer.all_steps() == [2, 4]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == \
      ['2', '4', '5.corrupt']


def test_all_checkpoints_unreadable_is_a_clear_error(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  for step in ('2', '4', '5'):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', step, 'default'))
  exp = experiment.Experiment(_config(), workdir, _devices())
  with pytest.raises(CheckpointError, match='no readable checkpoint') as e:
    exp.initial_state()
  assert 'Nothing was changed' in str(e.value)
  assert 'remove' not in str(e.value).lower()
  assert 'delete' not in str(e.value).lower()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == \
      ['2', '4', '5']


def test_eval_mode_restores_the_latest_checkpoint(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = f.read()
  result = loop.evaluate_checkpoint(_config(), workdir, devices=_devices())
  assert result['step'] == STEPS
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert f.read() == rows  # The training's record; no second eval row.
  assert result['psnr'] == pytest.approx(uninterrupted[1]['psnr'], rel=1e-6)
  assert os.path.exists(os.path.join(workdir, f'eval_{STEPS}.json'))
  # eval.step chooses another kept step; one not kept is named.
  config = _config()
  config.eval.step = 2
  with open(os.path.join(workdir, 'eval_2.json')) as f:
    trained = json.load(f)
  assert loop.evaluate_checkpoint(config, workdir,
                                  devices=_devices())['step'] == 2
  with open(os.path.join(workdir, 'eval_2.json')) as f:
    assert json.load(f)['psnr'] == pytest.approx(trained['psnr'], rel=1e-6)
  config.eval.step = 3
  with pytest.raises(
      CheckpointError, match=r'^eval\.step: no checkpoint at step 3 in .*; '
      r'steps there: \[2, 4, 5\]'):
    loop.evaluate_checkpoint(config, workdir, devices=_devices())
  with pytest.raises(CheckpointError, match='no checkpoint'):
    loop.evaluate_checkpoint(tiny.tokenizer_config(), str(tmp_path / 'empty'),
                             devices=_devices())
  assert not os.path.exists(tmp_path / 'empty')  # A mistyped --workdir.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_on_two_devices(uninterrupted,
                                                        tmp_path):
  # Through the launch script's localhost mode: the same main.py command
  # lines (coordinator, process ids) that it sends to GPU hosts over ssh.
  workdir, logs = str(tmp_path / 'run'), str(tmp_path / 'logs')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=compile_options.subprocess_xla_flags(1))
  command = [
      sys.executable,
      os.path.join(ROOT, 'launch', 'gpu_nodes.py'), 'run',
      '--hosts=localhost,localhost', f'--python={sys.executable}',
      f'--coordinator_port={_free_port()}', '--cpu_collectives=gloo',
      '--config=' + os.path.join(ROOT, 'tests', 'tiny_tokenizer_config.py'),
      f'--workdir={workdir}', f'--log_dir={logs}', '--timeout=500', '--',
      '--config.loss.disc_start=1', '--config.ema.decay=0.9'
  ]
  launcher = subprocess.run(command, env=env, capture_output=True, text=True,
                            cwd=ROOT, check=False)
  outputs = []
  for i in range(2):
    with open(os.path.join(logs, f'process_{i}.log')) as f:
      outputs.append(f.read())
  assert launcher.returncode == 0, launcher.stdout + ''.join(
      o[-3000:] for o in outputs)
  assert 'vqlab: 2 processes, 2 devices' in outputs[0]
  # A quiet console: vqlab's own lines, no library INFO logs.
  assert 'vqlab: saving the checkpoint of step 2' in outputs[0]
  assert re.search(r'^vqlab: eval at step 5: psnr=', outputs[0], re.M)
  assert not re.search(r'^I\d{4} ', outputs[0], re.M), outputs[0][-3000:]
  expected, got = _losses(uninterrupted[0]), _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in expected:
    np.testing.assert_allclose(got[step], expected[step], rtol=1e-5,
                               err_msg=f'step {step}')
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert json.load(f)['psnr'] == pytest.approx(uninterrupted[1]['psnr'],
                                                 rel=1e-5)
  # The same command again: process 0 finds the run finished and tells
  # process 1, and both stop without a second final eval.
  command = [
      f'--log_dir={logs}_again'
      if a.startswith('--log_dir=') else f'--coordinator_port={_free_port()}'
      if a.startswith('--coordinator_port=') else a for a in command
  ]
  again = subprocess.run(command, env=env, capture_output=True, text=True,
                         cwd=ROOT, check=False)
  with open(os.path.join(f'{logs}_again', 'process_0.log')) as f:
    first = f.read()
  assert again.returncode == 0, again.stdout + first[-3000:]
  assert 'the run finished at step 5' in first
  assert not re.search(r'^vqlab: eval at step', first, re.M)
  # Both return the final metrics (process 1 had only the step).
  with open(os.path.join(f'{logs}_again', 'process_1.log')) as f:
    assert re.search(r'^vqlab: step=5, preempted=False, .*psnr=', f.read(),
                     re.M)


def test_eval_grid_shows_the_first_real_examples():
  mask = np.array([1, 0, 1, 1, 0, 0, 1, 1])  # Two hosts' padded halves.
  grid_examples = experiment._grid_examples  # pylint: disable=protected-access
  np.testing.assert_array_equal(grid_examples(mask, 3), [0, 2, 3])
  np.testing.assert_array_equal(grid_examples(mask, 1), [0, 2])  # Two clips.


def test_a_resumed_eval_step_lacks_its_eval_without_its_row_or_its_file(
    tmp_path):
  """Both writes of an eval (its metrics.jsonl row, then eval_<step>.json)
  must be there, else a crash between them is redone; steps that are not
  eval steps before the last never lack one."""
  train = ml_collections.ConfigDict({'num_steps': 8, 'eval_every': 3})
  workdir = str(tmp_path)
  assert loop._eval_missing(workdir, 6, train)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 6, 'loss': 1.0}) + '\n')  # A train row.
  assert loop._eval_missing(workdir, 6, train)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 6, 'eval/loss': 1.0}) + '\n')
  assert loop._eval_missing(workdir, 6, train)  # The row, not the file.
  with open(os.path.join(workdir, 'eval_6.json'), 'w') as f:
    f.write('{"step": 6}')
  assert not loop._eval_missing(workdir, 6, train)
  os.remove(os.path.join(workdir, 'metrics.jsonl'))
  assert loop._eval_missing(workdir, 6, train)  # The file, not the row.
  for step in (0, 4, 8, 9):
    assert not loop._eval_missing(workdir, step, train)
