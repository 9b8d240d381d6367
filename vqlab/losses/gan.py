"""GAN objectives and the VQGAN adaptive generator weight."""

import jax
import jax.numpy as jnp


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (E relu(1 - D(x)) + E relu(1 + D(G(z)))); logits of any shape."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """-E D(G(z))."""
  return -jnp.mean(logits_fake)


def non_saturating_d_loss(logits_real: jax.Array,
                          logits_fake: jax.Array) -> jax.Array:
  """E softplus(-D(x)) + E softplus(D(G(z))) (= -log sigmoid terms)."""
  return (jnp.mean(jax.nn.softplus(-logits_real)) +
          jnp.mean(jax.nn.softplus(logits_fake)))


def non_saturating_g_loss(logits_fake: jax.Array) -> jax.Array:
  """E softplus(-D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-logits_fake))


D_LOSSES = {'hinge': hinge_d_loss, 'non_saturating': non_saturating_d_loss}
G_LOSSES = {'hinge': hinge_g_loss, 'non_saturating': non_saturating_g_loss}


def adaptive_weight(rec_grad: jax.Array, gan_grad: jax.Array, *,
                    delta: float, max_weight: float = 1e4) -> jax.Array:
  """lambda = ||grad L_rec|| / (||grad L_G|| + delta), clipped to [0, max].

  Args:
    rec_grad: gradient of the reconstruction loss w.r.t. the decoder's last
      layer (any shape).
    gan_grad: gradient of the generator's GAN loss w.r.t. the same layer.
    delta: stabilizer (1e-6 in the paper, 1e-4 in taming's code).
    max_weight: upper clip (taming: 1e4).

  Returns:
    A float32 scalar with no gradient.
  """
  rec_norm = jnp.linalg.norm(rec_grad.astype(jnp.float32).reshape(-1))
  gan_norm = jnp.linalg.norm(gan_grad.astype(jnp.float32).reshape(-1))
  weight = jnp.clip(rec_norm / (gan_norm + delta), 0.0, max_weight)
  return jax.lax.stop_gradient(weight)
