"""`tfds_video`: any TensorFlow Datasets video dataset (ucf101, ...) as clips of `num_frames`.

The feature `data.video_key` holds a video: a `tfds.features.Video` (uint8 or uint16), or a
uint8 `tfds.features.Tensor` of frames [L, h, w, C] with C = `data.channels`;
`data.label_key` the class. Nothing is downloaded unless `data.download=True`: prepare the data
beforehand with `tfds build ucf101 --data_dir=DIR` (a config such as 'ucf101/ucf101_1_256' picks
the resolution and split). Each host reads its own even slice of the split; order, resume and
sharding are those of the `tfds` image dataset (`tfds_images.build_source`, `pipeline.py`), and
`video_preprocess.py` cuts the clips: every `frame_stride`-th frame, a random start (train) or
the middle (or first) clip of the video (eval, `data.eval_clip`), short videos padded by
repeating their last frame, the shorter side resized to `image_size` and one S x S crop per clip
(random + optional flip on train, central on eval). A video of no frames is a DataError
naming the key and split when its batch is read.

Batches: 'video' float32 [b, num_frames, S, S, channels] in [-1, 1], 'label' int32 [b] (unless
label_key=''), and on eval 'mask' bool [b].
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vqlab.data import base
from vqlab.data import tfds_images
from vqlab.data import video_preprocess


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `tfds_video` dataset."""
  return ml_collections.ConfigDict({
      'name': 'tfds_video',
      'image_size': 128,  # Side of the square output frames.
      'seed': 0,  # Seeds the train order and the clip starts, crops and flips.
      # A tfds video dataset, optionally with its config; 'ucf101' is
      # 'ucf101/ucf101_1_256', frames stretched to 256x256 ('ucf101/ucf101_1':
      # as filmed, 320x240).
      'tfds_name': 'ucf101',
      'data_dir':
          config_dict.placeholder(str),  # tfds data dir; None = tfds' default.
      'manual_dir': config_dict.placeholder(
          str),  # Manual downloads, for datasets needing them.
      'download':
          False,  # Download and prepare when missing (never at run time by default).
      'train_split': 'train',  # tfds split string of the train set.
      'eval_split': 'test',  # tfds split string of the eval set.
      'video_key': 'video',  # Feature holding the video (frames [L, h, w, C]).
      'label_key': 'label',  # Feature holding the class label; '' = no labels.
      'num_frames': 17,  # T: frames per clip.
      'frame_stride':
          1,  # Take every s-th frame: a clip spans (T - 1) * s + 1 frames.
      # Eval clip of each video: 'center' (MAGVIT's single test clip, DMVR's
      # middle offset) or 'first' (its first frames).
      'eval_clip': 'center',
      'channels': 3,  # Decoded channels: 3 = RGB, 1 = gray.
      'random_flip':
          True,  # Flip train clips horizontally with probability 1/2.
      'shuffle_buffer':
          1_000,  # Train shuffle buffer (videos per host), reseeded each epoch.
  })


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'video' float32 [b, T, S, S, channels] in [-1, 1], 'label' int32 [b]."""
  base.check_split(split)
  base.host_batch_size(global_batch_size, process_index, process_count)
  aug = video_preprocess.VideoAugment.from_config(config)

  def videos(split_key: str) -> str:
    """The videos of a split, in words for errors."""
    return (f"feature {base.get(config, 'video_key')!r} of "
            f"{base.get(config, 'tfds_name')} in data.{split_key}="
            f'{base.get(config, split_key)!r}')

  return tfds_images.build_source(
      config, split=split, global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count, key='video',
      train_fn=video_preprocess.train_fn(aug, videos('train_split')),
      eval_fn=video_preprocess.eval_fn(aug, videos('eval_split')),
      shuffle_buffer=aug.shuffle_buffer, example_shape=aug.video_shape)
