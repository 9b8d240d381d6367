"""Spatial down- and upsampling layers."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Downsample2D(nn.Module):
  """Stride-2 3x3 convolution with taming's asymmetric (0, 1) padding.

  x: [B, H, W, C] -> [B, H/2, W/2, C].
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding='VALID',
                   dtype=self.dtype, name='conv')(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 upsampling followed by a 3x3 convolution.

  x: [B, H, W, C] -> [B, 2H, 2W, C].
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name='conv')(x)
