r"""Cloud TPU VMs and pod slices: create, install vqlab, run, tail logs, delete.

Every step is a gcloud command; `--dry_run` prints them, one per line,
exactly as they would run (a shell can paste them), and runs nothing.

  python launch/tpu_vm.py create --name=vq --zone=us-central2-b \
      --accelerator_type=v4-32 --version=tpu-ubuntu2204-base --spot
  python launch/tpu_vm.py setup --name=vq --zone=us-central2-b --source=.
  python launch/tpu_vm.py run --name=vq --zone=us-central2-b \
      --config=configs/quickstart.py --workdir=gs://my-bucket/runs/vq \
      -- --config.train.num_steps=20000
  python launch/tpu_vm.py logs --name=vq --zone=us-central2-b --follow
  python launch/tpu_vm.py stop --name=vq --zone=us-central2-b
  python launch/tpu_vm.py delete --name=vq --zone=us-central2-b

`run` starts `main.py --distributed` on every worker at once (gcloud's
`--worker=all`) under nohup, so a dropped ssh connection does not end the
run; each worker logs to its own file (--log). All workers share --workdir,
which must be a gs:// URL. launch/README.md documents every flag.
"""

import argparse
import os
import posixpath
import subprocess
import sys

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

REMOTE_DIR = '~/vqlab'
# Left out of the archive setup copies: history, runs, caches and local
# virtual environments (the README's install makes a 3 GB .venv here).
_NOT_SHIPPED = ('.git', 'workdirs', '__pycache__', '.venv', 'venv',
                '*.egg-info', '.pytest_cache', '.ruff_cache')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG = '~/vqlab_logs/run.log'
VENV = '~/vqlab-venv'


class UsageError(Exception):
  """A bad flag combination; reported as one line."""


def _gcloud(args, *parts: str) -> list[str]:
  command = ['gcloud', 'compute', 'tpus', *parts]
  if args.project:
    command.append(f'--project={args.project}')
  return command


def _ssh(args, remote_command: str, worker: str = 'all') -> list[str]:
  command = _gcloud(args, 'tpu-vm', 'ssh', args.name, f'--zone={args.zone}',
                    f'--worker={worker}')
  if args.internal_ip:
    command.append('--internal-ip')
  return command + [f'--command={remote_command}']


def _scp(args, local: str, remote: str, recurse: bool = False) -> list[str]:
  command = _gcloud(args, 'tpu-vm', 'scp', local, f'{args.name}:{remote}',
                    f'--zone={args.zone}', '--worker=all')
  if recurse:
    command.append('--recurse')
  if args.internal_ip:
    command.append('--internal-ip')
  return command


# ---------------------------------------------------------------- commands ---


def create_commands(args) -> list[list[str]]:
  if args.spot and args.preemptible:
    raise UsageError('--spot and --preemptible are exclusive')
  if args.queued and args.preemptible:
    raise UsageError('--preemptible is not available with --queued (use '
                     '--spot)')
  if args.reserved and (args.spot or args.preemptible):
    raise UsageError('--reserved excludes --spot and --preemptible')
  if args.queued:
    command = _gcloud(args, 'queued-resources', 'create', args.name,
                      f'--node-id={args.name}', f'--zone={args.zone}',
                      f'--accelerator-type={args.accelerator_type}',
                      f'--runtime-version={args.version}')
  else:
    command = _gcloud(args, 'tpu-vm', 'create', args.name,
                      f'--zone={args.zone}',
                      f'--accelerator-type={args.accelerator_type}',
                      f'--version={args.version}')
  for flag in ('spot', 'preemptible', 'reserved'):
    if getattr(args, flag):
      command.append(f'--{flag}')
  if args.network:
    command.append(f'--network={args.network}')
  if args.subnetwork:
    command.append(f'--subnetwork={args.subnetwork}')
  if args.service_account:
    command.append(f'--service-account={args.service_account}')
  return [command]


