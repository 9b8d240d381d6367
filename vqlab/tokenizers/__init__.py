"""Tokenizers: `names()`, `default_config(name)`, `build(config, dtype=...)`.

  vqgan    2D convolutional image tokenizer (taming transformers).
  magvit2  Causal 3D CNN tokenizer of videos [B, 1 + s t, H, W, C] and
           images [B, H, W, C] (1-frame videos) with one codebook.
  titok    ViT tokenizer of images into K 1D tokens [B, K] (TiTok); decodes
           to pixels or to a 2D proxy tokenizer's code logits.

A tokenizer module has `encode(x, train) -> (indices, QuantizerOutput)`,
`decode_indices(indices) -> x`, `__call__(x, train) -> (x_rec, QuantizerOutput)`
and, for GAN training, `forward_with_features`, `last_layer` and `LAST_LAYER`.
"""

import jax
import jax.numpy as jnp

from vqlab import quantizers
from vqlab.registry import Registry
from vqlab.tokenizers import magvit2
from vqlab.tokenizers import titok
from vqlab.tokenizers import vqgan

REGISTRY = Registry(
    'tokenizer', key_prefix='model', subcomponents={
        'quantizer': quantizers.REGISTRY,
        'pixel_decoder.quantizer': quantizers.REGISTRY
    })
REGISTRY.register('vqgan', default_config=vqgan.default_config,
                  builder=vqgan.build)
REGISTRY.register('magvit2', default_config=magvit2.default_config,
                  builder=magvit2.build)
REGISTRY.register('titok', default_config=titok.default_config,
                  builder=titok.build)

names = REGISTRY.names
default_config = REGISTRY.default_config
build = REGISTRY.build
build_validated = REGISTRY.build_validated
validate = REGISTRY.validate


def example_image(model) -> jax.ShapeDtypeStruct:
  """A float32 image [1, S, S, C] that every layer of the built tokenizer
  `model` takes, for tracing its params (which do not depend on the size):
  TiTok's own image size, else one of 2x2 latents (a 1x1 latent has no
  spatial variance for Open-MAGVIT2's pooled adaptive norm)."""
  side = getattr(model, 'image_size', 0) or 2 * model.downsample_factor
  return jax.ShapeDtypeStruct((1, side, side, model.in_channels), jnp.float32)
