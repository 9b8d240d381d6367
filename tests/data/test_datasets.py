"""Tests of vqlab.data: the registry, each dataset, resume and host sharding."""

import gzip
import itertools
import os
import socket
import struct

import numpy as np
from PIL import Image
import pytest
from vqlab.data.lazy import tf

from vqlab import data
from vqlab.data import fashion_mnist
from vqlab.data import idx
from vqlab.data import photo_files
from vqlab.data import photos
from vqlab.data import pipeline
from vqlab.data import shapes
from vqlab.errors import ConfigError
from vqlab.errors import DataError


def take(source, n, start_step=0):
  return list(itertools.islice(source.batches(start_step), n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def concat_hosts(batches_per_host):
  """[host][step] batches -> [step] global batches (hosts' rows in order)."""
  return [{
      k: np.concatenate([h[s][k]
                         for h in batches_per_host])
      for k in batches_per_host[0][s]
  }
          for s in range(len(batches_per_host[0]))]


def check_batch(batch, b, shape, *, label, eval_):
  assert batch['image'].shape == (
      b,) + shape and batch['image'].dtype == np.float32
  assert batch['image'].min() >= -1 and batch['image'].max() <= 1
  assert ('label' in batch) == label
  if label:
    assert batch['label'].shape == (b,) and batch['label'].dtype == np.int32
  assert ('mask' in batch) == eval_
  if eval_:
    assert batch['mask'].shape == (b,) and batch['mask'].dtype == bool


def check_train_contract(config, global_batch=8, steps=4):
  """Determinism, resume (batches(k) == items k.. of batches(0)), and P=2 == P=1 globally."""
  one = data.build(config, split='train', global_batch_size=global_batch)
  assert isinstance(one,
                    data.DataSource) and one.per_host_batch_size == global_batch
  first = take(one, steps)
  assert_batches_equal(
      first,
      take(data.build(config, split='train', global_batch_size=global_batch),
           steps))
  assert_batches_equal(first[2:], take(one, steps - 2, start_step=2))
  hosts = [
      take(
          data.build(config, split='train', global_batch_size=global_batch,
                     process_index=p, process_count=2), steps) for p in range(2)
  ]
  assert_batches_equal(first, concat_hosts(hosts))
  key = 'image' if 'image' in first[0] else 'video'
  assert not np.array_equal(first[0][key], first[1][key])
  return one, first


def check_eval_contract(config, global_batch, process_count=2):
  """Every host yields the same number of batches, its source's len(); masks count the eval
  set; P=2 == P=1."""
  one = data.build(config, split='eval', global_batch_size=global_batch)
  full = list(one.batches())
  assert sum(int(b['mask'].sum()) for b in full) == one.num_examples
  assert len(full) == len(one) == -(-one.num_examples // global_batch)
  sources = [
      data.build(config, split='eval', global_batch_size=global_batch,
                 process_index=p, process_count=process_count)
      for p in range(process_count)
  ]
  hosts = [list(source.batches()) for source in sources]
  assert len({len(h) for h in hosts}) == 1
  assert all(len(source) == len(hosts[0]) for source in sources)
  return one, full, hosts


# --------------------------------------------------------------------------------------------
# Registry and argument errors.
# --------------------------------------------------------------------------------------------


def test_registry_defaults():
  assert data.names() == [
      'captioned_shapes', 'fashion_mnist', 'image_folder', 'joint',
      'moving_shapes', 'photos', 'shapes', 'tfds', 'tfds_video', 'video_clips',
      'video_folder'
  ]
  for name in ('photos', 'fashion_mnist',
               'shapes'):  # The tf.data ones are tested below.
    config = data.default_config(name)
    assert config.name == name and config.image_size > 0 and isinstance(
        config.seed, int)


def test_errors():
  with pytest.raises(
      ConfigError, match=r"^data\.name: unknown dataset 'nope'; known: "
      r'captioned_shapes, fashion_mnist, image_folder, '):
    data.build(_with(data.default_config('shapes'), name='nope'), split='train',
               global_batch_size=8)
  config = data.default_config('shapes')
  with pytest.raises(
      ValueError,
      match='global_batch_size=9 is not divisible by process_count=2'):
    data.build(config, split='train', global_batch_size=9, process_index=0,
               process_count=2)
  with pytest.raises(ValueError, match='split'):
    data.build(config, split='validation', global_batch_size=8)
  with pytest.raises(ValueError, match='process_index'):
    data.build(config, split='train', global_batch_size=8, process_index=2,
               process_count=2)
  with pytest.raises(ValueError, match='data.image_size'):
    data.build(_with(config, image_size=0), split='train', global_batch_size=8)
  del config['size_range']
  with pytest.raises(ValueError, match='data.size_range: missing'):
    data.build(config, split='train', global_batch_size=8)


def _with(config, **overrides):
  config = config.copy_and_resolve_references()
  config.update(overrides)
  return config


# --------------------------------------------------------------------------------------------
# photos.
# --------------------------------------------------------------------------------------------


def test_photos_bundled_and_offline(monkeypatch):

  def no_network(*args, **kwargs):
    raise AssertionError('photos must not touch the network')

  monkeypatch.setattr(socket.socket, 'connect', no_network)
  photo_files.load_photo.cache_clear()
  for name in photo_files.PHOTOS:
    assert os.path.isfile(photo_files.photo_path(name))
    photo = photo_files.load_photo(name)
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert min(photo.shape[:2]) >= 256


def test_photos_train_contract():
  config = _with(data.default_config('photos'), image_size=32)
  source, batches = check_train_contract(config)
  assert source.num_examples is None and source.image_shape == (32, 32, 3)
  check_batch(batches[0], 8, (32, 32, 3), label=False, eval_=False)
  other_seed = take(
      data.build(_with(config, seed=1), split='train', global_batch_size=8), 1)
  assert not np.array_equal(other_seed[0]['image'], batches[0]['image'])


def test_photo_crops_from_the_pyramid_match_the_photos_crops():
  """A crop resampled from a half-size level is the crop of the photo: on a
  horizontal ramp of odd width (PIL's reduce keeps a last half pixel), the
  right edge's crop from level 1 equals the original's."""
  ramp = (np.arange(129) * 1.98).round().astype(np.uint8)
  photo = np.broadcast_to(ramp[None, :, None], (64, 129, 3)).copy()
  pyramid = photos._Pyramid(photo, 8)  # pylint: disable=protected-access
  assert pyramid.levels[1].size == (65, 32)  # The crop below reads level 1.
  direct = Image.fromarray(photo).resize((8, 8), Image.BILINEAR,
                                         box=(110, 20, 126, 36))
  np.testing.assert_array_equal(pyramid.crop(20.0, 110.0, 16.0, 8), direct)


def test_photos_eval_is_held_out(monkeypatch):
  config = _with(data.default_config('photos'), image_size=32)
  assert not set(config.train_photos) & set(config.eval_photos)
  loaded = []
  load = photo_files.load_photo
  monkeypatch.setattr(photo_files, 'load_photo',
                      lambda n: loaded.append(n) or load(n))
  next(data.build(config, split='train', global_batch_size=8).batches())
  assert loaded and not set(loaded) & set(config.eval_photos)
  assert set(loaded) <= set(config.train_photos)

  source, full, hosts = check_eval_contract(config, global_batch=16)
  names = photos.eval_photo_names(config)
  assert len(names) == source.num_examples and 32 <= source.num_examples <= 64
  assert set(names) == set(config.eval_photos)
  check_batch(full[0], 16, (32, 32, 3), label=False, eval_=True)
  images = np.concatenate([b['image'][b['mask']] for b in full])
  tiles = np.concatenate([
      photos.eval_tiles(load(n), config.eval_tiles_per_side, 32)
      for n in config.eval_photos
  ])
  np.testing.assert_array_equal(images,
                                tiles.astype(np.float32) * (2 / 255) - 1)
  assert_batches_equal(full, concat_hosts(hosts))

  with pytest.raises(ValueError, match='data.eval_photos'):
    data.build(_with(config, eval_photos=('astronaut',)), split='eval',
               global_batch_size=8)
  with pytest.raises(ValueError, match='data.train_photos: unknown photos'):
    data.build(_with(config, train_photos=('eagle',)), split='train',
               global_batch_size=8)


# --------------------------------------------------------------------------------------------
# IDX and fashion_mnist.
# --------------------------------------------------------------------------------------------


def test_idx_hand_built():
  raw = bytes([0, 0, 0x08, 3]) + struct.pack('>3I', 2, 2, 3) + bytes(range(12))
  np.testing.assert_array_equal(idx.parse(raw),
                                np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
  np.testing.assert_array_equal(idx.parse(gzip.compress(raw)), idx.parse(raw))
  ints = bytes([0, 0, 0x0C, 1]) + struct.pack('>1I', 2) + struct.pack(
      '>2i', -5, 70000)
  assert idx.parse(ints).tolist() == [-5, 70000]
  floats = np.array([[1.5, -2.0]], np.float32)
  np.testing.assert_array_equal(idx.parse(idx.encode(floats)), floats)
  with pytest.raises(ValueError, match='bad magic number'):
    idx.parse(bytes([8, 3, 0x08, 1]) + raw[4:])
  with pytest.raises(ValueError, match='unknown IDX type code'):
    idx.parse(bytes([0, 0, 0x07, 1]) + struct.pack('>I', 1) + b'x')
  with pytest.raises(ValueError, match='truncated or corrupt'):
    idx.parse(raw[:-1])


def _fashion_dir(tmp_path, n_train=40, n_test=13):
  rng = np.random.default_rng(0)
  for prefix, n, compress in (('train', n_train, True), ('t10k', n_test,
                                                         False)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for kind, array in (('images-idx3', images), ('labels-idx1', labels)):
      name = f'{prefix}-{kind}-ubyte'
      blob = idx.encode(array)
      (tmp_path / (name + '.gz' if compress else name)
      ).write_bytes(gzip.compress(blob) if compress else blob)
  return str(tmp_path)


def test_fashion_mnist(tmp_path):
  config = _with(data.default_config('fashion_mnist'),
                 data_dir=_fashion_dir(tmp_path))
  source, batches = check_train_contract(
      config, steps=7)  # 7 * 8 > 40: crosses an epoch.
  assert source.num_examples == 40 and source.num_classes == 10
  check_batch(batches[0], 8, (32, 32, 1), label=True, eval_=False)
  images, labels = fashion_mnist.load(config.data_dir, 'train')
  epoch = np.concatenate([b['image'] for b in batches[:5]])[..., 0]
  np.testing.assert_array_equal(epoch[:, :2], -1.0)  # The 'pad' border.
  got = np.rint((epoch[:, 2:30, 2:30] + 1) * 127.5).astype(np.uint8)
  order = [
      next(i for i in range(40) if np.array_equal(images[i], g)) for g in got
  ]
  assert sorted(order) == list(
      range(40))  # One epoch visits every example once.
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in batches[:5]]), labels[order])

  evals = _with(config, eval_examples=11, resize='resize', image_size=16)
  source, full, hosts = check_eval_contract(evals, global_batch=4)
  assert source.num_examples == 11
  check_batch(full[-1], 4, (16, 16, 1), label=True, eval_=True)
  assert full[-1]['mask'].tolist() == [True, True, True, False]
  assert_batches_equal(full, concat_hosts(hosts))

  with pytest.raises(ValueError, match="data.resize='pad' needs"):
    data.build(_with(config, image_size=16), split='train', global_batch_size=8)
  with pytest.raises(FileNotFoundError,
                     match='apt-get install dataset-fashion-mnist'):
    data.build(_with(config, data_dir=str(tmp_path / 'missing')), split='train',
               global_batch_size=8)


# --------------------------------------------------------------------------------------------
# shapes.
# --------------------------------------------------------------------------------------------


def test_shapes():
  config = _with(data.default_config('shapes'), image_size=16,
                 num_train_examples=20, num_eval_examples=10)
  source, batches = check_train_contract(config, steps=4)
  assert source.num_classes == len(shapes.SHAPES)
  check_batch(batches[0], 8, (16, 16, 3), label=True, eval_=False)
  renderer = shapes._renderer(config)
  source, full, hosts = check_eval_contract(config, global_batch=4)
  assert_batches_equal(full, concat_hosts(hosts))
  got = {
      k: np.concatenate([b[k][b['mask']] for b in full])
      for k in ('image', 'label')
  }
  want = renderer.batch(np.arange(
      20, 30))  # Eval = the indices after the train range.
  np.testing.assert_array_equal(got['image'], want['image'])
  np.testing.assert_array_equal(got['label'], want['label'])

  gray = take(
      data.build(_with(config, channels=1), split='train', global_batch_size=4),
      1)[0]
  check_batch(gray, 4, (16, 16, 1), label=True, eval_=False)


def test_shape_masks_are_distinct():
  u, v = np.meshgrid(np.linspace(-1.2, 1.2, 97), np.linspace(-1.2, 1.2, 97))
  masks = {k: shapes.inside(k, u, v) for k in shapes.SHAPES}
  areas = {k: m.mean() for k, m in masks.items()}
  assert abs(areas['circle'] / areas['square'] - np.pi / 4 / 0.64) < 0.05
  for a, b in itertools.combinations(shapes.SHAPES, 2):
    assert (masks[a] != masks[b]).mean() > 0.05, (a, b)


# --------------------------------------------------------------------------------------------
# tfds and image_folder (tf.data).
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tfds_module():
  return pytest.importorskip('tensorflow_datasets')


@pytest.fixture(scope='module')
def tiny_tfds(tfds_module, tmp_path_factory):
  """A real prepared tfds dataset: 20 train and 13 validation PNGs of varied sizes."""
  tfds = tfds_module

  class VqlabTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    # A one-part module name makes tfds skip its package-resource lookup of the builder's code,
    # which needs the optional `importlib_resources` for classes defined in test modules.
    __module__ = 'vqlab_tiny_images_test'

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3)),
              'label': tfds.features.ClassLabel(num_classes=3)
          }))

    def _split_generators(self, dl_manager):
      return {
          'train': self._generate_examples(0, 20),
          'validation': self._generate_examples(100, 13)
      }

    def _generate_examples(self, start, n):
      for i in range(start, start + n):
        rng = np.random.default_rng(i)
        h, w = rng.integers(20, 40, size=2)
        yield i, {
            'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            'label': i % 3
        }

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  VqlabTinyImages(data_dir=data_dir).download_and_prepare()
  config = data.default_config('tfds')
  config.update(tfds_name='vqlab_tiny_images', data_dir=data_dir, image_size=16)
  return config


