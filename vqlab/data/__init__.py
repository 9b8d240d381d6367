"""Datasets: a registry from `config.data.name` to image sources.

  source = vqlab.data.build(config.data, split='train', global_batch_size=256,
                            process_index=jax.process_index(), process_count=jax.process_count())
  for batch in source.batches(start_step=step):  # {'image': f32 [b, H, W, C] in [-1, 1], ...}

Datasets (see each module's docstring):
  photos         real photos bundled in the scikit-image / scikit-learn wheels (the quickstart's).
  fashion_mnist  Fashion-MNIST IDX files (Debian's dataset-fashion-mnist), 10 classes.
  shapes         procedural shapes with exact labels.
  tfds           any prepared TensorFlow Datasets image dataset (imagenet2012, cifar10, ...).
  image_folder   your images in <path>/<split>/<class_name>/.
Modules are imported on first use, so TensorFlow loads only for `tfds` and `image_folder`.
"""

from __future__ import annotations

import importlib

import ml_collections

from vqlab.data import base
from vqlab.data.base import DataSource

_MODULES = {
    'photos': 'vqlab.data.photos',
    'fashion_mnist': 'vqlab.data.fashion_mnist',
    'shapes': 'vqlab.data.shapes',
    'tfds': 'vqlab.data.tfds_images',
    'image_folder': 'vqlab.data.image_folder',
}

__all__ = ['DataSource', 'names', 'default_config', 'build']


def names() -> list[str]:
  """Names of the registered datasets."""
  return list(_MODULES)


def _module(name: str):
  if name not in _MODULES:
    raise ValueError(f'data.name: unknown dataset {name!r}; known: {names()}')
  return importlib.import_module(_MODULES[name])


def default_config(name: str) -> ml_collections.ConfigDict:
  """The documented default `config.data` of dataset `name` (always has name, image_size, seed)."""
  return _module(name).default_config()


def build(config: ml_collections.ConfigDict, *, split: str, global_batch_size: int,
          process_index: int = 0, process_count: int = 1) -> DataSource:
  """Builds this host's source of dataset `config.name`.

  Args:
    config: the experiment's `config.data` (start from `default_config(name)`).
    split: 'train' (infinite, shuffled, augmented) or 'eval' (one ordered pass, padded, 'mask').
    global_batch_size: B, the batch over all hosts; must be divisible by process_count.
    process_index: this host, in [0, process_count).
    process_count: number of hosts.

  Returns:
    A DataSource whose `batches(start_step)` yields per-host batches of B / process_count rows:
    'image' float32 [b, H, W, C] in [-1, 1], 'label' int32 [b] when the data has labels, and on
    eval 'mask' bool [b] (False on padding rows).
  """
  name = base.get(config, 'name')
  module = _module(name)
  base.check_split(split)
  base.host_batch_size(global_batch_size, process_index, process_count)
  return module.build(config, split=split, global_batch_size=global_batch_size,
                      process_index=process_index, process_count=process_count)
