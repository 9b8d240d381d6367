"""Down- and upsampling layers: 2D (taming, MaskGIT) and causal 3D (MAGVIT-v2)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear
from vqlab.nn.causal_conv import CausalConv3D
from vqlab.nn.depth_to_space import depth_to_space


class Downsample2D(nn.Module):
  """Stride-2 3x3 convolution with taming's asymmetric (0, 1) padding.

  x: [B, H, W, C] -> [B, H/2, W/2, C].
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return linear.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding='VALID',
                       dtype=self.dtype, name='conv')(x)


def avg_pool_2x(x: jax.Array) -> jax.Array:
  """Mean of each 2x2 block (MaskGIT's downsampling): [B, H, W, C] ->
  [B, H/2, W/2, C] for even H, W."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 upsampling followed by a 3x3 convolution.

  x: [B, H, W, C] -> [B, 2H, 2W, C].
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return linear.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name='conv')(x)


class CausalDownsample3D(nn.Module):
  """Stride-(s_t, 2, 2) causal conv (k_t, 3, 3), s_t = 2 if `temporal` else 1.

  x: [B, 1 + s_t t, H, W, C] -> [B, 1 + t, H/2, W/2, C].

  Attributes:
    temporal: also halve time (1 + 2t frames -> 1 + t).
    temporal_kernel: k_t.
    dtype: compute dtype.
  """
  temporal: bool = False
  temporal_kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    strides = (2 if self.temporal else 1, 2, 2)
    return CausalConv3D(x.shape[-1], (self.temporal_kernel, 3, 3), strides,
                        dtype=self.dtype, name='conv')(x)


class CausalUpsample3D(nn.Module):
  """Causal conv to C * s_t * 4 channels, depth-to-space, then drop the first
  s_t - 1 frames (s_t = 2 if `temporal` else 1).

  x: [B, 1 + t, H, W, C] -> [B, 1 + s_t t, 2H, 2W, C]. Latent frame j becomes
  frames s_t j .. s_t j + s_t - 1; after the drop, frame 0 comes from latent 0
  alone and latent j fills frames s_t (j - 1) + 1 .. s_t j.

  Attributes:
    temporal: also double time (1 + t frames -> 1 + 2t).
    temporal_kernel: k_t.
    dtype: compute dtype.
  """
  temporal: bool = False
  temporal_kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s_t = 2 if self.temporal else 1
    h = CausalConv3D(x.shape[-1] * s_t * 4, (self.temporal_kernel, 3, 3),
                     dtype=self.dtype, name='conv')(x)
    return depth_to_space(h, spatial=2, temporal=s_t)[:, s_t - 1:]
