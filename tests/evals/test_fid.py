"""Streamed FID statistics, the Fréchet distance (against pytorch-fid's
values in tests/goldens/inception.npz) and the streamed Inception Score
(against a transcription of the original split-based code)."""

import os

import numpy as np
import pytest

from tests import paths
from vqlab.evals import fid

GOLDENS = str(paths.GOLDENS)


def _features(seed=0, n=103, dim=16):
  rng = np.random.default_rng(seed)
  mix = rng.standard_normal((dim, dim))
  return rng.standard_normal((n, dim)) @ mix + rng.uniform(0, 3, dim)


def _streamed(features, sizes):
  stats, start = fid.FeatureStatistics(), 0
  for size in sizes:
    stats.update(features[start:start + size].astype(np.float32) if size ==
                 1 else features[start:start + size])
    start += size
  assert start == len(features)
  return stats


def test_streamed_statistics_equal_numpy():
  features = _features()
  features[0] = features[0].astype(np.float32)  # One chunk arrives as f32.
  stats = _streamed(features, [1, 7, 30, 65])
  assert stats.num_examples == 103 and stats.dim == 16
  np.testing.assert_allclose(stats.mean(), features.mean(0), rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(stats.covariance(), np.cov(features, rowvar=False),
                             rtol=1e-10, atol=1e-12)
  merged = _streamed(features[:40],
                     [40]).merge(_streamed(features[40:], [13, 50]))
  np.testing.assert_allclose(merged.covariance(), stats.covariance(),
                             rtol=1e-10, atol=1e-12)


def test_statistics_reject_bad_features():
  stats = fid.FeatureStatistics()
  with pytest.raises(ValueError, match='no features yet'):
    stats.mean()
  with pytest.raises(ValueError, match=r'\[B, D\]'):
    stats.update(np.zeros(4))
  stats.update(np.zeros((1, 4)))
  with pytest.raises(ValueError, match='D = 5'):
    stats.update(np.zeros((2, 5)))
  with pytest.raises(ValueError, match='>= 2 examples'):
    stats.covariance()


def test_save_load_round_trip(tmp_path):
  stats = _streamed(_features(), [50, 53])
  path = tmp_path / 'stats.npz'
  stats.save(path)
  mu, sigma = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, stats.mean())
  np.testing.assert_array_equal(sigma, stats.covariance())
  with np.load(path) as f:
    assert int(f['num_examples']) == 103
  # What they were computed from, read back; none from a file cut short.
  assert fid.statistics_source(path) is None
  stats.save(path, source='inception on photos')
  assert fid.statistics_source(path) == 'inception on photos'
  path.write_bytes(path.read_bytes()[:100])
  assert fid.statistics_source(path) is None
  # pytorch-fid --save-stats / ADM reference batches: extra keys are fine.
  adm = tmp_path / 'VIRTUAL_ref.npz'
  np.savez_compressed(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu,
                      sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
  np.testing.assert_array_equal(fid.load_statistics(adm)[1], sigma)


def test_bad_statistics_files_are_named(tmp_path):
  no_sigma = tmp_path / 'no_sigma.npz'
  np.savez(no_sigma, mu=np.zeros(3), features=np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r'no_sigma\.npz: not FID statistics: '
                     'no sigma'):
    fid.load_statistics(no_sigma)
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match=r'garbage\.npz: cannot read'):
    fid.load_statistics(garbage)
  array = tmp_path / 'array.npy'
  np.save(array, np.zeros(3))
  with pytest.raises(ValueError, match=r'array\.npy: not FID statistics'):
    fid.load_statistics(array)
  shapes = tmp_path / 'shapes.npz'
  np.savez(shapes, mu=np.zeros(3), sigma=np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r'shapes\.npz: .*\[D, D\]'):
    fid.load_statistics(shapes)


