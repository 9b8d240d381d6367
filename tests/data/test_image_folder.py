"""The `image_folder` dataset on the command line: unreadable files, the flat
layout, and the configs that train the quickstart model on a folder."""

import io
import itertools
import os
import shutil

from absl import flags
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

from tests import paths
from vqlab import data
from vqlab.data import folder_files
from vqlab.data import image_folder
from vqlab.data import preprocess
from vqlab.errors import DataError
from vqlab.train import experiment_config
from vqlab.train import pretokenize

ROOT = paths.ROOT
# Distinct solid colours: an eval image (resized, centre-cropped) keeps its
# colour exactly, so a batch tells which files it came from.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
           (255, 0, 255)]


def _write_image(path, colour, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', (20, 16), colour).save(path, fmt)


def _truncated_jpeg() -> bytes:
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noise).save(buffer, 'JPEG')
  return buffer.getvalue()[:400]  # A real JPEG header, half its data.


def _write_bad_files(folder):
  """Two unreadable files with image extensions, and a hidden one."""
  (folder / 'bad.jpg').write_bytes(b'<html>404 Not Found</html>')
  (folder / 'cut.jpg').write_bytes(_truncated_jpeg())
  (folder / '._good.jpg').write_bytes(b'\0\5\26\7')  # macOS AppleDouble.


@pytest.fixture
def split_folder(tmp_path):
  """train/{a,b}/ with 4 good images and 2 bad ones, val/a/ with 2 good."""
  for i, colour in enumerate(COLOURS[:4]):
    _write_image(str(tmp_path / 'train' / 'ab'[i % 2] / f'{i}.png'), colour,
                 'PNG')
  for i, colour in enumerate(COLOURS[4:]):
    _write_image(str(tmp_path / 'val' / 'a' / f'{i}.jpg'), colour, 'JPEG')
  _write_bad_files(tmp_path / 'train' / 'a')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, shuffle_buffer=8)
  return config


def _colours(images):
  """float [n, S, S, 3] solid images in [-1, 1] -> their sorted COLOURS
  (channels are 0 or 255, up to JPEG's error)."""
  assert np.ptp(images, axis=(1, 2)).max() < 0.05  # Solid.
  rgb = np.where(images[:, 0, 0] > 0, 255, 0)
  return sorted(tuple(int(v) for v in c) for c in rgb)


def test_unreadable_file_is_one_line_naming_it(split_folder):
  bad = os.path.join(split_folder.path, 'train', 'a', 'bad.jpg')
  with pytest.raises(DataError) as e:
    data.build(split_folder, split='train', global_batch_size=2)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'{bad}: not a JPEG, PNG, GIF or BMP file; 2 of '
                            'the 6 images in '), message
  assert '--config.data.skip_unreadable=True' in message
  # The eval split has no bad file.
  assert data.build(split_folder, split='eval',
                    global_batch_size=2).num_examples == 2


def test_truncated_jpeg_is_caught_before_training(tmp_path):
  _write_image(str(tmp_path / 'train' / 'a' / 'ok.png'), COLOURS[0], 'PNG')
  (tmp_path / 'train' / 'a' / 'cut.jpg').write_bytes(_truncated_jpeg())
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8)
  with pytest.raises(
      DataError, match=r'/cut\.jpg: JPEG data that is '
      'truncated, corrupt or of an unsupported kind; 1 of'):
    data.build(config, split='train', global_batch_size=2)


