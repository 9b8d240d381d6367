"""Adaptive group normalization (MAGVIT-v2 decoder): GroupNorm whose scale and
shift come from the quantized latent.

    y = GroupNorm(x) * (1 + scale(z_q)) + shift(z_q)

GroupNorm has no affine of its own and normalizes each frame separately (as
every norm of the causal tokenizer: statistics over time would leak future
frames). scale and shift are 1x1x1 projections (Dense) of z_q, zero-initialized
so training starts from plain GroupNorm, computed at the latent resolution and
then resized to x's (T, H, W) by `resize_latent` (nearest; a 1x1x1 projection
commutes with it). This spatial version keeps the conditioning local, like the
rest of the decoder.

`pooled=True` is Open-MAGVIT2's image decoder (improved_model.py
AdaptiveGroupNorm): each latent frame is pooled over space first,

    y = GroupNorm(x) * scale(sqrt(var(z_q) + eps)) + shift(mean(z_q)),

var being the unbiased (N - 1) variance over the h w positions (torch's
`Tensor.var` default) and eps the GroupNorm epsilon; scale starts at 1
(zero kernel, unit bias) and shift at 0.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlab.nn import linear
from vqlab.nn import remat
from vqlab.nn.resnet import FRAME_AXES


def latent_frame_index(frames: int, latent_frames: int) -> np.ndarray:
  """Which latent frame each of `frames` output frames reads: int [frames].

  The tokenizer maps 1 + t latent frames to 1 + s t frames; latent 0 covers
  frame 0 and latent j frames s (j - 1) + 1 .. s j (the input frames it saw
  last in the encoder, and the frames it decodes to), so frame i reads latent
  ceil(i / s). A centred nearest resize would misalign this and break
  causality.
  """
  if latent_frames == 1:
    return np.zeros((frames,), np.int32)
  if (frames - 1) % (latent_frames - 1):
    raise ValueError(f'resize_latent: {latent_frames} latent frames do not map '
                     f'to {frames} frames (need 1 + s * {latent_frames - 1})')
  s = (frames - 1) // (latent_frames - 1)
  return ((np.arange(frames) + s - 1) // s).astype(np.int32)


def resize_latent(z: jax.Array, size: tuple[int, int, int]) -> jax.Array:
  """Nearest resize of z: [B, t, h, w, d] to [B, T, H, W, d].

  Space: each latent pixel fills an (H/h) x (W/w) block (integer factors).
  Time: `latent_frame_index` (causal nearest).
  """
  frames, height, width = size
  _, t, h, w, _ = z.shape
  if height % h or width % w:
    raise ValueError(f'resize_latent: latent {(h, w)} does not divide '
                     f'{(height, width)}')
  z = jnp.take(z, latent_frame_index(frames, t), axis=1)
  return jnp.repeat(jnp.repeat(z, height // h, axis=2), width // w, axis=3)


class AdaptiveGroupNorm(nn.Module):
  """Per-frame GroupNorm without affine, modulated by z_q; see the module doc.

  Attributes:
    num_groups: GroupNorm groups.
    epsilon: GroupNorm epsilon (taming's 1e-6).
    dtype: compute dtype.
    pooled: condition on z_q's per-frame spatial std and mean (Open-MAGVIT2).
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  pooled: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, z_q: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C], z_q: [B, t, h, w, d] -> [B, T, H, W, C].

    Images: x [B, H, W, C] with z_q [B, h, w, d] -> [B, H, W, C].
    """
    if x.ndim != z_q.ndim or x.ndim not in (4, 5):
      raise ValueError(f'AdaptiveGroupNorm: x and z_q must both be 4D or 5D, '
                       f'got {tuple(x.shape)} and {tuple(z_q.shape)}')
    if x.ndim == 4:
      return self(x[:, None], z_q[:, None])[:, 0]
    channels = x.shape[-1]
    h = remat.RecomputedGroupNorm(num_groups=self.num_groups,
                                  epsilon=self.epsilon, use_scale=False,
                                  use_bias=False, reduction_axes=FRAME_AXES,
                                  dtype=self.dtype, name='norm')(x)
    z_q = z_q.astype(self.dtype)
    if self.pooled:
      return self._pooled(h, z_q, x.shape[1:4])
    project = lambda name: resize_latent(
        linear.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.
                     dtype, name=name)(z_q), x.shape[1:4])
    return h * (1 + project('scale')) + project('shift')

  def _pooled(self, h: jax.Array, z_q: jax.Array,
              size: tuple[int, int, int]) -> jax.Array:
    """h * scale(std) + shift(mean); statistics over each latent frame's h w
    positions, in float32."""
    z = z_q.astype(jnp.float32)
    positions = z.shape[2] * z.shape[3]
    if positions < 2:
      # The unbiased variance of one position is 0 / 0 (NaN, as torch's).
      raise ValueError(
          "AdaptiveGroupNorm 'pooled': a latent frame of 1x1 has no variance; "
          'use images larger than the downsampling factor or '
          "model.adaptive_norm = 'spatial'")
    mean = jnp.mean(z, axis=(2, 3), keepdims=True)
    var = jnp.sum((z - mean)**2, axis=(2, 3), keepdims=True) / (positions - 1)
    std = jnp.sqrt(var + self.epsilon)
    channels = h.shape[-1]
    scale = linear.Dense(channels, kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.ones, dtype=self.dtype,
                         name='scale')(std.astype(self.dtype))
    shift = linear.Dense(channels, kernel_init=nn.initializers.zeros,
                         dtype=self.dtype,
                         name='shift')(mean.astype(self.dtype))
    frames = latent_frame_index(size[0], z.shape[1])
    scale, shift = (jnp.take(v, frames, axis=1) for v in (scale, shift))
    return h * scale + shift
