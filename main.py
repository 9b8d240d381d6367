r"""vqlab entry point.

  python main.py --config=configs/quickstart.py --workdir=/tmp/vqlab_quickstart
  python main.py --config=configs/quickstart.py --config.train.num_steps=200 \
      --workdir=/tmp/run --mode=eval
  python main.py --config=configs/quickstart.py --workdir=/tmp/stats \
      --mode=fid_stats        # Inception statistics of the eval split
                              # (--mode=fvd_stats: I3D statistics of clips)

Generators (stage 2) on a trained tokenizer run:
  python main.py --config=configs/maskgit/tiny_cpu.py --workdir=/tmp/mg \
      --mode=tokenize         # token shards of the data, then
  python main.py --config=configs/maskgit/tiny_cpu.py --workdir=/tmp/mg
  python main.py --config=configs/maskgit/tiny_cpu.py --workdir=/tmp/mg \
      --mode=sample           # PNG grids (GIFs for video), gFID / IS

Multi-host (Cloud TPU pods: every worker runs the same command):
  python main.py --config=... --workdir=gs://... --distributed
"""

import os
import socket
import sys
import threading
import time
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

from vqlab import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (a python file with get_config()).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, logs and images.')
_MODE = flags.DEFINE_enum(
    'mode', 'train',
    ['train', 'eval', 'fid_stats', 'fvd_stats', 'tokenize', 'sample'],
    'train: train (resuming if possible), then evaluate; eval: evaluate the '
    'latest checkpoint; fid_stats: save the Inception statistics (mu, sigma) '
    'of the eval split to WORKDIR/fid_stats.npz (for eval.fid_reference); '
    'fvd_stats: the same with the FVD I3D on the clips of video data '
    '(WORKDIR/fvd_stats.npz, for eval.fvd_reference); '
    'tokenize (generator configs): write the token shards of the data '
    '(resumable); sample (generator configs): samples of the latest '
    'checkpoint as images, with gFID / IS when Inception is available (FVD '
    'of videos when I3D is).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process runs '
    'outside TPU pods, which find it themselves).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (multi-process).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process index (multi-process).')
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout', 300, 'Multi-process: seconds each process '
    'waits for all of them to join the coordinator (jax.distributed).',
    lower_bound=1)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue the run in --workdir although '
    'the config differs from its config.json in keys other than run length, '
    'logging, eval and sampling settings (e.g. fine-tuning with a new '
    'learning rate); the old config.json is kept beside the new one.')
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir',
    os.environ.get('JAX_COMPILATION_CACHE_DIR',
                   '~/.cache/vqlab/jax_compilation_cache'),
    "JAX's persistent compilation cache: a resumed or repeated run loads "
    'its compiled train, eval and sample programs from here instead of '
    'compiling them again (a local directory or gs://...; default '
    '$JAX_COMPILATION_CACHE_DIR when set). Empty: no cache.')
_CPU_COLLECTIVES = flags.DEFINE_enum(
    'cpu_collectives', None, ['gloo', 'mpi'],
    'Collectives implementation for multi-process runs on CPU.')

# Required: --config and --workdir (checked by cli.parse_flags).


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once `address` ('host:port') accepts a TCP connection; exits
  with one line after `timeout` seconds.

  Where process 0 never starts or its port cannot be reached, JAX's
  coordination client aborts the process after its timeout with a C++
  stack trace, which no Python handler can turn into a line.
  """
  host, _, port = address.rpartition(':')
  if not port.isdigit():
    return  # jax.distributed.initialize names the bad address.
  deadline = time.monotonic() + timeout
  while True:
    try:
      wait = min(5.0, max(0.1, deadline - time.monotonic()))
      with socket.create_connection((host.strip('[]'), int(port)),
                                    timeout=wait):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        sys.exit(f'flag error: --coordinator_address={address}: nothing '
                 f'answered there in {timeout:g} s ({e}); is process 0 '
                 'running, and can this host reach that port?')
      time.sleep(0.5)


# Seconds JAX's own join timeout runs past --initialization_timeout, so that
# _give_up_joining speaks first.
_JOIN_GRACE_S = 15


def _give_up_joining(who: str, timeout: int) -> None:
  """Exits the process with one line: not every process joined in time."""
  where = (f' at {_COORDINATOR.value}' if _COORDINATOR.value else '')
  print(
      f'flag error: waited {timeout} s (--initialization_timeout) for {who} '
      f'to join{where}, and not all did: did every process start, with the '
      'same --coordinator_address and --num_processes and its own '
      '--process_id?', file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation',
                      _CPU_COLLECTIVES.value)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    timeout = _INITIALIZATION_TIMEOUT.value
    # Joining is silent until every process has joined: say what it waits
    # for if that takes a while.
    who = ('every process of the pod' if _PROCESS_ID.value is None else
           f'all {_NUM_PROCESSES.value} processes, as process '
           f'{_PROCESS_ID.value},')
    notice = threading.Timer(
        10.0, lambda: print(
            f'vqlab: waiting for {who} to join (at most {timeout} s)...', file=
            sys.stderr, flush=True))
    # JAX's coordination service aborts every process from C++ (a stack
    # trace) when its timeout is up: this line comes first and exits.
    gave_up = threading.Timer(timeout + 2, _give_up_joining, (who, timeout))
    for timer in (notice, gave_up):
      timer.daemon = True
      timer.start()
    deadline = time.monotonic() + timeout
    try:
      if _COORDINATOR.value and _PROCESS_ID.value:
        _wait_for_coordinator(_COORDINATOR.value, timeout)
      jax.distributed.initialize(
          coordinator_address=_COORDINATOR.value,
          num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
          initialization_timeout=max(1, round(deadline - time.monotonic())) +
          _JOIN_GRACE_S)
    except (ValueError, RuntimeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      where = ('found no TPU pod or cluster to join' if not _COORDINATOR.value
               else f'could not join {_COORDINATOR.value}')
      sys.exit(f'flag error: jax.distributed.initialize {where} ({first}); '
               'outside a pod or a cluster that names the processes, pass '
               '--coordinator_address, --num_processes and --process_id')
    finally:
      notice.cancel()
      gave_up.cancel()


def _use_compilation_cache() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  directory = _COMPILATION_CACHE_DIR.value
  if directory:
    if '://' not in directory:
      directory = os.path.expanduser(directory)
    jax.config.update('jax_compilation_cache_dir', directory)


def _quiet_libraries() -> None:
  """Library logs (absl, Orbax) at WARNING and TensorFlow's C++ logs off
  unless --verbosity asks for them: the console shows vqlab's own lines
  (progress, evals, saves) and problems. Runs before TensorFlow is imported.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  # TensorFlow's oneDNN kernels log at import, and on uint8 inputs without
  # AVX-512, whatever TF_CPP_MIN_LOG_LEVEL says; vqlab runs only tf.data's
  # input ops through TensorFlow (tests/conftest.py does the same).
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    # The image checks decode truncated files on purpose; TF logs each one.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