def test_skip_unreadable_leaves_them_out_and_reports_once(split_folder, capsys):
  split_folder.skip_unreadable = True
  source = data.build(split_folder, split='train', global_batch_size=2)
  lines = capsys.readouterr().out.splitlines()
  bad = os.path.join(split_folder.path, 'train', 'a', 'bad.jpg')
  assert lines == [
      f'vqlab: skipped 2 of the 6 images in {split_folder.path}/train '
      f'(unreadable; first: {bad}: not a JPEG, PNG, GIF or BMP file)'
  ]
  assert source.num_examples == 4
  # Three epochs of the 4 good files decode; resume replays the same order.
  batches = list(itertools.islice(source.batches(0), 6))
  for epoch in range(3):
    images = np.concatenate([b['image'] for b in batches[2 * epoch:][:2]])
    assert _colours(images) == sorted(COLOURS[:4])
  resumed = next(iter(source.batches(5)))
  np.testing.assert_array_equal(resumed['image'], batches[5]['image'])
  # Other hosts say nothing; each reads its half of the same 4 files.
  hosts = [
      data.build(split_folder, split='train', global_batch_size=2,
                 process_index=p, process_count=2) for p in (0, 1)
  ]
  assert capsys.readouterr().out.count('vqlab: skipped') == 1
  assert [h.num_examples for h in hosts] == [4, 4]


def test_flat_folder_holds_out_a_fraction(tmp_path):
  for i, colour in enumerate(COLOURS):
    _write_image(str(tmp_path / ('sub' if i % 2 else '') / f'{i}.png'), colour,
                 'PNG')
  _write_bad_files(tmp_path)
  os.symlink(tmp_path, tmp_path / 'sub' / 'loop')  # Listed once.
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, eval_fraction=0.3,
                skip_unreadable=True)
  train = data.build(config, split='train', global_batch_size=2)
  evaluation = data.build(config, split='eval', global_batch_size=2)
  assert train.num_classes is None and 'label' not in next(train.batches())
  # round(0.3 * 8) = 2 of the 8 listed files held out, by name only.
  listed = folder_files.list_tree(str(tmp_path), image_folder.IMAGES)
  assert len(listed) == 8 and not any('._' in p for p in listed)
  held_out = folder_files.hold_out(listed, str(tmp_path), 0.3)[1]
  assert len(held_out) == 2
  assert folder_files.hold_out(
      [p.replace(str(tmp_path), '/elsewhere') for p in listed], '/elsewhere',
      0.3)[1] == [p.replace(str(tmp_path), '/elsewhere') for p in held_out]
  eval_images = np.concatenate(
      [b['image'][b['mask']] for b in evaluation.batches()])
  readable = [p for p in held_out if p.endswith('.png')]
  assert evaluation.num_examples == len(readable) == len(eval_images)
  assert train.num_examples == 6 - len(readable)
  assert _colours(eval_images) == sorted(
      COLOURS[int(os.path.basename(p)[0])] for p in readable)


def test_a_splits_fingerprint_changes_with_its_files_only(split_folder):
  """Relative paths, sizes and labels: --mode=tokenize makes token shards
  again when they change (no file is read: unreadable ones count)."""
  root = split_folder.path
  fingerprints = lambda: tuple(
      data.split_fingerprint(split_folder, s) for s in data.base.SPLITS)
  train, evaluation = fingerprints()
  assert fingerprints() == (train, evaluation)
  # The built source's, without building it (sampling's statistics cache).
  assert data.build(split_folder, split='eval',
                    global_batch_size=2).fingerprint == evaluation
  new_eval_image = os.path.join(root, 'val', 'a', '9.png')
  _write_image(new_eval_image, COLOURS[0], 'PNG')
  train_after, evaluation_after = fingerprints()
  assert train_after == train and evaluation_after != evaluation
  with open(new_eval_image, 'ab') as f:
    f.write(b'\0')  # Its size changes.
  assert fingerprints()[0] == train and fingerprints()[1] != evaluation_after
  # A broken link counts too, and the decode check still names it.
  os.symlink(os.path.join(root, 'gone.png'),
             os.path.join(root, 'val', 'a', 'link.png'))
  assert fingerprints()[0] == train
  split_folder.skip_unreadable = True
  assert data.build(split_folder, split='eval',
                    global_batch_size=2).num_examples == 3
  # A class folder sorted before 'a' moves the label of every eval image.
  evaluation = fingerprints()[1]
  _write_image(os.path.join(root, 'train', '0', '0.png'), COLOURS[0], 'PNG')
  assert fingerprints()[1] != evaluation
  shapes = data.build(data.default_config('shapes'), split='eval',
                      global_batch_size=2)
  assert getattr(shapes, 'fingerprint', None) is None
  assert data.split_fingerprint(data.default_config('shapes'), 'eval') is None


