"""The FID InceptionV3 of pytorch-fid, in linen.

Reproduces `pytorch_fid.inception.InceptionV3([3], resize_input=True,
normalize_input=True)`, i.e. torchvision's Inception3 (1008 classes, no
auxiliary head) with pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks: their
3x3 average pools skip the padding (TF's behaviour) and the last block max
pools. Weights: vqlab.weights.inception, which folds each BatchNorm
(inference mode, eps 1e-3) into the bias of the convolution before it, so
every BasicConv2d of torchvision is here one biased conv + ReLU; the param
tree mirrors torchvision's names: `Mixed_5b/branch1x1/{kernel, bias}`.
`input_protocol='tf'` feeds it as the TF graph is fed instead (the published
Inception Scores, the ADM reference batches): `network_input`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import resize as resize_lib

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048

PROTOCOLS = ('pytorch_fid', 'tf')


def network_input(images: jax.Array, protocol: str = 'pytorch_fid',
                  resize: bool = True) -> jax.Array:
  """What the network sees of images [B, H, W, 3] in [-1, 1]: float32
  [B, 299, 299, 3] (without `resize`, [B, H, W, 3]).

  protocol:
    'pytorch_fid': the images resized with torch's bilinear. pytorch-fid
      takes [0, 1] images and maps them to [-1, 1] after resizing; the
      resize is linear and preserves constants, so resizing [-1, 1] images
      is the same.
    'tf': the TF Inception graph's own pipeline, which the original
      Inception Score and FID code, the ADM evaluator (its reference
      batches) and torch-fidelity feed: the uint8 pixels a saved PNG holds
      (rounded as vqlab.train.writers rounds), TF1's bilinear resize of them
      (no half-pixel offset), then (x - 128) / 128.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'InceptionV3: unknown input protocol {protocol!r}; '
                     f'known: {", ".join(PROTOCOLS)}')
  x = images.astype(jnp.float32)
  size = (INPUT_SIZE, INPUT_SIZE) if resize else x.shape[1:3]
  if protocol == 'pytorch_fid':
    return resize_lib.resize_bilinear(x, size)
  pixels = jnp.floor(jnp.clip((x + 1.0) * 127.5 + 0.5, 0.0, 255.0))
  pixels = resize_lib.resize_bilinear(pixels, size, legacy=True)
  return (pixels - 128.0) / 128.0


def _pad(padding: tuple[int, int]) -> tuple[tuple[int, int], ...]:
  return ((padding[0], padding[0]), (padding[1], padding[1]))


class _Block(nn.Module):
  """Shared fields and the BasicConv2d (conv + folded BN + ReLU) of a block."""
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  def conv(self, x, features, kernel_size, name, strides=1, padding=(0, 0)):
    if isinstance(kernel_size, int):
      kernel_size = (kernel_size, kernel_size)
    y = nn.Conv(features, kernel_size, strides=strides, padding=_pad(padding),
                dtype=self.dtype, precision=self.precision, name=name)(x)
    return nn.relu(y)


