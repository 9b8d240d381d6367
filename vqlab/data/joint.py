"""`joint`: batches of images and videos together, for joint image-video tokenizers.

The config nests two dataset configs: `image`, of any image dataset (default `shapes`), and
`video`, of any video dataset (default `moving_shapes`). A global batch of B rows holds
`B_i = round(B * image_batch_fraction)` images and `B_v = B - B_i` videos; step `s` is step `s` of
the image source at global batch B_i and step `s` of the video source at global batch B_v, so the
joint source is as deterministic and resume-exact as its two sources, and host `p` gets its rows
of each (B_i and B_v must both be divisible by the number of hosts). Labels are dropped.
The fraction sets how many rows of each kind a batch holds, not the balance of their losses:
the tokenizer task sums the images' mean loss and the videos' mean loss (`loss_and_grads`).

Train batches: {'image': float32 [b_i, S, S, C], 'video': float32 [b_v, T, S, S, C]} in [-1, 1]
with b_i = B_i / P, b_v = B_v / P. Images and frames must have the same shape (S, S, C), and
`data.image_size` must equal the nested `image_size`s.

Eval runs on the video source alone, at the full eval batch: its batches are those of the
`video` dataset ({'video', 'label'?, 'mask'}).

Errors of the nested sources name their keys as `data.image.<key>` / `data.video.<key>`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import ml_collections

from vqlab import data
from vqlab.data import base
from vqlab.data import moving_shapes
from vqlab.data import shapes

# Nested section -> the kind of dataset it must name.
NESTED = {'image': 'image', 'video': 'video'}


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `joint` dataset: `shapes` images and `moving_shapes` videos."""
  return ml_collections.ConfigDict({
      'name': 'joint',
      'image_size':
          32,  # Side of images and frames; must equal image/video.image_size.
      'image_batch_fraction':
          0.5,  # Fraction of each train batch's rows that are images (not a loss weight).
      'image': shapes.default_config(
      ),  # Config of an image dataset (any, e.g. 'tfds').
      'video':
          moving_shapes.default_config(),  # Config of a video dataset (any).
  })


@contextlib.contextmanager
def nested_errors(section: str):
  """Renames `data.<key>` to `data.<section>.<key>` in the errors raised inside."""
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    message = re.sub(r'(?<![\w.])data\.', f'data.{section}.', str(e))
    raise (FileNotFoundError
           if isinstance(e, FileNotFoundError) else ValueError)(message) from e


def _build_nested(config: ml_collections.ConfigDict, section: str,
                  **kwargs) -> base.DataSource:
  nested = base.get(config, section)
  if not isinstance(nested, ml_collections.ConfigDict):
    raise ValueError(
        f'data.{section}: must be the data config of a {NESTED[section]} dataset, '
        f'got {nested!r}.')
  with nested_errors(section):
    data.check_kind(base.get(nested, 'name'), NESTED[section])
    return data.build(nested, **kwargs)


class JointTrainSource:
  """Zips an image and a video train source; see the module docstring."""

  def __init__(self, image: base.DataSource, video: base.DataSource):
    self._image, self._video = image, video
    self.per_host_image_batch_size = image.per_host_batch_size
    self.per_host_video_batch_size = video.per_host_batch_size
    self.per_host_batch_size = image.per_host_batch_size + video.per_host_batch_size
    self.num_examples = None
    self.image_shape = image.image_shape
    self.video_shape = video.video_shape
    self.num_classes = None

  def batches(self, start_step: int = 0) -> Iterator[base.Batch]:
    """Yields {'image': [b_i, S, S, C], 'video': [b_v, T, S, S, C]} from step `start_step`."""
    for image, video in zip(self._image.batches(start_step),
                            self._video.batches(start_step)):
      yield {'image': image['image'], 'video': video['video']}


def split_batch(config: ml_collections.ConfigDict, global_batch_size: int,
                parts: int, parts_are: str | None = None) -> tuple[int, int]:
  """(B_i, B_v): global image and video rows of a train batch, each checked
  to divide into `parts` (the hosts; `experiment_config.validate`: the
  devices times the microbatches), as `parts_are` says (None: the hosts)."""
  fraction = float(base.get(config, 'image_batch_fraction'))
  if not 0 < fraction < 1:
    raise ValueError(
        f'data.image_batch_fraction: must be in (0, 1), got {fraction}.')
  num_images = round(global_batch_size * fraction)
  num_videos = global_batch_size - num_images
  if min(num_images,
         num_videos) < 1 or num_images % parts or num_videos % parts:
    raise ValueError(
        f'data.image_batch_fraction: {fraction} of the global batch {global_batch_size} gives '
        f'{num_images} images and {num_videos} videos; need at least one of each, both divisible '
        f'by {parts_are or f"process_count={parts}"}.')
  return num_images, num_videos


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the joint train source, or the video source's eval source (see the docstring)."""
  base.check_split(split)
  base.host_batch_size(global_batch_size, process_index, process_count)
  size = base.positive_int(config, 'image_size')
  hosts = dict(split=split, process_index=process_index,
               process_count=process_count)
  if split == 'eval':
    video = _build_nested(config, 'video', global_batch_size=global_batch_size,
                          **hosts)
  else:
    num_images, num_videos = split_batch(config, global_batch_size,
                                         process_count)
    image = _build_nested(config, 'image', global_batch_size=num_images,
                          **hosts)
    video = _build_nested(config, 'video', global_batch_size=num_videos,
                          **hosts)
    if image.image_shape != video.image_shape:
      raise ValueError(
          f'data.image, data.video: images {image.image_shape} and video frames '
          f'{video.image_shape} must have the same shape (image_size, channels).'
      )
  if video.image_shape[0] != size:
    raise ValueError(
        f'data.image_size: must equal data.video.image_size (and '
        f'data.image.image_size), got {size} != {video.image_shape[0]}.')
  return video if split == 'eval' else JointTrainSource(image, video)
