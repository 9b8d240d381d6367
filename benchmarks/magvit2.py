r"""MAGVIT-v2 tokenizer speed: encode+decode throughput (clips/s) and one
train step's time and memory, for the tiny CPU config and the paper-sized
17x128x128 config.

  python benchmarks/magvit2.py --json=benchmarks/results/magvit2_cpu.json
  python benchmarks/magvit2.py --configs=paper --batch=8 --steps=5   # GPU

The train step goes through benchmarks/train_step.py (video data swapped for
the built-in moving shapes at the same size); encode+decode is the jitted
`model.apply` (encode, quantize, decode) on random clips with random params.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import results_json
from benchmarks import train_step as train_step_benchmark
from configs.magvit2 import tiny_cpu
from configs.magvit2 import ucf101_17x128
from vqlab import tokenizers

_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'paper'],
                             'Which configs: tiny, paper.')
_BATCH = flags.DEFINE_integer(
    'batch', 0, 'Global batch (0: 8 tiny, 1 '
    'paper on CPU, the config\'s on accelerators).')
# --steps, --json and --workdir are benchmarks/train_step.py's flags.
_STEPS = train_step_benchmark._STEPS  # pylint: disable=protected-access
_JSON = train_step_benchmark._JSON  # pylint: disable=protected-access
_WORKDIR = train_step_benchmark._WORKDIR  # pylint: disable=protected-access

CONFIGS = {'tiny': tiny_cpu.get_config, 'paper': ucf101_17x128.get_config}


def _batch_size(name: str) -> int:
  if _BATCH.value:
    return _BATCH.value
  on_cpu = jax.devices()[0].platform == 'cpu'
  return 8 if name == 'tiny' else (1 if on_cpu else 8)


def encode_decode(config, batch: int, steps: int) -> dict:
  """Clips/s of encode + quantize + decode at the config's clip size."""
  model = tokenizers.build(config.model, dtype=jnp.dtype(config.compute_dtype))
  shape = (batch, config.data.num_frames, config.data.image_size,
           config.data.image_size, config.model.in_channels)
  clips = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), clips)
  forward = jax.jit(lambda v, x: model.apply(v, x)[0])
  t0 = time.perf_counter()
  jax.block_until_ready(forward(variables, clips))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    out = forward(variables, clips)
  jax.block_until_ready(out)
  call_s = (time.perf_counter() - t0) / steps
  tokens = model.apply(variables, clips, method=model.encode)[0].shape
  return {
      'clip_shape': list(shape[1:]),
      'token_shape': list(tokens[1:]),
      'batch': batch,
      'compile_s': compile_s,
      'call_s': call_s,
      'clips_per_s': batch / call_s
  }


def main(argv):
  del argv
  results = {'device': jax.devices()[0].device_kind}
  for name in _CONFIGS.value:
    config = CONFIGS[name]()
    config.unlock()
    batch = _batch_size(name)
    config.train.batch_size = config.eval.batch_size = batch
    config.eval.lpips = config.eval.fid = 'off'
    config.loss.perceptual_weight = 0.0
    if jax.devices()[0].platform == 'cpu':
      config.compute_dtype = 'float32'
    entry = {'encode_decode': encode_decode(config, batch, _STEPS.value)}
    entry['train_step'] = train_step_benchmark.run_benchmark(
        config, os.path.join(_WORKDIR.value, name), _STEPS.value)
    results[name] = entry
    ed, ts = entry['encode_decode'], entry['train_step']
    print(
        f'{name:>5}: clips {ed["clip_shape"]} -> tokens {ed["token_shape"]}'
        f', batch {batch}: encode+decode {ed["clips_per_s"]:.3g} clips/s; '
        f'train step {ts["step_s"]:.3g} s (compile {ts["compile_s"]:.3g} s)'
        f', peak memory {ts["peak_memory_bytes"] / 2**30:.3g} GiB', flush=True)
  if _JSON.value:
    results_json.write(_JSON.value, results)


if __name__ == '__main__':
  app.run(main)
