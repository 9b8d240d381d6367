"""The probabilistic contrastive loss against a direct numpy transcription."""

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.losses import contrastive


def _pcl_numpy(y, z, w, t, eps):
  """Paper's formula, one image, float64, loops over i and j."""
  y = y / np.linalg.norm(y, axis=-1, keepdims=True)
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  w = (w + eps) / np.sum(w + eps)
  length = len(y)
  total = 0.0
  for i in range(length):
    pos = w[i] * np.exp(y[i] @ z[i] / t)
    neg = sum(np.exp(y[i] @ z[j] / t) for j in range(length) if j != i)
    total += -np.log(pos / (pos + neg / length))
  return total / length


def test_pcl_equals_formula_on_all_patches():
  rng = np.random.default_rng(0)
  real = {
      'relu1_2': rng.standard_normal((2, 4, 4, 5)),
      'relu2_2': rng.standard_normal((2, 2, 2, 6))
  }
  rec = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in real.items()}
  token_w = rng.uniform(0, 1, (2, 2, 2)) * (rng.uniform(size=(2, 2, 2)) > 0.3)
  got = contrastive.probabilistic_contrastive_loss(
      {
          k: jnp.asarray(v, jnp.float32) for k, v in real.items()
      }, {
          k: jnp.asarray(v, jnp.float32) for k, v in rec.items()
      }, jnp.asarray(token_w, jnp.float32), jax.random.key(0), temperature=0.5,
      num_patches=0, epsilon=1e-3)
  want = []
  for name, (h, w_) in (('relu1_2', (4, 4)), ('relu2_2', (2, 2))):
    # Each feature position takes the weight of the token under it.
    rows = np.arange(h) * 2 // h
    cols = np.arange(w_) * 2 // w_
    grid = token_w[:, rows][:, :, cols].reshape(2, -1)
    want.append(
        np.mean([
            _pcl_numpy(real[name][b].reshape(-1, real[name].shape[-1]),
                       rec[name][b].reshape(-1, rec[name].shape[-1]), grid[b],
                       0.5, 1e-3) for b in range(2)
        ]))
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def test_pcl_sampled_patches_and_coarse_grid():
  rng = np.random.default_rng(1)
  real = rng.standard_normal((1, 8, 8, 3))
  rec = rng.standard_normal((1, 8, 8, 3))
  token_w = rng.uniform(0, 1, (1, 16, 16))  # Finer than the features.
  key = jax.random.key(3)
  got = contrastive.probabilistic_contrastive_loss(
      {'a': jnp.asarray(real, jnp.float32)},
      {'a': jnp.asarray(rec, jnp.float32)}, jnp.asarray(token_w, jnp.float32),
      key, temperature=0.07, num_patches=10, epsilon=1e-6)
  idx = np.asarray(
      contrastive.sample_patch_indices(jax.random.split(key, 1)[0], 64, 10))
  assert len(set(idx.tolist())) == 10
  grid = token_w.reshape(1, 8, 2, 8, 2).mean(axis=(2, 4)).reshape(-1)
  want = _pcl_numpy(
      real.reshape(64, 3)[idx],
      rec.reshape(64, 3)[idx], grid[idx], 0.07, 1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_pcl_zero_weights_are_finite_and_pull_positives():
  """w = 0 everywhere (no position sampled) is finite; the gradient pulls each
  reconstructed patch toward its own original patch."""
  rng = np.random.default_rng(2)
  real = jnp.asarray(rng.standard_normal((1, 4, 4, 8)), jnp.float32)
  rec = jnp.asarray(rng.standard_normal((1, 4, 4, 8)), jnp.float32)
  loss = lambda r: contrastive.probabilistic_contrastive_loss(
      {'a': real}, {'a': r}, jnp.zeros(
          (1, 4, 4)), jax.random.key(0), num_patches=0)
  value, grad = jax.value_and_grad(loss)(rec)
  assert np.isfinite(value)
  assert float(loss(rec - 0.1 * grad)) < float(value)
  assert float(loss(real)) < float(value)
