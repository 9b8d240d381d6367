r"""LPIPS (VGG16) throughput, images/s: vqlab's (jit, float32) and the
reference `lpips.LPIPS(net='vgg')` (torch) on the same machine and batch.

  /work/venv/bin/python benchmarks/lpips_throughput.py
  /work/venv-torch/bin/python benchmarks/lpips_throughput.py --reference

The two implementations need different environments (jax vs torch), so each
run times one of them and merges its row into the `--output` JSON (keyed
'vqlab' / 'reference'), then prints the rows the file holds. Weights are
random (no downloads); an image is one of the pair, i.e. one call on a batch
of B pairs counts B images. Timed after warm-up calls.
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _time_calls(call, steps: int) -> float:
  """Mean seconds per call of `call()` (which blocks until done)."""
  t0 = time.perf_counter()
  for _ in range(steps):
    call()
  return (time.perf_counter() - t0) / steps


def run_vqlab(batch: int, image_size: int, steps: int) -> dict:
  """Times vqlab.losses.perceptual.LPIPS under jit on jax's default device."""
  # pylint: disable=g-import-not-at-top
  import jax
  from vqlab.losses import perceptual

  small = jax.numpy.zeros((1, 16, 16, 3))
  params = jax.jit(perceptual.LPIPS().init)(jax.random.key(0), small, small)
  shape = (batch, image_size, image_size, 3)
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.uniform(kx, shape, minval=-1.0, maxval=1.0)
  y = jax.random.uniform(ky, shape, minval=-1.0, maxval=1.0)
  fn = jax.jit(perceptual.lpips_distance)
  t0 = time.perf_counter()
  compiled = fn.lower(params['params'], x, y).compile()
  compile_s = time.perf_counter() - t0
  call = lambda: compiled(params['params'], x, y).block_until_ready()
  for _ in range(2):  # Warm-up.
    call()
  call_s = _time_calls(call, steps)
  return {'implementation': 'vqlab (jax jit)', 'jax': jax.__version__,
          'device': jax.devices()[0].device_kind, 'compile_s': compile_s,
          'call_s': call_s}


def run_reference(batch: int, image_size: int, steps: int) -> dict:
  """Times lpips.LPIPS(net='vgg', pnet_rand=True) under torch.no_grad."""
  # pylint: disable=g-import-not-at-top,unused-import
  from tests.goldens import torch_env
  import lpips
  import torch

  model = lpips.LPIPS(net='vgg', pnet_rand=True, verbose=False)
  gen = torch.Generator().manual_seed(1)
  shape = (batch, 3, image_size, image_size)
  x = torch.rand(shape, generator=gen) * 2 - 1
  y = torch.rand(shape, generator=gen) * 2 - 1

  def call():
    with torch.no_grad():
      model(x, y)

  for _ in range(2):  # Warm-up.
    call()
  call_s = _time_calls(call, steps)
  return {'implementation': 'lpips 0.1.4 (torch eager)',
          'torch': torch.__version__,
          'device': f'cpu ({torch.get_num_threads()} threads)',
          'call_s': call_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', action='store_true',
                      help='Time the torch lpips package instead of vqlab.')
  parser.add_argument('--batch', type=int, default=8, help='Pairs per call.')
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--steps', type=int, default=5, help='Timed calls.')
  parser.add_argument('--output', default=os.path.join(
      ROOT, 'benchmarks', 'results', 'lpips_throughput.json'))
  args = parser.parse_args()
  run = run_reference if args.reference else run_vqlab
  result = run(args.batch, args.image_size, args.steps)
  result.update(batch=args.batch, image_size=args.image_size,
                steps=args.steps, host=platform.processor() or platform.node(),
                cpu_count=os.cpu_count(),
                images_per_s=args.batch / result['call_s'])
  rows = {}
  if os.path.exists(args.output):
    with open(args.output) as f:
      rows = json.load(f)
  rows['reference' if args.reference else 'vqlab'] = result
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(rows, f, indent=2)
  print(f'{"row":<10} {"implementation":<26} {"batch":>5} {"size":>5} '
        f'{"s/call":>8} {"images/s":>9}')
  for key, row in rows.items():
    print(f'{key:<10} {row["implementation"]:<26} {row["batch"]:>5} '
          f'{row["image_size"]:>5} {row["call_s"]:>8.3f} '
          f'{row["images_per_s"]:>9.2f}')


if __name__ == '__main__':
  main()
