"""GAN losses and the adaptive weight against explicit computations."""

import jax
import jax.numpy as jnp
import numpy as np

from tests import tiny
from vqlab.losses import gan
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer


def test_hinge_and_non_saturating_values():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.5])
  np.testing.assert_allclose(
      gan.hinge_d_loss(real, fake),
      0.5 * (np.mean([0, 0.5, 2.0]) + np.mean([0, 1, 2.5])))
  np.testing.assert_allclose(gan.hinge_g_loss(fake), -np.mean([-2.0, 0.0, 1.5]))
  softplus = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(
      gan.non_saturating_d_loss(real, fake),
      np.mean(softplus(-np.array(real))) + np.mean(softplus(np.array(fake))),
      rtol=1e-6)
  np.testing.assert_allclose(gan.non_saturating_g_loss(fake),
                             np.mean(softplus(-np.array(fake))), rtol=1e-6)


def test_adaptive_weight_equals_full_backprop_ratio():
  """The task's last-layer VJP trick equals norms of full-network gradients."""
  config = experiment_config.validate(tiny.tokenizer_config(), num_devices=1)
  task = tokenizer.build(config)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  state = jax.jit(task.init)(jax.random.key(1), {'image': x})
  gen, disc = state.params['generator'], state.params['discriminator']
  model = task.model

  def losses(gen_params):
    x_rec, _, _ = model.apply({'params': gen_params}, x, train=True,
                              method=model.forward_with_features,
                              rngs={'dropout': jax.random.key(2)})
    rec = task._reconstruction_loss(x, x_rec)
    g_adv = gan.hinge_g_loss(task._disc_logits(disc, x_rec))
    return rec, g_adv

  @jax.jit
  def both_ways(gen):
    rec_grad = jax.grad(lambda p: losses(p)[0])(gen)['to_pixels']['kernel']
    adv_grad = jax.grad(lambda p: losses(p)[1])(gen)['to_pixels']['kernel']
    x_rec, _, features = model.apply({'params': gen}, x, train=True,
                                     method=model.forward_with_features,
                                     rngs={'dropout': jax.random.key(2)})
    return rec_grad, adv_grad, task._adaptive_weight(gen, disc, x, x_rec,
                                                     features)

  rec_grad, adv_grad, got = both_ways(gen)
  delta = config.loss.adaptive_delta
  expected = np.linalg.norm(rec_grad) / (np.linalg.norm(adv_grad) + delta)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert 0.0 < float(got) < 1e4


def test_adaptive_weight_clips():
  big = gan.adaptive_weight(jnp.ones(3), jnp.zeros(3), delta=1e-6)
  assert float(big) == 1e4
  np.testing.assert_allclose(
      gan.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0]),
                          delta=0.5), 5.0 / 2.5)
