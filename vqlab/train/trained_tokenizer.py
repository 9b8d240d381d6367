"""A trained tokenizer run, loaded to encode images into tokens and decode
generated tokens back to pixels (stage 2: generators).

A tokenizer run is addressed by its --workdir: `config.json` there is the
run's full config and `checkpoints/` its Orbax checkpoints.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import checks
from vqlab import fileio
from vqlab import tokenizers
from vqlab.errors import CheckpointError
from vqlab.errors import ConfigError
from vqlab.nn import stack
from vqlab.quantizers import base as quantizer_base
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import state_mismatch


@dataclasses.dataclass(frozen=True)
class TrainedTokenizer:
  """A tokenizer model with its trained variables.

  Attributes:
    model: the tokenizer module (built from the run's `model` config).
    variables: {'params': ..., **model_state} on one device (the EMA params
      when the run kept an EMA, as its eval did).
    config: the run's full config (from its config.json).
    workdir: the run's directory. step: the checkpoint step loaded.
  """
  model: nn.Module
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  workdir: str
  step: int

  @property
  def vocab_size(self) -> int:
    """Codes per token (the product of the factors' for factorized codes)."""
    return int(self.model.quantizer.codebook_size)

  @property
  def factor_vocab_sizes(self) -> tuple[int, ...]:
    """Codes per factor for factorized indices ([..., F]), else ()."""
    if not quantizer_base.num_index_axes(self.model.quantizer):
      return ()
    return tuple(2**int(b) for b in self.model.quantizer.factor_bits)

  def whole_codes(self, indices: Any) -> np.ndarray:
    """Indices [B, *token_shape(, F)] -> int32 [B, *token_shape]: factorized
    codes joined into one code each (factor 0 the low bits), others as
    they are."""
    return np.asarray(
        quantizer_base.full_code_indices(self.model.quantizer,
                                         jnp.asarray(indices)), np.int32)

  def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one example's tokens for one input of `input_shape`
    ([H, W, C] or [T, H, W, C]), factor axis excluded."""
    shape = _indices_shape(self.model, tuple(input_shape), self.variables)
    return shape[:-1] if self.factor_vocab_sizes else shape

  def encode(self, variables, x: jax.Array) -> jax.Array:
    """x [B, (T,) H, W, C] in [-1, 1] -> int32 indices [B, *token_shape(, F)].

    A 1D tokenizer (TiTok) takes pictures of its training size only: its
    tokens do not record a picture's size, and `decode` gives that size.
    Concrete pixels far outside [-1, 1] (0..255 floats) are refused; inside
    jax.jit they cannot be seen.
    """
    checks.check_pixel_range(x, self.workdir)
    if self.config.model.name == 'titok':
      height, width = np.broadcast_to(self.config.model.image_size, (2,))
      if tuple(jnp.shape(x)[-3:-1]) != (height, width):
        raise ValueError(
            f'{self.workdir}: a TiTok tokenizer encodes pictures of its '
            f'training size {height}x{width} (its 1D tokens do not record a '
            f'size, and decode gives {height}x{width}), got pictures of '
            f'shape {tuple(jnp.shape(x))}: resize them to {height}x{width}')
    indices, _ = self.model.apply(variables, x, method=self.model.encode)
    return indices.astype(jnp.int32)

  def decode(self, variables, indices: jax.Array) -> jax.Array:
    """int indices [B, *token_shape(, F)] -> pixels [B, (T,) H, W, C] in [-1, 1].

    Ids out of range are refused when `indices` are concrete; inside jax.jit
    they cannot be seen and give NaN pixels or wrap to another code (-1 to
    the last; FSQ and LFQ ids modulo the codebook): decode ids of your own
    making once outside jit, which checks them.
    """
    x = self.model.apply(variables, indices, method=self.model.decode_indices)
    return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

  @functools.cached_property
  def checksum(self) -> str:
    """A digest of the variables: tells the checkpoint a record was made with
    from another one saved at the same step (the run trained again)."""
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.variables)[0]:
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()

  def metadata(self) -> dict[str, Any]:
    """What a generator run records about the tokenizer it was built on."""
    return {
        'workdir': fileio.absolute(self.workdir),
        'step': self.step,
        'checksum': self.checksum,
        'name': self.config.model.name,
        'vocab_size': self.vocab_size,
        'factor_vocab_sizes': list(self.factor_vocab_sizes),
        'model': json.loads(self.config.model.to_json_best_effort())
    }


def is_record(recorded: Any) -> bool:
  """Whether `recorded` (read from a JSON file) has the form of
  `TrainedTokenizer.metadata()`: {'workdir': str, 'step': int, 'checksum':
  str or None (older vqlab)}."""
  return (isinstance(recorded, dict) and
          isinstance(recorded.get('workdir'), str) and
          isinstance(recorded.get('step'), int) and
          isinstance(recorded.get('checksum'), (str, type(None))))


def check_same_params(recorded: dict[str, Any] | None, tok: TrainedTokenizer,
                      key: str, made_with: str, remedy: str) -> None:
  """ConfigError naming config key `key` when `recorded` (`metadata()` of
  the tokenizer something was made with: {'workdir', 'step', 'checksum'})
  names `tok`'s run and step but other params: that run was trained again in
  its workdir, and the same step's codes now mean other pictures. No record,
  one without a checksum (older vqlab), or of another run or step passes.

  Args:
    recorded: the record, or None.
    tok: the tokenizer loaded now.
    key: the config key that named `tok`'s run.
    made_with: what was made with the recorded checkpoint, completing 'not
      the checkpoint ...', e.g. 'the token shards in D were made from'.
    remedy: the sentence saying what to do instead.
  """
  if (recorded and recorded.get('checksum') and
      recorded.get('step') == tok.step and
      fileio.absolute(recorded['workdir']) == fileio.absolute(tok.workdir) and
      recorded['checksum'] != tok.checksum):
    raise ConfigError(
        key, f'step {tok.step} of {tok.workdir} is not the checkpoint '
        f'{made_with} (its params differ: was that run trained again?); its '
        f'codes would mean other pictures. {remedy}')


def read_run_config(
    workdir: str, key: str = 'tokenizer.workdir') -> ml_collections.ConfigDict:
  """The config.json of a training run (named by config key `key`).

  Raises:
    CheckpointError: the file is missing or unreadable.
  """
  path = os.path.join(workdir, 'config.json')
  try:
    with fileio.open(path) as f:
      return ml_collections.ConfigDict(_as_tuples(json.load(f)))
  except FileNotFoundError as e:
    run = 'tokenizer run' if 'tokenizer' in key else 'run'
    raise CheckpointError(
        f'{path} does not exist: {key} must be the --workdir of a trained '
        f'{run}') from e
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is unreadable: {e}') from e


def _as_tuples(value: Any) -> Any:
  """config.json's lists as the tuples they were: JSON has no tuples, every
  sequence in vqlab's configs is one, and config_flags overrides only tuple
  fields on the command line (`--config.freeze=...` of a converted run)."""
  if isinstance(value, dict):
    return {key: _as_tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_as_tuples(item) for item in value)
  return value


# Traced shapes depend on the model (a hashable linen dataclass) alone, and
# tracing a tokenizer takes a second of CPU: the stage-2 builds of one process
# (train data, eval data, checks, shards) trace each model once.
@functools.lru_cache(maxsize=16)
def _param_shapes(model: nn.Module) -> dict[str, Any]:
  """The ShapeDtypeStructs of `model`'s params (its init on an example)."""
  x = tokenizers.example_image(model)
  rngs = {name: jax.random.key(0) for name in ('params', 'quantizer')}
  return jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)['params']


# {(model, input shape): indices shape}: as _param_shapes, a property of the
# model (its variables have the shapes it gives them).
_INDICES_SHAPES: dict[tuple[nn.Module, tuple[int, ...]], tuple[int, ...]] = {}


def _indices_shape(model: nn.Module, input_shape: tuple[int, ...],
                   variables: dict[str, Any]) -> tuple[int, ...]:
  """The shape of one example's indices ([*token_shape(, F)]) that `model`
  with `variables` encodes an input of `input_shape` [(T,) H, W, C] into."""
  key = (model, input_shape)
  if key not in _INDICES_SHAPES:
    x = jax.ShapeDtypeStruct((1,) + input_shape, jnp.float32)
    indices = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=model.encode)[0], variables, x)
    _INDICES_SHAPES[key] = tuple(indices.shape[1:])
  return _INDICES_SHAPES[key]


