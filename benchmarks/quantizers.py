r"""Quantizer cost: forward+backward time and memory per quantizer and
codebook size, and the LFQ 2^18 vs 2^10 VQGAN train-step ratio.

  python benchmarks/quantizers.py --batch=8 --tokens=256 --steps=10 \
      --json=/tmp/quantizers.json

Part 1 times `value_and_grad` of (sum(quantized * w) + loss) for each
quantizer alone, in training mode (EMA updates, sampling), on latents
[batch, tokens, code_dim] (same batch x tokens for all; the channel count is
each quantizer's own code_dim). Sizes: VQ (plain and EMA), Gumbel and
Regularized VQ at K = 1024, 4096, 16384; LFQ and FSQ at K = 2^10, 2^14, 2^18
(LFQ: exact batch entropy, 2 x 2^(b/2) factors from 2^14 on; FSQ levels whose
product is exactly K). Memory is XLA's temporary buffer size for the
compiled step (exact on every backend), plus the device's peak where the
backend reports one.

Part 2 (`--train_step`) runs benchmarks/train_step.py's `run_benchmark` on the
quickstart VQGAN (at `--image_size`) with LFQ at 2^10 and at 2^18 and reports
step_s(2^18) / step_s(2^10); the target (DESIGN.md §7) is <= 1.2. `--steps`,
`--json` and `--workdir` are benchmarks/train_step.py's flags.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

# Run as a script (python benchmarks/quantizers.py) the repository root is not
# on sys.path; `benchmarks` and `configs` live there (vqlab is installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import train_step as train_step_benchmark
from configs import quickstart
from vqlab import quantizers

_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size of the latents.')
_TOKENS = flags.DEFINE_integer('tokens', 256, 'Positions per example (16x16).')
_VQ_DIM = flags.DEFINE_integer('vq_dim', 32,
                               'Code dim of vq/gumbel/regularized.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these rows (e.g. lfq,fsq).')
_TRAIN_STEP = flags.DEFINE_bool(
    'train_step', True, 'Also time VQGAN train steps, LFQ 2^10 vs 2^18.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32,
                                   'Image size of the train-step comparison.')

FSQ_LEVELS = {
    2**10: (8, 8, 4, 4),
    2**14: (8, 8, 8, 8, 4),
    2**18: (8, 8, 8, 8, 8, 8)
}


def quantizer_configs(vq_dim: int) -> list[tuple[str, int, object]]:
  """(row name, K, quantizer config) for every benchmarked setting."""
  rows = []
  for k in (1024, 4096, 16384):
    for name, extra in (('vq', {}), ('vq_ema', {
        'ema': True
    }), ('gumbel', {}), ('regularized', {})):
      config = quantizers.default_config(name.split('_')[0])
      config.update(codebook_size=k, embedding_dim=vq_dim, **extra)
      rows.append((name, k, config))
  for k in (2**10, 2**14, 2**18):
    config = quantizers.default_config('lfq')
    config.codebook_size = k
    if k > 2**10:
      bits = k.bit_length() - 1
      config.factor_bits = (bits // 2, bits - bits // 2)
    rows.append(('lfq', k, config))
    config = quantizers.default_config('fsq')
    config.levels = FSQ_LEVELS[k]
    rows.append(('fsq', k, config))
  return rows


def time_quantizer(config, batch: int, tokens: int, steps: int) -> dict:
  """Compile and time fwd+bwd of one quantizer in training mode."""
  q = quantizers.build(config)
  z = jax.random.normal(jax.random.key(0), (batch, tokens, q.code_dim))
  rngs = {'params': jax.random.key(1), 'quantizer': jax.random.key(2)}
  variables = jax.jit(lambda z: q.init(rngs, z, train=False))(z)
  params = variables.get('params', {})
  state = {k: v for k, v in variables.items() if k != 'params'}
  weights = jax.random.normal(jax.random.key(3), z.shape)

  def loss_fn(params, z, state, key):
    out, new_state = q.apply({
        'params': params,
        **state
    }, z, train=True, rngs={'quantizer': key}, mutable=list(state))
    return jnp.sum(out.quantized * weights) + out.loss, new_state

  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
  key = jax.random.key(4)
  t0 = time.perf_counter()
  compiled = step.lower(params, z, state, key).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  result = compiled(params, z, state, key)
  jax.block_until_ready(result)
  t0 = time.perf_counter()
  for _ in range(steps):
    result = compiled(params, z, state, key)
  jax.block_until_ready(result)
  step_s = (time.perf_counter() - t0) / steps
  stats = jax.devices()[0].memory_stats() or {}
  return {
      'code_dim': q.code_dim,
      'compile_s': compile_s,
      'step_s': step_s,
      'temp_bytes': int(memory.temp_size_in_bytes),
      'device_peak_bytes': stats.get('peak_bytes_in_use')
  }


def lfq_train_step_ratio(image_size: int, steps: int, workdir: str) -> dict:
  """run_benchmark of the quickstart VQGAN with LFQ 2^10 and 2^18."""
  results = {}
  for bits in (10, 18):
    config = quickstart.get_config()
    config.data.image_size = image_size
    if 'train_image_size' in config.data:
      config.data.train_image_size = 0
    config.model.quantizer = quantizers.default_config('lfq')
    config.model.quantizer.codebook_size = 2**bits
    if bits == 18:  # The configs/vqgan/lfq_f16.py setting.
      config.model.quantizer.factor_bits = (9, 9)
    config.train.checkpoint_every = 0
    results[f'lfq_2^{bits}'] = train_step_benchmark.run_benchmark(
        config, f'{workdir}/lfq_{bits}', steps)
  results['ratio_2^18_over_2^10'] = (results['lfq_2^18']['step_s'] /
                                     results['lfq_2^10']['step_s'])
  return results


def _mb(n) -> str:
  return '-' if n is None else f'{n / 2**20:.1f}'


def main(argv):
  del argv
  steps = flags.FLAGS.steps
  device = jax.devices()[0]
  rows = []
  print(f'device {device.device_kind}; latents [{_BATCH.value}, '
        f'{_TOKENS.value}, code_dim]; fwd+bwd, train mode; {steps} steps')
  print(f'{"quantizer":<12} {"K":>7} {"dim":>4} {"ms/step":>9} '
        f'{"temp MB":>8} {"peak MB":>8} {"compile s":>9}')
  for name, k, config in quantizer_configs(_VQ_DIM.value):
    if _ONLY.value and name not in _ONLY.value:
      continue
    r = time_quantizer(config, _BATCH.value, _TOKENS.value, steps)
    rows.append({'quantizer': name, 'codebook_size': k, **r})
    print(
        f'{name:<12} {k:>7} {r["code_dim"]:>4} {r["step_s"] * 1e3:>9.3f} '
        f'{_mb(r["temp_bytes"]):>8} {_mb(r["device_peak_bytes"]):>8} '
        f'{r["compile_s"]:>9.2f}', flush=True)
  result = {
      'command': ' '.join(['python'] + sys.argv),
      'device': device.device_kind,
      'batch': _BATCH.value,
      'tokens': _TOKENS.value,
      'steps': steps,
      'quantizers': rows
  }
  if _TRAIN_STEP.value:
    ratio = lfq_train_step_ratio(_IMAGE_SIZE.value, steps, flags.FLAGS.workdir)
    result['vqgan_train_step'] = ratio
    for key in ('lfq_2^10', 'lfq_2^18'):
      r = ratio[key]
      print(f'VQGAN train step, {key}: {r["step_s"] * 1e3:.1f} ms/step, '
            f'peak {_mb(r["peak_memory_bytes"])} MB, compile '
            f'{r["compile_s"]:.1f} s')
    verdict = 'meets' if ratio['ratio_2^18_over_2^10'] <= 1.2 else 'MISSES'
    print(f'LFQ 2^18 / 2^10 train step: {ratio["ratio_2^18_over_2^10"]:.3f} '
          f'({verdict} the <= 1.2 target)')
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, 'w') as f:
      json.dump(result, f, indent=2, default=float)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
