"""Stage 2 end to end: tokenize a dataset with a tokenizer run, train MaskGIT
and GPT on the shards (or on the fly), sample and decode to images.

Runs on 2 of the 8 test devices (sharded batches, cheap compiles).
"""

import copy
import fcntl
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
from PIL import Image
import pytest

from tests import compile_options
from tests import paths
from tests import random_weight_files
from tests import retrace
from tests import tiny
from vqlab import data as data_lib
from vqlab.data import image_folder
from vqlab.data import token_shards
from vqlab.errors import CheckpointError
from vqlab.errors import ConfigError
from vqlab.errors import DataError
from vqlab.errors import WorkdirError
from vqlab.evals import fid
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import frozen
from vqlab.train import loop
from vqlab.train import pins
from vqlab.train import pretokenize
from vqlab.train import run_record
from vqlab.train import sampling
from vqlab.train import trained_tokenizer
from vqlab.train import workdir_lock
from vqlab.train.tasks import generator
from vqlab.train.tasks import spatial_conditions

ROOT = paths.ROOT


def _devices():
  return jax.devices()[:2]


@pytest.fixture
def one_load_per_run(monkeypatch):
  """Each tokenizer run (and step) the test's generator builds read is loaded
  once (Orbax's restore is a load's time, about 1 s), and so are the metric
  networks' weights (Inception's conversion, about 1 s): for tests that do
  not change a tokenizer run or a weight file on disk."""
  monkeypatch.setattr(trained_tokenizer, 'load',
                      functools.cache(trained_tokenizer.load))
  load_networks = functools.cache(frozen.load)
  monkeypatch.setattr(
      frozen, 'load',
      lambda networks, directory: load_networks(tuple(networks), directory))


@pytest.fixture(scope='module')
def shards(tokenizer_dir, tmp_path_factory):
  """A generator workdir whose tokens/ was written by --mode=tokenize."""
  workdir = str(tmp_path_factory.mktemp('generator'))
  config = tiny.generator_config(tokenizer_dir)
  summary = pretokenize.tokenize(config, workdir, devices=_devices())
  return workdir, summary


def _pins_in(run):
  """{(reader, key, step)} of the pins other runs recorded in `run`."""
  found = set()
  for path in glob.glob(os.path.join(run, pins.DIRECTORY, '*.json')):
    with open(path) as f:
      record = json.load(f)
    found.add((record['reader'], record['key'], record['step']))
  return found


def _split_files(directory, split):
  return sorted(glob.glob(os.path.join(directory, split, 'shard-*')))


def test_tokenize_writes_the_tokenizers_indices_with_metadata(
    tokenizer_dir, shards):
  workdir, summary = shards
  directory = summary['tokens_dir']
  assert summary[
      'train_examples'] == 40 and summary['shards_written'] == 6  # 3 + 3
  arrays, metadata = token_shards.load_split(directory, 'eval')
  assert metadata['tokenizer']['step'] == 1
  assert metadata['tokenizer']['workdir'] == os.path.abspath(tokenizer_dir)
  assert metadata['token_shape'] == [8, 8] and metadata['vocab_size'] == 32
  assert metadata['splits']['eval']['complete']
  # The eval tokens are exactly the tokenizer's indices of the eval images,
  # in order, padding dropped.
  config = tiny.generator_config(tokenizer_dir)
  tok = trained_tokenizer.load(tokenizer_dir)
  source = data_lib.build(config.data, split='eval', global_batch_size=8)
  images = np.concatenate([b['image'][b['mask']] for b in source.batches()])
  expected = np.asarray(compile_options.encode(tok, images))
  assert arrays['tokens'].dtype == np.int32
  np.testing.assert_array_equal(arrays['tokens'], expected)
  train, _ = token_shards.load_split(directory, 'train')
  assert train['tokens'].shape == (40, 8, 8) and 'position' not in train
  # Each row's place in the split's stream, by which load_split orders the
  # shards of several processes.
  np.testing.assert_array_equal(
      np.concatenate([
          np.load(path)['position']
          for path in _split_files(directory, 'train')
      ]), np.arange(40))
  assert 0 <= train['tokens'].min() and train['tokens'].max() < 32
  # The tokenizer run keeps the step the shards decode with (vqlab.train.pins).
  assert (os.path.abspath(workdir), 'tokenizer.step',
          1) in _pins_in(tokenizer_dir)


def test_a_tokenize_refused_by_the_workdir_lock_pins_nothing(
    tokenizer_dir, tmp_path):
  """A tokenize refused by the lock (the generator training in its workdir)
  wrote its pins first: under another tokenizer.step, the training run's pin
  moved and the tokenizer run could delete the generator's step."""
  workdir = str(tmp_path / 'busy')
  os.makedirs(workdir)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # Another open file: another run's lock.
    with pytest.raises(WorkdirError, match='in use by another vqlab run'):
      pretokenize.tokenize(tiny.generator_config(tokenizer_dir), workdir,
                           devices=_devices())
  assert os.path.abspath(workdir) not in {
      reader for reader, _, _ in _pins_in(tokenizer_dir)
  }


