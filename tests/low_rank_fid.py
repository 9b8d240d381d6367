"""The Frechet distance of Gaussians with low-rank covariances, computed
without vqlab.evals.fid: a check of it that costs no D x D eigensolve.

With sigma_i = B_i B_i^T (B_i [D, k_i], k_i << D), the nonzero eigenvalues of
sigma1 sigma2 are those of (B_1^T B_2)(B_1^T B_2)^T, so Tr sqrt(sigma1 sigma2)
is the sum of the singular values of the k_1 x k_2 matrix B_1^T B_2, and
Tr sigma_i = ||B_i||_F^2. The statistics of a few eval examples are such
Gaussians: at D = 2048 each eigensolve the suite's own way took seconds.
"""

import numpy as np


def statistics(features):
  """(mu [D], B [D, n]) of features [n, D]: B B^T = np.cov(features.T)."""
  x = np.asarray(features, np.float64)
  mu = x.mean(0)
  return mu, (x - mu).T / np.sqrt(len(x) - 1)


def frechet_distance(mu1, b1, mu2, b2) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) for
  sigma_i = b_i b_i^T, in float64."""
  mu1, b1, mu2, b2 = (np.asarray(a, np.float64) for a in (mu1, b1, mu2, b2))
  diff = mu1 - mu2
  trace_sqrt = np.linalg.svd(b1.T @ b2, compute_uv=False).sum()
  return float(diff @ diff + np.sum(b1**2) + np.sum(b2**2) - 2 * trace_sqrt)
