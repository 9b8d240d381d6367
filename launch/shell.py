"""Shell quoting and flag parsing shared by the launch scripts."""

import argparse
import posixpath
import re
import shlex

_SAFE = re.compile(r'^[\w@%+=:,./-]+$')


def quote(word: str) -> str:
  """Quotes `word` for a remote shell with double quotes, so that the whole
  remote command prints in single quotes without escapes."""
  if word and _SAFE.match(word):
    return word
  return '"' + re.sub(r'(["$`\\])', r'\\\1', word) + '"'


def remote_path(path: str) -> str:
  """quote() for a path, keeping a leading ~/ unquoted so that it still
  expands to the home directory."""
  if path == '~':
    return path
  if path.startswith('~/'):
    return '~/' + quote(path[2:])
  return quote(path)


def home_path(path: str) -> str:
  """A remote path as seen from the login directory: a relative one gets a
  ~/ prefix, so that it names the same file before and after the run's
  `cd` (its log and pid file are made there and read back from $HOME)."""
  return path if path.startswith(('/', '~')) else '~/' + path


def _runs_main_py(pid: str) -> str:
  """A shell test: the process of the pid in file `pid` (a remote_path) is
  alive and runs main.py (not another that took a freed pid)."""
  return f'grep -qs main.py /proc/$(cat {pid} 2>/dev/null)/cmdline'


def start_command(program: str, log: str, remote_dir: str) -> str:
  """The remote start of `program` in `remote_dir`, in the background: its
  output appended to `log` (a home_path) after a dated line, its pid in
  `log`.pid. Refused, saying so, while the run of that pid file goes on: a
  second start would take its pid file (and fail on its chips), and `stop`
  would no longer reach it. Appended: a run started again after a crash or a
  stop keeps the log that says why."""
  pid, log_file = remote_path(log + '.pid'), remote_path(log)
  return (f'if {_runs_main_py(pid)}; then echo vqlab: a run is going, pid '
          f'$(cat {pid}), log {log_file}: stop it first >&2; exit 1; fi; '
          f'mkdir -p {remote_path(posixpath.dirname(log))} && '
          f'cd {remote_path(remote_dir)} && echo "=== vqlab: started '
          f'$(date -u) ===" >> {log_file} && (nohup {program} >> {log_file} '
          f'2>&1 < /dev/null & echo $! > {pid})')


def stop_command(pid_file: str) -> str:
  """The remote SIGTERM of the run whose pid is in `pid_file` (a home_path);
  fails, saying so, when there is no such file (no run was started with
  that log), instead of reporting a stop that did not happen. A pid that no
  longer runs main.py is not signalled."""
  pid = remote_path(pid_file)
  return (f'test -f {pid} || {{ echo vqlab: no run to stop, no pid file '
          f'{pid} >&2; exit 1; }}; if {_runs_main_py(pid)}; then kill -TERM '
          f'$(cat {pid}); else echo vqlab: the run had already exited; fi')


def format_command(command: list[str]) -> str:
  """One shell line for an argv; a --flag=value argument prints as
  --flag='value' when the value needs quotes. shlex.split() inverts it."""
  words = []
  for word in command:
    flag, eq, value = word.partition('=')
    if eq and flag.startswith('--') and _SAFE.match(flag):
      words.append(flag + '=' + shlex.quote(value))
    else:
      words.append(shlex.quote(word))
  return ' '.join(words)


MODES = ('train', 'eval', 'fid_stats', 'fvd_stats', 'tokenize', 'sample')
# main.py flags a launcher passes through after `--`, besides --config.*.
_PASSED_FLAGS = ('--allow_config_change', '--noallow_config_change',
                 '--compilation_cache_dir', '--initialization_timeout',
                 '--verbosity')


def main_py_flags_problem(flags: list[str]) -> str | None:
  """What is wrong with the main.py flags given after `--`, or None."""
  bad = [
      f for f in flags if not f.startswith('--config.') and
      f.split('=', 1)[0] not in _PASSED_FLAGS
  ]
  if not bad:
    return None
  return ('arguments after -- are config overrides (--config.x=y) or '
          f'{", ".join(_PASSED_FLAGS)}; got {" ".join(bad)} (the launcher '
          'sets --config, --workdir, --mode and the process flags itself)')


def env_words(items: list[str]) -> list[str]:
  """--env NAME=VALUE items -> quoted words; ValueError names a bad one."""
  for item in items:
    name, eq, _ = item.partition('=')
    if not eq or not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name):
      raise ValueError(f'--env={item}: expected NAME=VALUE')
  return [quote(item) for item in items]


class Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage block: --help shows it)."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')
