"""The one interface the generator task uses: a `GeneratorApi` per generator.

Each generator module defines `API = api.GeneratorApi(...)` and registers it
with its name in `vqlab.generators` (`generators.api(name)`), so a task
trains, samples and checks any generator without knowing which it is.

A condition `cond` is None, class labels int [B], condition tokens int
[B, length] (a spatially conditioned GPT), or for text a dict
{'states' [B, L, D] (frozen encoder) or 'ids' [B, L] (trainable), 'mask'}.
"""

from collections.abc import Mapping
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.errors import ConfigError

CONDITION_KINDS = ('none', 'class', 'tokens', 'text')


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
  """What condition a generator config takes.

  Attributes:
    kind: one of CONDITION_KINDS.
    num_classes: 'class': the classes (the null class is extra); else 0.
    length: 'tokens': condition tokens per example; else 0.
    vocab_size: 'tokens': codes of the condition tokens; else 0.
  """
  kind: str = 'none'
  num_classes: int = 0
  length: int = 0
  vocab_size: int = 0

  def __post_init__(self):
    if self.kind not in CONDITION_KINDS:
      raise ValueError(f'ConditionSpec.kind: must be one of '
                       f'{list(CONDITION_KINDS)}, got {self.kind!r}.')


# {model key: the model.condition values that read it}.
ConditionKeys = dict[str, tuple[str, ...]]


def unread_condition_keys(config: Any, read_by: ConditionKeys) -> set[str]:
  """The keys of `read_by` (key -> the model.condition values that read it)
  that model config `config` (a ConfigDict or a config.json dict) ignores."""
  return {
      k for k, conditions in read_by.items()
      if config.get('condition') not in conditions
  }


def check_condition_keys(config: ml_collections.ConfigDict,
                         defaults: ml_collections.ConfigDict,
                         read_by: ConditionKeys) -> None:
  """ConfigError for a model key that only other conditions read (`read_by`:
  key -> the model.condition values that read it) set off its default: the
  model would ignore it (e.g. num_classes without condition 'class')."""
  for key in sorted(unread_condition_keys(config, read_by)):
    conditions = read_by[key]
    if config[key] != defaults[key]:
      raise ConfigError(
          f'model.{key}', f'{config[key]!r}, but model.condition '
          f'{config.condition!r} ignores it (condition '
          f'{" or ".join(map(repr, conditions))} reads it); leave it at '
          f'{defaults[key]!r}')


def check_ids(ids: Any, upper: int, what: str) -> None:
  """Raises ValueError if concrete `ids` fall outside [0, upper).

  Values of traced arrays (inside jit, scan, ...) cannot be checked; there
  an embedding lookup reads NaN for an id past its table and wraps -1 to
  its last row (the task checks its data's ids where it can:
  `GeneratorTask.data_source`).
  """
  if isinstance(ids, jax.core.Tracer):
    return
  ids = np.asarray(ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'{what} must be integers, got dtype {ids.dtype}')
  if ids.size and (ids.min() < 0 or ids.max() >= upper):
    raise ValueError(f'{what} must lie in [0, {upper}); got values in '
                     f'[{ids.min()}, {ids.max()}]')


def check_class_ids(labels: Any, batch: int, num_classes: int,
                    who: str) -> None:
  """Raises ValueError unless `labels` is [batch] ids in [0, num_classes]
  (num_classes: the null class)."""
  if isinstance(labels, Mapping):
    raise ValueError(f'{who}: a class condition is int [B] labels, got a dict '
                     f'with keys {sorted(labels)}')
  if np.shape(labels) != (batch,):
    raise ValueError(f'{who}: class ids must have shape [B] = ({batch},), '
                     f'got {np.shape(labels)}')
  check_ids(
      labels, num_classes + 1, f'{who}: class ids (num_classes={num_classes}, '
      f'null class {num_classes})')


def _no_loss_state(model: Any) -> dict[str, jax.Array]:
  del model
  return {}


def _keep_loss_state(loss_state: Any, loss_updates: Any) -> Any:
  del loss_updates
  return loss_state


def _no_settings_checks(config: ml_collections.ConfigDict) -> None:
  del config