def test_train_files_are_read_after_the_shuffle(tmp_path):
  """The shuffle buffer holds paths: a batch reads its own files only (a
  buffer of read files would hold 10,000 photos before the first step)."""
  for i, colour in enumerate(COLOURS):
    _write_image(str(tmp_path / f'{i}.png'), colour, 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, shuffle_buffer=6)
  build = lambda: data.build(config, split='train', global_batch_size=2)
  first = _colours(next(build().batches())['image'])
  source = build()  # Its files are listed and checked now.
  for i, colour in enumerate(COLOURS):
    if colour not in first:
      os.remove(tmp_path / f'{i}.png')
  assert _colours(next(source.batches())['image']) == first


def test_train_batches_mix_classes_listed_far_apart(tmp_path):
  """Files are listed class by class: a shuffle buffer of 4 would give the
  first batch of 4 only files of the first class or two. The whole host
  list is shuffled, and each host gets files of every class."""
  for c in range(4):
    for i in range(6):
      _write_image(str(tmp_path / 'train' / f'c{c}' / f'{i}.png'), COLOURS[c],
                   'PNG')
  os.makedirs(tmp_path / 'val')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, shuffle_buffer=4)
  labels = np.concatenate([
      b['label'] for b in itertools.islice(
          data.build(config, split='train', global_batch_size=4).batches(), 6)
  ])
  # One epoch of 24: every file once, the first batch from > 2 classes.
  assert np.bincount(labels).tolist() == [6] * 4
  assert len(set(labels[:4].tolist())) > 2
  hosts = [
      data.build(config, split='train', global_batch_size=4, process_index=p,
                 process_count=2) for p in range(2)
  ]
  for host in hosts:
    host_labels = np.concatenate(
        [b['label'] for b in itertools.islice(host.batches(), 6)])
    assert sorted(set(host_labels.tolist())) == [0, 1, 2, 3]


def test_flat_folder_evaluates_on_the_train_images_when_asked(tmp_path):
  for i, colour in enumerate(COLOURS):
    _write_image(str(tmp_path / f'{i}.png'), colour, 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, eval_fraction=0.3)
  sizes = {}
  for eval_split in ('val', 'train'):
    config.eval_split = eval_split
    sizes[eval_split] = data.build(config, split='eval',
                                   global_batch_size=2).num_examples
  assert sizes == {'val': 2, 'train': 4}


def test_photos_are_turned_as_their_exif_orientation_says(tmp_path):
  """A phone's portrait photo: landscape pixels with orientation 6 are shown
  turned 90 degrees, then cropped and flipped as shown."""
  exif = Image.Exif()
  exif[0x0112] = 6
  stored = np.zeros((8, 16, 3), np.uint8)  # Left red, right blue.
  stored[:, :8, 0] = stored[:, 8:, 2] = 255
  for i in range(2):
    os.makedirs(tmp_path / 'val' / 'a', exist_ok=True)
    Image.fromarray(stored).save(tmp_path / 'val' / 'a' / f'{i}.png', exif=exif)
  # Shown: red in the top right quarter only.
  shown = np.zeros((8, 8, 3), np.uint8)
  shown[..., 2] = 255
  shown[:4, 4:] = (255, 0, 0)
  square = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
  for i in range(8):
    os.makedirs(tmp_path / 'train' / 'a', exist_ok=True)
    square.save(tmp_path / 'train' / 'a' / f'{i}.png', exif=exif)
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, shuffle_buffer=4)
  centre = np.asarray(
      ImageOps.exif_transpose(Image.open(tmp_path / 'val' / 'a' /
                                         '0.png')))[4:12]
  evaluation = next(
      data.build(config, split='eval', global_batch_size=2).batches())
  np.testing.assert_allclose(evaluation['image'],
                             np.stack([centre, centre]) / 127.5 - 1, atol=1e-6)
  for augment in ('resize_random_crop', 'random_resized_crop'):
    config.update(train_augment=augment, crop_area_range=(1.0, 1.0),
                  crop_aspect_range=(1.0, 1.0))
    train = next(
        data.build(config, split='train', global_batch_size=8).batches())
    red = train['image'][..., 0] > 0
    # Flipped left-right as shown (never upside down), both ways seen.
    assert not red[:, 4:].any()
    np.testing.assert_array_equal(
        red[:, :4, 4:].all(axis=(1, 2)) | red[:, :4, :4].all(axis=(1, 2)), True)
    assert 0 < red[:, :4, 4:].all(axis=(1, 2)).sum() < 8


