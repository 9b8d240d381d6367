"""Residual blocks of the taming-style convolutional encoders and decoders."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn.causal_conv import CausalConv3D

# GroupNorm statistics of one frame (H, W, channel group) of [B, T, H, W, C]
# (for [B, H, W, C]: the usual GroupNorm). Statistics over T would let a
# frame's features depend on later frames and break the causal tokenizer.
FRAME_AXES = (-3, -2, -1)


def group_norm(num_groups: int, dtype: Any, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm with taming's epsilon (1e-6); statistics in float32."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype,
                      name=name)


def frame_group_norm(num_groups: int, dtype: Any,
                     name: str | None = None) -> nn.GroupNorm:
  """group_norm applied to each frame of [B, T, H, W, C] separately."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype,
                      reduction_axes=FRAME_AXES, name=name)


class ResBlock2D(nn.Module):
  """GroupNorm -> swish -> conv3x3, twice, plus a (1x1-projected) shortcut.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    dropout_rate: dropout between the two convolutions (training only).
    dtype: compute dtype.
  """
  features: int
  num_groups: int = 32
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] -> [B, H, W, features]."""
    h = nn.swish(group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, name='conv1')(h)
    h = nn.swish(group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='shortcut')(x)
    return x + h


class ResBlock3D(nn.Module):
  """ResBlock2D for videos, causal in time: per-frame GroupNorm -> swish ->
  causal conv (k_t, 3, 3), twice, plus a (1x1x1-projected) shortcut.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    temporal_kernel: k_t of the two convolutions.
    dtype: compute dtype.
  """
  features: int
  num_groups: int = 32
  temporal_kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, features]."""
    kernel = (self.temporal_kernel, 3, 3)
    h = nn.swish(frame_group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = CausalConv3D(self.features, kernel, dtype=self.dtype, name='conv1')(h)
    h = nn.swish(frame_group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = CausalConv3D(self.features, kernel, dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = CausalConv3D(self.features, (1, 1, 1), dtype=self.dtype,
                       name='shortcut')(x)
    return x + h
