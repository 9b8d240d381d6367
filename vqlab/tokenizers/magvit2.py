"""MAGVIT-v2: a causal 3D CNN tokenizer of videos and images, one codebook.

Every convolution is causal in time (vqlab.nn.causal_conv) and every norm is
per frame, so latent frame j depends only on input frames <= s j
(s = temporal_factor). Frame 0 is encoded alone: an image [B, H, W, C] is a
1-frame video and its tokens are the first-frame tokens of any video starting
with it.

Encoder: causal conv_in -> per level [res blocks] -> stride-2 causal conv
(also stride 2 in time in the last `num_temporal_downsamples` downsamplings,
the paper's "temporal downsampling deferred to the last encoder blocks") ...
-> mid res blocks -> GroupNorm, swish -> 1x1x1 conv to the quantizer's
code_dim. 1 + s t frames of H x W -> 1 + t latent frames of H/f x W/f.
Decoder: causal conv_in -> mid res blocks -> per level (coarsest first)
[adaptive GroupNorm on z_q, res blocks] -> causal conv to C * 4 (* 2) channels,
depth-to-space, drop the first s_t - 1 frames ... -> GroupNorm, swish ->
`to_pixels` causal conv, the "last layer" of the adaptive GAN weight.

Open-MAGVIT2's image tokenizer (TencentARC, improved_model.py) is this
network with temporal_kernel=1, num_temporal_downsamples=0 and three options:
`conv_bias=False` (no biases in the res blocks and the encoder's conv_in),
`downsample_padding='symmetric'` (its stride-2 convs pad (1, 1), not TF's
(0, 1)) and `adaptive_norm='pooled'` (AdaGN conditioned on z_q's spatial std
and mean; see vqlab.nn.adaptive_norm).
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab import checks
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.nn import remat
from vqlab.nn import stack
from vqlab.nn.adaptive_norm import AdaptiveGroupNorm
from vqlab.nn.causal_conv import CausalConv3D
from vqlab.nn.resnet import frame_group_norm
from vqlab.nn.resnet import ResBlock3D
from vqlab.nn.sampling import CausalDownsample3D
from vqlab.nn.sampling import CausalUpsample3D
from vqlab.quantizers import base as quantizer_base


def temporal_downsamples(num_levels: int,
                         num_temporal: int) -> tuple[bool, ...]:
  """Whether each of the num_levels - 1 downsamplings also halves time: the
  last `num_temporal` do. The decoder's upsampling to level i mirrors entry i.
  """
  return tuple(
      i >= num_levels - 1 - num_temporal for i in range(num_levels - 1))


def _res_blocks(part: nn.Module) -> Callable[[int, int, jax.Array], jax.Array]:
  """res(channels, count, h): the next `count` ResBlock3Ds of the encoder or
  decoder `part` (inside its compact call), named ResBlock3D_<i> in call
  order. With `part.scan_blocks`, the blocks that keep the width run as one
  scan, `ResBlock3D_<first>_to_<last>` (vqlab.nn.stack)."""
  used = [0]  # Blocks named so far.

  def run(fields: dict[str, Any], count: int, h: jax.Array, scan: bool):
    first, last = used[0], used[0] + count - 1
    used[0] += count
    return stack.apply_blocks(
        ResBlock3D, fields, count, h, scan=scan, remat_policy=part.remat_policy,
        name=lambda i: f'ResBlock3D_{first + i}',
        scanned_name=stack.run_name('ResBlock3D', first, last))

  def res(channels: int, count: int, h: jax.Array) -> jax.Array:
    fields = dict(features=channels, num_groups=part.num_groups,
                  temporal_kernel=part.temporal_kernel, dtype=part.dtype,
                  use_bias=part.conv_bias)
    if count and h.shape[-1] != channels:  # A width change: one block alone.
      h = run(fields, 1, h, scan=False)
      count -= 1
    return run(fields, count, h, scan=part.scan_blocks and
               count > 1) if count else h

  return res


class Encoder(nn.Module):
  """x: [B, 1 + s t, H, W, C] -> z: [B, 1 + t, H/f, W/f, out_channels]."""
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  num_temporal_downsamples: int
  temporal_kernel: int
  num_groups: int
  out_channels: int
  dtype: Any
  conv_bias: bool = True
  downsample_padding: str = 'same'
  remat_policy: str = 'none'
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    res = _res_blocks(self)
    kernel = (self.temporal_kernel, 3, 3)
    h = CausalConv3D(self.channels, kernel, use_bias=self.conv_bias,
                     dtype=self.dtype, name='conv_in')(x)
    temporal = temporal_downsamples(len(self.channel_multipliers),
                                    self.num_temporal_downsamples)
    for level, multiplier in enumerate(self.channel_multipliers):
      h = res(self.channels * multiplier, self.num_res_blocks, h)
      if level < len(temporal) and self.downsample_padding == 'same':
        h = CausalDownsample3D(temporal[level], self.temporal_kernel,
                               self.dtype)(h)
      elif level < len(temporal):
        h = CausalConv3D(h.shape[-1], kernel,
                         (2 if temporal[level] else 1, 2, 2), dtype=self.dtype,
                         spatial_padding='symmetric',
                         name=f'downsample_{level}')(h)
    h = res(h.shape[-1], self.num_res_blocks, h)
    h = remat.recomputed_swish(
        frame_group_norm(self.num_groups, self.dtype, 'norm_out')(h))
    return CausalConv3D(self.out_channels, (1, 1, 1), dtype=self.dtype,
                        name='conv_out')(h)


class Decoder(nn.Module):
  """z_q: [B, 1 + t, h, w, d] -> features [B, 1 + s t, h f, w f, channels *
  mult[0]]. The final projection to pixels lives in `MAGVIT2.to_pixels`."""
  channels: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  num_temporal_downsamples: int
  temporal_kernel: int
  num_groups: int
  dtype: Any
  conv_bias: bool = True
  adaptive_norm: str = 'spatial'
  remat_policy: str = 'none'
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, z_q: jax.Array) -> jax.Array:
    res = _res_blocks(self)
    kernel = (self.temporal_kernel, 3, 3)
    width = self.channels * self.channel_multipliers[-1]
    h = CausalConv3D(width, kernel, dtype=self.dtype, name='conv_in')(z_q)
    h = res(width, self.num_res_blocks, h)
    temporal = temporal_downsamples(len(self.channel_multipliers),
                                    self.num_temporal_downsamples)
    for level in reversed(range(len(self.channel_multipliers))):
      h = AdaptiveGroupNorm(self.num_groups, dtype=self.dtype,
                            pooled=self.adaptive_norm == 'pooled')(h, z_q)
      h = res(self.channels * self.channel_multipliers[level],
              self.num_res_blocks, h)
      if level > 0:
        h = CausalUpsample3D(temporal[level - 1], self.temporal_kernel,
                             self.dtype)(h)
    return remat.recomputed_swish(
        frame_group_norm(self.num_groups, self.dtype, 'norm_out')(h))


class MAGVIT2(nn.Module):
  """Video and image tokenizer, in [-1, 1]:
  videos [B, 1 + s t, H, W, C] <-> tokens [B, 1 + t, H/f, W/f],
  images [B, H, W, C] <-> tokens [B, H/f, W/f]
  (plus a trailing factor axis for factorized codes), s = temporal_factor,
  f = downsample_factor. Every method returns the rank it was given.

  Attributes:
    quantizer: any module from `vqlab.quantizers.build`.
    in_channels: pixel channels C.
    channels, channel_multipliers, num_res_blocks, num_temporal_downsamples,
    temporal_kernel, num_groups, conv_bias, downsample_padding,
    adaptive_norm: see default_config.
    dtype: compute dtype (parameters stay float32).
    remat_policy: recompute res-block activations in the backward pass
      (vqlab/nn/remat.py).
    scan_blocks: run each stage's res blocks of one width as one nn.scan
      (vqlab/nn/stack.py). With remat, the scan keeps only each block's
      input: what makes remat save memory (benchmarks/README.md).
  """
  quantizer: nn.Module
  in_channels: int = 3
  channels: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 4
  num_temporal_downsamples: int = 2
  temporal_kernel: int = 3
  num_groups: int = 32
  dtype: Any = jnp.float32
  conv_bias: bool = True
  downsample_padding: str = 'same'
  adaptive_norm: str = 'spatial'
  remat_policy: str = 'none'
  scan_blocks: bool = False

  LAST_LAYER = 'to_pixels'  # Params of the layer the adaptive GAN weight uses.

  @property
  def downsample_factor(self) -> int:
    """Spatial factor f: H -> H / f."""
    return 2**(len(self.channel_multipliers) - 1)

  @property
  def temporal_factor(self) -> int:
    """s: 1 + s t frames -> 1 + t latent frames."""
    return 2**self.num_temporal_downsamples

  def setup(self):
    shared = dict(channels=self.channels, channel_multipliers=tuple(
        self.channel_multipliers), num_res_blocks=self.num_res_blocks,
                  num_temporal_downsamples=self.num_temporal_downsamples,
                  temporal_kernel=self.temporal_kernel,
                  num_groups=self.num_groups, dtype=self.dtype,
                  remat_policy=self.remat_policy, scan_blocks=self.scan_blocks)
    self.encoder = Encoder(out_channels=self.quantizer.code_dim,
                           conv_bias=self.conv_bias,
                           downsample_padding=self.downsample_padding, **shared)
    self.decoder = Decoder(conv_bias=self.conv_bias,
                           adaptive_norm=self.adaptive_norm, **shared)
    self.to_pixels = CausalConv3D(self.in_channels,
                                  (self.temporal_kernel, 3, 3),
                                  dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False):
    """x: [B, T, H, W, C] or [B, H, W, C] -> (indices, QuantizerOutput).

    indices: int32 [B, 1 + (T-1)/s, H/f, W/f] for videos, [B, H/f, W/f] for
    images (plus [..., n_factors] for factorized codes); the QuantizerOutput
    has the same leading axes.
    """
    checks.check_videos(x, self.in_channels, self.downsample_factor,
                        self.temporal_factor, 'MAGVIT2')
    image = x.ndim == 4
    z = self.encoder((x[:, None] if image else x).astype(self.dtype))
    out = self.quantizer((z[:, 0] if image else z).astype(jnp.float32),
                         train=train)
    return out.indices, out

  def decoder_features(self, quantized: jax.Array, *,
                       train: bool = False) -> jax.Array:
    """Quantized latents [B, t', h, w, d] or [B, h, w, d] -> input of the last
    layer, [B, 1 + s (t'-1), h f, w f, channels * mult[0]] or [B, h f, w f, .].
    """
    del train  # No dropout or batch statistics.
    checks.check_latents(quantized, (4, 5), self.quantizer.code_dim, 'MAGVIT2')
    if quantized.ndim == 4:
      return self.decoder_features(quantized[:, None])[:, 0]
    return self.decoder(quantized.astype(self.dtype))

  def last_layer(self, features: jax.Array) -> jax.Array:
    """Decoder features [B, T, H, W, c] or [B, H, W, c] -> pixels of the same
    rank, C channels (float32)."""
    if features.ndim == 4:
      return self.last_layer(features[:, None])[:, 0]
    return self.to_pixels(features).astype(jnp.float32)

  def decode(self, quantized: jax.Array, *, train: bool = False) -> jax.Array:
    """Quantized latents [B, t', h, w, d] -> videos [B, 1 + s (t'-1), h f,
    w f, C]; [B, h, w, d] -> images [B, h f, w f, C]."""
    return self.last_layer(self.decoder_features(quantized, train=train))

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Tokens int [B, t', h, w] (videos) or [B, h, w] (images), plus
    [..., n_factors] for factorized codes -> pixels in about [-1, 1] as
    `decode`."""
    extra = quantizer_base.num_index_axes(self.quantizer)
    checks.check_token_grid(indices, (3 + extra, 4 + extra),
                            'MAGVIT2.decode_indices')
    return self.decode(self.quantizer.indices_to_codes(indices))

  def forward_with_features(self, x: jax.Array, *, train: bool = False,
                            encode_train: bool | None = None):
    """x [B, T, H, W, C] or [B, H, W, C] -> (reconstruction like x,
    QuantizerOutput, features [B, T, H, W, channels * mult[0]] or
    [B, H, W, channels * mult[0]]): __call__'s outputs and the last layer's
    input features; `encode_train`: the encoder and quantizer's train mode
    (None: `train`; False for frozen ones, so the decoder trains on the
    tokens eval gives)."""
    _, out = self.encode(x,
                         train=train if encode_train is None else encode_train)
    features = self.decoder_features(out.quantized, train=train)
    return self.last_layer(features), out, features

  def __call__(self, x: jax.Array, *, train: bool = False):
    """x: [B, T, H, W, C] or [B, H, W, C] -> (reconstruction like x,
    QuantizerOutput)."""
    x_rec, out, _ = self.forward_with_features(x, train=train)
    return x_rec, out


def default_config() -> ml_collections.ConfigDict:
  """A small MAGVIT-v2 that runs on CPU. The paper's video tokenizer is about
  channels=128, channel_multipliers=(1, 2, 2, 4), num_res_blocks=4,
  num_temporal_downsamples=2, num_groups=32 (17 frames of 128^2 -> 5 x 16^2).
  """
  config = ml_collections.ConfigDict()
  config.in_channels = 3  # Pixel channels.
  config.channels = 32  # Base width; level i: channels*mult[i].
  config.channel_multipliers = (1, 2, 2)  # One per level; f = 2^(len - 1).
  # Res blocks per level and in the middle. They change the width to each
  # level's multiplier: with 0 the encoder stays `channels` wide and the
  # decoder channels * mult[-1] (the tests' smallest network).
  config.num_res_blocks = 1
  # Last downsamplings that halve time too: s = 2^this; videos have 1 + s k
  # frames.
  config.num_temporal_downsamples = 1
  config.temporal_kernel = 3  # k_t of all causal convs (1: per frame).
  config.num_groups = 8  # GroupNorm groups (paper: 32).
  # Open-MAGVIT2's image tokenizer: False, 'symmetric', 'pooled'.
  config.conv_bias = True  # Biases in res blocks and encoder conv_in.
  config.downsample_padding = 'same'  # Stride-2 convs: 'same' (TF) or 'symmetric'.
  config.adaptive_norm = 'spatial'  # AdaGN on z_q per position, or 'pooled'.
  quantizer = quantizers.default_config('lfq')  # Any registered quantizer.
  quantizer.codebook_size = 2**18  # The paper's K: 18-channel latents.
  quantizer.factor_bits = (9, 9)  # Two 2^9 sub-tokens (factorized heads).
  config.quantizer = quantizer
  # Recompute res-block activations in the backward pass: 'none', 'full' or
  # 'dots' (vqlab/nn/remat.py); saves memory on long videos.
  config.remat_policy = 'none'
  # True: each stage's res blocks of one width run as one nn.scan (params
  # `ResBlock3D_<a>_to_<b>` stacked; with remat, only each block's input is
  # kept); False: the published layout `ResBlock3D_<i>`. Same numbers.
  config.scan_blocks = False
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> MAGVIT2:
  """Builds a MAGVIT2 (and its quantizer) from a validated config."""
  remat.check_policy(config.remat_policy, f'{prefix}.remat_policy')
  levels = len(config.channel_multipliers)
  if levels < 1:
    raise ConfigError(f'{prefix}.channel_multipliers', 'needs at least 1 level')
  if not 0 <= config.num_temporal_downsamples <= levels - 1:
    raise ConfigError(
        f'{prefix}.num_temporal_downsamples',
        f'{config.num_temporal_downsamples} outside [0, '
        f'{levels - 1}] (one per spatial downsampling at most)')
  if config.temporal_kernel < 1:
    raise ConfigError(f'{prefix}.temporal_kernel',
                      f'must be >= 1, got {config.temporal_kernel}')
  if config.temporal_kernel < 2 and config.num_temporal_downsamples:
    # Each stride-2 conv would read every other frame: the frames between
    # never reach the tokens.
    raise ConfigError(
        f'{prefix}.temporal_kernel',
        f'{config.temporal_kernel}, but with num_temporal_downsamples = '
        f'{config.num_temporal_downsamples} the encoder never sees the frames '
        'between its time strides: use >= 2 (the paper: 3)')
  for multiplier in (1, *config.channel_multipliers):
    if (config.channels * multiplier) % config.num_groups:
      raise ConfigError(
          f'{prefix}.num_groups',
          f'{config.num_groups} does not divide the width '
          f'{config.channels * multiplier} = channels * '
          f'{multiplier}')
  for key, allowed in (('downsample_padding', ('same', 'symmetric')),
                       ('adaptive_norm', ('spatial', 'pooled'))):
    if config[key] not in allowed:
      raise ConfigError(f'{prefix}.{key}',
                        f'{config[key]!r} is not one of {allowed}')
  quantizer = quantizers.build_validated(config.quantizer,
                                         prefix=f'{prefix}.quantizer')
  return MAGVIT2(
      quantizer=quantizer, in_channels=config.in_channels,
      channels=config.channels, channel_multipliers=tuple(
          config.channel_multipliers), num_res_blocks=config.num_res_blocks,
      num_temporal_downsamples=config.num_temporal_downsamples,
      temporal_kernel=config.temporal_kernel, num_groups=config.num_groups,
      dtype=jnp.dtype(dtype), conv_bias=config.conv_bias,
      downsample_padding=config.downsample_padding,
      adaptive_norm=config.adaptive_norm, remat_policy=config.remat_policy,
      scan_blocks=bool(config.scan_blocks))
