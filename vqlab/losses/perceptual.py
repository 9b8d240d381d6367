"""LPIPS (VGG16, v0.1): the learned perceptual distance of Zhang et al. 2018,
identical to `lpips.LPIPS(net='vgg', version='0.1')` at inference."""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab import checks
from vqlab.errors import WeightsError
from vqlab.nn import vgg
from vqlab.weights import files
from vqlab.weights import lpips as lpips_weights
from vqlab.weights import torch_files
from vqlab.weights import vgg as vgg_weights

# lpips' ScalingLayer: maps [-1, 1] images to ImageNet-normalized ones.
SHIFT = (-.030, -.088, -.188)
SCALE = (.458, .448, .450)
# The smallest image side LPIPS takes: its relu5_3 comes after four 2x2 max
# pools (below, its spatial mean is over no positions: NaN).
MIN_SIDE = 16


def normalize_channels(x: jax.Array, eps: float = 1e-10) -> jax.Array:
  """x / (||x||_2 over channels + eps), as lpips.normalize_tensor.

  x: [..., C] -> [..., C] float32.
  """
  x = x.astype(jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  # sqrt has an infinite derivative at 0, and all-zero ReLU feature vectors
  # are common: give those a zero gradient instead of NaN (same values).
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / (norm + eps)


class LPIPS(nn.Module):
  """LPIPS distance between two batches of images.

  Params: 'vgg' (the VGG16 trunk, see vqlab.nn.vgg.VGG) and 'lin0'..'lin4'
  (Dense kernels [C_k, 1], no bias); load them with `load_lpips_params`.

  Attributes:
    dtype: compute dtype of the trunk (normalization and heads: float32).
    precision: of the trunk's convolutions and the heads (None: the
      backend's default; HIGHEST keeps an eval metric in float32 on GPUs and
      TPUs, as the Inception and I3D metrics are).
  """
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """x, y: [B, H, W, 3] images in [-1, 1] (gray [B, H, W, 1] counts as
    three equal channels), H, W >= MIN_SIDE -> [B] float32 distances."""
    if x.shape != y.shape:
      raise ValueError(f'LPIPS inputs differ in shape: {x.shape}, {y.shape}')
    for images in (x, y):
      checks.check_images(images, (3, 1), 1, 'LPIPS')
    if min(x.shape[1:3]) < MIN_SIDE:
      raise ValueError(f'LPIPS: images must be at least {MIN_SIDE} pixels '
                       'high and wide (its last VGG layer is 16x smaller), got '
                       f'{tuple(x.shape[1:3])}')
    trunk = vgg.VGG(16, vgg.DEFAULT_OUTPUTS, self.dtype, self.precision,
                    name='vgg')
    scaled = lambda images: (images.astype(jnp.float32) - jnp.array(SHIFT)
                            ) / jnp.array(SCALE)
    # Two calls, not one on [x; y]: a gradient w.r.t. y alone (the training
    # loss) then runs no backward pass through x's trunk, where the
    # concatenated batch's backward ran on both halves.
    features_x, features_y = trunk(scaled(x)), trunk(scaled(y))
    total = jnp.zeros(x.shape[0], jnp.float32)
    for k, name in enumerate(vgg.DEFAULT_OUTPUTS):
      fx = normalize_channels(features_x[name])
      fy = normalize_channels(features_y[name])
      diff = jnp.square(fx - fy)
      # The 1x1 head and the spatial mean commute: average first.
      head = nn.Dense(1, use_bias=False, precision=self.precision,
                      name=f'lin{k}')
      total += head(jnp.mean(diff, axis=(1, 2)))[:, 0]
    return total


def load_lpips_params(directory: str | os.PathLike | None = None) -> dict:
  """LPIPS params: the trunk from the torchvision VGG16 file in the weights
  directory, the heads from the packaged LPIPS v0.1 file. WeightsError if a
  file is missing or does not match."""
  path = files.require('lpips_vgg_heads', directory)
  state = torch_files.load_state_dict(path)
  try:
    heads = lpips_weights.convert_lpips_heads(state)
  except WeightsError as e:
    raise files.not_that_file('lpips_vgg_heads', path, e) from None
  heads = jax.device_put(heads)
  return {'vgg': vgg_weights.load_vgg_params(16, directory), **heads}


def lpips_distance(params: dict, x: jax.Array, y: jax.Array, *,
                   dtype: Any = jnp.float32,
                   precision: Any = None) -> jax.Array:
  """LPIPS(x, y) with `params` from `load_lpips_params` (see LPIPS for dtype
  and precision).

  x, y: [B, H, W, 3] in [-1, 1] -> [B] float32.
  """
  return LPIPS(dtype, precision).apply({'params': params}, x, y)