def check_tf_train(config, steps=7, global_batch=4):
  """Determinism and resume across an epoch boundary (tf.data sources)."""
  source = data.build(config, split='train', global_batch_size=global_batch)
  assert isinstance(source, data.DataSource)
  first = take(source, steps)
  assert_batches_equal(
      first,
      take(data.build(config, split='train', global_batch_size=global_batch),
           steps))
  assert_batches_equal(first[3:], take(source, steps - 3, start_step=3))
  assert_batches_equal(first[6:], take(source, steps - 6, start_step=6))
  return source, first


def test_tf_train_epochs_are_shuffled_anew_and_resume_exactly():
  records = tf.data.Dataset.range(13)
  make = lambda start: pipeline.train_dataset(
      records, preprocess=lambda example, seed: example, seed=3, process_index=
      0, per_host_batch_size=13, shuffle_buffer=13, start_step=start
  ).as_numpy_iterator()
  batches = make(0)  # A batch is one epoch of the 13 records.
  epochs = [next(batches) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(13))
  assert len({tuple(epoch) for epoch in epochs}) == 3  # Each its own order.
  np.testing.assert_array_equal(next(make(2)), epochs[2])


def test_tfds_train_and_eval_shards(tiny_tfds):
  for augment in ('resize_random_crop', 'random_resized_crop'):
    source, first = check_tf_train(_with(tiny_tfds, train_augment=augment))
    assert source.num_examples == 20 and source.num_classes == 3
    check_batch(first[0], 4, (16, 16, 3), label=True, eval_=False)

  def key(image):
    return image.tobytes()

  source, full, _ = check_eval_contract(tiny_tfds, global_batch=6)
  assert source.num_examples == 13
  check_batch(full[0], 6, (16, 16, 3), label=True, eval_=True)
  everything = sorted(key(im) for b in full for im in b['image'][b['mask']])
  assert len(set(everything)) == 13
  for process_count in (2, 3):
    _, _, hosts = check_eval_contract(tiny_tfds, global_batch=6,
                                      process_count=process_count)
    shards = [
        [key(im) for b in h for im in b['image'][b['mask']]] for h in hosts
    ]
    assert sorted(
        itertools.chain(*shards)) == everything  # Disjoint and covering.


