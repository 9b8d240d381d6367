"""VQ against a brute-force float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab import quantizers


def _build(codebook_size=32, dim=4, beta=0.25):
  config = quantizers.default_config('vq')
  config.codebook_size, config.embedding_dim, config.beta = codebook_size, dim, beta
  return quantizers.build(config)


def _reference(z, codebook, beta):
  z, codebook = np.float64(z), np.float64(codebook)
  flat = z.reshape(-1, z.shape[-1])
  dist = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1)  # Brute force.
  idx = dist.argmin(-1)
  codes = codebook[idx].reshape(z.shape)
  mse = ((z - codes) ** 2).mean()
  counts = np.bincount(idx, minlength=len(codebook))
  p = counts / counts.sum()
  perplexity = np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())
  return idx.reshape(z.shape[:-1]), codes, mse + beta * mse, counts, perplexity


def test_matches_brute_force_reference():
  q = _build(beta=0.3)
  z = jax.random.normal(jax.random.key(1), (2, 5, 6, 4)) * 0.05
  variables = q.init(jax.random.key(0), z)
  out = q.apply(variables, z)
  idx, codes, loss, counts, perplexity = _reference(
      z, variables['params']['codebook'], 0.3)
  np.testing.assert_array_equal(out.indices, idx)
  assert out.indices.dtype == jnp.int32 and out.indices.shape == (2, 5, 6)
  np.testing.assert_allclose(out.quantized, codes, atol=1e-6)
  np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(out.metrics['usage'], (counts > 0).mean())
  np.testing.assert_allclose(out.metrics['perplexity'], perplexity, rtol=1e-5)


def test_loss_terms_have_the_right_gradients():
  """Codebook term moves only codes; beta * commitment moves only z."""
  q = _build(beta=0.25)
  z = jax.random.normal(jax.random.key(2), (3, 4)) * 0.05
  variables = q.init(jax.random.key(0), z)
  codebook = variables['params']['codebook']
  idx, codes, *_ = _reference(z, codebook, 0.25)
  loss_fn = lambda v, z: q.apply(v, z).loss
  g_vars, g_z = jax.grad(loss_fn, argnums=(0, 1))(variables, z)
  n = z.size
  # d/dz [beta * mean((z - sg(e))^2)] = 2 beta (z - e) / n.
  np.testing.assert_allclose(g_z, 2 * 0.25 * (z - codes) / n, atol=1e-6)
  expected = np.zeros_like(codebook)
  np.add.at(expected, idx, 2 * (codes - np.asarray(z)) / n)
  np.testing.assert_allclose(g_vars['params']['codebook'], expected, atol=1e-6)


def test_straight_through_gradient_is_identity():
  q = _build()
  z = jax.random.normal(jax.random.key(3), (2, 3, 4))
  variables = q.init(jax.random.key(0), z)
  cotangent = jax.random.normal(jax.random.key(4), z.shape)
  _, pullback = jax.vjp(lambda z: q.apply(variables, z).quantized, z)
  np.testing.assert_allclose(pullback(cotangent)[0], cotangent, atol=1e-6)


def test_index_code_round_trip():
  q = _build()
  z = jax.random.normal(jax.random.key(5), (4, 4)) * 0.05
  variables = q.init(jax.random.key(0), z)
  out = q.apply(variables, z)
  codes = q.apply(variables, out.indices, method=q.indices_to_codes)
  np.testing.assert_allclose(codes, out.quantized, atol=1e-6)
  again = q.apply(variables, codes)
  np.testing.assert_array_equal(again.indices, out.indices)


def test_rejects_bad_inputs():
  q = _build(dim=4)
  variables = q.init(jax.random.key(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r'shape \[\.\.\., 4\]'):
    q.apply(variables, jnp.zeros((2, 3)))
  with pytest.raises(TypeError, match='floating'):
    q.apply(variables, jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match='out of range'):
    q.apply(variables, jnp.array([0, 32]), method=q.indices_to_codes)
  with pytest.raises(TypeError, match='integers'):
    q.apply(variables, jnp.array([0.0]), method=q.indices_to_codes)
