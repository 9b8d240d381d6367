"""Workdirs on URLs (gs:// on Cloud TPU pods): every file a run writes goes
through vqlab.fileio (tf.io.gfile for URLs). Tested on TF's in-memory
filesystem, ram://, which needs no network; Orbax (which takes gs://
natively, through epath and TensorStore's GCS driver) gets a local fake that
records the directory it was given.
"""

import glob
import json
import os
import tracemalloc

import jax
import ml_collections
import ml_dtypes
import numpy as np
from PIL import Image
import pytest
from tensorboardX import event_file_writer

from tests import tiny
from vqlab import cli
from vqlab import fileio
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.data import token_shards
from vqlab.errors import CheckpointError
from vqlab.errors import WeightsError
from vqlab.evals import fid
from vqlab.train import checkpoint
from vqlab.train import run_record
from vqlab.train import trained_tokenizer
from vqlab.train import writers
from vqlab.weights import files
from vqlab.weights import safetensors_files
from vqlab.weights import torch_files


@pytest.fixture
def url(request):
  """A fresh ram:// directory (the in-memory filesystem is per process)."""
  return f'ram://vqlab-test/{request.node.name}'


def test_urls_are_left_alone_and_local_paths_resolved(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fileio.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert fileio.absolute('run') == os.path.join(str(tmp_path), 'run')
  assert [
      fileio.is_url(p) for p in ('gs://b/r', 'ram://x', '/a/b', 'a:b', 'C:/x')
  ] == [True, True, False, False, False]
  assert fileio.scheme('gs://b/r') == 'gs' and fileio.scheme('/x') == ''
  # Local paths: the standard library, TensorFlow not needed.
  fileio.makedirs('run/images')
  fileio.write_atomically('run/a.txt', lambda f: f.write(b'x'))
  assert sorted(os.listdir('run')) == ['a.txt', 'images']
  with pytest.raises(FileNotFoundError):
    fileio.open(f'{tmp_path}/missing.json')


def test_urls_name_one_run_however_slashed():
  assert fileio.absolute('gs://bucket/run/') == 'gs://bucket/run'
  assert fileio.absolute('gs://bucket//run') == 'gs://bucket/run'


def test_a_bucket_that_cannot_be_read_is_an_error_not_an_empty_run(monkeypatch):
  """tf.io.gfile.isdir answers False for any error: a run in a bucket
  without credentials looked like no run ('train it first'), and TF's
  errors, not OSErrors, got past every handler as tracebacks."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Denied:

    def exists(self, path):
      raise tf.errors.PermissionDeniedError(
          None, None, f'no storage.objects.get access to {path}')

    def isdir(self, path):
      del path
      return False

  monkeypatch.setattr(fileio, '_gfile', Denied)
  with pytest.raises(PermissionError, match='no storage.objects.get access'):
    fileio.isdir('gs://bucket/run/checkpoints')
  with pytest.raises(PermissionError):
    checkpoint.newest_step('gs://bucket/run')
  assert cli.workdir_problem('gs://bucket/run').startswith(
      'gs://bucket/run cannot be read: ')
  # Weight files are read from local disk: a URL is refused, not mangled
  # into the local path gs:/bucket/weights.
  with pytest.raises(
      WeightsError, match='^weights_dir must be a local folder, got the URL '
      'gs://bucket/weights'):
    files.weights_dir('gs://bucket/weights')


def test_metric_writer_on_a_url(url, monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  now = [0.0]
  monkeypatch.setattr(writers.time, 'monotonic', lambda: now[0])
  writer = writers.MetricWriter(f'{url}/rows')
  # A URL file is uploaded whole at each flush: metrics.jsonl's rows go up
  # every URL_FLUSH_SECONDS and at each checkpoint save (flush_rows), not
  # with every row (O(rows^2) bytes over a run).
  flushes = []
  flush = writer._jsonl.flush  # pylint: disable=protected-access
  writer._jsonl.flush = lambda: flushes.append(now[0]) or flush()  # pylint: disable=protected-access
  for step in (7, 8):
    writer.write_scalars(step, {'loss': 1.0})
  now[0] = writers.URL_FLUSH_SECONDS
  writer.write_scalars(9, {'loss': 1.0})
  writer.write_scalars(10, {'loss': 1.0})
  writer.flush_rows()
  assert flushes == [writers.URL_FLUSH_SECONDS] * 2
  # Its events go to a new file every URL_EVENTS_FILE_BYTES (each flush
  # uploads the whole file): TensorBoard reads the files in name order.
  monkeypatch.setattr(writers, 'URL_EVENTS_FILE_BYTES', 150)
  grid = np.zeros((4, 6, 3), np.uint8)  # 72 bytes.
  for step in (11, 12):
    writer.write_images(step, {'grid': grid})
  writer.write_scalars(13, {'loss': 1.0})
  writer.close()
  files = sorted(fileio.glob(f'{url}/rows/tensorboard/events.out.*'))
  steps = [(value.tag, event.step)
           for path in files
           for event in tf.compat.v1.train.summary_iterator(path)
           for value in event.summary.value]
  assert len(files) == 2 and steps[-3:] == [('grid', 11), ('grid', 12),
                                            ('loss', 13)]
  writer = writers.MetricWriter(url)
  writer.write_scalars(1, {'loss': 0.5})
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  writer.write_images(1, {'eval_reconstructions': image})
  writer.close()
  events = fileio.glob(f'{url}/tensorboard/events.out.*')
  assert len(events) == 1
  scalars, images = {}, []
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    for value in event.summary.value:
      if value.HasField('simple_value'):
        scalars[(value.tag, event.step)] = value.simple_value
      if value.HasField('image'):
        images.append((value.tag, event.step, value.image.width))
  assert scalars == {('loss', 1): 0.5}
  assert images == [('eval_reconstructions', 1, 6)]
  resumed = writers.MetricWriter(url)  # A restart appends.
  resumed.write_scalars(2, {'loss': 0.25})
  resumed.close()
  with fileio.open(f'{url}/metrics.jsonl') as f:
    assert [json.loads(line) for line in f] == [{
        'step': 1,
        'loss': 0.5
    }, {
        'step': 2,
        'loss': 0.25
    }]
  png = fileio.open(f'{url}/images/eval_reconstructions_00000001.png', 'rb')
  np.testing.assert_array_equal(np.asarray(Image.open(png)), image)
  assert not any(
      name.endswith('.tmp.png') for name in fileio.listdir(f'{url}/images'))


def _orbax_on_a_local_folder(monkeypatch, tmp_path) -> list[str]:
  """Orbax's manager on a folder under tmp_path for a ram:// directory;
  returns the list of directories it was given."""
  given = []
  real_manager = checkpoint.ocp.CheckpointManager

  def fake_manager(directory, *args, **kwargs):
    given.append(directory)
    fileio.makedirs(directory)
    return real_manager(
        str(tmp_path) + directory.removeprefix('ram:/'), *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp, 'CheckpointManager', fake_manager)
  return given


def test_checkpoints_and_run_config_on_a_url(url, tmp_path, monkeypatch):
  """The URL reaches Orbax unchanged (an abspath made it '<cwd>/gs:/...');
  config.json next to it goes through gfile."""
  given = _orbax_on_a_local_folder(monkeypatch, tmp_path)
  with pytest.raises(CheckpointError, match='does not exist'):
    checkpoint.restore_on_host(url)
  with pytest.raises(CheckpointError, match='does not exist'):
    trained_tokenizer.read_run_config(url)
  config = ml_collections.ConfigDict({'task': 'tokenizer', 'seed': 3})
  ckpt = checkpoint.Checkpointer(url, max_to_keep=2)
  run_record.write(url, config)
  state = {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  ckpt.save(4, state, force=True)
  ckpt.wait()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {'w': jax.ShapeDtypeStruct((2, 3), np.float32, sharding=device)}
  restored, step = ckpt.restore(abstract)
  ckpt.close()
  assert step == 4
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert ckpt.directory == f'{url}/checkpoints'
  assert trained_tokenizer.read_run_config(url).to_dict() == config.to_dict()
  tree, step = checkpoint.restore_on_host(url)
  assert step == 4 and given == [f'{url}/checkpoints'] * 2
  np.testing.assert_array_equal(tree['w'], state['w'])


def test_a_conversion_into_a_url(url, tmp_path, monkeypatch):
  """`python -m vqlab.convert ... gs://...` writes config.py through gfile
  (it used the builtin open and failed after the checkpoint), and a URL
  that holds checkpoints is refused (os.path saw none there)."""
  _orbax_on_a_local_folder(monkeypatch, tmp_path)
  model_config = tiny.tokenizer_config().model
  model = tokenizers.build(model_config)
  params = jax.tree.map(
      lambda p: np.zeros(p.shape, p.dtype),
      jax.eval_shape(model.init, jax.random.key(0),
                     np.zeros((1, 16, 16, 3), np.float32))['params'])
  converted = published.Converted(model_config, params, 16, 'a test file')
  command = published.write_run(url, converted)['command']
  config_py = fileio.read_bytes(f'{url}/config.py').decode()
  assert 'a test file' in config_py and command in config_py
  # config_flags loads a local --config only: the command copies it first.
  local = os.path.basename(url) + '_config'
  assert command == (f'mkdir -p {local} && gcloud storage cp {url}/config.py '
                     f'{url}/config.json {local}/ && python main.py '
                     f'--config={local}/config.py --workdir={url} --mode=eval')
  fileio.makedirs(f'{url}/checkpoints/0')  # Where real Orbax writes step 0.
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    published.write_run(url, converted)


def test_a_resumed_writer_drops_later_rows_and_no_writer_overwrites_events(
    tmp_path, monkeypatch):
  """A run killed after step 4's row was half written, resumed from its
  checkpoint at step 2: steps 3 and 4 are logged again, once. Events files
  begun in one second keep apart."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
                  '{"step": 3, "loss": 0.8}\n{"step": 4, "lo')
  writer = writers.MetricWriter(str(tmp_path), trains_from=2)
  writer.write_scalars(3, {'loss': 0.7})
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r['step'], r['loss']) for r in rows] == [(1, 1.0), (2, 0.9),
                                                    (3, 0.7)]
  # Killed while writing the eval row of the step it resumes from (the eval
  # after that step's save): the torn row goes, no row is glued onto it.
  path.write_text('{"step": 2, "loss": 0.9}\n{"step": 2, "eval/ps')
  writer = writers.MetricWriter(str(tmp_path), trains_from=2)
  writer.write_scalars(3, {'loss': 0.7, 'lr': float('nan')})
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows == [{
      'step': 2,
      'loss': 0.9
  }, {
      'step': 3,
      'loss': 0.7,
      'lr': None
  }]
  assert writers.as_json({
      'a': np.float32('inf'),
      'b': [float('nan'), 1.5],
      'c': np.float32(0.5)
  }) == '{"a": null, "b": [null, 1.5], "c": 0.5}'
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Two writers begun in one second (a trainer, and an eval beside it) keep
  # both their events: tensorboardX names a file by the second and host.
  monkeypatch.setattr(event_file_writer.time, 'time', lambda: 1.7e9)
  for loss in (1.0, 2.0):
    writer = writers.MetricWriter(str(tmp_path / 'same_second'), jsonl=False)
    writer.write_scalars(1, {'loss': loss})
    writer.close()
  assert sorted(value.simple_value
                for path in glob.glob(
                    str(tmp_path / 'same_second/tensorboard/events.out.*'))
                for event in tf.compat.v1.train.summary_iterator(path)
                for value in event.summary.value) == [1.0, 2.0]


