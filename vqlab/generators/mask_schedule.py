"""MaskGIT's mask schedule gamma and the random masks it trains on.

gamma maps a ratio r in [0, 1] to the fraction of tokens that stay masked:
gamma(0) = 1 (all masked), gamma(1) = 0 (none). Training masks
ceil(gamma(r) N) tokens for r ~ U(0, 1); decoding step s of S keeps
floor(gamma((s+1)/S) N) tokens masked (before clamping; see maskgit.py),
counted on the host in float64 since S and N are static.
"""

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ('cosine', 'arccos', 'linear')


def schedule(ratio, total_unknown=1, method: str = 'cosine') -> jax.Array:
  """gamma(ratio) * total_unknown: how many tokens stay masked (a float).

  Args:
    ratio: float array, any shape, in [0, 1].
    total_unknown: number of tokens N (scalar or broadcastable); 1 gives the
      mask ratio itself. Decoding floors the result, training ceils it.
    method: 'cosine' gamma = cos(pi r / 2) (MaskGIT), 'arccos'
      gamma = arccos(r) / (pi / 2) (TiTok), 'linear' gamma = 1 - r.

  Returns:
    float32 array of ratio's shape (broadcast with total_unknown).
  """
  r = jnp.clip(jnp.asarray(ratio, jnp.float32), 0.0, 1.0)
  # cos(pi / 2) is -4e-8 in float32: clip so that floor/ceil stay in [0, N].
  return jnp.clip(_gamma(r, method, jnp), 0.0, 1.0) * total_unknown


def _gamma(r, method: str, xp):
  """gamma(r) with the array module xp (numpy on the host, jax.numpy)."""
  if method == 'cosine':
    return xp.cos(xp.pi * r / 2)
  if method == 'arccos':
    return xp.arccos(r) / (xp.pi / 2)
  if method == 'linear':
    return 1.0 - r
  raise ValueError(f'unknown mask schedule {method!r}; known: {METHODS}')


def decode_mask_counts(num_tokens: int, num_steps: int,
                       method: str = 'cosine') -> np.ndarray:
  """floor(gamma((s+1)/S) N) for decoding steps s = 0..S-1: int32 [S].

  Exact where float32 is not (N = 256, S = 12, s = 7: gamma = cos(pi/3) = 1/2
  and float32 gives 127.99999 -> 127): computed in float64, and a product
  within 1e-9 of an integer is that integer (float64 cos and arccos are off by
  an ulp at the rational points where gamma N is an integer). Clamping to the
  number still unknown happens per example in the decoder.
  """
  if num_steps < 1:
    raise ValueError(f'need num_steps >= 1, got {num_steps}')
  ratio = np.arange(1, num_steps + 1, dtype=np.float64) / num_steps
  kept = np.clip(_gamma(ratio, method, np), 0.0, 1.0) * num_tokens
  return np.floor(kept + 1e-9).astype(np.int32)


def decode_mask_count_table(num_tokens: int, num_steps: int,
                            method: str = 'cosine') -> np.ndarray:
  """int32 [N + 1, S]: row n is `decode_mask_counts(n, S)`, the schedule of
  a decode that starts with n unknown tokens (the others given)."""
  return np.stack(
      [decode_mask_counts(n, num_steps, method) for n in range(num_tokens + 1)])


# How a training mask's count gamma(r) N becomes whole: MaskGIT's ceil, or
# 'round' (half to even; TiTok's release).
ROUNDINGS = ('ceil', 'round')


def num_masked_for_training(ratio: jax.Array, num_tokens,
                            method: str = 'cosine',
                            rounding: str = 'ceil') -> jax.Array:
  """ceil (or round) of gamma(ratio) N, clamped to [min(1, N), N]: int32 of
  ratio's shape.

  num_tokens: N, an int or an int array broadcastable with ratio (the
  maskable tokens of each example). rounding: one of ROUNDINGS.
  """
  if rounding not in ROUNDINGS:
    raise ValueError(f'unknown rounding {rounding!r}; known: {ROUNDINGS}')
  whole = jnp.ceil if rounding == 'ceil' else jnp.round
  count = whole(schedule(ratio, num_tokens, method)).astype(jnp.int32)
  return jnp.clip(count, jnp.minimum(1, num_tokens), num_tokens)


def random_mask(rng: jax.Array, batch_size: int, num_tokens: int,
                method: str = 'cosine', maskable: jax.Array | None = None,
                rounding: str = 'ceil') -> jax.Array:
  """The training mask: bool [B, N], True where a token is masked.

  Per example r ~ U(0, 1) and exactly ceil(gamma(r) M) (`rounding` 'round':
  round; at least 1 where M > 0) positions, chosen uniformly at random among
  the M maskable ones, are masked: M = N, or the count of `maskable` (bool
  [B, N]; False at given tokens, e.g. the observed frames of frame
  prediction, which the schedule then leaves out as decoding does).
  """
  ratio_rng, order_rng = jax.random.split(rng)
  ratio = jax.random.uniform(ratio_rng, (batch_size,))
  noise = jax.random.uniform(order_rng, (batch_size, num_tokens))
  if maskable is None:
    count = num_masked_for_training(ratio, num_tokens, method, rounding)
  else:
    maskable = jnp.broadcast_to(maskable, (batch_size, num_tokens))
    count = num_masked_for_training(ratio, maskable.sum(-1, dtype=jnp.int32),
                                    method, rounding)
    noise = jnp.where(maskable, noise, 2.0)  # Ranked after every maskable one.
  ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  return ranks < count[:, None]
