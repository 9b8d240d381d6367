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


def adaptive_weight(rec_grad: jax.Array, gan_grad: jax.Array, *, delta: float,
                    max_weight: float = 1e4) -> jax.Array:
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


def lecam_regularizer(logits_real: jax.Array, logits_fake: jax.Array,
                      ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
  """LeCam regularization (Tseng et al., 2021), as its official code writes it:

      E relu(D(x) - ema_fake)^2 + E relu(ema_real - D(G(z)))^2,

  where ema_real / ema_fake are exponential moving averages of the mean
  logits (see `lecam_ema_update`). Added to the discriminator's loss.

  Args:
    logits_real, logits_fake: D outputs of any (matching) shape.
    ema_real, ema_fake: float32 scalars (no gradient flows into them).
  """
  ema_real = jax.lax.stop_gradient(ema_real)
  ema_fake = jax.lax.stop_gradient(ema_fake)
  return (jnp.mean(jax.nn.relu(logits_real - ema_fake)**2) +
          jnp.mean(jax.nn.relu(ema_real - logits_fake)**2))


def lecam_ema_update(ema: dict[str, jax.Array], logits_real: jax.Array,
                     logits_fake: jax.Array,
                     decay: float) -> dict[str, jax.Array]:
  """{'real', 'fake'} EMAs of the mean D outputs, moved one step."""
  mean = lambda v: jax.lax.stop_gradient(jnp.mean(v.astype(jnp.float32)))
  return {
      'real': decay * ema['real'] + (1 - decay) * mean(logits_real),
      'fake': decay * ema['fake'] + (1 - decay) * mean(logits_fake)
  }


LECAM_FORMS = ('per_logit', 'mean_logit')


def lecam_term(
    logits_real: jax.Array, logits_fake: jax.Array, ema: dict[str, jax.Array],
    decay: float,
    form: str = 'per_logit') -> tuple[jax.Array, dict[str, jax.Array]]:
  """(LeCam regularizer, moved EMAs) of one discriminator step.

  Two forms are published under the same weights:
    'per_logit' (LeCam's official code, Open-MAGVIT2): the EMAs move with
      this batch's mean logits first, and every logit is measured against
      the moved EMAs;
    'mean_logit' (MAGVIT's and TiTok's trainers): the batch's mean logits
      are measured against the EMAs before this batch, then the EMAs move.
      Never larger than 'per_logit' against the same EMAs (Jensen): it does
      not penalize the spread of the logits.
  """
  new_ema = lecam_ema_update(ema, logits_real, logits_fake, decay)
  if form == 'per_logit':
    return lecam_regularizer(logits_real, logits_fake, new_ema['real'],
                             new_ema['fake']), new_ema
  if form == 'mean_logit':
    mean = lambda v: jnp.mean(v.astype(jnp.float32))
    return lecam_regularizer(mean(logits_real), mean(logits_fake), ema['real'],
                             ema['fake']), new_ema
  raise ValueError(f'unknown LeCam form {form!r}; known: {LECAM_FORMS}')


def r1_penalty(discriminator_fn, images: jax.Array) -> jax.Array:
  """R1 gradient penalty (Mescheder et al., 2018): E_x ||grad_x D(x)||^2.

  Args:
    discriminator_fn: images [B, ...] -> logits [B, ...]; D(x) of one example
      is the sum of its logits (per-patch discriminators give several).
    images: real images [B, ...].

  Returns:
    Mean over the batch of the squared gradient norm (float32 scalar).
    StyleGAN's `gamma / 2` factor is the caller's weight.
  """
  grads = jax.grad(lambda x: jnp.sum(discriminator_fn(x)))(images)
  grads = grads.astype(jnp.float32).reshape(images.shape[0], -1)
  return jnp.mean(jnp.sum(grads**2, axis=-1))
