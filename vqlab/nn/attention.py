"""Attention layers."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn.resnet import group_norm


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over all positions of a feature map, residual.

  Attributes:
    num_groups: GroupNorm groups of the pre-norm.
    dtype: compute dtype.
  """
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> [B, H, W, C]."""
    batch, height, width, channels = x.shape
    h = group_norm(self.num_groups, self.dtype, 'norm')(x)
    q, k, v = (nn.Dense(channels, dtype=self.dtype, name=n)(h).reshape(
        batch, height * width, channels) for n in ('query', 'key', 'value'))
    h = nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])
    h = h.reshape(batch, height, width, channels)
    return x + nn.Dense(channels, dtype=self.dtype, name='out')(h)