def test_tfds_eval_split_of_several_parts_pads_every_host_alike(tiny_tfds):
  # tfds splits 'train' (20) and 'validation' (13) evenly each: host 0 of 3 gets 7 + 5 = 12
  # examples, more than ceil(33 / 3) = 11, which its eval batches were sized for (it failed at
  # the first eval, and on several hosts the others waited for it).
  # (--mode=tokenize counted ceil(33 / 3) = 11 batches and lost host 0's last example.)
  config = _with(tiny_tfds, eval_split='train+validation')
  _, full, hosts = check_eval_contract(config, global_batch=3, process_count=3)
  assert len(hosts[0]) == 12
  assert sum(int(b['mask'].sum()) for b in full) == 33
  assert sum(int(b['mask'].sum()) for h in hosts for b in h) == 33


def test_tfds_mock_data(tfds_module):
  config = _with(data.default_config('tfds'), tfds_name='cifar10',
                 image_size=24, eval_split='test',
                 train_augment='random_resized_crop')
  with tfds_module.testing.mock_data(num_examples=10):
    source, first = check_tf_train(config)
    check_batch(first[0], 4, (24, 24, 3), label=True, eval_=False)
    source = data.build(config, split='eval', global_batch_size=4)
    full = list(source.batches())
    assert source.num_examples == 10 and [int(b['mask'].sum()) for b in full
                                         ] == [4, 4, 2]


