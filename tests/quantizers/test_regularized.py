"""Regularized VQ (vqlab/quantizers/regularized.py) against float64 numpy:
values and gradients of the relaxations, the loss terms, the mask ratio and
sampling frequencies."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.compile_options import FAST_COMPILE
from tests.quantizers import reference
from vqlab.quantizers import base
from vqlab.quantizers import regularized


def _apply(q, train, mutable=False):

  def fn(variables, z, key):
    return q.apply(variables, z, train=train, rngs={'quantizer': key},
                   mutable=mutable)

  return jax.jit(fn)


def _np_regularized(z, codebook, noise, mask, tau, tau_g, cot):
  """Forward values and the relaxation's gradients w.r.t. z and codebook."""
  z, e = np.float64(z), np.float64(codebook)
  diff = z[:, None, :] - e[None]  # [M, N, d]
  logits = -(diff**2).sum(-1) / tau
  argmax = logits.argmax(-1)
  sample = (logits + noise).argmax(-1)
  indices = np.where(mask, sample, argmax)
  soft = np.where(mask[:, None], reference.softmax((logits + noise) / tau_g),
                  reference.softmax(logits))
  grad_soft = np.float64(cot) @ e.T
  g_logits = (reference.softmax_vjp(soft, grad_soft) /
              np.where(mask, tau_g, 1.0)[:, None])
  g_z = (g_logits[..., None] * (-2 * diff / tau)).sum(1)
  g_e = (g_logits[..., None] * (2 * diff / tau)).sum(0)
  np.add.at(g_e, indices, np.float64(cot))
  weights = ((e[sample] - e[argmax])**2).sum(-1)
  return dict(indices=indices, argmax=argmax, sample=sample,
              quantized=e[indices], probs=reference.softmax(logits),
              pcl_weights=weights, g_z=g_z, g_e=g_e)


