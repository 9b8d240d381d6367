"""`fashion_mnist`: Fashion-MNIST (70k 28x28 grayscale, 10 classes) read from its IDX files.

The files come from Debian's `dataset-fashion-mnist` package (in /usr/share/datasets/fashion-mnist)
or any copy of the original release; gzip or not. Train = the 60k train file, visited in a seeded
permutation per epoch; eval = the 10k t10k file in order (optionally its first `eval_examples`).
With network, the same data is `data.name='tfds', data.tfds_name='fashion_mnist'`.
"""

from __future__ import annotations

import functools
import os

import ml_collections
from ml_collections import config_dict
import numpy as np
from PIL import Image

from vqlab.data import base
from vqlab.data import idx

CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
               'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'eval': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
}
_RESIZE_MODES = ('pad', 'resize')
_FLIP_STREAM = 0xF11B  # Keeps the flip coins' seeds apart from the epoch permutations'.


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `fashion_mnist` dataset."""
  return ml_collections.ConfigDict({
      'name': 'fashion_mnist',
      'image_size':
          32,  # Side of the square output images (28 is the native size).
      'seed': 0,  # Seeds the per-epoch train order.
      # Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
      'data_dir': '/usr/share/datasets/fashion-mnist',
      # How 28x28 becomes image_size: 'pad' (centred, black border; needs image_size >= 28)
      # or 'resize' (antialiased bilinear).
      'resize': 'pad',
      'random_flip':
          False,  # Flip train images horizontally with probability 1/2.
      # Use only the first N t10k images for eval; None = all 10000.
      'eval_examples': config_dict.placeholder(int),
  })


def _find(data_dir: str, stem: str) -> str:
  for name in (stem, stem + '.gz'):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f'data.data_dir: no {stem}[.gz] in {data_dir!r}. Get the Fashion-MNIST IDX files with '
      '`apt-get install dataset-fashion-mnist` (installs them in '
      '/usr/share/datasets/fashion-mnist), or copy the four files of the original release there, '
      "or use tfds instead: data.name='tfds', data.tfds_name='fashion_mnist'.")


@functools.lru_cache(maxsize=4)
def load(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split: (uint8 [N, 28, 28] images, int32 [N] labels). Cached per process."""
  images_stem, labels_stem = _FILES[split]
  images_path, labels_path = _find(data_dir,
                                   images_stem), _find(data_dir, labels_stem)
  images, labels = idx.read(images_path), idx.read(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(
        f'{images_path}: expected uint8 images [N, H, W], got {images.dtype} '
        f'{images.shape}.')
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(
        f'{labels_path}: expected {len(images)} labels, got shape {labels.shape}.'
    )
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
    raise ValueError(f'{labels_path}: labels outside [0, {len(CLASS_NAMES)}).')
  images.setflags(write=False)
  return images, labels.astype(np.int32)


def _resizer(mode: str, size: int, native: int):
  """Returns f(uint8 [k, native, native]) -> uint8 [k, size, size]."""
  if mode not in _RESIZE_MODES:
    raise ValueError(
        f'data.resize: must be one of {list(_RESIZE_MODES)}, got {mode!r}.')
  if size == native:
    return lambda x: x
  if mode == 'pad':
    if size < native:
      raise ValueError(
          f"data.resize='pad' needs data.image_size >= {native}, got {size}; "
          "use data.resize='resize' to shrink.")
    before = (size - native) // 2
    after = size - native - before
    return lambda x: np.pad(x, ((0, 0), (before, after), (before, after)))

  def resize(x: np.ndarray) -> np.ndarray:
    out = np.empty((len(x), size, size), np.uint8)
    for i, im in enumerate(x):
      out[i] = np.asarray(
          Image.fromarray(im).resize((size, size), Image.BILINEAR))
    return out

  return resize


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source; batches hold 'image' float32 [b, S, S, 1] in [-1, 1], 'label' int32 [b]."""
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  size = base.positive_int(config, 'image_size')
  images, labels = load(str(base.get(config, 'data_dir')), split)
  resize = _resizer(str(base.get(config, 'resize')), size, images.shape[1])
  shape = (size, size, 1)

  def examples(indices: np.ndarray,
               flips: np.ndarray | None = None) -> base.Batch:
    x = resize(images[indices])
    if flips is not None:
      x = np.where(flips[:, None, None], x[:, :, ::-1], x)
    return {'image': base.to_unit_range(x[..., None]), 'label': labels[indices]}

  if split == 'train':
    seed = int(base.get(config, 'seed'))
    flip = bool(base.get(config, 'random_flip'))
    order = base.EpochPermutation(len(images), seed)

    def make_batch(step: int, rows: np.ndarray) -> base.Batch:
      positions = step * global_batch_size + rows
      flips = None
      if flip:  # One coin per global position, independent of the sharding.
        flips = np.array([
            np.random.default_rng((seed, _FLIP_STREAM, p)).random() < 0.5
            for p in positions
        ])
      return examples(order(positions), flips)

    return base.NumpyTrainSource(make_batch, per_host_batch_size=b,
                                 process_index=process_index,
                                 num_examples=len(images), image_shape=shape,
                                 num_classes=len(CLASS_NAMES))

  n = len(images)
  cap = base.get(config, 'eval_examples')
  if cap is not None:
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
      raise ValueError(
          f'data.eval_examples: must be a positive integer or None, got {cap!r}.'
      )
    n = min(n, cap)
  return base.NumpyEvalSource(examples, num_examples=n,
                              global_batch_size=global_batch_size,
                              per_host_batch_size=b,
                              process_index=process_index, image_shape=shape,
                              num_classes=len(CLASS_NAMES))
