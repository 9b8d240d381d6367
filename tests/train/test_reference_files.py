"""Reference statistics: a given file checked against the network's feature
size, and sampling's cached statistics of the eval split (WORKDIR/
fid_stats.npz) made again when the split's files change."""

import os

import jax
import numpy as np
from PIL import Image
import pytest

from tests import tiny
from vqlab import data
from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.nn import inception
from vqlab.train import frozen as frozen_lib
from vqlab.train import reference_files
from vqlab.train import reference_stats
from vqlab.train import sampling


def _save_statistics(path, size: int) -> str:
  stats = fid.FeatureStatistics()
  stats.update(np.random.default_rng(0).normal(size=(3, size)))
  stats.save(str(path))
  return str(path)


def test_a_reference_of_another_feature_size_is_named(tmp_path):
  """pytorch-fid --dims 768, or FID statistics given as the FVD reference,
  passed at the start and failed in the distance after the whole eval or
  sampling (the steps since the last checkpoint lost)."""
  config = tiny.tokenizer_config()
  config.eval.fid_reference = _save_statistics(tmp_path / 'fid768.npz', 768)
  with pytest.raises(
      ConfigError, match=r'^eval.fid_reference: .*fid768.npz holds statistics '
      r'of 768 features, but inception gives 2048 \(pytorch-fid: --dims 2048'):
    reference_files.load_given(config, 'inception')
  config.eval.fvd_reference = _save_statistics(tmp_path / 'fid.npz', 2048)
  with pytest.raises(
      ConfigError, match='^eval.fvd_reference: .*holds '
      'statistics of 2048 features, but i3d gives 400'):
    reference_files.load_given(config, 'i3d')
  config.eval.fvd_reference = _save_statistics(tmp_path / 'fvd.npz', 400)
  assert reference_files.load_given(config, 'i3d')[0].shape == (400,)


class _MeanColour:
  """Stands in for InceptionV3: an image's mean colour is its features."""

  def __init__(self, input_protocol: str):
    del input_protocol

  def apply(self, variables, images):
    del variables
    return {'pool': images.mean(axis=(1, 2))}


def test_cached_statistics_are_made_again_when_the_eval_files_change(
    tmp_path, monkeypatch):
  """The cache was keyed by the config alone: eval images added to the same
  folder left gFID measured against the old ones."""
  monkeypatch.setattr(frozen_lib, 'load', lambda *args: {'inception': {}})
  monkeypatch.setattr(inception, 'InceptionV3', _MeanColour)
  made = []
  compute = reference_stats.compute_reference_statistics
  monkeypatch.setattr(reference_stats, 'compute_reference_statistics',
                      lambda *a, **k: made.append(1) or compute(*a, **k))
  root = tmp_path / 'images'
  for split, colours in (('train', [(9, 9, 9)]), ('val', [(255, 0, 0),
                                                          (0, 0, 255)])):
    os.makedirs(root / split / 'a')
    for i, colour in enumerate(colours):
      Image.new('RGB', (16, 16), colour).save(root / split / 'a' / f'{i}.png')
  config = tiny.tokenizer_config()
  config.data = data.default_config('image_folder')
  config.data.update(path=str(root), image_size=16)
  config.eval.batch_size = 2
  workdir = str(tmp_path / 'run')
  reference = lambda: sampling._reference(  # pylint: disable=protected-access
      config, workdir, 'inception',
      jax.devices()[:1])[0]

  first = reference()
  np.testing.assert_allclose(first, [0, -1, 0], atol=1e-6)  # Red and blue.
  np.testing.assert_allclose(reference(), first)
  assert len(made) == 1
  Image.new('RGB', (16, 16), (0, 255, 0)).save(root / 'val' / 'a' / '2.png')
  np.testing.assert_allclose(reference(), [-1 / 3] * 3, atol=1e-6)
  assert len(made) == 2
