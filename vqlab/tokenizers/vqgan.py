"""VQGAN (taming transformers): a 2D convolutional encoder, a quantizer and a
decoder that mirrors the encoder.

Encoder: conv_in -> per level [res blocks (+attention)] -> downsample ... ->
mid (res, attention, res) -> GroupNorm, swish, conv -> 1x1 to the code dim.
Decoder: 1x1 from the code dim -> conv_in -> mid -> per level [res blocks
(+attention)] -> upsample ... -> GroupNorm, swish -> `to_pixels` conv. The
`to_pixels` kernel is the "last layer" of the adaptive GAN weight.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.quantizers import base as quantizer_base
from vqlab.nn.attention import SpatialSelfAttention
from vqlab.nn.resnet import ResBlock2D, group_norm
from vqlab.nn.sampling import Downsample2D, Upsample2D
from vqlab.tokenizers import checks


class Encoder(nn.Module):
  """x: [B, H, W, C] -> z: [B, H/f, W/f, z_channels], f = 2^(levels-1)."""
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  attention_levels: Sequence[int]
  mid_attention: bool
  z_channels: int
  num_groups: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    res = lambda c, h: ResBlock2D(c, self.num_groups, self.dropout_rate,
                                  self.dtype)(h, train=train)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name='conv_in')(x)
    last = len(self.channel_multipliers) - 1
    for level, multiplier in enumerate(self.channel_multipliers):
      for _ in range(self.num_res_blocks):
        h = res(self.channels * multiplier, h)
        if level in self.attention_levels:
          h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
      if level != last:
        h = Downsample2D(self.dtype)(h)
    h = res(h.shape[-1], h)
    if self.mid_attention:
      h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
    h = res(h.shape[-1], h)
    h = nn.swish(group_norm(self.num_groups, self.dtype, 'norm_out')(h))
    return nn.Conv(self.z_channels, (3, 3), dtype=self.dtype, name='conv_out')(h)


class Decoder(nn.Module):
  """z: [B, h, w, z_channels] -> features [B, h*f, w*f, channels * mult[0]].

  The final projection to pixels lives in `VQGAN.to_pixels`.
  """
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  attention_levels: Sequence[int]
  mid_attention: bool
  num_groups: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    res = lambda c, h: ResBlock2D(c, self.num_groups, self.dropout_rate,
                                  self.dtype)(h, train=train)
    width = self.channels * self.channel_multipliers[-1]
    h = nn.Conv(width, (3, 3), dtype=self.dtype, name='conv_in')(z)
    h = res(width, h)
    if self.mid_attention:
      h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
    h = res(width, h)
    for level in reversed(range(len(self.channel_multipliers))):
      for _ in range(self.num_res_blocks + 1):
        h = res(self.channels * self.channel_multipliers[level], h)
        if level in self.attention_levels:
          h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
      if level != 0:
        h = Upsample2D(self.dtype)(h)
    return nn.swish(group_norm(self.num_groups, self.dtype, 'norm_out')(h))


class VQGAN(nn.Module):
  """Image tokenizer: images [B, H, W, C] in [-1, 1] <-> tokens [B, H/f, W/f].

  Attributes:
    quantizer: any module from `vqlab.quantizers.build`.
    in_channels: image channels C.
    channels, channel_multipliers, num_res_blocks, attention_levels,
    mid_attention, z_channels, num_groups, dropout_rate: see default_config.
    dtype: compute dtype (parameters stay float32).
  """
  quantizer: nn.Module
  in_channels: int = 3
  channels: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attention_levels: Sequence[int] = (4,)
  mid_attention: bool = True
  z_channels: int = 256
  num_groups: int = 32
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  LAST_LAYER = 'to_pixels'  # Params of the layer the adaptive GAN weight uses.

  @property
  def downsample_factor(self) -> int:
    return 2**(len(self.channel_multipliers) - 1)

  def setup(self):
    shared = dict(channels=self.channels,
                  channel_multipliers=tuple(self.channel_multipliers),
                  num_res_blocks=self.num_res_blocks,
                  attention_levels=tuple(self.attention_levels),
                  mid_attention=self.mid_attention, num_groups=self.num_groups,
                  dropout_rate=self.dropout_rate, dtype=self.dtype)
    self.encoder = Encoder(z_channels=self.z_channels, **shared)
    self.quant_conv = nn.Conv(self.quantizer.code_dim, (1, 1), dtype=self.dtype)
    self.post_quant_conv = nn.Conv(self.z_channels, (1, 1), dtype=self.dtype)
    self.decoder = Decoder(**shared)
    self.to_pixels = nn.Conv(self.in_channels, (3, 3), dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (indices [B, H/f, W/f], QuantizerOutput)."""
    checks.check_images(x, self.in_channels, self.downsample_factor, 'VQGAN')
    z = self.quant_conv(self.encoder(x.astype(self.dtype), train=train))
    out = self.quantizer(z.astype(jnp.float32), train=train)
    return out.indices, out

  def decoder_features(self, quantized: jax.Array, *,
                       train: bool = False) -> jax.Array:
    """Quantized latents [B, h, w, d] -> input of the last layer."""
    h = self.post_quant_conv(quantized.astype(self.dtype))
    return self.decoder(h, train=train)

  def last_layer(self, features: jax.Array) -> jax.Array:
    """Decoder features -> images [B, H, W, C] (float32)."""
    return self.to_pixels(features).astype(jnp.float32)

  def decode(self, quantized: jax.Array, *, train: bool = False) -> jax.Array:
    """Quantized latents [B, h, w, d] -> images [B, h*f, w*f, C]."""
    return self.last_layer(self.decoder_features(quantized, train=train))

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Tokens int [B, h, w] ([B, h, w, n_factors] for factorized codes) ->
    images [B, h*f, w*f, C] in about [-1, 1]."""
    checks.check_token_grid(
        indices, 3 + quantizer_base.num_index_axes(self.quantizer),
        'VQGAN.decode_indices')
    return self.decode(self.quantizer.indices_to_codes(indices))

  def forward_with_features(self, x: jax.Array, *, train: bool = False):
    """Like __call__, also returning the last layer's input features."""
    _, out = self.encode(x, train=train)
    features = self.decoder_features(out.quantized, train=train)
    return self.last_layer(features), out, features

  def __call__(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (reconstruction [B, H, W, C], QuantizerOutput)."""
    x_rec, out, _ = self.forward_with_features(x, train=train)
    return x_rec, out


def default_config() -> ml_collections.ConfigDict:
  """A small VQGAN that trains on CPU; configs/vqgan/ has the paper sizes."""
  config = ml_collections.ConfigDict()
  config.in_channels = 3               # Image channels.
  config.channels = 32                 # Base width; level i has channels * mult[i].
  config.channel_multipliers = (1, 2, 2)  # One entry per level; f = 2^(len - 1).
  config.num_res_blocks = 1            # Res blocks per level (decoder: +1).
  config.attention_levels = ()         # Levels (0 = full resolution) with attention.
  config.mid_attention = True          # Attention in the middle block.
  config.z_channels = 64               # Encoder output channels before quant_conv.
  config.num_groups = 8                # GroupNorm groups (taming: 32).
  config.dropout_rate = 0.0            # Dropout inside res blocks.
  config.quantizer = quantizers.default_config('vq')  # Any registered quantizer.
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> VQGAN:
  """Builds a VQGAN (and its quantizer) from a validated config."""
  for level in config.attention_levels:
    if not 0 <= level < len(config.channel_multipliers):
      raise ConfigError(f'{prefix}.attention_levels',
                        f'level {level} outside [0, {len(config.channel_multipliers)})')
  for key in ('channels', 'z_channels'):
    if config[key] % config.num_groups:
      raise ConfigError(f'{prefix}.num_groups',
                        f'{config.num_groups} does not divide {key}={config[key]}')
  quantizer = quantizers.build(config.quantizer, prefix=f'{prefix}.quantizer')
  return VQGAN(quantizer=quantizer, in_channels=config.in_channels,
               channels=config.channels,
               channel_multipliers=tuple(config.channel_multipliers),
               num_res_blocks=config.num_res_blocks,
               attention_levels=tuple(config.attention_levels),
               mid_attention=config.mid_attention, z_channels=config.z_channels,
               num_groups=config.num_groups, dropout_rate=config.dropout_rate,
               dtype=jnp.dtype(dtype))
