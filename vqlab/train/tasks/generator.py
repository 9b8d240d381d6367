"""Generator training (stage 2): a token model over a trained tokenizer's codes.

The tokenizer is a trained run (`tokenizer.workdir`); its weights are frozen
and reach the steps through `frozen['tokenizer']`. Tokens come either from
shards written by `main.py --mode=tokenize` (`tokens.source = 'shards'`) or
from encoding each image batch inside the train step ('on_the_fly').

Losses (DESIGN §4): MaskGIT, cross-entropy on the masked positions with label
smoothing; GPT, next-token cross-entropy. Class labels are replaced by the
null class with probability `loss.label_drop` (classifier-free guidance).

Spatial conditioning (GPT, model.condition = 'tokens'): `condition.image`
derives a condition image from each image ('downsampled': super-resolution,
'grayscale': colorization; `spatial_conditions`), which the same tokenizer
encodes, or, as taming's cond stage, a tokenizer run of its own codebook
(`condition.tokenizer`); its tokens [B, cond_length] are the GPT's cond. Shards hold them as
'cond_tokens'; samples are conditioned on those of the eval split.
Eval reports the same loss on the eval split (fixed masks) and shows decoded
samples; `main.py --mode=sample` writes samples and their gFID / IS.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab import fileio
from vqlab import generators
from vqlab.data import token_shards
from vqlab.errors import ConfigError
from vqlab.generators import maskgit
from vqlab.train import frozen as frozen_lib
from vqlab.train import optimizers
from vqlab.train import partitioning
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState
from vqlab.train.tasks import base
from vqlab.train.tasks import generator_checks
from vqlab.train.tasks import generator_config
from vqlab.train.tasks import sample_labels
from vqlab.train.tasks import spatial_conditions
from vqlab.train.tasks import text_conditions

INPUT_KEYS = ('image', 'video')

# Configs written before these moved to generator_config (users' copies of
# configs/, 2026-12-07) call generator.default_config(): kept for them.
default_config = generator_config.default_config
validate = generator_config.validate


def condition_tokenizer(
    config: ml_collections.ConfigDict
) -> trained_tokenizer.TrainedTokenizer | None:
  """The tokenizer run of `condition.tokenizer`, or None when unset."""
  condition = config.get('condition')
  if condition is None or not condition.tokenizer:
    return None
  return trained_tokenizer.load(condition.tokenizer, condition.tokenizer_step,
                                key='condition.tokenizer',
                                step_key='condition.tokenizer_step')


def _input_key(batch) -> str:
  keys = [k for k in INPUT_KEYS if k in batch]
  if not keys:
    raise ValueError(f'generator task: the batch has none of {INPUT_KEYS}; '
                     f'keys: {sorted(batch)}')
  return keys[0]


# The metrics of a generator's loss that are means over its terms, and the
# weights of those means (GeneratorApi.loss: 'accuracy' over
# 'accuracy_weight' where the loss reports one).
_MEAN_WEIGHTS = {
    'loss': 'loss_weight',
    'nll': 'loss_weight',
    'accuracy': 'accuracy_weight'
}


def _weight_of(metrics: dict[str, jax.Array], key: str) -> jax.Array:
  weight = _MEAN_WEIGHTS[key]
  return metrics[weight if weight in metrics else 'loss_weight']


def _weighted_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """A loss's metrics (scalars) with its means over terms times their
  weights: sums over the terms, which add across microbatches."""
  return {
      k: v * _weight_of(metrics, k) if k in _MEAN_WEIGHTS else v
      for k, v in metrics.items()
  }


def _weighted_means(sums: dict[str, jax.Array],
                    num_microbatches: int) -> dict[str, jax.Array]:
  """`_weighted_sums`' metrics (as averaged over microbatches) back to means
  over the terms of all microbatches, and their weights to the batch's."""
  weights = set(_MEAN_WEIGHTS.values())

  def batch_metric(key, value):
    if key in _MEAN_WEIGHTS:
      return value / _weight_of(sums, key)
    if key in weights:  # Their mean over the microbatches.
      return value * num_microbatches
    return value

  return {k: batch_metric(k, v) for k, v in sums.items()}


