"""`shapes`: procedural images of one filled shape on a plain background, with exact labels.

Example `i` is drawn from `np.random.default_rng((seed, i))` alone: a class (the label, an index
into `config.shapes`), a diameter (fraction of the image side in `size_range`), a centre that keeps
the shape inside the image, and a background and a foreground colour at least `min_contrast`
apart. Shapes are rendered with 2x2 supersampling, so edges are antialiased. Train examples are
indices [0, num_train_examples) in a seeded permutation per epoch; eval examples are the next
num_eval_examples indices, in order, so the two never overlap.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from vqlab.data import base


def inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of shape `kind` in coordinates scaled to the unit radius (v points down)."""
  au, av = np.abs(u), np.abs(v)
  if kind == 'circle':
    return u * u + v * v <= 1.0
  if kind == 'square':
    return np.maximum(au, av) <= 0.8
  if kind == 'triangle':  # Apex up at (0, -1), base at v = 0.75 from u = -0.95 to 0.95.
    return (v <= 0.75) & (v >= -1.0 + au * (1.75 / 0.95))
  if kind == 'diamond':
    return au + av <= 1.0
  if kind == 'cross':
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
  if kind == 'ring':
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)
  raise ValueError(f'unknown shape {kind!r}')


SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross', 'ring')


def subpixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """(ys, xs) float [2S, 2S]: centres of the 2x2 subsamples of each pixel, in pixel units."""
  sub = (np.arange(2 * size) + 0.5) / 2
  ys, xs = np.meshgrid(sub, sub, indexing='ij')
  return ys, xs


def coverage(kind: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float,
             radius: float) -> np.ndarray:
  """Antialiased alpha float [S, S, 1] of shape `kind` centred at (cy, cx) with `radius` (pixels),
  from the `subpixel_grid(S)` (ys, xs): the fraction of each pixel's 2x2 subsamples inside."""
  size = ys.shape[0] // 2
  mask = inside(kind, (xs - cx) / radius, (ys - cy) / radius)
  return mask.reshape(size, 2, size, 2).mean(axis=(1, 3))[..., None]


def contrasting_colour(rng: np.random.Generator, background: np.ndarray,
                       min_contrast: float) -> np.ndarray:
  """A random colour [C] at least `min_contrast` (max-abs) from `background` [C] in [0, 1].

  Rejection sampling keeps the shape visible; after 100 misses, the complement of `background`.
  """
  foreground = rng.random(len(background))
  for _ in range(100):
    if np.abs(foreground - background).max() >= min_contrast:
      return foreground
    foreground = rng.random(len(background))
  return 1.0 - background


def shape_classes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`data.shapes`, checked: a non-empty tuple of names from SHAPES."""
  classes = tuple(base.get(config, 'shapes'))
  unknown = [s for s in classes if s not in SHAPES]
  if not classes or unknown:
    raise ValueError(
        f'data.shapes: need a non-empty tuple from {list(SHAPES)}, got {classes!r}.'
    )
  return classes


def min_contrast(config: ml_collections.ConfigDict) -> float:
  """`data.min_contrast`, checked to lie in [0, 1]."""
  contrast = float(base.get(config, 'min_contrast'))
  if not 0 <= contrast <= 1:
    raise ValueError(f'data.min_contrast: must be in [0, 1], got {contrast}.')
  return contrast


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `shapes` dataset."""
  return ml_collections.ConfigDict({
      'name': 'shapes',
      'image_size': 32,  # Side of the square output images.
      'seed': 0,  # Seeds every example (and the per-epoch train order).
      'channels': 3,  # Channels of the output images (1 = grayscale).
      'shapes':
          SHAPES,  # Classes; the label is the index of the shape in this tuple.
      'size_range':
          (0.3, 0.9
          ),  # Shape diameter as a fraction of the image side (lo, hi).
      'min_contrast':
          0.3,  # Least max-abs difference of foreground and background (of 1).
      'num_train_examples': 100_000,  # Train examples: indices [0, N).
      'num_eval_examples':
          1_000,  # Eval examples: indices [N_train, N_train + N_eval).
  })


class ShapeRenderer:
  """Renders example indices to images and labels; see the module docstring."""

  def __init__(self, *, seed: int, image_size: int, channels: int,
               shapes: tuple[str, ...], size_range: tuple[float, float],
               min_contrast: float):
    self.seed, self.size, self.channels = seed, image_size, channels
    self.shapes, self.size_range, self.min_contrast = shapes, size_range, min_contrast
    self._ys, self._xs = subpixel_grid(image_size)
    self.image_shape = (image_size, image_size, channels)
    self.video_shape, self.num_classes = None, len(shapes)

  def example(self, index: int) -> tuple[np.ndarray, int]:
    """Example `index`: (float32 [S, S, C] in [-1, 1], label int)."""
    rng = np.random.default_rng((self.seed, index))
    label = int(rng.integers(len(self.shapes)))
    lo, hi = self.size_range
    radius = rng.uniform(lo, hi) * self.size / 2
    cy, cx = rng.uniform(radius, self.size - radius, size=2)
    background = rng.random(self.channels)
    foreground = contrasting_colour(rng, background, self.min_contrast)
    alpha = coverage(self.shapes[label], self._ys, self._xs, cy, cx, radius)
    image = background * (1 - alpha) + foreground * alpha
    return (image * 2 - 1).astype(np.float32), label

  def batch(self, indices: np.ndarray) -> base.Batch:
    """int [k] indices -> {'image': float32 [k, S, S, C], 'label': int32 [k]}."""
    images = np.empty((len(indices), self.size, self.size, self.channels),
                      np.float32)
    labels = np.empty((len(indices),), np.int32)
    for i, index in enumerate(indices):
      images[i], labels[i] = self.example(int(index))
    return {'image': images, 'label': labels}


def _renderer(config: ml_collections.ConfigDict) -> ShapeRenderer:
  return ShapeRenderer(seed=int(base.get(config, 'seed')),
                       image_size=base.positive_int(config, 'image_size'),
                       channels=base.positive_int(config, 'channels'),
                       shapes=shape_classes(config),
                       size_range=base.fraction_range(config, 'size_range'),
                       min_contrast=min_contrast(config))


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'image' float32 [b, S, S, channels] in [-1, 1], 'label' int32 [b]."""
  return base.rendered_source(config, _renderer, split=split,
                              global_batch_size=global_batch_size,
                              process_index=process_index,
                              process_count=process_count)