def _in_model_layout(model: nn.Module, params: dict[str, Any],
                     where: str) -> dict:
  """`params` with their repeated blocks stacked as `model` stacks them
  (vqlab.nn.stack): a run that switched model.scan_blocks or scan_layers
  keeps older steps in the other layout.

  Raises:
    CheckpointError (naming `where`): params of another model.
  """
  like = _param_shapes(model)
  mismatch = state_mismatch.describe({'params': params}, {'params': like})
  if mismatch:
    raise CheckpointError(
        f"{where}: the checkpoint's params are not those of the model its "
        f'config.json describes: {mismatch}')
  if jax.tree.structure(params) == jax.tree.structure(like):
    return params
  return stack.match_layout(params, like)


def load(workdir: str, step: int = -1, key: str = 'tokenizer.workdir',
         step_key: str = '') -> TrainedTokenizer:
  """Loads the tokenizer trained in `workdir` at `step` (-1: the newest);
  `key` and `step_key` are the config keys that named them, for errors.

  Raises:
    CheckpointError: no run, no checkpoint or a corrupt one.
    ConfigError (naming config key `key`): the run is not a tokenizer run.
  """
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
    raise TypeError(f'step must be an int (-1: the newest), got {step!r}')
  if step < -1:
    raise ValueError(f'step must be a saved step or -1 (the newest), got '
                     f'{step} (steps do not count back from the newest)')
  if not workdir:
    raise ConfigError(
        key, 'empty: set it to the --workdir of a trained tokenizer run')
  config = read_run_config(workdir, key)
  if config.get('task') != 'tokenizer' or 'model' not in config:
    raise ConfigError(
        key, f'{workdir!r} is a {config.get("task")!r} run, not a tokenizer '
        'run')
  config.model = tokenizers.validate(config.model, 'tokenizer.model')
  model = tokenizers.build_validated(config.model, prefix='tokenizer.model')
  tree, step = checkpoint_lib.restore_on_host(workdir,
                                              None if step < 0 else step,
                                              step_key)
  use_ema = config.get('ema', {}).get('decay', 0.0) > 0 and tree['ema_params']
  params = (tree['ema_params'] if use_ema else tree['params'])['generator']
  params = _in_model_layout(model, params, f'{workdir} step {step}')
  variables = {'params': params, **(tree.get('model_state') or {})}
  variables = jax.tree.map(np.asarray, variables)
  return TrainedTokenizer(model=model, variables=variables, config=config,
                          workdir=workdir, step=int(step))