# What a rerun of each mode does after Ctrl-C. Training takes the first
# Ctrl-C as preemption (it saves, then stops); the second lands here.
_AFTER_INTERRUPT = {
    'train': 'the newest checkpoint on disk is where a rerun resumes',
    'eval': 'nothing was written; a rerun evaluates again',
    'tokenize': 'finished token shards are kept and a rerun skips them',
    'sample': 'a rerun samples again',
    'fid_stats': 'nothing was written; a rerun computes the statistics',
    'fvd_stats': 'nothing was written; a rerun computes the statistics',
}


def _stop(line: str) -> None:
  """Exits with status 1 and `line` on stderr. One of several processes
  names itself and leaves at once: the others, waiting for it in their next
  collective, fail then (a normal exit waited in jax.distributed's shutdown
  barrier for them, five minutes, then aborted every process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    sys.exit(line)
  print(f'process {jax.process_index()}: {line}', file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def main(argv):
  del argv
  _quiet_libraries()
  from vqlab.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import DataError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import TrainingDivergedError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import WeightsError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  _use_compilation_cache()
  _initialize_distributed()
  if _MODE.value != 'train':  # Training saves on SIGTERM (preemption).
    cli.interrupt_on_sigterm()
  from vqlab.train import loop  # pylint: disable=g-import-not-at-top
  try:
    if _MODE.value == 'train':
      result = loop.train_and_evaluate(
          _CONFIG.value, _WORKDIR.value,
          allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    elif _MODE.value == 'eval':
      result = loop.evaluate_checkpoint(
          _CONFIG.value, _WORKDIR.value,
          allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    elif _MODE.value == 'tokenize':
      from vqlab.train import pretokenize  # pylint: disable=g-import-not-at-top
      result = pretokenize.tokenize(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == 'sample':
      from vqlab.train import sampling  # pylint: disable=g-import-not-at-top
      result = sampling.sample(_CONFIG.value, _WORKDIR.value,
                               allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    else:
      from vqlab.train import reference_stats  # pylint: disable=g-import-not-at-top
      name = _MODE.value  # fid_stats or fvd_stats.
      path = os.path.join(_WORKDIR.value, f'{name}.npz')
      stats = reference_stats.compute_reference_statistics(
          _CONFIG.value, path,
          network='i3d' if name == 'fvd_stats' else 'inception')
      result = {name: path, 'num_examples': stats.num_examples}
  except KeyboardInterrupt:
    print(f'vqlab: interrupted; {_AFTER_INTERRUPT[_MODE.value]}',
          file=sys.stderr, flush=True)
    # Not through the interpreter's exit: a save cut short (its temporary
    # directory, which restores skip) logged screens of tracebacks there.
    os._exit(1)  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    import jax  # pylint: disable=g-import-not-at-top
    kinds = (
        (ConfigError, 'config'),
        (DataError, 'data'),
        (CheckpointError, 'checkpoint'),
        (WeightsError, 'weights'),
        (WorkdirError, 'workdir'),
        (TrainingDivergedError, 'training'),
        (OSError, 'file'),
    )
    kind = next((name for cls, name in kinds if isinstance(e, cls)), None)
    memory = None if kind else cli.out_of_memory_line(e, _MODE.value)
    if memory:
      _stop(memory)
    if kind is None and jax.process_count() == 1:
      raise
    if kind is None:
      traceback.print_exc()
    _stop(f'{kind} error: {e}' if kind else
          f'{type(e).__name__} (the traceback above; where a collective '
          "failed, another process may have stopped first: see each one's "
          'log)')
  print(
      'vqlab: ' +
      ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                for k, v in result.items()), flush=True)
  if result.get('preempted'):  # Saved, not finished: not a success.
    from vqlab.train import preemption  # pylint: disable=g-import-not-at-top
    return preemption.exit_status()
  return None


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)  # One line per mistake.
