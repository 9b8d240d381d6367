"""sample.labels: class-conditional samples take the classes in turn
('cycle') or the labels of random training examples ('train', the training
set's class mix: MAGVIT's UCF-101 FVD protocol)."""

import os
import types

import numpy as np
import pytest

from configs.maskgit import tiny_cpu as maskgit_tiny
from vqlab.data import token_shards
from vqlab.errors import ConfigError
from vqlab.train import experiment_config
from vqlab.train.tasks import generator

# Unbalanced on purpose: a draw that ignored the data (e.g. uniform over the
# classes) would give half zeros, not four fifths.
LABELS = np.array([0, 0, 0, 0, 1], np.int32)


def _write_train_shards(directory, labels=LABELS):
  """A complete train split of one shard (tokens [n, 2], 'label' [n] unless
  labels is None), its rows stored in reverse stream order."""
  n = len(LABELS)
  arrays = {
      token_shards.TOKENS: np.zeros((n, 2), np.int32),
      token_shards.POSITION: np.arange(n)[::-1].astype(np.int64)
  }
  if labels is not None:
    arrays['label'] = labels[::-1]
  os.makedirs(os.path.join(directory, 'train'))
  token_shards.write_shard(token_shards.shard_path(directory, 'train', 0, 0),
                           arrays)
  token_shards.write_metadata(
      directory, {
          'format': token_shards.FORMAT_VERSION,
          'splits': {
              'train': {
                  'num_examples': n,
                  'num_files': 1,
                  'complete': True
              }
          }
      })


def _config(labels='train', num_classes=2):
  config = maskgit_tiny.get_config()
  config.model.num_classes = num_classes
  config.sample.labels = labels
  return experiment_config.validate(config, 1)


def _task(config, tokens_directory):
  """The task without a trained tokenizer (sampling conditions need none)."""
  return generator.GeneratorTask(config,
                                 tokenizer=types.SimpleNamespace(variables={}),
                                 token_shape=(4, 4),
                                 tokens_directory=tokens_directory)


def _sampled_labels(task, num_samples, batch_size):
  """The labels --mode=sample conditions its batches on."""
  return np.concatenate([
      task.sample_conditions(start, batch_size)
      for start in range(0, num_samples, batch_size)
  ])[:num_samples]


def test_train_labels_follow_the_training_class_mix(tmp_path):
  directory = str(tmp_path / 'tokens')
  _write_train_shards(directory)
  config = _config()
  config.sample.seed = 3
  task = _task(config, directory)
  np.testing.assert_array_equal(task.train_labels(), LABELS)  # Stream order.
  got = _sampled_labels(task, 2000, 16)
  want = [
      LABELS[np.random.default_rng((3, i)).integers(len(LABELS))]
      for i in range(2000)
  ]
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32
  assert abs(np.mean(got == 0) - 0.8) < 0.03
  # Sample i's label is its own draw: any batch size gives the same labels.
  np.testing.assert_array_equal(_sampled_labels(task, 2000, 7), got)
  config.sample.seed = 4
  assert (_sampled_labels(_task(config, directory), 2000, 16) != got).any()


def test_cycle_takes_the_classes_in_turn(tmp_path):
  task = _task(_config('cycle', num_classes=3), str(tmp_path / 'none'))
  np.testing.assert_array_equal(task.sample_conditions(2, 5), [2, 0, 1, 2, 0])


def test_train_labels_without_labels_are_a_config_error(tmp_path):
  directory = str(tmp_path / 'tokens')
  _write_train_shards(directory, labels=None)
  task = _task(_config(), directory)
  with pytest.raises(ConfigError,
                     match=r"^sample\.labels: 'train', but .* no labels"):
    task.sample_conditions(0, 4)


@pytest.mark.parametrize('key, value, message', [
    ('sample.labels', 'random', r"must be one of \('cycle', 'train'\)"),
    ('tokens.source', 'on_the_fly', "tokens.source is 'on_the_fly'"),
    ('model.num_classes', 0, 'an unconditional maskgit ignores it'),
])
def test_train_labels_where_there_are_none_are_refused_by_name(
    key, value, message):
  config = maskgit_tiny.get_config()
  config.model.num_classes = 2
  config.sample.labels = 'train'
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=rf'^sample\.labels: .*{message}'):
    experiment_config.validate(config, 1)