def _avg_pool_3x3(x):
  # pytorch-fid's patch: TF's average pool ignores the zero padding.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride_2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(_Block):
  """FIDInceptionA: [B, H, W, C] -> [B, H, W, 224 + pool_features]."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(x, 64, 1, 'branch1x1')
    b5 = self.conv(x, 48, 1, 'branch5x5_1')
    b5 = self.conv(b5, 64, 5, 'branch5x5_2', padding=(2, 2))
    b3 = self.conv(x, 64, 1, 'branch3x3dbl_1')
    b3 = self.conv(b3, 96, 3, 'branch3x3dbl_2', padding=(1, 1))
    b3 = self.conv(b3, 96, 3, 'branch3x3dbl_3', padding=(1, 1))
    bp = self.conv(_avg_pool_3x3(x), self.pool_features, 1, 'branch_pool')
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """InceptionB (Mixed_6a): [B, H, W, C] -> [B, H', W', 480 + C], stride 2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(x, 384, 3, 'branch3x3', strides=2)
    bd = self.conv(x, 64, 1, 'branch3x3dbl_1')
    bd = self.conv(bd, 96, 3, 'branch3x3dbl_2', padding=(1, 1))
    bd = self.conv(bd, 96, 3, 'branch3x3dbl_3', strides=2)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(_Block):
  """FIDInceptionC: [B, H, W, C] -> [B, H, W, 768]."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv(x, 192, 1, 'branch1x1')
    b7 = self.conv(x, c7, 1, 'branch7x7_1')
    b7 = self.conv(b7, c7, (1, 7), 'branch7x7_2', padding=(0, 3))
    b7 = self.conv(b7, 192, (7, 1), 'branch7x7_3', padding=(3, 0))
    bd = self.conv(x, c7, 1, 'branch7x7dbl_1')
    bd = self.conv(bd, c7, (7, 1), 'branch7x7dbl_2', padding=(3, 0))
    bd = self.conv(bd, c7, (1, 7), 'branch7x7dbl_3', padding=(0, 3))
    bd = self.conv(bd, c7, (7, 1), 'branch7x7dbl_4', padding=(3, 0))
    bd = self.conv(bd, 192, (1, 7), 'branch7x7dbl_5', padding=(0, 3))
    bp = self.conv(_avg_pool_3x3(x), 192, 1, 'branch_pool')
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """InceptionD (Mixed_7a): [B, H, W, C] -> [B, H', W', 512 + C], stride 2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(x, 192, 1, 'branch3x3_1')
    b3 = self.conv(b3, 320, 3, 'branch3x3_2', strides=2)
    b7 = self.conv(x, 192, 1, 'branch7x7x3_1')
    b7 = self.conv(b7, 192, (1, 7), 'branch7x7x3_2', padding=(0, 3))
    b7 = self.conv(b7, 192, (7, 1), 'branch7x7x3_3', padding=(3, 0))
    b7 = self.conv(b7, 192, 3, 'branch7x7x3_4', strides=2)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(_Block):
  """FIDInceptionE_1 (avg pool) / _2 (max pool): [B, H, W, C] ->
  [B, H, W, 2048]."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(x, 320, 1, 'branch1x1')
    b3 = self.conv(x, 384, 1, 'branch3x3_1')
    b3 = jnp.concatenate([
        self.conv(b3, 384, (1, 3), 'branch3x3_2a', padding=(0, 1)),
        self.conv(b3, 384, (3, 1), 'branch3x3_2b', padding=(1, 0)),
    ], axis=-1)
    bd = self.conv(x, 448, 1, 'branch3x3dbl_1')
    bd = self.conv(bd, 384, 3, 'branch3x3dbl_2', padding=(1, 1))
    bd = jnp.concatenate([
        self.conv(bd, 384, (1, 3), 'branch3x3dbl_3a', padding=(0, 1)),
        self.conv(bd, 384, (3, 1), 'branch3x3dbl_3b', padding=(1, 0)),
    ], axis=-1)
    if self.max_pool:  # pytorch-fid's FIDInceptionE_2 (a quirk of TF's graph).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = self.conv(pooled, 192, 1, 'branch_pool')
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(_Block):
  """The FID InceptionV3 (pytorch-fid's weights and blocks).

  Attributes:
    resize_input: resize to 299x299 first (network_input). Without it, inputs
      should already be 299x299.
    input_protocol: 'pytorch_fid' (pytorch-fid's input) or 'tf' (the TF
      graph's, as the published Inception Scores and the ADM reference
      batches were computed): see network_input.
    dtype: compute dtype (pool features and logits are returned in float32).
    precision: of the convolutions and the classifier; the default, HIGHEST,
      keeps TF32 / bf16 passes out of the features on GPUs and TPUs.
  """
  resize_input: bool = True
  input_protocol: str = 'pytorch_fid'

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Features of images [B, H, W, 3] in [-1, 1] (any H, W; gray
    [B, H, W, 1] is seen as RGB with three equal channels).

    Returns:
      {'pool': [B, 2048] pool3 features (what FID uses),
       'logits_unbiased': [B, 1008] = pool @ fc.weight.T, without fc.bias:
         the logits of the original TF Inception Score code (and
         torch-fidelity's), for InceptionScore.}
    """
    if images.ndim != 4:
      raise ValueError(f'InceptionV3: expected images [B, H, W, 3], got shape '
                       f'{images.shape}')
    images = resize_lib.as_rgb(images, 'InceptionV3')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError(f'InceptionV3: expected floating [-1, 1] images, got '
                      f'{images.dtype}')
    x = network_input(images, self.input_protocol,
                      self.resize_input).astype(self.dtype)
    kw = {'dtype': self.dtype, 'precision': self.precision}
    x = self.conv(x, 32, 3, 'Conv2d_1a_3x3', strides=2)
    x = self.conv(x, 32, 3, 'Conv2d_2a_3x3')
    x = self.conv(x, 64, 3, 'Conv2d_2b_3x3', padding=(1, 1))
    x = _max_pool_3x3_stride_2(x)
    x = self.conv(x, 80, 1, 'Conv2d_3b_1x1')
    x = self.conv(x, 192, 3, 'Conv2d_4a_3x3')
    x = _max_pool_3x3_stride_2(x)
    x = InceptionA(pool_features=32, name='Mixed_5b', **kw)(x)
    x = InceptionA(pool_features=64, name='Mixed_5c', **kw)(x)
    x = InceptionA(pool_features=64, name='Mixed_5d', **kw)(x)
    x = InceptionB(name='Mixed_6a', **kw)(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                     ('Mixed_6e', 192)):
      x = InceptionC(channels_7x7=c7, name=name, **kw)(x)
    x = InceptionD(name='Mixed_7a', **kw)(x)
    x = InceptionE(max_pool=False, name='Mixed_7b', **kw)(x)
    x = InceptionE(max_pool=True, name='Mixed_7c', **kw)(x)
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, use_bias=False, precision=self.precision,
                      name='fc')(pool)
    return {'pool': pool, 'logits_unbiased': logits}
