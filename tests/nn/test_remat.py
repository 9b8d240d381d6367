"""What the backward pass keeps: norms, activations and attention weights
are recomputed (vqlab/nn/remat.py), and the FLOP count of benchmarks/flops.py
tells the recomputation apart."""

import contextlib
import io

import jax
from jax import ad_checkpoint
import jax.numpy as jnp
import pytest

from benchmarks import flops as flops_lib
from vqlab.nn import conditioned_transformer
from vqlab.nn import resnet
from vqlab.nn import transformer


def _saved_residuals(fn, *args) -> list[str]:
  """'dtype[shape]' of each array `fn`'s backward pass keeps."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    ad_checkpoint.print_saved_residuals(fn, *args)
  return [line.split()[0] for line in printed.getvalue().splitlines() if line]


def _kept(module, x, *args, **apply_kwargs) -> list[str]:
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, *args))
  return _saved_residuals(
      lambda p, x: module.apply(p, x, *args, **apply_kwargs).astype(jnp.float32)
      .sum(), params, x)


@pytest.mark.parametrize('block', ['transformer', 'conditioned'])
def test_a_block_keeps_no_attention_weights_and_no_norm_intermediates(block):
  """A block keeps 2 float32 [B, L, D] arrays for its backward pass (its
  input and the residual stream after attention) and 2 [B, L, mlp_dim]
  (fc1's output and GELU's, fc2's input), and no [.., L, L] attention
  weights: LayerNorm, GELU and the weights (XLA's attention path, and the
  one with dropout) are recomputed. Each LayerNorm kept three float32
  copies, each tanh GELU five more arrays, attention its float32 weights
  and a copy, which a scanned stack stores for every layer."""
  x = jnp.ones((2, 8, 16))
  if block == 'transformer':  # With dropout: masked_attention.
    module = transformer.TransformerBlock(num_heads=2, mlp_dim=64,
                                          dropout_rate=0.1, dtype=jnp.bfloat16,
                                          mlp_hidden_dropout=False)
    kept = _kept(module, x, train=True, rngs={'dropout': jax.random.key(1)})
  else:  # XLA's jax.nn.dot_product_attention.
    module = conditioned_transformer.ConditionedBlock(num_heads=2, mlp_dim=64,
                                                      dtype=jnp.bfloat16)
    kept = _kept(module, x, jnp.ones((2, 12)))
  assert kept.count('f32[2,8,16]') == 2, kept
  assert kept.count('bf16[2,8,64]') == 2, kept
  assert not [k for k in kept if k.endswith(',8,8]')], kept


@pytest.mark.parametrize('block', ['2d', '3d'])
def test_a_res_block_keeps_only_conv_and_norm_inputs(block):
  """GroupNorm -> swish -> conv, twice: at most 6 bfloat16 activations kept
  (each norm's input, each swish's input, each conv's input), none in
  float32. Each GroupNorm kept three float32 copies of its input more."""
  if block == '2d':
    module, x = resnet.ResBlock2D(64, dtype=jnp.bfloat16), jnp.ones(
        (2, 8, 8, 64), jnp.bfloat16)
  else:
    module, x = resnet.ResBlock3D(64, dtype=jnp.bfloat16), jnp.ones(
        (2, 3, 8, 8, 64), jnp.bfloat16)
  kept = [k for k in _kept(module, x) if k.endswith(',8,8,64]')]
  assert kept == ['bf16' + k[k.index('['):] for k in kept], kept
  assert len(kept) <= 6, kept


def test_model_flops_leave_out_the_recomputation():
  """A stack under remat_policy 'full' counts its forward twice; without
  the recomputation it counts what the stack without remat does."""
  x = jnp.ones((2, 8, 16))
  counts = {}
  for policy in ('none', 'full', 'dots'):
    module = transformer.Transformer(num_layers=2, num_heads=2, mlp_dim=32,
                                     scan_layers=True, remat_policy=policy)
    params = module.init(jax.random.key(0), x)
    grad = jax.grad(lambda p: module.apply(p, x).sum())
    counts[policy] = (flops_lib.count_flops(grad, params),
                      flops_lib.count_flops(grad, params, recomputation=False))
  plain = counts['none'][0]
  assert counts['full'][0] > counts['dots'][0] > plain
  # The attention weights' q k^T is recomputed under every policy.
  assert counts['none'][1] < plain
  assert counts['full'][1] == counts['dots'][1] == counts['none'][1]
  forward = flops_lib.count_flops(lambda p: module.apply(p, x).sum(), params)
  assert counts['none'][1] == 3 * forward  # Each matmul's backward: 2x.
