"""Attention layers."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
    q, k, v = (nn.Dense(channels, dtype=self.dtype,
                        name=n)(h).reshape(batch, height * width, channels)
               for n in ('query', 'key', 'value'))
    h = nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])
    h = h.reshape(batch, height, width, channels)
    return x + nn.Dense(channels, dtype=self.dtype, name='out')(h)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     allowed: jax.Array, *, precision: Any = None,
                     dtype: Any = jnp.float32) -> jax.Array:
  """Scaled dot-product attention over heads, softmax in float32.

  For ported encoders whose projections keep their published names (MiniLM,
  CLIP). q, k, v: [B, L, H, D]; allowed: bool broadcastable to [B, H, Lq, Lk]
  (query may see key). Returns [B, L, H, D].
  """
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=precision)
  scores = scores.astype(jnp.float32) * np.float32(q.shape[-1]**-0.5)
  scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v, precision=precision)
