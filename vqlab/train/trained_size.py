"""Evaluating a tokenizer run at another image size than it was trained at.

`--mode=eval --allow_config_change --config.data.image_size=N` evaluates a
convolutional tokenizer on larger (or smaller) frames: MS-SSIM needs at least
161 pixels a side, and codecs are compared at the videos' own sizes. The
state is built with the shapes of the training (a StyleGAN discriminator's
dense head depends on the image size; no eval runs it), and a model whose own
variables depend on the size (a ViT's position embeddings) is refused.
"""

from typing import Any

import jax
import numpy as np

from vqlab.errors import ConfigError

IMAGE_KEYS = ('image', 'video')


def _at_size(example: dict[str, np.ndarray], side: int) -> dict[str, Any]:
  """`example` with its images [B, H, W, C] and videos [B, T, H, W, C] as
  zeros of side x side frames (other keys as they are)."""
  return {
      k: (np.zeros(v.shape[:-3] +
                   (side, side, v.shape[-1]), v.dtype) if k in IMAGE_KEYS else v
         ) for k, v in example.items()
  }


def _variable_shapes(model: Any, example: dict[str, Any]) -> list[tuple]:
  """[(path, shape)] of the tokenizer `model`'s variables for one example of
  the last of `example`'s images or videos (the video when both)."""
  images = [example[k] for k in IMAGE_KEYS if k in example][-1]
  key = jax.random.key(0)
  variables = jax.eval_shape(
      lambda x: model.init({
          'params': key,
          'quantizer': key
      }, x, train=False),
      jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
  return [(jax.tree_util.keystr(path, simple=True, separator='/'), leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]]


def state_example(model: Any, example: dict[str, np.ndarray],
                  config_changes: dict[str, tuple]) -> dict[str, Any]:
  """The example {key: [B, ...]} whose shapes an eval's state is built from.

  Args:
    model: the task's tokenizer (a linen module taking images or videos).
    example: an example batch of the data as configured now.
    config_changes: the differences from the run's record that
      `--allow_config_change` let through (run_record.check).

  Returns:
    `example`, with its images and videos at the side the run was trained at
    when data.image_size changed.

  Raises:
    ConfigError: naming data.image_size, when one of the model's variables
      has another shape at the new size, or the model decodes one size
      (`image_size`, TiTok) and it is another.
  """
  change = config_changes.get('data.image_size')
  if change is None or not any(k in IMAGE_KEYS for k in example):
    return example
  side, now = int(change[0]), change[1]
  decoded = getattr(model, 'image_size', None)  # TiTok decodes one grid.
  if decoded is not None and decoded != now:
    raise ConfigError(
        'data.image_size', f'{now}, but the model decodes images of '
        f'model.image_size = {decoded} (a grid its position embeddings are '
        f'made for): it is evaluated at {decoded} only')
  trained = _at_size(example, side)
  for (name, was), (_, shape) in zip(_variable_shapes(model, trained),
                                     _variable_shapes(model, example)):
    if was != shape:
      raise ConfigError(
          'data.image_size', f'the run was trained at {side}, and its '
          f'model\'s {name} is {was} there but {shape} at {now}: this '
          f'model is evaluated at {side} only')
  return trained
