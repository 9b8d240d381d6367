"""Every mistake on main.py's command line is one line on stderr.

Each case runs `python main.py ...` as a user would and checks the exact
line, the exit status, that nothing else reaches stderr (no traceback) and
that nothing was written to the workdir. These mistakes stop the process
while it parses its flags, before anything heavy is imported; most cases use
a config file that imports only ml_collections, so each run takes a fraction
of a second (the README's case loads the quickstart: a few seconds).
"""

import ast
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests import paths
from vqlab import cli

ROOT = paths.ROOT
QUICKSTART = os.path.join(ROOT, 'configs', 'quickstart.py')
LIGHT_CONFIG = """
import ml_collections


def get_config():
  return ml_collections.ConfigDict({'train': {'num_steps': 10}})
"""


def _write(path, source: str) -> str:
  path.write_text(textwrap.dedent(source).lstrip())
  return str(path)


@pytest.fixture
def light_config(tmp_path) -> str:
  return _write(tmp_path / 'light.py', LIGHT_CONFIG)


def _one_line_error(*args: str, workdir=None) -> str:
  """Runs main.py with `args` (and --workdir); it must fail with exit
  status 1 and exactly one line on stderr, writing nothing. Returns it."""
  if workdir is not None:
    args += (f'--workdir={workdir}',)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), *args],
      capture_output=True, text=True, timeout=120, cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert not proc.stdout.strip(), proc.stdout[-3000:]
  if workdir is not None:
    assert not os.path.exists(workdir), os.listdir(workdir)
  return lines[0]


# (a) A misspelt key on the command line: the README's example.
def test_misspelt_key_names_the_closest_valid_key(tmp_path):
  line = _one_line_error(f'--config={QUICKSTART}',
                         '--config.train.num_stpes=40',
                         workdir=tmp_path / 'run')
  assert line == ('config error: train.num_stpes: unknown key; did you mean '
                  'train.num_steps?')


def test_misspelt_section_is_named(tmp_path, light_config):
  line = _one_line_error(f'--config={light_config}',
                         '--config.trian.num_steps=40',
                         workdir=tmp_path / 'run')
  assert line == 'config error: trian: unknown key; did you mean train?'


def test_key_below_a_value_is_named(tmp_path, light_config):
  line = _one_line_error(f'--config={light_config}',
                         '--config.train.num_steps.max=40',
                         workdir=tmp_path / 'run')
  assert line == ("config error: train.num_steps: a value (int), not a "
                  "section: no key 'max'")


# (b) A config file that does not exist.
def test_missing_config_file(tmp_path):
  path = str(tmp_path / 'nope.py')
  line = _one_line_error(f'--config={path}', workdir=tmp_path / 'run')
  assert line == f'config error: {path}: no such config file'


# (c) A config file with a syntax error: file and line.
def test_config_file_with_a_syntax_error(tmp_path):
  source = 'import ml_collections\n\ndef get_config(:\n  pass\n'
  path = _write(tmp_path / 'bad.py', source)
  with pytest.raises(SyntaxError) as error:  # Python's words for it.
    compile(source, path, 'exec')
  line = _one_line_error(f'--config={path}', workdir=tmp_path / 'run')
  assert line == (f'config error: {path}:3: SyntaxError: '
                  f'{error.value.msg}')


# (d) A config file whose get_config raises, or that has none.
def test_config_file_whose_get_config_raises(tmp_path):
  path = _write(
      tmp_path / 'raises.py', """
      import ml_collections


      def get_config():
        config = ml_collections.ConfigDict()
        config.steps = 100 / 0
        return config
      """)
  line = _one_line_error(f'--config={path}', workdir=tmp_path / 'run')
  assert line == f'config error: {path}:6: ZeroDivisionError: division by zero'


def test_config_error_inside_get_config_names_file_line_and_key(tmp_path):
  path = _write(
      tmp_path / 'unknown.py', """
      from vqlab import quantizers


      def get_config():
        return quantizers.default_config('vqq')
      """)
  line = _one_line_error(f'--config={path}', workdir=tmp_path / 'run')
  assert line == (f"config error: {path}:5: quantizer.name: unknown quantizer "
                  "'vqq'; known: fsq, gumbel, lfq, regularized, vq")


def test_config_file_without_get_config(tmp_path):
  path = _write(tmp_path / 'empty.py', 'STEPS = 10\n')
  line = _one_line_error(f'--config={path}', workdir=tmp_path / 'run')
  assert line == f'config error: {path}: has no get_config() function'


