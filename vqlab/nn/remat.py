"""Rematerialization: recompute a block's activations in the backward pass
instead of keeping them, trading compute for memory.

Policies (what is kept from the forward pass, besides each block's inputs):
  'none': everything (no remat).
  'full': nothing.
  'dots': the outputs of matmuls without a batch dimension (the weight
    matmuls), so the backward pass recomputes only the cheap elementwise work
    and attention.

Whatever the policy, normalizations and activations are recomputed from
their inputs (`RecomputedLayerNorm`, `RecomputedGroupNorm`,
`recomputed_gelu`, `recomputed_swish`): without that the backward pass
keeps their elementwise intermediates (three float32 copies of the input
per LayerNorm or GroupNorm, five more arrays per tanh GELU), which XLA
cannot drop across a scan and does not drop elsewhere. Their backward pass
redoes a few elementwise ops; no matmul or convolution.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax

from vqlab.errors import ConfigError
from vqlab.nn import norms

POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_policy(policy: Any, key: str) -> None:
  """ConfigError naming `key` unless `policy` is a key of POLICIES."""
  if policy not in POLICIES:
    raise ConfigError(key, f'{policy!r}; known: {", ".join(POLICIES)}')


def rematerialized(block: type[nn.Module], policy: str, *,
                   static_argnums: Sequence[int] = (),
                   in_scan: bool = False) -> type[nn.Module]:
  """`block` itself for policy 'none', else `nn.remat(block)` under the policy.

  Args:
    block: a Module class.
    policy: a key of POLICIES.
    static_argnums: arguments of __call__ that are Python values (self is 0).
    in_scan: the block runs inside nn.scan, which already keeps XLA from
      merging the recomputation into the forward pass (prevent_cse off).

  Give the blocks explicit names: flax names an unnamed remat'ed block
  `Checkpoint<Class>_<i>`, which would change the param tree.
  """
  if policy == 'none':
    return block
  return nn.remat(block, policy=POLICIES[policy], prevent_cse=not in_scan,
                  static_argnums=tuple(static_argnums))


# Norms (same params) that keep only their input for the backward pass.
RecomputedLayerNorm = nn.remat(norms.LayerNorm)
RecomputedGroupNorm = nn.remat(norms.GroupNorm)


def recomputed_gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
  """nn.gelu(x) that keeps only x for the backward pass: [...] -> [...]."""
  return jax.checkpoint(functools.partial(nn.gelu, approximate=approximate))(x)


def recomputed_swish(x: jax.Array) -> jax.Array:
  """nn.swish(x) that keeps only x for the backward pass: [...] -> [...]."""
  return jax.checkpoint(nn.swish)(x)
