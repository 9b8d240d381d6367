"""`moving_shapes`: procedural clips of filled shapes moving in straight lines, bouncing off the
borders, with exact labels.

Example `i` is drawn from `np.random.default_rng((seed, i))` alone: a background colour, a number
of shapes in `num_shapes` (lo, hi inclusive) and, per shape, a class (an index into
`config.shapes`), a diameter (fraction of the side in `size_range`), a start centre that keeps the
shape inside the frame, a speed in [min_speed, max_speed] (fraction of the side per frame) in a
uniform random direction, and a foreground colour at least `min_contrast` from the background.
A centre moves linearly and reflects where the shape's bounding circle meets a border, so shapes
never leave the frame; later shapes are drawn over earlier ones. The label is the class of the
first shape. Frames are rendered like `shapes` (its shape masks, 2x2 supersampling), all frames
of a clip at once. Train examples are indices [0, num_train_examples) in a seeded permutation per
epoch; eval examples are the next num_eval_examples indices, in order.

Batches: 'video' float32 [b, num_frames, S, S, channels] in [-1, 1], 'label' int32 [b], and on
eval 'mask' bool [b].
"""

from __future__ import annotations

import ml_collections
import numpy as np

from vqlab.data import base
from vqlab.data import shapes


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `moving_shapes` dataset."""
  return ml_collections.ConfigDict({
      'name': 'moving_shapes',
      'image_size': 32,  # Side of the square frames.
      'num_frames': 17,  # T: frames per clip.
      'seed': 0,  # Seeds every clip (and the per-epoch train order).
      'channels': 3,  # Channels of the frames (1 = grayscale).
      'shapes':
          shapes.
          SHAPES,  # Classes; the label is the index of the first shape's class.
      'num_shapes': (1, 2),  # Shapes per clip (lo, hi), both included.
      'size_range':
          (0.2, 0.5),  # Shape diameter as a fraction of the side (lo, hi).
      'min_speed': 0.02,  # Least speed, in fractions of the side per frame.
      'max_speed': 0.06,  # Largest speed, in fractions of the side per frame.
      'min_contrast':
          0.3,  # Least max-abs difference of each foreground and the background.
      'num_train_examples': 100_000,  # Train clips: indices [0, N).
      'num_eval_examples':
          1_000,  # Eval clips: indices [N_train, N_train + N_eval).
  })


def bounce(start: np.ndarray, velocity: np.ndarray, radius: float, size: int,
           num_frames: int) -> np.ndarray:
  """Centres [T, 2] of a disc of `radius` that starts at `start` [2] (inside [radius,
  size - radius]) and moves by `velocity` [2] per frame, reflecting off the borders."""
  span = size - 2 * radius  # Free range of the centre on each axis.
  travel = start - radius + velocity * np.arange(num_frames)[:, None]
  if span <= 0:
    return np.broadcast_to(start, travel.shape).copy()
  folded = np.mod(travel, 2 * span)  # A triangle wave of period 2 * span.
  return radius + span - np.abs(span - folded)


def _coverage(mask: np.ndarray) -> np.ndarray:
  """bool [T, 2S, 2S] subsamples -> float32 [T, S, S, 1] fraction covered (2x2 box filter)."""
  t, s = mask.shape[0], mask.shape[1] // 2
  sub = mask.view(np.uint8).reshape(t, s, 2, s,
                                    2)  # Summing uint8 beats mean() on bools.
  total = sub[:, :, 0, :, 0] + sub[:, :, 1, :, 0] + sub[:, :, 0, :,
                                                        1] + sub[:, :, 1, :, 1]
  return (total * np.float32(0.25))[..., None]


class MovingShapeRenderer:
  """Renders example indices to clips and labels; see the module docstring."""

  def __init__(self, *, seed: int, image_size: int, num_frames: int,
               channels: int, shapes: tuple[str, ...],
               num_shapes: tuple[int, int], size_range: tuple[float, float],
               speed_range: tuple[float, float], min_contrast: float):
    self.seed, self.size, self.num_frames, self.channels = seed, image_size, num_frames, channels
    self.shapes, self.num_shapes, self.size_range = shapes, num_shapes, size_range
    self.speed_range, self.min_contrast = speed_range, min_contrast
    sub = (np.arange(2 * image_size, dtype=np.float32) +
           0.5) / 2  # 2x2 subsamples per pixel.
    self._ys, self._xs = np.meshgrid(sub, sub, indexing='ij')
    self.video_shape = (num_frames, image_size, image_size, channels)
    self.image_shape, self.num_classes = self.video_shape[1:], len(shapes)

  def example(self, index: int) -> tuple[np.ndarray, int]:
    """Example `index`: (float32 [T, S, S, C] in [-1, 1], label int)."""
    rng = np.random.default_rng((self.seed, index))
    t, s = self.num_frames, self.size
    background = rng.random(self.channels)
    video = np.broadcast_to(background.astype(np.float32),
                            self.video_shape).copy()
    labels = []
    for _ in range(int(rng.integers(self.num_shapes[0],
                                    self.num_shapes[1] + 1))):
      labels.append(int(rng.integers(len(self.shapes))))
      radius = rng.uniform(*self.size_range) * s / 2
      start = rng.uniform(radius, s - radius, size=2)  # (y, x).
      speed = rng.uniform(*self.speed_range) * s
      angle = rng.uniform(0, 2 * np.pi)
      foreground = shapes.contrasting_colour(rng, background, self.min_contrast)
      centres = bounce(start, speed *
                       np.array([np.sin(angle), np.cos(angle)]), radius, s, t)
      centres = centres.astype(np.float32)
      u = (self._xs - centres[:, 1, None, None]) / np.float32(
          radius)  # [T, 2S, 2S]
      v = (self._ys - centres[:, 0, None, None]) / np.float32(radius)
      alpha = _coverage(shapes.inside(self.shapes[labels[-1]], u, v))
      video += alpha * (foreground.astype(np.float32) - video)
    return video * 2 - 1, labels[0]

  def batch(self, indices: np.ndarray) -> base.Batch:
    """int [k] indices -> {'video': float32 [k, T, S, S, C], 'label': int32 [k]}."""
    videos = np.empty((len(indices),) + self.video_shape, np.float32)
    labels = np.empty((len(indices),), np.int32)
    for i, index in enumerate(indices):
      videos[i], labels[i] = self.example(int(index))
    return {'video': videos, 'label': labels}


def _renderer(config: ml_collections.ConfigDict) -> MovingShapeRenderer:
  num_shapes = base.get(config, 'num_shapes')
  try:
    lo, hi = (int(n) for n in num_shapes)
  except (TypeError, ValueError):
    raise ValueError(
        f'data.num_shapes: must be a pair (lo, hi), got {num_shapes!r}.'
    ) from None
  if not 1 <= lo <= hi:
    raise ValueError(
        f'data.num_shapes: need 1 <= lo <= hi, got {num_shapes!r}.')
  speeds = float(base.get(config,
                          'min_speed')), float(base.get(config, 'max_speed'))
  if not 0 <= speeds[0] <= speeds[1] < np.inf:
    raise ValueError(
        f'data.max_speed: need 0 <= data.min_speed <= data.max_speed, got '
        f'min_speed={speeds[0]}, max_speed={speeds[1]}.')
  return MovingShapeRenderer(
      seed=int(base.get(config, 'seed')), image_size=base.positive_int(
          config,
          'image_size'), num_frames=base.positive_int(config, 'num_frames'),
      channels=base.positive_int(config, 'channels'),
      shapes=shapes.shape_classes(config), num_shapes=(lo, hi),
      size_range=base.fraction_range(config, 'size_range'), speed_range=speeds,
      min_contrast=shapes.min_contrast(config))


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'video' float32 [b, T, S, S, channels] in [-1, 1], 'label' int32 [b]."""
  return base.rendered_source(config, _renderer, split=split,
                              global_batch_size=global_batch_size,
                              process_index=process_index,
                              process_count=process_count)
