r"""Multi-process runs on GPU hosts over ssh, or on this machine (localhost xN).

main.py runs once per host with --coordinator_address (the first host),
--num_processes and --process_id; JAX then forms one mesh of all processes'
devices. `--dry_run` prints the commands, one per line, and runs nothing.

  # Two GPU hosts (vqlab installed in ~/vqlab on each, e.g. a git clone):
  python launch/gpu_nodes.py run --hosts=gpu-a,gpu-b \
      --config=configs/quickstart.py --workdir=gs://my-bucket/runs/vq \
      -- --config.train.batch_size=256
  python launch/gpu_nodes.py logs --hosts=gpu-a,gpu-b
  python launch/gpu_nodes.py stop --hosts=gpu-a,gpu-b

  # Two CPU processes on this machine (what tests/train/test_loop.py runs):
  python launch/gpu_nodes.py run --hosts=localhost,localhost \
      --cpu_collectives=gloo --config=configs/quickstart.py --workdir=/tmp/vq

Remote processes start under nohup (a dropped ssh connection does not end
them) and log to LOG_DIR/process_<i>.log on their host; local ones run in the
foreground, logging to the same names, and the script exits with the first
failure (stopping the other processes, which would otherwise wait for it
forever). launch/README.md documents every flag.
"""

import argparse
import os
import subprocess
import sys
import time

from shell import env_words
from shell import format_command
from shell import home_path
from shell import main_py_flags_problem
from shell import MODES
from shell import Parser
from shell import quote
from shell import remote_path
from shell import start_command
from shell import stop_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_HOSTS = ('localhost', '127.0.0.1')
LOG_DIR = '~/vqlab_logs'


class UsageError(Exception):
  """A bad flag combination; reported as one line."""


def _hosts(args) -> tuple[list[str], bool]:
  hosts = [h.strip() for h in args.hosts.split(',') if h.strip()]
  if not hosts:
    raise UsageError('--hosts is empty')
  local = [h in LOCAL_HOSTS for h in hosts]
  if any(local) and not all(local):
    raise UsageError('--hosts mixes localhost and remote hosts; name this '
                     'machine by its hostname to reach it over ssh too')
  return hosts, all(local)


def _log(args, process: int, local: bool) -> str:
  path = f'{args.log_dir.rstrip("/")}/process_{process}.log'
  return os.path.abspath(os.path.expanduser(path)) if local else home_path(path)


def main_py_args(args, hosts: list[str], local: bool,
                 process: int) -> list[str]:
  """The main.py command line of process `process` (the same on every path:
  only the ssh/nohup wrapping differs between remote and local hosts)."""
  coordinator = (args.coordinator_address or
                 f'{hosts[0].rsplit("@", 1)[-1]}:{args.coordinator_port}')
  python = args.python or (sys.executable if local else 'python3')
  workdir = args.workdir
  if local and '://' not in workdir:  # The processes run in the repository.
    workdir = os.path.abspath(os.path.expanduser(workdir))
  command = [
      python, 'main.py', f'--config={args.config}', f'--workdir={workdir}',
      f'--coordinator_address={coordinator}', f'--num_processes={len(hosts)}',
      f'--process_id={process}'
  ]
  if args.cpu_collectives:
    command.append(f'--cpu_collectives={args.cpu_collectives}')
  return command + [f'--mode={args.mode}'] + list(args.overrides)


def _check_run_flags(args, hosts: list[str], local: bool) -> list[str]:
  problem = main_py_flags_problem(args.overrides)
  if problem:
    raise UsageError(problem)
  if not local and len(hosts) > 1 and '://' not in args.workdir and (
      not args.allow_local_workdir):
    raise UsageError(f'--workdir={args.workdir}: all hosts must share it, use '
                     'a gs:// URL (or pass --allow_local_workdir for a shared '
                     'filesystem)')
  try:
    return env_words(args.env)
  except ValueError as e:
    raise UsageError(str(e)) from None


def run_commands(args) -> list[tuple[list[str], str]]:
  """(argv, printed line) per process."""
  hosts, local = _hosts(args)
  env = _check_run_flags(args, hosts, local)
  commands = []
  for i, host in enumerate(hosts):
    program = ' '.join(quote(a) for a in main_py_args(args, hosts, local, i))
    if env:
      program = 'env ' + ' '.join(env) + ' ' + program
    if local:
      log = _log(args, i, True)
      line = (f'mkdir -p {quote(os.path.dirname(log))} && cd {quote(REPO)} && '
              f'{program} >> {quote(log)} 2>&1 &')
      commands.append((None, line))
      continue
    argv = [
        args.ssh, host,
        start_command(program, _log(args, i, False), args.remote_dir)
    ]
    commands.append((argv, format_command(argv)))
  return commands


def logs_commands(args) -> list[tuple[list[str], str]]:
  hosts, local = _hosts(args)
  commands = []
  for i, host in enumerate(hosts):
    tail = f'tail -n {args.lines} ' + remote_path(_log(args, i, local))
    argv = ['sh', '-c', tail] if local else [args.ssh, host, tail]
    commands.append((argv, tail if local else format_command(argv)))
  return commands


def stop_commands(args) -> list[tuple[list[str], str]]:
  """SIGTERM: vqlab saves a checkpoint at the current step and exits."""
  hosts, local = _hosts(args)
  if local:
    raise UsageError('local runs stop with Ctrl-C (they run in the '
                     'foreground)')
  commands = []
  for i, host in enumerate(hosts):
    argv = [args.ssh, host, stop_command(_log(args, i, False) + '.pid')]
    commands.append((argv, format_command(argv)))
  return commands


