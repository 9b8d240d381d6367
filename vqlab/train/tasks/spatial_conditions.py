"""Spatial conditions of a GPT (taming's super-resolution / colorization).

The condition image is derived from each example's image and encoded by the
same frozen tokenizer as the image (or by a tokenizer run of its own,
`condition.tokenizer`); its tokens (flattened row-major,
[B, cond_length]) are the GPT's `cond` (model.condition = 'tokens').

  'downsampled': average-pool by `condition.factor`, then nearest-upsample
                 back to full size (super-resolution).
  'grayscale':   ITU-R 601 luma, repeated over the channels (colorization).
"""

import jax.numpy as jnp
import ml_collections

IMAGES = ('none', 'downsampled', 'grayscale')
LUMA = (0.299, 0.587, 0.114)


def downsampled(images, factor: int):
  """images [..., H, W, C] -> block means of factor x factor pixels, each
  repeated over its block: [..., H, W, C] (H, W divisible by factor)."""
  *lead, h, w, c = images.shape
  if h % factor or w % factor:
    raise ValueError(f'image size {h}x{w} is not divisible by factor {factor}')
  blocks = images.reshape(*lead, h // factor, factor, w // factor, factor, c)
  means = blocks.mean(axis=(-4, -2), keepdims=True)
  return jnp.broadcast_to(means, blocks.shape).reshape(images.shape)


def grayscale(images):
  """images [..., H, W, C] (C = 3) -> luma repeated over C: [..., H, W, C]."""
  if images.shape[-1] != 3:
    raise ValueError(f'grayscale needs RGB images, got {images.shape[-1]} '
                     'channels')
  luma = jnp.tensordot(images, jnp.asarray(LUMA, images.dtype), axes=1)
  return jnp.broadcast_to(luma[..., None], images.shape)


def condition_images(images, condition: ml_collections.ConfigDict):
  """The condition images [..., H, W, C] of images [..., H, W, C] by the
  `condition` section ({'image', 'factor'})."""
  if condition.image == 'downsampled':
    return downsampled(images, condition.factor)
  if condition.image == 'grayscale':
    return grayscale(images)
  raise ValueError(f'no condition image for condition.image '
                   f'{condition.image!r}')


def metadata(config: ml_collections.ConfigDict,
             tokenizer_workdir: str | None = None,
             tokenizer_step: int | None = None) -> dict[str, object]:
  """What the token shards record of the condition (compared on reuse): the
  condition image, and the run and step of a condition tokenizer of its own
  (`condition.tokenizer`, resolved by the caller)."""
  condition = config.get('condition')
  if (condition is None or condition.image == 'none' or
      config.model.get('condition') != 'tokens'):
    return {'image': 'none'}
  recorded = {'image': condition.image}
  if condition.image == 'downsampled':
    recorded['factor'] = condition.factor
  if tokenizer_workdir is not None:
    recorded['tokenizer'] = {
        'workdir': tokenizer_workdir,
        'step': tokenizer_step
    }
  return recorded
