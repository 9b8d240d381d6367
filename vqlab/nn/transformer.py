"""Transformer blocks shared by the generators (GPT, MaskGIT, VQ-Diffusion)
and the ViT pieces of TiTok: pre-LayerNorm (ViT, GPT-2), or post-LayerNorm
(`post_norm`: BERT's, which MaskGIT's and MAGVIT's transformers are).

Attention is flax's `MultiHeadDotProductAttention` over
`vqlab.nn.attention.dot_product_attention` (cuDNN flash attention on a GPU
where it applies, float32 softmax); with `decode=True` it keeps a key/value
cache in the 'cache' collection and attends one new
position per call (autoregressive sampling), so the same parameters serve
training and cached sampling.

A stack of identical blocks runs either unrolled (params `block_0`,
`block_1`, ...) or as one `nn.scan` over layers (params `blocks`, each leaf
with a leading [num_layers] axis): XLA then compiles one block instead of
num_layers copies, which is what keeps the paper-size configs' compile time
low. Both run the same computation on the same numbers
(`vqlab.nn.stack.stack_layers` / `unstack` convert between the two
layouts); with dropout they draw other masks (vqlab.nn.stack).
`remat_policy` recomputes each block's activations in the backward pass
instead of storing them (vqlab/nn/remat.py).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import attention
from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn import remat
from vqlab.nn import stack

SCANNED_NAME = stack.LAYERS
Initializer = Any  # jax.nn.initializers.Initializer: (key, shape, dtype).
# flax's for Dense and attention kernels (LeCun normal).
DEFAULT_KERNEL_INIT = nn.linear.default_kernel_init


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(width): [..., D] -> [..., D].

  `exact_gelu` uses the erf GELU (PyTorch's nn.GELU) instead of the tanh
  approximation; `hidden_dropout=False` leaves out the dropout on the hidden
  units (BERT's MLP, MaskGIT's and MAGVIT's: their one dropout is after it);
  `kernel_init` draws the Dense kernels (biases start at 0).
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  exact_gelu: bool = False
  hidden_dropout: bool = True
  kernel_init: Initializer = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x [..., D] -> [..., D]; `train` turns the hidden dropout on."""
    dense = functools.partial(linear.Dense, dtype=self.dtype,
                              kernel_init=self.kernel_init)
    h = remat.recomputed_gelu(
        dense(self.mlp_dim, name='fc1')(x), approximate=not self.exact_gelu)
    if self.hidden_dropout:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return dense(x.shape[-1], name='fc2')(h)


