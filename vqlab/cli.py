"""main.py's command line: a mistake in it is one line, not a traceback.

`parse_flags` is main.py's `app.run(main, flags_parser=...)`. Parsing the
flags loads the --config file and applies its --config.* overrides
(ml_collections.config_flags); everything that can go wrong there, a missing
required flag and a --workdir that cannot be written stop the process before
JAX starts or anything is written, with one line on stderr and exit status 1:

  config error: train.num_stpes: unknown key; did you mean train.num_steps?
  config error: configs/nope.py: no such config file
  config error: configs/bad.py:7: NameError: name 'confg' is not defined
  config error: train.num_steps: expected int, got 'abc'
  flag error: --workdir is required: the directory of the run (...)
  workdir error: cannot create /data/run: /data is not writable

Values of the right type are checked later, by `experiment.validate`, with
the same `config error: <key>: <problem>` line.
"""

import os
import re
import signal
import sys
from typing import Iterator

from absl import flags
import ml_collections
from ml_collections import config_flags

from vqlab import config_schema
from vqlab import fileio
from vqlab.errors import ConfigError

CONFIG_FLAG = 'config'  # A config_flags.DEFINE_config_file flag.
WORKDIR_FLAG = 'workdir'  # The run's directory; must be writable.
REQUIRED = {
    CONFIG_FLAG: 'the experiment config file, e.g. '
                 '--config=configs/quickstart.py',
    WORKDIR_FLAG: 'the directory of the run (checkpoints, logs, images)',
}


class UsageError(Exception):
  """A mistake on the command line; the message is the line to print."""


def interrupt_on_sigterm() -> None:
  """SIGTERM raises KeyboardInterrupt from now on, as Ctrl-C does: the
  modes that do not train (eval, tokenize, sample, statistics) stop with
  their interrupted line. On several processes jax.distributed's
  preemption notifier takes SIGTERM for itself and they ran to the end,
  so a pod's `stop` did nothing."""

  def interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, interrupt)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses `argv` into absl's FLAGS and checks it; exits with one line on a
  mistake. Returns the arguments that are not flags, as absl does."""
  try:
    return _parse(argv)
  except UsageError as e:
    sys.exit(str(e))


def _parse(argv: list[str]) -> list[str]:
  argument = _config_argument(argv)
  path = None if argument is None else argument.split(':', 1)[0]
  if path and not os.path.isfile(path):
    raise UsageError(f'config error: {path}: no such config file')
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(_parse_error(e, argument, argv)) from e
  for name, what in REQUIRED.items():
    given = argument if name == CONFIG_FLAG else flags.FLAGS[name].value
    if given in (None, ''):
      raise UsageError(f'flag error: --{name} is required: {what}')
  _check_loaded(flags.FLAGS[CONFIG_FLAG].value, path)
  problem = _repeated_sequence(flags.FLAGS[CONFIG_FLAG].value, argv)
  if problem:
    raise UsageError(f'config error: {problem}')
  problem = processes_problem(flags.FLAGS)
  if problem:
    raise UsageError(f'flag error: {problem}')
  problem = workdir_problem(flags.FLAGS[WORKDIR_FLAG].value)
  if problem:
    raise UsageError(f'workdir error: {problem}')
  return rest


def processes_problem(values: flags.FlagValues) -> str | None:
  """What is wrong with main.py's multi-process flags, or None.

  --distributed alone joins a TPU pod or a cluster that tells JAX its
  processes; --coordinator_address names process 0 (with --num_processes and
  --process_id where the cluster does not tell them).
  """
  get = lambda name: values[name].value if name in values else None
  coordinator, count, index = (get('coordinator_address'), get('num_processes'),
                               get('process_id'))
  if ((count is not None or index is not None) and not coordinator and
      not get('distributed')):
    return ('--num_processes and --process_id need --coordinator_address '
            '(host:port of process 0); without them the run is one process')
  if count is not None and count < 1:
    return f'--num_processes={count}: must be at least 1'
  if index is not None and count is not None and not 0 <= index < count:
    return (f'--process_id={index}: must be in [0, {count}) for '
            f'--num_processes={count}')
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config ('path' or 'path:argument'), found with absl's
  own parsing before the config flag loads the file."""
  probe = flags.FlagValues()
  flags.DEFINE_string(CONFIG_FLAG, None, '', flag_values=probe)
  try:
    probe(argv, known_only=True)
  except flags.Error:
    return None  # The real parse reports it.
  return probe[CONFIG_FLAG].value