# (e) A workdir that cannot be written: one line naming it, before anything
# is imported, built or compiled.
def test_workdir_below_a_file(tmp_path, light_config):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  line = _one_line_error(f'--config={light_config}', workdir=blocker / 'run')
  assert line == (f'workdir error: cannot create {blocker}/run: {blocker} is '
                  'not a directory')


def test_read_only_workdir(tmp_path, monkeypatch):
  """A parent that os.access reports unwritable (a read-only mount; mode bits
  alone would not do under root, which writes anywhere): the check that
  parse_flags runs before anything starts names it. The subprocess path of
  workdir errors is the 'not a directory' case above."""
  parent = tmp_path / 'read_only'
  parent.mkdir(mode=0o500)
  real_access = os.access
  monkeypatch.setattr(
      cli.os, 'access', lambda path, mode: False if os.path.abspath(path) ==
      str(parent) and mode & os.W_OK else real_access(path, mode))
  assert cli.workdir_problem(
      str(parent /
          'run')) == (f'cannot create {parent}/run: {parent} is not writable')
  assert cli.workdir_problem(str(tmp_path / 'fine')) is None
  assert not (parent / 'run').exists()


# (f) A missing flag, a value of the wrong type.
def test_missing_workdir(light_config):
  line = _one_line_error(f'--config={light_config}')
  assert line == ('flag error: --workdir is required: the directory of the '
                  'run (checkpoints, logs, images)')


def test_missing_config(tmp_path):
  line = _one_line_error(workdir=tmp_path / 'run')
  assert line == ('flag error: --config is required: the experiment config '
                  'file, e.g. --config=configs/quickstart.py')


def test_wrong_type_on_the_command_line(tmp_path, light_config):
  line = _one_line_error(f'--config={light_config}',
                         '--config.train.num_steps=abc',
                         workdir=tmp_path / 'run')
  assert line == "config error: train.num_steps: expected int, got 'abc'"


def test_a_tuple_override_given_twice(tmp_path):
  """config_flags joins a repeated tuple override's values: the run would
  train channel_multipliers (1, 2, 1, 2, 4), silently."""
  line = _one_line_error(f'--config={QUICKSTART}',
                         '--config.model.channel_multipliers=(1,2)',
                         '--config.model.channel_multipliers=(1,2,4)',
                         workdir=tmp_path / 'run')
  assert line == ('config error: model.channel_multipliers: given 2 times; '
                  'the values of a repeated tuple override are joined, not '
                  'replaced: give it once')


@pytest.mark.parametrize('value', ['(1,2', '(1,,2)'])
def test_a_tuple_override_that_does_not_parse_names_its_key(tmp_path, value):
  """It read as a syntax error of a file '<unknown>'."""
  line = _one_line_error(f'--config={QUICKSTART}',
                         f'--config.model.channel_multipliers={value}',
                         workdir=tmp_path / 'run')
  assert line == ('config error: model.channel_multipliers: expected a tuple '
                  f'such as (1, 2), got {value!r}')
  assert '<unknown>' not in line


def test_unknown_flag(tmp_path, light_config):
  line = _one_line_error(f'--config={light_config}', f'--wrokdir={tmp_path}')
  assert line == ("flag error: Unknown command line flag 'wrokdir'. Did you "
                  'mean: workdir ?')


@pytest.mark.parametrize('flags, message', [
    (['--coordinator_address=localhost:12355'
     ], 'flag error: jax.distributed.initialize could not join localhost:12355 '
     '('),
    (['--coordinator_address=h:1', '--num_processes=2', '--process_id=5'
     ], 'flag error: --process_id=5: must be in [0, 2) for --num_processes=2'),
    (['--num_processes=2', '--process_id=1'
     ], 'flag error: --num_processes and --process_id need '
     '--coordinator_address (host:port of process 0); without them the run '
     'is one process'),
    (['--distributed'], 'flag error: jax.distributed.initialize found no TPU '
     'pod or cluster to join ('),
])
def test_multi_process_flags(tmp_path, light_config, flags, message):
  line = _one_line_error(f'--config={light_config}', *flags,
                         workdir=tmp_path / 'run')
  assert line.startswith(message), line


