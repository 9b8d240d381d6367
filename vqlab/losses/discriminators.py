"""Image discriminators, chosen by `discriminator.name`:

  patchgan  pix2pix / taming NLayerDiscriminator: per-patch logits.
  stylegan  StyleGAN2-style residual discriminator with blur pooling (the
            MaskGIT-VQGAN / MAGVIT recipe): one logit per image or video;
            3D convolutions and 3D blur pooling for [B, T, H, W, C] input.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab import config_schema
from vqlab.nn import blur
from vqlab.nn import linear
from vqlab.registry import Registry


def _check_images(name: str, x: jax.Array) -> None:
  if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'{name}: images must be floating [B, H, W, C], got '
                     f'{x.dtype} {tuple(x.shape)}')


def _taming_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """N(1, 0.02): taming's `weights_init` of BatchNorm scales."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchStatNorm(nn.Module):
  """Batch normalization with the current batch's statistics and a learned
  affine (scale initialized N(1, 0.02), as taming's `weights_init`); no
  running averages (the discriminator only runs in training, as in taming,
  where it is always in train mode). Under jit with a sharded batch the
  statistics are global, so results do not depend on the device count."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.var(x32, axis=(0, 1, 2))
    scale = self.param('scale', _taming_scale_init, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(x.dtype)


class PatchGAN(nn.Module):
  """pix2pix / taming NLayerDiscriminator: per-patch real/fake logits.

  Conv kernels start N(0, 0.02), as taming's `weights_init` (flax's default
  would give logits of about half the scale at the start). Every conv has a
  bias starting at 0: taming's inner convs have none (the norm after them
  cancels one: here they have no effect) and its first and last start
  at torch's U(+-1/sqrt(fan_in)).

  Attributes:
    base_features: channels of the first conv (ndf).
    num_layers: number of stride-2 convs (3 gives a 70x70 receptive field).
    use_norm: batch normalization after every inner conv (taming: True).
    dtype: compute dtype.
  """
  base_features: int = 64
  num_layers: int = 3
  use_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> logits [B, H', W', 1] (float32)."""
    _check_images('PatchGAN', x)
    conv = lambda f, s, h: linear.Conv(f, (4, 4), strides=(s, s), padding=(
        (1, 1),
        (1, 1)), dtype=self.dtype, kernel_init=nn.initializers.normal(0.02))(h)
    h = nn.leaky_relu(conv(self.base_features, 2, x.astype(self.dtype)), 0.2)
    for layer in range(1, self.num_layers + 1):
      features = self.base_features * min(2**layer, 8)
      h = conv(features, 2 if layer < self.num_layers else 1, h)
      if self.use_norm:
        h = BatchStatNorm()(h)
      h = nn.leaky_relu(h, 0.2)
    return conv(1, 1, h).astype(jnp.float32)


def patchgan_output_side(side: int, num_layers: int) -> int:
  """Side of PatchGAN's logit map for inputs of `side` pixels: the 4x4
  convs (padding 1) of stride 2 (`num_layers` of them) then stride 1 (two),
  each giving (side + 2 - 4) // stride + 1."""
  for stride in (2,) * num_layers + (1, 1):
    side = (side - 2) // stride + 1
  return side


def patchgan_min_side(num_layers: int) -> int:
  """The smallest image side PatchGAN of `num_layers` gives logits for."""
  side = 1
  while patchgan_output_side(side, num_layers) < 1:
    side += 1
  return side


def _blur_down(x: jax.Array) -> jax.Array:
  """Blur-pools every axis between batch and channels by 2. An odd frame
  count (videos of 1 + 4k frames) is first made even by repeating the last
  frame; a single frame is left alone (images through a video model)."""
  axes = list(range(1, x.ndim - 1))
  if x.ndim == 5:
    frames = x.shape[1]
    if frames == 1:
      axes = axes[1:]
    elif frames % 2:
      x = jnp.concatenate([x, x[:, -1:]], axis=1)
  return blur.blur_pool(x, axes=axes)


# MaskGIT's and MAGVIT's discriminators draw every kernel so.
_XAVIER = nn.initializers.xavier_uniform()