def test_tfds_errors(tiny_tfds, tmp_path):
  with pytest.raises(ValueError, match='data.tfds_name: required'):
    data.build(data.default_config('tfds'), split='train', global_batch_size=4)
  with pytest.raises(FileNotFoundError, match='tfds build cifar10'):
    data.build(_with(tiny_tfds, tfds_name='cifar10', data_dir=str(tmp_path)),
               split='train', global_batch_size=4)
  with pytest.raises(ValueError, match="data.eval_split: bad split 'test'"):
    data.build(_with(tiny_tfds, eval_split='test'), split='eval',
               global_batch_size=4)
  with pytest.raises(ValueError, match="data.label_key: .* no feature 'class'"):
    data.build(_with(tiny_tfds, label_key='class'), split='train',
               global_batch_size=4)
  unlabeled = take(
      data.build(_with(tiny_tfds, label_key=''), split='train',
                 global_batch_size=4), 1)[0]
  check_batch(unlabeled, 4, (16, 16, 3), label=False, eval_=False)


@pytest.fixture(scope='module')
def pixels_tfds(tfds_module, tmp_path_factory):
  """A prepared tfds dataset of one 8 x 10 RGB image stored as features of each kind: 'image'
  (PNG), 'gray' (its red channel, PNG), 'gray_float' (Image, float32 red / 255), 'pixels' and
  'gray_pixels' (uint8 Tensors), 'floats' (a float32 Tensor); 3 train and 2 validation examples."""
  tfds = tfds_module

  class VqlabPixels(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    __module__ = 'vqlab_pixels_test'  # See VqlabTinyImages.

    def _info(self):
      features = tfds.features
      return tfds.core.DatasetInfo(
          builder=self, features=features.FeaturesDict({
              'image': features.Image(shape=(8, 10, 3)),
              'gray': features.Image(shape=(8, 10, 1)),
              'gray_float': features.Image(shape=(8, 10, 1), dtype=np.float32),
              'pixels': features.Tensor(shape=(8, 10, 3), dtype=np.uint8),
              'gray_pixels': features.Tensor(shape=(8, 10, 1), dtype=np.uint8),
              'floats': features.Tensor(shape=(8, 10, 3), dtype=np.float32),
          }))

    def _split_generators(self, dl_manager):
      return {
          'train': self._generate_examples(0, 3),
          'validation': self._generate_examples(100, 2)
      }

    def _generate_examples(self, start, n):
      for i in range(start, start + n):
        image = np.random.default_rng(i).integers(0, 256, (8, 10, 3),
                                                  dtype=np.uint8)
        gray = image[..., :1]
        yield i, {
            'image': image,
            'gray': gray,
            'gray_float': gray.astype(np.float32) / 255,
            'pixels': image,
            'gray_pixels': gray,
            'floats': image.astype(np.float32),
        }

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  VqlabPixels(data_dir=data_dir).download_and_prepare()
  config = data.default_config('tfds')
  config.update(tfds_name='vqlab_pixels', data_dir=data_dir, image_size=8,
                label_key='')
  return config


def _pixels_batches(config, image_key, split, **overrides):
  config = _with(config, image_key=image_key,
                 train_augment='random_resized_crop', **overrides)
  return take(data.build(config, split=split, global_batch_size=2), 1)


def test_tfds_float_images_read_as_their_pngs(pixels_tfds):
  # A float32 Image is the PNG of its floats' bytes: decoded as an image it was colour noise.
  for split, channels in (('train', 3), ('eval', 3), ('eval', 1)):
    for got, want in zip(
        _pixels_batches(pixels_tfds, 'gray_float', split, channels=channels),
        _pixels_batches(pixels_tfds, 'gray', split, channels=channels)):
      np.testing.assert_allclose(got['image'], want['image'], atol=1e-6)


def test_tfds_uint8_tensors_read_as_their_pngs(pixels_tfds):
  # A uint8 Tensor is pixels: decoding it as an image failed at the first batch.
  for split in ('train', 'eval'):
    assert_batches_equal(_pixels_batches(pixels_tfds, 'pixels', split),
                         _pixels_batches(pixels_tfds, 'image', split))


def test_tfds_tensors_not_of_pixels_are_refused_at_build(pixels_tfds):
  for image_key, channels, match in (
      ('floats', 3, "feature 'floats' of vqlab_pixels is a Tensor of float32; "
       'supported: '), ('gray_pixels', 3,
                        "'gray_pixels' of vqlab_pixels is a uint8 Tensor of 1 "
                        'channels, .* but data.channels=3'),
      ('pixels', 1, 'uint8 Tensor of 3 channels, .* but data.channels=1')):
    with pytest.raises(DataError, match=match):
      data.build_for_run(
          _with(pixels_tfds, image_key=image_key, channels=channels),
          split='eval', global_batch_size=2)


@pytest.fixture
def folder(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('val', 3)):
    for cls in ('dog', 'cat'):
      os.makedirs(tmp_path / split / cls)
      for i in range(n):
        image = Image.fromarray(
            rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8))
        image.save(tmp_path / split / cls / f'{i}.{"jpg" if i % 2 else "png"}')
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=16)
  return config


