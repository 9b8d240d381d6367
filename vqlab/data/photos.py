"""`photos`: random crops of the real photos bundled in the scikit-image / scikit-learn wheels.

Train: example (step, row) picks a train photo uniformly, a square crop whose side is a uniform
fraction in [crop_min_fraction, 1] of the photo's shorter side at a uniform position, resizes it to
`image_size` (antialiased bilinear) and flips it horizontally with probability 1/2; all of it drawn
from `np.random.default_rng((seed, step, row))`. Eval: the held-out `eval_photos`, each cut into a
centred grid of non-overlapping square tiles (`eval_tiles_per_side` along the shorter side, as many
as fit along the longer one) resized to `image_size`. No eval photo is ever cropped for training.

Speed: each photo is kept as a pyramid of 2x box-filtered reductions, and a crop is resampled from
the coarsest level that still has at least `image_size` pixels across it, so a crop costs
O(image_size^2) whatever the photo size.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from vqlab.data import base
from vqlab.data import photo_files

_EVAL_PHOTOS = ('chelsea', 'coffee', 'flower')
_TRAIN_PHOTOS = tuple(p for p in photo_files.PHOTOS if p not in _EVAL_PHOTOS)


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `photos` dataset (the quickstart's data)."""
  return ml_collections.ConfigDict({
      'name': 'photos',
      'image_size':
          64,  # Side of the square output images (eval tiles; train too unless below).
      # >0: train on crops of this side instead, cut at the pixel scale of an image_size crop
      # (a smaller window, same detail), so a fully convolutional model trains faster.
      'train_image_size': 0,
      'seed':
          0,  # Seeds the train crops (photo, size, position, flip) of every (step, row).
      # Photos cropped for training; names from vqlab.data.photo_files.PHOTOS.
      'train_photos': _TRAIN_PHOTOS,
      # Whole photos held out for eval; must not overlap train_photos.
      'eval_photos': _EVAL_PHOTOS,
      # Train crop side / the photo's shorter side is drawn uniformly in [this, 1].
      'crop_min_fraction': 0.15,
      'random_flip':
          True,  # Flip train crops horizontally with probability 1/2.
      # Eval tiles along each eval photo's shorter side (3 -> 12 tiles per 3:4 photo).
      'eval_tiles_per_side': 3,
  })