@pytest.mark.parametrize('pair', ['ab', 'ac', 'bc'])
def test_frechet_distance_matches_pytorch_fid(pair):
  """c has a nearly singular covariance (rank 8 + 1e-6 noise, D = 64)."""
  with np.load(os.path.join(GOLDENS, 'inception.npz')) as g:
    first, second = ((g[f'fd_{k}_mu'], g[f'fd_{k}_sigma']) for k in pair)
    want = float(g[f'fd_{pair}'])
  got = fid.frechet_distance(*first, *second)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Symmetric (an FID against reference statistics of the same images is
  # the rFID: tests/train/tasks/test_tokenizer_eval.py).
  np.testing.assert_allclose(fid.frechet_distance(*second, *first), got,
                             rtol=1e-6)
  assert abs(fid.frechet_distance(*first, *first)) < 1e-6 * np.trace(first[1])


def test_frechet_distance_of_singular_statistics_is_exact():
  """Fewer examples than dimensions: rank-deficient covariances. Compare with
  the closed form for sigma2 = c^2 sigma1: Tr sqrt(sigma1 sigma2) = c Tr sigma1."""
  features = _features(n=6)
  mu, sigma = features.mean(0), np.cov(features, rowvar=False)
  assert np.linalg.matrix_rank(sigma) < sigma.shape[0]
  got = fid.frechet_distance(mu, sigma, mu + 1, 4 * sigma)
  want = mu.shape[0] + (1 + 4 - 2 * 2) * np.trace(sigma)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _original_inception_score(logits, splits, interleaved=False):
  """The original (improved-GAN) code on all predictions in memory."""
  preds = np.exp(logits - logits.max(1, keepdims=True))
  preds /= preds.sum(1, keepdims=True)
  n, scores = preds.shape[0], []
  for i in range(splits):
    part = (preds[i::splits] if interleaved else preds[(i * n //
                                                        splits):((i + 1) * n //
                                                                 splits), :])
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize('known', [True, False])
def test_streamed_inception_score_equals_original(known):
  rng = np.random.default_rng(1)
  logits = 3 * rng.standard_normal((103, 50))
  score = fid.InceptionScore(10, num_examples=103 if known else None)
  start = 0
  for size in (1, 9, 40, 0, 53):
    score.update(logits[start:start + size])
    start += size
  want = _original_inception_score(logits, 10, interleaved=not known)
  np.testing.assert_allclose(score.result(), want, rtol=1e-10)


def test_inception_score_limits_and_errors():
  uniform = fid.InceptionScore(2)
  uniform.update(np.zeros((4, 7)))
  np.testing.assert_allclose(uniform.result(), (1.0, 0.0), atol=1e-12)
  confident = fid.InceptionScore(1)
  confident.update(100 * np.eye(7))  # Sure of 7 different classes: IS = 7.
  np.testing.assert_allclose(confident.result()[0], 7.0, rtol=1e-6)
  declared = fid.InceptionScore(2, num_examples=4)
  declared.update(np.zeros((3, 7)))
  with pytest.raises(ValueError, match='fed 3 examples'):
    declared.result()
  with pytest.raises(ValueError, match='more than num_examples = 4'):
    declared.update(np.zeros((2, 7)))
  too_few = fid.InceptionScore(10)
  too_few.update(np.zeros((5, 7)))
  with pytest.raises(ValueError, match='5 examples for 10 splits'):
    too_few.result()


def test_frechet_distance_of_non_finite_statistics_is_nan():
  """Features of a NaN image (a diverged model): NaN, as its PSNR, where the
  eigendecomposition raised 'did not converge' after the whole eval."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(20, 4))
  mu, sigma = features.mean(0), np.cov(features, rowvar=False)
  features[3] = np.nan
  bad_mu, bad_sigma = features.mean(0), np.cov(features, rowvar=False)
  assert np.isnan(fid.frechet_distance(mu, sigma, bad_mu, bad_sigma))
  assert np.isnan(fid.frechet_distance(bad_mu, bad_sigma, mu, sigma))
  assert np.isfinite(fid.frechet_distance(mu, sigma, mu + 1, sigma))
