"""benchmarks/paper_scale.py as a user runs it: tiny compile-only cases in
their own processes, merged into one JSON.

One run (about 20 s of CPU) covers a generator train step and a
sampling case that report (with remat), a case whose config lacks a --set key (an
'unknown_key' row) and a case killed at its time limit (a 'timed_out' row),
and checks the train step's model FLOPs against a count made by hand.
"""

import json
import os
import subprocess
import sys

from benchmarks import budget
from configs.gpt import tiny_cpu as gpt_tiny_cpu
from tests import paths

SCRIPT = os.path.join(paths.ROOT, 'benchmarks', 'paper_scale.py')


def _run(tmp_path, *args: str) -> tuple[dict, str]:
  """(the JSON, stdout) of paper_scale.py --tiny --compile_only `args`."""
  path = tmp_path / 'paper_scale.json'
  proc = subprocess.run([
      sys.executable, SCRIPT, '--tiny', '--compile_only', f'--json={path}',
      *args
  ], capture_output=True, text=True, timeout=600, cwd=paths.ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu',
                                 TMPDIR=str(tmp_path)))  # Its logs.
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(path.read_text()), proc.stdout


def _gpt_flops_by_hand(batch: int, layers: int) -> float:
  """FLOPs of one GPT train step (forward + backward = 3 x forward) from
  the config alone (with `layers` blocks): 2 per multiply-add of the blocks'
  and the head's weights per token (6 N T B), plus attention's two T x T
  products."""
  model = gpt_tiny_cpu.get_config().model
  d, tokens = model.width, model.length
  weights = layers * (4 * d * d + 2 * d * model.mlp_dim) + d * model.vocab_size
  attention = layers * 2 * 2 * tokens * tokens * d
  return 3 * batch * (2 * weights * tokens + attention)


def test_compile_only_rows_timeouts_and_unknown_keys(tmp_path, monkeypatch):
  # XLA's attention (the only path on CPU), recorded with the command.
  monkeypatch.setenv('VQLAB_ATTENTION', 'xla')
  results, stdout = _run(
      tmp_path, '--cases=gpt,maskgit_sample,vqgan_taming,titok_s128_stage1',
      '--case_timeouts=titok_s128_stage1=0.001', '--set=model.vocab_size=512',
      '--set=model.remat_policy=full', '--set=model.num_layers=2',
      '--memory_budget_gib=1e-6')
  assert results['device']['platform'] == 'cpu'
  assert results['jax'] and results['date']
  assert '--compile_only' in results['command']
  assert results['command'].startswith('VQLAB_ATTENTION=xla python ')
  rows = results['rows']
  # Two blocks, not the tiny configs' four: half the programs to compile,
  # and still a count that must multiply by the blocks.
  suffix = (' memory_budget_gib=1e-06 model.vocab_size=512 '
            'model.remat_policy=full model.num_layers=2')
  assert sorted(rows) == sorted(
      f'tiny/{name}{suffix}' for name in ('gpt', 'maskgit_sample',
                                          'vqgan_taming', 'titok_s128_stage1'))
  for name in ('gpt', 'maskgit_sample'):
    row = rows[f'tiny/{name}{suffix}']
    assert row['status'] == 'ok', row
    assert row['compile_s'] > 0 and row['flops_per_step'] > 0
    memory = row['memory']
    assert memory['argument_bytes'] > 0 and memory['output_bytes'] > 0
    assert memory['peak_estimate_bytes'] >= memory['temp_bytes'] > 0
    assert row['init_compile_s'] > 0  # Init compiled,
    assert 'init_s' not in row and 'step_s' not in row  # but nothing ran.
    assert f'tiny/{name}{suffix}' in stdout  # The table.
  assert rows[f'tiny/maskgit_sample{suffix}']['global_batch'] == 64

  # The VQGAN config has no model.vocab_size: its row says so.
  row = rows[f'tiny/vqgan_taming{suffix}']
  assert row['status'] == 'unknown_key', row
  assert 'model.vocab_size' in row['error']
  # Killed at its limit while the others reported.
  row = rows[f'tiny/titok_s128_stage1{suffix}']
  assert row['status'] == 'timed_out' and row['limit_s'] == 0.001, row
  assert 'compile_s' not in row

  gpt = rows[f'tiny/gpt{suffix}']
  # No number of microbatches fits 1 KiB: the step was recompiled with the
  # most there are (one example per device), and that shrank its peak.
  per_device = gpt['global_batch'] // results['device']['count']
  assert gpt['microbatches'] == per_device > 1 and not gpt['fits_budget']
  first, last = gpt['microbatches_tried'][0], gpt['microbatches_tried'][-1]
  assert first['microbatches'] == 1 and last['microbatches'] == per_device
  assert first['peak_estimate_bytes'] > gpt['memory']['peak_estimate_bytes']
  line, = (line for line in stdout.splitlines()
           if line.startswith(f'tiny/gpt{suffix}'))
  assert line.endswith(f'  ok ({per_device} microbatches: still over 0.00 '
                       'GiB)'), line
  # Exactly, in one piece or in microbatches; MFU's count leaves out what
  # remat recomputes (HFU's has it: the blocks' forward once more).
  assert gpt['model_flops_per_step'] == _gpt_flops_by_hand(
      gpt['global_batch'], layers=2)
  assert gpt['flops_per_step'] > gpt['model_flops_per_step']


def test_more_microbatches_fit_the_budget_by_estimate():
  # 20 bytes of state, 80 of activations at 1 microbatch; 8 per device.
  memory = {'peak_estimate_bytes': 100, 'temp_bytes': 80}
  assert budget.more_microbatches(memory, 1, 8, budget=45) == 4  # 20 + 20.
  assert budget.more_microbatches(memory, 1, 8, budget=60) == 2  # 20 + 40.
  # 6 per device: 2, 3 or 6 microbatches (4 does not divide it).
  assert budget.more_microbatches(memory, 1, 6, budget=47) == 3  # 20 + 26.7.
  assert budget.more_microbatches(memory, 1, 6, budget=45) == 6  # 20 + 13.3.
  assert budget.more_microbatches(memory, 1, 8, budget=10) == 8  # The most.
  assert budget.more_microbatches(memory, 8, 8, budget=10) is None
  # From 2 microbatches (40 bytes of activations each): 4 halves them.
  memory = {'peak_estimate_bytes': 60, 'temp_bytes': 40}
  assert budget.more_microbatches(memory, 2, 8, budget=40) == 4


def test_every_paper_config_builds_without_pil():
  """The lent GPU image has no Pillow: the configs (whose base names the
  built-in photos) and the benchmark's cases build without it; only reading
  photos imports it."""
  code = ('import sys; sys.modules["PIL"] = None\n'
          'import jax; from benchmarks import paper_scale as ps\n'
          'for name in ps.CASES: ps.case_config(name, False, 0, [])\n'
          'print("built", len(ps.CASES))')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, timeout=300, cwd=paths.ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == 'built 12'
