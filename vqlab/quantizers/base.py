"""The one output type every quantizer returns, and metrics shared by all."""

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class QuantizerOutput:
  """What a quantizer returns for latents `z: [..., d]`.

  Attributes:
    quantized: [..., d], straight-through: forward value is the code, gradient
      w.r.t. z is the identity.
    indices: int32 [...] (or [..., n_factors] for factorized codes).
    loss: scalar, the quantizer's own loss terms weighted by its config.
    metrics: dict of scalars; at least `usage` (fraction of codes used in the
      batch) and `perplexity` (exp of the entropy of the batch code histogram).
    extras: dict of arrays some losses need (e.g. per-position weights).
  """
  quantized: jax.Array
  indices: jax.Array
  loss: jax.Array
  metrics: dict[str, jax.Array]
  extras: dict[str, Any] = flax.struct.field(default_factory=dict)


def code_histogram(indices: jax.Array, codebook_size: int) -> jax.Array:
  """Counts of each code in `indices` (any shape): float32 [codebook_size].

  A scatter-add, so memory is O(codebook_size) even for 2^18 codes. Under jit
  with a sharded batch the sum is over the global batch.
  """
  flat = indices.reshape(-1)
  return jnp.zeros((codebook_size,), jnp.float32).at[flat].add(1.0)


def usage_and_perplexity(counts: jax.Array) -> dict[str, jax.Array]:
  """Codebook metrics from a histogram `counts: [K]`.

  Returns:
    usage: fraction of the K codes with a nonzero count.
    perplexity: exp(H(p)) with p = counts / sum(counts), in [1, K].
  """
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(
      jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {'usage': jnp.mean(counts > 0), 'perplexity': jnp.exp(entropy)}


def straight_through(z: jax.Array, codes: jax.Array) -> jax.Array:
  """Forward value `codes`, gradient identity w.r.t. `z`."""
  return z + jax.lax.stop_gradient(codes - z)


def check_latents(z: jax.Array, dim: int, who: str) -> None:
  """Rejects latents that are not floating `[..., dim]` with a clear error."""
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f'{who}: latents must be floating point, got {z.dtype}')
  if z.ndim < 2 or z.shape[-1] != dim:
    raise ValueError(
        f'{who}: latents must have shape [..., {dim}], got {tuple(z.shape)}')


def check_indices(indices: Any, codebook_size: int, who: str) -> None:
  """Rejects non-integer indices, and out-of-range ones when they are concrete."""
  if not jnp.issubdtype(jnp.asarray(indices).dtype, jnp.integer):
    raise TypeError(f'{who}: indices must be integers, got '
                    f'{jnp.asarray(indices).dtype}')
  if isinstance(indices, jax.core.Tracer):
    return  # Values unknown under tracing; checked when called eagerly.
  lo, hi = int(jnp.min(indices)), int(jnp.max(indices))
  if lo < 0 or hi >= codebook_size:
    raise ValueError(f'{who}: token id out of range [0, {codebook_size}): '
                     f'min {lo}, max {hi}')
