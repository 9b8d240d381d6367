"""TiTok stage 1 ("warm-up with proxy codes", task 'titok_proxy').

A frozen, trained 2D VQGAN (`proxy.workdir`, a tokenizer run) turns each
image into a grid of codes [B, h, w]; TiTok (decoder_output='proxy_codes')
encodes the image into K tokens and its decoder predicts those codes:

    L = CE(TiTok logits [B, h, w, K_proxy], VQGAN codes) + L_quantizer

Eval reconstructions are the VQGAN's decoding of TiTok's argmax codes, scored
by the tokenizer eval suite (PSNR, SSIM, LPIPS, rFID, codebook usage of
TiTok's own codebook) plus the proxy-code accuracy. Stage 2 is the tokenizer
task with `warm_start` from this run and `freeze = ('encoder', 'quantizer')`
(configs/titok/).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vqlab import config_schema
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.quantizers import base as quantizer_base
from vqlab.train import optimizers
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState
from vqlab.train.tasks import tokenizer as tokenizer_task

GENERATOR = tokenizer_task.GENERATOR
MODEL_REGISTRY = tokenizers  # Where `model.name` is looked up.


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is a TiTok in 'proxy_codes' mode."""
  config = ml_collections.ConfigDict()
  config.task = 'titok_proxy'
  config.model = tokenizers.default_config('titok')
  config.model.decoder_output = 'proxy_codes'
  config.proxy = ml_collections.ConfigDict()
  config.proxy.workdir = ''        # --workdir of the trained 2D VQGAN run.
  config.proxy.step = -1           # Its checkpoint; -1: the newest.
  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0  # On the proxy-code targets.
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0
  # TiTok: AdamW (0.9, 0.99), lr 1e-4, weight decay 1e-4.
  config.optimizer = optimizers.default_config(1e-4, 0.9, 0.99)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  require = config_schema.require
  require(config.model.name == 'titok', 'model.name',
          f"the proxy-code task trains 'titok', got {config.model.name!r}")
  require(config.model.decoder_output == 'proxy_codes',
          'model.decoder_output', "must be 'proxy_codes' in stage 1")
  size = config.data.image_size
  require(size % config.model.patch_size == 0, 'data.image_size',
          f'{size} is not divisible by model.patch_size '
          f'{config.model.patch_size}')


class ProxyCodeTask(tokenizer_task.TokenizerTask):
  """TiTok trained to predict a frozen VQGAN's codes (see module docstring).

  Shares the tokenizer task's eval (`eval_step`, `summarize_eval`,
  `image_rows`) with VQGAN-decoded reconstructions.
  """

  def __init__(self, config: ml_collections.ConfigDict):  # pylint: disable=super-init-not-called
    self.config = config
    self.model = tokenizers.build(config.model,
                                  dtype=jnp.dtype(config.compute_dtype))
    self.tx = {GENERATOR: optimizers.build(config.optimizer,
                                           config.train.num_steps)}
    self.proxy = trained_tokenizer.load(config.proxy.workdir,
                                        config.proxy.step)
    self._check_proxy()
    self._load_frozen_networks()
    self.frozen['proxy'] = self.proxy.variables

  def _check_proxy(self) -> None:
    model, proxy = self.config.model, self.proxy
    where = f'the proxy tokenizer in {proxy.workdir!r} (step {proxy.step})'
    if proxy.factor_vocab_sizes:
      raise ConfigError('proxy.workdir', f'{where} gives factorized codes; '
                        'stage 1 needs one code per position')
    if model.proxy_codebook_size != proxy.vocab_size:
      raise ConfigError('model.proxy_codebook_size',
                        f'{model.proxy_codebook_size}, but {where} has '
                        f'{proxy.vocab_size} codes')
    size = self.config.data.image_size
    grid = proxy.token_shape((size, size, model.in_channels))
    titok_grid = (size // model.patch_size,) * 2
    if tuple(grid) != titok_grid:
      raise ConfigError('model.patch_size',
                        f'{model.patch_size} gives TiTok a {titok_grid} grid '
                        f'at data.image_size {size}, but {where} makes a '
                        f'{tuple(grid)} grid of codes: patch_size must equal '
                        f'its downsampling factor')

  def init(self, rng: jax.Array, batch) -> TrainState:
    images = batch['image']
    params_rng, q_rng = jax.random.split(rng)
    variables = self.model.init({'params': params_rng, 'quantizer': q_rng},
                                images, train=False)
    params = {GENERATOR: variables.pop('params')}
    ema = dict(params) if self.config.ema.decay > 0 else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={GENERATOR: self.tx[GENERATOR].init(
                          params[GENERATOR])},
                      model_state=dict(variables), ema_params=ema)

  def warm_start(self, state: TrainState) -> TrainState:
    return state  # Stage 1 starts from scratch.

  def proxy_codes(self, x: jax.Array, frozen) -> jax.Array:
    """The frozen VQGAN's codes of images x: int32 [B, h, w]."""
    return jax.lax.stop_gradient(self.proxy.encode(frozen['proxy'], x))

  def train_step(self, state: TrainState, batch, rng, frozen=None):
    """One AdamW step on CE(proxy codes) + quantizer loss."""
    frozen = self.frozen if frozen is None else frozen
    x = batch['image']
    targets = self.proxy_codes(x, frozen)
    dropout_rng, q_rng = jax.random.split(rng)
    smoothing = self.config.loss.label_smoothing

    def loss_fn(params):
      (logits, q_out), model_state = self.model.apply(
          {'params': params, **state.model_state}, x, train=True,
          rngs={'dropout': dropout_rng, 'quantizer': q_rng},
          mutable=list(state.model_state.keys()))
      labels = optax.smooth_labels(
          jax.nn.one_hot(targets, logits.shape[-1]), smoothing)
      ce = optax.softmax_cross_entropy(logits, labels).mean()
      accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
      metrics = {'loss': ce + q_out.loss, 'proxy_ce': ce,
                 'proxy_accuracy': accuracy, 'quantizer_loss': q_out.loss,
                 **{f'quantizer/{k}': v for k, v in q_out.metrics.items()}}
      return ce + q_out.loss, (dict(model_state), metrics)

    grads, (model_state, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.params[GENERATOR])
    updates, opt_state = self.tx[GENERATOR].update(
        grads, state.opt_state[GENERATOR], state.params[GENERATOR])
    params = jax.tree.map(jnp.add, state.params[GENERATOR], updates)
    metrics['grad_norm/generator'] = optimizers.global_norm(grads)
    ema = state.ema_params
    if self.config.ema.decay > 0:
      d = self.config.ema.decay
      ema = {GENERATOR: jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                     ema[GENERATOR], params)}
    return state.replace(step=state.step + 1, params={GENERATOR: params},
                         opt_state={GENERATOR: opt_state},
                         model_state=model_state, ema_params=ema), metrics

  def reconstruct(self, state: TrainState, x, frozen):
    """The VQGAN's decoding of TiTok's most likely codes, and TiTok's ids."""
    logits, q_out = self.model.apply(
        {'params': self.eval_params(state), **state.model_state}, x,
        train=False)
    images = self.proxy.decode(frozen['proxy'], jnp.argmax(logits, -1))
    return images, quantizer_base.full_code_indices(self.model.quantizer,
                                                    q_out.indices)


def build(config: ml_collections.ConfigDict, workdir: str = '') -> ProxyCodeTask:
  del workdir
  return ProxyCodeTask(config)