def test_image_folder(folder):
  for augment in ('resize_random_crop',
                  'random_resized_crop'):  # JPEG and PNG crop paths.
    source, first = check_tf_train(
        _with(folder, train_augment=augment, channels=1))
    assert source.num_examples == 12 and source.num_classes == 2
    check_batch(first[0], 4, (16, 16, 1), label=True, eval_=False)
  source, full, hosts = check_eval_contract(folder, global_batch=4)
  assert source.num_examples == 6
  labels = np.concatenate([b['label'][b['mask']] for b in full])
  assert labels.tolist() == [0, 0, 0, 1, 1,
                             1]  # 'cat' < 'dog', files in sorted order.
  for k in ('image',
            'label'):  # Host shards are contiguous slices of the sorted files.
    np.testing.assert_array_equal(
        np.concatenate([b[k][b['mask']] for h in hosts for b in h]),
        np.concatenate([b[k][b['mask']] for b in full]))

  with pytest.raises(ValueError, match='data.path: required'):
    data.build(data.default_config('image_folder'), split='train',
               global_batch_size=4)
  with pytest.raises(FileNotFoundError, match='data.path'):
    data.build(_with(folder, path=folder.path + '/missing'), split='train',
               global_batch_size=4)
  with pytest.raises(FileNotFoundError,
                     match="data.eval_split: no folder .*'train', 'val'"):
    data.build(_with(folder, eval_split='test'), split='eval',
               global_batch_size=4)
