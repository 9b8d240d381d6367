"""Per-clip tf.data video preprocessing of the `tfds_video` dataset.

Every function maps one example `{'video': encoded frames string [L] (or uint8 [L, h, w, C]),
'label'?: int}` to `{'video': float32 [T, S, S, C] in [-1, 1], 'label'?: int32}`.

Frames: a clip is `T = num_frames` frames `start, start + s, ..., start + (T - 1) * s` with
`s = frame_stride`; train draws `start` uniformly from `[0, max(0, L - (T - 1) * s - 1)]`, eval
takes the middle clip, `start = max(0, (L - T * s) // 2)` (DMVR's `sample_sequence`, which
MAGVIT's single test clip is), or with `eval_clip = 'first'` `start = 0`. Frame indices past the
end of a short video (`L < (T - 1) * s + 1`) read its last frame, i.e. short clips are padded by
repeating the last frame. Only the selected frames are decoded.

Space: the shorter side is resized to S (antialiased bilinear) and a square S x S window is cut:
eval takes the centre, train a random window and flips the clip horizontally with probability 1/2
when `random_flip`. The window and the flip are drawn once per clip, so all frames get the same
crop. Randomness is stateless, from the `[2]` int64 seed the pipeline gives each example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
from vqlab.data.lazy import tf

from vqlab.data import base
from vqlab.data import pipeline
from vqlab.data import preprocess

EVAL_CLIPS = ('center', 'first')


@dataclasses.dataclass(frozen=True)
class VideoAugment:
  """Validated clip settings (see `tfds_videos.default_config`)."""
  image_size: int
  channels: int
  num_frames: int
  frame_stride: int
  random_flip: bool
  shuffle_buffer: int
  eval_clip: str = 'center'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> VideoAugment:
    """Reads and checks image_size, channels, num_frames, frame_stride, random_flip and
    shuffle_buffer."""
    channels = base.positive_int(config, 'channels')
    if channels not in (1, 3):
      raise ValueError(f'data.channels: must be 1 or 3, got {channels}.')
    eval_clip = base.get(config, 'eval_clip')
    if eval_clip not in EVAL_CLIPS:
      raise ValueError(f'data.eval_clip: must be one of {EVAL_CLIPS}, got '
                       f'{eval_clip!r}.')
    return cls(image_size=base.positive_int(config,
                                            'image_size'), channels=channels,
               num_frames=base.positive_int(config, 'num_frames'),
               frame_stride=base.positive_int(config, 'frame_stride'),
               random_flip=bool(base.get(config, 'random_flip')),
               shuffle_buffer=base.positive_int(config, 'shuffle_buffer'),
               eval_clip=eval_clip)

  @property
  def video_shape(self) -> tuple[int, int, int, int]:
    return (self.num_frames, self.image_size, self.image_size, self.channels)


def frame_indices(length, start, aug: VideoAugment):
  """int32 [T] indices `start + t * stride` of a video of `length` frames, clamped to its last."""
  indices = start + tf.range(aug.num_frames, dtype=tf.int32) * aug.frame_stride
  return tf.minimum(indices, length - 1)


def _frames(video, start, aug: VideoAugment, videos: str):
  """Selected frames of `video` (encoded [L] or uint8 [L, h, w, C]) -> uint8 [T, h, w, C].

  A video of no frames (L = 0) is a DataError naming `videos` when its batch is read."""
  length = tf.shape(video)[0]
  length = pipeline.check_record(
      length, length > 0, f'data.video_key: a video of {videos} has no frames; '
      'leave it out of the split, or prepare the dataset again without it.')
  frames = tf.gather(video, frame_indices(length, start, aug))
  if frames.dtype == tf.string:
    frames = tf.map_fn(
        lambda f: preprocess.decode_image(f, aug.channels), frames,
        fn_output_signature=tf.TensorSpec([None, None, aug.channels], tf.uint8))
  frames.set_shape([aug.num_frames, None, None, aug.channels])
  return frames


def _output(example, video, aug: VideoAugment):
  out = {
      'video': tf.ensure_shape(preprocess.to_unit_range(video), aug.video_shape)
  }
  if 'label' in example:
    out['label'] = tf.cast(example['label'], tf.int32)
  return out


def train_fn(aug: VideoAugment,
             videos: str = 'the dataset') -> Callable[[Any, Any], Any]:
  """Returns f(example, seed [2] int64) -> preprocessed train clip (random start, crop, flip);
  `videos` names the videos in errors."""
  span = (aug.num_frames - 1) * aug.frame_stride + 1

  def fn(example, seed):
    start_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    video = example['video']
    last_start = tf.maximum(tf.shape(video)[0] - span, 0)
    start = tf.random.stateless_uniform([], start_seed, 0, last_start + 1,
                                        dtype=tf.int32)
    clip = preprocess.resize_shorter_side(_frames(video, start, aug, videos),
                                          aug.image_size)
    # One crop for the whole clip: the frame axis is kept whole.
    clip = tf.image.stateless_random_crop(clip, aug.video_shape, seed=crop_seed)
    if aug.random_flip:
      flip = tf.random.stateless_uniform([], flip_seed) < 0.5
      clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
    return _output(example, clip, aug)

  return fn


def eval_fn(aug: VideoAugment,
            videos: str = 'the dataset') -> Callable[[Any], Any]:
  """Returns f(example) -> preprocessed eval clip (the middle or first clip, shorter side to S,
  centre crop); `videos` names the videos in errors."""

  def fn(example):
    video = example['video']
    start = 0
    if aug.eval_clip == 'center':
      start = tf.maximum(
          (tf.shape(video)[0] - aug.num_frames * aug.frame_stride) // 2, 0)
    clip = preprocess.resize_shorter_side(_frames(video, start, aug, videos),
                                          aug.image_size)
    return _output(example, preprocess.center_crop(clip, aug.image_size), aug)

  return fn