class TransformerBlock(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x)); with `post_norm` (BERT's),
  LN(x + Attn(x)), then LN(x + MLP(x)).

  Attributes:
    num_heads: attention heads (width must be divisible by it).
    mlp_dim: hidden width of the MLP.
    dropout_rate: dropout on attention weights and after each residual branch.
    decode: cached one-position-per-call attention (see module docstring).
    dtype: compute dtype (LayerNorm statistics in float32).
    layer_norm_epsilon: LayerNorm epsilon (PyTorch ports: 1e-5).
    exact_gelu: erf GELU in the MLP (PyTorch ports).
    causal: position i attends to positions <= i only (outside `decode`,
      where the cache does it), as the flag cuDNN's flash attention takes
      rather than a mask array.
    mlp_hidden_dropout: dropout on the MLP's hidden units too (ViT's), not
      only after the MLP (BERT's).
    post_norm: LayerNorm after each residual sum instead of before each
      branch (BERT's post-LN block); `norm1` follows the attention's sum,
      `norm2` the MLP's.
    kernel_init: draws the attention's and the MLP's kernels (biases start
      at 0); flax's LeCun normal by default.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32
  layer_norm_epsilon: float = 1e-6
  exact_gelu: bool = False
  causal: bool = False
  mlp_hidden_dropout: bool = True
  post_norm: bool = False
  kernel_init: Initializer = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x: [B, L, D]; mask: broadcastable to [B, heads, L, L_kv], True where
    attention is allowed (None: all). Returns [B, L, D]."""
    norm1, norm2 = (remat.RecomputedLayerNorm(self.layer_norm_epsilon,
                                              dtype=self.dtype, name=name)
                    for name in ('norm1', 'norm2'))
    attention_fn = functools.partial(attention.dot_product_attention,
                                     is_causal=self.causal and not self.decode)
    h = x if self.post_norm else norm1(x)
    h = linear.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate, decode=self.decode,
        deterministic=not train, attention_fn=attention_fn,
        kernel_init=self.kernel_init, name='attention')(h, h, mask=mask)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    if self.post_norm:
      x = norm1(x)
    h = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.exact_gelu,
                 self.mlp_hidden_dropout, self.kernel_init,
                 name='mlp')(x if self.post_norm else norm2(x), train=train)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return norm2(x) if self.post_norm else x


class Transformer(nn.Module):
  """A stack of TransformerBlocks and a final LayerNorm (none after post-LN
  blocks, as BERT): [B, L, D] -> [B, L, D].

  Attributes:
    num_layers, num_heads, mlp_dim, dropout_rate, decode, dtype,
    layer_norm_epsilon, exact_gelu, causal, mlp_hidden_dropout, post_norm,
    kernel_init: as in TransformerBlock.
    scan_layers: one scanned `blocks` instead of `block_<i>` (module
      docstring).
    remat_policy: a key of vqlab.nn.remat.POLICIES.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32
  layer_norm_epsilon: float = 1e-6
  exact_gelu: bool = False
  causal: bool = False
  mlp_hidden_dropout: bool = True
  post_norm: bool = False
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  scan_layers: bool = False
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    fields = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  dropout_rate=self.dropout_rate, decode=self.decode,
                  dtype=self.dtype, layer_norm_epsilon=self.layer_norm_epsilon,
                  exact_gelu=self.exact_gelu, causal=self.causal,
                  mlp_hidden_dropout=self.mlp_hidden_dropout,
                  post_norm=self.post_norm, kernel_init=self.kernel_init)
    x = apply_layers(TransformerBlock, fields, self.num_layers, x, mask, train,
                     scan=self.scan_layers, remat_policy=self.remat_policy)
    if self.post_norm:
      return x
    return norms.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype,
                           name='final_norm')(x)


def causal_mask(length: int) -> jax.Array:
  """[1, 1, L, L] bool, True where position i may attend to j <= i."""
  return nn.make_causal_mask(jnp.zeros((1, length), jnp.int32))


def add_stack_config(config: Any) -> None:
  """Adds the layer-stack keys to a model's default config (ConfigDict)."""
  # True: one nn.scan over the blocks (XLA compiles one block; params
  # `blocks` with a leading layer axis); False: `block_<i>` (as published).
  config.scan_layers = False
  # Recompute each block's activations in the backward pass: 'none', 'full'
  # (keep only block inputs) or 'dots' (also keep weight matmul outputs).
  config.remat_policy = 'none'


def stack_options(config: Any, prefix: str) -> dict[str, Any]:
  """{scan_layers, remat_policy} of a model config, for the module's fields;
  ConfigError naming `<prefix>.remat_policy` when it is unknown."""
  remat.check_policy(config.remat_policy, f'{prefix}.remat_policy')
  return dict(scan_layers=bool(config.scan_layers),
              remat_policy=config.remat_policy)


def apply_layers(block: type[nn.Module], fields: dict[str, Any],
                 num_layers: int, x: jax.Array, *args: Any, scan: bool,
                 remat_policy: str) -> jax.Array:
  """A layer stack (vqlab.nn.stack.apply_blocks) named `block_<i>`, or
  `blocks` when scanned; the last of *args is the static `train` flag."""
  return stack.apply_blocks(block, fields, num_layers, x, *args, scan=scan,
                            remat_policy=remat_policy,
                            static_argnums=(len(args) + 1,),
                            name='block_{}'.format, scanned_name=SCANNED_NAME)