# Token metadata of a train split of 4 examples in one shard.
_ONE_SHARD_OF_4 = {
    'format': token_shards.FORMAT_VERSION,
    'input_shape': [8, 8, 3],
    'splits': {
        'train': {
            'complete': True,
            'num_files': 1,
            'num_examples': 4
        }
    }
}


def test_a_truncated_token_shard_is_named(tmp_path):
  """E.g. a copy cut short: one line naming the shard, no zip traceback."""
  directory = str(tmp_path)
  path = token_shards.shard_path(directory, 'train', 0, 0)
  fileio.makedirs(os.path.dirname(path))
  token_shards.write_shard(path, {'tokens': np.arange(12).reshape(4, 3)})
  token_shards.write_metadata(directory, _ONE_SHARD_OF_4)
  assert len(token_shards.load_split(directory, 'train')[0]['tokens']) == 4
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:100])
  with pytest.raises(ValueError, match=r'token shard .* is corrupt'):
    token_shards.load_split(directory, 'train')
  with open(path, 'wb') as f:
    f.write(b'not a shard at all')
  with pytest.raises(ValueError, match=r'token shard .* is corrupt'):
    token_shards.load_split(directory, 'train')
  # Metadata that is JSON but not an object: named, not an AttributeError.
  with open(os.path.join(directory, token_shards.METADATA), 'w') as f:
    f.write('[]')
  with pytest.raises(ValueError,
                     match=r'metadata.json holds a JSON list, not '):
    token_shards.load_split(directory, 'train')
  with open(os.path.join(directory, token_shards.METADATA), 'w') as f:
    json.dump({**_ONE_SHARD_OF_4, 'tokenizer': 5}, f)
  with pytest.raises(
      ValueError, match=r'metadata.json: its tokenizer is 5, not the record '):
    token_shards.load_split(directory, 'train')


