"""`tfds`: any TensorFlow Datasets image dataset (imagenet2012, cifar10, fashion_mnist, ...).

Nothing is downloaded unless `data.download=True`: prepare the data beforehand with
`tfds build NAME --data_dir=DIR` (ImageNet: put the tars in `--manual_dir`). Each host reads its
own even slice of the split (`tfds.even_splits`); see `pipeline.py` for order and resume, and
`preprocess.py` for the image transforms. `build_source` is shared with `tfds_video`.

The feature `data.image_key` is a `tfds.features.Image` of uint8 or uint16 (decoded to 8 bits),
or of float32 in [0, 1], or a uint8 `tfds.features.Tensor` [h, w, C] of pixels with C =
`data.channels`; Tensors of other dtypes or channels are refused at build.

Captions (text-to-image): `data.caption_key` names a text feature, as a '/'-separated path into
nested features (coco_captions: 'captions/text'). Batches then also carry 'caption', a numpy
unicode array [b] (dtype '<U..'; eval padding rows hold ''). A feature holding several captions
per image (a sequence of strings, like coco_captions') gives one: the first on eval, and on train
a random one drawn from the example's position in the stream (so a resumed run replays the same
choice, and each epoch draws anew). An image without captions gets ''. With captions that say
'left' or 'right', consider `data.random_flip=False`: flips do not rewrite the text.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import ml_collections
from ml_collections import config_dict
import numpy as np
from vqlab.data.lazy import tf
from vqlab.data.lazy import tfds

from vqlab.data import base
from vqlab.data import pipeline
from vqlab.data import preprocess

_CAPTION_STREAM = 0xCA7  # Seeds of the train caption choice: fold_in(example seed, this).


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `tfds` dataset; `tfds_name` must be set."""
  return ml_collections.ConfigDict({
      'name': 'tfds',
      'image_size': 256,  # Side of the square output images.
      'seed': 0,  # Seeds the train order and augmentations.
      'tfds_name':
          '',  # Required: a tfds image dataset, e.g. 'imagenet2012' or 'cifar10'.
      'data_dir':
          config_dict.placeholder(str),  # tfds data dir; None = tfds' default.
      'manual_dir':
          config_dict.placeholder(str),  # Manual downloads (imagenet2012 tars).
      'download':
          False,  # Download and prepare when missing (never at run time by default).
      'train_split':
          'train',  # tfds split string of the train set, e.g. 'train[:90%]'.
      'eval_split':
          'validation',  # tfds split string of the eval set (cifar10: 'test').
      'image_key': 'image',  # Feature holding the image.
      'label_key': 'label',  # Feature holding the class label; '' = no labels.
      # Text feature of the caption(s), a '/'-separated path (coco_captions: 'captions/text');
      # '' = no captions. Several per image: eval takes the first, train a random one.
      'caption_key': '',
      **preprocess.augment_defaults(),
  })