def test_a_jpeg_with_more_pictures_is_turned_by_its_exif_too(tmp_path):
  """Phones' JPEGs with a gain map open in PIL as MPO: their tag counts."""
  exif = Image.Exif()
  exif[0x0112] = 6
  path = str(tmp_path / 'phone.jpg')
  Image.new('RGB', (16, 8)).save(path, 'MPO', exif=exif, save_all=True,
                                 append_images=[Image.new('RGB', (4, 2))])
  assert Image.open(path).format == 'MPO'
  assert image_folder.exif_orientation(path) == 6


def test_class_folders_are_searched_to_any_depth(tmp_path):
  for i, name in enumerate([
      'cats/c.png', 'cats/persian/p1.png', 'cats/persian/p2.png', 'dogs/d.png'
  ]):
    _write_image(str(tmp_path / 'train' / name), COLOURS[i], 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), eval_split='train', image_size=8)
  files, labels, num_classes, _ = image_folder.split_files(config, 'train')
  assert [os.path.relpath(f, tmp_path / 'train') for f in files] == [
      'cats/c.png', 'cats/persian/p1.png', 'cats/persian/p2.png', 'dogs/d.png'
  ]
  assert labels.tolist() == [0, 0, 0, 1] and num_classes == 2
  # A class without train images is refused on both splits: its label would
  # count in num_classes, never trained. First an empty train folder, then,
  # with it removed, a class only under val/.
  config.eval_split = 'val'
  _write_image(str(tmp_path / 'val' / 'cats' / 'v.png'), COLOURS[0], 'PNG')
  _write_image(str(tmp_path / 'val' / 'fish' / 'f.png'), COLOURS[0], 'PNG')
  os.makedirs(tmp_path / 'train' / 'birds')
  for match in (r"^data\.train_split: 1 class folder\(s\) of '.*/train' hold "
                r"no images \(.*\): 'birds'; .*add image files to them, or "
                r'remove them\.$',
                r"^data\.eval_split: 1 class folder\(s\) of '.*/val' are not "
                r"in '.*/train': 'fish'; .*or remove them from '.*/val'\.$"):
    for split in ('train', 'eval'):
      with pytest.raises(FileNotFoundError, match=match):
        image_folder.split_files(config, split)
    shutil.rmtree(tmp_path / 'train' / 'birds', ignore_errors=True)


def test_split_folders_without_class_folders_hold_unlabelled_files(tmp_path):
  """train/*.png and val/*.png (Kinetics' layout): each split its own files,
  no labels (it was an error: no class folders)."""
  for i, name in enumerate(['train/0.png', 'train/1.png', 'val/2.png']):
    _write_image(str(tmp_path / name), COLOURS[i], 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8)
  train = data.build(config, split='train', global_batch_size=2)
  eval_source = data.build(config, split='eval', global_batch_size=2)
  assert train.num_classes is None and eval_source.num_classes is None
  batch = next(iter(eval_source.batches()))
  assert 'label' not in batch and batch['mask'].tolist() == [True, False]
  assert _colours(batch['image'][:1]) == [COLOURS[2]]
  assert 'label' not in next(iter(train.batches()))
  os.remove(tmp_path / 'val' / '2.png')
  with pytest.raises(FileNotFoundError,
                     match=r"^data\.eval_split: no images .* in '.*/val'"):
    data.build(config, split='eval', global_batch_size=2)
  # Images beside class folders: named, not left out.
  _write_image(str(tmp_path / 'train' / 'cats' / '3.png'), COLOURS[3], 'PNG')
  with pytest.raises(
      FileNotFoundError, match=r"^data\.train_split: 2 image\(s\) in "
      r"'.*/train' itself \('0\.png', \.\.\.\) beside its class folders "
      r"\['cats'\], which would be left out"):
    data.build(config, split='train', global_batch_size=2)