class GeneratorTask(base.Task):
  """Pure functions for training a registered generator on tokens."""

  draws_samples = True  # Eval pictures are decoded samples.

  def __init__(
      self, config: ml_collections.ConfigDict, *,
      tokenizer: trained_tokenizer.TrainedTokenizer, token_shape: tuple[int,
                                                                        ...],
      text: text_conditions.TextConditioner | None = None,
      frozen: dict[str, Any] | None = None, tokens_directory: str = 'tokens',
      cond_tokenizer: trained_tokenizer.TrainedTokenizer | None = None):
    """Args:
      config: the validated experiment config.
      tokenizer: the trained tokenizer whose codes the model generates.
      token_shape: the token grid of one example, e.g. (16, 16)
        (`generator_checks.check_model_fits`).
      text: the caption encoder of text-conditional models, else None.
      frozen: other frozen networks' params (e.g. {'inception': ...}).
      tokens_directory: the token shards (`tokens.source = 'shards'`).
      cond_tokenizer: the tokenizer of spatial condition images
        (`condition.tokenizer`); None: `tokenizer`.
    """
    self.config = config
    self.model = generators.build_validated(
        config.model, dtype=jnp.dtype(config.compute_dtype))
    self.tx = {
        'model': optimizers.build(config.optimizer, config.train.num_steps)
    }
    self.api = generators.get_api(config.model.name)
    self.cond_spec = self.api.condition_spec(config.model)
    self.num_classes = self.cond_spec.num_classes
    self.tokenizer = tokenizer
    self.token_shape = tuple(token_shape)
    self.text = text
    self.tokens_directory = tokens_directory
    self.cond_tokenizer = cond_tokenizer or tokenizer
    # The frozen entry the condition tokenizer's variables are under.
    self._cond_key = 'cond_tokenizer' if cond_tokenizer else 'tokenizer'
    self.frozen = {
        'tokenizer':
            tokenizer.variables,
        **({
            'cond_tokenizer': cond_tokenizer.variables
        } if cond_tokenizer else {}),
        **(text.frozen if text else {}),
        **(frozen or {})
    }
    self._prompts = None
    self._caption_batches = None
    self._eval_cond_tokens = None
    # The data's class count, once a data source is built (data_source).
    self._data_classes = None
    self._train_labels = None  # sample.labels 'train': the shards' labels.

  def read_for_life(self) -> dict[str, trained_tokenizer.TrainedTokenizer]:
    """{'tokenizer.workdir': the tokenizer, and 'condition.tokenizer': the
    condition tokenizer when it is another run}."""
    loaded = {'tokenizer.workdir': self.tokenizer}
    if self._cond_key == 'cond_tokenizer':
      loaded['condition.tokenizer'] = self.cond_tokenizer
    return loaded

  @property
  def spatial(self) -> bool:
    """Whether the model's condition is spatial condition tokens."""
    return self.cond_spec.kind == 'tokens'

  # -------------------------------------------------------------- data ---
  def data_source(self, split: str, global_batch_size: int, process_index: int,
                  process_count: int):
    """Token shards or the `data` section; captions become text arrays."""
    if self.config.tokens.source == 'shards':
      source = self._shards(split, global_batch_size, process_index,
                            process_count)
    else:
      source = data_lib.build(self.config.data, split=split,
                              global_batch_size=global_batch_size,
                              process_index=process_index,
                              process_count=process_count)
    generator_checks.check_data_classes(self.config.model, source, split)
    data_classes = getattr(source, 'num_classes', None)
    if (self.num_classes and data_classes and
        data_classes < self.num_classes and self._data_classes is None and
        jax.process_index() == 0):
      print(
          f'vqlab: model.num_classes = {self.num_classes}, but the data has '
          f'{data_classes} classes: classes {data_classes} to '
          f'{self.num_classes - 1} train on nothing here, and samples (their '
          f'gFID and IS) cycle through the data\'s {data_classes}', flush=True)
    self._data_classes = data_classes or self._data_classes
    if self.text is not None:
      source = text_conditions.CaptionsToIds(source, self.text)
    return source

  def _shards(self, split, global_batch_size, process_index, process_count):
    directory = self.tokens_directory
    source = token_shards.TokenSource(directory, split,
                                      global_batch_size=global_batch_size,
                                      process_index=process_index,
                                      process_count=process_count,
                                      seed=self.config.data.get('seed', 0))
    recorded = source.metadata['tokenizer']
    fix = []
    # A run elsewhere is the same tokenizer only by its params' checksum
    # (a moved run): another run of the same config and step would decode
    # these tokens wrong, silently. Shards of older vqlab record none.
    moved = (recorded.get('checksum') is not None and
             recorded['checksum'] == self.tokenizer.checksum)
    if not moved and fileio.absolute(recorded['workdir']) != fileio.absolute(
        self.tokenizer.workdir):
      fix.append(f'tokenizer.workdir = {recorded["workdir"]}')
    if recorded['step'] != self.tokenizer.step:
      fix.append(f'tokenizer.step = {recorded["step"]}')
    if fix:
      raise ConfigError(
          'tokens.dir', f'{directory} holds tokens of the tokenizer in '
          f'{recorded["workdir"]} at step {recorded["step"]}, but '
          f'tokenizer.workdir/step name {self.tokenizer.workdir} at step '
          f'{self.tokenizer.step}: set {" and ".join(fix)} to train on these '
          'tokens, or run --mode=tokenize again into another tokens.dir '
          '(a tokenizer run that was moved is the same one: its params are '
          'checked, not its path)')
    generator_checks.check_shards_data(source.metadata.get('data', {}),
                                       self.config.data, directory)
    recorded = source.metadata.get('condition', {'image': 'none'})
    wanted = self.condition_metadata()
    if recorded != wanted:
      raise ConfigError(
          'tokens.dir', f'{directory} holds tokens made with condition '
          f'{recorded}, this config has {wanted}: run --mode=tokenize again '
          'into another tokens.dir')
    return source

  def tokens_of(self, batch, frozen) -> jax.Array:
    """The batch's tokens: from the shards, or encoded by the tokenizer."""
    if 'tokens' in batch:
      return batch['tokens']
    indices = self.tokenizer.encode(frozen['tokenizer'],
                                    batch[_input_key(batch)])
    return jax.lax.stop_gradient(indices)

  def condition_metadata(self) -> dict[str, Any]:
    """What token shards record of the spatial condition (compared on use)."""
    return generator_checks.condition_metadata(
        self.config,
        self.cond_tokenizer if self._cond_key == 'cond_tokenizer' else None)

  def cond_tokens_of(self, batch, frozen) -> jax.Array:
    """Spatial condition tokens int [B, cond_length]: from the shards, or
    the condition tokenizer's codes of the batch's condition images."""
    if token_shards.COND_TOKENS in batch:
      tokens = batch[token_shards.COND_TOKENS]
    else:
      images = spatial_conditions.condition_images(batch[_input_key(batch)],
                                                   self.config.condition)
      tokens = jax.lax.stop_gradient(
          self.cond_tokenizer.encode(frozen[self._cond_key], images))
    return tokens.reshape(tokens.shape[0], -1).astype(jnp.int32)

  def _condition(self, batch, frozen):
    """The model's condition: labels [B], a text condition, spatial
    condition tokens [B, cond_length], or None."""
    if self.text is not None:
      return self.text.condition(batch, frozen)
    if self.spatial:
      return self.cond_tokens_of(batch, frozen)
    if not self.num_classes:
      return None
    if 'label' not in batch:
      raise ConfigError(
          'model.num_classes', f'{self.num_classes} classes, '
          'but the data has no labels')
    return batch['label'].astype(jnp.int32)

  # -------------------------------------------------------------- init ---
  def init(self, rng: jax.Array, batch) -> TrainState:
    """Fresh TrainState; only shapes of `batch` matter."""
    del batch
    tokens = jnp.zeros(
        (1,) + self.token_shape + ((len(self.tokenizer.factor_vocab_sizes),)
                                   if self.tokenizer.factor_vocab_sizes else
                                   ()), jnp.int32)
    if self.text is not None:
      cond = self.text.placeholder(1)
    elif self.spatial:
      cond = jnp.zeros((1, self.cond_spec.length), jnp.int32)
    else:
      cond = jnp.zeros((1,), jnp.int32) if self.num_classes else None
    params = self.api.init(self.model, rng, tokens, cond)
    ema = {'model': params} if self.config.ema.decay > 0 else {}
    loss_state = self.api.init_loss_state(self.model)
    return TrainState(step=jnp.zeros((), jnp.int32), params={'model': params},
                      opt_state={'model': self.tx['model'].init(params)},
                      model_state={}, ema_params=ema, loss_state=loss_state)

  # -------------------------------------------------------------- step ---
  def train_step(self, state: TrainState, batch, rng, frozen=None):
    """One optimizer step -> (new state, metrics).

    In microbatches, a loss that is a mean over a number of terms that the
    draws decide (metrics['loss_weight']: MaskGIT's masked tokens) is summed
    over each microbatch's terms and divided by the batch's: the mean over
    the whole batch's terms, as in one piece.
    """
    frozen = self.frozen if frozen is None else frozen
    in_pieces = self.config.train.microbatches > 1

    def grads_fn(microbatch, rng, carry):
      tokens = self.tokens_of(microbatch, frozen)
      labels = self._condition(microbatch, frozen)

      def loss_fn(params):
        # Every microbatch draws from the step's loss state, as one batch.
        loss, metrics, updates = self.api.loss(self.model, params, tokens,
                                               labels, rng,
                                               settings=self.config.loss,
                                               train=True,
                                               loss_state=state.loss_state)
        if in_pieces and 'loss_weight' in metrics:
          metrics = _weighted_sums(metrics)
          loss = loss * jax.lax.stop_gradient(metrics['loss_weight'])
        return loss, (metrics, updates)

      grads, (metrics, updates) = jax.grad(loss_fn,
                                           has_aux=True)(state.params['model'])
      return grads, carry, metrics, updates

    grads, _, metrics, updates = base.accumulate_gradients_and_outputs(
        grads_fn, batch, rng, None, self.config.train.microbatches)
    if in_pieces and 'loss_weight' in metrics:
      grads = jax.tree.map(lambda g: g / metrics['loss_weight'], grads)
      metrics = _weighted_means(metrics, self.config.train.microbatches)
    loss_state = self.api.update_loss_state(state.loss_state, updates)
    metrics['learning_rate'] = optimizers.learning_rate(
        state.opt_state['model'], self.config.optimizer,
        self.config.train.num_steps)
    state, norms = base.apply_gradients(state, {'model': grads}, self.tx,
                                        self.config.ema.decay,
                                        ema_warmup=self.config.ema.warmup,
                                        loss_state=loss_state)
    metrics['grad_norm'] = norms['model']
    return state, metrics

  # -------------------------------------------------------------- eval ---
  def eval_params(self, state: TrainState):
    """The params eval and sampling use: the EMA copy when `ema.decay > 0`."""
    if self.config.ema.decay > 0:
      return state.ema_params['model']
    return state.params['model']

  def eval_step(self, state: TrainState, batch, frozen=None, rng=None):
    """Eval loss of one batch, summed over real examples (or over the weight
    its means are over: MaskGIT's masked tokens). Its masks (MaskGIT) or
    timesteps (VQ-Diffusion) are drawn from `rng` (None: key(0)).

    Returns:
      ({'sums': {'loss', 'accuracy', 'loss_weight', 'count'} (and
      'accuracy_weight' where the loss reports one), 'mask': [B]}, {}).
    """
    frozen = self.frozen if frozen is None else frozen
    mask = batch['mask'].astype(jnp.float32)
    _, metrics, _ = self.api.loss(self.model, self.eval_params(state),
                                  self.tokens_of(batch, frozen),
                                  self._condition(batch, frozen),
                                  jax.random.key(0) if rng is None else rng,
                                  settings=self.config.loss, train=False,
                                  example_weights=mask,
                                  loss_state=state.loss_state)
    count = jnp.sum(mask)
    # Means over the real examples, unless the loss says over which terms.
    means = {'loss_weight': count}
    means.update((k, v)
                 for k, v in metrics.items()
                 if k in ('loss', 'accuracy', 'loss_weight', 'accuracy_weight'))
    return {'sums': {**_weighted_sums(means), 'count': count}, 'mask': mask}, {}

  def summarize_eval(self, acc) -> dict[str, float]:
    """{'loss', 'accuracy', 'num_examples'} over the eval set from an
    `EvalAccumulator` of `eval_step` sums (means by their weights; 0.0 when
    a weight is 0)."""
    sums = {k: float(v) for k, v in acc.sums.items()}
    mean = lambda key: (sums[key] / _weight_of(sums, key)
                        if _weight_of(sums, key) else 0.0)
    return {
        'loss': mean('loss'),
        'accuracy': mean('accuracy'),
        'num_examples': sums['count']
    }

  # ---------------------------------------------------------- sampling ---
  def sample_conditions(self, start: int, batch_size: int):
    """Host conditions of samples start .. start + B - 1: class labels int
    [B] (cycling through `sample_classes`, or with sample.labels 'train'
    those of random training examples: `sample_labels`), text arrays of the
    prompts (cycling), condition tokens int [B, cond_length] of the eval
    split's examples (cycling), or None."""
    index = np.arange(start, start + batch_size)
    if self.spatial:
      tokens = self.eval_cond_tokens()
      return tokens[index % len(tokens)]
    if self.text is not None:
      prompts = self.prompts(start + batch_size)
      return self.text.host_arrays([prompts[i % len(prompts)] for i in index])
    if not self.num_classes:
      return None
    if self.config.sample.labels == 'train':
      return sample_labels.drawn(self.train_labels(), self.config.sample.seed,
                                 index)
    return (index % self.sample_classes).astype(np.int32)

  def train_labels(self) -> np.ndarray:
    """int32 [N]: the labels of the token shards' train split (read once),
    which sample.labels 'train' draws from."""
    if self._train_labels is None:
      with data_lib.data_errors():
        self._train_labels = sample_labels.load_train(self.tokens_directory)
    return self._train_labels

  @property
  def sample_classes(self) -> int:
    """How many classes sample labels cycle through: the data's when it has
    fewer than the model (the rest never trained), else the model's (e.g. a
    converted ImageNet model sampled beside unlabelled data); 0: none."""
    if self.num_classes and self._data_classes:
      return min(self.num_classes, self._data_classes)
    return self.num_classes

  def prompts(self, count: int = 0) -> list[str]:
    """`sample.prompts`, or the eval split's captions in order: its first
    batch's, and more batches' until there are `count` (or the split ends;
    samples cycle through them)."""
    if self.config.sample.prompts:
      return list(self.config.sample.prompts)
    if self._prompts is None:
      source = data_lib.build(self.config.data, split='eval',
                              global_batch_size=self.config.eval.batch_size)
      self._prompts, self._caption_batches = [], iter(source.batches())
    while self._caption_batches is not None and (not self._prompts or
                                                 len(self._prompts) < count):
      batch = next(self._caption_batches, None)
      if batch is None:  # The split's end.
        self._caption_batches = None
        break
      self._prompts += [
          str(c)
          for c, m in zip(batch[text_conditions.CAPTION], batch['mask'])
          if m
      ]
    return self._prompts

  def eval_cond_tokens(self) -> np.ndarray:
    """int32 [N, cond_length]: condition tokens of the eval split's
    examples in order (the shards', or encoded here; on the fly at most
    max(sample.num_samples, eval.batch_size) of them)."""
    if self._eval_cond_tokens is None:
      if self.config.tokens.source == 'shards':
        arrays, _ = token_shards.load_split(self.tokens_directory, 'eval')
        tokens = arrays[token_shards.COND_TOKENS]
      else:
        wanted = max(self.config.sample.num_samples,
                     self.config.eval.batch_size)
        source = data_lib.build(self.config.data, split='eval',
                                global_batch_size=self.config.eval.batch_size)
        encode = jax.jit(
            lambda v, x: self.cond_tokens_of({'image': x}, {self._cond_key: v}))
        parts, count = [], 0
        for batch in source.batches():
          mask = np.asarray(batch['mask'], bool)
          codes = np.asarray(
              encode(self.cond_tokenizer.variables,
                     batch[_input_key(batch)]))[mask]
          parts.append(codes)
          count += len(codes)
          if count >= wanted:
            break
        tokens = np.concatenate(parts)
      self._eval_cond_tokens = np.asarray(tokens,
                                          np.int32).reshape(len(tokens), -1)
    return self._eval_cond_tokens

  def sample_tokens(self, params, rng, batch_size: int, cond=None, known=None):
    """Generated tokens [B, *grid(, F)] with the `sample` settings; grid is
    sample.grid_shape, or the training token shape. known: None, or
    (tokens [B, *token_shape(, F)], mask bool [*token_shape]) given."""
    tokens = self.api.sample(self.model, params, rng, batch_size, cond,
                             settings=self.config.sample,
                             loss_settings=self.config.loss,
                             token_shape=self.token_shape, known=known)
    factor_axes = ((len(self.tokenizer.factor_vocab_sizes),)
                   if self.tokenizer.factor_vocab_sizes else ())
    grid = tuple(self.config.sample.grid_shape) or self.token_shape
    return partitioning.split_over_batch(
        tokens.reshape((batch_size,) + grid + factor_axes))

  def sample_images(self, state: TrainState, rng, cond, frozen=None,
                    batch_size: int | None = None, observed=None):
    """Samples decoded by the tokenizer: [B, (T,) H, W, C] in [-1, 1].

    cond: what `sample_conditions` returns (on the devices). observed:
    clips [B, T, H, W, C] whose first sample.observed_frames latent frames
    are given (frame prediction), or None.
    """
    frozen = self.frozen if frozen is None else frozen
    if cond is not None:
      batch_size = jax.tree.leaves(cond)[0].shape[0]
      if self.text is not None:
        cond = self.text.condition(cond, frozen)
    known = None
    if observed is not None:
      batch_size = observed.shape[0]
      known = (self.tokenizer.encode(frozen['tokenizer'], observed),
               maskgit.frame_prefix_mask(self.token_shape,
                                         self.config.sample.observed_frames))
    tokens = self.sample_tokens(self.eval_params(state), rng, batch_size, cond,
                                known)
    return self.tokenizer.decode(frozen['tokenizer'], tokens)

  def observed_pixel_frames(self, num_frames: int) -> int:
    """Pixel frames that sample.observed_frames latent frames cover in a
    clip of num_frames: the causal tokenizer's first latent frame is pixel
    frame 0, each later one the next (T - 1) / (T' - 1) frames."""
    latent = self.token_shape[0]
    per_latent = (num_frames - 1) // max(latent - 1, 1)
    return 1 + (self.config.sample.observed_frames - 1) * per_latent

  def eval_clips(self, batch_size: int):
    """Yields (clips float [B, T, H, W, C], labels int [B] or None): the
    eval split's clips in order, padding left out, cycling (a batch that
    spans the end of the split goes on with its first clips)."""
    clips, labels = [], []
    # Built once: a folder dataset probes its files when built.
    source = data_lib.build(self.config.data, split='eval',
                            global_batch_size=self.config.eval.batch_size)
    while True:
      seen = 0
      for batch in source.batches():
        mask = np.asarray(batch['mask'], bool)
        seen += int(mask.sum())
        clips.extend(np.asarray(batch[_input_key(batch)])[mask])
        labels.extend(np.asarray(batch.get('label', np.zeros(len(mask))))[mask])
        while len(clips) >= batch_size:
          yield (np.stack(clips[:batch_size]),
                 np.asarray(labels[:batch_size], np.int32)
                 if self.num_classes else None)
          clips, labels = clips[batch_size:], labels[batch_size:]
      if seen < batch_size:
        raise ValueError(f'frame prediction: the eval split has {seen} clips, '
                         f'fewer than sample.batch_size {batch_size}')

  @staticmethod
  def image_rows(images: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """Rows of the eval picture: samples (videos: one row of frames each)."""
    samples = images['samples']
    if samples.ndim == 4:
      return [samples[i:i + n] for i in range(0, min(len(samples), 2 * n), n)]
    return [clip[:n] for clip in samples[:4]]


def _input_shape(
    config: ml_collections.ConfigDict, workdir: str,
    tokenizer: trained_tokenizer.TrainedTokenizer) -> tuple[int, ...]:
  """The shape of one tokenized example: the shards' record, else the data
  section's [(T,) H, W, C]."""
  if config.tokens.source == 'shards' and workdir:
    metadata = token_shards.read_metadata(
        generator_checks.tokens_dir(config, workdir))
    if metadata is not None:
      return tuple(metadata['input_shape'])
  data = config.data
  size, channels = data.image_size, tokenizer.model.in_channels
  if 'num_frames' in data:
    return (data.num_frames, size, size, channels)
  return (size, size, channels)


def _check_sample_grid(grid_shape: tuple[int, ...],
                       token_shape: tuple[int, ...]) -> None:
  """A sliding-window grid holds the training grid, its window."""
  if not grid_shape:
    return
  grid = tuple(grid_shape)
  if len(token_shape) != 2 or any(g < t for g, t in zip(grid, token_shape)):
    raise ConfigError(
        'sample.grid_shape',
        f'{grid} must hold the training token grid {token_shape}, the '
        'sliding window (a 2D grid)')


def _check_observed_frames(key: str, observed: int,
                           token_shape: tuple[int, ...]) -> None:
  if observed and not (len(token_shape) == 3 and observed < token_shape[0]):
    raise ConfigError(
        key, f'{observed}, but the tokens have shape {token_shape}: frame '
        'prediction needs video tokens (T, H, W) and fewer observed latent '
        'frames than T')


def build(config: ml_collections.ConfigDict,
          workdir: str = '') -> GeneratorTask:
  """The task with what it reads from disk: the tokenizer run (checked
  against the model), the text encoder of text models, Inception for FID."""
  tokenizer = trained_tokenizer.load(config.tokenizer.workdir,
                                     config.tokenizer.step,
                                     step_key='tokenizer.step')
  if workdir or config.tokens.dir:
    generator_checks.check_shards_tokenizer(
        generator_checks.tokens_dir(config, workdir), tokenizer)
  cond_tokenizer = condition_tokenizer(config)
  token_shape = generator_checks.check_model_fits(
      config.model, tokenizer, _input_shape(config, workdir, tokenizer),
      cond_tokenizer)
  _check_sample_grid(config.sample.grid_shape, token_shape)
  for key in ('sample.observed_frames', 'loss.observed_frames'):
    _check_observed_frames(key, config[key], token_shape)
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  text = (text_conditions.TextConditioner(config)
          if spec.kind == 'text' else None)
  directory = config.weights_dir or None
  networks = (['inception'] if frozen_lib.wanted('inception', config.eval.fid,
                                                 directory) else [])
  if frozen_lib.fvd_usable(config) and frozen_lib.wanted(
      'i3d', config.eval.fvd, directory):
    networks.append('i3d')
  task = GeneratorTask(
      config, tokenizer=tokenizer, token_shape=token_shape, text=text,
      frozen=frozen_lib.load(networks, directory),
      tokens_directory=generator_checks.tokens_dir(config, workdir),
      cond_tokenizer=cond_tokenizer)
  if config.sample.labels == 'train' and task.num_classes:
    task.train_labels()  # Shards without labels stop here, before any work.
  return task