def load_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of `data.tfds_name` (downloaded and prepared first when `data.download`)."""
  name = base.get(config, 'tfds_name')
  if not name:
    raise ValueError(
        f'data.tfds_name: required for data.name={config.get("name")!r} (e.g. '
        "'imagenet2012', 'cifar10', 'fashion_mnist'; videos: 'ucf101').")
  data_dir = base.get(config, 'data_dir')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f'data.tfds_name: tfds has no dataset {name!r} ({e}).') from e
  if base.get(config, 'download'):
    manual_dir = base.get(config, 'manual_dir')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  return builder


def _split_size(builder: tfds.core.DatasetBuilder, split,
                key: str) -> int | None:
  """Examples in `split` from the prepared metadata; None when tfds has no split info."""
  if not builder.info.splits:
    return None
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(
        f'data.{key}: bad split {split!r} for {builder.name}: {e}') from e


def _records(builder, split, feature_key: str, label_key: str, key: str,
             caption_key: str = '', reader=(False, None)) -> tf.data.Dataset:
  """{key: encoded bytes (videos: encoded frames [L]) or pixels ([L,] h, w, C), 'label'?,
  'caption'?: string [] or [n]} of `split` in file order; `reader`: `_pixel_reader`'s."""
  name = builder.name
  decode, convert = reader
  try:
    ds = builder.as_dataset(
        split=split, shuffle_files=False,
        decoders=None if decode else {feature_key: tfds.decode.SkipDecoding()})
  except AssertionError as e:  # tfds' way of saying the data is not prepared.
    data_dir = os.path.dirname(os.path.dirname(
        builder.data_dir))  # Drop name/version.
    raise FileNotFoundError(
        f'data.tfds_name={name!r}: no prepared data under {data_dir}. Prepare it once with '
        f'`tfds build {name} --data_dir={data_dir}` (imagenet2012 needs --manual_dir with the '
        'tars), or set data.download=True.') from e

  def select(example):
    out = {
        key: convert(example[feature_key]) if convert else example[feature_key]
    }
    if label_key:
      out['label'] = example[label_key]
    if caption_key:
      caption = example
      for part in caption_key.split('/'):
        caption = caption[part]
      out['caption'] = caption
    return out

  return ds.map(select)


def _pixel_reader(feature, where: str, channels: int):
  """How `_records` reads the image or video `feature` (`where` names it in errors): (decode,
  convert): tfds decodes it when `decode`, then `convert` (None: none) maps it to the
  preprocessing's input, encoded bytes ([L] for videos) or pixels [(L,) h, w, channels] in
  [0, 255]; ValueError for a feature neither kind.

  Image and Video features of uint8 or uint16 (and others not Tensors) stay encoded: the
  preprocessing decodes them (a video only its clip's frames). A float32 Image, stored as the
  bytes of its floats, is decoded by tfds and its [0, 1] taken to [0, 255] (gray repeated to RGB
  for channels=3); a uint8 Tensor is taken as pixels, so it must have `channels` channels.
  """
  image_feature = isinstance(feature, tfds.features.Image)
  if image_feature and feature.tf_dtype == tf.float32:

    def to_pixels(image):
      """[h, w, 1] in [0, 1] -> [h, w, channels] in [0, 255]."""
      image = image * 255
      return tf.image.grayscale_to_rgb(image) if channels == 3 else image

    return True, to_pixels
  if not isinstance(feature, tfds.features.Tensor):
    return False, None
  dtype = feature.tf_dtype
  if dtype != tf.uint8:
    raise ValueError(
        f'{where} is a Tensor of {dtype.name}; supported: Image features (uint8, uint16, '
        'float32 in [0, 1]), Video (uint8, uint16), uint8 Tensors of pixels.')
  if feature.shape[-1] != channels:
    raise ValueError(
        f'{where} is a uint8 Tensor of {feature.shape[-1]} channels, read as pixels as '
        f'they are, but data.channels={channels}; they must be equal.')
  return True, None


def _check_caption_key(features, caption_key: str, name: str) -> int:
  """The rank (0: one caption, 1: several) of the string feature at `caption_key`; ValueError
  unless it is a path to one of rank 0 or 1."""
  info = features.get_tensor_info()
  for depth, part in enumerate(caption_key.split('/')):
    if not isinstance(info, dict) or part not in info:
      where = '/'.join(caption_key.split('/')[:depth]) or 'the top level'
      known = list(info) if isinstance(info, dict) else []
      raise ValueError(
          f'data.caption_key: {name} has no feature {part!r} under {where} '
          f'(features there: {known}); coco_captions: \'captions/text\'.')
    info = info[part]
  dtype = None if isinstance(info, dict) else (
      info.tf_dtype if hasattr(info, 'tf_dtype') else info.dtype)
  if dtype != tf.string or len(info.shape) > 1:
    raise ValueError(
        f'data.caption_key: {caption_key!r} of {name} must be a text feature (a '
        f'string or a sequence of strings), got {info}.')
  return len(info.shape)