def test_an_eval_folder_without_a_train_folder_is_refused(tmp_path):
  """training/ and val/: not one flat pool that trains on the val images."""
  _write_image(str(tmp_path / 'training' / 'a' / '0.png'), COLOURS[0], 'PNG')
  _write_image(str(tmp_path / 'val' / 'a' / '1.png'), COLOURS[1], 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8)
  with pytest.raises(
      FileNotFoundError, match=r"^data\.train_split: no folder '.*/train', "
      r"but the eval split's '.*/val' is one: .*\['training', 'val'\]"):
    data.build(config, split='train', global_batch_size=2)


def test_a_file_name_that_is_not_utf8_is_named_as_unreadable(tmp_path):
  for i, colour in enumerate(COLOURS[:4]):
    _write_image(str(tmp_path / f'{i}.png'), colour, 'PNG')
  name = os.path.join(os.fsencode(tmp_path), b'caf\xe9.png')
  with open(name, 'wb') as f:
    f.write((tmp_path / '0.png').read_bytes())
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8, eval_fraction=0.2)
  with pytest.raises(
      DataError, match=r"/caf\\xe9\.png: its name is not UTF-8, and "
      'TensorFlow reads UTF-8 paths only: rename it; 1 of the 4 '):
    data.build(config, split='train', global_batch_size=2)
  config.skip_unreadable = True
  source = data.build(config, split='train', global_batch_size=3)
  assert _colours(next(iter(source.batches()))['image']) == sorted(COLOURS[1:4])


