"""`image_folder`: your own images laid out as `path/<split>/<class_name>/<image file>`.

The layout of `tfds.folder_dataset.ImageFolder`. Labels are the indices of the class folder names,
sorted, over the train and eval split folders together (so both splits agree). Files are listed
in sorted order; each host reads an even contiguous slice. Preprocessing, order and resume are
those of the `tfds` dataset (`preprocess.py`, `pipeline.py`).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from vqlab.data.lazy import tf

from vqlab.data import base
from vqlab.data import pipeline
from vqlab.data import preprocess

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `image_folder` dataset; `path` must be set."""
  return ml_collections.ConfigDict({
      'name': 'image_folder',
      'image_size': 256,  # Side of the square output images.
      'seed': 0,  # Seeds the train order and augmentations.
      'path': '',  # Required: root folder holding <split>/<class_name>/<images>.
      'train_split': 'train',  # Sub-folder of the train images.
      'eval_split': 'val',  # Sub-folder of the eval images.
      **preprocess.augment_defaults(),
  })


def _split_dir(root: str, split_name: str, key: str) -> str:
  path = os.path.join(root, split_name)
  if not os.path.isdir(path):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise FileNotFoundError(f'data.{key}: no folder {path!r}; sub-folders of {root!r}: {present}.')
  return path


def _classes(root: str, split_names: list[str]) -> list[str]:
  """Sorted class folder names found under the existing split folders."""
  names = set()
  for split_name in split_names:
    path = os.path.join(root, split_name)
    if os.path.isdir(path):
      names.update(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  return sorted(names)


def list_images(split_dir: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
  """All image files under `split_dir/<class>/`, sorted: (paths [N], int32 labels [N])."""
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    for filename in sorted(os.listdir(class_dir)):
      if filename.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(class_dir, filename))
        labels.append(label)
  if not paths:
    raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in the class folders of '
                            f'{split_dir!r}; expected {split_dir}/<class_name>/<image files>.')
  return paths, np.asarray(labels, np.int32)


def build(config: ml_collections.ConfigDict, *, split: str, global_batch_size: int,
          process_index: int, process_count: int) -> base.DataSource:
  """Builds the source: 'image' float32 [b, S, S, channels] in [-1, 1], 'label' int32 [b]."""
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  aug = preprocess.Augment.from_config(config)
  root = str(base.get(config, 'path'))
  if not root:
    raise ValueError("data.path: required for data.name='image_folder' (a folder holding "
                     '<split>/<class_name>/<images>).')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'data.path: {root!r} is not a folder.')
  split_key = 'train_split' if split == 'train' else 'eval_split'
  split_dir = _split_dir(root, str(base.get(config, split_key)), split_key)
  classes = _classes(root, [str(base.get(config, k)) for k in ('train_split', 'eval_split')])
  paths, labels = list_images(split_dir, classes)
  num_examples = len(paths)
  host = np.array_split(np.arange(num_examples), process_count)[process_index]
  host_paths, host_labels = [paths[i] for i in host], labels[host]
  pipeline.hide_accelerators_from_tf()

  def records() -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        {'image': tf.constant(host_paths, tf.string), 'label': host_labels})
    return ds.map(lambda ex: {'image': tf.io.read_file(ex['image']), 'label': ex['label']})

  if split == 'train':
    seed = int(base.get(config, 'seed'))
    make = lambda start: pipeline.train_dataset(
        records(), preprocess=preprocess.train_fn(aug), seed=seed, process_index=process_index,
        per_host_batch_size=b, shuffle_buffer=aug.shuffle_buffer, start_step=start)
  else:
    num_batches = pipeline.host_eval_batches(num_examples, global_batch_size, process_count)
    make = lambda start: pipeline.eval_dataset(
        records(), preprocess=preprocess.eval_fn(aug), per_host_batch_size=b,
        num_batches=num_batches, image_shape=aug.image_shape, has_label=True, start_step=start)
  return pipeline.TfDataSource(make, per_host_batch_size=b, num_examples=num_examples,
                               image_shape=aug.image_shape, num_classes=len(classes))
