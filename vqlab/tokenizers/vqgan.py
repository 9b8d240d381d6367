"""VQGAN (taming transformers): a 2D convolutional encoder, a quantizer and a
decoder that mirrors the encoder.

Encoder: conv_in -> per level [res blocks (+attention)] -> downsample ... ->
mid (res, attention, res) -> GroupNorm, swish, conv -> 1x1 to the code dim.
Decoder: 1x1 from the code dim -> conv_in -> mid -> per level [res blocks
(+attention)] -> upsample ... -> GroupNorm, swish -> `to_pixels` conv. The
`to_pixels` kernel is the "last layer" of the adaptive GAN weight.

The defaults are taming's architecture. Options express the MaskGIT VQGAN
(google-research/maskgit, maskgit/nets/vqgan_tokenizer.py; also TiTok's pixel
decoder) with the same modules: no attention, `mid_res_blocks` =
`num_res_blocks`, `decoder_extra_block` off, 2x2 average-pool downsampling,
bias-free res-block convolutions and encoder conv_in, a 1x1 encoder conv_out
and no quant/post-quant convolutions, the `shortcut_quirk` of its res blocks
and pixels in [0, 1] inside the network (`unit_pixels`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab import checks
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.nn import linear
from vqlab.nn import remat
from vqlab.nn.attention import SpatialSelfAttention
from vqlab.nn.resnet import group_norm
from vqlab.nn.resnet import ResBlock2D
from vqlab.nn.sampling import avg_pool_2x
from vqlab.nn.sampling import Downsample2D
from vqlab.nn.sampling import Upsample2D
from vqlab.quantizers import base as quantizer_base

DOWNSAMPLING = ('conv', 'avg_pool')


def _mid_block(res, h: jax.Array, count: int, attention) -> jax.Array:
  """`count` res blocks at h's width, attention after the first if given."""
  for i in range(count):
    h = res(h.shape[-1], h)
    if i == 0 and attention is not None:
      h = attention(h)
  return h


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
  mid_res_blocks: int = 2
  downsample: str = 'conv'
  res_conv_bias: bool = True
  conv_in_bias: bool = True
  conv_out_kernel: int = 3
  shortcut_quirk: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    res = lambda c, h: ResBlock2D(c, self.num_groups, self.dropout_rate, self.
                                  dtype, self.res_conv_bias, self.shortcut_quirk
                                 )(h, train=train)
    h = linear.Conv(self.channels, (3, 3), dtype=self.dtype,
                    use_bias=self.conv_in_bias, name='conv_in')(x)
    last = len(self.channel_multipliers) - 1
    for level, multiplier in enumerate(self.channel_multipliers):
      for _ in range(self.num_res_blocks):
        h = res(self.channels * multiplier, h)
        if level in self.attention_levels:
          h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
      if level != last:
        h = (avg_pool_2x(h)
             if self.downsample == 'avg_pool' else Downsample2D(self.dtype)(h))
    attention = (SpatialSelfAttention(self.num_groups, self.dtype)
                 if self.mid_attention else None)
    h = _mid_block(res, h, self.mid_res_blocks, attention)
    h = remat.recomputed_swish(
        group_norm(self.num_groups, self.dtype, 'norm_out')(h))
    k = self.conv_out_kernel
    return linear.Conv(self.z_channels, (k, k), dtype=self.dtype,
                       name='conv_out')(h)


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
  mid_res_blocks: int = 2
  extra_block: bool = True
  res_conv_bias: bool = True
  shortcut_quirk: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    res = lambda c, h: ResBlock2D(c, self.num_groups, self.dropout_rate, self.
                                  dtype, self.res_conv_bias, self.shortcut_quirk
                                 )(h, train=train)
    width = self.channels * self.channel_multipliers[-1]
    h = linear.Conv(width, (3, 3), dtype=self.dtype, name='conv_in')(z)
    attention = (SpatialSelfAttention(self.num_groups, self.dtype)
                 if self.mid_attention else None)
    h = _mid_block(res, h, self.mid_res_blocks, attention)
    for level in reversed(range(len(self.channel_multipliers))):
      for _ in range(self.num_res_blocks + int(self.extra_block)):
        h = res(self.channels * self.channel_multipliers[level], h)
        if level in self.attention_levels:
          h = SpatialSelfAttention(self.num_groups, self.dtype)(h)
      if level != 0:
        h = Upsample2D(self.dtype)(h)
    return remat.recomputed_swish(
        group_norm(self.num_groups, self.dtype, 'norm_out')(h))


