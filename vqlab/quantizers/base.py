"""The one output type every quantizer returns, and metrics shared by all."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vqlab.errors import ConfigError


@flax.struct.dataclass
class QuantizerOutput:
  """What a quantizer returns for latents `z: [..., d]`.

  Attributes:
    quantized: [..., d], forward value is the code. Gradient w.r.t. z: the
      identity (straight-through) for vq and lfq, times the bound's
      derivative for fsq; through the softmax relaxation for gumbel and
      regularized (their papers' estimators).
    indices: int32 [...] (or [..., n_factors] for factorized codes).
    loss: scalar, the quantizer's own loss terms weighted by its config.
    metrics: dict of scalars; at least `usage` (fraction of codes used in the
      batch) and `perplexity` (exp of the entropy of the batch code histogram).
    extras: dict of arrays some losses need (e.g. per-position weights), and
      under CODE_COUNTS the histograms `usage` and `perplexity` come from.
  """
  quantized: jax.Array
  indices: jax.Array
  loss: jax.Array
  metrics: dict[str, jax.Array]
  extras: dict[str, Any] = flax.struct.field(default_factory=dict)


def code_histogram(indices: jax.Array, codebook_size: int) -> jax.Array:
  """Counts of each code in `indices` (any shape): float32 [codebook_size].

  A scatter-add, so memory is O(codebook_size) even for 2^18 codes. Under jit
  with a sharded batch the sum is over the global batch.
  """
  flat = indices.reshape(-1)
  return jnp.zeros((codebook_size,), jnp.float32).at[flat].add(1.0)


# extras[CODE_COUNTS]: {suffix: histogram [K']}, whose usage and perplexity
# are the metrics 'usage<suffix>' and 'perplexity<suffix>' (suffix '' for the
# codes, '/factor<f>' for LFQ's factors). A step in microbatches sums them
# and recomputes the metrics (train_metrics, batch_code_metrics): a mean of
# the microbatches' usages is not the batch's (k microbatches of random codes
# show about 1/k of its usage).
CODE_COUNTS = 'code_counts'


def usage_and_perplexity(counts: jax.Array) -> dict[str, jax.Array]:
  """Codebook metrics from a histogram `counts: [K]`.

  Returns:
    usage: fraction of the K codes with a nonzero count.
    perplexity: exp(H(p)) with p = counts / sum(counts), in [1, K]. Computed
      with numpy in float64 when `counts` is a numpy array (an eval set's
      histogram: float32 is off in the 7th digit at 2^18 codes).
  """
  xp = np if isinstance(counts, np.ndarray) else jnp
  if xp is np:
    counts = counts.astype(np.float64)
  probs = counts / xp.maximum(counts.sum(), 1.0)
  entropy = -xp.sum(
      xp.where(probs > 0, probs * xp.log(xp.where(probs > 0, probs, 1.0)), 0.0))
  return {'usage': xp.mean(counts > 0), 'perplexity': xp.exp(entropy)}


def code_metrics(counts: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """{'usage<s>', 'perplexity<s>'} of each histogram `counts[s]` ([K'])."""
  return {
      name + suffix: value for suffix, histogram in counts.items()
      for name, value in usage_and_perplexity(histogram).items()
  }


def train_metrics(out: QuantizerOutput,
                  prefix: str = 'quantizer/') -> dict[str, Any]:
  """A task's metrics of one quantizer call: `out.metrics` under `prefix`,
  its histograms (prefix + CODE_COUNTS) in place of the usage and perplexity
  they give, which batch_code_metrics computes once for the whole step."""
  counts = out.extras.get(CODE_COUNTS, {})
  derived = {name + s for s in counts for name in ('usage', 'perplexity')}
  metrics = {prefix + k: v for k, v in out.metrics.items() if k not in derived}
  if counts:
    metrics[prefix + CODE_COUNTS] = counts
  return metrics


def batch_code_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  """A step's metrics with each '<prefix>code_counts' entry (histograms
  summed or averaged over its microbatches; the scale does not matter)
  replaced by the usage and perplexity of the whole batch."""
  out = {k: v for k, v in metrics.items() if not k.endswith(CODE_COUNTS)}
  for key, counts in metrics.items():
    if key.endswith(CODE_COUNTS):
      prefix = key[:-len(CODE_COUNTS)]
      out.update({prefix + k: v for k, v in code_metrics(counts).items()})
  return out


def straight_through(z: jax.Array, codes: jax.Array) -> jax.Array:
  """Forward value `codes`, gradient identity w.r.t. `z`."""
  return z + jax.lax.stop_gradient(codes - z)


def check_latents(z: jax.Array, dim: int, who: str) -> None:
  """Rejects latents that are not floating `[..., dim]` with a clear error."""
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f'{who}: latents must be floating point, got {z.dtype}')
  if z.ndim < 2 or z.shape[-1] != dim:
    raise ValueError(
        f'{who}: latents must have shape [..., {dim}], got {tuple(z.shape)}')


def check_indices(indices: Any, codebook_size: int, who: str) -> None:
  """Rejects non-integer indices, and out-of-range ones when they are concrete.

  `indices` has any shape, empty included (nothing to range-check).
  """
  if not jnp.issubdtype(jnp.asarray(indices).dtype, jnp.integer):
    raise TypeError(f'{who}: indices must be integers, got '
                    f'{jnp.asarray(indices).dtype}')
  if isinstance(indices, jax.core.Tracer):
    return  # Values unknown under tracing; checked when called eagerly.
  if jnp.size(indices) == 0:
    return  # No ids, none out of range.
  lo, hi = int(jnp.min(indices)), int(jnp.max(indices))
  if lo < 0 or hi >= codebook_size:
    raise ValueError(f'{who}: token id out of range [0, {codebook_size}): '
                     f'min {lo}, max {hi}')


# ----------------------------------------------------- shared by quantizers ---
# Non-param collections. The train task carries every collection the model
# creates in `TrainState.model_state` and applies the model with all of them
# mutable; its calls in one step all read the step's counter
# (`hold_step_counters`), so a schedule advances once per train step.
STATS = 'quantizer_stats'  # EMA codebook statistics (vq with ema=True).
STATE = 'quantizer_state'  # Step counter for schedules (gumbel, lfq annealing).
# A train step's batch statistics for one EMA step, gathered over its calls
# (with_pending, apply_pending); never in the TrainState.
PENDING = 'quantizer_pending'


def _ema_quantizer(model) -> Any:
  """The EMA quantizer of tokenizer `model`, else None."""
  quantizer = getattr(model, 'quantizer', None)
  return quantizer if getattr(quantizer, 'ema', False) else None


def with_pending(model, model_state: dict[str, Any]) -> dict[str, Any]:
  """`model_state` (of tokenizer `model`) with zero pending statistics when
  its quantizer learns by EMA: the step's calls then gather their batch
  statistics there instead of each making an EMA step."""
  if _ema_quantizer(model) is None or STATS not in model_state:
    return model_state
  _, pending = model.apply({STATS: model_state[STATS]},
                           method=lambda m: m.quantizer.start_pending(),
                           mutable=[PENDING])
  return {**model_state, **pending}


def mutable_collections(model_state: dict[str, Any]) -> list[str]:
  """The collections a train call may change: all, but the EMA statistics
  while the step gathers pending ones."""
  return [c for c in model_state if not (c == STATS and PENDING in model_state)]


def apply_pending(model, model_state: dict[str,
                                           Any]) -> tuple[dict[str, Any], dict]:
  """(model_state after the step's one EMA step, without the pending
  statistics; {'quantizer/restarted': fraction}); unchanged and {} when
  there are none."""
  if PENDING not in model_state:
    return model_state, {}
  state = {k: v for k, v in model_state.items() if k != PENDING}
  restarted, stats = model.apply(
      {
          STATS: state[STATS],
          PENDING: model_state[PENDING]
      }, method=lambda m: m.quantizer.apply_pending(), mutable=[STATS])
  return {**state, **stats}, {'quantizer/restarted': restarted}


def step_counter(module):
  """The `quantizer_state/step` int32 variable of `module` (0 at init), or
  None when it is applied with params alone (`{'params': ...}`, no
  `quantizer_state`): inference then reads the schedule's first value.

  Create it in `setup` (or inside an `nn.compact` method); read it with
  `advance_step_counter`.
  """
  if not (module.has_variable(STATE, 'step') or
          module.is_mutable_collection(STATE)):
    return None
  return module.variable(STATE, 'step', lambda: jnp.zeros((), jnp.int32))


def advance_step_counter(module, counter, train: bool) -> jax.Array:
  """Int32 scalar: how many train calls `module` has seen before this one.

  Increments `counter` (from `step_counter`) when `train` is true and the
  `quantizer_state` collection is mutable, as in the train task's
  `model.apply`. Schedules read this instead of a `step` argument, so callers
  need not pass the step and a restored checkpoint resumes the schedule.
  Applied with params alone (no counter), inference reads step 0: the
  schedules move loss weights and the train-time relaxation, not the codes
  of an eval call.

  Raises:
    ValueError: a train call without the counter.
  """
  if counter is None:
    if train:
      raise ValueError(
          f'{type(module).__name__}: train=True needs its step counter, the '
          f"'{STATE}' collection (apply with the model_state of init, "
          f"mutable=['{STATE}', ...])")
    return jnp.zeros((), jnp.int32)
  step = counter.value
  if train and module.is_mutable_collection(STATE):
    counter.value = step + 1
  return step


def hold_step_counters(model_state: dict[str, Any],
                       held: dict[str, Any]) -> dict[str, Any]:
  """`model_state` with the `quantizer_state` collection of `held`.

  A train step that applies the model several times (microbatches, joint
  image-video batches) gives each call the step's counters, so every call
  reads the same schedule value and the counters advance once per step.
  """
  if STATE not in held:
    return model_state
  return {**model_state, STATE: held[STATE]}


def anneal(step: jax.Array, start: float, end: float, num_steps: int,
           kind: str) -> jax.Array:
  """A scalar going from `start` (step 0) to `end` (step >= num_steps).

  Args:
    step: int scalar.
    start, end: values at the two ends.
    num_steps: length of the ramp; <= 0 means the constant `start`.
    kind: 'linear' or 'exponential' (geometric: start * (end/start)^t; both
      must then be > 0).

  Returns:
    float32 scalar.
  """
  if num_steps <= 0:
    return jnp.asarray(start, jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
  if kind == 'linear':
    return start + (end - start) * t
  if kind == 'exponential':
    return start * (end / start)**t
  raise ValueError(
      f"anneal: kind must be 'linear' or 'exponential', got {kind!r}")


def gumbel_noise(key: jax.Array, shape) -> jax.Array:
  """Standard Gumbel(0, 1) samples, float32 `shape`: -log(-log U)."""
  return jax.random.gumbel(key, shape, jnp.float32)


def safe_log(x: jax.Array) -> jax.Array:
  """log(x) with x clamped to >= 1e-30, so 0 * log(0) is 0 and grads finite."""
  return jnp.log(jnp.maximum(x, 1e-30))


def kl_to_uniform(probs: jax.Array) -> jax.Array:
  """KL(p || uniform) = sum_n p_n log(N p_n) for p: [N] (a distribution)."""
  n = probs.shape[-1]
  return jnp.sum(probs * (safe_log(probs) + jnp.log(float(n))), axis=-1)


def straight_through_lookup(indices: jax.Array, soft: jax.Array,
                            codebook: jax.Array) -> jax.Array:
  """Rows `codebook[indices]` forward, gradient of `soft @ codebook`.

  Args:
    indices: int [M] chosen codes.
    soft: [M, K] relaxed one-hot weights (e.g. a softmax) whose gradient is
      used.
    codebook: [K, d].

  Returns:
    [M, d]: `codebook[indices] + (soft - sg(soft)) @ codebook`. The second
    term is exactly zero in value (x - x = 0, and 0 @ E = 0 at any matmul
    precision), so the forward value is exactly the code rows; the gradient
    is that of one_hot(indices) @ codebook w.r.t. the codebook and of
    soft @ codebook w.r.t. soft.
  """
  delta = soft - jax.lax.stop_gradient(soft)
  return jnp.take(codebook, indices, axis=0) + delta @ codebook


class FieldError(ValueError):
  """An impossible value of a quantizer's field: `{who}: {field} {problem}`."""

  def __init__(self, who: str, field: str, problem: str):
    self.field = field
    self.problem = problem
    super().__init__(f'{who}: {field} {problem}')


def check_positive(value: float, name: str, who: str) -> None:
  """Raises FieldError unless value > 0."""
  if not value > 0:
    raise FieldError(who, name, f'must be > 0, got {value}')


def check_unread(module, name: str, reader: str, who: str) -> None:
  """Raises FieldError if field `name` is off its default while the module
  ignores it (`reader`: the setting under which it is read)."""
  default = module.__dataclass_fields__[name].default
  value = getattr(module, name)
  if value != default:
    raise FieldError(
        who, name, f'{value!r} does nothing without {reader}: leave it at '
        f'{default!r}')


def check_in_unit_interval(value: float, name: str, who: str) -> None:
  """Raises FieldError unless 0 <= value <= 1."""
  if not 0.0 <= value <= 1.0:
    raise FieldError(who, name, f'must be in [0, 1], got {value}')


def build_module(module_class, prefix: str, **fields):
  """`module_class(**fields)`; an impossible value becomes a ConfigError.

  The modules check their fields in `__post_init__` (FieldError naming the
  field); builders go through here so that main.py reports a bad quantizer
  config as one line naming the full key, `{prefix}.{field}`. ConfigError is
  a ValueError.
  """
  try:
    return module_class(**fields)
  except FieldError as e:
    raise ConfigError(f'{prefix}.{e.field}', e.problem) from None


def num_index_axes(quantizer) -> int:
  """Trailing axes `indices` has beyond the token grid: 1 for factorized
  codes ([..., n_factors]), else 0."""
  return 1 if getattr(quantizer, 'factor_bits', ()) else 0


def full_code_indices(quantizer, indices: jax.Array) -> jax.Array:
  """Indices as the quantizer returns them -> one id in [0, K) per token:
  factorized codes int [..., F] (F factors) -> int [...]; plain ids [...]
  are returned as they are."""
  if num_index_axes(quantizer):
    return quantizer.full_indices(indices)
  return indices


def every_code(quantizer) -> jax.Array:
  """float32 [K, code_dim]: the codes of ids 0 .. K - 1 (factorized codes
  too, by their full id)."""
  ids = jnp.arange(quantizer.codebook_size)
  if num_index_axes(quantizer):
    return quantizer.indices_to_codes(ids, factorized=False)
  return quantizer.indices_to_codes(ids)