def test_the_shards_of_two_processes_load_in_the_streams_order(tmp_path):
  """Two processes (B = 4, b = 2), 2 batches per shard: process p's shard
  i holds its rows of batches 2i and 2i + 1, so file order is not stream
  order (the eval loss and eval.max_batches of shards then differed from
  the same eval on the fly); each row's recorded position restores it."""
  directory = str(tmp_path)
  fileio.makedirs(os.path.join(directory, 'train'))
  for process in range(2):
    position = np.concatenate(
        [step * 4 + process * 2 + np.arange(2) for step in range(2)])
    token_shards.write_shard(
        token_shards.shard_path(directory, 'train', 0, process), {
            'tokens': position[:, None] * np.ones((1, 3), int),
            'position': position
        })
  token_shards.write_metadata(
      directory, {
          **_ONE_SHARD_OF_4, 'splits': {
              'train': {
                  'complete': True,
                  'num_files': 2,
                  'num_examples': 8
              }
          }
      })
  arrays, _ = token_shards.load_split(directory, 'train')
  assert set(arrays) == {'tokens'}
  np.testing.assert_array_equal(arrays['tokens'][:, 0], np.arange(8))


def test_token_shards_load_with_a_peak_near_their_size(tmp_path):
  """TokenSource keeps the ids as stored (uint16) and makes each batch
  int32; loading held every shard's copy beside the joined, reordered and
  widened ones (a peak of 4x the uint16 split: ImageNet's took 2.6 GB per
  host); now the shards and the joined copy (2x)."""
  directory = str(tmp_path)
  fileio.makedirs(os.path.join(directory, 'train'))
  rows = 4096
  for shard in range(4):
    token_shards.write_shard(
        token_shards.shard_path(directory, 'train', shard, 0), {
            'tokens': np.full((rows, 256), shard),
            'position': shard * rows + np.arange(rows)
        })
  token_shards.write_metadata(
      directory, {
          **_ONE_SHARD_OF_4, 'splits': {
              'train': {
                  'complete': True,
                  'num_files': 4,
                  'num_examples': 4 * rows
              }
          }
      })
  tracemalloc.start()
  source = token_shards.TokenSource(directory, 'train', global_batch_size=8)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  size = 4 * rows * 256 * 2  # uint16.
  assert source.arrays['tokens'].dtype == np.uint16
  assert peak < 2.5 * size, peak / size
  batch = next(source.batches())
  assert batch['tokens'].dtype == np.int32 and batch['tokens'].shape == (8, 256)