def test_multi_host_tokenization_draws_every_train_example_once(tmp_path):
  """--mode=tokenize with tokens.num_train_examples = the train set's size:
  each host reads its own shard of the files (3 + 3 here), so each keeps
  one epoch of its shard. Counted as positions of one global stream (batch
  8 = 4 per host) host 0 would keep 4 rows and host 1 2: one image twice,
  one never."""
  for i, colour in enumerate(COLOURS):
    _write_image(str(tmp_path / 'train' / 'a' / f'{i}.png'), colour, 'PNG')
  _write_image(str(tmp_path / 'val' / 'a' / '0.png'), COLOURS[0], 'PNG')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=8)
  hosts = [
      data.build(config, split='train', global_batch_size=8, process_index=p,
                 process_count=2) for p in range(2)
  ]
  quotas = pretokenize.train_quotas(6, 8, 2,
                                    [h.host_num_examples for h in hosts])
  assert quotas == [3, 3]
  kept = [
      batch['image'][:quota - 4 * step]
      for host, quota in zip(hosts, quotas)
      for step, batch in zip(range(-(-max(quotas) // 4)), host.batches())
  ]
  assert _colours(np.concatenate(kept)) == sorted(COLOURS)


def _parse_config(argument):
  """The config main.py gets from --config=<argument>."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values)
  flag_values(['main.py', f'--config={argument}'])
  return flag_values.config


@pytest.mark.parametrize(
    'argument',
    ['configs/image_folder.py:{}', 'configs/quickstart.py:folder={}'])
def test_folder_configs(split_folder, argument):
  os.remove(os.path.join(split_folder.path, 'train', 'a', 'bad.jpg'))
  os.remove(os.path.join(split_folder.path, 'train', 'a', 'cut.jpg'))
  config = _parse_config(os.path.join(ROOT, argument.format(split_folder.path)))
  config = experiment_config.validate(config, 1)
  assert config.data.name == 'image_folder'
  assert config.data.path == split_folder.path
  assert config.model.channel_multipliers == (1, 2, 4)  # The quickstart's.
  train = data.build(config.data, split='train', global_batch_size=2)
  assert train.num_examples == 4 and train.num_classes == 2
  assert next(train.batches())['image'].shape == (2, 32, 32, 3)
  evaluation = data.build(config.data, split='eval', global_batch_size=2)
  images = next(evaluation.batches())['image']
  assert images.shape == (2, 64, 64, 3)
  assert _colours(images) == sorted(COLOURS[4:])


def test_folder_config_without_a_folder():
  config = experiment_config.validate(
      _parse_config(os.path.join(ROOT, 'configs/image_folder.py')), 1)
  with pytest.raises(
      ValueError, match=r'^data\.path: required .* '
      r'--config=configs/image_folder\.py:/path/to/images'):
    data.build(config.data, split='train', global_batch_size=2)
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='the only argument is folder=PATH'):
    quickstart.get_config('path=/x')
  assert quickstart.get_config().data.name == 'photos'


def test_train_image_size_is_checked(split_folder):
  split_folder.update(train_image_size=16)
  with pytest.raises(
      ValueError, match=r'data\.train_image_size: must be an '
      r'integer in \[0, image_size=8\], got 16'):
    data.build(split_folder, split='train', global_batch_size=2)


@pytest.mark.parametrize('image_format', ['PNG', 'GIF', 'BMP'])
def test_gray_decoding_of_every_listed_format(image_format):
  """channels=1: PNG decodes to gray directly; GIF and BMP, which TF decodes
  only to RGB, through rgb_to_grayscale (ITU-R 601 luma)."""
  rgb = np.zeros((4, 6, 3), np.uint8)
  rgb[:, :3] = (200, 40, 10)
  rgb[:, 3:] = (0, 0, 255)
  encoded = io.BytesIO()
  pil = Image.fromarray(rgb if image_format != 'PNG' else np.
                        uint8(np.round(rgb @ [0.2989, 0.587, 0.114])))
  pil.save(encoded, format=image_format)
  gray = preprocess.decode_image(encoded.getvalue(), 1).numpy()
  assert gray.shape == (4, 6, 1) and gray.dtype == np.uint8
  want = np.round(rgb @ [0.2989, 0.587, 0.114])
  np.testing.assert_allclose(gray[..., 0], want, atol=1)


def test_jpegs_decode_as_pil_decodes_them():
  """The accurate DCT, as PIL and the FID reference statistics decode: TF's
  default fast DCT was off by up to 11 grey levels on photos."""
  rng = np.random.default_rng(0)
  x = np.linspace(0, 255, 64)
  rgb = np.stack(
      [np.add.outer(x, x) / 2,
       np.outer(x, x) / 255,
       np.tile(x, (64, 1))], -1)
  rgb = np.uint8(np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255))
  encoded = io.BytesIO()
  Image.fromarray(rgb).save(encoded, format='JPEG', quality=75)
  want = np.asarray(Image.open(io.BytesIO(encoded.getvalue())))
  got = preprocess.decode_image(encoded.getvalue(), 3).numpy()
  np.testing.assert_array_equal(got, want)


def test_a_palette_bmp_is_named_not_read_as_grey(tmp_path):
  """TensorFlow decodes a BMP's palette indices as grey levels: red and
  magenta trained as two greys, silently."""
  rgb = np.zeros((8, 8, 3), np.uint8)
  rgb[:, :4] = (230, 0, 0)
  rgb[:, 4:] = (230, 0, 200)
  Image.fromarray(rgb).convert('P').save(tmp_path / 'palette.bmp')
  Image.fromarray(rgb).save(tmp_path / 'true_colour.bmp')
  # Gray images saved as BMP: 8-bit indices into the grey ramp, which
  # TensorFlow decodes right; 1-bit ones it decodes as levels 0 and 1.
  gray = np.uint8(np.arange(64).reshape(8, 8) * 4)
  Image.fromarray(gray).save(tmp_path / 'gray.bmp')
  Image.fromarray(gray > 100).save(tmp_path / 'bilevel.bmp')
  names = ('palette', 'true_colour', 'gray', 'bilevel')
  paths = [str(tmp_path / f'{name}.bmp') for name in names]
  assert image_folder.unreadable(paths, 3) == [0, 3]
  np.testing.assert_array_equal(
      preprocess.decode_image(open(paths[2], 'rb').read(), 1).numpy()[..., 0],
      gray)
  with pytest.raises(
      DataError, match=r'palette\.bmp: a BMP of palette '
      'colours.*convert it to PNG'):
    image_folder.drop_unreadable(paths, None, 'images', channels=3, skip=False,
                                 report=False)


def test_two_hosts_each_decode_half_the_files_and_drop_the_same(
    tmp_path, monkeypatch):
  """Process 0 of 2 decodes files 0 and 2 and takes process 1's verdict on
  1 and 3 (each host decoded every file at every start)."""
  good = np.zeros((8, 8, 3), np.uint8)
  files = []
  for i in range(4):
    files.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(good).save(files[-1])
  for bad in (files[2], files[3]):
    with open(bad, 'wb') as f:
      f.write(b'not an image')
  decoded = []
  unreadable = image_folder.unreadable
  monkeypatch.setattr(image_folder, 'unreadable',
                      lambda p, c: decoded.extend(p) or unreadable(p, c))
  # Process 1's side of each exchange: its count of bad files, then their
  # indices (file 3) padded to the longest list.
  theirs = iter([np.int64(1), np.array([3])])
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: np.stack([x, next(theirs)]))
  kept, labels = image_folder.drop_unreadable(files, np.arange(4), 'images',
                                              channels=3, skip=True,
                                              report=False, process_index=0,
                                              process_count=2)
  assert decoded == [files[0], files[2]]
  assert kept == files[:2] and labels.tolist() == [0, 1]


def _bilinear_no_antialias(image, height, width):
  """float64 OpenCV INTER_LINEAR: pixel centres aligned, edges repeated."""

  def taps(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low)[:, None]

  image = image.astype(np.float64)
  low, high, w = taps(image.shape[0], height)
  image = image[low] * (1 - w[..., None]) + image[high] * w[..., None]
  low, high, w = taps(image.shape[1], width)
  return image[:, low] * (1 - w) + image[:, high] * w


def test_resize_without_antialiasing_is_opencvs(tmp_path):
  """data.resize_method = 'bilinear_no_antialias' (taming's albumentations
  loader): every output pixel from its 2x2 neighbours, as OpenCV's
  INTER_LINEAR, which the antialiased filter is not."""
  rgb = np.uint8(np.random.default_rng(2).integers(0, 256, (45, 30, 3)))
  for split in ('train', 'val'):
    os.makedirs(tmp_path / split / 'images')
    Image.fromarray(rgb).save(tmp_path / split / 'images' / 'a.png')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=16,
                resize_method='bilinear_no_antialias')
  want = _bilinear_no_antialias(rgb, 24, 16)[4:20]
  for method, close in (('bilinear_no_antialias', True), ('bilinear', False)):
    config.resize_method = method
    batch = next(
        data.build(config, split='eval', global_batch_size=1).batches())
    got = (batch['image'][0].astype(np.float64) + 1) * 127.5
    assert (np.abs(got - want).max() < 1e-3) == close, method


def test_bicubic_resize_is_pils_within_a_grey_level(tmp_path):
  """data.resize_method = 'bicubic' (TiTok's release): the eval image is
  PIL's bicubic resize and centre crop, up to rounding."""
  rng = np.random.default_rng(1)
  x = np.linspace(0, 255, 48)
  rgb = np.uint8(
      np.clip(
          np.stack([np.add.outer(x, x[:32]) / 2] * 3, -1) +
          rng.normal(0, 10, (48, 32, 3)), 0, 255))
  for split in ('train', 'val'):
    os.makedirs(tmp_path / split / 'images')
    Image.fromarray(rgb).save(tmp_path / split / 'images' / 'a.png')
  config = data.default_config('image_folder')
  config.update(path=str(tmp_path), image_size=16, resize_method='bicubic')
  batch = next(data.build(config, split='eval', global_batch_size=1).batches())
  got = (batch['image'][0] + 1) * 127.5
  pil = np.asarray(
      Image.fromarray(rgb).resize((16, 24), Image.BICUBIC), np.float32)[4:20]
  assert np.abs(got - pil).max() < 1.5
  config.resize_method = 'bilinear'
  bilinear = next(
      data.build(config, split='eval',
                 global_batch_size=1).batches())['image'][0]
  assert np.abs((bilinear + 1) * 127.5 - pil).max() > 1.5
  config.resize_method = 'lanczos'
  with pytest.raises(ValueError, match=r"data\.resize_method: must be one of "):
    data.build(config, split='eval', global_batch_size=1)


def test_a_thin_strip_is_trimmed_to_16_to_1_before_the_resize():
  """A 2 x 4000 strip at image_size 256 was enlarged whole (256 x 512000,
  1.5 GB in float32) for one crop: now its centred 2 x 32 first. Images up
  to 16:1 keep every pixel."""
  assert preprocess.resize_shorter_side(np.zeros((2, 4000, 3), np.uint8),
                                        256).shape == (256, 4096, 3)
  assert preprocess.resize_shorter_side(np.zeros((5, 3, 100, 3), np.uint8),
                                        8).shape == (5, 8, 128, 3)
  wide = np.random.default_rng(0).integers(0, 256, (4, 64, 3), np.uint8)
  np.testing.assert_array_equal(preprocess.resize_shorter_side(wide, 8),
                                preprocess.resize(wide, (8, 128)))


def _train_crops(image, seeds=3, **settings):
  """float [seeds, T, T, C] train crops of uint8 pixels [h, w, C] by the
  preprocessing `settings` (the others at their defaults), unflipped."""
  aug = preprocess.Augment(**{
      **preprocess.augment_defaults(), 'random_flip': False,
      **settings
  })
  crop = preprocess.train_fn(aug)
  return np.stack([
      crop({'image': image}, np.array([seed, 0], np.int64))['image']
      for seed in range(seeds)
  ])


def _windows(image, side):
  """Every side x side window of `image` [h, w, C] -> [n, side, side, C]."""
  windows = np.lib.stride_tricks.sliding_window_view(image, (side, side),
                                                     axis=(0, 1))
  return np.moveaxis(windows, 2, -1).reshape(-1, side, side, image.shape[-1])


def _distance_to_nearest(crop, candidates):
  """The largest |crop - c| of the c of `candidates` [n, T, T, C] nearest
  to `crop` [T, T, C]."""
  return float(np.abs(candidates - crop).max(axis=(1, 2, 3)).min())


def test_train_crops_are_the_windows_their_settings_name():
  """'random_resized_crop' resizes a window of crop_area_range of the image
  (a square quarter here) to T x T; 'resize_random_crop' with
  train_image_size T < image_size S cuts T x T windows of the image resized
  to S, the pixel scale of the eval images (configs/quickstart.py's)."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), np.uint8)
  quarters = preprocess.to_unit_range(
      preprocess.resize(_windows(image, 8), (4, 4))).numpy()
  for crop in _train_crops(image, image_size=4,
                           train_augment='random_resized_crop',
                           crop_area_range=(0.25, 0.25),
                           crop_aspect_range=(1.0, 1.0)):
    assert _distance_to_nearest(crop, quarters) < 1e-6
  image = rng.integers(0, 256, (20, 24, 3), np.uint8)
  eval_scale = preprocess.to_unit_range(
      preprocess.resize_shorter_side(image, 16)).numpy()
  for crop in _train_crops(image, image_size=16, train_image_size=8):
    assert crop.shape == (8, 8, 3)
    assert _distance_to_nearest(crop, _windows(eval_scale, 8)) < 1e-6
