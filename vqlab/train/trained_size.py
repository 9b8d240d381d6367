"""The shapes a tokenizer run's state was trained at, for evaluating it.

An eval reads the eval split only, at `data.image_size`, which may differ
from the frames the run trained on: its train crops (`data.train_image_size`),
or another size asked for with `--allow_config_change
--config.data.image_size=N` (MS-SSIM needs at least 161 pixels a side, and
codecs are compared at the videos' own sizes). The state is built at the
training's size (a StyleGAN discriminator's dense head depends on it; no
eval runs it), and a model whose own variables depend on the size (a ViT's
position embeddings) is refused at another.
"""

from typing import Any

import jax
import ml_collections
import numpy as np

from vqlab.errors import ConfigError

IMAGE_KEYS = ('image', 'video')
# The keys that move an eval's frames away from the frames its run was
# evaluated at in training (a run's own config needs no check: its training
# evaluated the same way).
SIZE_KEYS = ('data.image_size', 'data.train_image_size', 'data.eval_frame_size')


def _at_size(example: dict[str, np.ndarray], side: int) -> dict[str, Any]:
  """`example` with its images [B, H, W, C] and videos [B, T, H, W, C] as
  zeros of side x side frames (other keys as they are)."""
  return {
      k: (np.zeros(v.shape[:-3] +
                   (side, side, v.shape[-1]), v.dtype) if k in IMAGE_KEYS else v
         ) for k, v in example.items()
  }


def _variable_shapes(model: Any, images: np.ndarray) -> list[tuple]:
  """[(path, shape)] of the tokenizer `model`'s variables for one example of
  `images` [B, (T,) H, W, C]."""
  key = jax.random.key(0)
  variables = jax.eval_shape(
      lambda x: model.init({
          'params': key,
          'quantizer': key
      }, x, train=False),
      jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
  return [(jax.tree_util.keystr(path, simple=True, separator='/'), leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]]


def trained_side(config: ml_collections.ConfigDict,
                 config_changes: dict[str, tuple]) -> int:
  """The side of the frames the run trained on: its recorded
  data.train_image_size, else its data.image_size (0: none recorded)."""

  def recorded(key: str) -> int:
    if f'data.{key}' in config_changes:
      return int(config_changes[f'data.{key}'][0] or 0)
    return int(config.data.get(key, 0) or 0)

  return recorded('train_image_size') or recorded('image_size')


def state_example(model: Any, example: dict[str, np.ndarray],
                  config: ml_collections.ConfigDict,
                  config_changes: dict[str, tuple]) -> dict[str, Any]:
  """The example {key: [B, ...]} whose shapes an eval's state is built from.

  Args:
    model: the task's tokenizer (a linen module taking images or videos).
    example: an eval batch (without its mask), at data.image_size.
    config: the config evaluated with.
    config_changes: its differences from the run's record that
      `--allow_config_change` let through (run_record.check).

  Returns:
    `example`, with its images and videos at the side the run trained at.

  Raises:
    ConfigError: naming data.image_size, when the size changed (SIZE_KEYS)
      and one of the model's variables has another shape at the eval's
      size, or the model decodes one size (`image_size`, TiTok) and the
      eval's is another.
  """
  keys = [k for k in IMAGE_KEYS if k in example]
  side = trained_side(config, config_changes)
  if not keys or not side or example[keys[-1]].shape[-3:-1] == (side, side):
    return example
  trained = _at_size(example, side)
  if not any(key in config_changes for key in SIZE_KEYS):
    return trained
  now = example[keys[-1]].shape[-2]
  decoded = getattr(model, 'image_size', None)  # TiTok decodes one grid.
  if decoded is not None and decoded != now:
    raise ConfigError(
        'data.image_size', f'{now}, but the model decodes images of '
        f'model.image_size = {decoded} (a grid its position embeddings are '
        f'made for): it is evaluated at {decoded} only')
  for key in keys:
    for (name, was), (_, shape) in zip(_variable_shapes(model, trained[key]),
                                       _variable_shapes(model, example[key])):
      if was != shape:
        raise ConfigError(
            'data.image_size', f'{now}, but the run trained on {side}x{side} '
            f'frames, and its model\'s {name} is {was} there and {shape} '
            f'at {now}: this model is evaluated at {side} only')
  return trained