class VQGAN(nn.Module):
  """Image tokenizer: images [B, H, W, C] in [-1, 1] <-> tokens [B, H/f, W/f].

  Attributes:
    quantizer: any module from `vqlab.quantizers.build`.
    in_channels: image channels C.
    channels, channel_multipliers, num_res_blocks, attention_levels,
    mid_attention, z_channels, num_groups, dropout_rate, mid_res_blocks,
    decoder_extra_block, downsample, res_conv_bias, conv_in_bias,
    conv_out_kernel, quant_convs, shortcut_quirk, unit_pixels: see
    default_config.
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
  mid_res_blocks: int = 2
  decoder_extra_block: bool = True
  downsample: str = 'conv'
  res_conv_bias: bool = True
  conv_in_bias: bool = True
  conv_out_kernel: int = 3
  quant_convs: bool = True
  shortcut_quirk: bool = False
  unit_pixels: bool = False

  LAST_LAYER = 'to_pixels'  # Params of the layer the adaptive GAN weight uses.

  @property
  def downsample_factor(self) -> int:
    return 2**(len(self.channel_multipliers) - 1)

  def setup(self):
    shared = dict(channels=self.channels, channel_multipliers=tuple(
        self.channel_multipliers), num_res_blocks=self.num_res_blocks,
                  attention_levels=tuple(self.attention_levels),
                  mid_attention=self.mid_attention, num_groups=self.num_groups,
                  dropout_rate=self.dropout_rate, dtype=self.dtype,
                  mid_res_blocks=self.mid_res_blocks,
                  res_conv_bias=self.res_conv_bias,
                  shortcut_quirk=self.shortcut_quirk)
    self.encoder = Encoder(z_channels=self.z_channels,
                           downsample=self.downsample,
                           conv_in_bias=self.conv_in_bias,
                           conv_out_kernel=self.conv_out_kernel, **shared)
    if self.quant_convs:
      self.quant_conv = linear.Conv(self.quantizer.code_dim, (1, 1),
                                    dtype=self.dtype)
      self.post_quant_conv = linear.Conv(self.z_channels, (1, 1),
                                         dtype=self.dtype)
    self.decoder = Decoder(extra_block=self.decoder_extra_block, **shared)
    self.to_pixels = linear.Conv(self.in_channels, (3, 3), dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (indices [B, H/f, W/f], QuantizerOutput)."""
    checks.check_images(x, self.in_channels, self.downsample_factor, 'VQGAN')
    x = x.astype(self.dtype)
    if self.unit_pixels:
      x = (x + 1.0) * 0.5
    z = self.encoder(x, train=train)
    if self.quant_convs:
      z = self.quant_conv(z)
    out = self.quantizer(z.astype(jnp.float32), train=train)
    return out.indices, out

  def decoder_features(self, quantized: jax.Array, *,
                       train: bool = False) -> jax.Array:
    """Quantized latents [B, h, w, d] -> input of the last layer."""
    checks.check_latents(quantized, (4,), self.quantizer.code_dim, 'VQGAN')
    h = quantized.astype(self.dtype)
    if self.quant_convs:
      h = self.post_quant_conv(h)
    return self.decoder(h, train=train)

  def last_layer(self, features: jax.Array) -> jax.Array:
    """Decoder features -> images [B, H, W, C] (float32) in about [-1, 1]."""
    x = self.to_pixels(features).astype(jnp.float32)
    return x * 2.0 - 1.0 if self.unit_pixels else x

  def decode(self, quantized: jax.Array, *, train: bool = False) -> jax.Array:
    """Quantized latents [B, h, w, d] -> images [B, h*f, w*f, C]."""
    return self.last_layer(self.decoder_features(quantized, train=train))

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Tokens int [B, h, w] ([B, h, w, n_factors] for factorized codes) ->
    images [B, h*f, w*f, C] in about [-1, 1]."""
    checks.check_token_grid(indices,
                            3 + quantizer_base.num_index_axes(self.quantizer),
                            'VQGAN.decode_indices')
    return self.decode(self.quantizer.indices_to_codes(indices))

  def forward_with_features(self, x: jax.Array, *, train: bool = False,
                            encode_train: bool | None = None):
    """x [B, H, W, C] -> (reconstruction [B, H, W, C], QuantizerOutput,
    features [B, H, W, channels * mult[0]]): __call__'s outputs and the
    last layer's input features; `encode_train`: the encoder and quantizer's
    train mode (None: `train`; False for frozen ones, so the decoder trains
    on the tokens eval gives)."""
    _, out = self.encode(x,
                         train=train if encode_train is None else encode_train)
    features = self.decoder_features(out.quantized, train=train)
    return self.last_layer(features), out, features

  def __call__(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (reconstruction [B, H, W, C], QuantizerOutput)."""
    x_rec, out, _ = self.forward_with_features(x, train=train)
    return x_rec, out


