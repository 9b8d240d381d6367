"""Per-example image quality metrics on [-1, 1] images."""

import jax
import jax.numpy as jnp


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """PSNR in dB of [-1, 1] images [B, ...] measured on the [0, 1] scale -> [B].

  Reconstructions are clipped to [-1, 1] first, as saved images would be.
  """
  if x.shape != y.shape:
    raise ValueError(f'psnr: shapes differ: {x.shape} vs {y.shape}')
  x01 = (x.astype(jnp.float32) + 1.0) / 2.0
  y01 = (jnp.clip(y.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  mse = jnp.mean((x01 - y01)**2, axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def mean_abs_error(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean |x - y| per example, [B, ...] -> [B]."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)),
                  axis=tuple(range(1, x.ndim)))
