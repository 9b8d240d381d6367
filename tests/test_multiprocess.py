"""A real 2-process run (jax.distributed + gloo CPU collectives on localhost)
gives the same losses as 1 process over the same 2 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'tests', 'tiny_tokenizer_config.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _command(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={CONFIG}',
          f'--workdir={workdir}', *extra]


def _env(devices_per_process):
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
              XLA_FLAGS=f'--xla_force_host_platform_device_count='
              f'{devices_per_process}')


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_match_one(tmp_path):
  single = str(tmp_path / 'single')
  proc = subprocess.run(_command(single), env=_env(2), capture_output=True,
                        text=True, timeout=400, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = str(tmp_path / 'multi')
  port = _free_port()
  workers = [subprocess.Popen(
      _command(multi, f'--coordinator_address=localhost:{port}',
               '--num_processes=2', f'--process_id={i}',
               '--cpu_collectives=gloo'),
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      cwd=ROOT) for i in range(2)]
  outputs = [w.communicate(timeout=400) for w in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  assert 'vqlab: 2 processes, 2 devices' in outputs[0][0]

  expected, got = _losses(single), _losses(multi)
  assert sorted(got) == [1, 2, 3]
  for step in expected:
    np.testing.assert_allclose(got[step], expected[step], rtol=1e-5)
  with open(os.path.join(multi, 'final_metrics.json')) as f:
    multi_final = json.load(f)
  with open(os.path.join(single, 'final_metrics.json')) as f:
    single_final = json.load(f)
  np.testing.assert_allclose(multi_final['psnr'], single_final['psnr'],
                             rtol=1e-5)