def default_config() -> ml_collections.ConfigDict:
  """A small VQGAN that trains on CPU; configs/vqgan/ has the paper sizes."""
  config = ml_collections.ConfigDict()
  config.in_channels = 3  # Image channels.
  config.channels = 32  # Base width; level i has channels * mult[i].
  config.channel_multipliers = (1, 2, 2
                               )  # One entry per level; f = 2^(len - 1).
  # Res blocks per level (decoder: +1). They change the width to each
  # level's multiplier: with 0 the encoder stays `channels` wide (the tests'
  # smallest network).
  config.num_res_blocks = 1
  config.attention_levels = ()  # Levels (0 = full resolution) with attention.
  config.mid_attention = True  # Attention in the middle block.
  config.z_channels = 64  # Encoder output channels before quant_conv.
  config.num_groups = 8  # GroupNorm groups (taming: 32).
  config.dropout_rate = 0.0  # Dropout inside res blocks.
  # Taming's architecture; the converted MaskGIT VQGAN changes these.
  config.mid_res_blocks = 2  # Res blocks in each middle section.
  config.decoder_extra_block = True  # Decoder levels: num_res_blocks + 1.
  config.downsample = 'conv'  # 'conv' (stride 2) or 'avg_pool' (2x2).
  config.res_conv_bias = True  # Biases in the res-block convolutions.
  config.conv_in_bias = True  # Bias in the encoder's first conv.
  config.conv_out_kernel = 3  # Kernel of the encoder's last conv.
  # 1x1 convs around the quantizer; off: z_channels must be the code dim.
  config.quant_convs = True
  # MaskGIT: project the branch output (not the input) in the shortcut.
  config.shortcut_quirk = False
  # The network sees and makes [0, 1] pixels (MaskGIT); I/O stays [-1, 1].
  config.unit_pixels = False
  # Any registered quantizer.
  config.quantizer = quantizers.default_config('vq')
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> VQGAN:
  """Builds a VQGAN (and its quantizer) from a validated config."""
  if not config.channel_multipliers:
    raise ConfigError(f'{prefix}.channel_multipliers', 'needs at least 1 level')
  for level in config.attention_levels:
    if not 0 <= level < len(config.channel_multipliers):
      raise ConfigError(
          f'{prefix}.attention_levels',
          f'level {level} outside [0, {len(config.channel_multipliers)})')
  # GroupNorm runs at the levels' widths (channels * multiplier) only, never
  # on the z_channels-wide latent: latent-diffusion's vq-f8 (4 channels, 32
  # groups) is a valid taming VQModel.
  if config.channels % config.num_groups:
    raise ConfigError(
        f'{prefix}.num_groups',
        f'{config.num_groups} does not divide channels={config.channels}')
  if config.downsample not in DOWNSAMPLING:
    raise ConfigError(
        f'{prefix}.downsample', f'must be one of '
        f'{", ".join(DOWNSAMPLING)}, got {config.downsample!r}')
  for key in ('mid_res_blocks', 'conv_out_kernel'):
    if config[key] < 1:
      raise ConfigError(f'{prefix}.{key}', f'must be >= 1, got {config[key]}')
  quantizer = quantizers.build_validated(config.quantizer,
                                         prefix=f'{prefix}.quantizer')
  if not config.quant_convs and config.z_channels != quantizer.code_dim:
    raise ConfigError(
        f'{prefix}.z_channels',
        f'{config.z_channels} must equal the quantizer\'s code '
        f'dim {quantizer.code_dim} when quant_convs is off')
  return VQGAN(
      quantizer=quantizer, in_channels=config.in_channels,
      channels=config.channels, channel_multipliers=tuple(
          config.channel_multipliers), num_res_blocks=config.num_res_blocks,
      attention_levels=tuple(config.attention_levels),
      mid_attention=config.mid_attention, z_channels=config.z_channels,
      num_groups=config.num_groups, dropout_rate=config.dropout_rate,
      mid_res_blocks=config.mid_res_blocks,
      decoder_extra_block=config.decoder_extra_block,
      downsample=config.downsample, res_conv_bias=config.res_conv_bias,
      conv_in_bias=config.conv_in_bias, conv_out_kernel=config.conv_out_kernel,
      quant_convs=config.quant_convs, shortcut_quirk=config.shortcut_quirk,
      unit_pixels=config.unit_pixels, dtype=jnp.dtype(dtype))
