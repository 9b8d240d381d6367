"""Random weights drawn from a fixed numpy seed, shared by the golden scripts
(which load them into the torch reference models) and the tests (which redraw
them and convert them). numpy only: the tests must not need torch.

Each tensor has its own generator seeded by (seed, crc32(name)), so the result
does not depend on the order of the names. Scales keep activations O(1)
through deep networks: He-normal conv/linear weights, BatchNorm scales and
running variances near 1, small biases and running means.
"""

import zlib

import numpy as np


def draw_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """One float32 tensor (int64 zeros for `num_batches_tracked`)."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  shape = tuple(int(s) for s in shape)
  if name.endswith('num_batches_tracked'):
    return np.zeros(shape, np.int64)
  if name.endswith('running_var'):
    values = rng.uniform(0.5, 1.5, shape)
  elif name.endswith('running_mean') or name.endswith('bias'):
    values = 0.1 * rng.standard_normal(shape)
  elif len(shape) >= 2:
    fan_in = int(np.prod(shape[1:]))
    values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
  else:  # BatchNorm / affine scales.
    values = rng.uniform(0.5, 1.5, shape)
  return values.astype(np.float32)


def draw_state_dict(names: list[str], shapes: list[tuple[int, ...]],
                    seed: int) -> dict[str, np.ndarray]:
  """{name: tensor} for parallel lists of names and torch-layout shapes."""
  return {n: draw_tensor(n, s, seed) for n, s in zip(names, shapes)}


def pack_shapes(state: dict) -> dict[str, np.ndarray]:
  """Names and shapes of a state dict as arrays an .npz can hold, so a test
  can redraw the weights without torch (see `unpack_shapes`)."""
  names = list(state)
  shapes = [tuple(int(s) for s in state[n].shape) for n in names]
  width = max(len(s) for s in shapes)
  padded = np.full((len(names), width), -1, np.int64)
  for row, shape in enumerate(shapes):
    padded[row, :len(shape)] = shape
  return {'weight_names': np.array(names), 'weight_shapes': padded}


def unpack_shapes(golden) -> tuple[list[str], list[tuple[int, ...]]]:
  names = [str(n) for n in golden['weight_names']]
  shapes = [
      tuple(int(s) for s in row if s >= 0) for row in golden['weight_shapes']
  ]
  return names, shapes
