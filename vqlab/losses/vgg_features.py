"""ImageNet VGG19 features of [-1, 1] images (the Regularized-VQ
probabilistic contrastive loss compares them)."""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import vgg
from vqlab.weights import vgg as vgg_weights

# torchvision's ImageNet normalization of [0, 1] images.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
  """Named ReLU outputs of VGG19 for images in [-1, 1].

  Params: 'vgg' (see vqlab.nn.vgg.VGG); load with
  `load_vgg19_feature_params`.

  Attributes:
    outputs: ReLU names to return (default relu1_2, relu2_2, relu3_3,
      relu4_3, relu5_3).
    dtype: compute dtype (params stay float32).
  """
  outputs: tuple[str, ...] = vgg.DEFAULT_OUTPUTS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """x: [B, H, W, 3] in [-1, 1] -> {name: [B, h, w, C]} in `dtype`."""
    x = (x.astype(jnp.float32) + 1.0) / 2.0
    x = (x - jnp.array(MEAN)) / jnp.array(STD)
    return vgg.VGG(19, self.outputs, self.dtype, name='vgg')(x)


def load_vgg19_feature_params(
    directory: str | os.PathLike | None = None) -> dict:
  """VGG19Features params from the torchvision VGG19 file in the weights
  directory; WeightsError if it is missing or does not match."""
  return {'vgg': vgg_weights.load_vgg_params(19, directory)}
