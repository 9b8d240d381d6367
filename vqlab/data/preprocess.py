"""Per-example tf.data image preprocessing shared by the `tfds` and `image_folder` datasets
(`video_preprocess.py` reuses its decode / resize / crop helpers on clips).

Every function maps one example `{'image': encoded bytes (JPEG/PNG/GIF/BMP) or pixels already
decoded ([h, w, C], uint8 or float in [0, 255]), 'label'?: int}` to `{'image': float32 [S, S, C] in
[-1, 1], 'label'?: int32}`. Randomness is stateless: train ops take a `[2]` int64 seed that the
pipeline derives from the example's position in the host's stream, so augmentations replay exactly.

Train modes (`data.train_augment`):
  'resize_random_crop': resize the shorter side to S, take a random S x S crop (taming VQGAN).
  'random_resized_crop': Inception crop: a random window with area fraction in
    `crop_area_range` and aspect ratio in `crop_aspect_range`, resized to S x S. JPEGs decode only
    the window.
Both then flip horizontally with probability 1/2 when `random_flip`. Eval: resize the shorter side
to S, centre crop S x S. With `train_image_size` T > 0 (datasets whose config has the key), train
images are T x T instead: 'resize_random_crop' cuts a T x T crop at the pixel scale of the S x S
eval images (a fully convolutional model trains on smaller, cheaper crops), 'random_resized_crop'
resizes its window to T x T.

An image (or clip) longer than `MAX_ASPECT_RATIO` times its shorter side is first trimmed to that
ratio around its centre, before 'resize_random_crop' and eval resize it: a 2 x 4000 strip would
otherwise be enlarged whole (256 x 512000 at S = 256, gigabytes per image) for one S x S crop.
Images up to that ratio are untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
from vqlab.data.lazy import tf

from vqlab.data import base

TRAIN_AUGMENTS = ('resize_random_crop', 'random_resized_crop')
MAX_ASPECT_RATIO = 16
RESIZE_METHODS = ('bilinear', 'bicubic', 'bilinear_no_antialias')


def augment_defaults() -> dict[str, Any]:
  """The preprocessing keys of the tf.data datasets' configs, with their defaults."""
  return {
      'channels':
          3,  # Decoded channels: 3 = RGB (gray is replicated, alpha dropped), 1 = gray.
      # Train crop: 'resize_random_crop' (shorter side to image_size, random square crop) or
      # 'random_resized_crop' (Inception-style window, see crop_*_range).
      'train_augment': 'resize_random_crop',
      'crop_area_range':
          (0.08, 1.0
          ),  # random_resized_crop: window area / image area (lo, hi).
      'crop_aspect_range':
          (3 / 4, 4 / 3
          ),  # random_resized_crop: window width / height (lo, hi).
      'random_flip':
          True,  # Flip train images horizontally with probability 1/2.
      # Resize filter: 'bilinear' or 'bicubic' (TiTok's; PIL's filter,
      # clipped to the pixel range as PIL clips), antialiased as PIL's;
      # 'bilinear_no_antialias': OpenCV's INTER_LINEAR (taming's loaders).
      'resize_method': 'bilinear',
      # Train shuffle buffer (examples per host), reseeded each epoch
      # (image_folder shuffles all of a host's file names instead).
      'shuffle_buffer': 10_000,
  }


