"""Anti-aliased (blur) downsampling, as in StyleGAN's and MAGVIT's
discriminators: a separable [1, 3, 3, 1] / 8 low-pass filter applied per
channel before striding (Zhang, "Making convolutional networks shift-invariant
again", 2019)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_pool(x: jax.Array, axes: Sequence[int], stride: int = 2) -> jax.Array:
  """Blurs x along `axes` with [1, 3, 3, 1] / 8 and subsamples by `stride`.

  Args:
    x: [B, ..., C] channels-last array.
    axes: the spatial axes to filter (e.g. (1, 2) for [B, H, W, C] images,
      (1, 2, 3) for [B, T, H, W, C] videos); each must have even size.
    stride: 2 halves those axes, 1 only blurs (MAGVIT's BlurPool's 'SAME'
      padding for both; other strides raise ValueError).

  Returns:
    x with each axis in `axes` of size n turned into n / stride (padding 1 on
    each side keeps the 4-tap filter centred between pixel pairs).
  """
  if stride not in (1, 2):
    raise ValueError(f'blur_pool: stride must be 1 or 2, got {stride}')
  taps = jnp.asarray(BLUR_TAPS, jnp.float32) / sum(BLUR_TAPS)
  channels = x.shape[-1]
  for axis in axes:
    axis = axis % x.ndim
    if x.shape[axis] % stride:
      raise ValueError(f'blur_pool: axis {axis} of size {x.shape[axis]} is not '
                       f'divisible by the stride {stride}')
    # Move `axis` next to the channels, filter as a depthwise 1D conv.
    moved = jnp.moveaxis(x, axis, -2)
    lead = moved.shape[:-2]
    flat = moved.reshape((-1, moved.shape[-2], channels))
    kernel = jnp.tile(taps.astype(x.dtype)[:, None, None], (1, 1, channels))
    out = jax.lax.conv_general_dilated(
        flat, kernel, window_strides=(stride,),
        padding=((1, 1) if stride == 2 else (1, 2),),
        dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=channels)
    x = jnp.moveaxis(out.reshape(lead + out.shape[-2:]), -2, axis)
  return x
