r"""FID InceptionV3 throughput, images/s: vqlab's (jit, float32) and
pytorch-fid's `InceptionV3([3])` (torch) on the same machine and batch.

  /work/venv/bin/python benchmarks/inception_throughput.py
  /work/venv-torch/bin/python benchmarks/inception_throughput.py --reference

Both resize the input to 299x299 first (pytorch-fid's resize_input=True), so
the input size mostly changes the resize cost. The two implementations need
different environments (jax vs torch), so each run times one of them and
merges its row into the `--output` JSON (keyed 'vqlab' / 'reference'), then
prints the rows the file holds. Weights are random (no downloads). Timed
after warm-up calls.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import throughput_cli  # pylint: disable=g-import-not-at-top


def run_vqlab(batch: int, image_size: int, steps: int) -> dict:
  """Times vqlab.nn.inception.InceptionV3 under jit on jax's default
  device."""
  # pylint: disable=g-import-not-at-top
  import jax

  from vqlab.nn import inception

  model = inception.InceptionV3()
  params = jax.jit(model.init)(jax.random.key(0), jax.numpy.zeros(
      (1, 75, 75, 3)))
  images = jax.random.uniform(jax.random.key(1),
                              (batch, image_size, image_size, 3), minval=-1.0,
                              maxval=1.0)
  t0 = time.perf_counter()
  compiled = jax.jit(model.apply).lower(params, images).compile()
  compile_s = time.perf_counter() - t0
  call = lambda: jax.block_until_ready(compiled(params, images))
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
  """Times pytorch-fid's InceptionV3([3]) (seeded weights) under
  torch.no_grad on [0, 1] NCHW images."""
  # pylint: disable=g-import-not-at-top
  import torch

  from tests.goldens import make_inception_goldens

  model, _ = make_inception_goldens.build_reference()
  gen = torch.Generator().manual_seed(1)
  images = torch.rand((batch, 3, image_size, image_size), generator=gen)
  return throughput_cli.torch_row(lambda: model(images), steps,
                                  'pytorch-fid 0.3.0 (torch)')


if __name__ == '__main__':
  throughput_cli.main(
      __doc__.split('\n')[0], run_vqlab, run_reference,
      reference_name='pytorch-fid', output_name='inception_throughput.json',
      unit='Images')
