"""Residual blocks of the taming-style convolutional encoders and decoders."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn import remat
from vqlab.nn.causal_conv import CausalConv3D

# GroupNorm statistics of one frame (H, W, channel group) of [B, T, H, W, C]
# (for [B, H, W, C]: the usual GroupNorm). Statistics over T would let a
# frame's features depend on later frames and break the causal tokenizer.
FRAME_AXES = (-3, -2, -1)


def group_norm(num_groups: int, dtype: Any,
               name: str | None = None) -> norms.GroupNorm:
  """GroupNorm with taming's epsilon (1e-6); statistics in float32;
  recomputed in the backward pass (vqlab.nn.remat)."""
  return remat.RecomputedGroupNorm(num_groups=num_groups, epsilon=1e-6,
                                   dtype=dtype, name=name)


def frame_group_norm(num_groups: int, dtype: Any,
                     name: str | None = None) -> norms.GroupNorm:
  """group_norm applied to each frame of [B, T, H, W, C] separately."""
  return remat.RecomputedGroupNorm(num_groups=num_groups, epsilon=1e-6,
                                   dtype=dtype, reduction_axes=FRAME_AXES,
                                   name=name)


class ResBlock2D(nn.Module):
  """GroupNorm -> swish -> conv3x3, twice, plus a (1x1-projected) shortcut.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    dropout_rate: dropout between the two convolutions (training only).
    dtype: compute dtype.
    use_bias: the three convolutions have biases (MaskGIT's have none).
    shortcut_quirk: when the channels change, return h + shortcut(h) for the
      branch output h instead of x + h: the published MaskGIT VQGAN
      (maskgit/nets/vqgan_tokenizer.py ResBlock) projects the branch output,
      not the input, and its checkpoints were trained that way.
  """
  features: int
  num_groups: int = 32
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  use_bias: bool = True
  shortcut_quirk: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] -> [B, H, W, features]."""
    conv = lambda k, name: linear.Conv(self.features, (k, k), dtype=self.dtype,
                                       use_bias=self.use_bias, name=name)
    h = remat.recomputed_swish(
        group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = conv(3, 'conv1')(h)
    h = remat.recomputed_swish(
        group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = conv(3, 'conv2')(h)
    if x.shape[-1] != self.features:
      x = conv(1, 'shortcut')(h if self.shortcut_quirk else x)
    return x + h


class ResBlock3D(nn.Module):
  """ResBlock2D for videos, causal in time: per-frame GroupNorm -> swish ->
  causal conv (k_t, 3, 3), twice, plus a (1x1x1-projected) shortcut.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    temporal_kernel: k_t of the two convolutions.
    dtype: compute dtype.
    use_bias: the three convolutions have biases (Open-MAGVIT2's have none).
  """
  features: int
  num_groups: int = 32
  temporal_kernel: int = 3
  dtype: Any = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, features]."""
    kernel = (self.temporal_kernel, 3, 3)
    conv = lambda k, name: CausalConv3D(self.features, k, dtype=self.dtype,
                                        use_bias=self.use_bias, name=name)
    h = remat.recomputed_swish(
        frame_group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = conv(kernel, 'conv1')(h)
    h = remat.recomputed_swish(
        frame_group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = conv(kernel, 'conv2')(h)
    if x.shape[-1] != self.features:
      x = conv((1, 1, 1), 'shortcut')(x)
    return x + h