@dataclasses.dataclass(frozen=True)
class Augment:
  """Validated preprocessing settings (see `augment_defaults`)."""
  image_size: int
  channels: int
  train_augment: str
  crop_area_range: tuple[float, float]
  crop_aspect_range: tuple[float, float]
  random_flip: bool
  shuffle_buffer: int
  train_image_size: int = 0  # 0: train at image_size too.
  resize_method: str = 'bilinear'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Augment:
    """Reads and checks the keys of `augment_defaults`, `image_size` and, where the config has
    it, `train_image_size` from `config`."""
    channels = base.positive_int(config, 'channels')
    if channels not in (1, 3):
      raise ValueError(f'data.channels: must be 1 or 3, got {channels}.')
    mode = base.get(config, 'train_augment')
    if mode not in TRAIN_AUGMENTS:
      raise ValueError(
          f'data.train_augment: must be one of {list(TRAIN_AUGMENTS)}, got {mode!r}.'
      )
    method = base.get(config, 'resize_method')
    if method not in RESIZE_METHODS:
      raise ValueError(f'data.resize_method: must be one of '
                       f'{list(RESIZE_METHODS)}, got {method!r}.')
    size = base.positive_int(config, 'image_size')
    train_size = config.get('train_image_size', 0)
    if isinstance(train_size, bool) or not isinstance(
        train_size, int) or not (0 <= train_size <= size):
      raise ValueError(
          f'data.train_image_size: must be an integer in [0, image_size={size}], '
          f'got {train_size!r}.')
    return cls(
        image_size=size, channels=channels, train_augment=mode,
        crop_area_range=base.fraction_range(config, 'crop_area_range'),
        crop_aspect_range=base.fraction_range(config, 'crop_aspect_range',
                                              upper=100.0),
        random_flip=bool(base.get(config, 'random_flip')),
        shuffle_buffer=base.positive_int(config, 'shuffle_buffer'),
        train_image_size=train_size, resize_method=method)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(S, S, C): the shape of an eval image."""
    return (self.image_size, self.image_size, self.channels)

  @property
  def train_shape(self) -> tuple[int, int, int]:
    """(T, T, C): the shape of a train image (T = train_image_size or S)."""
    side = self.train_image_size or self.image_size
    return (side, side, self.channels)


# JPEGs decode with the accurate integer DCT, as PIL (and so the reference
# statistics of FID) decode them: TF's default fast DCT is off by up to about
# 11 grey levels (a mean of 1) on photos.
JPEG_DCT = 'INTEGER_ACCURATE'


def _decoded(image) -> bool:
  """Whether `image` holds pixels already decoded, not encoded bytes."""
  return tf.convert_to_tensor(image).dtype != tf.string


def decode_image(encoded, channels: int):
  """Encoded bytes (JPEG/PNG/GIF/BMP) -> uint8 [h, w, channels]; pixels already decoded
  ([h, w, channels], uint8 or float in [0, 255]) are returned as they are."""
  if _decoded(encoded):
    return encoded

  def decode(c):
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=c, dct_method=JPEG_DCT),
        lambda: tf.io.decode_image(encoded, channels=c, expand_animations=False
                                  ))

  if channels == 1:
    # TF decodes GIF and BMP only to 3 (or 4) channels: gray from RGB there.
    prefix = tf.strings.substr(encoded, 0, 3)
    rgb_only = tf.logical_or(tf.equal(prefix, b'GIF'),
                             tf.equal(tf.strings.substr(prefix, 0, 2), b'BM'))
    image = tf.cond(rgb_only, lambda: tf.image.rgb_to_grayscale(decode(3)),
                    lambda: decode(1))
  else:
    image = decode(channels)
  image.set_shape([None, None, channels])
  return image


def resize(image, size, method: str = 'bilinear'):
  """uint8 or float [..., h, w, C] -> float32 [..., *size, C] by a
  `RESIZE_METHODS` filter: 'bilinear' and 'bicubic' antialiased as PIL's
  ('bicubic' clipped to [0, 255], as PIL clips), 'bilinear_no_antialias' as
  OpenCV's INTER_LINEAR (every output pixel from its 2x2 neighbours)."""
  if method == 'bilinear_no_antialias':
    return tf.image.resize(image, size, method='bilinear', antialias=False)
  out = tf.image.resize(image, size, method=method, antialias=True)
  return tf.clip_by_value(out, 0.0, 255.0) if method == 'bicubic' else out


def _trim_to_max_aspect_ratio(image):
  """[..., h, w, C] -> its centred window of at most MAX_ASPECT_RATIO x its shorter side."""
  shape = tf.shape(image)
  h, w = shape[-3], shape[-2]
  longest = tf.minimum(h, w) * MAX_ASPECT_RATIO
  new_h, new_w = tf.minimum(h, longest), tf.minimum(w, longest)
  top, left = (h - new_h) // 2, (w - new_w) // 2
  return image[..., top:top + new_h, left:left + new_w, :]


def resize_shorter_side(image, size: int, method: str = 'bilinear'):
  """uint8 [..., h, w, C] -> float32 [..., h', w', C] with min(h', w') = size (`resize`'s
  `method`), after trimming the longer side to MAX_ASPECT_RATIO x the shorter one; a leading
  frame axis is resized frame by frame to the same size."""
  image = _trim_to_max_aspect_ratio(image)
  hw = tf.cast(tf.shape(image)[-3:-1], tf.float32)
  new_hw = tf.cast(tf.round(hw * (size / tf.reduce_min(hw))), tf.int32)
  new_hw = tf.maximum(new_hw, size)
  return resize(image, new_hw, method)


def center_crop(image, size: int):
  """[..., h, w, C] with h, w >= size -> the central [..., size, size, C]."""
  hw = tf.shape(image)[-3:-1]
  top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
  return image[..., top:top + size, left:left + size, :]