def test_a_checkpoint_of_another_model_is_refused_when_loaded(
    tokenizer_dir, tmp_path):
  """A run whose config.json names another model (a copied or edited run)
  loaded, then failed deep in Flax at the first encode."""
  other = str(tmp_path / 'other')
  shutil.copytree(tokenizer_dir, other)
  with open(os.path.join(other, 'config.json')) as f:
    config = json.load(f)
  config['model']['channels'] = 16
  with open(os.path.join(other, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(
      CheckpointError, match=rf"^{other} step 1: the checkpoint's params are "
      r'not those of the model its config.json describes: params/decoder/\S+ '
      r'is \(.*\) float32 there, \(.*\) float32 here; .*more$'):
    trained_tokenizer.load(other)
  with pytest.raises(TypeError, match="^step must be an int .*, got '1'"):
    trained_tokenizer.load(tokenizer_dir, '1')  # Was: '<' not supported.
  with pytest.raises(ValueError, match='steps do not count back'):
    trained_tokenizer.load(tokenizer_dir, -2)  # Was: the newest.


@pytest.mark.usefixtures('one_load_per_run')
def test_shards_of_a_tokenizer_trained_again_are_refused(
    tokenizer_dir, shards, tmp_path):
  """A tokenizer run trained anew in its workdir holds another checkpoint at
  the step the shards were made from: a generator on them (training on,
  sampling) and a tokenize that continues them stop, naming it. The same
  run moved elsewhere (its params, checked by their checksum) is the one
  the shards were made with."""
  _, summary = shards
  tok = trained_tokenizer.load(tokenizer_dir)
  recorded = token_shards.read_metadata(summary['tokens_dir'])
  assert recorded['tokenizer']['checksum'] == tok.checksum
  config = tiny.generator_config(tokenizer_dir)
  config.tokens.dir = str(tmp_path / 'tokens')
  shutil.copytree(summary['tokens_dir'], config.tokens.dir)
  generator.build(experiment_config.validate(config, 2))
  # The same run moved elsewhere: the same params, so its tokens.
  moved = copy.deepcopy(config)
  moved.tokenizer.workdir = str(tmp_path / 'moved')
  shutil.copytree(tokenizer_dir, moved.tokenizer.workdir)
  read_shards = lambda config: generator.build(
      experiment_config.validate(config, 2)).data_source('eval', 4, 0, 1)
  read_shards(moved)
  recorded['tokenizer']['checksum'] = '0' * 32  # Made by another training.
  token_shards.write_metadata(config.tokens.dir, recorded)
  message = (r'^tokenizer\.workdir: step 1 of .* is not the checkpoint the '
             r'token shards in .*tokens were made from \(its params differ')
  with pytest.raises(ConfigError, match=message):
    generator.build(experiment_config.validate(config, 2))
  with pytest.raises(ConfigError,
                     match=f'set tokenizer.workdir = {tokenizer_dir} to train'):
    read_shards(moved)
  with pytest.raises(ConfigError, match=message):
    pretokenize.tokenize(config, str(tmp_path / 'run'), devices=_devices())


@pytest.mark.usefixtures('one_load_per_run')
def test_tokenize_resumes_only_missing_shards_and_ignores_partial_files(
    tokenizer_dir, shards, tmp_path, monkeypatch):
  _, summary = shards
  # The train streams tokenize opens: one per run of consecutive shards to
  # write (a tf.data source reads every record before its start step).
  streams = []
  build = data_lib.build_for_run

  def counted(*args, split, **kwargs):
    source = build(*args, split=split, **kwargs)
    if split == 'train':
      batches = source.batches
      source.batches = lambda start=0: streams.append(start) or batches(start)
    return source

  monkeypatch.setattr(pretokenize.data_lib, 'build_for_run', counted)
  directory = str(tmp_path / 'tokens')
  shutil.copytree(summary['tokens_dir'], directory)
  before = {p: open(p, 'rb').read() for p in _split_files(directory, 'train')}
  # A crash while writing shard 1: its file is gone, a partial .tmp remains
  # and the split is not marked complete.
  victim = _split_files(directory, 'train')[1]
  os.remove(victim)
  with open(victim + '.tmp', 'wb') as f:
    f.write(b'half a shard')
  metadata = token_shards.read_metadata(directory)
  metadata['splits']['train']['complete'] = False
  token_shards.write_metadata(directory, metadata)
  with pytest.raises(ValueError,
                     match='incomplete: run main.py --mode=tokenize'):
    token_shards.load_split(directory, 'train')

  config = tiny.generator_config(tokenizer_dir)
  config.tokens.dir = directory
  again = pretokenize.tokenize(config, str(tmp_path), devices=_devices())
  assert again['shards_written'] == 1
  after = {p: open(p, 'rb').read() for p in _split_files(directory, 'train')}
  assert after == before  # Regenerated bit-identically.
  token_shards.load_split(directory, 'train')

  # A shard of a finished split deleted (as a corrupt one is): loading says
  # to tokenize again, which writes it (it used to skip the finished split).
  os.remove(victim)
  with pytest.raises(
      ValueError, match='2 shard files, the metadata lists 3: '
      'run main.py --mode=tokenize again'):
    token_shards.load_split(directory, 'train')
  streams.clear()
  assert pretokenize.tokenize(config, str(tmp_path),
                              devices=_devices())['shards_written'] == 1
  assert streams == [2]  # Shard 1's batches 2 and 3 (2 per shard).
  assert {
      p: open(p, 'rb').read() for p in _split_files(directory, 'train')
  } == before

  # Fewer train examples: the old shards are set aside, the split rewritten
  # from one stream.
  config.tokens.num_train_examples = 36
  streams.clear()
  pretokenize.tokenize(config, str(tmp_path), devices=_devices())
  assert streams == [0]
  arrays, _ = token_shards.load_split(directory, 'train')
  assert len(arrays['tokens']) == 36
  assert len(glob.glob(os.path.join(directory, 'train', '*.stale'))) == 3
  np.testing.assert_array_equal(
      arrays['tokens'],
      np.concatenate([np.load(p)['tokens'] for p in before])[:36])
  config.tokens.num_train_examples = 40

  config.tokens.batch_size = 4  # Another stream: the old shards don't fit.
  with pytest.raises(ConfigError, match='tokens.dir.*batch_size'):
    pretokenize.tokenize(config, str(tmp_path), devices=_devices())
  # Into the workdir of a tokenizer run (a copy of one): refused, unwritten.
  with pytest.raises(ConfigError, match=r"^--workdir: .* holds a 'tokenizer' "
                     'run'):
    pretokenize.tokenize(config, tokenizer_dir, devices=_devices())
  assert not os.path.exists(os.path.join(tokenizer_dir, 'tokens'))


def _folder_config(tokenizer_dir, folder):
  """The tiny generator on a flat folder of 16x16 images, 8 train draws."""
  config = tiny.generator_config(tokenizer_dir)
  config.data = data_lib.default_config('image_folder')
  config.data.update(path=folder, image_size=16)
  config.tokens.num_train_examples = 8
  return config


def _add_image(folder, name, seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), np.uint8)
  Image.fromarray(pixels).save(os.path.join(folder, name))


@pytest.mark.usefixtures('one_load_per_run')
def test_tokenize_again_rewrites_a_split_whose_files_changed(
    tokenizer_dir, tmp_path, capsys):
  """One image added to a flat folder swaps which are held out for eval at
  the same eval count: the old eval tokens (of img028, now a train image)
  were reused, training on an image it was evaluated on (and the old train
  tokens, of as many draws)."""
  folder = str(tmp_path / 'images')
  os.makedirs(folder)
  for i in range(40):
    _add_image(folder, f'img{i:03d}.png', i)
  config = _folder_config(tokenizer_dir, folder)
  workdir = str(tmp_path / 'run')
  pretokenize.tokenize(config, workdir, devices=_devices())
  directory = os.path.join(workdir, 'tokens')
  before = token_shards.read_metadata(directory)['splits']
  old_tokens = token_shards.load_split(directory, 'eval')[0]['tokens']
  _add_image(folder, 'new82.png', 82)  # Eval: img011, new82 (was img028).
  capsys.readouterr()
  summary = pretokenize.tokenize(config, workdir, devices=_devices())
  assert summary['eval_examples'] == 2 and summary['shards_written'] == 2
  printed = capsys.readouterr().out
  for split in ('train', 'eval'):
    assert (f'tokenizing the {split} split again: its tokens in {directory} '
            'were made from other files') in printed
    assert len(glob.glob(os.path.join(directory, split, '*.stale'))) == 1
  after = token_shards.read_metadata(directory)['splits']
  assert after['eval']['num_examples'] == before['eval']['num_examples'] == 2
  assert after['eval']['fingerprint'] != before['eval']['fingerprint']
  eval_files = image_folder.split_files(config.data, 'eval')[0]
  names = [os.path.basename(p) for p in eval_files]
  assert names == ['img011.png', 'new82.png']
  # Row 0 is img011's tokens still, row 1 new82's where img028's were.
  tokens = token_shards.load_split(directory, 'eval')[0]['tokens']
  np.testing.assert_array_equal(tokens[0], old_tokens[0])
  assert np.any(tokens[1] != old_tokens[1])


def test_tokenize_reads_process_0s_newest_tokenizer_step(
    tokenizer_dir, tmp_path, monkeypatch):
  """tokenizer.step = -1 with no shards yet: the tokenizer run's newest
  step as process 0 lists it, on every process (each listed its own, and a
  save between two listings made shards of two steps)."""
  config = tiny.generator_config(tokenizer_dir)
  directory = str(tmp_path / 'tokens')
  newest = checkpoint_lib.newest_step(tokenizer_dir)
  assert pretokenize._tokenizer_step(config, directory) == newest  # pylint: disable=protected-access
  listed = []

  def broadcast(value):
    listed.append(int(value))
    return np.int64(newest + 5)  # Process 0 saw a newer step.

  # This module's view of JAX only: the checkpoint listing stays local.
  monkeypatch.setattr(
      pretokenize, 'jax',
      types.SimpleNamespace(process_count=lambda: 2, process_index=lambda: 0))
  monkeypatch.setattr(pretokenize.multihost_utils, 'broadcast_one_to_all',
                      broadcast)
  assert pretokenize._tokenizer_step(config, directory) == newest + 5  # pylint: disable=protected-access
  assert listed == [newest]


def _train(tokenizer_dir, shards, workdir, model, steps):
  shutil.copytree(shards[1]['tokens_dir'], os.path.join(workdir, 'tokens'))
  config = tiny.generator_config(tokenizer_dir, model, steps=steps)
  config.optimizer.learning_rate = 3e-3
  losses = []
  result = loop.train_and_evaluate(
      config, workdir, devices=_devices(),
      step_callback=lambda step, m: losses.append(float(m['loss'])))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
  assert np.isfinite(result['loss']) and 0 <= result['accuracy'] <= 1
  # The eval picture shows decoded samples: 2 rows of 4 16x16 images.
  grid, = glob.glob(os.path.join(workdir, 'images', 'eval_samples_*.png'))
  assert np.asarray(Image.open(grid)).shape == (38, 74, 3)
  return config


def test_shards_of_other_data_are_refused(tokenizer_dir, shards, tmp_path):
  """Its FID reference, prompts and eval conditions come from config.data:
  shards of other data trained without a word."""
  config = tiny.generator_config(tokenizer_dir)
  config.tokens.dir = shards[1]['tokens_dir']
  config.data.seed += 1  # Other random crops of the photos.
  with pytest.raises(
      ConfigError, match=r'^tokens\.dir: .* holds tokens of '
      r'other data \(data\.seed 0 there, 1 here\)'):
    experiment.Experiment(config, str(tmp_path / 'run'), _devices())


@pytest.fixture(scope='module')
def trained_maskgit(tokenizer_dir, shards, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('maskgit'))
  return workdir, _train(tokenizer_dir, shards, workdir, 'maskgit', 25)


def test_maskgit_trains_on_shards_and_samples_decode_to_images(trained_maskgit):
  workdir, config = trained_maskgit
  sampled = sampling.sample(config, workdir, devices=_devices())
  assert sampled['step'] == 25 and sampled['num_samples'] == 6
  assert 'gfid' not in sampled  # eval.fid = 'off'.
  grids = sorted(glob.glob(os.path.join(sampled['samples_dir'], '*.png')))
  assert len(grids) == 2  # ceil(6 / 4) batches.
  first = np.asarray(Image.open(grids[0]))
  assert first.shape == (38, 38, 3) and first.std() > 0  # 2 x 2 samples.


def test_maskgit_eval_loss_is_the_mean_over_every_masked_token(
    trained_maskgit, monkeypatch):
  """Over batches whose masked-token counts differ and a padded last batch,
  the eval loss and accuracy are those of all masked tokens at once."""
  workdir, config = trained_maskgit
  config = copy.deepcopy(config)
  config.eval.max_batches = -1
  config.eval.batch_size = 8  # 36 eval examples: the last batch is padded.
  original = maskgit.masked_loss

  def masked_where_even(model, params, rng, tokens, labels=None, **kwargs):
    # Masks of the examples' own tokens: counts differ by batch and example.
    kwargs['mask'] = model.flatten(tokens)[..., 0] % 2 == 0
    return original(model, params, rng, tokens, labels, **kwargs)

  monkeypatch.setattr(maskgit, 'masked_loss', masked_where_even)
  exp = experiment.Experiment(config, workdir, _devices())
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  metrics, _ = exp.evaluate(state)
  batches = list(exp.eval_data.batches())
  real = lambda key: np.concatenate(
      [b[key][np.asarray(b['mask'], bool)] for b in batches])
  assert not np.all(batches[-1]['mask'])  # Padded.
  assert metrics['num_examples'] == len(real('tokens'))
  _, want = masked_where_even(exp.task.model, exp.task.eval_params(state),
                              jax.random.key(0), real('tokens'),
                              label_smoothing=0.0, label_drop=0.0, train=False)
  for key in ('loss', 'accuracy'):
    np.testing.assert_allclose(metrics[key], want[key], rtol=1e-5, err_msg=key)


@pytest.mark.usefixtures('small_inception_input', 'one_load_per_run')
def test_sample_mode_reports_gfid_and_inception_score_of_the_samples(
    trained_maskgit, tmp_path, monkeypatch):
  # Without its train token shards: sampling reads none.
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_maskgit[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'tokens', 'train'))
  config = copy.deepcopy(trained_maskgit[1])
  config.weights_dir = str(
      random_weight_files.write(tmp_path, ('inception_fid',)))
  config.eval.fid = 'on'
  rng = np.random.default_rng(0)
  mu, a = rng.normal(size=2048), rng.normal(size=(2048, 16))
  config.eval.fid_reference = str(tmp_path / 'reference.npz')
  np.savez(config.eval.fid_reference, mu=mu, sigma=a @ a.T / 16)
  config.sample.num_samples = 4
  config.eval.inception_input = 'tf'  # As the ADM reference batches were.
  # A key the run's record has otherwise: refused, unless allowed.
  config.optimizer.learning_rate *= 2
  with pytest.raises(ConfigError, match='--allow_config_change'):
    sampling.sample(config, workdir, devices=_devices())
  # A reference that cannot serve stops the run before any sample is drawn:
  # missing, or vqlab's of pytorch-fid's input for a run measuring with TF's.
  shutil.rmtree(os.path.join(workdir, 'samples'), ignore_errors=True)
  other = copy.deepcopy(config)
  other.eval.fid_reference = str(tmp_path / 'pytorch_fid.npz')
  with pytest.raises(ConfigError, match='^eval.fid_reference: .*No such'):
    sampling.sample(other, workdir, devices=_devices(),
                    allow_config_change=True)
  made = fid.FeatureStatistics()
  made.update(rng.normal(size=(3, 2048)))
  made.save(
      other.eval.fid_reference, source=json.dumps({
          'network': 'inception',
          'inception_input': 'pytorch_fid'
      }))
  with pytest.raises(
      ConfigError, match="inception_input 'pytorch_fid', but "
      "this config measures with 'tf'"):
    sampling.sample(other, workdir, devices=_devices(),
                    allow_config_change=True)
  assert not os.path.exists(os.path.join(workdir, 'samples', 'step_25'))
  # A grid of an earlier sampling of more samples goes.
  stale = os.path.join(workdir, 'samples', 'step_25', 'grid_0001.png')
  os.makedirs(os.path.dirname(stale), exist_ok=True)
  Image.new('RGB', (2, 2)).save(stale)
  # The gFID is checked by its arguments (the distance's value of singular
  # statistics: tests/evals/test_fid.py): two 2048 x 2048 eigensolves fewer.
  distances = []
  monkeypatch.setattr(fid, 'frechet_distance',
                      lambda *stats: distances.append(stats) or 2.5)
  result = sampling.sample(config, workdir, devices=_devices(),
                           allow_config_change=True)
  assert os.listdir(result['samples_dir']) == ['grid_0000.png']
  # Its record says what the numbers were made with.
  with open(os.path.join(workdir, 'samples_25.json')) as f:
    settings = json.load(f)['settings']
  assert settings['sample'] == json.loads(config.sample.to_json())
  assert settings['eval.fid_reference'] == config.eval.fid_reference
  assert settings['params'] == ('ema' if config.ema.decay else 'trained')
  assert 'sample_classes' not in settings  # Unconditional.

  # Directly: the same samples (same key) through Inception.
  exp = experiment.Experiment(config, workdir, _devices(),
                              allow_config_change=True, trains=False)
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  images = exp.sample_images(
      state, jax.random.fold_in(jax.random.key(config.sample.seed), 0),
      batch_size=4)
  out = sampling.inception_outputs(exp.frozen['inception'], images, 'tf')
  pool = np.asarray(out['pool'], np.float64)
  # The samples' statistics against the reference's.
  (sample_mu, sample_sigma, reference_mu, reference_sigma), = distances
  assert result['gfid'] == 2.5
  np.testing.assert_allclose(sample_mu, pool.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sample_sigma, np.cov(pool, rowvar=False),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(reference_mu, mu)
  np.testing.assert_allclose(reference_sigma, a @ a.T / 16, rtol=1e-12)
  score = fid.InceptionScore(num_splits=4, num_examples=4)
  score.update(np.asarray(out['logits_unbiased'], np.float64))
  np.testing.assert_allclose(result['inception_score'],
                             score.result()[0], rtol=1e-5)
  # Unconditional: nothing split over the devices goes in, yet the sampler
  # and the decoder run split (each device made the whole batch).
  with jax.set_mesh(exp.mesh):
    tokens = jax.jit(exp.task.sample_tokens,
                     static_argnums=2)(exp.task.eval_params(state),
                                       jax.random.key(0), 4)
  assert exp.mesh.size == 2
  assert [s.data.shape[0] for s in tokens.addressable_shards] == [2, 2]
  # --mode=eval reads no train token shards either. Under a changed config
  # its numbers go beside the training's eval of that step, not over it.
  config.eval.fid = 'off'
  with open(os.path.join(workdir, 'eval_25.json')) as f:
    trained = f.read()
  evaluated = loop.evaluate_checkpoint(config, workdir, devices=_devices(),
                                       allow_config_change=True)
  assert np.isfinite(evaluated['loss'])
  with open(os.path.join(workdir, 'eval_25.json')) as f:
    assert f.read() == trained
  with open(os.path.join(workdir, 'eval_25_changed.json')) as f:
    changed = json.load(f)
  lr = config.optimizer.learning_rate
  assert changed['config_changes'] == {
      'optimizer.learning_rate': [lr / 2, lr],
      # Free to change, but the numbers measure otherwise.
      'eval.fid_reference': ['', config.eval.fid_reference],
      'eval.inception_input': ['pytorch_fid', 'tf'],
  }
  assert changed['loss'] == evaluated['loss']
  assert os.path.exists(os.path.join(workdir, 'images', 'eval_25_changed.png'))


@pytest.mark.usefixtures('one_load_per_run')
def test_gpt_trains_on_shards_and_samples_decode_to_images(
    tokenizer_dir, shards, tmp_path):
  config = _train(tokenizer_dir, shards, str(tmp_path), 'gpt', 25)

  # --mode=sample over a larger grid: taming's sliding window, the 8x8
  # training grid as the window; 10x10 tokens decode to 20x20 images.
  config.sample.grid_shape = (10, 10)
  config.sample.num_samples = config.sample.batch_size = 2
  sampled = sampling.sample(config, str(tmp_path), devices=_devices())
  grid, = glob.glob(os.path.join(sampled['samples_dir'], '*.png'))
  assert np.asarray(Image.open(grid)).shape == (24, 46, 3)  # 1 x 2 samples.
  config.sample.grid_shape = (10, 6)
  with pytest.raises(
      ConfigError, match=r'sample.grid_shape: \(10, 6\) must '
      r'hold the training token grid \(8, 8\)'):
    sampling.sample(config, str(tmp_path), devices=_devices())


@pytest.mark.usefixtures('one_load_per_run')
def test_on_the_fly_tokens_give_the_same_eval_loss_as_shards(
    tokenizer_dir, shards, tmp_path):
  workdir, summary = shards
  config = tiny.generator_config(tokenizer_dir)
  config.tokens.source = 'on_the_fly'
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  # -1 pinned to the newest step, which config.json then records.
  assert exp.config.tokenizer.step == exp.task.tokenizer.step >= 0
  assert 'image' in next(exp.train_data.batches())
  state, _ = exp.initial_state()
  on_the_fly, _ = exp.evaluate(state)
  # The eval split's shards hold the same examples in the same order.
  tokens, _ = token_shards.load_split(summary['tokens_dir'], 'eval')
  batch = {'tokens': tokens['tokens'][:8], 'mask': np.ones(8, bool)}
  # The loop's key of eval batch 0 (see Experiment.eval_step).
  rng = jax.random.fold_in(jax.random.key(0), 0)
  outputs, _ = jax.jit(exp.task.eval_step)(state, batch, None, rng)
  images = exp.global_batch(next(exp.eval_data.batches()))
  expected, _ = exp.eval_step(state, images)  # Compiled by evaluate().
  np.testing.assert_allclose(outputs['sums']['loss'], expected['sums']['loss'],
                             rtol=1e-6)
  assert on_the_fly['num_examples'] == 16 and np.isfinite(on_the_fly['loss'])
  # Each eval batch draws its own MaskGIT masks: the same tokens as batch 1
  # are masked differently, and evaluate() sums the batches' own draws.
  again, _ = exp.eval_step(state, images, 1)
  assert again['sums']['loss_weight'] != expected['sums']['loss_weight']
  second, _ = exp.eval_step(state,
                            exp.global_batch(list(exp.eval_data.batches())[1]),
                            1)
  np.testing.assert_allclose(
      on_the_fly['loss'], (expected['sums']['loss'] + second['sums']['loss']) /
      (expected['sums']['loss_weight'] + second['sums']['loss_weight']),
      rtol=1e-5)
  # The run records the tokenizer checkpoint it reads by its digest; once
  # it saved a step, that tokenizer run trained again in its workdir (other
  # params at the same step) stops it, naming the key. (The check comes
  # before a restore: a step of the state's step alone, whose save compiles
  # no checksums of the whole state.)
  exp.record_config(0)
  exp.checkpointer.save(1, {'step': state.step}, force=True)
  exp.checkpointer.wait()
  exp.checkpointer.close()
  path = os.path.join(tmp_path, run_record.READ_CHECKPOINTS_FILE)
  with open(path) as f:
    recorded = json.load(f)
  tokenizer = recorded['tokenizer.workdir']
  assert tokenizer['checksum'] == exp.task.tokenizer.checksum
  tokenizer['checksum'] = '0' * 32  # Trained with another.
  with open(path, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(
      ConfigError, match=r'^tokenizer\.workdir: step 1 of .* is not the '
      r'checkpoint the run in .* was trained with \(its params differ'):
    experiment.Experiment(config, str(tmp_path), _devices())
  # A damaged record is named, not a deep AttributeError or KeyError.
  for damaged in (5, {'workdir': tokenizer['workdir']}):
    with open(path, 'w') as f:
      json.dump({'tokenizer.workdir': damaged}, f)
    with pytest.raises(
        ConfigError, match=r"^--workdir: .*read_checkpoints\.json: "
        r"'tokenizer\.workdir' is .*, not a record of the checkpoint"):
      experiment.Experiment(config, str(tmp_path), _devices())
  # (Train steps on the fly: tests/train/tasks/test_titok_training.py and
  # tests/train/tasks/test_text_to_image.py.)
  del workdir


@pytest.mark.parametrize('key, value, message', [
    ('vocab_size', 64,
     'model.vocab_size: 64, but the tokenizer .* has 32 codes'),
    ('token_shape', (4, 4), r'model.token_shape: \(4, 4\), but .* \(8, 8\)'),
])
@pytest.mark.usefixtures('one_load_per_run')
def test_a_model_that_does_not_fit_the_tokenizer_is_a_config_error(
    tokenizer_dir, tmp_path, key, value, message):
  config = tiny.generator_config(tokenizer_dir)
  config.model[key] = value
  with pytest.raises(ConfigError, match=message):
    pretokenize.tokenize(config, str(tmp_path / 'run'), devices=_devices())
  assert not os.path.exists(tmp_path / 'run')  # No workdir, no vqlab.lock.
  config = tiny.generator_config(tokenizer_dir, 'gpt')
  config.model.length = 32
  with pytest.raises(ConfigError, match='model.length: 32, but .* 64 tokens'):
    experiment.Experiment(config, str(tmp_path), _devices())


@pytest.mark.usefixtures('one_load_per_run')
def test_data_with_more_classes_than_the_model_is_a_config_error(
    tokenizer_dir, tmp_path, capsys):
  # Labels past the class table (NaN or the null class under jit).
  config = tiny.generator_config(tokenizer_dir)
  config.data = data_lib.default_config('shapes')
  config.data.image_size = 16
  config.model.num_classes = 5
  with pytest.raises(ConfigError,
                     match='model.num_classes: 5, but the train data has 6'):
    pretokenize.tokenize(config, str(tmp_path), devices=_devices())
  config.tokens.source = 'on_the_fly'
  with pytest.raises(ConfigError, match='model.num_classes = 6'):
    experiment.Experiment(config, str(tmp_path / 'fly'), _devices())
  # Fewer data classes than the model's: samples (gFID, IS) cycle through
  # the data's 6, not through 10 of which 4 never trained.
  config.model.num_classes = 10
  task = experiment.Experiment(config, str(tmp_path / 'more'), _devices()).task
  assert 'model.num_classes = 10, but the data has 6 classes' in (
      capsys.readouterr().out)
  np.testing.assert_array_equal(task.sample_conditions(0, 12),
                                np.tile(np.arange(6), 2))


def test_sample_labels_train_of_unlabelled_shards_stop_the_build(
    tokenizer_dir, shards, tmp_path):
  """Before training or sampling (--mode=sample makes its references after
  the task is built): the photos have no labels to draw from."""
  config = tiny.generator_config(tokenizer_dir)
  config.model.num_classes = 10
  config.sample.labels = 'train'
  config.tokens.dir = shards[1]['tokens_dir']
  with pytest.raises(ConfigError,
                     match=r"^sample\.labels: 'train', but .* no labels"):
    generator.build(experiment_config.validate(config, 2), str(tmp_path))


def test_missing_tokens_or_tokenizer_are_one_line_errors(
    tokenizer_dir, tmp_path):
  config = tiny.generator_config(tokenizer_dir)
  with pytest.raises(DataError, match='no token shards .* --mode=tokenize'):
    experiment.Experiment(config, str(tmp_path), _devices())
  with pytest.raises(CheckpointError, match='no checkpoint in .*typo'):
    sampling.sample(config, str(tmp_path / 'typo'), devices=_devices())
  assert not os.path.exists(tmp_path / 'typo')  # A mistyped --workdir.
  # A pinned step that the tokenizer run no longer has (its max_to_keep).
  config.tokenizer.step = 3
  with pytest.raises(CheckpointError) as e:
    experiment.Experiment(config, str(tmp_path), _devices())
  assert 'no checkpoint at step 3' in str(e.value)
  assert 'steps there: [1]. tokenizer.step = 3 names it' in str(e.value)
  assert 'set tokenizer.step to one of those steps' in str(e.value)
  config.tokenizer.workdir = str(tmp_path / 'nowhere')
  with pytest.raises(CheckpointError, match='config.json does not exist'):
    experiment.Experiment(config, str(tmp_path), _devices())
  # The same through main.py: one line, no traceback.
  run = subprocess.run([
      sys.executable,
      os.path.join(ROOT, 'main.py'),
      '--config=' + os.path.join(ROOT, 'configs', 'maskgit', 'tiny_cpu.py'),
      f'--config.tokenizer.workdir={tmp_path / "nowhere"}',
      f'--workdir={tmp_path / "run"}', '--mode=tokenize'
  ], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith(
      'checkpoint error: ') and 'Traceback' not in run.stderr


def test_vq_diffusion_trains_on_shards_and_samples_decode_to_images(
    tokenizer_dir, shards, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  shutil.copytree(shards[1]['tokens_dir'], os.path.join(workdir, 'tokens'))
  config = tiny.generator_config(tokenizer_dir, 'vq_diffusion', steps=3)
  config.loss.time_sampling = 'importance'
  config.sample.diffusion_steps = 4
  # In 2 microbatches the loss history moves once per step, from the whole
  # batch's draws (it moved once per microbatch, and the second drew its
  # times from the first's history).
  config.train.microbatches = 2
  moves = []
  update = vq_diffusion.update_loss_history
  monkeypatch.setattr(
      vq_diffusion, 'update_loss_history',
      lambda state, t, vlb: moves.append(t.shape) or update(state, t, vlb))
  result = loop.train_and_evaluate(config, workdir, devices=_devices())
  assert moves == [(config.train.batch_size,)]  # Traced once, whole batch.
  assert np.isfinite(result['loss']) and 0 <= result['accuracy'] <= 1
  grid, = glob.glob(os.path.join(workdir, 'images', 'eval_samples_*.png'))
  assert np.asarray(Image.open(grid)).shape == (38, 74, 3)
  state, _ = checkpoint_lib.restore_on_host(workdir)
  counts = np.asarray(state['loss_state']['lt_count'])
  assert counts.sum() > 0 and counts[0] == 0  # t in [1, T] was recorded.


# ------------------------------------------- spatial conditions (GPT) ---
def _spatial_config(tokenizer_dir, steps=3, image='downsampled'):
  """A tiny GPT conditioned on the tokens of a derived condition image."""
  config = tiny.generator_config(tokenizer_dir, 'gpt', steps=steps)
  config.model.condition = 'tokens'
  config.model.cond_vocab_size = 32
  config.model.cond_length = 64
  config.condition.image = image
  config.condition.factor = 4
  config.tokens.num_train_examples = 16
  return config


def test_condition_images_match_numpy_references():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 8, 12, 3)).astype(np.float32)
  # Average-pool by 4, then nearest-upsample back.
  pooled = images.reshape(2, 2, 4, 3, 4, 3).mean(axis=(2, 4))
  expected = np.repeat(np.repeat(pooled, 4, axis=1), 4, axis=2)
  np.testing.assert_allclose(spatial_conditions.downsampled(images, 4),
                             expected, atol=1e-6)
  luma = images @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(spatial_conditions.grayscale(images),
                             np.repeat(luma[..., None], 3, -1), atol=1e-6)
  with pytest.raises(ValueError, match='not divisible by factor 5'):
    spatial_conditions.downsampled(images, 5)


@pytest.fixture(scope='module')
def spatial_shards(tokenizer_dir, tmp_path_factory):
  """Shards of a super-resolution GPT: 'tokens' and 'cond_tokens'."""
  workdir = str(tmp_path_factory.mktemp('spatial'))
  summary = pretokenize.tokenize(_spatial_config(tokenizer_dir), workdir,
                                 devices=_devices())
  return workdir, summary


@pytest.mark.usefixtures('one_load_per_run')
def test_spatial_gpt_trains_on_shards_and_on_the_fly_alike_and_samples(
    tokenizer_dir, spatial_shards, tmp_path):
  _, summary = spatial_shards
  arrays, metadata = token_shards.load_split(summary['tokens_dir'], 'eval')
  assert metadata['condition'] == {'image': 'downsampled', 'factor': 4}
  # The shards' condition tokens are the tokenizer's codes of the
  # downsampled eval images.
  config = _spatial_config(tokenizer_dir)
  tok = trained_tokenizer.load(tokenizer_dir)
  source = data_lib.build(config.data, split='eval', global_batch_size=8)
  images = np.concatenate([b['image'][b['mask']] for b in source.batches()])
  np.testing.assert_array_equal(
      arrays['cond_tokens'],
      compile_options.encode(tok, spatial_conditions.downsampled(images, 4)))
  # Shards: train, then eval (its picture: samples on eval conditions).
  workdir = str(tmp_path / 'shards')
  shutil.copytree(summary['tokens_dir'], os.path.join(workdir, 'tokens'))
  result = loop.train_and_evaluate(config, workdir, devices=_devices())
  assert np.isfinite(result['loss']) and 0 <= result['accuracy'] <= 1
  assert (os.path.abspath(workdir), 'tokenizer.step',
          1) in _pins_in(tokenizer_dir)
  # A reading run never moves the training run's pin, even under a changed
  # config naming another tokenizer step (here one the run lacks).
  other = copy.deepcopy(config)
  other.tokenizer.step = 7
  with pytest.raises(CheckpointError, match='no checkpoint at step 7'):
    loop.evaluate_checkpoint(other, workdir, devices=_devices(),
                             allow_config_change=True)
  assert (os.path.abspath(workdir), 'tokenizer.step',
          1) in _pins_in(tokenizer_dir)
  grid, = glob.glob(os.path.join(workdir, 'images', 'eval_samples_*.png'))
  assert np.asarray(Image.open(grid)).shape == (38, 74, 3)
  # --mode=sample draws its conditions the same way (sample_conditions).
  task = generator.build(experiment_config.validate(config, 2), workdir)
  n = len(arrays['cond_tokens'])  # Cycled through.
  np.testing.assert_array_equal(
      task.sample_conditions(n - 2, 4),
      arrays['cond_tokens'][[n - 2, n - 1, 0, 1]].reshape(4, 64))

  # On the fly: train steps, and the eval loss of the shards' tokens.
  config.tokens.source = 'on_the_fly'
  fly = experiment.Experiment(config, str(tmp_path / 'fly'), _devices())
  state, _ = fly.initial_state()
  batches = fly.train_data.batches()
  with retrace.traced_once():
    for _ in range(2):
      state, metrics = fly.train_step(state, fly.global_batch(next(batches)))
  assert np.isfinite(float(metrics['loss']))
  np.testing.assert_array_equal(fly.task.sample_conditions(0, 4),
                                arrays['cond_tokens'][:4].reshape(4, 64))
  shard_batch = {
      'tokens': arrays['tokens'][:8],
      'cond_tokens': arrays['cond_tokens'][:8],
      'mask': np.ones(8, bool)
  }
  from_shards, _ = jax.jit(fly.task.eval_step)(state, shard_batch, None,
                                               jax.random.fold_in(
                                                   jax.random.key(0), 0))
  on_the_fly, _ = fly.eval_step(state,
                                fly.global_batch(next(fly.eval_data.batches())))
  np.testing.assert_allclose(on_the_fly['sums']['loss'],
                             from_shards['sums']['loss'], rtol=1e-6)


def test_the_spatial_condition_reaches_the_gpt(tokenizer_dir):
  config = experiment_config.validate(_spatial_config(tokenizer_dir), 2)
  task = generator.build(config)
  # Through the task: cond [B, cond_length] -> the GPT's logits.
  state = jax.jit(task.init)(jax.random.key(0), None)
  tokens = np.zeros((2, 8, 8), np.int32)
  cond = np.stack([np.zeros(64, np.int32), np.arange(64) % 32])
  logits = jax.jit(
      lambda p, t, c: task.model.apply({'params': p}, t.reshape(2, 64), c))(
          state.params['model'], tokens, cond)
  assert np.abs(logits[0] - logits[1]).max() > 1e-4


@pytest.mark.parametrize('key, value, message', [
    ('model.cond_vocab_size', 64,
     'model.cond_vocab_size: 64, but the condition tokens .* 32 codes'),
    ('model.cond_length', 16, 'model.cond_length: 16, but .* 64 tokens'),
    ('condition.image', 'none', "condition.image: 'none', but model.condition"),
    ('condition.factor', 3, 'condition.factor: 3 must be > 0 and divide'),
])
def test_a_spatial_condition_that_does_not_fit_is_a_config_error(
    tokenizer_dir, tmp_path, key, value, message):
  config = _spatial_config(tokenizer_dir)
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    experiment.Experiment(config, str(tmp_path), _devices())


@pytest.mark.usefixtures('one_load_per_run')
def test_shards_of_another_condition_are_refused(tokenizer_dir, spatial_shards,
                                                 tmp_path):
  _, summary = spatial_shards
  shutil.copytree(summary['tokens_dir'], str(tmp_path / 'tokens'))
  config = _spatial_config(tokenizer_dir, image='grayscale')
  with pytest.raises(ConfigError, match='tokens.dir: .* condition'):
    experiment.Experiment(config, str(tmp_path), _devices())
  config.tokens.dir = str(tmp_path / 'tokens')
  with pytest.raises(ConfigError, match='tokens.dir: .* condition'):
    pretokenize.tokenize(config, str(tmp_path), devices=_devices())


@pytest.fixture(scope='module')
def cond_tokenizer_dir(tmp_path_factory):
  """A second tokenizer run with a codebook of its own (16 codes) for the
  condition images: taming's cond stage."""
  config = tiny.tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  config.model.quantizer.codebook_size = 16
  return tiny.initial_run(config, str(tmp_path_factory.mktemp('cond_tok')),
                          _devices())


@pytest.mark.usefixtures('one_load_per_run')
def test_condition_tokens_come_from_the_condition_tokenizer(
    tokenizer_dir, cond_tokenizer_dir, spatial_shards, tmp_path):
  config = _spatial_config(tokenizer_dir)
  config.condition.tokenizer = cond_tokenizer_dir
  config.model.cond_vocab_size = 16
  workdir = str(tmp_path / 'run')
  summary = pretokenize.tokenize(config, workdir, devices=_devices())
  arrays, metadata = token_shards.load_split(summary['tokens_dir'], 'eval')
  cond_tok = trained_tokenizer.load(cond_tokenizer_dir)
  assert metadata['condition'] == {
      'image': 'downsampled',
      'factor': 4,
      'tokenizer': {
          'workdir': os.path.abspath(cond_tokenizer_dir),
          'step': 1
      }
  }
  source = data_lib.build(config.data, split='eval', global_batch_size=8)
  images = np.concatenate([b['image'][b['mask']] for b in source.batches()])
  conditions = spatial_conditions.downsampled(images, 4)
  want = np.asarray(compile_options.encode(cond_tok, conditions))
  np.testing.assert_array_equal(arrays['cond_tokens'], want)
  # The image tokens are still the generator's tokenizer's.
  same, _ = token_shards.load_split(spatial_shards[1]['tokens_dir'], 'eval')
  np.testing.assert_array_equal(arrays['tokens'], same['tokens'])
  # On the fly (train steps share cond_tokens_of): the same tokens.
  config.tokens.source = 'on_the_fly'
  fly = experiment.Experiment(config, str(tmp_path / 'fly'), _devices())
  assert set(
      fly.task.read_for_life()) == {'tokenizer.workdir', 'condition.tokenizer'}
  np.testing.assert_array_equal(fly.task.sample_conditions(0, 4),
                                want[:4].reshape(4, 64))

  # Shards of the same-tokenizer condition are refused, and a vocabulary
  # that does not fit names the condition tokenizer.
  config.tokens.source = 'shards'
  config.tokens.dir = spatial_shards[1]['tokens_dir']
  with pytest.raises(ConfigError, match='tokens.dir: .* condition'):
    experiment.Experiment(config, str(tmp_path / 'other'), _devices())
  config.tokens.dir = ''
  config.model.cond_vocab_size = 32
  with pytest.raises(
      ConfigError, match=r'model.cond_vocab_size: 32, but the condition tokens'
      r' of the tokenizer in .*cond_tok.* have 16 codes'):
    experiment.Experiment(config, workdir, _devices())


def test_a_condition_tokenizer_needs_spatial_conditioning(
    tokenizer_dir, cond_tokenizer_dir, tmp_path):
  config = tiny.generator_config(tokenizer_dir, 'gpt')
  config.condition.tokenizer = cond_tokenizer_dir
  with pytest.raises(ConfigError,
                     match=r"condition.tokenizer: .*model.condition 'tokens'"):
    experiment_config.validate(config, 2)
  # A directory that is no tokenizer run is named by its key.
  config = _spatial_config(tokenizer_dir)
  config.condition.tokenizer = str(tmp_path / 'nothing')
  with pytest.raises(
      CheckpointError, match=r'config.json does not exist: condition.tokenizer '
      'must be the --workdir of a trained tokenizer run'):
    experiment.Experiment(config, str(tmp_path / 'run'), _devices())
