"""Depth-to-space and its inverse for videos [B, T, H, W, C] and images.

Channels are laid out as (s_t, s_h, s_w, C), the fastest axis last: output
pixel (t s_t + i, h s + j, w s + k) takes channel block (i, j, k). With
temporal = 1 this is TF's `depth_to_space` (NHWC) order.
"""

import jax


def depth_to_space(x: jax.Array, spatial: int = 2,
                   temporal: int = 1) -> jax.Array:
  """Moves channels into space (and time).

  Args:
    x: [B, T, H, W, C * temporal * spatial^2], or [B, H, W, C * spatial^2]
      (then temporal must be 1).
    spatial: factor on H and W.
    temporal: factor on T.

  Returns:
    [B, T * temporal, H * spatial, W * spatial, C] (or [B, H*s, W*s, C]).
  """
  if x.ndim == 4:
    _check_image_temporal(temporal, 'depth_to_space')
    return depth_to_space(x[:, None], spatial, 1)[:, 0]
  b, t, h, w, c = x.shape
  block = temporal * spatial * spatial
  if c % block:
    raise ValueError(f'depth_to_space: channels {c} not divisible by '
                     f'temporal * spatial^2 = {block}')
  x = x.reshape(b, t, h, w, temporal, spatial, spatial, c // block)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * temporal, h * spatial, w * spatial, c // block)


def space_to_depth(x: jax.Array, spatial: int = 2,
                   temporal: int = 1) -> jax.Array:
  """Inverse of depth_to_space.

  Args:
    x: [B, T, H, W, C] with T % temporal == 0 and H, W % spatial == 0, or
      [B, H, W, C] (then temporal must be 1).
    spatial: factor on H and W.
    temporal: factor on T.

  Returns:
    [B, T / temporal, H / spatial, W / spatial, C * temporal * spatial^2]
    (or [B, H/s, W/s, C * s^2]).
  """
  if x.ndim == 4:
    _check_image_temporal(temporal, 'space_to_depth')
    return space_to_depth(x[:, None], spatial, 1)[:, 0]
  b, t, h, w, c = x.shape
  if t % temporal or h % spatial or w % spatial:
    raise ValueError(f'space_to_depth: (T, H, W) = {(t, h, w)} not divisible '
                     f'by ({temporal}, {spatial}, {spatial})')
  x = x.reshape(b, t // temporal, temporal, h // spatial, spatial, w // spatial,
                spatial, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // temporal, h // spatial, w // spatial,
                   c * temporal * spatial * spatial)


def _check_image_temporal(temporal: int, who: str) -> None:
  if temporal != 1:
    raise ValueError(f'{who}: images [B, H, W, C] need temporal=1, got '
                     f'{temporal}')