def _inception_crop(encoded, seed, aug: Augment, turned=False):
  """Decodes the random window only (JPEG) or decodes then slices (other formats; pixels
  already decoded are sliced).

  `turned` (bool tensor): the stored pixels are shown turned by 90 degrees
  (EXIF orientations 5-8), so the window's aspect range is the inverse.
  """
  low, high = aug.crop_aspect_range

  def window(shape):
    draw = lambda aspect_range: tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), seed=seed, min_object_covered=
        0.0, area_range=aug.crop_area_range, aspect_ratio_range=aspect_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)[:2]
    if isinstance(turned, bool):
      return draw((1 / high, 1 / low) if turned else (low, high))
    return tf.cond(turned, lambda: draw((1 / high, 1 / low)), lambda: draw(
        (low, high)))

  def jpeg():
    begin, crop_size = window(tf.io.extract_jpeg_shape(encoded))
    crop_window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    return tf.io.decode_and_crop_jpeg(encoded, crop_window,
                                      channels=aug.channels,
                                      dct_method=JPEG_DCT)

  def other():
    image = decode_image(encoded, aug.channels)
    begin, crop_size = window(tf.shape(image))
    return tf.slice(image, begin, crop_size)

  if _decoded(encoded):
    image = other()
  else:
    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image.set_shape([None, None, aug.channels])
  return resize(image, aug.train_shape[:2], aug.resize_method)


def exif_orient(image, orientation):
  """image [H, W, C] stored with the EXIF orientation tag `orientation` (int
  scalar tensor, 1-8; others: as stored) -> the image as a viewer shows it
  (PIL's ImageOps.exif_transpose): [H, W, C], or [W, H, C] for 5-8.

  A random square crop of the stored image, turned, is a random square crop
  of the shown one, so train preprocessing may crop first.
  """
  transposed = lambda x: tf.transpose(x, [1, 0, 2])
  shown = [
      lambda: image,  # 1 (and anything out of range).
      lambda: image[:, ::-1],  # 2: mirrored.
      lambda: image[::-1, ::-1],  # 3: upside down.
      lambda: image[::-1],  # 4: mirrored upside down.
      lambda: transposed(image),  # 5.
      lambda: transposed(image)[:, ::-1],  # 6: turned 90 degrees.
      lambda: transposed(image)[::-1, ::-1],  # 7.
      lambda: transposed(image)[::-1],  # 8: turned -90 degrees.
  ]
  index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
  return tf.switch_case(tf.cast(index, tf.int32), shown)


def to_unit_range(image):
  """[0, 255] -> float32 [-1, 1]."""
  return tf.clip_by_value(tf.cast(image, tf.float32) * (2 / 255) - 1, -1.0, 1.0)


def _output(example, image):
  out = {'image': image}
  if 'label' in example:
    out['label'] = tf.cast(example['label'], tf.int32)
  return out


def train_fn(aug: Augment) -> Callable[[Any, Any], Any]:
  """Returns f(example, seed [2] int64) -> preprocessed train example (image [T, T, C]).

  An example's optional 'orientation' (EXIF, int32) turns the image as a
  viewer shows it (`exif_orient`), before the random flip.
  """

  def fn(example, seed):
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    orientation = example.get('orientation')
    if aug.train_augment == 'random_resized_crop':
      turned = False if orientation is None else ((orientation >= 5) &
                                                  (orientation <= 8))
      image = _inception_crop(example['image'], crop_seed, aug, turned)
    else:
      image = resize_shorter_side(decode_image(example['image'], aug.channels),
                                  aug.image_size, aug.resize_method)
      image = tf.image.stateless_random_crop(image, aug.train_shape,
                                             seed=crop_seed)
    if orientation is not None:  # Turned before the flip mirrors it.
      image = exif_orient(image, orientation)
    if aug.random_flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = tf.ensure_shape(to_unit_range(image), aug.train_shape)
    return _output(example, image)

  return fn


def eval_fn(aug: Augment) -> Callable[[Any], Any]:
  """Returns f(example) -> preprocessed eval example (shorter side to S, centre crop;
  an optional 'orientation' turns the decoded image first, as in `train_fn`)."""

  def fn(example):
    image = decode_image(example['image'], aug.channels)
    if 'orientation' in example:
      image = exif_orient(image, example['orientation'])
    image = resize_shorter_side(image, aug.image_size, aug.resize_method)
    image = center_crop(image, aug.image_size)
    image = tf.ensure_shape(to_unit_range(image), aug.image_shape)
    return _output(example, image)

  return fn