class _Pyramid:
  """A photo and its successive 2x reductions, coarse enough to serve `image_size` crops."""

  def __init__(self, photo: np.ndarray, image_size: int):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self.height, self.width = photo.shape[:2]
    level = Image.fromarray(np.ascontiguousarray(photo))
    self.levels = [level]
    while min(level.size) >= 2 * image_size:
      level = level.reduce(2)
      self.levels.append(level)

  def crop(self, top: float, left: float, side: float,
           image_size: int) -> np.ndarray:
    """Square crop (in original pixels, float) resized to uint8 [image_size, image_size, 3].

    Resamples from the coarsest level on which the crop still spans >= image_size pixels.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    k = len(self.levels) - 1
    while k > 0 and side * self.levels[k].size[1] / self.height < image_size:
      k -= 1
    w, h = self.levels[k].size
    # Level k's pixel j averages original pixels [2^k j, 2^k (j + 1)) (the
    # last one of an odd side fewer): the scale is 2^-k, not w / width.
    scale = 0.5**k
    box = (max(0.0, left * scale), max(0.0, top * scale),
           min(float(w),
               (left + side) * scale), min(float(h), (top + side) * scale))
    return np.asarray(self.levels[k].resize((image_size, image_size),
                                            Image.BILINEAR, box=box))


def _tile_grid(height: int, width: int,
               tiles_per_side: int) -> tuple[int, int, int, int, int]:
  """(tile side, rows, cols, top, left) of the centred eval grid of a `height x width` photo."""
  side = min(height, width) // tiles_per_side
  if side < 1:
    raise ValueError(
        f'data.eval_tiles_per_side={tiles_per_side} exceeds the photo size {height}x{width}.'
    )
  rows, cols = height // side, width // side
  return side, rows, cols, (height - rows * side) // 2, (width -
                                                         cols * side) // 2


def eval_tiles(photo: np.ndarray, tiles_per_side: int,
               image_size: int) -> np.ndarray:
  """Centred grid of non-overlapping square tiles: uint8 [n_tiles, image_size, image_size, 3].

  The tile side is `min(H, W) // tiles_per_side`; the grid has as many tiles as fit along each
  side and is centred; tiles are in row-major order.
  """
  side, rows, cols, top, left = _tile_grid(photo.shape[0], photo.shape[1],
                                           tiles_per_side)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.ascontiguousarray(photo))
  tiles = []
  for r in range(rows):
    for c in range(cols):
      box = (left + c * side, top + r * side, left + (c + 1) * side,
             top + (r + 1) * side)
      tiles.append(
          np.asarray(
              image.resize((image_size, image_size), Image.BILINEAR, box=box)))
  return np.stack(tiles)


def eval_photo_names(config: ml_collections.ConfigDict) -> list[str]:
  """Source photo of each eval example, in eval order: a list of num_examples names."""
  per_side = base.positive_int(config, 'eval_tiles_per_side')
  names = []
  for n in base.bundled_names(config, 'eval_photos', photo_files.PHOTOS,
                              'photo'):
    h, w = photo_files.load_photo(n).shape[:2]
    _, rows, cols, _, _ = _tile_grid(h, w, per_side)
    names += [n] * (rows * cols)
  return names


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the `photos` source; batches hold 'image' float32 [b, S, S, 3] in [-1, 1]."""
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  size = base.positive_int(config, 'image_size')
  seed = int(base.get(config, 'seed'))
  train_names, eval_names = base.held_out_names(config, 'photo',
                                                photo_files.PHOTOS)
  shape = (size, size, 3)

  if split == 'train':
    lo = float(base.get(config, 'crop_min_fraction'))
    if not 0 < lo <= 1:
      raise ValueError(f'data.crop_min_fraction: must be in (0, 1], got {lo}.')
    flip = bool(base.get(config, 'random_flip'))
    train_size = int(base.get(config, 'train_image_size')) or size
    if not 0 < train_size <= size:
      raise ValueError(
          f'data.train_image_size: must be in [0, image_size={size}], got '
          f'{train_size}.')
    window = train_size / size  # Crop window relative to an image_size crop.
    shape = (train_size, train_size, 3)
    pyramids = [
        _Pyramid(photo_files.load_photo(n), train_size) for n in train_names
    ]

    def make_batch(step: int, rows: np.ndarray) -> base.Batch:
      images = np.empty((len(rows),) + shape, np.uint8)
      for i, row in enumerate(rows):
        rng = np.random.default_rng((seed, step, int(row)))
        pyr = pyramids[rng.integers(len(pyramids))]
        u = rng.random(4)
        side = window * (lo + (1 - lo) * u[0]) * min(pyr.height, pyr.width)
        crop = pyr.crop(u[1] * (pyr.height - side), u[2] * (pyr.width - side),
                        side, train_size)
        images[i] = crop[:, ::-1] if flip and u[3] < 0.5 else crop
      return {'image': base.to_unit_range(images)}

    return base.NumpyTrainSource(make_batch, per_host_batch_size=b,
                                 process_index=process_index, num_examples=None,
                                 image_shape=shape, num_classes=None)

  per_side = base.positive_int(config, 'eval_tiles_per_side')
  tiles = np.concatenate([
      eval_tiles(photo_files.load_photo(n), per_side, size) for n in eval_names
  ])
  tiles = base.to_unit_range(tiles)
  return base.NumpyEvalSource(lambda indices: {'image': tiles[indices]},
                              num_examples=len(tiles),
                              global_batch_size=global_batch_size,
                              per_host_batch_size=b,
                              process_index=process_index, image_shape=shape,
                              num_classes=None)