def _wait_all(processes: list[subprocess.Popen], deadline: float | None) -> int:
  """Waits for `processes`; the first failure (or the deadline: 124) stops
  the others. Returns that status, else 0."""
  # A list, not a generator: every process is polled (a returncode is set
  # only by poll), so a failure of any of them is seen.
  while any([p.poll() is None for p in processes]):
    failed = [p.returncode for p in processes if p.returncode]
    late = deadline is not None and time.monotonic() > deadline
    if failed or late:
      for p in processes:
        if p.poll() is None:
          p.terminate()
      for p in processes:
        p.wait()
      return failed[0] if failed else 124
    time.sleep(0.2)
  return 0


def _run_local(args, hosts: list[str]) -> int:
  """Starts every process, waits; the first failure stops the others."""
  env = dict(os.environ)
  env.update(item.split('=', 1) for item in args.env)
  os.makedirs(os.path.expanduser(args.log_dir), exist_ok=True)
  processes = []
  for i in range(len(hosts)):
    # Appended after a dated line, as on remote hosts (start_command).
    log = open(_log(args, i, True), 'a')  # pylint: disable=consider-using-with
    log.write(f'=== vqlab: started {time.strftime("%c", time.gmtime())} '
              'UTC ===\n')
    log.flush()
    processes.append(
        (subprocess.Popen(main_py_args(args, hosts, True, i), cwd=REPO, env=env,
                          stdout=log, stderr=subprocess.STDOUT), log))
  deadline = time.monotonic() + args.timeout if args.timeout else None
  try:
    status = _wait_all([p for p, _ in processes], deadline)
  except KeyboardInterrupt:
    # The terminal's Ctrl-C reached the processes too: they are saving.
    print(
        'gpu_nodes: Ctrl-C: waiting for the processes to save and stop '
        '(Ctrl-C again kills them)', flush=True)
    try:
      for p, _ in processes:
        p.wait()
    except KeyboardInterrupt:
      for p, _ in processes:
        if p.poll() is None:
          p.kill()
        p.wait()
    status = 130
  for i, (p, log) in enumerate(processes):
    log.close()
    status = status or p.returncode
    print(
        f'process {i}: exit status {p.returncode}, log '
        f'{_log(args, i, True)}', flush=True)
  return status


COMMANDS = {'run': run_commands, 'logs': logs_commands, 'stop': stop_commands}


def parser() -> argparse.ArgumentParser:
  common = Parser(add_help=False)
  common.add_argument(
      '--hosts', required=True,
      help='Comma-separated hosts, one process each, process '
      '0 first (user@host works). localhost (repeatable): '
      'processes on this machine.')
  common.add_argument('--log_dir', default=LOG_DIR,
                      help='Folder of process_<i>.log on each host.')
  common.add_argument('--ssh', default='ssh', help='The ssh program.')
  common.add_argument('--dry_run', action='store_true',
                      help='Print the commands, one per line; run nothing.')
  top = Parser(prog='gpu_nodes.py', description=__doc__.split('\n', 1)[0])
  sub = top.add_subparsers(dest='command', required=True)

  run = sub.add_parser('run', parents=[common],
                       help='Start main.py on every host.')
  run.add_argument('--config', required=True,
                   help='Config file (relative to the repository).')
  run.add_argument(
      '--workdir', required=True,
      help='Shared by all processes: gs://, or a shared or '
      'local filesystem for localhost runs.')
  run.add_argument('--mode', default='train', choices=MODES,
                   help='main.py --mode.')
  run.add_argument('--coordinator_port', type=int, default=8476,
                   help='Port of process 0 on the first host.')
  run.add_argument(
      '--coordinator_address', default=None,
      help='host:port of process 0 (default: first host and '
      '--coordinator_port), e.g. an address on a faster '
      'network.')
  run.add_argument('--cpu_collectives', default=None, choices=['gloo', 'mpi'],
                   help='CPU collectives (multi-process runs on CPU).')
  run.add_argument(
      '--python', default=None,
      help='Python program (default: this python for localhost, '
      'python3 on remote hosts).')
  run.add_argument('--remote_dir', default='~/vqlab',
                   help='The repository on remote hosts.')
  run.add_argument('--env', action='append', default=[],
                   help='NAME=VALUE set for main.py (repeatable).')
  run.add_argument(
      '--timeout', type=float, default=0,
      help='localhost: stop all processes after this many '
      'seconds (exit status 124); 0: no limit.')
  run.add_argument(
      '--allow_local_workdir', action='store_true',
      help='Accept a non-URL --workdir on several remote hosts '
      '(NFS and other shared filesystems).')
  run.add_argument('overrides', nargs='*', metavar='-- CONFIG_OVERRIDES',
                   help='Passed to main.py, e.g. -- --config.seed=1.')

  logs = sub.add_parser('logs', parents=[common],
                        help='The last lines of every process log.')
  logs.add_argument('--lines', type=int, default=20, help='Lines per log.')

  sub.add_parser('stop', parents=[common],
                 help='SIGTERM every remote process (it saves a checkpoint).')
  return top


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  try:
    commands = COMMANDS[args.command](args)
  except UsageError as e:
    print(f'gpu_nodes.py {args.command}: error: {e}', file=sys.stderr)
    return 2
  for _, line in commands:
    print(line, flush=True)
  if args.dry_run:
    return 0
  if args.command == 'run' and commands[0][0] is None:
    return _run_local(args, _hosts(args)[0])
  for argv_i, _ in commands:
    result = subprocess.run(argv_i, check=False)
    if result.returncode:
      print(f'gpu_nodes.py: exit status {result.returncode}', file=sys.stderr)
      return result.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
