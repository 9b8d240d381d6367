"""What the generator task needs from each generator, behind one interface:
init, loss (with condition dropout for classifier-free guidance) and sampling.

A condition `cond` is None, class labels int [B], spatial condition tokens
int [B, cond_length] (GPT), or for text a dict {'states' [B, L, D] (frozen
encoder) or 'ids' [B, L] (trainable), 'mask'}.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vqlab.generators import gpt
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion


def _drop_mask(rng, probability: float, cond, train: bool):
  """bool [B]: examples whose condition becomes the null one, or None."""
  if cond is None or not train or probability <= 0:
    return None
  batch = jax.tree.leaves(cond)[0].shape[0]
  return jax.random.bernoulli(rng, probability, (batch,))


class MaskGITAdapter:
  """MaskGIT: masked-token CE with label smoothing; confidence decoding."""

  def __init__(self, model: maskgit.MaskGIT, config: ml_collections.ConfigDict):
    self.model, self.config = model, config

  def init(self, rng, tokens, cond):
    return self.model.init(rng, tokens, cond)['params']

  def loss(self, params, tokens, cond, rng, *, train, example_weights=None,
           loss_state=None):
    cfg = self.config.loss
    drop_rng, rng = jax.random.split(rng)
    drop = _drop_mask(drop_rng, cfg.label_drop, cond, train)
    if drop is not None:
      cond = jnp.where(drop, self.model.num_classes, cond)
    loss, metrics = maskgit.masked_loss(
        self.model, params, rng, tokens, cond,
        label_smoothing=cfg.label_smoothing if train else 0.0, label_drop=0.0,
        schedule_method=cfg.mask_schedule, train=train,
        example_weights=example_weights)
    return loss, metrics, loss_state

  def sample(self, params, rng, batch_size, cond):
    s = self.config.sample
    return maskgit.sample(
        self.model, params, rng, batch_size, cond, num_steps=s.num_steps,
        temperature=s.temperature, choice_temperature=s.choice_temperature,
        guidance_scale=s.guidance_scale,
        guidance_schedule=s.guidance_schedule,
        schedule_method=self.config.loss.mask_schedule)


class GPTAdapter:
  """GPT: next-token CE over the row-major token sequence; sampling takes
  `sample.guidance_scale` w (class GPTs) as MaskGIT: l_u + (1 + w)(l_c - l_u).
  """

  def __init__(self, model: gpt.GPT, config: ml_collections.ConfigDict):
    self.model, self.config = model, config

  def init(self, rng, tokens, cond):
    return self.model.init(rng, tokens.reshape(tokens.shape[0], -1),
                           cond)['params']

  def loss(self, params, tokens, cond, rng, *, train, example_weights=None,
           loss_state=None):
    drop_rng, rng = jax.random.split(rng)
    if self.model.condition == 'class':  # Spatial conds have no null one.
      drop = _drop_mask(drop_rng, self.config.loss.label_drop, cond, train)
      if drop is not None:
        cond = jnp.where(drop, self.model.null_class, cond)
    flat = tokens.reshape(tokens.shape[0], -1)
    logits = self.model.apply({'params': params}, flat, cond, train=train,
                              rngs={'dropout': rng})
    per_token = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                     flat[..., None], -1)[..., 0]
    weights = (jnp.ones(flat.shape[:1]) if example_weights is None
               else example_weights)[:, None] * jnp.ones_like(per_token)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (per_token * weights).sum() / count
    correct = (jnp.argmax(logits, -1) == flat) * weights
    return loss, {'loss': loss, 'accuracy': correct.sum() / count}, loss_state

  def sample(self, params, rng, batch_size, cond):
    s = self.config.sample
    return gpt.sample(self.model, params, rng, batch_size, cond,
                      temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                      use_cache=s.use_cache, guidance_scale=s.guidance_scale)


class VQDiffusionAdapter:
  """VQ-Diffusion: VLB + auxiliary CE; the reverse chain (full or skipping).

  `sample.guidance_scale` w is the MaskGIT convention: s = 1 + w in
  log p_u + s (log p_c - log p_u), so w = 0 is conditional sampling.
  """

  def __init__(self, model: vq_diffusion.VQDiffusion,
               config: ml_collections.ConfigDict):
    self.model, self.config = model, config

  def init(self, rng, tokens, cond):
    t = jnp.ones((tokens.shape[0],), jnp.int32)
    return self.model.init(rng, tokens, t, cond)['params']

  def init_loss_state(self) -> dict[str, jax.Array]:
    return vq_diffusion.init_loss_state(self.model.num_timesteps)

  def loss(self, params, tokens, cond, rng, *, train, example_weights=None,
           loss_state=None):
    cfg = self.config.loss
    loss, metrics, new_state = vq_diffusion.diffusion_loss(
        self.model, params, rng, tokens, cond, aux_weight=cfg.aux_weight,
        cond_drop=cfg.label_drop if train else 0.0,
        time_sampling=cfg.time_sampling if train else 'uniform',
        loss_state=loss_state, train=train, example_weights=example_weights)
    metrics['accuracy'] = metrics['x0_accuracy']
    return loss, metrics, new_state if train else loss_state

  def sample(self, params, rng, batch_size, cond):
    s = self.config.sample
    return vq_diffusion.sample(
        self.model, params, rng, batch_size, cond,
        num_steps=s.diffusion_steps or None,
        guidance_scale=1.0 + s.guidance_scale, temperature=s.temperature,
        truncation=s.truncation)


def adapter(model: Any, config: ml_collections.ConfigDict):
  """The adapter of a built generator."""
  if isinstance(model, maskgit.MaskGIT):
    return MaskGITAdapter(model, config)
  if isinstance(model, gpt.GPT):
    return GPTAdapter(model, config)
  if isinstance(model, vq_diffusion.VQDiffusion):
    return VQDiffusionAdapter(model, config)
  raise TypeError(f'no generator adapter for {type(model).__name__}')