def test_a_token_file_this_user_may_not_read_is_not_called_corrupt(
    tmp_path, monkeypatch):
  """Permissions (or an I/O error) said nothing of the file, but the error
  advised deleting it, or the whole tokens directory for metadata.json.
  (open is patched: root reads every file.)"""
  directory = str(tmp_path)
  path = token_shards.shard_path(directory, 'train', 0, 0)
  fileio.makedirs(os.path.dirname(path))
  token_shards.write_shard(path, {'tokens': np.arange(12).reshape(4, 3)})
  token_shards.write_metadata(directory, _ONE_SHARD_OF_4)
  denied = PermissionError(13, 'Permission denied')

  def no_access(*args, **kwargs):
    raise denied

  for target in (token_shards.np, token_shards.fileio):
    with monkeypatch.context() as patch:
      patch.setattr(target, 'load' if target is np else 'open', no_access)
      with pytest.raises(ValueError) as raised:
        token_shards.load_split(directory, 'train')
    assert str(raised.value).startswith('could not read ')
    assert 'Permission denied' in str(raised.value)
    assert 'delete' not in str(raised.value)


def test_token_shards_fid_statistics_and_gifs_on_a_url(url):
  # Condition ids from a tokenizer with a larger vocabulary than the main
  # one's (2^18 LFQ codes) must not be cut to uint16.
  arrays = {
      'tokens': np.arange(12).reshape(4, 3),
      'cond_tokens': np.array([[70000, 262143, 5]] * 4),
      'label': np.arange(4)
  }
  fileio.makedirs(f'{url}/train')
  token_shards.write_shard(token_shards.shard_path(url, 'train', 0, 0), arrays)
  token_shards.write_metadata(url, _ONE_SHARD_OF_4)
  loaded, metadata = token_shards.load_split(url, 'train')
  assert metadata['input_shape'] == [8, 8, 3]
  for key, value in arrays.items():
    np.testing.assert_array_equal(loaded[key], value)

  stats = fid.FeatureStatistics()
  stats.update(np.random.default_rng(0).normal(size=(5, 3)))
  stats.save(f'{url}/fid_stats.npz')
  mu, sigma = fid.load_statistics(f'{url}/fid_stats.npz')
  np.testing.assert_allclose(mu, stats.mean())
  np.testing.assert_allclose(sigma, stats.covariance())

  writers.save_gif(f"{url}/clip.gif",
                   np.linspace(-1, 1, 3 * 16).reshape(3, 4, 4, 1))
  assert Image.open(fileio.open(f'{url}/clip.gif', 'rb')).n_frames == 3


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
  path = tmp_path / 'a.bin'
  path.write_bytes(b'old')

  def write(file):
    file.write(b'partial')
    raise ValueError('found bad input mid-file')

  with pytest.raises(ValueError, match='mid-file'):
    fileio.write_atomically(path, write)
  assert os.listdir(tmp_path) == ['a.bin'] and path.read_bytes() == b'old'


