"""Tokenizer training: reconstruction + quantizer + adaptive-weight GAN losses.

    L_G = w_rec |x - x_hat|_1 + w_p LPIPS + L_q + lambda * gan_on * L_G_adv
    L_D = gan_on * L_D_adv

with lambda = disc_weight * ||grad_last L_rec|| / (||grad_last L_G_adv|| + delta)
(taming's adaptive weight, the last layer being the decoder's pixel conv) and
gan_on = 1 once `step >= disc_start`. One value_and_grad gives both networks'
gradients: the generator's adversarial term sees stop_gradient(discriminator
params) and the discriminator's term sees stop_gradient(x_hat), so each loss
reaches only its own network.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import config_schema
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.evals import image_metrics
from vqlab.losses import discriminators
from vqlab.losses import gan
from vqlab.quantizers import base as quantizer_base
from vqlab.train import optimizers
from vqlab.train.state import TrainState

GENERATOR, DISCRIMINATOR = 'generator', 'discriminator'


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is any registered tokenizer."""
  config = ml_collections.ConfigDict()
  config.model = tokenizers.default_config('vqgan')

  config.loss = loss = ml_collections.ConfigDict()
  loss.reconstruction = 'l1'        # 'l1' or 'l2' pixel loss.
  loss.reconstruction_weight = 1.0  # Weight of the pixel loss.
  loss.perceptual_weight = 0.0      # LPIPS weight (needs the LPIPS network).
  loss.gan_loss = 'hinge'           # 'hinge' or 'non_saturating'.
  loss.disc_weight = 0.8            # Scales the adaptive weight (taming: 0.8).
  loss.disc_start = 0               # Step at which the GAN terms switch on.
  loss.adaptive_weight = True       # Taming's gradient-norm ratio; else 1.
  loss.adaptive_delta = 1e-6        # Paper: 1e-6; taming's code: 1e-4.
  loss.adaptive_max = 1e4           # Upper clip of the adaptive weight.

  config.discriminator = disc = ml_collections.ConfigDict()
  disc.name = 'patchgan'            # PatchGAN (pix2pix / taming).
  disc.base_features = 64           # Channels of the first conv.
  disc.num_layers = 3               # Stride-2 convs.
  disc.use_norm = True              # Batch-statistics norm in inner layers.

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.generator = optimizers.default_config(1e-4, 0.5, 0.9)
  opt.discriminator = optimizers.default_config(1e-4, 0.5, 0.9)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond keys and types; raises ConfigError naming the key."""
  loss = config.loss
  config_schema.require(loss.reconstruction in ('l1', 'l2'),
                        'loss.reconstruction', f"must be 'l1' or 'l2', got "
                        f'{loss.reconstruction!r}')
  config_schema.require(loss.gan_loss in gan.G_LOSSES, 'loss.gan_loss',
                        f'unknown GAN loss {loss.gan_loss!r}; known: '
                        f'{", ".join(sorted(gan.G_LOSSES))}')
  config_schema.require(
      loss.perceptual_weight == 0.0, 'loss.perceptual_weight',
      'LPIPS is not part of vqlab yet; set it to 0.0')
  config_schema.require(config.discriminator.name == 'patchgan',
                        'discriminator.name', f'unknown discriminator '
                        f'{config.discriminator.name!r}; known: patchgan')
  factor = 2**(len(config.model.channel_multipliers) - 1) \
      if 'channel_multipliers' in config.model else 1
  for key in ('image_size', 'train_image_size'):
    size = config.data.get(key, 0)
    config_schema.require(
        size % factor == 0, f'data.{key}',
        f'{size} is not divisible by the model\'s downsampling factor {factor}')


class TokenizerTask:
  """Pure functions for training any registered tokenizer with a GAN."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = tokenizers.build(config.model,
                                  dtype=jnp.dtype(config.compute_dtype))
    d = config.discriminator
    self.discriminator = discriminators.PatchGAN(
        base_features=d.base_features, num_layers=d.num_layers,
        use_norm=d.use_norm, dtype=jnp.dtype(config.compute_dtype))
    steps = config.train.num_steps
    self.tx = {GENERATOR: optimizers.build(config.optimizer.generator, steps),
               DISCRIMINATOR: optimizers.build(config.optimizer.discriminator,
                                               steps)}

  # ---------------------------------------------------------------- init ---
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Fresh TrainState; `batch` gives shapes only."""
    images = batch['image']
    if images.shape[-1] != self.model.in_channels:
      raise ConfigError('model.in_channels', f'{self.model.in_channels}, but the '
                        f'data has {images.shape[-1]} channels')
    gen_rng, disc_rng, q_rng = jax.random.split(rng, 3)
    variables = self.model.init({'params': gen_rng, 'quantizer': q_rng},
                                images, train=False)
    params = {GENERATOR: variables.pop('params'),
              DISCRIMINATOR: self.discriminator.init(disc_rng, images)['params']}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state={k: self.tx[k].init(v) for k, v in params.items()},
        model_state=dict(variables))

  # -------------------------------------------------------------- losses ---
  def _reconstruction_loss(self, x: jax.Array, x_rec: jax.Array) -> jax.Array:
    diff = x_rec - x
    pixel = jnp.abs(diff) if self.config.loss.reconstruction == 'l1' else diff**2
    return self.config.loss.reconstruction_weight * jnp.mean(pixel)

  def _disc_logits(self, disc_params, images):
    return self.discriminator.apply({'params': disc_params}, images)

  def _adaptive_weight(self, gen_params, disc_params, x, x_rec, features):
    """lambda from the gradients of L_rec and L_G_adv at the last layer.

    Both gradients w.r.t. the last layer's kernel are vector-Jacobian products
    of that layer (input `features`) with the losses' gradients w.r.t. x_hat;
    this avoids two extra backward passes through the whole generator.
    """
    loss_cfg = self.config.loss
    g_loss = gan.G_LOSSES[loss_cfg.gan_loss]
    x_rec = jax.lax.stop_gradient(x_rec)
    disc_params = jax.lax.stop_gradient(disc_params)
    rec_cot = jax.grad(lambda y: self._reconstruction_loss(x, y))(x_rec)
    gan_cot = jax.grad(lambda y: g_loss(self._disc_logits(disc_params, y)))(x_rec)
    name = self.model.LAST_LAYER
    last_layer = lambda p: self.model.apply(
        {'params': {name: p}}, jax.lax.stop_gradient(features),
        method=self.model.last_layer)
    _, pullback = jax.vjp(last_layer, jax.lax.stop_gradient(gen_params[name]))
    rec_grad = pullback(rec_cot)[0]['kernel']
    gan_grad = pullback(gan_cot)[0]['kernel']
    return gan.adaptive_weight(rec_grad, gan_grad, delta=loss_cfg.adaptive_delta,
                               max_weight=loss_cfg.adaptive_max)

  def loss_and_grads(self, params, model_state, batch, rng, step):
    """Gradients of both networks' losses.

    Args:
      params: {'generator': ..., 'discriminator': ...}.
      model_state: the generator's non-param collections.
      batch: {'image': [B, H, W, C]} global arrays.
      rng: PRNG key for this step.
      step: int32 scalar, the current step (switches the GAN terms on).

    Returns:
      (grads like params, new model_state, metrics dict of scalars).
    """
    loss_cfg = self.config.loss
    x = batch['image']
    gan_on = (step >= loss_cfg.disc_start).astype(jnp.float32)
    g_loss_fn = gan.G_LOSSES[loss_cfg.gan_loss]
    d_loss_fn = gan.D_LOSSES[loss_cfg.gan_loss]
    dropout_rng, q_rng = jax.random.split(rng)

    def loss_fn(params):
      gen_params, disc_params = params[GENERATOR], params[DISCRIMINATOR]
      (x_rec, q_out, features), new_state = self.model.apply(
          {'params': gen_params, **model_state}, x, train=True,
          method=self.model.forward_with_features,
          rngs={'dropout': dropout_rng, 'quantizer': q_rng},
          mutable=list(model_state.keys()))
      rec_loss = self._reconstruction_loss(x, x_rec)
      g_adv = g_loss_fn(self._disc_logits(jax.lax.stop_gradient(disc_params),
                                          x_rec))
      if loss_cfg.adaptive_weight:
        weight = self._adaptive_weight(gen_params, disc_params, x, x_rec,
                                       features)
      else:
        weight = jnp.ones((), jnp.float32)
      weight = weight * loss_cfg.disc_weight * gan_on
      gen_loss = rec_loss + q_out.loss + weight * g_adv
      logits_real = self._disc_logits(disc_params, x)
      logits_fake = self._disc_logits(disc_params, jax.lax.stop_gradient(x_rec))
      d_loss = gan_on * d_loss_fn(logits_real, logits_fake)
      metrics = {'loss': gen_loss, 'rec_loss': rec_loss,
                 'quantizer_loss': q_out.loss, 'g_adv': g_adv,
                 'adaptive_weight': weight, 'd_loss': d_loss,
                 'logits_real': jnp.mean(logits_real),
                 'logits_fake': jnp.mean(logits_fake), **{
                     f'quantizer/{k}': v for k, v in q_out.metrics.items()}}
      return gen_loss + d_loss, (new_state, metrics)

    grads, (new_state, metrics) = jax.grad(loss_fn, has_aux=True)(params)
    return grads, dict(new_state), metrics

  # ---------------------------------------------------------------- step ---
  def train_step(self, state: TrainState, batch, rng):
    """One optimizer step of both networks -> (new state, metrics)."""
    grads, model_state, metrics = self.loss_and_grads(
        state.params, state.model_state, batch, rng, state.step)
    params, opt_state = {}, {}
    for name, tx in self.tx.items():
      updates, opt_state[name] = tx.update(grads[name], state.opt_state[name],
                                           state.params[name])
      params[name] = jax.tree.map(jnp.add, state.params[name], updates)
      metrics[f'grad_norm/{name}'] = optimizers.global_norm(grads[name])
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state, model_state=model_state), metrics

  # ---------------------------------------------------------------- eval ---
  def eval_step(self, state: TrainState, batch):
    """Sums over the batch's real examples, and images to show.

    Returns:
      sums: {'psnr', 'l1', 'count'} scalars and 'code_counts' [K], each summed
        over examples with batch['mask'].
      images: {'inputs', 'reconstructions'} [B, H, W, C] in [-1, 1].
    """
    x = batch['image']
    mask = batch['mask'].astype(jnp.float32)
    x_rec, q_out = self.model.apply(
        {'params': state.params[GENERATOR], **state.model_state}, x,
        train=False)
    indices = quantizer_base.full_code_indices(self.model.quantizer,
                                               q_out.indices)
    codes_mask = jnp.broadcast_to(
        mask.reshape((-1,) + (1,) * (indices.ndim - 1)), indices.shape)
    counts = jnp.zeros((self.model.quantizer.codebook_size,), jnp.float32).at[
        indices.reshape(-1)].add(codes_mask.reshape(-1))
    sums = {'psnr': jnp.sum(image_metrics.psnr(x, x_rec) * mask),
            'l1': jnp.sum(image_metrics.mean_abs_error(x, x_rec) * mask),
            'count': jnp.sum(mask), 'code_counts': counts}
    return sums, {'inputs': x, 'reconstructions': jnp.clip(x_rec, -1, 1)}

  def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    """Eval-set metrics from the summed `eval_step` outputs."""
    count = max(float(sums['count']), 1.0)
    codebook = quantizer_base.usage_and_perplexity(
        jnp.asarray(sums['code_counts']))
    return {'psnr': float(sums['psnr']) / count,
            'l1': float(sums['l1']) / count,
            'codebook_usage': float(codebook['usage']),
            'codebook_perplexity': float(codebook['perplexity']),
            'num_examples': count}

  @staticmethod
  def image_rows(images: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """Rows of the eval picture: inputs above their reconstructions."""
    return [images['inputs'][:n], images['reconstructions'][:n]]


def build(config: ml_collections.ConfigDict) -> TokenizerTask:
  return TokenizerTask(config)