def test_a_coordinator_that_never_answers_is_one_line(tmp_path, light_config):
  """Process 0 never started: JAX aborts with a C++ stack trace when its
  timeout is up (5 minutes of silence); process 1 sees first that nothing
  answers."""
  line = _one_line_error(f'--config={light_config}',
                         '--coordinator_address=localhost:1',
                         '--num_processes=2', '--process_id=1',
                         '--initialization_timeout=2', workdir=tmp_path / 'run')
  assert line.startswith('flag error: --coordinator_address=localhost:1: '
                         'nothing answered there in 2 s ('), line


def test_a_process_0_that_nobody_joins_is_one_line(tmp_path, light_config):
  """Process 1 never started: JAX aborted process 0 with a C++ stack trace
  when its timeout was up."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  line = _one_line_error(f'--config={light_config}',
                         f'--coordinator_address=localhost:{port}',
                         '--num_processes=2', '--process_id=0',
                         '--initialization_timeout=2', workdir=tmp_path / 'run')
  assert line == ('flag error: waited 2 s (--initialization_timeout) for all '
                  '2 processes, as process 0, to join at localhost:'
                  f'{port}, and not all did: did every process start, with '
                  'the same --coordinator_address and --num_processes and its '
                  'own --process_id?')


def test_every_mode_says_what_a_rerun_does_after_ctrl_c():
  """main.py's line for a Ctrl-C that stops a mode: written for each mode
  (every mode used to say 'the newest checkpoint on disk is where a rerun
  resumes')."""
  tree = ast.parse(open(os.path.join(ROOT, 'main.py')).read())
  modes = after = None
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and
        getattr(node.func, 'attr', '') == 'DEFINE_enum' and
        ast.literal_eval(node.args[0]) == 'mode'):
      modes = ast.literal_eval(node.args[2])
    if (isinstance(node, ast.Assign) and
        getattr(node.targets[0], 'id', '') == '_AFTER_INTERRUPT'):
      after = ast.literal_eval(node.value)
  assert modes and sorted(after) == sorted(modes)
  assert len(set(after.values())) >= 4


def test_sigterm_interrupts_the_modes_that_do_not_train():
  previous = signal.getsignal(signal.SIGTERM)
  try:
    cli.interrupt_on_sigterm()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)  # The handler runs here.
  finally:
    signal.signal(signal.SIGTERM, previous)


STOPPED_RUN = """
import os
import signal
import sys

from absl import app

sys.path.insert(0, {root!r})
import main
from vqlab import cli
from vqlab.train import loop
from vqlab.train import preemption


def train_until_a_signal(config, workdir, allow_config_change):
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.{signal})
    assert watcher.should_stop()
  return {{'step': 3, 'preempted': True}}


loop.train_and_evaluate = train_until_a_signal
sys.argv = ['main.py', '--config=' + {config!r}, '--workdir=' + {workdir!r}]
app.run(main.main, flags_parser=cli.parse_flags)
"""


@pytest.mark.parametrize('name, status', [('SIGTERM', 143), ('SIGINT', 130)])
def test_a_run_stopped_to_save_exits_as_the_signal_says(tmp_path, light_config,
                                                        name, status):
  """Saved, not finished: 128 + the signal, as a shell reports it, so that
  `train && sample` stops there and a scheduler restarts a preempted job."""
  script = _write(
      tmp_path / 'stopped.py',
      STOPPED_RUN.format(root=ROOT, signal=name, config=light_config,
                         workdir=str(tmp_path / 'run')))
  proc = subprocess.run([sys.executable, script], capture_output=True,
                        text=True, timeout=120, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == status, proc.stderr[-3000:]
  assert 'vqlab: step=3, preempted=True' in proc.stdout


def test_out_of_memory_is_one_line_saying_what_frees_memory():
  """An accelerator's (or XLA:CPU's) out-of-memory error was a traceback."""
  error = RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating '
                       '25836365968 bytes.\n  allocation details ...')
  assert cli.out_of_memory_line(error, 'eval') == (
      'memory error: RESOURCE_EXHAUSTED: Out of memory allocating 25836365968 '
      'bytes. (lower eval.batch_size, or use a smaller data.image_size)')
  try:
    try:
      raise error
    except RuntimeError as e:
      raise ValueError('while stepping') from e
  except ValueError as wrapped:
    assert 'raise train.microbatches' in cli.out_of_memory_line(
        wrapped, 'train')
  # A quota or a full disk is not device memory.
  assert cli.out_of_memory_line(
      RuntimeError('RESOURCE_EXHAUSTED: quota exceeded'), 'train') is None
  assert cli.out_of_memory_line(OSError('No space left on device'),
                                'sample') is None
