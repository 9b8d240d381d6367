"""Attention layers and the attention function of the transformers.

`dot_product_attention` is the `attention_fn` every transformer block gives
flax's `MultiHeadDotProductAttention`. It runs `jax.nn.dot_product_attention`:
logits and softmax in float32 whatever the compute dtype, and on a GPU
cuDNN's flash attention where that applies (bfloat16 or float16, head dim a
multiple of 8 up to cuDNN's limit, no mask other than causal), which never
materializes the [B, heads, L, L] weights. Everywhere else, and on TPU, the
XLA path. Dropout on the attention weights (training with dropout > 0)
needs the weights: `masked_attention`, logits and softmax in float32 too
(flax's own path rounds the logits to the compute dtype). On both XLA paths
the weights are recomputed in the backward pass rather than stored.

`VQLAB_ATTENTION=xla` in the environment keeps every call on XLA's path
(read when a step is traced): to time flash attention against it, or to
step around a cuDNN that refuses a shape only when the program compiles.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlab.nn import linear
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
    q, k, v = (linear.Dense(channels, dtype=self.dtype,
                            name=n)(h).reshape(batch, height * width, channels)
               for n in ('query', 'key', 'value'))
    h = dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])
    h = h.reshape(batch, height, width, channels)
    return x + linear.Dense(channels, dtype=self.dtype, name='out')(h)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     allowed: jax.Array | None, *, precision: Any = None,
                     dtype: Any = jnp.float32,
                     dropout_rng: jax.Array | None = None,
                     dropout_rate: float = 0.0,
                     broadcast_dropout: bool = True) -> jax.Array:
  """Scaled dot-product attention over heads, logits and softmax in float32.

  For ported encoders whose projections keep their published names (MiniLM,
  CLIP), and for attention with dropout on its weights. q, k, v:
  [B, L, H, D]; allowed: bool broadcastable to [B, H, Lq, Lk] (query may see
  key), or None; dropout_rate > 0: weights dropped (kept ones scaled by
  1 / (1 - rate)) as flax drops them, one [Lq, Lk] draw for every example
  and head with `broadcast_dropout`. Returns [B, L, H, D] in `dtype`.

  The weights are recomputed in the backward pass (from q, k and the
  dropout key), as flash attention does, not stored: [B, H, Lq, Lk] float32
  per layer was most of a transformer's stored activations (MaskGIT's 257
  tokens: 1 GB per layer at batch 256). The backward pass redoes q k^T.
  """

  def attend(q, k, v, allowed, dropout_rng):
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=precision,
                        preferred_element_type=jnp.float32)
    scores = scores * np.float32(q.shape[-1]**-0.5)
    if allowed is not None:
      scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout_rate > 0.0:
      shape = (1, 1) + probs.shape[2:] if broadcast_dropout else probs.shape
      keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
      probs = probs * (keep / np.float32(1.0 - dropout_rate))
    return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(dtype), v.astype(dtype),
                      precision=precision)

  return jax.checkpoint(attend)(q, k, v, allowed, dropout_rng)


# cuDNN's flash attention: half-precision inputs, these head dims.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_HEAD_DIM_MULTIPLE = 8
_CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; jax checks that itself.
IMPLEMENTATION_VARIABLE = 'VQLAB_ATTENTION'  # 'auto' (default) or 'xla'.


def cudnn_applies(query: jax.Array, key: jax.Array, mask: jax.Array | None,
                  platform: str) -> bool:
  """Whether `dot_product_attention` asks for cuDNN's flash attention:
  query [B, Lq, H, D] and key [B, Lk, H, D] in half precision on a GPU
  (`platform`, e.g. jax.default_backend()), D a multiple of 8 and at most
  128, Lq and Lk even, and no mask array (causal masking is a flag cuDNN
  takes). jax refuses odd lengths only when the attention is differentiated,
  and inside a scan its error comes after the fallback below could catch it
  (MaskGIT's 257 tokens): odd lengths never ask."""
  head_dim = query.shape[-1]
  return (platform == 'gpu' and mask is None and
          query.dtype in _CUDNN_DTYPES and key.dtype == query.dtype and
          head_dim % _CUDNN_HEAD_DIM_MULTIPLE == 0 and
          head_dim <= _CUDNN_MAX_HEAD_DIM and query.shape[1] % 2 == 0 and
          key.shape[1] % 2 == 0)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, *,
                          is_causal: bool = False,
                          dropout_rng: jax.Array | None = None,
                          dropout_rate: float = 0.0,
                          broadcast_dropout: bool = True,
                          deterministic: bool = True, dtype: Any = None,
                          precision: Any = None) -> jax.Array:
  """softmax(q k^T / sqrt(D), masked) v over heads (module docstring).

  flax's `attention_fn` signature. query [B, Lq, H, D], key and value
  [B, Lk, H, D]; mask: broadcastable to [B, H, Lq, Lk], nonzero where the
  query may see the key; is_causal: query i sees only keys j <= i (with
  Lq == Lk). Returns [B, Lq, H, D] in the inputs' promoted dtype.
  """
  if mask is not None:
    mask = jnp.asarray(mask, bool)
  query, key, value = nn.dtypes.promote_dtype(query, key, value, dtype=dtype)
  dropout = dropout_rate > 0.0 and not deterministic
  if dropout or precision is not None:
    if is_causal:
      mask = nn.combine_masks(mask,
                              nn.make_causal_mask(query[..., 0, 0], dtype=bool),
                              dtype=bool)
    return masked_attention(query, key, value, mask, precision=precision,
                            dtype=query.dtype, dropout_rng=dropout_rng,
                            dropout_rate=dropout_rate if dropout else 0.0,
                            broadcast_dropout=broadcast_dropout)
  if (os.environ.get(IMPLEMENTATION_VARIABLE, 'auto') != 'xla' and
      cudnn_applies(query, key, mask, jax.default_backend())):
    try:
      return jax.nn.dot_product_attention(query, key, value,
                                          is_causal=is_causal,
                                          implementation='cudnn')
    except (NotImplementedError, RuntimeError, ValueError):
      pass  # No flash attention for this GPU, cuDNN or shape: XLA's path.
  # XLA's path (TPUs, CPUs, shapes cuDNN refuses), its weights recomputed in
  # the backward pass as masked_attention's are.
  return jax.checkpoint(lambda q, k, v, mask: jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=is_causal))(query, key, value, mask)