def pick_caption(captions, seed=None):
  """string [] or [n] -> one string: the first (seed None) or a random one; '' when n = 0."""
  captions = tf.reshape(captions, [-1])
  n = tf.size(captions)
  if seed is None:
    index = tf.constant(0, tf.int32)
  else:
    index = tf.random.stateless_uniform([], seed, minval=0,
                                        maxval=tf.maximum(n, 1), dtype=tf.int32)
  return tf.concat([captions, tf.constant([''])], 0)[index]


def _caption_fns(train_fn, eval_fn):
  """Wraps the preprocessing to also output the example's 'caption' (one string)."""

  def train(example, seed):
    out = dict(train_fn(example, seed))
    out['caption'] = pick_caption(
        example['caption'],
        tf.random.experimental.stateless_fold_in(seed, _CAPTION_STREAM))
    return out

  def eval_(example):
    out = dict(eval_fn(example))
    out['caption'] = pick_caption(example['caption'])
    return out

  return train, eval_


def to_unicode(captions: np.ndarray) -> np.ndarray:
  """UTF-8 bytes (object or 'S' array) [b] -> numpy unicode array [b] (dtype '<U..')."""
  return np.array([
      c.decode('utf-8', errors='replace') if isinstance(c, bytes) else str(c)
      for c in np.asarray(captions).reshape(-1)
  ], dtype=str)


class CaptionSource(pipeline.TfDataSource):
  """A TfDataSource whose batches' 'caption' (UTF-8 bytes from tf.data) becomes unicode;
  `several_captions`: its examples hold several, of which train batches draw one per epoch."""

  several_captions = False

  def batches(self, start_step: int = 0) -> Iterator[base.Batch]:
    """The source's batches (`base.DataSource.batches`) with 'caption' a
    unicode array [b]."""
    for batch in super().batches(start_step):
      batch['caption'] = to_unicode(batch['caption'])
      yield batch