def test_weight_files_saved_to_a_url_hold_the_local_bytes(url, tmp_path):
  """The savers write through fileio.write_atomically (they opened a local
  temporary file, a FileNotFoundError for a URL)."""
  arrays = {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  for name, save in (('w.pth', torch_files.save_state_dict),
                     ('w.safetensors', safetensors_files.save_safetensors)):
    save(f'{url}/{name}', arrays)
    save(tmp_path / name, arrays)
    assert fileio.read_bytes(f'{url}/{name}') == (tmp_path / name).read_bytes()
  assert sorted(fileio.listdir(url)) == ['w.pth', 'w.safetensors']


def test_a_grid_of_pixels_of_another_kind_is_named(tmp_path):
  """[-1, 1] floats tile into uint8; uint8 rows (which would come out
  white), rows of other shapes and float pictures are named, not drawn."""
  images = np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  grid = writers.image_grid([images, -images], padding=1)
  assert grid.shape == (11, 11, 3) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 0 and grid[6, 1, 0] == 255  # -1 and 1.
  writers.save_png(str(tmp_path / 'grid.png'), grid)
  # A model's bfloat16 pictures: drawn too (to bfloat16's rounding).
  rounded = writers.image_grid([images.astype(ml_dtypes.bfloat16), -images],
                               padding=1)
  assert np.abs(rounded.astype(int) - grid).max() == 1
  with pytest.raises(ValueError, match='got row 1 of uint8'):
    writers.image_grid([images, (images > 0).astype(np.uint8)])
  with pytest.raises(ValueError, match=r'got row 1 of float64 \(1, 4, 4, 3\)'):
    writers.image_grid([images, images[:1]])
  with pytest.raises(ValueError, match='non-empty list'):
    writers.image_grid(images)
  with pytest.raises(ValueError, match=r'uint8 \[H, W, 1 or 3\].* got float64'):
    writers.save_png(str(tmp_path / 'float.png'), images[0])