def _parse_error(error: Exception, argument: str | None,
                 argv: list[str]) -> str:
  """The line for an exception raised while parsing the flags; re-raises
  the ones that are not the user's mistakes (bugs)."""
  path = None if argument is None else argument.split(':', 1)[0]
  problem = (_config_file_problem(error, path) or
             _unknown_override(error, argument, argv) or
             _override_value_problem(error))
  if problem:
    return f'config error: {problem}'
  if isinstance(error, flags.Error):
    return f'flag error: {_first_line(error)}'
  raise error


def _chain(error: BaseException) -> Iterator[BaseException]:
  """`error` and the exceptions it was raised from or while handling."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _line_in(error: BaseException, path: str) -> int | None:
  """The line of the config file `path` where `error` was raised (its last
  frame there: the call that failed), or None."""
  line, target = None, os.path.abspath(path)
  tb = error.__traceback__
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
      line = tb.tb_lineno
    tb = tb.tb_next
  return line


def _config_file_problem(error: BaseException, path: str | None) -> str | None:
  """`file[:line]: problem` when loading the config file or calling its
  get_config() raised `error` (at any depth of its chain), else None."""
  if not path:
    return None
  chain = list(_chain(error))
  for e in chain:
    # (Not an override's value that does not parse: that one names its key.)
    if isinstance(e, SyntaxError) and e.filename and os.path.isfile(e.filename):
      return f'{e.filename}:{e.lineno}: {type(e).__name__}: {e.msg}'
    if isinstance(e, AttributeError) and e.name == 'get_config':
      return f'{path}: has no get_config() function'
    line = _line_in(e, path)
    if line is not None:
      what = (str(e) if isinstance(e, ConfigError) else
              f'{type(e).__name__}: {_first_line(e)}')
      return f'{path}:{line}: {what}'
  if str(error).startswith(f'flag --{CONFIG_FLAG}='):
    # Raised by the call of get_config() itself (e.g. a wrong ':argument').
    return f'{path}: {type(chain[-1]).__name__}: {_first_line(chain[-1])}'
  return None


def _overrides(argv: list[str]) -> list[str]:
  """The dotted keys of the --config.KEY=VALUE (or --[no]config.KEY)
  arguments, in order."""
  pattern = re.compile(rf'^--?(?:no)?{CONFIG_FLAG}\.([^=]+)')
  return [m[1] for m in map(pattern.match, argv) if m]


def _repeated_sequence(config: ml_collections.ConfigDict,
                       argv: list[str]) -> str | None:
  """`key: given N times; ...` for a tuple-valued key overridden more than
  once, else None: config_flags joins the values of a repeated tuple
  override ((1,2) then (1,2,4) gives (1, 2, 1, 2, 4)); other keys take the
  last, as absl flags do."""
  keys = _overrides(argv)
  for key in dict.fromkeys(keys):
    if keys.count(key) > 1 and isinstance(config_schema.lookup(config, key),
                                          (tuple, list)):
      return (f'{key}: given {keys.count(key)} times; the values of a '
              'repeated tuple override are joined, not replaced: give it '
              'once')
  return None


def _unknown_override(error: Exception, argument: str | None,
                      argv: list[str]) -> str | None:
  """`key: unknown key; ...` when `error` is config_flags refusing an
  override of a key that the config does not have, else None."""
  if argument is None or not isinstance(error, (KeyError, AttributeError)):
    return None
  # The exception names the missing key but not where it is; the config,
  # loaded again on this error path only, tells which override it was.
  config = _load_config(argument)
  for key in _overrides(argv):
    unknown = config_schema.path_error(config, key)
    if unknown:
      return str(unknown)
  return None


def _load_config(argument: str) -> ml_collections.ConfigDict:
  """The config of --config=`argument`, without the overrides."""
  argv = ['', f'--{CONFIG_FLAG}={argument}']
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(CONFIG_FLAG, flag_values=values,
                                           sys_argv=argv)
  values(argv)
  return holder.value


def _override_value_problem(error: Exception) -> str | None:
  """`key: expected int, got 'abc'` when `error` is absl refusing the value
  of a --config.KEY override, else None."""
  if not isinstance(error, flags.IllegalFlagValueError):
    return None
  message = str(error)
  match = re.match(rf'flag --({CONFIG_FLAG}\.([^=\s]+))=', message)
  if not match or match[1] not in flags.FLAGS:
    return None
  # absl's message is 'flag --NAME=VALUE: PROBLEM', PROBLEM the parser's.
  value, cause = message[match.end():], error.__context__
  if cause is not None and value.endswith(f': {cause}'):
    value = value[:-len(f': {cause}')]
  default = flags.FLAGS[match[1]].default  # None: a ConfigDict or literal.
  if default is None:
    return f'{match[2]}: {_first_line(cause or error)}'
  if isinstance(default, (tuple, list)):
    return f'{match[2]}: expected a tuple such as (1, 2), got {value!r}'
  return f'{match[2]}: expected {type(default).__name__}, got {value!r}'


def _check_loaded(config, path: str | None) -> None:
  """Raises UsageError unless the config file gave a ConfigDict. (An OSError
  while loading the file is only raised when the config is first used:
  here.)"""
  if isinstance(config, ml_collections.ConfigDict):
    return
  try:
    getattr(config, 'lock', None)  # Raises config_flags' loading error.
  except OSError as e:
    raise UsageError('config error: ' + (
        _config_file_problem(e, path) or f'{path}: {_last_line(e)}')) from e
  what = 'None' if config is None else type(config).__name__
  raise UsageError(f'config error: {path}: get_config() returned {what}, not '
                   'a ConfigDict')


def _last_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[-1].strip() if lines else type(error).__name__


# What frees device memory, by mode (main.py's --mode).
_LESS_MEMORY = {
    'train': ('lower train.batch_size, raise train.microbatches (the same '
              'global batch in less activation memory) or, where the model '
              'has one, set model.remat_policy'),
    'eval': 'lower eval.batch_size',
    'tokenize': 'lower eval.batch_size (the batches tokenized)',
    'sample': 'lower sample.batch_size',
    'fid_stats': 'lower eval.batch_size',
    'fvd_stats': 'lower eval.batch_size',
}


def out_of_memory_line(error: BaseException, mode: str) -> str | None:
  """'memory error: ...' with what frees memory in `mode`, when `error` (or
  one it came from) is an accelerator's or XLA's out-of-memory error
  (RESOURCE_EXHAUSTED: Out of memory ...); else None."""
  for e in _chain(error):
    line = _first_line(e)
    if 'RESOURCE_EXHAUSTED' in line and 'memory' in line.lower():
      return (f'memory error: {line} ({_LESS_MEMORY[mode]}, or use a smaller '
              'data.image_size)')
  return None


def workdir_problem(workdir: str) -> str | None:
  """Why the local directory `workdir` cannot be created or written, or a
  URL (gs://) cannot be read (no credentials, no such bucket), or None.
  Writes nothing."""
  if fileio.is_url(workdir):
    try:
      fileio.exists(workdir)
    except OSError as e:
      return f'{workdir} cannot be read: {e}'
    return None
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  where = (workdir if existing == os.path.abspath(workdir) else
           f'cannot create {workdir}: {existing}')
  if not os.path.isdir(existing):
    return f'{where} is not a directory'
  if not os.access(existing, os.W_OK | os.X_OK):
    return f'{where} is not writable'
  return None