def _is_not_replaceable(path: str) -> bool:
  """The home directory (as ~ or /home/USER), the root, a top-level
  directory, the login directory itself or a hidden folder of the home
  directory (~/.ssh, /home/USER/.local where uv lives): not for `rm -rf`."""
  path = posixpath.normpath(home_path(path))
  parts = path.split('/')
  return (path in ('~', '/', '.') or path.startswith('..') or
          path.count('/') < 2 and path.startswith('/') or
          len(parts) == 3 and parts[:2] == ['', 'home'] or
          len(parts) == 2 and parts[0] == '~' and parts[1].startswith('.') or
          len(parts) == 4 and parts[:2] == ['', 'home'] and
          parts[3].startswith('.'))


def split_git_source(source: str) -> tuple[str, str]:
  """'[git+]URL[@REF]' -> (URL, REF or ''): the ref is what follows the
  last '@' of the repository path, so a user (git@host:..., ssh://git@...)
  is not a ref and a branch may hold '/' (feature/x)."""
  url = source.removeprefix('git+')
  scheme = url.find('://')
  path_start = (url.find('/', scheme + 3) if scheme >= 0 else url.find(':') + 1)
  if path_start <= 0:
    return url, ''
  repository, at, ref = url[path_start:].rpartition('@')
  return (url[:path_start] + repository, ref) if at and ref else (url, '')


def setup_commands(args) -> list[list[str]]:
  """Installs vqlab (the repository: main.py and configs/ are not part of
  the wheel) into --remote_dir on every worker, plus the TPU jax."""
  commands = []
  if _is_not_replaceable(args.remote_dir):
    raise UsageError(f'--remote_dir={args.remote_dir}: setup deletes and '
                     'recreates it; name a directory of its own (e.g. '
                     '~/vqlab)')
  remote = remote_path(args.remote_dir)
  if args.source.startswith(('git+', 'https://', 'git@', 'ssh://')):
    url, ref = split_git_source(args.source)
    fetch = f'rm -rf {remote} && git clone {quote(url)} {remote}'
    if ref:
      fetch += f' && git -C {remote} checkout {quote(ref)}'
  else:
    archive = f'/tmp/vqlab-{args.name}.tar.gz'
    commands.append(['tar', '-czf', archive] +
                    [f'--exclude={p}' for p in _NOT_SHIPPED] +
                    ['-C', args.source, '.'])
    commands.append(_scp(args, archive, 'vqlab.tar.gz'))
    fetch = (f'rm -rf {remote} && mkdir -p {remote} && '
             f'tar -xzf ~/vqlab.tar.gz -C {remote}')
  # 'none' is no package, as --venv=none is no venv (PyPI may hold one).
  packages = ' '.join(quote(p) for p in args.pip_extra if p != 'none')
  if args.venv == 'none':
    install = f'{args.pip} install -e {remote}'
  else:
    # TPU images ship Python 3.10 and vqlab's jax needs 3.11+: uv fetches a
    # standalone Python for the venv.
    venv, uv = remote_path(args.venv), '~/.local/bin/uv'
    install = (f'curl -LsSf https://astral.sh/uv/install.sh | sh && {uv} venv '
               f'--allow-existing --python {quote(args.python_version)} '
               f'{venv} && {uv} pip install --python {venv}/bin/python '
               f'-e {remote}')
  install += f' {packages}' if packages else ''
  commands.append(_ssh(args, f'{fetch} && {install}'))
  if args.data:
    dest = remote_path(args.data_dest)
    if args.data.startswith('gs://'):
      commands.append(
          _ssh(
              args, f'mkdir -p {dest} && gcloud storage cp -r '
              f'{quote(args.data)} {dest}'))
    else:
      commands.append(_ssh(args, f'mkdir -p {dest}'))
      commands.append(_scp(args, args.data, args.data_dest, recurse=True))
  return commands


