"""A transformer conditioned on a timestep (adaptive LayerNorm) and on a
sequence (cross-attention): the VQ-Diffusion denoiser's blocks.

Each block:  x += SelfAttn(AdaLN(x, e));  x += CrossAttn(AdaLN(x, e), c);
x += MLP(AdaLN(x, e)),  with AdaLN(x, e) = LN(x) (1 + scale(e)) + shift(e),
scale and shift zero-initialized projections of the timestep embedding e.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn.attention import dot_product_attention
from vqlab.nn.transformer import MlpBlock


def timestep_embedding(t: jax.Array, dim: int,
                       max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embeddings of (integer or real) times t [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class AdaLayerNorm(nn.Module):
  """LN(x) (1 + scale(e)) + shift(e); x [B, N, D], e [B, E]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    modulation = nn.Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros,
                          dtype=self.dtype, name='modulation')(nn.silu(emb))
    scale, shift = jnp.split(modulation[:, None], 2, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32)(x)
    return (h * (1 + scale) + shift).astype(self.dtype)


class ConditionedBlock(nn.Module):
  """One block (module docstring). Attributes as `TransformerBlock`."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x [B, N, D], emb [B, E], context [B, L, C], context_mask bool [B, L]."""
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    attention = lambda name: nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.
        dropout_rate, deterministic=not train, attention_fn=
        dot_product_attention, name=name)
    h = AdaLayerNorm(self.dtype, name='norm_self')(x, emb)
    x = x + drop(attention('self_attention')(h, h))
    if context is not None:
      mask = None if context_mask is None else \
          context_mask[:, None, None, :]
      h = AdaLayerNorm(self.dtype, name='norm_cross')(x, emb)
      x = x + drop(attention('cross_attention')(h, context, mask=mask))
    h = AdaLayerNorm(self.dtype, name='norm_mlp')(x, emb)
    return x + drop(
        MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='mlp')(
            h, train=train))
