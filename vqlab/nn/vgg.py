"""The convolutional trunk of VGG16/19 (torchvision's `features`), returning
named ReLU outputs for perceptual losses."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Convolutions per block; every block ends in a 2x2 max pool.
BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)
# The layers LPIPS (VGG16) and the Regularized-VQ contrastive loss (VGG19) use.
DEFAULT_OUTPUTS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')


def conv_names(depth: int) -> list[str]:
  """The convolutions in order: ['conv1_1', 'conv1_2', 'conv2_1', ...]."""
  if depth not in BLOCKS:
    raise ValueError(f'VGG depth must be one of {sorted(BLOCKS)}, got {depth}')
  return [
      f'conv{b + 1}_{k + 1}' for b, n in enumerate(BLOCKS[depth])
      for k in range(n)
  ]


def torchvision_indices(depth: int) -> dict[str, int]:
  """{conv name: its index in torchvision's `features` Sequential}; each
  conv is followed by a ReLU and each block by a max pool."""
  conv_names(depth)  # Validates the depth.
  indices, i = {}, 0
  for b, n in enumerate(BLOCKS[depth]):
    for k in range(n):
      indices[f'conv{b + 1}_{k + 1}'] = i
      i += 2
    i += 1
  return indices


class VGG(nn.Module):
  """VGG trunk: 3x3 convs (pad 1, bias) + ReLU, 2x2 max pools between blocks.

  Params are named like the layers ('conv3_2': kernel [3, 3, I, O], bias
  [O]); only the convolutions up to the last requested output exist.

  Attributes:
    depth: 16 or 19.
    outputs: names of the ReLU outputs to return ('relu{block}_{conv}').
    dtype: compute dtype (params stay float32).
    precision: of the convolutions (None: the backend's default, which may
      be TF32 or bf16 passes on GPUs and TPUs).
  """
  depth: int = 16
  outputs: tuple[str, ...] = DEFAULT_OUTPUTS
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """x: [B, H, W, 3] -> {name: [B, H / 2^(block-1), W / 2^(block-1), C]}."""
    wanted = set(self.outputs)
    unknown = wanted - {
        n.replace('conv', 'relu') for n in conv_names(self.depth)
    }
    if unknown:
      raise ValueError(f'VGG{self.depth} has no layers {sorted(unknown)}')
    found = {}
    h = x.astype(self.dtype)
    for b, n in enumerate(BLOCKS[self.depth]):
      if b:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      for k in range(n):
        name = f'conv{b + 1}_{k + 1}'
        h = nn.Conv(CHANNELS[b], (3, 3), padding=((1, 1), (1, 1)),
                    dtype=self.dtype, precision=self.precision, name=name)(h)
        h = nn.relu(h)
        relu = name.replace('conv', 'relu')
        if relu in wanted:
          found[relu] = h
          if len(found) == len(wanted):
            return found
    return found