def main_py_args(args) -> list[str]:
  """The main.py command line every worker runs."""
  return ([
      args.python, 'main.py', f'--config={args.config}',
      f'--workdir={args.workdir}', '--distributed', f'--mode={args.mode}'
  ] + list(args.overrides))


def run_commands(args) -> list[list[str]]:
  if not args.workdir.startswith('gs://') and not args.allow_local_workdir:
    raise UsageError(f'--workdir={args.workdir}: all workers must share it, '
                     'use a gs:// URL (or pass --allow_local_workdir)')
  problem = main_py_flags_problem(args.overrides)
  if problem:
    raise UsageError(problem)
  try:
    env = env_words(args.env)
  except ValueError as e:
    raise UsageError(str(e)) from None
  python, *rest = main_py_args(args)
  program = ' '.join([remote_path(python)] + [quote(a) for a in rest])
  if env:
    program = 'env ' + ' '.join(env) + ' ' + program
  return [
      _ssh(args, start_command(program, home_path(args.log), args.remote_dir))
  ]


def logs_commands(args) -> list[list[str]]:
  tail = f'tail -n {args.lines}' + (' -f' if args.follow else '')
  return [
      _ssh(args, f'{tail} {remote_path(home_path(args.log))}',
           worker=args.worker)
  ]


def stop_commands(args) -> list[list[str]]:
  """SIGTERM: vqlab saves a checkpoint at the current step and exits."""
  return [_ssh(args, stop_command(home_path(args.log) + '.pid'))]


def delete_commands(args) -> list[list[str]]:
  if args.queued:
    return [
        _gcloud(args, 'queued-resources', 'delete', args.name,
                f'--zone={args.zone}', '--force', '--quiet')
    ]
  return [
      _gcloud(args, 'tpu-vm', 'delete', args.name, f'--zone={args.zone}',
              '--quiet')
  ]


COMMANDS = {
    'create': create_commands,
    'setup': setup_commands,
    'run': run_commands,
    'logs': logs_commands,
    'stop': stop_commands,
    'delete': delete_commands
}

# ------------------------------------------------------------------- flags ---


