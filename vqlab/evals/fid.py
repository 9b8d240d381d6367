"""Streamed FID statistics, the Fréchet distance and the Inception Score.

Everything is accumulated on the host in float64 from per-batch sums, so no
feature or prediction is kept: memory is O(D^2) for FID and O(splits x C)
for the Inception Score, whatever the number of examples.
"""

import io
import os
import zipfile

import numpy as np

from vqlab import fileio


class FeatureStatistics:
  """Running count, sum [D] and sum of outer products [D, D] of features.

  `mean()` and `covariance()` equal np.mean(f, 0) and np.cov(f, rowvar=False)
  of all features seen (pytorch-fid's statistics); accumulators of several
  hosts or shards combine with `merge`.
  """

  def __init__(self):
    self.num_examples = 0
    self._sum = None
    self._outer = None

  @property
  def dim(self) -> int | None:
    """D, or None before the first update."""
    return None if self._sum is None else self._sum.shape[0]

  def update(self, features) -> None:
    """Adds features [B, D] (any float array; summed in float64)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
      raise ValueError(f'FeatureStatistics: expected features [B, D], got '
                       f'shape {features.shape}')
    if self._sum is None:
      dim = features.shape[1]
      self._sum = np.zeros(dim, np.float64)
      self._outer = np.zeros((dim, dim), np.float64)
    elif features.shape[1] != self.dim:
      raise ValueError(f'FeatureStatistics: features have D = '
                       f'{features.shape[1]}, earlier ones {self.dim}')
    self.num_examples += features.shape[0]
    self._sum += features.sum(axis=0)
    self._outer += features.T @ features

  def merge(self, other: 'FeatureStatistics') -> 'FeatureStatistics':
    """Adds the examples `other` has seen to this one; returns self."""
    if other._sum is None:
      return self
    if self._sum is None:
      self._sum = np.zeros_like(other._sum)
      self._outer = np.zeros_like(other._outer)
    elif other.dim != self.dim:
      raise ValueError(f'FeatureStatistics.merge: D = {other.dim} vs '
                       f'{self.dim}')
    self.num_examples += other.num_examples
    self._sum += other._sum
    self._outer += other._outer
    return self

  def mean(self) -> np.ndarray:
    """mu [D] float64."""
    if not self.num_examples:
      raise ValueError('FeatureStatistics: no features yet')
    return self._sum / self.num_examples

  def covariance(self) -> np.ndarray:
    """sigma [D, D] float64, unbiased (ddof = 1) like np.cov."""
    n = self.num_examples
    if n < 2:
      raise ValueError(f'FeatureStatistics: a covariance needs >= 2 '
                       f'examples, got {n}')
    mu = self.mean()
    sigma = (self._outer - n * np.outer(mu, mu)) / (n - 1)
    return (sigma + sigma.T) / 2  # Exactly symmetric, as np.cov's is.

  def save(self, path: str | os.PathLike, source: str = '') -> None:
    """Writes an .npz with `mu` [D], `sigma` [D, D] (the format of
    pytorch-fid's --save-stats and of the ADM reference batches),
    `num_examples` and, when given, `source`: what the features were computed
    from (read back by `statistics_source`)."""
    mu, sigma = self.mean(), self.covariance()
    extra = {'source': np.array(source)} if source else {}
    data = _npz_bytes(mu=mu, sigma=sigma,
                      num_examples=np.int64(self.num_examples), **extra)
    # Local or a URL (gs://...); never seen half written.
    fileio.write_atomically(path, lambda f: f.write(data))


def _npz_bytes(**arrays) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _load_npz(path: str | os.PathLike):
  """np.load of a local or URL path, without pickles."""
  return np.load(
      io.BytesIO(fileio.read_bytes(path)) if fileio.is_url(path) else path,
      allow_pickle=False)


def statistics_source(path: str | os.PathLike) -> str | None:
  """The `source` an .npz of statistics was saved with, or None (none saved,
  or not readable as an .npz)."""
  try:
    with _load_npz(path) as f:
      return str(f['source']) if 'source' in f.files else None
  except (OSError, EOFError, ValueError, AttributeError, zipfile.BadZipFile):
    return None


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) float64 from an .npz with keys `mu` and `sigma`
  (FeatureStatistics.save, pytorch-fid --save-stats, ADM reference batches;
  other keys are ignored)."""
  try:
    data = _load_npz(path)
  except FileNotFoundError:
    raise
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f'{path}: cannot read FID statistics (an .npz with mu '
                     f'and sigma): {e}') from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f'{path}: not FID statistics: a single array, not an '
                     '.npz with mu and sigma')
  with data as f:
    missing = [k for k in ('mu', 'sigma') if k not in f.files]
    if missing:
      raise ValueError(f'{path}: not FID statistics: no {" or ".join(missing)}'
                       f' (keys: {", ".join(f.files) or "none"})')
    mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise ValueError(f'{path}: FID statistics need mu [D] and sigma [D, D], '
                     f'got {mu.shape} and {sigma.shape}')
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), float64.

  pytorch-fid's `calculate_frechet_distance` takes scipy's `sqrtm` of the
  (non-symmetric) product. Here Tr sqrt(sigma1 sigma2) is computed as
  Tr sqrt(A) with A = sigma1^(1/2) sigma2 sigma1^(1/2): A is similar to the
  product, so it has the same eigenvalues, and it is symmetric PSD, so two
  symmetric eigendecompositions give the trace: about 5x faster at D = 2048
  and exact for singular covariances (few images), where `sqrtm` is
  inaccurate and pytorch-fid falls back to adding eps * I. Agrees with
  pytorch-fid to ~1e-14 relative on full-rank statistics.

  Args:
    mu1, mu2: means [D].
    sigma1, sigma2: covariances [D, D] (symmetric PSD).

  Returns:
    The distance; NaN where a statistic is not finite (features of a NaN
    image, a diverged model), as PSNR is NaN then: an eval goes on and says
    so, where the eigendecomposition raised after the whole pass.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  sigma1, sigma2 = (
      np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'frechet_distance: shapes differ: mu {mu1.shape} vs '
                     f'{mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}')
  if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
    return float('nan')
  diff = mu1 - mu2
  values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
  similar = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((similar + similar.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2 * trace_sqrt)


class InceptionScore:
  """Streamed Inception Score, exp(E_x KL(p(y|x) || p(y))), over splits.

  Each split k keeps its count n_k, the sum of p(y|x) [C] and the sum of
  sum_y p log p; its KL mean is sum(p log p) / n_k - sum_y m_y log m_y with
  m = sum(p) / n_k (its marginal p(y)). The score is the mean and (ddof 0)
  std over splits of exp(KL mean), as in the original code.

  Split assignment: with `num_examples` given, example i (in feeding order)
  goes to split k where k * N // splits <= i < (k + 1) * N // splits: the
  contiguous chunks of the original code, so the result equals it exactly
  (any N). Without it, example i goes to split i % splits (round robin):
  the same estimator on a different partition.
  """

  def __init__(self, num_splits: int = 10, num_examples: int | None = None):
    if num_splits < 1:
      raise ValueError(f'InceptionScore: num_splits must be >= 1, got '
                       f'{num_splits}')
    if num_examples is not None and num_examples < num_splits:
      raise ValueError(f'InceptionScore: num_examples ({num_examples}) < '
                       f'num_splits ({num_splits})')
    self.num_splits = num_splits
    self.expected_examples = num_examples
    self.num_examples = 0
    self._counts = np.zeros(num_splits, np.int64)
    self._p_sums = None
    self._plogp_sums = np.zeros(num_splits, np.float64)

  def _splits(self, size: int) -> np.ndarray:
    index = self.num_examples + np.arange(size)
    if self.expected_examples is None:
      return index % self.num_splits
    n, s = self.expected_examples, self.num_splits
    if index[-1] >= n:
      raise ValueError(f'InceptionScore: more than num_examples = {n} '
                       'examples fed')
    starts = np.arange(s) * n // s
    return np.searchsorted(starts, index, side='right') - 1

  def update(self, logits) -> None:
    """Adds the logits [B, C] (softmax in float64 on the host)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
      raise ValueError(f'InceptionScore: expected logits [B, C], got shape '
                       f'{logits.shape}')
    if not logits.shape[0]:
      return
    if self._p_sums is None:
      self._p_sums = np.zeros((self.num_splits, logits.shape[1]), np.float64)
    elif logits.shape[1] != self._p_sums.shape[1]:
      raise ValueError(f'InceptionScore: C = {logits.shape[1]}, earlier '
                       f'{self._p_sums.shape[1]}')
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    splits = self._splits(logits.shape[0])
    np.add.at(self._counts, splits, 1)
    np.add.at(self._p_sums, splits, p)
    np.add.at(self._plogp_sums, splits, (p * log_p).sum(axis=1))
    self.num_examples += logits.shape[0]

  def split_scores(self) -> np.ndarray:
    """exp(KL mean) of each split [num_splits]."""
    if self.expected_examples not in (None, self.num_examples):
      raise ValueError(f'InceptionScore: fed {self.num_examples} examples, '
                       f'num_examples = {self.expected_examples}')
    if self._counts.min() == 0:
      raise ValueError(f'InceptionScore: {self.num_examples} examples for '
                       f'{self.num_splits} splits')
    n = self._counts.astype(np.float64)
    marginal = self._p_sums / n[:, None]
    m_log_m = np.where(marginal > 0,
                       marginal * np.log(np.where(marginal > 0, marginal, 1.0)),
                       0.0)
    return np.exp(self._plogp_sums / n - m_log_m.sum(axis=1))

  def result(self) -> tuple[float, float]:
    """(mean, std) of the split scores."""
    scores = self.split_scores()
    return float(scores.mean()), float(scores.std())