def build_source(config: ml_collections.ConfigDict, *, split: str,
                 global_batch_size: int, process_index: int, process_count: int,
                 key: str, train_fn: Callable[[Any, Any], Any],
                 eval_fn: Callable[[Any], Any], shuffle_buffer: int,
                 example_shape: tuple[int, ...]) -> pipeline.TfDataSource:
  """The tf.data source of a tfds dataset, shared by `tfds` (key='image') and `tfds_video`.

  Args:
    config: the data config (tfds_name, data_dir, download, manual_dir, train_split, eval_split,
      `<key>_key`, label_key, seed; caption_key where the config has it).
    split: 'train' or 'eval'.
    global_batch_size: B.
    process_index: this host.
    process_count: number of hosts.
    key: 'image' or 'video': the batch key, and `data.<key>_key` names the tfds feature.
    train_fn: f({key: encoded, 'label'?}, seed [2] int64) -> preprocessed example.
    eval_fn: f({key: encoded, 'label'?}) -> preprocessed example.
    shuffle_buffer: train shuffle buffer (examples per host).
    example_shape: shape of a preprocessed `example[key]`: (S, S, C), or (T, S, S, C) for videos.

  Returns:
    The source; its `image_shape` is `example_shape[-3:]` and its `video_shape` is
    `example_shape` for key='video', else None. With `data.caption_key` set its batches also
    carry 'caption' (unicode [b]).
  """
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  pipeline.hide_accelerators_from_tf()
  builder = load_builder(config)
  features = builder.info.features
  feature_key, label_key = base.get(config, f'{key}_key'), base.get(
      config, 'label_key')
  if feature_key not in features:
    raise ValueError(
        f'data.{key}_key: {builder.name} has no feature {feature_key!r}; '
        f'features: {list(features)}.')
  shape = getattr(features[feature_key], 'shape', None)
  if shape is not None and len(shape) != len(example_shape):
    raise ValueError(
        f'data.{key}_key: feature {feature_key!r} of {builder.name} is not '
        f'{"a video" if key == "video" else "an image"} (shape '
        f'{tuple(shape)}); features: {list(features)}.')
  reader = _pixel_reader(
      features[feature_key], f'data.{key}_key: feature {feature_key!r} of '
      f'{builder.name}', example_shape[-1])
  if label_key and label_key not in features:
    raise ValueError(
        f'data.label_key: {builder.name} has no feature {label_key!r}; '
        f"features: {list(features)}; set data.label_key='' for no labels.")
  num_classes = getattr(features[label_key], 'num_classes',
                        None) if label_key else None
  caption_key = config.get('caption_key') or ''
  extra_padding = None
  several_captions = False
  if caption_key:
    several_captions = _check_caption_key(features, caption_key,
                                          builder.name) == 1
    train_fn, eval_fn = _caption_fns(train_fn, eval_fn)
    extra_padding = {'caption': ''}

  split_key = 'train_split' if split == 'train' else 'eval_split'
  tfds_split = base.get(config, split_key)
  host_split = tfds.even_splits(tfds_split, n=process_count)[process_index]
  num_examples = _split_size(builder, tfds_split, split_key)

  def records():
    return _records(builder, host_split, feature_key, label_key, key,
                    caption_key, reader)

  num_batches = None  # Train: endless.
  if split == 'train':
    seed = int(base.get(config, 'seed'))
    make = lambda start: pipeline.train_dataset(
        records(), preprocess=train_fn, seed=seed, process_index=process_index,
        per_host_batch_size=b, shuffle_buffer=shuffle_buffer, start_step=start)
  else:
    # Every host pads to the largest host shard. tfds splits each part of a split such as
    # 'validation+test' evenly on its own: the lowest hosts may get one more of each part.
    shards = tfds.even_splits(tfds_split, n=process_count)
    sizes = [_split_size(builder, shard, split_key) for shard in shards]
    if None in sizes:  # No split metadata (e.g. under tfds.testing.mock_data): count.
      sizes = [
          pipeline.cardinality(
              _records(builder, shard, feature_key, label_key, key,
                       reader=reader)) for shard in shards
      ]
    num_examples = sum(sizes)
    if not num_examples:
      raise ValueError(
          f'data.eval_split: {tfds_split!r} of {builder.name} is empty or its size '
          'is unknown.')
    num_batches = base.eval_num_batches(max(sizes), b)
    make = lambda start: pipeline.eval_dataset(
        records(), preprocess=eval_fn, per_host_batch_size=b, num_batches=
        num_batches, image_shape=example_shape, has_label=bool(
            label_key), start_step=start, key=key, extra_padding=extra_padding)
  records()  # Fail now, not at the first batch, when the data is missing.
  host_num_examples = _split_size(builder, host_split, split_key)
  if host_num_examples is None:
    host_num_examples = pipeline.cardinality(records())
  source_cls = CaptionSource if caption_key else pipeline.TfDataSource
  source = source_cls(make, per_host_batch_size=b, num_examples=num_examples,
                      image_shape=example_shape[-3:], num_classes=num_classes,
                      video_shape=example_shape if key == 'video' else None,
                      host_num_examples=host_num_examples,
                      num_batches=num_batches)
  if caption_key:
    source.several_captions = several_captions
  return source


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'image' float32 [b, S, S, channels] in [-1, 1], 'label' int32 [b] (when
  data.label_key), 'caption' unicode [b] (when data.caption_key)."""
  base.check_split(split)
  base.host_batch_size(global_batch_size, process_index, process_count)
  base.get(config, 'caption_key')
  aug = preprocess.Augment.from_config(config)
  return build_source(config, split=split, global_batch_size=global_batch_size,
                      process_index=process_index, process_count=process_count,
                      key='image', train_fn=preprocess.train_fn(aug),
                      eval_fn=preprocess.eval_fn(aug),
                      shuffle_buffer=aug.shuffle_buffer,
                      example_shape=aug.image_shape)
