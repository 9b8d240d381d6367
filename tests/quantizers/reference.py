"""Float64 numpy references shared by test_gumbel.py, test_lfq.py and
test_regularized.py."""

import numpy as np
import scipy.stats


def softmax(x, axis=-1):
  """Softmax along `axis` in float64."""
  x = np.float64(x)
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def kl_to_uniform(p):
  """KL(p || uniform) of a probability vector p with no zero entries."""
  return float(np.sum(p * np.log(len(p) * p)))


def usage_and_perplexity(indices, k):
  """(Fraction of the k codes used, exp(entropy of the code frequencies))."""
  counts = np.bincount(np.ravel(indices), minlength=k)
  p = counts[counts > 0] / counts.sum()
  return (counts > 0).mean(), np.exp(-(p * np.log(p)).sum())


def assert_follows(samples, probs, who):
  """Chi-square goodness of fit of integer samples to `probs` (p > 1e-4)."""
  counts = np.bincount(np.ravel(samples), minlength=len(probs))
  expected = probs * counts.sum()
  stat = ((counts - expected)**2 / expected).sum()
  limit = scipy.stats.chi2.ppf(1 - 1e-4, len(probs) - 1)
  assert stat < limit, (who, stat, limit, counts, expected)


def softmax_vjp(soft, grad_soft):
  """d/dx of sum(grad_soft * softmax(x)) at softmax(x) = soft."""
  return soft * (grad_soft - (soft * grad_soft).sum(-1, keepdims=True))


def numerical_grad(f, x, eps):
  """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) of a
  float64 scalar function f, at every entry i of the array x."""
  x = np.array(x, np.float64)
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[i] = eps
    grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
  return grad


def assert_grad_close(got, want, err_msg=''):
  """A float32 gradient equals a float64 one to 1e-4 of its largest entry."""
  want = np.float64(want)
  np.testing.assert_allclose(
      np.asarray(got).reshape(want.shape), want, rtol=1e-4,
      atol=1e-4 * np.abs(want).max(), err_msg=err_msg)
