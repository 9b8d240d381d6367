"""Input validation shared by public functions (tokenizers, metrics, losses)."""

import jax
import jax.numpy as jnp


def check_float_pixels(x: jax.Array, who: str) -> None:
  """Rejects integer pixels (uint8 from a PNG): [-1, 1] floats expected."""
  if not hasattr(x, 'dtype'):
    raise TypeError(f'{who}: images must be an array of floats in [-1, 1], '
                    f'got a {type(x).__name__} (wrap it in np.asarray)')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{who}: images must be floating point in [-1, 1], got '
                    f'{x.dtype} (convert uint8 with x / 127.5 - 1)')


def check_pixel_range(x: jax.Array, who: str) -> None:
  """Refuses concrete float pixels that are not finite or lie far outside
  [-1, 1] (a resize's overshoot stays well inside 2; 0..255 pixels do not).
  Traced ones (inside jit) cannot be seen."""
  if (isinstance(x, jax.core.Tracer) or not hasattr(x, 'dtype') or
      not jnp.issubdtype(x.dtype, jnp.floating) or not jnp.size(x)):
    return
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f'{who}: pixels must be finite, got NaN or Inf values')
  low, high = float(jnp.min(x)), float(jnp.max(x))
  if low < -2 or high > 2:
    raise ValueError(f'{who}: pixels must be in [-1, 1], got values in '
                     f'[{low:g}, {high:g}] (0..255 pixels: x / 127.5 - 1)')


def check_images(x: jax.Array, channels: int | tuple[int, ...], factor: int,
                 who: str) -> None:
  """Rejects anything but floating [B, H, W, C] with C in `channels` and
  H, W > 0, H, W % factor == 0."""
  check_float_pixels(x, who)
  allowed = channels if isinstance(channels, tuple) else (channels,)
  if x.ndim != 4 or x.shape[-1] not in allowed:
    wanted = ' or '.join(map(str, allowed))
    raise ValueError(f'{who}: images must have shape [B, H, W, {wanted}], '
                     f'got {tuple(x.shape)}')
  if not x.shape[1] or not x.shape[2]:
    raise ValueError(f'{who}: images must not be empty, got shape '
                     f'{tuple(x.shape)}')
  if x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(f'{who}: image height and width must be divisible by the '
                     f'downsampling factor {factor}, got {tuple(x.shape[1:3])}')


def check_videos(x: jax.Array, channels: int, factor: int, temporal_factor: int,
                 who: str) -> None:
  """Rejects anything but floating images [B, H, W, channels] or videos
  [B, T, H, W, channels] with H, W % factor == 0 and T = 1 + temporal_factor k
  (k >= 0).
  """
  if x.ndim == 4:
    check_images(x, channels, factor, who)
    return
  if x.ndim != 5 or x.shape[-1] != channels:
    raise ValueError(f'{who}: videos must have shape [B, T, H, W, {channels}] '
                     f'(images [B, H, W, {channels}]), got {tuple(x.shape)}')
  frames, s = x.shape[1], temporal_factor
  if frames < 1:
    raise ValueError(f'{who}: videos must have at least 1 frame, got {frames} '
                     f'frames (shape {tuple(x.shape)})')
  check_images(x[:, 0], channels, factor, who)
  if (frames - 1) % s:
    raise ValueError(f'{who}: {nearest_frame_counts(frames, s)} frames ok; got '
                     f'{frames}: frames must be 1 + {s}k (temporal '
                     f'downsampling factor {s})')


def nearest_frame_counts(frames: int, temporal_factor: int) -> str:
  """The clip lengths 1 + s k (s = temporal_factor) around `frames` that a
  tokenizer downsampling time by s takes, e.g. '5 or 9' for 8 frames and
  s = 4."""
  s = temporal_factor
  below = 1 + s * ((frames - 1) // s)
  return ' or '.join(str(n) for n in (below, below + s) if n >= 1)


def check_latents(quantized: jax.Array, ranks: tuple[int, ...], code_dim: int,
                  who: str) -> None:
  """Rejects quantized latents whose rank is not one of `ranks`, whose last
  axis is not the quantizer's `code_dim` (e.g. [B, h, w, code_dim]) or that
  are empty (a frame or spatial axis of 0)."""
  if quantized.ndim not in ranks or quantized.shape[-1] != code_dim:
    ranks_text = ' or '.join(str(n) for n in ranks)
    raise ValueError(f'{who}: quantized latents must have {ranks_text} dims '
                     f'and {code_dim} channels (the code dim), got shape '
                     f'{tuple(quantized.shape)}')
  if 0 in quantized.shape[1:-1]:
    raise ValueError(f'{who}: quantized latents must not be empty (at least '
                     f'1 frame and 1 x 1 positions), got shape '
                     f'{tuple(quantized.shape)}')


def check_token_grid(indices: jax.Array, ndim: int | tuple[int, ...],
                     who: str) -> None:
  """Rejects token arrays of the wrong rank (one of `ndim`) or dtype (range:
  the quantizer)."""
  if not hasattr(indices, 'dtype'):
    raise TypeError(f'{who}: token ids must be an integer array, got a '
                    f'{type(indices).__name__} (wrap it in np.asarray)')
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f'{who}: token ids must be integers, got {indices.dtype}')
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  if indices.ndim not in allowed:
    ranks = ' or '.join(str(n) for n in allowed)
    raise ValueError(f'{who}: token ids must have {ranks} dims, got shape '
                     f'{tuple(indices.shape)}')
