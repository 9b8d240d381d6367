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

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import throughput_cli  # pylint: disable=g-import-not-at-top


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
  call_s = throughput_cli.time_calls(call, steps)
  return {
      'implementation': 'vqlab (jax jit)',
      'jax': jax.__version__,
      'device': jax.devices()[0].device_kind,
      'compile_s': compile_s,
      'call_s': call_s
  }


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
  return throughput_cli.torch_row(lambda: model(x, y), steps,
                                  'lpips 0.1.4 (torch eager)')


if __name__ == '__main__':
  throughput_cli.main(
      __doc__.split('\n')[0], run_vqlab, run_reference,
      reference_name='the lpips package', output_name='lpips_throughput.json',
      unit='Pairs')
