"""Whether a generator run's parts fit together: token shards, the tokenizer
runs they were made from, the data and the model (ConfigError naming the key
to change)."""

import json
import os
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
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import spatial_conditions


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


# Data keys that say where the data is or how it is read, not what the
# examples are: token shards made before a dataset moved still fit.
_DATA_KEYS_OF_NO_TOKENS = ('data_dir', 'manual_dir', 'download',
                           'shuffle_buffer')


def check_shards_data(recorded: dict[str, Any], data: ml_collections.ConfigDict,
                      directory: str) -> None:
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