def parser() -> argparse.ArgumentParser:
  common = Parser(add_help=False)
  common.add_argument('--name', required=True,
                      help='TPU VM (node) name; also the queued resource id.')
  common.add_argument('--zone', required=True, help='e.g. us-central2-b.')
  common.add_argument('--project', default=None,
                      help='GCP project (default: gcloud config).')
  common.add_argument('--dry_run', action='store_true',
                      help='Print the commands, one per line; run nothing.')
  common.add_argument('--internal_ip', action='store_true',
                      help='ssh/scp over internal IPs (from inside the VPC).')
  top = Parser(prog='tpu_vm.py', description=__doc__.split('\n', 1)[0])
  sub = top.add_subparsers(dest='command', required=True)

  create = sub.add_parser('create', parents=[common],
                          help='Create a TPU VM or pod slice.')
  create.add_argument('--accelerator_type', required=True,
                      help='e.g. v4-8 (one host), v4-32, v5litepod-16.')
  create.add_argument(
      '--version', required=True,
      help='TPU runtime version, e.g. tpu-ubuntu2204-base '
      '(v4), v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e.')
  create.add_argument(
      '--queued', action='store_true',
      help='Request through a queued resource (waits for '
      'capacity instead of failing).')
  create.add_argument('--spot', action='store_true', help='Spot capacity.')
  create.add_argument(
      '--preemptible', action='store_true',
      help='Preemptible (older TPU generations; not with '
      '--queued).')
  create.add_argument('--reserved', action='store_true',
                      help='Use a reservation of the project.')
  create.add_argument('--network', default=None, help='VPC network.')
  create.add_argument('--subnetwork', default=None, help='VPC subnetwork.')
  create.add_argument(
      '--service_account', default=None,
      help='Service account of the VM (needs write access '
      'to the gs:// workdir).')

  setup = sub.add_parser('setup', parents=[common],
                         help='Install vqlab on every worker.')
  setup.add_argument(
      '--source', default=REPO,
      help='A local checkout (packed with tar, copied with '
      'scp; default: the one holding this script) or a git '
      'URL, git+https://...[@ref].')
  setup.add_argument('--remote_dir', default=REMOTE_DIR,
                     help='Where the repository goes on the workers.')
  setup.add_argument(
      '--venv', default=VENV,
      help='Virtual environment made on every worker with uv (its '
      'installer, from astral.sh), with Python --python_version (TPU images '
      'have 3.10; vqlab needs 3.11+); none: install into the workers\' '
      'python with --pip.')
  setup.add_argument('--python_version', default='3.12',
                     help='Python of the --venv.')
  setup.add_argument(
      '--pip', default='python3 -m pip',
      help='The pip command on the workers with --venv=none (it installs '
      'vqlab into their python).')
  setup.add_argument(
      '--pip_extra', nargs='*', default=['jax[tpu]'],
      help='Packages installed with vqlab (default: '
      'jax[tpu]; --pip_extra with no value, or --pip_extra=none, for '
      'CPU/GPU images).')
  setup.add_argument(
      '--data', default=None,
      help='Data to copy to every worker: a local file or '
      'folder (scp) or a gs:// URL (gcloud storage cp). Data '
      'on gs:// can also be read in place: point the config '
      'at it instead.')
  setup.add_argument('--data_dest', default='~/data',
                     help='Where --data goes on the workers.')

  run = sub.add_parser('run', parents=[common],
                       help='Run main.py on every worker (in the background).')
  run.add_argument('--config', required=True,
                   help='Config file, relative to --remote_dir.')
  run.add_argument('--workdir', required=True,
                   help='gs:// URL shared by all workers.')
  run.add_argument('--mode', default='train', choices=MODES,
                   help='main.py --mode.')
  run.add_argument('--remote_dir', default=REMOTE_DIR,
                   help='The repository on the workers (setup --remote_dir).')
  run.add_argument(
      '--python', default=f'{VENV}/bin/python',
      help='The python on the workers (default: the one setup '
      'installs into; python3 after setup --venv=none).')
  run.add_argument('--log', default=LOG,
                   help='Log file on each worker (its pid in LOG.pid).')
  run.add_argument('--env', action='append', default=[],
                   help='NAME=VALUE set for main.py (repeatable).')
  run.add_argument('--allow_local_workdir', action='store_true',
                   help='Accept a non-gs:// --workdir (single-host slices).')
  run.add_argument('overrides', nargs='*', metavar='-- MAIN_PY_FLAGS',
                   help='Passed to main.py, e.g. -- --config.seed=1.')

  logs = sub.add_parser('logs', parents=[common], help="Show one worker's log.")
  logs.add_argument('--worker', default='0',
                    help='Worker index, or all (lines of all interleaved).')
  logs.add_argument('--lines', type=int, default=50, help='Lines from the end.')
  logs.add_argument('--follow', action='store_true', help='tail -f.')
  logs.add_argument('--log', default=LOG, help='run --log.')

  stop = sub.add_parser(
      'stop', parents=[common],
      help='SIGTERM the run on every worker (it saves a '
      'checkpoint first).')
  stop.add_argument('--log', default=LOG, help='run --log.')

  delete = sub.add_parser('delete', parents=[common],
                          help='Delete the TPU VM (or queued resource).')
  delete.add_argument('--queued', action='store_true',
                      help='It was created with create --queued.')
  return top


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  try:
    commands = COMMANDS[args.command](args)
  except UsageError as e:
    print(f'tpu_vm.py {args.command}: error: {e}', file=sys.stderr)
    return 2
  for command in commands:
    print(format_command(command), flush=True)
    if not args.dry_run:
      result = subprocess.run(command, check=False)
      if result.returncode:
        print(f'tpu_vm.py: exit status {result.returncode}', file=sys.stderr)
        return result.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