def _reads_no_settings(config: ml_collections.ConfigDict) -> frozenset[str]:
  del config
  return frozenset()


@dataclasses.dataclass(frozen=True)
class GeneratorApi:
  """A generator's functions; `model` is what its registered builder built.

  Attributes:
    condition_spec: (model config) -> ConditionSpec.
    check_fits: (model config, tokenizer, token_shape, where) -> None;
      ConfigError naming the model key when the model does not take the
      tokenizer's codes: `tokenizer` has `vocab_size` and
      `factor_vocab_sizes`, token_shape is the shape of one example's codes
      (factor axis excluded) and `where` names the tokenizer in messages.
      The vocab size itself is checked by the caller.
    init: (model, rng, tokens, cond) -> params; tokens int
      [B, *token_shape(, F)] and cond of the spec's kind, batch B.
    loss: (model, params, tokens, cond, rng, *, settings, train,
      example_weights=None, loss_state=None) -> (loss, metrics, updates).
      settings: the task's `loss` section; with train, the condition is
      replaced by the null one per example with probability
      settings.label_drop (classifier-free guidance). example_weights:
      float [B] or None. metrics has at least 'loss' and 'accuracy'
      (scalars), and 'loss_weight' (the total weight those two average
      over, e.g. MaskGIT's masked tokens) when they are not means over the
      examples: eval weighs each batch by it. updates: what the train step
      passes to update_loss_state, a pytree of per-example arrays [B, ...]
      (or None); loss_state is the step's, the same for every microbatch.
    sample: (model, params, rng, batch_size, cond, *, settings,
      loss_settings, token_shape, known=None) -> int tokens [B, ...]
      (reshaped by the caller to [B, *grid(, F)], grid = settings.grid_shape
      or token_shape); settings: the task's `sample` section, loss_settings
      its `loss` section, token_shape the token grid of one training
      example; known: None, or (tokens int [B, *token_shape(, F)], mask
      bool [*token_shape]) of given tokens to keep and condition on (a
      generator whose settings_read lacks 'sample.observed_frames' never
      gets one).
    init_loss_state: (model) -> the loss state of a fresh run (default {}).
    update_loss_state: (loss_state, updates) -> the loss state after the
      step, once per step with the updates of the whole batch in its order
      (microbatches' concatenated back; default: unchanged).
    check_settings: (task config) -> None; ConfigError naming the key when
      the task's `loss` / `sample` settings do not suit this generator.
    settings_read: (task config) -> the dotted keys of the task's `loss`
      and `sample` sections that this generator reads with this config
      (its condition, and for some keys other settings, decide). The task
      refuses any other key of those sections set away from its default:
      it would be silently ignored.
    condition_keys: {model key: the model.condition values that read it}
      for the model keys only some conditions read (`check_condition_keys`).
    eval_draws: whether the eval loss draws at random (MaskGIT's masks,
      VQ-Diffusion's timesteps) with one key per eval batch, so that the
      eval's numbers depend on eval.batch_size.
  """
  condition_spec: Callable[[ml_collections.ConfigDict], ConditionSpec]
  check_fits: Callable[..., None]
  init: Callable[..., Any]
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]]
  sample: Callable[..., jax.Array]
  init_loss_state: Callable[[Any], Any] = _no_loss_state
  update_loss_state: Callable[[Any, Any], Any] = _keep_loss_state
  check_settings: Callable[[ml_collections.ConfigDict],
                           None] = (_no_settings_checks)
  settings_read: Callable[[ml_collections.ConfigDict],
                          frozenset[str]] = _reads_no_settings
  condition_keys: ConditionKeys = dataclasses.field(default_factory=dict)
  eval_draws: bool = False


def drop_mask(rng: jax.Array, probability: float, cond: Any,
              train: bool) -> jax.Array | None:
  """bool [B]: examples whose condition becomes the null one, or None
  (no condition, not training or probability 0)."""
  if cond is None or not train or probability <= 0:
    return None
  batch = jax.tree.leaves(cond)[0].shape[0]
  return jax.random.bernoulli(rng, probability, (batch,))