class BlurResBlock(nn.Module):
  """StyleGAN2 residual down block: conv3 -> lrelu -> blur-pool -> conv3 ->
  lrelu, plus blur-pool -> 1x1 conv on the skip path, summed and scaled by
  1/sqrt(2). Works on images [B, H, W, C] (2D convs) and videos
  [B, T, H, W, C] (3D convs, time pooled too): sizes halve, features out."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = (3,) * (x.ndim - 2)
    point = (1,) * (x.ndim - 2)
    h = nn.leaky_relu(
        linear.Conv(x.shape[-1], window, dtype=self.dtype, kernel_init=_XAVIER,
                    name='conv1')(x), 0.2)
    h = _blur_down(h)
    h = nn.leaky_relu(
        linear.Conv(self.features, window, dtype=self.dtype,
                    kernel_init=_XAVIER, name='conv2')(h), 0.2)
    skip = linear.Conv(self.features, point, use_bias=False, dtype=self.dtype,
                       kernel_init=_XAVIER, name='skip')(_blur_down(x))
    return (h + skip) / math.sqrt(2.0)


class StyleGANDiscriminator(nn.Module):
  """StyleGAN2-style residual discriminator with blur pooling, 2D for images
  and 3D (MAGVIT) for videos: the rank of the input picks the convolutions.
  Every kernel starts xavier-uniform, biases at 0 (MaskGIT's and MAGVIT's).

  Attributes:
    base_features: channels of the first conv.
    channel_multipliers: one down block per entry, with base_features * m
      output channels (the image side must be divisible by 2^len).
    dtype: compute dtype.
  """
  base_features: int = 64
  channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] or [B, T, H, W, C] -> logits [B, 1] (float32)."""
    if x.ndim not in (4, 5) or not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError('StyleGANDiscriminator: expected floating [B, H, W, C] '
                       f'or [B, T, H, W, C], got {x.dtype} {tuple(x.shape)}')
    factor = 2**len(self.channel_multipliers)
    height, width = x.shape[-3:-1]
    if height % factor or width % factor:
      raise ValueError(f'StyleGANDiscriminator: image size {(height, width)} '
                       f'is not divisible by 2^{len(self.channel_multipliers)}')
    window = (3,) * (x.ndim - 2)
    h = nn.leaky_relu(
        linear.Conv(self.base_features, window, dtype=self.dtype,
                    kernel_init=_XAVIER, name='stem')(x.astype(self.dtype)),
        0.2)
    for level, mult in enumerate(self.channel_multipliers):
      h = BlurResBlock(self.base_features * mult, dtype=self.dtype,
                       name=f'down_{level}')(h)
    h = nn.leaky_relu(
        linear.Conv(h.shape[-1], window, dtype=self.dtype, kernel_init=_XAVIER,
                    name='head_conv')(h), 0.2)
    if h.ndim == 5:
      # Average over time, so one discriminator scores clips of any length
      # (and images as 1-frame videos, for joint image-video training).
      h = jnp.mean(h, axis=1)
    width = h.shape[-1]
    h = h.reshape((h.shape[0], -1))
    h = nn.leaky_relu(
        linear.Dense(width, dtype=self.dtype, kernel_init=_XAVIER,
                     name='head_dense')(h), 0.2)
    return linear.Dense(1, dtype=self.dtype, kernel_init=_XAVIER,
                        name='logit')(h).astype(jnp.float32)


# ------------------------------------------------------------- registry ---
def _patchgan_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base_features = 64  # Channels of the first conv (ndf).
  config.num_layers = 3  # Stride-2 convs (3: 70x70 receptive field).
  config.use_norm = True  # Batch-statistics norm in inner layers.
  return config


def _stylegan_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base_features = 64  # Channels of the stem conv.
  # One blur-pooled residual down block per entry (256^2 -> 8^2 with five).
  config.channel_multipliers = (2, 4, 4, 4, 4)
  return config


def _build_patchgan(config, dtype=jnp.float32,
                    prefix: str = 'discriminator') -> PatchGAN:
  config_schema.require(config.num_layers >= 1, f'{prefix}.num_layers',
                        f'must be >= 1, got {config.num_layers}')
  return PatchGAN(base_features=config.base_features,
                  num_layers=config.num_layers, use_norm=config.use_norm,
                  dtype=dtype)


def _build_stylegan(config, dtype=jnp.float32,
                    prefix: str = 'discriminator') -> StyleGANDiscriminator:
  config_schema.require(
      len(config.channel_multipliers) >= 1, f'{prefix}.channel_multipliers',
      'must not be empty')
  return StyleGANDiscriminator(
      base_features=config.base_features,
      channel_multipliers=tuple(config.channel_multipliers), dtype=dtype)


REGISTRY = Registry('discriminator', key_prefix='discriminator')
REGISTRY.register('patchgan', default_config=_patchgan_config,
                  builder=_build_patchgan)
REGISTRY.register('stylegan', default_config=_stylegan_config,
                  builder=_build_stylegan)
names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
build_validated = REGISTRY.build_validated