def test_regularized_quantize_values_and_relaxation_gradients():
  """Softmax gradient outside the mask, Gumbel-softmax inside it."""
  rng = np.random.default_rng(1)
  z = rng.normal(size=(24, 3)).astype(np.float32)
  codebook = rng.normal(size=(5, 3)).astype(np.float32)
  noise = rng.gumbel(size=(24, 5)).astype(np.float32)
  mask = rng.random(24) < 0.5
  cot = rng.normal(size=(24, 3)).astype(np.float32)
  tau, tau_g = 1.5, 0.6
  fn = lambda z, e: regularized.regularized_quantize(z, e, noise, mask, tau,
                                                     tau_g)

  @jax.jit
  def forward_and_grads(z, e):
    full, pullback = jax.vjp(fn, z, e)
    cotangents = jax.tree.map(jnp.zeros_like, full)
    cotangents = {
        k: (np.zeros(v.shape, jax.dtypes.float0) if v.dtype == jnp.int32 else v)
        for k, v in cotangents.items()
    }
    return full, pullback({**cotangents, 'quantized': cot})

  full, (g_z, g_e) = forward_and_grads(z, codebook)
  out = full['quantized']
  ref = _np_regularized(z, codebook, noise, mask, tau, tau_g, cot)
  assert (ref['sample'] != ref['argmax'])[mask].any()  # Sampling matters here.
  for key in ('indices', 'argmax', 'sample'):
    np.testing.assert_array_equal(full[key], ref[key], err_msg=key)
  np.testing.assert_array_equal(out, codebook[ref['indices']])
  np.testing.assert_allclose(full['probs'], ref['probs'], atol=1e-6)
  np.testing.assert_allclose(full['pcl_weights'], ref['pcl_weights'], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(g_z, ref['g_z'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_e, ref['g_e'], rtol=1e-4, atol=1e-5)


def test_regularized_loss_terms_match_numpy():
  q = regularized.RegularizedQuantizer(codebook_size=8, embedding_dim=3,
                                       temperature=0.5, kl_weight=0.2,
                                       codebook_weight=0.7, beta=0.3)
  z = jax.random.normal(jax.random.key(5), (4, 6, 3)) * 0.5
  variables = {
      'params': {
          'codebook': jax.random.normal(jax.random.key(6), (8, 3)) * 0.5
      }
  }
  e = np.float64(variables['params']['codebook'])
  flat = np.float64(z).reshape(-1, 3)
  logits = -((flat[:, None] - e[None])**2).sum(-1) / 0.5
  kl = reference.kl_to_uniform(reference.softmax(logits).mean(0))
  mse = ((flat - e[logits.argmax(-1)])**2).mean()
  outs = jax.jit(
      lambda v, z, key: {
          train: q.apply(v, z, train=train, rngs={'quantizer': key})
          for train in (False, True)
      })(variables, z, jax.random.key(7))
  for train in (False, True):  # No loss term depends on the random draws.
    out = outs[train]
    np.testing.assert_allclose(out.metrics['kl'], kl, rtol=1e-4)
    np.testing.assert_allclose(out.metrics['codebook_loss'], mse, rtol=1e-5)
    np.testing.assert_allclose(out.loss, 0.2 * kl + 0.7 * mse + 0.3 * mse,
                               rtol=1e-4)
    assert out.extras['pcl_weights'].shape == out.extras['mask'].shape == (4, 6)
    usage, perplexity = reference.usage_and_perplexity(out.indices, 8)
    np.testing.assert_allclose(out.metrics['usage'], usage)
    np.testing.assert_allclose(out.metrics['perplexity'], perplexity, rtol=1e-5)
  # Inference: argmax everywhere, no mask, zero weights.
  out = outs[False]
  np.testing.assert_array_equal(out.indices.reshape(-1), logits.argmax(-1))
  assert float(jnp.abs(out.extras['pcl_weights']).max()) == 0.0
  assert float(out.extras['mask'].max()) == 0.0


def test_codebook_term_moves_codes_and_commitment_moves_z():
  """Without the prior term: d loss / d E = 0.7 * 2 (E[k] - z) / size at the
  argmax codes only, d loss / d z = 0.3 * 2 (z - E[k]) / size."""
  q = regularized.RegularizedQuantizer(codebook_size=8, embedding_dim=3,
                                       kl_weight=0.0, codebook_weight=0.7,
                                       beta=0.3)
  z = jax.random.normal(jax.random.key(5), (4, 6, 3)) * 0.5
  codebook = jax.random.normal(jax.random.key(6), (8, 3)) * 0.5
  loss = lambda e, z: q.apply({'params': {'codebook': e}}, z).loss
  grad_e, grad_z = jax.jit(jax.grad(loss, argnums=(0, 1)))(codebook, z)
  flat, e = np.float64(z).reshape(-1, 3), np.float64(codebook)
  k = ((flat[:, None] - e[None])**2).sum(-1).argmin(-1)
  diff = flat - e[k]
  want_e = np.zeros_like(e)
  np.add.at(want_e, k, -0.7 * 2 * diff / diff.size)
  np.testing.assert_allclose(grad_e, want_e, atol=1e-7)
  np.testing.assert_allclose(
      np.asarray(grad_z).reshape(-1, 3), 0.3 * 2 * diff / diff.size, atol=1e-7)


def test_regularized_loss_terms_have_the_right_gradients():
  """d loss / d (z, E), in training as at inference: the prior term
  kl_weight KL(P_post || uniform) moves both (central differences of the
  float64 reference), the codebook term only E and the commitment term only
  z (at the argmax codes, as in the test above)."""
  kl_weight, codebook_weight, beta, tau = 0.5, 0.7, 0.3, 0.5
  q = regularized.RegularizedQuantizer(codebook_size=8, embedding_dim=3,
                                       temperature=tau, kl_weight=kl_weight,
                                       codebook_weight=codebook_weight,
                                       beta=beta)
  z = jax.random.normal(jax.random.key(5), (4, 6, 3)) * 0.5
  codebook = jax.random.normal(jax.random.key(6), (8, 3)) * 0.5

  def loss(e, z, train):
    variables = {'params': {'codebook': e}}
    return q.apply(variables, z, train=train, rngs={
        'quantizer': jax.random.key(7)
    }).loss

  grads = jax.jit(
      lambda e, z: {
          train: jax.grad(loss, argnums=(0, 1))(e, z, train)
          for train in (False, True)
      }, compiler_options=FAST_COMPILE)(codebook, z)

  flat, e = np.float64(z).reshape(-1, 3), np.float64(codebook)

  def np_kl(flat, e):
    logits = -((flat[:, None] - e[None])**2).sum(-1) / tau
    return kl_weight * reference.kl_to_uniform(
        reference.softmax(logits).mean(0))

  kl_z = reference.numerical_grad(lambda x: np_kl(x, e), flat, eps=1e-6)
  kl_e = reference.numerical_grad(lambda x: np_kl(flat, x), e, eps=1e-6)
  k = ((flat[:, None] - e[None])**2).sum(-1).argmin(-1)
  diff = flat - e[k]
  want_z = kl_z + beta * 2 * diff / diff.size
  want_e = kl_e.copy()
  np.add.at(want_e, k, -codebook_weight * 2 * diff / diff.size)
  # Each term is far above the tolerance (1e-4 of the largest entry).
  assert np.abs(kl_z).max() > 0.05 * np.abs(want_z).max()
  assert np.abs(kl_e).max() > 0.05 * np.abs(want_e).max()
  for train in (False, True):
    g_e, g_z = grads[train]
    reference.assert_grad_close(g_z, want_z, err_msg=f'z {train}')
    reference.assert_grad_close(g_e, want_e, err_msg=f'codebook {train}')


def test_regularized_mask_ratio_and_sampling_frequencies():
  q = regularized.RegularizedQuantizer(codebook_size=6, embedding_dim=2,
                                       mask_ratio=0.4)
  m = 20000
  z = jnp.broadcast_to(jnp.array([0.3, -0.2]), (m, 2))
  codebook = jnp.array([[0.3, -0.1], [0.0, 0.0], [0.8, -0.6], [-0.5, 0.4],
                        [0.5, 0.3], [1.2, 0.9]])
  variables = {'params': {'codebook': codebook}}
  out = _apply(q, train=True)(variables, z, jax.random.key(8))
  mask = np.asarray(out.extras['mask']) > 0
  # Each position is masked with probability 0.4: 6 sigma of Binomial(m, 0.4).
  assert abs(mask.mean() - 0.4) < 6 * np.sqrt(0.24 / m), mask.mean()
  np.testing.assert_allclose(out.metrics['mask_fraction'], mask.mean())
  e = np.float64(codebook)
  probs = reference.softmax(-((np.float64(z[0]) - e)**2).sum(-1))
  best = probs.argmax()
  assert probs.max() < 0.5  # Samples often differ from the argmax.
  indices = np.asarray(out.indices)
  # Argmax outside the mask, samples inside.
  assert (indices[~mask] == best).all()
  reference.assert_follows(indices[mask], probs, 'regularized')
  # PCL weights: ||E[sample] - E[argmax]||^2 (the used code inside the mask).
  np.testing.assert_allclose(out.extras['pcl_weights'][mask],
                             ((e[indices[mask]] - e[best])**2).sum(-1),
                             rtol=1e-5, atol=1e-7)


def test_the_module_relaxes_at_its_gumbel_temperature(monkeypatch):
  """The module's gradients are the Gumbel-softmax's at its
  gumbel_temperature (every position sampled: mask_ratio 1), on the noise
  it draws (given here)."""
  q = regularized.RegularizedQuantizer(codebook_size=5, embedding_dim=3,
                                       temperature=1.5, gumbel_temperature=0.6,
                                       mask_ratio=1.0)
  rng = np.random.default_rng(4)
  z = rng.normal(size=(8, 3)).astype(np.float32)
  cot = rng.normal(size=(8, 3)).astype(np.float32)
  variables = q.init(jax.random.key(0), z)
  noise = rng.gumbel(size=(8, 5)).astype(np.float32)
  monkeypatch.setattr(base, 'gumbel_noise',
                      lambda key, shape: jnp.asarray(noise).reshape(shape))
  quantized = lambda z: q.apply(variables, z, train=True, rngs={
      'quantizer': jax.random.key(5)
  }).quantized
  grad_z = jax.jit(lambda z, cot: jax.vjp(quantized, z)[1](cot)[0],
                   compiler_options=FAST_COMPILE)
  g_z = grad_z(jnp.asarray(z), jnp.asarray(cot))
  ref = _np_regularized(z, variables['params']['codebook'], noise,
                        np.ones(8, bool), 1.5, 0.6, cot)
  np.testing.assert_allclose(g_z, ref['g_z'], rtol=1e-4, atol=1e-5)