def guided_logits(cond: jax.Array, uncond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance: l_u + (1 + w)(l_c - l_u) (MaskGIT's w).

  cond, uncond: logits of the same shape; scale: w, a scalar.
  """
  return uncond + (1.0 + scale) * (cond - uncond)


# The domain of each sampling setting of the Python API (the config's are
# checked by vqlab/train/domains.py): (test, what it must be).
_SAMPLING_DOMAINS = {
    'temperature': (lambda v: v >= 0, '>= 0'),
    'choice_temperature': (lambda v: v >= 0, '>= 0'),
    'guidance_scale': (lambda v: v >= 0, '>= 0'),
    'truncation': (lambda v: v > 0, '> 0 (1 keeps every code)'),
    # Below 0 the purest positions would draw from a flattened or inverted
    # distribution.
    'purity_weight': (lambda v: v >= 0, '>= 0'),
    'batch_size': (lambda v: v >= 1, '>= 1'),
}


def check_sampling_settings(**settings: Any) -> None:
  """ValueError naming a sampling setting (a keyword of _SAMPLING_DOMAINS:
  temperature, choice_temperature, guidance_scale, purity_weight >= 0;
  truncation > 0; batch_size >= 1) whose concrete value is out of its domain: a negative
  temperature would sample from the inverted distribution, a truncation of
  0 from a uniform one. Traced values cannot be checked."""
  for name, value in settings.items():
    if isinstance(value, jax.core.Tracer):
      continue
    within, domain = _SAMPLING_DOMAINS[name]
    if not np.all(within(np.asarray(value, np.float64))):
      raise ValueError(f'{name} must be {domain}, got {value!r}')


def check_guidance_condition(guidance_scale: Any, cond: Any, who: str, *,
                             conditional: bool) -> None:
  """ValueError when a concrete guidance_scale != 0 comes without a
  condition (cond None) or for a model that takes none (`conditional`
  False): guidance moves the conditional prediction away from the
  unconditional one, and without a condition both are the null one, so the
  samples would be unguided, silently."""
  if (isinstance(guidance_scale, jax.core.Tracer) or
      not np.any(np.asarray(guidance_scale) != 0)):
    return
  if not conditional:
    raise ValueError(f'{who}: guidance_scale={guidance_scale!r} needs a '
                     'conditional model, and this one takes no condition: '
                     'pass guidance_scale=0')
  if cond is None:
    raise ValueError(
        f'{who}: guidance_scale={guidance_scale!r} needs a condition to '
        'guide towards, and none was given (None): pass the class labels (or '
        'text) or guidance_scale=0')


def draw_or_argmax(
    rng: jax.Array, logits: jax.Array, temperature,
    transform: Callable[[jax.Array], jax.Array] = lambda x: x) -> jax.Array:
  """int32 [...]: a draw from softmax(transform(logits / temperature)) over
  the last axis of logits [..., V], or at temperature 0 its argmax. A
  Python number decides when traced; an array (traced too) picks per call,
  so a temperature of jnp.float32(0) is the argmax as 0 is (logits / 0
  would draw the first positive logit)."""
  if isinstance(temperature, (int, float)):
    if temperature == 0:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(rng, transform(logits / temperature))
  temperature = jnp.asarray(temperature, jnp.float32)
  zero = temperature == 0
  drawn = jax.random.categorical(
      rng, transform(logits / jnp.where(zero, 1.0, temperature)))
  return jnp.where(zero, jnp.argmax(logits, -1), drawn).astype(jnp.int32)


def check_token_grid(config: ml_collections.ConfigDict, tokenizer: Any,
                     token_shape: tuple[int, ...], where: str, *,
                     factors_key: str) -> None:
  """`check_fits` of a model over the tokenizer's token grid: its
  config.token_shape and factor_vocab_sizes (() without the key) must be
  the tokenizer's; factors_key is the key a factor mismatch names."""
  factors = tuple(config.get('factor_vocab_sizes', ()))
  if factors != tokenizer.factor_vocab_sizes:
    raise ConfigError(
        factors_key, f'{factors}, but {where} gives factorized '
        f'codes {tokenizer.factor_vocab_sizes}')
  if tuple(config.token_shape) != token_shape:
    raise ConfigError(
        'model.token_shape',
        f'{tuple(config.token_shape)}, but {where} turns the '
        f'data into tokens of shape {token_shape}')
