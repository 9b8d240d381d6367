"""Input validation shared by the tokenizers' public methods."""

import jax
import jax.numpy as jnp


def check_images(x: jax.Array, channels: int, factor: int, who: str) -> None:
  """Rejects anything but floating [B, H, W, channels] with H, W % factor == 0."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{who}: images must be floating point in [-1, 1], got '
                    f'{x.dtype} (convert uint8 with x / 127.5 - 1)')
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f'{who}: images must have shape [B, H, W, {channels}], '
                     f'got {tuple(x.shape)}')
  if x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(f'{who}: image height and width must be divisible by the '
                     f'downsampling factor {factor}, got {tuple(x.shape[1:3])}')


def check_token_grid(indices: jax.Array, ndim: int, who: str) -> None:
  """Rejects token arrays of the wrong rank or dtype (range: the quantizer)."""
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f'{who}: token ids must be integers, got {indices.dtype}')
  if indices.ndim != ndim:
    raise ValueError(f'{who}: token ids must have {ndim} dims, got shape '
                     f'{tuple(indices.shape)}')
