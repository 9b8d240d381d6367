"""A transformer conditioned on a timestep (adaptive LayerNorm), on a
sequence (cross-attention) or on a class (adaptive LayerNorm): the
VQ-Diffusion denoiser's blocks.

Each block:  x += SelfAttn(AdaLN(x, e));  x += CrossAttn(AdaLN(x, e), c);
x += MLP(AdaLN(x, e')),  with AdaLN(x, e) = LN(x) (1 + scale(e)) + shift(e),
scale and shift zero-initialized projections of an embedding: e is the
timestep's; without a class e' = e, with class labels y (VQ-Diffusion's
class-conditional 'selfcondition' blocks) e' = E_l[y], the block's own
class embedding table E_l.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear
from vqlab.nn import norms
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
    modulation = linear.Dense(2 * x.shape[-1],
                              kernel_init=nn.initializers.zeros,
                              dtype=self.dtype, name='modulation')(nn.silu(emb))
    scale, shift = jnp.split(modulation[:, None], 2, axis=-1)
    # Recomputed in the backward pass (vqlab.nn.remat): else the float32
    # normalized and modulated [B, N, D] arrays are stored.
    return _RecomputedModulation(self.dtype)(x, scale, shift)


class _Modulated(nn.Module):
  """LN(x) (1 + scale) + shift, LN without params: x [B, N, D], scale and
  shift [B, 1, D] -> [B, N, D]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, scale: jax.Array,
               shift: jax.Array) -> jax.Array:
    h = norms.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32)(x)
    return (h * (1 + scale) + shift).astype(self.dtype)


_RecomputedModulation = nn.remat(_Modulated)


class ConditionedBlock(nn.Module):
  """One block (module docstring). Attributes as `TransformerBlock`, and
  num_classes: rows of the block's class embedding table (labels in
  [0, num_classes)); 0 without one."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  num_classes: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               labels: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x [B, N, D] -> [B, N, D]; emb [B, E] (the timestep's), context
    [B, L, C] and context_mask bool [B, L] (cross-attention), labels int [B]
    (the MLP's AdaLN on the block's class embedding instead of emb)."""
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    attention = lambda name: linear.MultiHeadDotProductAttention(
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
    mlp_emb = emb
    if labels is not None:
      if not self.num_classes:
        raise ValueError('ConditionedBlock: labels need num_classes > 0')
      mlp_emb = nn.Embed(self.num_classes, x.shape[-1],
                         embedding_init=nn.initializers.normal(0.02),
                         name='class_embed')(labels)
    h = AdaLayerNorm(self.dtype, name='norm_mlp')(x, mlp_emb)
    return x + drop(
        MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='mlp')(
            h, train=train))
