"""Gumbel VQ (vqlab/quantizers/gumbel.py) against float64 numpy: values and
the gradient of the relaxation, the loss, sampling frequencies, the
temperature schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.compile_options import FAST_COMPILE
from tests.quantizers import reference
from vqlab.quantizers import base
from vqlab.quantizers import gumbel


def _init(q, z):
  return jax.jit(functools.partial(q.init, train=False))({
      'params': jax.random.key(0),
      'quantizer': jax.random.key(1)
  }, z)


def _apply(q, train, mutable=False):

  def fn(variables, z, key):
    return q.apply(variables, z, train=train, rngs={'quantizer': key},
                   mutable=mutable)

  return jax.jit(fn)


def test_gumbel_quantize_values_and_relaxation_gradient():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(20, 7)).astype(np.float32)
  codebook = rng.normal(size=(7, 3)).astype(np.float32)
  noise = rng.gumbel(size=(20, 7)).astype(np.float32)
  cot = rng.normal(size=(20, 3)).astype(np.float32)
  tau = 0.7

  @jax.jit
  def fn(logits, codebook):
    (quantized, indices), pullback = jax.vjp(
        lambda x, e: gumbel.gumbel_quantize(x, e, noise, tau), logits, codebook)
    return quantized, indices, *pullback((cot, np.zeros(20, jax.dtypes.float0)))

  quantized, indices, g_logits, g_codebook = fn(logits, codebook)
  idx = np.argmax(np.float64(logits) + noise, -1)
  np.testing.assert_array_equal(indices, idx)
  np.testing.assert_array_equal(quantized, codebook[idx])  # Exact rows.
  soft = reference.softmax((np.float64(logits) + noise) / tau)
  grad_soft = np.float64(cot) @ np.float64(codebook).T
  np.testing.assert_allclose(g_logits,
                             reference.softmax_vjp(soft, grad_soft) / tau,
                             atol=1e-5)
  hard = np.eye(7)[idx]
  np.testing.assert_allclose(g_codebook, hard.T @ cot, atol=1e-5)


def test_gumbel_inference_matches_numpy():
  q = gumbel.GumbelQuantizer(codebook_size=16, embedding_dim=4, kl_weight=0.3)
  z = jax.random.normal(jax.random.key(2), (3, 5, 4))
  variables = _init(q, z)
  out = _apply(q, train=False)(variables, z, jax.random.key(3))
  p = variables['params']
  logits = np.float64(z).reshape(-1, 4) @ np.float64(
      p['to_logits']['kernel']) + np.float64(p['to_logits']['bias'])
  idx = logits.argmax(-1)
  np.testing.assert_array_equal(out.indices.reshape(-1), idx)
  np.testing.assert_allclose(out.quantized.reshape(-1, 4),
                             np.asarray(p['codebook'])[idx], atol=1e-6)
  kl = reference.kl_to_uniform(reference.softmax(logits).mean(0))
  np.testing.assert_allclose(out.metrics['kl'], kl, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(out.loss, 0.3 * kl, rtol=1e-4, atol=1e-7)
  usage, perplexity = reference.usage_and_perplexity(idx, 16)
  np.testing.assert_allclose(out.metrics['usage'], usage)
  np.testing.assert_allclose(out.metrics['perplexity'], perplexity, rtol=1e-5)


def test_gumbel_kl_term_has_the_right_gradients():
  """d loss / d (z, to_logits kernel and bias) of kl_weight KL(mean
  softmax(logits) || uniform) against central differences of the float64
  reference, in training as at inference (the prior term reads the logits
  without the Gumbel noise); the codebook gets none of it."""
  q = gumbel.GumbelQuantizer(codebook_size=8, embedding_dim=3, kl_weight=0.3)
  z = jax.random.normal(jax.random.key(5), (2, 5, 3))
  variables = _init(q, z)

  def loss(params, z, train):
    out, _ = q.apply({
        **variables, 'params': params
    }, z, train=train, rngs={'quantizer': jax.random.key(6)},
                     mutable=[base.STATE])
    return out.loss

  grads = jax.jit(
      lambda p, z: {
          train: jax.grad(loss, argnums=(0, 1))(p, z, train)
          for train in (False, True)
      }, compiler_options=FAST_COMPILE)(variables['params'], z)
  p = variables['params']
  x = np.float64(z).reshape(-1, 3)
  kernel = np.float64(p['to_logits']['kernel'])
  bias = np.float64(p['to_logits']['bias'])
  np_loss = lambda x, kernel, bias: 0.3 * reference.kl_to_uniform(
      reference.softmax(x @ kernel + bias).mean(0))
  want_z = reference.numerical_grad(lambda x: np_loss(x, kernel, bias), x,
                                    eps=1e-6)
  want_kernel = reference.numerical_grad(lambda k: np_loss(x, k, bias), kernel,
                                         eps=1e-6)
  want_bias = reference.numerical_grad(lambda b: np_loss(x, kernel, b), bias,
                                       eps=1e-6)
  for train in (False, True):
    g_params, g_z = grads[train]
    reference.assert_grad_close(g_z, want_z, err_msg=f'z {train}')
    reference.assert_grad_close(g_params['to_logits']['kernel'], want_kernel,
                                err_msg=f'kernel {train}')
    reference.assert_grad_close(g_params['to_logits']['bias'], want_bias,
                                err_msg=f'bias {train}')
    assert float(jnp.abs(g_params['codebook']).max()) == 0.0


def test_gumbel_samples_follow_the_softmax():
  q = gumbel.GumbelQuantizer(codebook_size=6, embedding_dim=4)
  z = jnp.broadcast_to(jnp.array([0.9, -0.4, 1.3, 0.2]), (20000, 4))
  variables = _init(q, z[:1])
  out, _ = _apply(q, train=True, mutable=[base.STATE])(variables, z,
                                                       jax.random.key(4))
  p = variables['params']['to_logits']
  probs = reference.softmax(
      np.float64(z[0]) @ np.float64(p['kernel']) + np.float64(p['bias']))
  assert probs.max() < 0.9  # A real distribution, not a near-argmax.
  reference.assert_follows(out.indices, probs, 'gumbel')


def test_gumbel_temperature_anneals_geometrically_with_train_steps():
  q = gumbel.GumbelQuantizer(codebook_size=4, embedding_dim=2, temperature=2.0,
                             temperature_final=0.125,
                             temperature_anneal_steps=4)
  z = jnp.ones((2, 2))
  variables = jax.tree.map(  # Values do not matter here: no compile needed.
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(functools.partial(q.init, train=False), jax.random.key(0),
                     z))
  step = _apply(q, train=True, mutable=[base.STATE])
  seen = []
  for i in range(6):
    out, state = step(variables, z, jax.random.key(i))
    seen.append(float(out.metrics['temperature']))
    variables = {**variables, **state}
  np.testing.assert_allclose(
      seen, [2.0 * (0.125 / 2.0)**(min(s, 4) / 4) for s in range(6)], rtol=1e-6)
  assert int(variables[base.STATE]['step']) == 6
  # Inference neither advances the counter nor samples.
  out, state = _apply(q, train=False, mutable=[base.STATE])(variables, z,
                                                            jax.random.key(0))
  assert int(state[base.STATE]['step']) == 6
  np.testing.assert_allclose(out.metrics['temperature'], 0.125, rtol=1e-6)


def test_the_module_relaxes_at_the_annealed_temperature(monkeypatch):
  """At train step 2 of a 4-step annealing 2 -> 1/8, the gradient w.r.t. z
  is the Gumbel-softmax's at tau = 0.5, on the noise it draws
  (given here)."""
  q = gumbel.GumbelQuantizer(codebook_size=5, embedding_dim=3, temperature=2.0,
                             temperature_final=0.125,
                             temperature_anneal_steps=4)
  rng = np.random.default_rng(3)
  z = rng.normal(size=(6, 3)).astype(np.float32)
  cot = rng.normal(size=(6, 3)).astype(np.float32)
  variables = _init(q, z)
  variables = {**variables, base.STATE: {'step': jnp.array(2, jnp.int32)}}
  noise = rng.gumbel(size=(6, 5)).astype(np.float32)
  monkeypatch.setattr(base, 'gumbel_noise',
                      lambda key, shape: jnp.asarray(noise).reshape(shape))
  quantized = lambda z: q.apply(variables, z, train=True, rngs={
      'quantizer': jax.random.key(4)
  }, mutable=[base.STATE])[0].quantized
  grad_z = jax.jit(lambda z, cot: jax.vjp(quantized, z)[1](cot)[0],
                   compiler_options=FAST_COMPILE)
  g_z = grad_z(jnp.asarray(z), jnp.asarray(cot))
  params = jax.tree.map(np.float64, variables['params'])
  kernel, codebook = params['to_logits']['kernel'], params['codebook']
  logits = np.float64(z) @ kernel + params['to_logits']['bias']
  tau = 2.0 * (0.125 / 2.0)**(2 / 4)
  soft = reference.softmax((logits + np.float64(noise)) / tau)
  g_logits = reference.softmax_vjp(soft, np.float64(cot) @ codebook.T) / tau
  np.testing.assert_allclose(g_z, g_logits @ kernel.T, rtol=1e-4, atol=1e-6)
