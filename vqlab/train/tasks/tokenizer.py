"""Tokenizer training: reconstruction + quantizer + adaptive-weight GAN losses.

    L_G = w_rec |x - x_hat|_1 + w_p LPIPS + w_pcl L_pcl + L_q
          + lambda * gan_on * L_G_adv
    L_D = gan_on * (L_D_adv + w_lecam R_LeCam + w_r1 R1)

with lambda = disc_weight * ||grad_last L_rec|| / (||grad_last L_G_adv|| +
delta) (taming's adaptive weight, the last layer being the decoder's pixel
conv) and gan_on = 1 once `step >= disc_start`. Before disc_start the loop runs
a program without the GAN terms (`train_step_options`): no discriminator pass,
no adaptive weight and no discriminator update, where the program valid at
every step computes them times 0. One grad gives both networks' gradients: the
generator's adversarial term sees stop_gradient(discriminator params) and the
discriminator's term sees stop_gradient(x_hat), so each loss reaches only its
own network. lambda's numerator is the gradient of the pixel and perceptual
terms, as in taming (its `nll_loss`). Those terms' gradients w.r.t. x_hat are
computed once each (one LPIPS and one discriminator pass for the generator):
they give lambda, and their lambda-weighted sum is pulled back through the
generator.

Frozen networks (LPIPS, VGG19 for the PCL, Inception for rFID) arrive as the
`frozen` argument of the steps. With `ema.decay > 0` the train state keeps an
EMA of the generator's params and eval uses it.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.losses import contrastive
from vqlab.losses import discriminators
from vqlab.losses import gan
from vqlab.losses import perceptual
from vqlab.losses import vgg_features
from vqlab.quantizers import base as quantizer_base
from vqlab.train import frozen as frozen_lib
from vqlab.train import optimizers
from vqlab.train import reference_files
from vqlab.train.state import TrainState
from vqlab.train.tasks import base
from vqlab.train.tasks import reconstruction_eval
from vqlab.train.tasks import tokenizer_config
from vqlab.train.tasks import warm_start as warm_start_lib

GENERATOR, DISCRIMINATOR = 'generator', 'discriminator'

# Configs written before these moved to tokenizer_config (users' copies of
# configs/, 2026-12-07) call tokenizer.default_config(): kept for them.
default_config = tokenizer_config.default_config
validate = tokenizer_config.validate
_frames = reconstruction_eval.frames


class TokenizerTask(base.Task):
  """Pure functions for training any registered tokenizer with a GAN."""

  def __init__(self, config: ml_collections.ConfigDict, *,
               frozen: dict[str, Any] | None = None, fid_reference=None):
    """Args: config: the validated experiment config; frozen: {network:
    params} of the frozen networks (`build` loads them; the losses that
    need one fail without it); fid_reference: (mu, sigma) or None."""
    self.config = config
    self.model = tokenizers.build_validated(
        config.model, dtype=jnp.dtype(config.compute_dtype))
    self.discriminator = discriminators.build_validated(
        config.discriminator, dtype=jnp.dtype(config.compute_dtype))
    steps = config.train.num_steps
    # The discriminator's optimizer (its schedule's count too) starts at
    # loss.disc_start: its schedule spans the steps left then, as TiTok's
    # does (over all steps, its cosine stopped short: 17% of its peak at the
    # end of the MAGVIT-v2 video config).
    self._schedules = {  # (optimizer config, steps its schedule spans).
        GENERATOR: (config.optimizer.generator, steps),
        DISCRIMINATOR: (config.optimizer.discriminator,
                        max(steps - config.loss.disc_start, 1))
    }
    self.tx = {
        name: optimizers.build(*schedule)
        for name, schedule in self._schedules.items()
    }
    if config.freeze:
      self.tx[GENERATOR] = warm_start_lib.with_frozen(self.tx[GENERATOR],
                                                      config.freeze)
    self.frozen = dict(frozen or {})
    self.evaluation = reconstruction_eval.ReconstructionEval(
        self.model.quantizer.codebook_size, fid_reference,
        fvd_frames=frozen_lib.fvd_clip_length(config) or 0,
        inception_input=config.eval.inception_input)

  # ---------------------------------------------------------------- init ---
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Fresh TrainState; `batch` gives shapes only."""
    images = batch[reconstruction_eval.input_keys(batch)
                   [-1]]  # The video when both are there.
    if images.shape[-1] != self.model.in_channels:
      raise ConfigError(
          'model.in_channels', f'{self.model.in_channels}, but the '
          f'data has {images.shape[-1]} channels')
    gen_rng, disc_rng, q_rng = jax.random.split(rng, 3)
    variables = self.model.init({
        'params': gen_rng,
        'quantizer': q_rng
    }, images, train=False)
    warm_start_lib.check_freeze(self.config.freeze, variables)
    params = {
        GENERATOR:
            variables.pop('params'),
        DISCRIMINATOR:
            self.discriminator.init(disc_rng, self._disc_input(images))
            ['params']
    }
    ema = ({GENERATOR: params[GENERATOR]} if self.config.ema.decay > 0 else {})
    loss_state = ({
        'lecam': {
            'real': jnp.zeros((), jnp.float32),
            'fake': jnp.zeros((), jnp.float32)
        }
    } if self.config.loss.lecam_weight > 0 else {})
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state={
            k: self.tx[k].init(v) for k, v in params.items()
        }, model_state=dict(variables), ema_params=ema, loss_state=loss_state)

  def warm_start(self, state: TrainState) -> TrainState:
    """The fresh `state` with the trees the `warm_start` section names copied
    from other runs (the module warm_start's `warm_started`)."""
    return warm_start_lib.warm_started(state, self.config.warm_start, GENERATOR)

  # -------------------------------------------------------------- losses ---
  def _reconstruction_loss(self, x: jax.Array, x_rec: jax.Array) -> jax.Array:
    diff = x_rec - x
    pixel = jnp.abs(
        diff) if self.config.loss.reconstruction == 'l1' else diff**2
    return self.config.loss.reconstruction_weight * jnp.mean(pixel)

  def _pixel_losses(self, x, x_rec, frozen) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, perceptual) terms, both already weighted."""
    rec = self._reconstruction_loss(x, x_rec)
    weight = self.config.loss.perceptual_weight
    if weight == 0:
      return rec, jnp.zeros((), jnp.float32)
    lpips = perceptual.lpips_distance(frozen['lpips'], _frames(x),
                                      _frames(x_rec), dtype=self.model.dtype)
    return rec, weight * jnp.mean(lpips)

  def _disc_input(self, images):
    if images.ndim == 5 and isinstance(self.discriminator,
                                       discriminators.PatchGAN):
      return _frames(images)  # A 2D discriminator scores frames.
    return images

  def _disc_logits(self, disc_params, images):
    return self.discriminator.apply({'params': disc_params},
                                    self._disc_input(images))

  def _adaptive_weight(self, gen_params, features, rec_cot, gan_cot):
    """lambda from the gradients of L_rec + L_p and L_G_adv at the last layer.

    Both gradients w.r.t. the last layer's kernel are vector-Jacobian products
    of that layer (input `features`) with the losses' gradients w.r.t. x_hat
    (`rec_cot`, `gan_cot`); this avoids two extra backward passes through
    the whole generator.
    """
    loss_cfg = self.config.loss
    name = self.model.LAST_LAYER
    last_layer = lambda p: self.model.apply({'params': {
        name: p
    }}, jax.lax.stop_gradient(features), method=self.model.last_layer)
    _, pullback = jax.vjp(last_layer, jax.lax.stop_gradient(gen_params[name]))
    rec_grad = pullback(rec_cot)[0]['kernel']
    gan_grad = pullback(gan_cot)[0]['kernel']
    return gan.adaptive_weight(rec_grad, gan_grad,
                               delta=loss_cfg.adaptive_delta,
                               max_weight=loss_cfg.adaptive_max)

  def _pcl_loss(self, x, x_rec, q_out, frozen, rng) -> jax.Array:
    loss_cfg = self.config.loss
    if loss_cfg.pcl_weight == 0:
      return jnp.zeros((), jnp.float32)
    if x.ndim != 4:
      raise ValueError('loss.pcl_weight: the contrastive loss is defined for '
                       f'images [B, H, W, C], got {x.shape}')
    features = lambda images: vgg_features.VGG19Features(
        dtype=self.model.dtype).apply({'params': frozen['vgg19']}, images)
    pcl = contrastive.probabilistic_contrastive_loss(
        jax.lax.stop_gradient(features(x)), features(x_rec),
        q_out.extras['pcl_weights'], rng, temperature=loss_cfg.pcl_temperature,
        num_patches=loss_cfg.pcl_num_patches, epsilon=loss_cfg.pcl_epsilon)
    return loss_cfg.pcl_weight * pcl

  def _discriminator_loss(self, disc_params, x, x_rec, loss_state):
    """(L_D_adv + LeCam + R1, new loss_state, metrics)."""
    loss_cfg = self.config.loss
    logits_real = self._disc_logits(disc_params, x)
    logits_fake = self._disc_logits(disc_params, jax.lax.stop_gradient(x_rec))
    d_loss = gan.D_LOSSES[loss_cfg.gan_loss](logits_real, logits_fake)
    metrics = {
        'd_adv': d_loss,
        'logits_real': jnp.mean(logits_real),
        'logits_fake': jnp.mean(logits_fake)
    }
    new_state = dict(loss_state)
    if loss_cfg.lecam_weight > 0:
      lecam, new_state['lecam'] = gan.lecam_term(logits_real, logits_fake,
                                                 loss_state['lecam'],
                                                 loss_cfg.lecam_decay,
                                                 loss_cfg.lecam_form)
      d_loss += loss_cfg.lecam_weight * lecam
      metrics['lecam'] = lecam
    if loss_cfg.r1_weight > 0:
      r1 = gan.r1_penalty(lambda v: self._disc_logits(disc_params, v), x)
      d_loss += loss_cfg.r1_weight * r1
      metrics['r1'] = r1
    return d_loss, new_state, metrics

  def _losses(self, params, model_state, loss_state, x, rng, gan_on, frozen,
              gan_terms):
    """All loss terms of one input array (images or videos); without the GAN
    terms (gan_on must then be 0) unless `gan_terms`.

    Returns:
      (L_G + L_D, new model_state, new loss_state, metrics).
    """
    loss_cfg = self.config.loss
    gen_params, disc_params = params[GENERATOR], params[DISCRIMINATOR]
    dropout_rng, q_rng, pcl_rng = jax.random.split(rng, 3)
    (x_rec, q_out, features), new_state = self.model.apply(
        {
            'params': gen_params,
            **model_state
        }, x, train=True, encode_train=not self._frozen_encoding,
        method=self.model.forward_with_features, rngs={
            'dropout': dropout_rng,
            'quantizer': q_rng
        }, mutable=quantizer_base.mutable_collections(model_state))
    new_state = {**model_state, **new_state}
    # The gradients of the pixel losses and of the adversarial loss w.r.t.
    # x_hat, each from one forward and backward pass (LPIPS and the
    # discriminator run once for the generator): the adaptive weight needs
    # them apart, and their weighted sum, pulled back through the generator,
    # is the generator's gradient of those terms.
    x_rec_value = jax.lax.stop_gradient(x_rec)
    (rec_loss, perceptual_loss), pixel_vjp = jax.vjp(
        lambda y: self._pixel_losses(x, y, frozen), x_rec_value)
    rec_cot, = pixel_vjp(
        (jnp.ones_like(rec_loss), jnp.ones_like(perceptual_loss)))
    pcl_loss = self._pcl_loss(x, x_rec, q_out, frozen, pcl_rng)
    gen_loss = rec_loss + perceptual_loss + pcl_loss + q_out.loss
    weight = d_loss = jnp.zeros((), jnp.float32)
    x_rec_cot, new_loss_state, gan_metrics = rec_cot, loss_state, {}
    if gan_terms:
      g_adv, gan_vjp = jax.vjp(
          lambda y: gan.G_LOSSES[loss_cfg.gan_loss]
          (self._disc_logits(jax.lax.stop_gradient(disc_params), y)),
          x_rec_value)
      gan_cot, = gan_vjp(jnp.ones_like(g_adv))
      if loss_cfg.adaptive_weight:
        weight = self._adaptive_weight(gen_params, features, rec_cot, gan_cot)
      else:
        weight = jnp.ones((), jnp.float32)
      weight = weight * loss_cfg.disc_weight * gan_on
      gen_loss += weight * g_adv
      x_rec_cot = rec_cot + weight * gan_cot
      d_loss, lecam_state, d_metrics = self._discriminator_loss(
          disc_params, x, x_rec, loss_state)
      d_loss = gan_on * d_loss
      # LeCam's EMAs follow the discriminator from disc_start on, as in the
      # program without the GAN terms.
      new_loss_state = jax.tree.map(
          lambda new, old: jnp.where(gan_on > 0, new, old), lecam_state,
          loss_state)
      gan_metrics = {'g_adv': g_adv, **d_metrics}
    # Differentiated, not reported: its gradient is gen_loss's.
    gen_objective = (pcl_loss + q_out.loss +
                     jnp.sum(x_rec * jax.lax.stop_gradient(x_rec_cot)))
    metrics = {
        'loss': gen_loss,
        'rec_loss': rec_loss,
        'perceptual_loss': perceptual_loss,
        'pcl_loss': pcl_loss,
        'quantizer_loss': q_out.loss,
        'adaptive_weight': weight,
        'd_loss': d_loss,
        **gan_metrics,
        **quantizer_base.train_metrics(q_out)
    }
    return gen_objective + d_loss, dict(new_state), new_loss_state, metrics

  @property
  def _frozen_encoding(self) -> bool:
    """Whether the encoder and quantizer are frozen (TiTok's stage 2): they
    then run as in eval (no dropout, no sampled codes), so the decoder
    trains on the tokens it will be given."""
    return {'encoder', 'quantizer'} <= set(self.config.freeze)

  def _frozen_held(self, params):
    """`params` with the generator's `freeze` params behind stop_gradient:
    their gradient (zero updates anyway) is never computed, which drops e.g.
    the encoder's backward pass in TiTok stage 2."""
    if not self.config.freeze:
      return params
    generator = {
        name:
            jax.lax.stop_gradient(value)
            if name in self.config.freeze else value
        for name, value in params[GENERATOR].items()
    }
    return {**params, GENERATOR: generator}

  def loss_and_grads(self, params, model_state, batch, rng, step, frozen=None,
                     loss_state=None, gan_terms=True):
    """Gradients of both networks' losses.

    Args:
      params: {'generator': ..., 'discriminator': ...}.
      model_state: the generator's non-param collections.
      batch: {'image': [B, H, W, C]} and/or {'video': [B, T, H, W, C]}
        global arrays; with both (joint image-video batches) the losses of
        the two are summed and metrics are reported per input as well;
        terms made from a whole batch (LFQ's batch entropy) are each
        input's, and LeCam's EMAs move once, by the rows' mean logit.
      rng: PRNG key for this step.
      step: int32 scalar, the current step (switches the GAN terms on).
      frozen: {network: params} of the frozen networks (default: the task's).
      loss_state: the train state's loss_state (LeCam EMAs).
      gan_terms: False leaves the GAN terms out (valid before disc_start:
        they are 0 there; the discriminator's gradient is then 0).

    Returns:
      (grads like params, new model_state, new loss_state, metrics dict);
      the grads of `freeze` params are zeros.
    """
    frozen = self.frozen if frozen is None else frozen
    loss_state = {} if loss_state is None else loss_state
    gan_on = (step >= self.config.loss.disc_start).astype(jnp.float32)
    keys = reconstruction_eval.input_keys(batch)

    def loss_fn(params):
      params = self._frozen_held(params)
      total, state, metrics, moved = 0.0, model_state, {}, []
      for i, key in enumerate(keys):
        x = batch[key]
        if len(keys) > 1 and x.ndim == 4:
          x = x[:, None]  # Joint batches: images as 1-frame videos (one D).
        # Each input moves the step's LeCam EMAs from where they were.
        loss, state, key_loss_state, key_metrics = self._losses(
            params, quantizer_base.hold_step_counters(state, model_state),
            loss_state, x, jax.random.fold_in(rng,
                                              i), gan_on, frozen, gan_terms)
        moved.append(key_loss_state)
        total += loss
        if len(keys) == 1:
          metrics = key_metrics
        else:
          metrics.update({f'{key}/{k}': v for k, v in key_metrics.items()})
          for k in ('loss', 'rec_loss', 'd_loss'):
            metrics[k] = metrics.get(k, 0.0) + key_metrics[k]
      # Their mean by rows: one move by the mean logit of the batch's rows
      # (the EMA is linear), not one move per input.
      rows = [batch[key].shape[0] for key in keys]
      l_state = jax.tree.map(
          lambda *states: sum(r * s for r, s in zip(rows, states)) / sum(rows),
          *moved)
      return total, (state, l_state, metrics)

    grads, (new_state, new_loss_state,
            metrics) = jax.grad(loss_fn, has_aux=True)(params)
    return grads, new_state, new_loss_state, metrics

  # ---------------------------------------------------------------- step ---
  def check_training(self) -> None:
    """ConfigError when the train images are too small for the networks
    the train step runs (`tokenizer_config.check_train_sizes`)."""
    tokenizer_config.check_train_sizes(self.config, self.model)

  def train_step_options(self, step: int) -> dict[str, bool]:
    """The GAN terms are left out of the steps before `loss.disc_start`."""
    return {'gan_terms': step >= self.config.loss.disc_start}

  def train_step(self, state: TrainState, batch, rng, frozen=None,
                 gan_terms: bool = True):
    """One optimizer step of both networks -> (new state, metrics).

    With `gan_terms` False (a program for steps before loss.disc_start only)
    the discriminator, its update and the adaptive weight are left out, and
    so are the GAN metrics; the state and the other metrics come out as the
    program with them gives at those steps.
    """

    # LeCam's EMAs move once per step: each microbatch moves the step's by
    # its mean logits and the step keeps the mean of those, which is the
    # move by the batch's mean logits (the EMA is linear in them).
    def grads_fn(microbatch, rng, carry):
      model_state, loss_state_sum = carry
      grads, model_state, loss_state, metrics = self.loss_and_grads(
          state.params,
          quantizer_base.hold_step_counters(model_state, state.model_state),
          microbatch, rng, state.step, frozen, state.loss_state, gan_terms)
      loss_state_sum = jax.tree.map(jnp.add, loss_state_sum, loss_state)
      return grads, (model_state, loss_state_sum), metrics

    microbatches = self.config.train.microbatches
    grads, (model_state, loss_state_sum), metrics = base.accumulate_gradients(
        grads_fn, batch, rng,
        (quantizer_base.with_pending(self.model, state.model_state),
         jax.tree.map(jnp.zeros_like, state.loss_state)), microbatches)
    loss_state = jax.tree.map(lambda s: s / microbatches, loss_state_sum)
    model_state, ema_metrics = quantizer_base.apply_pending(
        self.model, model_state)
    if 'quantizer' in self.config.freeze:
      # E.g. EMA codebook statistics: the EMA step made is not kept (nor
      # the restarts it counted). The schedules' step counters move on: an
      # encoder that trains still reads the annealed weights.
      model_state = quantizer_base.hold_step_counters(state.model_state,
                                                      model_state)
      ema_metrics = {}
    metrics = {**quantizer_base.batch_code_metrics(metrics), **ema_metrics}
    for name, schedule in self._schedules.items():
      if name == GENERATOR or gan_terms:  # The rate this step's update uses.
        metrics[f'learning_rate/{name}'] = optimizers.learning_rate(
            state.opt_state[name], *schedule)
    state, norms = base.apply_gradients(
        state, grads, self.tx, self.config.ema.decay, active={
            DISCRIMINATOR:
                state.step >= self.config.loss.disc_start
                if gan_terms else False
        }, frozen={GENERATOR: tuple(self.config.freeze)},
        ema_warmup=self.config.ema.warmup, model_state=model_state,
        loss_state=loss_state)
    metrics.update({f'grad_norm/{k}': v for k, v in norms.items()})
    return state, metrics

  # ---------------------------------------------------------------- eval ---
  def eval_params(self, state: TrainState):
    """The generator params eval uses: the EMA copy when `ema.decay > 0`."""
    if self.config.ema.decay > 0:
      return state.ema_params[GENERATOR]
    return state.params[GENERATOR]

  def reconstruct(self, state: TrainState, x, frozen):
    """Eval reconstructions of x and the token ids (one per token, [0, K))."""
    del frozen
    x_rec, q_out = self.model.apply(
        {
            'params': self.eval_params(state),
            **state.model_state
        }, x, train=False)
    return x_rec, quantizer_base.full_code_indices(self.model.quantizer,
                                                   q_out.indices)

  def eval_step(self, state: TrainState, batch, frozen=None, rng=None):
    """Per-batch eval outputs and images (`ReconstructionEval.outputs`)."""
    del rng  # Reconstructions are deterministic.
    frozen = self.frozen if frozen is None else frozen
    x = batch[reconstruction_eval.input_keys(batch)[-1]]
    x_rec, indices = self.reconstruct(state, x, frozen)
    return self.evaluation.outputs(x, x_rec, indices, batch['mask'], frozen)

  def summarize_eval(self, acc) -> dict[str, float]:
    """Eval-set metrics from an `EvalAccumulator` of `eval_step` outputs."""
    return self.evaluation.summarize(acc)

  def image_rows(self, images: dict[str, np.ndarray],
                 n: int) -> list[np.ndarray]:
    """Rows [<= n, H, W, C] of the eval picture: inputs above their
    reconstructions (`reconstruction_eval.image_rows`)."""
    return reconstruction_eval.image_rows(images, n)


def build(config: ml_collections.ConfigDict,
          workdir: str = '') -> TokenizerTask:
  """The task with the frozen networks its losses and eval use (read from
  the weight files) and the FID reference statistics."""
  del workdir  # The tokenizer task reads nothing from its run directory.
  frozen = reconstruction_eval.load_networks(
      config, lpips=config.loss.perceptual_weight > 0,
      vgg19=config.loss.pcl_weight > 0)
  return TokenizerTask(
      config, frozen=frozen,
      fid_reference=reference_files.load_given(config, 'inception'))
