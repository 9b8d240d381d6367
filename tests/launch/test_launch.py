"""launch/: the exact commands of --dry_run, and one-line errors for bad flags.

The localhost mode of launch/gpu_nodes.py runs for real in
tests/train/test_loop.py (two processes, gloo): the command lines printed
here for remote hosts are built by the same function.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests import paths

ROOT = paths.ROOT
sys.path.insert(0, os.path.join(ROOT, 'launch'))

# pylint: disable-next=g-import-not-at-top,wrong-import-position
import shell  # noqa: E402
import tpu_vm  # noqa: E402


def _launch(script, *argv):
  result = subprocess.run(
      [sys.executable,
       os.path.join(ROOT, 'launch', script), *argv], capture_output=True,
      text=True, check=False, cwd=ROOT,
      env=dict(os.environ, PATH='/nonexistent'))  # gcloud/ssh unreachable.
  return result.returncode, result.stdout.splitlines(), result.stderr


def _tpu(command, *argv):
  return _launch('tpu_vm.py', command, '--dry_run', *argv)


def _ok(result):
  rc, lines, err = result
  assert rc == 0, err
  return lines


TPU = ('--name=vq', '--zone=us-central2-b')


def test_tpu_create_variants():
  assert _ok(
      _tpu('create', *TPU, '--project=my-proj', '--accelerator_type=v4-32',
           '--version=tpu-ubuntu2204-base', '--spot')) == [
               'gcloud compute tpus tpu-vm create vq --zone=us-central2-b '
               '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base '
               '--project=my-proj --spot'
           ]
  assert _ok(
      _tpu('create', *TPU, '--accelerator_type=v5litepod-16',
           '--version=v2-alpha-tpuv5-lite', '--queued', '--reserved',
           '--service_account=sa@p.iam.gserviceaccount.com')) == [
               'gcloud compute tpus queued-resources create vq --node-id=vq '
               '--zone=us-central2-b --accelerator-type=v5litepod-16 '
               '--runtime-version=v2-alpha-tpuv5-lite --reserved '
               '--service-account=sa@p.iam.gserviceaccount.com'
           ]
  assert _ok(
      _tpu('create', *TPU, '--accelerator_type=v3-8', '--version=tpu-vm-base',
           '--preemptible')) == [
               'gcloud compute tpus tpu-vm create vq --zone=us-central2-b '
               '--accelerator-type=v3-8 --version=tpu-vm-base --preemptible'
           ]


def test_tpu_setup_from_a_checkout_and_from_git():
  assert _ok(
      _tpu('setup', *TPU, '--source=/src/vqlab', '--data=/data/faces',
           '--internal_ip')
  ) == [
      'tar -czf /tmp/vqlab-vq.tar.gz --exclude=.git --exclude=workdirs '
      '--exclude=__pycache__ --exclude=.venv --exclude=venv '
      "--exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ruff_cache "
      '-C /src/vqlab .',
      'gcloud compute tpus tpu-vm scp /tmp/vqlab-vq.tar.gz vq:vqlab.tar.gz '
      '--zone=us-central2-b --worker=all --internal-ip',
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=all '
      "--internal-ip --command='rm -rf ~/vqlab && mkdir -p ~/vqlab && "
      'tar -xzf ~/vqlab.tar.gz -C ~/vqlab && '
      # TPU images have Python 3.10; vqlab's jax needs 3.11+.
      'curl -LsSf https://astral.sh/uv/install.sh | sh && ~/.local/bin/uv venv '
      '--allow-existing --python 3.12 ~/vqlab-venv && ~/.local/bin/uv pip '
      'install --python ~/vqlab-venv/bin/python -e ~/vqlab "jax[tpu]"\'',
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=all '
      "--internal-ip --command='mkdir -p ~/data'",
      "gcloud compute tpus tpu-vm scp /data/faces 'vq:~/data' "
      '--zone=us-central2-b --worker=all --recurse --internal-ip'
  ]
  assert _ok(
      _tpu('setup', *TPU, '--project=p',
           '--source=git+https://github.com/me/vqlab@v0.1',
           '--remote_dir=/opt/vq', '--pip_extra=none',
           '--data=gs://bucket/data', '--data_dest=~/my data', '--venv=none')
  ) == [
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=all '
      "--project=p --command='rm -rf /opt/vq && git clone "
      'https://github.com/me/vqlab /opt/vq && git -C /opt/vq checkout v0.1 && '
      "python3 -m pip install -e /opt/vq'",
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=all '
      '--project=p --command=\'mkdir -p ~/"my data" && gcloud storage cp -r '
      'gs://bucket/data ~/"my data"\''
  ]


def test_git_sources_split_at_the_ref():
  split = tpu_vm.split_git_source
  assert split('git+https://github.com/me/vqlab@feature/x') == (
      'https://github.com/me/vqlab', 'feature/x')
  assert split('git@github.com:me/vqlab') == ('git@github.com:me/vqlab', '')
  assert split('git@github.com:me/vqlab@v1') == ('git@github.com:me/vqlab',
                                                 'v1')
  assert split('ssh://git@github.com/me/vqlab@a/b') == (
      'ssh://git@github.com/me/vqlab', 'a/b')
  assert split('https://user@host.org/me/vqlab') == (
      'https://user@host.org/me/vqlab', '')


def test_tpu_run_logs_stop_delete():
  run = _ok(
      _tpu('run', *TPU, '--config=configs/quickstart.py',
           '--workdir=gs://bucket/runs/vq', '--env=TF_CPP_MIN_LOG_LEVEL=3',
           '--', '--config.train.num_steps=100', "--config.data.name=it's"))
  program = ('env TF_CPP_MIN_LOG_LEVEL=3 ~/vqlab-venv/bin/python main.py '
             '--config=configs/quickstart.py --workdir=gs://bucket/runs/vq '
             '--distributed --mode=train --config.train.num_steps=100 '
             '"--config.data.name=it\'s"')
  # The printed line is one shell word per argument, and the remote command
  # is valid sh that passes main.py its arguments unchanged.
  *ssh, remote = shlex.split(run[0])
  assert ssh == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'vq',
      '--zone=us-central2-b', '--worker=all'
  ]
  assert remote == '--command=' + shell.start_command(
      program, '~/vqlab_logs/run.log', '~/vqlab')
  remote = remote.removeprefix('--command=')
  assert subprocess.run(['sh', '-n', '-c', remote], check=False).returncode == 0
  # main.py's own --allow_config_change passes through (fine-tuning).
  run = _ok(
      _tpu('run', *TPU, '--config=c.py', '--workdir=gs://b/r',
           '--mode=fvd_stats', '--', '--allow_config_change'))
  assert '--mode=fvd_stats --allow_config_change >' in run[0]
  assert _ok(_tpu('logs', *TPU, '--worker=3', '--lines=5', '--follow')) == [
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=3 '
      "--command='tail -n 5 -f ~/vqlab_logs/run.log'"
  ]
  assert _ok(_tpu('stop', *TPU)) == [
      'gcloud compute tpus tpu-vm ssh vq --zone=us-central2-b --worker=all '
      "--command='" + shell.stop_command('~/vqlab_logs/run.log.pid') + "'"
  ]
  # A relative --log names one file from $HOME, where its folder is made,
  # and after the run's cd (it was written relative to the repository).
  run = _ok(
      _tpu('run', *TPU, '--config=c.py', '--workdir=gs://b/r',
           '--log=logs/a.log'))
  assert 'mkdir -p ~/logs && cd ~/vqlab && echo' in run[0]
  assert '>> ~/logs/a.log 2>&1 < /dev/null & echo $! > ~/logs/a.log.pid)' in (
      run[0])
  assert _ok(_tpu('logs', *TPU,
                  '--log=logs/a.log'))[0].endswith("tail -n 50 ~/logs/a.log'")
  assert _ok(_tpu('delete', *TPU)) == [
      'gcloud compute tpus tpu-vm delete vq --zone=us-central2-b --quiet'
  ]
  assert _ok(_tpu('delete', *TPU, '--queued', '--project=p')) == [
      'gcloud compute tpus queued-resources delete vq --zone=us-central2-b '
      '--force --quiet --project=p'
  ]


def test_quote_round_trips_through_sh():
  words = ['plain', 'a b', "it's", 'x"y$z`w\\v', '~/a b', '']
  line = 'printf "%s\\n" ' + ' '.join(shell.quote(w) for w in words)
  out = subprocess.run(['sh', '-c', line], capture_output=True, text=True,
                       check=True).stdout
  assert out.split('\n')[:-1] == words


def test_gpu_nodes_remote_and_local():
  rc, lines, err = _launch('gpu_nodes.py', 'run', '--hosts=gpu-a,me@gpu-b',
                           '--dry_run', '--config=configs/quickstart.py',
                           '--workdir=gs://bucket/vq', '--env=NCCL_DEBUG=WARN',
                           '--', '--config.train.batch_size=256')
  assert rc == 0, err
  assert lines == [
      f"ssh {host} '" + shell.start_command(
          'env NCCL_DEBUG=WARN python3 main.py --config=configs/quickstart.py '
          '--workdir=gs://bucket/vq --coordinator_address=gpu-a:8476 '
          f'--num_processes=2 --process_id={i} --mode=train '
          '--config.train.batch_size=256', f'~/vqlab_logs/process_{i}.log',
          '~/vqlab') + "'" for i, host in enumerate(['gpu-a', 'me@gpu-b'])
  ]
  rc, lines, err = _launch('gpu_nodes.py', 'run', '--hosts=localhost,localhost',
                           '--dry_run', '--python=python3',
                           '--coordinator_port=1234', '--cpu_collectives=gloo',
                           '--config=configs/quickstart.py',
                           '--workdir=/tmp/run', '--log_dir=/tmp/logs')
  assert rc == 0, err
  assert lines == [
      f'mkdir -p /tmp/logs && cd {ROOT} && python3 main.py '
      '--config=configs/quickstart.py '
      '--workdir=/tmp/run --coordinator_address=localhost:1234 '
      f'--num_processes=2 --process_id={i} --cpu_collectives=gloo '
      f'--mode=train >> /tmp/logs/process_{i}.log 2>&1 &' for i in range(2)
  ]
  assert _ok(_launch('gpu_nodes.py', 'stop', '--hosts=a,b', '--dry_run')) == [
      f"ssh {h} '" + shell.stop_command(f'~/vqlab_logs/process_{i}.log.pid') +
      "'" for i, h in enumerate('ab')
  ]


def test_a_local_run_finds_a_relative_workdir_where_it_was_named(
    tmp_path, monkeypatch):
  """The processes run in the repository: runs/vq named from elsewhere
  used to land in <repository>/runs/vq."""
  import gpu_nodes  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  args = gpu_nodes.parser().parse_args(
      ['run', '--hosts=localhost', '--config=c.py', '--workdir=runs/vq'])
  assert f'--workdir={tmp_path}/runs/vq' in gpu_nodes.main_py_args(
      args, ['localhost'], True, 0)
  assert '--workdir=runs/vq' in gpu_nodes.main_py_args(args, ['gpu-a'], False,
                                                       0)


def test_stop_signals_the_run_and_fails_without_one(tmp_path):
  """The remote stop, run by sh in a stand-in $HOME: SIGTERM to the pid in
  the file; no pid file is a failure saying so (it reported success, and a
  user could delete the VM of a run that never got the signal)."""
  env = dict(os.environ, HOME=str(tmp_path))
  stop = shell.stop_command('~/logs/run.log.pid')
  result = subprocess.run(['sh', '-c', stop], env=env, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 1
  assert result.stderr.strip() == (
      f'vqlab: no run to stop, no pid file {tmp_path}/logs/run.log.pid')
  run = subprocess.Popen(
      [sys.executable, '-c', 'import time; time.sleep(60)', 'main.py'])
  (tmp_path / 'logs').mkdir()
  (tmp_path / 'logs' / 'run.log.pid').write_text(f'{run.pid}\n')
  result = subprocess.run(['sh', '-c', stop], env=env, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert run.wait(timeout=10) == -15  # SIGTERM.
  assert _ok(
      _launch('gpu_nodes.py', 'logs', '--hosts=a', '--lines=3',
              '--dry_run')) == ["ssh a 'tail -n 3 ~/vqlab_logs/process_0.log'"]


def test_a_second_start_is_refused_while_the_run_goes_on_and_logs_append(
    tmp_path):
  """The remote start, run by sh in a stand-in $HOME: while a run goes on,
  another start is refused (it took the pid file, so `stop` lost the run,
  and its log); after a stop, a new start appends to the log."""
  env = dict(os.environ, HOME=str(tmp_path))
  sh = lambda command: subprocess.run([
      'sh', '-c', command
  ], env=env, capture_output=True, text=True, check=False, timeout=30)
  start = lambda word, seconds: sh(
      shell.start_command(
          f'{sys.executable} -c "import sys, time; print(sys.argv[2], '
          f'flush=True); time.sleep(int(sys.argv[3]))" main.py {word} '
          f'{seconds}', '~/logs/run.log', str(tmp_path)))
  log = tmp_path / 'logs' / 'run.log'
  pid_file = tmp_path / 'logs' / 'run.log.pid'

  def wait_for_line(line):
    for _ in range(200):
      if line in log.read_text().splitlines():
        return
      time.sleep(0.05)

  def wait_for_exit(pid):
    for _ in range(200):
      if not os.path.exists(f'/proc/{pid}'):
        return
      time.sleep(0.05)

  assert start('first', 60).returncode == 0
  first = int(pid_file.read_text())
  try:
    wait_for_line('first')
    refused = start('second', 0)
    assert refused.returncode == 1
    assert re.match(
        f'vqlab: a run is going, pid {first}, log .*run.log: stop '
        'it first', refused.stderr), refused.stderr
    assert int(pid_file.read_text()) == first
    assert sh(shell.stop_command('~/logs/run.log.pid')).returncode == 0
    wait_for_exit(first)
  finally:
    subprocess.run(['kill', '-9', str(first)], check=False, capture_output=True)
  assert start('second', 0).returncode == 0
  wait_for_line('second')
  wait_for_exit(int(pid_file.read_text()))
  lines = log.read_text().splitlines()
  assert [line for line in lines if not line.startswith('=== vqlab: started')
         ] == ['first', 'second'], lines
  assert len(lines) == 4
  # The second run is over: its pid is not signalled (it may be reused).
  stopped = sh(shell.stop_command('~/logs/run.log.pid'))
  assert stopped.stdout.strip() == 'vqlab: the run had already exited'


def test_a_local_run_stops_when_any_process_fails(tmp_path, monkeypatch):
  import gpu_nodes  # pylint: disable=g-import-not-at-top
  programs = ['import time; time.sleep(60)', 'raise SystemExit(3)']
  monkeypatch.setattr(
      gpu_nodes, 'main_py_args',
      lambda args, hosts, local, i: [sys.executable, '-c', programs[i]])
  args = gpu_nodes.parser().parse_args([
      'run', '--hosts=localhost,localhost', '--config=c.py',
      f'--workdir={tmp_path}', f'--log_dir={tmp_path}', '--timeout=50'
  ])
  start = time.monotonic()
  assert gpu_nodes._run_local(args, ['localhost'] * 2) == 3  # pylint: disable=protected-access
  assert time.monotonic() - start < 30  # Process 0 was stopped, not awaited.


def test_a_local_run_waits_for_its_processes_after_ctrl_c(
    tmp_path, monkeypatch):
  """Ctrl-C reaches every process of the terminal: main.py saves, then
  exits. The launcher used to die at once, giving the prompt back while the
  processes were still writing their checkpoint."""
  import gpu_nodes  # pylint: disable=g-import-not-at-top
  program = ('import time; time.sleep(2); '
             f'open({str(tmp_path / "saved")!r}, "w").close(); '
             'raise SystemExit(130)')
  monkeypatch.setattr(
      gpu_nodes, 'main_py_args',
      lambda args, hosts, local, i: [sys.executable, '-c', program])
  args = gpu_nodes.parser().parse_args([
      'run', '--hosts=localhost', '--config=c.py', f'--workdir={tmp_path}',
      f'--log_dir={tmp_path}'
  ])
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    threading.Timer(0.5, signal.raise_signal, [signal.SIGINT]).start()
    assert gpu_nodes._run_local(args, ['localhost']) == 130  # pylint: disable=protected-access
  finally:
    signal.signal(signal.SIGINT, previous)
  assert os.path.exists(tmp_path / 'saved')


@pytest.mark.parametrize('script,argv,message', [
    ('tpu_vm.py', ['run', *TPU, '--config=c.py', '--workdir=/tmp/run'],
     'tpu_vm.py run: error: --workdir=/tmp/run: all workers must share it, '
     'use a gs:// URL (or pass --allow_local_workdir)'),
    ('tpu_vm.py', [
        'run', *TPU, '--config=c.py', '--workdir=gs://b/r', '--', '--dry_run'
    ], 'tpu_vm.py run: error: arguments after -- are config overrides '
     '(--config.x=y) or --allow_config_change, --noallow_config_change, '
     '--compilation_cache_dir, --initialization_timeout, --verbosity; got '
     '--dry_run'),
    ('tpu_vm.py', [
        'run', *TPU, '--config=c.py', '--workdir=gs://b/r', '--env=NOVALUE'
    ], 'tpu_vm.py run: error: --env=NOVALUE: expected NAME=VALUE'),
    ('tpu_vm.py', [
        'create', *TPU, '--accelerator_type=v4-8', '--version=v', '--spot',
        '--preemptible'
    ], 'tpu_vm.py create: error: --spot and --preemptible are exclusive'),
    ('tpu_vm.py', [
        'create', *TPU, '--accelerator_type=v4-8', '--version=v', '--queued',
        '--preemptible'
    ], 'tpu_vm.py create: error: --preemptible is not available with --queued '
     '(use --spot)'),
    ('tpu_vm.py', ['create', *TPU, '--version=v'],
     'tpu_vm.py create: error: the following arguments are required: '
     '--accelerator_type'),
    ('tpu_vm.py', ['launch', *TPU
                  ], 'tpu_vm.py: error: argument command: invalid choice:'),
    ('gpu_nodes.py', [
        'run', '--hosts=a,b', '--config=c.py', '--workdir=/tmp/run'
    ], 'gpu_nodes.py run: error: --workdir=/tmp/run: all hosts must share it, '
     'use a gs:// URL (or pass --allow_local_workdir for a shared '
     'filesystem)'),
    ('gpu_nodes.py', [
        'run', '--hosts=localhost,b', '--config=c.py', '--workdir=gs://b/r'
    ], 'gpu_nodes.py run: error: --hosts mixes localhost and remote hosts; '
     'name this machine by its hostname to reach it over ssh too'),
    ('gpu_nodes.py', [
        'run', '--hosts=a', '--config=c.py', '--workdir=gs://b/r',
        '--cpu_collectives=nccl'
    ], 'gpu_nodes.py run: error: argument --cpu_collectives: invalid choice:'),
    *[('tpu_vm.py', ['setup', *TPU, f'--remote_dir={d}'],
       f'tpu_vm.py setup: error: --remote_dir={d}: setup deletes and '
       'recreates it; name a directory of its own (e.g. ~/vqlab)')
      for d in ('~', '~/', '~/vqlab/..', '.', '', '/', '/opt', '/home/alice',
                '/home/alice/', '~/.ssh', '~/.local', '/home/alice/.ssh')],
    ('gpu_nodes.py', ['stop', '--hosts=localhost'],
     'gpu_nodes.py stop: error: local runs stop with Ctrl-C (they run in '
     'the foreground)'),
])
def test_bad_flags_are_one_line_errors(script, argv, message):
  rc, lines, err = _launch(script, *argv)
  assert rc == 2 and not lines
  assert len(err.strip().splitlines()) == 1
  assert err.startswith(message), err
