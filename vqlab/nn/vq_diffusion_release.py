"""The blocks of the released VQ-Diffusion's class-conditional network
(microsoft/VQ-Diffusion, Condition2ImageTransformer with attn_type
'selfcondition', timestep_type and class_type 'adalayernorm', mlp_type
'conv_mlp', block_activate GELU2: its ImageNet model), written for vqlab.

Each block:  x += SelfAttn(AdaLN(x, T_l[t - 1]));  x += ConvMLP(AdaLN(x,
C_l[y]))  with AdaLN(x, e) = LN(x) (1 + scale) + shift, [scale, shift] =
Linear(SiLU(e)), LN without params (epsilon 1e-5); T_l and C_l are the
block's own learned tables of timestep and class embeddings (an id past a
table's rows reads the mean of its rows: the release's null class when its
class table has no row for it), the MLP two 3x3 convolutions over the token
grid with GELU2 (x sigmoid(1.702 x)) between.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn.attention import dot_product_attention

LAYER_NORM_EPSILON = 1e-5  # torch's, the release's.
LOG_PROB_FLOOR = -70.0  # The release clamps log p(x_0 | x_t) to [-70, 0].
_INIT = nn.initializers.normal(0.02)  # The release's Linear, Embedding init.


def gelu2(x: jax.Array) -> jax.Array:
  """x sigmoid(1.702 x), elementwise (the release's GELU2)."""
  return x * jax.nn.sigmoid(1.702 * x)


def grid_positions(row_table: jax.Array, col_table: jax.Array,
                   num_tokens: int) -> jax.Array:
  """Positions [N, D] of N flat tokens from tables row [R, D], col [C, D]:
  token n gets row[n // C] + col[n % C], as the release's
  DalleMaskImageEmbedding takes the first N of its R x C grid (a 16 x 16
  grid over 32 x 32 tables reads rows 0-7, all 32 columns)."""
  index = jnp.arange(num_tokens)
  cols = col_table.shape[0]
  return row_table[index // cols] + col_table[index % cols]


class TableAdaLayerNorm(nn.Module):
  """LN(x) (1 + scale) + shift from row ids of a learned table of
  `num_rows` embeddings (ids >= num_rows: the mean of the rows)."""
  num_rows: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, ids: jax.Array) -> jax.Array:
    """x [B, N, D], ids int [B] -> [B, N, D]."""
    width = x.shape[-1]
    table = self.param('embedding', _INIT, (self.num_rows, width))
    rows = jnp.take(table, jnp.minimum(ids, self.num_rows - 1), axis=0)
    emb = jnp.where((ids >= self.num_rows)[:, None], table.mean(0), rows)
    modulation = linear.Dense(2 * width, kernel_init=_INIT, dtype=self.dtype,
                              name='modulation')(nn.silu(emb))
    scale, shift = jnp.split(modulation[:, None], 2, axis=-1)
    h = norms.LayerNorm(LAYER_NORM_EPSILON, use_scale=False, use_bias=False,
                        dtype=jnp.float32)(x)
    return (h * (1 + scale) + shift).astype(self.dtype)


class ConvMlp(nn.Module):
  """3x3 conv to mlp_dim, GELU2, 3x3 conv back, over the token grid."""
  mlp_dim: int
  grid: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, N, D] (N = grid rows x cols, row-major) -> [B, N, D]."""
    batch, _, width = x.shape
    h = x.reshape(batch, *self.grid, width)
    h = linear.Conv(self.mlp_dim, (3, 3), padding=1, dtype=self.dtype,
                    name='conv1')(h)
    h = linear.Conv(width, (3, 3), padding=1, dtype=self.dtype,
                    name='conv2')(gelu2(h))
    return h.reshape(x.shape)


class ReleaseBlock(nn.Module):
  """One block (module docstring).

  Attributes:
    num_heads, mlp_dim, dropout_rate, dtype: as `TransformerBlock`.
    num_timesteps: rows of the timestep table (T).
    class_rows: rows of the class table.
    grid: the token grid (rows, cols) the convolutions run over.
  """
  num_heads: int
  mlp_dim: int
  num_timesteps: int
  class_rows: int
  grid: Sequence[int]
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array,
               train: bool = False) -> jax.Array:
    """x [B, N, D] -> [B, N, D]; t int [B] in [1, T]; labels int [B]."""
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    h = TableAdaLayerNorm(self.num_timesteps, self.dtype,
                          name='norm_time')(x, t - 1)
    attention = linear.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate, deterministic=not train,
        kernel_init=_INIT, attention_fn=dot_product_attention,
        name='self_attention')
    x = x + drop(attention(h, h))
    h = TableAdaLayerNorm(self.class_rows, self.dtype,
                          name='norm_class')(x, labels)
    return x + drop(
        ConvMlp(self.mlp_dim, tuple(self.grid), self.dtype, name='mlp')(h))
