"""TiTok (Yu et al. 2024, "An Image is Worth 32 Tokens"): a ViT tokenizer of
images into a 1D sequence of K tokens, independent of the image size.

Encoder: patches (f = patch_size) + grid position embeddings, then K learned
latent tokens (+ their own position embeddings), LayerNorm, pre-LN ViT; the K
latent outputs are projected to the quantizer's code_dim and quantized.
Decoder: quantized tokens -> Dense to the decoder width (+ latent position
embeddings), then (H/f)(W/f) copies of a learned mask token (+ grid position
embeddings), LayerNorm, ViT; the mask positions are read back as
[B, H/f, W/f, width] features and the output head makes
  'pixels':      a Dense to f*f*C per position, unpatchified to [B, H, W, C]
                 (`to_pixels`, the "last layer" of the adaptive GAN weight;
                 the release's single-stage pixel decoders add a 3x3 conv
                 after the unpatchify, which this head does not have);
  'proxy_codes': logits [B, H/f, W/f, proxy_codebook_size] over the codes of
                 a 2D VQGAN (`to_proxy_logits`, after a tanh hidden layer
                 `proxy_hidden` if proxy_head_hidden > 0; stage 1 of the
                 paper);
  'proxy_pixels': those logits, softmax-weighted over the codebook of an
                 embedded MaskGIT-style VQGAN (`pixel_vqgan`, built from
                 config.pixel_decoder; only its quantizer codebook, decoder
                 and to_pixels are used), decoded to images by that VQGAN's
                 decoder: the released TiTok checkpoints.

Parameter tree: {'encoder', 'quantizer' (only for quantizers with params),
'decoder', 'to_pixels' | 'to_proxy_logits' (+ 'proxy_hidden', 'pixel_vqgan')};
stage 2 of the paper freezes 'encoder' and 'quantizer' and trains 'decoder'
and a fresh 'to_pixels'. The paper's encoder and decoder also carry a
CLIP-style class token in front of the sequence (`class_token`, off by
default: the latent tokens already summarize the image).

Options for the released PyTorch checkpoints (bytedance/1d-tokenizer):
LayerNorm epsilon 1e-5 and erf GELU; `legacy_latent_layout` reproduces its
encoder's "is_legacy" reshape of the K latent outputs [K, width] to
[width, K] (a reinterpretation of memory, not a transpose) before the 1x1
projection to the code dim; `unit_pixels`: the encoder sees [0, 1] pixels.

Initialization is vqlab's ViT's, not the release's: position embeddings and
the latent, mask and class tokens N(0, 0.02^2) (the release: width^-0.5,
0.031-0.044 for L-S), kernels LeCun normal (the release: truncated N(0,
0.02^2), xavier for attention's in-projection), one class token param (the
release adds a class embedding to position 0). Converted weights compute
the same function; a model trained from scratch starts from other scales.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab import checks
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn import transformer
from vqlab.nn import vit
from vqlab.nn.transformer import Transformer
from vqlab.quantizers import base as quantizer_base
from vqlab.tokenizers import vqgan

DECODER_OUTPUTS = ('pixels', 'proxy_codes', 'proxy_pixels')
MODEL_SIZES = ('tiny', 'S', 'B', 'L')


class ViTSize(NamedTuple):
  """Width, depth, heads and MLP width of one ViT."""
  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int


# The paper's encoder and decoder sizes (ViT-S/B/L); 'tiny' reads the config.
PAPER_SIZES = {
    'S': ViTSize(512, 8, 8, 2048),
    'B': ViTSize(768, 12, 12, 3072),
    'L': ViTSize(1024, 24, 16, 4096)
}


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
  return (int(size), int(size)) if isinstance(size, int) else (int(size[0]),
                                                               int(size[1]))


def _vit(part: 'TiTokEncoder | TiTokDecoder') -> Transformer:
  """The transformer of the encoder or decoder `part`, from its fields."""
  size = part.size
  return Transformer(size.num_layers, size.num_heads, size.mlp_dim,
                     part.dropout_rate, dtype=part.dtype,
                     layer_norm_epsilon=part.layer_norm_epsilon,
                     exact_gelu=part.exact_gelu, scan_layers=part.scan_layers,
                     remat_policy=part.remat_policy, name='transformer')


def _with_class_token(module: nn.Module, h: jax.Array) -> jax.Array:
  """[B, L, D] -> [B, 1 + L, D] with the learned `class_token` first (its
  position embedding is folded into it)."""
  token = module.param('class_token', vit.POSITION_INIT, (h.shape[-1],))
  token = linear.broadcast_param(token, (h.shape[0], 1, h.shape[-1]), h.dtype)
  return jnp.concatenate([token, h], axis=1)


class TiTokEncoder(nn.Module):
  """x: [B, H, W, C] -> latents [B, K, out_dim] (before quantization)."""
  patch_size: int
  size: ViTSize
  num_latent_tokens: int
  out_dim: int
  init_grid: tuple[int, int]
  dropout_rate: float
  dtype: Any
  class_token: bool = False
  layer_norm_epsilon: float = 1e-6
  exact_gelu: bool = False
  legacy_latent_layout: bool = False
  scan_layers: bool = False
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    k, width = self.num_latent_tokens, self.size.width
    grid = (x.shape[1] // self.patch_size, x.shape[2] // self.patch_size)
    patches = vit.PatchEmbed(self.patch_size, width, self.dtype,
                             name='patch_embed')(x)
    patches = vit.GridPositionEmbedding(self.init_grid,
                                        name='grid_position')(patches, grid)
    latents = self.param('latent_tokens', vit.POSITION_INIT, (k, width))
    latents = linear.broadcast_param(latents, (x.shape[0], k, width),
                                     self.dtype)
    latents = vit.TokenPositionEmbedding(k, name='latent_position')(latents)
    h = jnp.concatenate([patches, latents], axis=1)
    if self.class_token:
      h = _with_class_token(self, h)
    h = norms.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype,
                        name='norm_pre')(h)
    h = _vit(self)(h, train=train)[:, -k:]
    if self.legacy_latent_layout:
      h = h.reshape(h.shape[0], width, k).transpose(0, 2, 1)
    return linear.Dense(self.out_dim, dtype=self.dtype, name='to_code')(h)


class TiTokDecoder(nn.Module):
  """Quantized tokens [B, K, d], grid (h, w) -> features [B, h, w, width]."""
  size: ViTSize
  num_latent_tokens: int
  init_grid: tuple[int, int]
  dropout_rate: float
  dtype: Any
  class_token: bool = False
  layer_norm_epsilon: float = 1e-6
  exact_gelu: bool = False
  scan_layers: bool = False
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, quantized: jax.Array, grid: tuple[int, int], *,
               train: bool) -> jax.Array:
    width, batch = self.size.width, quantized.shape[0]
    z = linear.Dense(width, dtype=self.dtype, name='from_code')(quantized)
    z = vit.TokenPositionEmbedding(self.num_latent_tokens,
                                   name='latent_position')(z)
    mask = self.param('mask_token', vit.POSITION_INIT, (width,))
    mask = linear.broadcast_param(mask, (batch, grid[0] * grid[1], width),
                                  self.dtype)
    mask = vit.GridPositionEmbedding(self.init_grid, name='grid_position')(mask,
                                                                           grid)
    h = jnp.concatenate([mask, z], axis=1)
    if self.class_token:
      h = _with_class_token(self, h)
    h = norms.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype,
                        name='norm_pre')(h)
    h = _vit(self)(h, train=train)
    start = int(self.class_token)
    return h[:, start:start + grid[0] * grid[1]].reshape(batch, *grid, width)


class TiTok(nn.Module):
  """1D image tokenizer: images [B, H, W, C] in [-1, 1] <-> tokens [B, K].

  Any H, W divisible by patch_size f encode to K tokens; decoding needs the
  output grid (H/f, W/f), by default image_size // f (`grid_size` argument).

  Attributes:
    quantizer: any module from `vqlab.quantizers.build`.
    in_channels: image channels C.
    image_size: training resolution (int or (H, W)): the grid the position
      embeddings are made for and the default decoding grid.
    patch_size: f.
    num_latent_tokens: K.
    encoder_size, decoder_size: the two ViTs.
    decoder_output: 'pixels', 'proxy_codes' or 'proxy_pixels' (see the
      module docstring).
    proxy_codebook_size: codes of the proxy tokenizer ('proxy_*').
    dropout_rate: dropout inside both transformers.
    dtype: compute dtype (parameters stay float32).
    class_token, layer_norm_epsilon, exact_gelu, legacy_latent_layout,
    unit_pixels, proxy_head_hidden: see default_config.
    pixel_vqgan: the VQGAN whose codebook and decoder 'proxy_pixels' uses.
    scan_layers, remat_policy: how both ViTs' blocks run
      (vqlab.nn.transformer).
  """
  quantizer: nn.Module
  in_channels: int = 3
  image_size: Any = 256
  patch_size: int = 16
  num_latent_tokens: int = 32
  encoder_size: ViTSize = PAPER_SIZES['B']
  decoder_size: ViTSize = PAPER_SIZES['B']
  decoder_output: str = 'pixels'
  proxy_codebook_size: int = 1024
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  class_token: bool = False
  layer_norm_epsilon: float = 1e-6
  exact_gelu: bool = False
  legacy_latent_layout: bool = False
  unit_pixels: bool = False
  proxy_head_hidden: int = 0
  pixel_vqgan: nn.Module | None = None
  scan_layers: bool = False
  remat_policy: str = 'none'

  LAST_LAYER = 'to_pixels'  # Params of the layer the adaptive GAN weight uses.

  @property
  def downsample_factor(self) -> int:
    """The patch size f (H, W must be divisible by it)."""
    return self.patch_size

  @property
  def grid_size(self) -> tuple[int, int]:
    """Default decoding grid (H/f, W/f) of `image_size`."""
    height, width = _pair(self.image_size)
    return height // self.patch_size, width // self.patch_size

  def setup(self):
    if self.decoder_output not in DECODER_OUTPUTS:
      raise ValueError(f'TiTok: decoder_output must be one of '
                       f'{DECODER_OUTPUTS}, got {self.decoder_output!r}')
    if self.decoder_output == 'proxy_pixels' and self.pixel_vqgan is None:
      raise ValueError("TiTok: decoder_output='proxy_pixels' needs a "
                       'pixel_vqgan')
    shared = dict(num_latent_tokens=self.num_latent_tokens,
                  init_grid=self.grid_size, dropout_rate=self.dropout_rate,
                  dtype=self.dtype, class_token=self.class_token,
                  layer_norm_epsilon=self.layer_norm_epsilon,
                  exact_gelu=self.exact_gelu, scan_layers=self.scan_layers,
                  remat_policy=self.remat_policy)
    self.encoder = TiTokEncoder(patch_size=self.patch_size,
                                size=ViTSize(*self.encoder_size),
                                out_dim=self.quantizer.code_dim,
                                legacy_latent_layout=self.legacy_latent_layout,
                                **shared)
    self.decoder = TiTokDecoder(size=ViTSize(*self.decoder_size), **shared)
    if self.decoder_output == 'pixels':
      self.to_pixels = linear.Dense(self.patch_size**2 * self.in_channels,
                                    dtype=self.dtype)
    else:
      # The proxy-code head computes in float32, as the generators' heads:
      # bfloat16 logits tie (1.6% of a tiny model's top codes) and pick
      # other argmax codes.
      if self.proxy_head_hidden:
        self.proxy_hidden = linear.Dense(self.proxy_head_hidden,
                                         dtype=jnp.float32)
      self.to_proxy_logits = linear.Dense(self.proxy_codebook_size,
                                          dtype=jnp.float32)

  def _grid(self, grid_size) -> tuple[int, int]:
    grid = self.grid_size if grid_size is None else _pair(grid_size)
    if min(grid) < 1:
      raise ValueError(f'TiTok: grid_size must be positive, got {grid}')
    return grid

  def encode(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (indices int32 [B, K] (plus [..., n_factors] for
    factorized codes), QuantizerOutput over [B, K])."""
    checks.check_images(x, self.in_channels, self.patch_size,
                        f'TiTok (patch_size {self.patch_size})')
    x = x.astype(self.dtype)
    if self.unit_pixels:
      x = (x + 1.0) * 0.5
    z = self.encoder(x, train=train)
    out = self.quantizer(z.astype(jnp.float32), train=train)
    return out.indices, out

  def decoder_features(self, quantized: jax.Array, *, grid_size=None,
                       train: bool = False) -> jax.Array:
    """Quantized tokens [B, K, d] -> features [B, h, w, decoder width] for the
    grid (h, w) = grid_size (int or pair; default image_size // f)."""
    k, d = self.num_latent_tokens, self.quantizer.code_dim
    if quantized.ndim != 3 or quantized.shape[1:] != (k, d):
      raise ValueError(f'TiTok: quantized tokens must have shape [B, {k}, {d}]'
                       f', got {tuple(quantized.shape)}')
    return self.decoder(quantized.astype(self.dtype), self._grid(grid_size),
                        train=train)

  def last_layer(self, features: jax.Array) -> jax.Array:
    """'pixels' mode: features [B, h, w, width] -> images [B, h f, w f, C]
    (float32)."""
    if self.decoder_output != 'pixels':
      raise ValueError("TiTok.last_layer: only decoder_output='pixels' has a "
                       f'pixel layer, this model has {self.decoder_output!r}')
    patches = self.to_pixels(features).astype(jnp.float32)
    x = vit.unpatchify(patches, self.patch_size, self.in_channels)
    return x * 2.0 - 1.0 if self.unit_pixels else x

  def _proxy_logits(self, features: jax.Array) -> jax.Array:
    """Features [B, h, w, width] -> logits [B, h, w, K_proxy] (float32)."""
    features = features.astype(jnp.float32)
    if self.proxy_head_hidden:
      features = jnp.tanh(self.proxy_hidden(features))
    return self.to_proxy_logits(features)

  def _proxy_pixels(self, logits: jax.Array) -> jax.Array:
    """Logits [B, h, w, K_proxy] -> the pixel VQGAN's decoding of the
    softmax-weighted mean of its codes: images [B, h f, w f, C]."""
    codebook = quantizer_base.every_code(self.pixel_vqgan.quantizer)
    probs = jax.nn.softmax(logits, axis=-1)
    return self.pixel_vqgan.decode(probs @ codebook.astype(jnp.float32))

  def output_head(self, features: jax.Array) -> jax.Array:
    """Features [B, h, w, width] -> images [B, h f, w f, C] ('pixels',
    'proxy_pixels') or proxy-code logits [B, h, w, proxy_codebook_size]
    ('proxy_codes'), float32."""
    if self.decoder_output == 'pixels':
      return self.last_layer(features)
    logits = self._proxy_logits(features)
    if self.decoder_output == 'proxy_codes':
      return logits
    return self._proxy_pixels(logits)

  def decode(self, quantized: jax.Array, *, grid_size=None,
             train: bool = False) -> jax.Array:
    """Quantized tokens [B, K, d] -> images [B, h f, w f, C] ('pixels') or
    logits [B, h, w, proxy_codebook_size] ('proxy_codes'); (h, w) as in
    `decoder_features`."""
    return self.output_head(
        self.decoder_features(quantized, grid_size=grid_size, train=train))

  def decode_logits(self, quantized: jax.Array, *, grid_size=None,
                    train: bool = False) -> jax.Array:
    """'proxy_*' modes: quantized [B, K, d] -> logits [B, h, w, K_proxy]."""
    if self.decoder_output == 'pixels':
      raise ValueError("TiTok.decode_logits: needs decoder_output="
                       "'proxy_codes' or 'proxy_pixels', this model has "
                       f'{self.decoder_output!r}')
    return self._proxy_logits(
        self.decoder_features(quantized, grid_size=grid_size, train=train))

  def decode_indices(self, indices: jax.Array, *, grid_size=None) -> jax.Array:
    """Tokens int [B, K] ([B, K, n_factors] for factorized codes) -> what
    `decode` returns (images in about [-1, 1] for 'pixels')."""
    checks.check_token_grid(indices,
                            2 + quantizer_base.num_index_axes(self.quantizer),
                            'TiTok.decode_indices')
    if indices.shape[1] != self.num_latent_tokens:
      raise ValueError(f'TiTok.decode_indices: expected '
                       f'{self.num_latent_tokens} tokens per image, got shape '
                       f'{tuple(indices.shape)}')
    return self.decode(self.quantizer.indices_to_codes(indices),
                       grid_size=grid_size)

  def forward_with_features(self, x: jax.Array, *, train: bool = False,
                            encode_train: bool | None = None):
    """x [B, H, W, C] -> (output, QuantizerOutput, features [B, H/f, W/f,
    width]): __call__'s outputs (output: the reconstruction [B, H, W, C] or
    proxy logits [B, H/f, W/f, K_proxy]) and the decoder features, the last
    layer's input; `encode_train`: the encoder and quantizer's train mode
    (None: `train`; False for frozen ones, so the decoder trains on the
    tokens eval gives)."""
    _, out = self.encode(x,
                         train=train if encode_train is None else encode_train)
    grid = (x.shape[1] // self.patch_size, x.shape[2] // self.patch_size)
    features = self.decoder_features(out.quantized, grid_size=grid, train=train)
    return self.output_head(features), out, features

  def __call__(self, x: jax.Array, *, train: bool = False):
    """x: [B, H, W, C] -> (reconstruction [B, H, W, C] or proxy logits
    [B, H/f, W/f, K_proxy], QuantizerOutput); decodes on x's own grid."""
    output, out, _ = self.forward_with_features(x, train=train)
    return output, out


def default_config() -> ml_collections.ConfigDict:
  """A tiny TiTok that runs on CPU. The paper: image_size=256, patch_size=16,
  num_latent_tokens=32 (L), 64 (B) or 128 (S) with model_size 'L', 'B', 'S',
  a vq quantizer of 4096 l2-normalized 12-dim codes and, in stage 1,
  decoder_output='proxy_codes' over a 1024-code MaskGIT VQGAN."""
  config = ml_collections.ConfigDict()
  config.in_channels = 3  # Image channels.
  # Training size: the position-embedding grid; default decoding grid: this / f.
  config.image_size = 32
  config.patch_size = 8  # f; images need H, W divisible by it.
  config.num_latent_tokens = 8  # K: tokens per image (paper: 32/64/128).
  # 'S', 'B', 'L': the paper's ViTs for both encoder and decoder (S: 512 wide, 8
  # layers, 8 heads; B: 768, 12, 12; L: 1024, 24, 16; mlp 4x); 'tiny': the two
  # sections below.
  config.model_size = 'tiny'
  config.encoder = ml_collections.ConfigDict()
  config.encoder.width = 32  # Token width ('tiny' only).
  config.encoder.num_layers = 2  # Transformer blocks ('tiny' only).
  config.encoder.num_heads = 2  # Attention heads ('tiny' only).
  config.encoder.mlp_dim = 64  # MLP hidden width ('tiny' only).
  config.decoder = ml_collections.ConfigDict(config.encoder.to_dict())
  config.dropout_rate = 0.0  # Dropout inside both transformers.
  # 'pixels', 'proxy_codes' (stage 1) or 'proxy_pixels' (released checkpoints).
  config.decoder_output = 'pixels'
  config.proxy_codebook_size = 1024  # Codes of the proxy VQGAN (proxy_*).
  # >0: tanh hidden layer before the proxy logits (released TiTok: 2 * width).
  config.proxy_head_hidden = 0
  config.class_token = False  # Class token first in both ViTs (paper).
  config.layer_norm_epsilon = 1e-6  # PyTorch checkpoints: 1e-5.
  config.exact_gelu = False  # erf GELU (PyTorch checkpoints).
  # The released encoder's [K, D] -> [D, K] reshape before the code projection.
  config.legacy_latent_layout = False
  # The encoder sees [0, 1] pixels (and 'pixels' makes them); I/O [-1, 1].
  config.unit_pixels = False
  # 'proxy_pixels': the VQGAN whose codebook and decoder make the pixels
  # (its downsampling factor must be patch_size, its codebook
  # proxy_codebook_size codes; its encoder is never built).
  config.pixel_decoder = vqgan.default_config()
  quantizer = quantizers.default_config('vq')  # Any registered quantizer.
  quantizer.codebook_size = 256  # Paper: 4096.
  quantizer.embedding_dim = 12  # Paper: 12.
  quantizer.l2_normalize = True  # Paper: cosine lookup.
  config.quantizer = quantizer
  transformer.add_stack_config(config)
  return config


def _size(config: ml_collections.ConfigDict, which: str,
          prefix: str) -> ViTSize:
  section = config[which]
  if config.model_size != 'tiny':
    paper, default = PAPER_SIZES[config.model_size], default_config()[which]
    for key, value in section.items():
      if value not in (default[key], getattr(paper, key)):
        raise ConfigError(
            f'{prefix}.{which}.{key}',
            f'{value!r}, but model_size {config.model_size!r} sets the size '
            f'({key} {getattr(paper, key)}): set model_size = \'tiny\' for a '
            f'size of your own, or leave it at {default[key]!r}')
    return paper
  size = ViTSize(section.width, section.num_layers, section.num_heads,
                 section.mlp_dim)
  for key, value in size._asdict().items():
    if value < 1:
      raise ConfigError(f'{prefix}.{which}.{key}', f'must be >= 1, got {value}')
  if size.width % size.num_heads:
    raise ConfigError(f'{prefix}.{which}.num_heads',
                      f'{size.num_heads} does not divide width {size.width}')
  return size


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> TiTok:
  """Builds a TiTok (and its quantizer) from a validated config."""
  if config.model_size not in MODEL_SIZES:
    raise ConfigError(
        f'{prefix}.model_size', f'must be one of {", ".join(MODEL_SIZES)}, got '
        f'{config.model_size!r}')
  if config.decoder_output not in DECODER_OUTPUTS:
    raise ConfigError(
        f'{prefix}.decoder_output',
        f'must be one of {", ".join(DECODER_OUTPUTS)}, got '
        f'{config.decoder_output!r}')
  for key in ('patch_size', 'num_latent_tokens', 'proxy_codebook_size',
              'in_channels'):
    if config[key] < 1:
      raise ConfigError(f'{prefix}.{key}', f'must be >= 1, got {config[key]}')
  if config.image_size < config.patch_size or \
      config.image_size % config.patch_size:
    raise ConfigError(
        f'{prefix}.image_size',
        f'{config.image_size} is not a positive multiple of '
        f'patch_size {config.patch_size}')
  encoder_size = _size(config, 'encoder', prefix)
  decoder_size = _size(config, 'decoder', prefix)
  quantizer = quantizers.build_validated(config.quantizer,
                                         prefix=f'{prefix}.quantizer')
  if config.proxy_head_hidden < 0:
    raise ConfigError(f'{prefix}.proxy_head_hidden',
                      f'must be >= 0, got {config.proxy_head_hidden}')
  pixel_vqgan = None
  if config.decoder_output == 'proxy_pixels':
    pixel_vqgan = vqgan.build(config.pixel_decoder, dtype=dtype,
                              prefix=f'{prefix}.pixel_decoder')
    if pixel_vqgan.downsample_factor != config.patch_size:
      raise ConfigError(
          f'{prefix}.pixel_decoder.channel_multipliers',
          f'upsample by {pixel_vqgan.downsample_factor}, not by '
          f'patch_size {config.patch_size}')
    codes = getattr(pixel_vqgan.quantizer, 'codebook_size', None)
    if codes != config.proxy_codebook_size:
      raise ConfigError(
          f'{prefix}.proxy_codebook_size',
          f'{config.proxy_codebook_size}, but the pixel decoder\'s '
          f'{config.pixel_decoder.quantizer.name} quantizer has {codes} codes')
  return TiTok(
      quantizer=quantizer, in_channels=config.in_channels,
      image_size=config.image_size, patch_size=config.patch_size,
      num_latent_tokens=config.num_latent_tokens, encoder_size=encoder_size,
      decoder_size=decoder_size, decoder_output=config.decoder_output,
      proxy_codebook_size=config.proxy_codebook_size,
      dropout_rate=config.dropout_rate, dtype=jnp.dtype(dtype),
      class_token=config.class_token,
      layer_norm_epsilon=config.layer_norm_epsilon,
      exact_gelu=config.exact_gelu,
      legacy_latent_layout=config.legacy_latent_layout,
      unit_pixels=config.unit_pixels,
      proxy_head_hidden=config.proxy_head_hidden, pixel_vqgan=pixel_vqgan,
      **transformer.stack_options(config, prefix))
