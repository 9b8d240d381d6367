"""TiTok stage 1 ("warm-up with proxy codes", task 'titok_proxy').

A frozen, trained 2D VQGAN (`proxy.workdir`, a tokenizer run) turns each
image into a grid of codes [B, h, w]; TiTok (decoder_output='proxy_codes')
encodes the image into K tokens and its decoder predicts those codes:

    L = CE(TiTok logits [B, h, w, K_proxy], VQGAN codes) + L_quantizer

Eval reconstructions are the VQGAN's decoding of TiTok's argmax codes, scored
by the tokenizer eval suite (PSNR, SSIM, LPIPS, rFID, codebook usage of
TiTok's own codebook); the train metrics report the proxy-code accuracy
(`proxy_accuracy`). Stage 2 is the tokenizer
task with `warm_start` from this run and `freeze = ('encoder', 'quantizer')`
(configs/titok/).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqlab import config_schema
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.quantizers import base as quantizer_base
from vqlab.train import optimizers
from vqlab.train import reference_files
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState
from vqlab.train.tasks import base
from vqlab.train.tasks import reconstruction_eval

GENERATOR = 'generator'


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is a TiTok in 'proxy_codes' mode."""
  config = ml_collections.ConfigDict()
  config.task = 'titok_proxy'
  config.model = tokenizers.default_config('titok')
  config.model.decoder_output = 'proxy_codes'
  config.proxy = ml_collections.ConfigDict()
  config.proxy.workdir = ''  # --workdir of the trained 2D VQGAN run.
  config.proxy.step = -1  # Its checkpoint; -1: the newest.
  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0  # On the proxy-code targets.
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0  # EMA of the params for eval; 0: off.
  # True: decay min(decay, (1 + t) / (10 + t)) at step t (TiTok's release).
  config.ema.warmup = False
  # TiTok: AdamW (0.9, 0.99), lr 1e-4, weight decay 1e-4.
  config.optimizer = optimizers.default_config(1e-4, 0.9, 0.99)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the key unless the model is a TiTok predicting proxy
  codes and the image sizes fit its patches."""
  require = config_schema.require
  require(config.model.name == 'titok', 'model.name',
          f"the proxy-code task trains 'titok', got {config.model.name!r}")
  require(config.model.decoder_output == 'proxy_codes', 'model.decoder_output',
          "must be 'proxy_codes' in stage 1")
  for key in ('image_size', 'train_image_size'):
    size = config.data.get(key, 0)
    require(
        size % config.model.patch_size == 0, f'data.{key}',
        f'{size} is not divisible by model.patch_size '
        f'{config.model.patch_size}')


def check_proxy(config: ml_collections.ConfigDict,
                proxy: trained_tokenizer.TrainedTokenizer) -> None:
  """ConfigError naming the key when `proxy`'s codes cannot be TiTok's
  targets (factorized codes, another codebook size, another grid)."""
  model = config.model
  where = f'the proxy tokenizer in {proxy.workdir!r} (step {proxy.step})'
  if proxy.factor_vocab_sizes:
    raise ConfigError(
        'proxy.workdir', f'{where} gives factorized codes; '
        'stage 1 needs one code per position')
  if model.proxy_codebook_size != proxy.vocab_size:
    raise ConfigError(
        'model.proxy_codebook_size',
        f'{model.proxy_codebook_size}, but {where} has '
        f'{proxy.vocab_size} codes')
  size = config.data.image_size
  grid = proxy.token_shape((size, size, model.in_channels))
  titok_grid = (size // model.patch_size,) * 2
  if tuple(grid) != titok_grid:
    raise ConfigError(
        'model.patch_size',
        f'{model.patch_size} gives TiTok a {titok_grid} grid '
        f'at data.image_size {size}, but {where} makes a '
        f'{tuple(grid)} grid of codes: patch_size must equal '
        'its downsampling factor')


class ProxyCodeTask(base.Task):
  """TiTok trained to predict a frozen VQGAN's codes (see module docstring),
  evaluated by the tokenizer eval suite on VQGAN-decoded reconstructions."""

  def __init__(self, config: ml_collections.ConfigDict, *,
               proxy: trained_tokenizer.TrainedTokenizer,
               frozen: dict[str, Any] | None = None, fid_reference=None):
    """Args: config: the validated experiment config; proxy: the trained
    VQGAN whose codes are the targets; frozen: {network: params} of the eval
    networks; fid_reference: (mu, sigma) or None."""
    self.config = config
    self.model = tokenizers.build_validated(
        config.model, dtype=jnp.dtype(config.compute_dtype))
    self.tx = {
        GENERATOR: optimizers.build(config.optimizer, config.train.num_steps)
    }
    self.proxy = proxy
    check_proxy(config, proxy)
    self.frozen = {**(frozen or {}), 'proxy': proxy.variables}
    self.evaluation = reconstruction_eval.ReconstructionEval(
        self.model.quantizer.codebook_size, fid_reference,
        inception_input=config.eval.inception_input)

  def read_for_life(self) -> dict[str, trained_tokenizer.TrainedTokenizer]:
    """{'proxy.workdir': the proxy VQGAN}."""
    return {'proxy.workdir': self.proxy}

  def init(self, rng: jax.Array, batch) -> TrainState:
    """Fresh TrainState; only the shape of batch['image'] [B, H, W, C]
    matters."""
    images = batch['image']
    params_rng, q_rng = jax.random.split(rng)
    variables = self.model.init({
        'params': params_rng,
        'quantizer': q_rng
    }, images, train=False)
    params = {GENERATOR: variables.pop('params')}
    ema = dict(params) if self.config.ema.decay > 0 else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state={GENERATOR: self.tx[GENERATOR].init(params[GENERATOR])},
        model_state=dict(variables), ema_params=ema)

  def proxy_codes(self, x: jax.Array, frozen) -> jax.Array:
    """The frozen VQGAN's codes of images x: int32 [B, h, w]."""
    return jax.lax.stop_gradient(self.proxy.encode(frozen['proxy'], x))

  def train_step(self, state: TrainState, batch, rng, frozen=None):
    """One AdamW step on CE(proxy codes) + quantizer loss."""
    frozen = self.frozen if frozen is None else frozen
    smoothing = self.config.loss.label_smoothing

    def grads_fn(microbatch, rng, model_state):
      model_state = quantizer_base.hold_step_counters(model_state,
                                                      state.model_state)
      x = microbatch['image']
      targets = self.proxy_codes(x, frozen)
      dropout_rng, q_rng = jax.random.split(rng)

      def loss_fn(params):
        (logits,
         q_out), new_state = self.model.apply({
             'params': params,
             **model_state
         }, x, train=True, rngs={
             'dropout': dropout_rng,
             'quantizer': q_rng
         }, mutable=quantizer_base.mutable_collections(model_state))
        labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]),
                                     smoothing)
        ce = optax.softmax_cross_entropy(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
        metrics = {
            'loss': ce + q_out.loss,
            'proxy_ce': ce,
            'proxy_accuracy': accuracy,
            'quantizer_loss': q_out.loss,
            **quantizer_base.train_metrics(q_out)
        }
        return ce + q_out.loss, ({**model_state, **new_state}, metrics)

      grads, (new_state,
              metrics) = jax.grad(loss_fn,
                                  has_aux=True)(state.params[GENERATOR])
      return grads, new_state, metrics

    grads, model_state, metrics = base.accumulate_gradients(
        grads_fn, batch, rng,
        quantizer_base.with_pending(self.model, state.model_state),
        self.config.train.microbatches)
    model_state, ema_metrics = quantizer_base.apply_pending(
        self.model, model_state)
    metrics = {**quantizer_base.batch_code_metrics(metrics), **ema_metrics}
    metrics['learning_rate/generator'] = optimizers.learning_rate(
        state.opt_state[GENERATOR], self.config.optimizer,
        self.config.train.num_steps)
    state, norms = base.apply_gradients(state, {GENERATOR: grads}, self.tx,
                                        self.config.ema.decay,
                                        ema_warmup=self.config.ema.warmup,
                                        model_state=model_state)
    metrics['grad_norm/generator'] = norms[GENERATOR]
    return state, metrics

  def reconstruct(self, state: TrainState, x, frozen):
    """The VQGAN's decoding of TiTok's most likely codes, and TiTok's ids."""
    logits, q_out = self.model.apply(
        {
            'params': self.eval_params(state),
            **state.model_state
        }, x, train=False)
    images = self.proxy.decode(frozen['proxy'], jnp.argmax(logits, -1))
    return images, quantizer_base.full_code_indices(self.model.quantizer,
                                                    q_out.indices)

  def eval_params(self, state: TrainState):
    """The params eval uses: the EMA copy when `ema.decay > 0`."""
    if self.config.ema.decay > 0:
      return state.ema_params[GENERATOR]
    return state.params[GENERATOR]

  def eval_step(self, state: TrainState, batch, frozen=None, rng=None):
    """Per-batch eval outputs and images (`ReconstructionEval.outputs`) of
    the VQGAN-decoded reconstructions."""
    del rng  # Reconstructions are deterministic.
    frozen = self.frozen if frozen is None else frozen
    x = batch['image']
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
          workdir: str = '') -> ProxyCodeTask:
  """The task with the proxy VQGAN run and the eval networks read from disk."""
  del workdir
  return ProxyCodeTask(
      config,
      proxy=trained_tokenizer.load(config.proxy.workdir, config.proxy.step,
                                   key='proxy.workdir', step_key='proxy.step'),
      frozen=reconstruction_eval.load_networks(config),
      fid_reference=reference_files.load_given(config, 'inception'))
