"""The contract between the train loop and a task.

A task is registered as a `TaskSpec`: its config sections, their value
checks, where `model.name` is looked up, and `build(config, workdir)`, the
one place that reads files (trained runs, frozen networks, statistics) and
returns a `Task`. A `Task` is a set of pure, jit-able functions over a
`TrainState`; its constructor takes every dependency as an argument and reads
nothing. The loop calls exactly the hooks below; the optional ones have
defaults here.

Shapes: B is the global batch, images are float [B, H, W, C] and videos
[B, T, H, W, C] in [-1, 1]; `frozen` is a dict {network: params} of the
frozen networks (placed on the mesh by the loop and passed to every step as
an argument, never baked into a compiled program).
"""

import abc
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqlab.data import base as data_base
from vqlab.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
  """What the loop trains, evaluates and samples.

  Attributes:
    config: the validated experiment config.
    frozen: host copies of the frozen networks' params, {network: params};
      the loop puts them on the mesh and passes them back as `frozen`.
  """

  config: ml_collections.ConfigDict
  frozen: dict[str, Any]

  def check_training(self) -> None:
    """Raises ConfigError when this run's config cannot train; a training
    Experiment calls it before anything is written (evaluating or tokenizing
    with the config may still work). By default there is nothing to check."""

  # ----------------------------------------------------------- required ---
  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    """A fresh TrainState; only the shapes and dtypes of `batch` matter."""

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: Batch, rng: jax.Array,
                 frozen: dict[str, Any]) -> tuple[TrainState, Metrics]:
    """One optimizer step -> (new state, scalar metrics)."""

  @abc.abstractmethod
  def eval_step(
      self, state: TrainState, batch: Batch, frozen: dict[str, Any],
      rng: jax.Array | None) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One eval batch -> (outputs for `evals.accumulator.EvalAccumulator`:
    'sums' of per-example values over real examples, 'mask' [B] and
    optionally 'features'; images to show, {name: [B, (T,) H, W, C]}, which
    stay split over the batch's devices: only the grid's reach the host).
    `rng`: this batch's key for a task whose eval loss draws (a generator's
    masks and timesteps; the loop folds the batch's index into a fixed key,
    so every evaluation of a run draws the same); None: key(0)."""

  @abc.abstractmethod
  def summarize_eval(self, acc) -> dict[str, float]:
    """Eval-set metrics from an accumulator of `eval_step` outputs."""

  @abc.abstractmethod
  def image_rows(self, images: dict[str, np.ndarray],
                 n: int) -> list[np.ndarray]:
    """Rows [<= n, H, W, C] of the eval picture from the eval images (the
    first max(n, 2) real examples of the first eval batch) or, when the task
    draws samples, {'samples': ...}."""

  # ----------------------------------------------------------- optional ---
  def data_source(self, split: str, global_batch_size: int, process_index: int,
                  process_count: int) -> data_base.DataSource | None:
    """This host's batches when they are not the `data` section's (e.g.
    token shards); None: the loop builds the `data` section."""
    del split, global_batch_size, process_index, process_count
    return None

  def train_step_options(self, step: int) -> dict[str, Any]:
    """Static keyword arguments of `train_step` for the step that starts at
    state step `step`: a task whose step can leave work out over a known
    range of steps (the tokenizer's GAN terms before loss.disc_start) names
    a smaller program for them. The loop compiles one program per distinct
    options, when a step first needs it; `train_step` without them must be
    right at every step. Default: {} (one program)."""
    del step
    return {}

  def read_for_life(self) -> dict[str, Any]:
    """{config key of a run (a value of pins.READ_FOR_LIFE): the
    TrainedTokenizer loaded from it} of the runs whose step this task reads
    for the run's whole life; the Experiment checks that each still holds
    the params the run was trained with. Default: {}."""
    return {}

  def warm_start(self, state: TrainState) -> TrainState:
    """Called once on a freshly initialized state (never on a restored
    one): e.g. params copied from another run. Default: unchanged."""
    return state

  # Tasks whose eval pictures are generated samples set this and define
  # `sample_conditions(start, batch_size)` (host conditions of samples
  # start .. start + B - 1, or None) and `sample_images(state, rng, cond,
  # frozen, batch_size)` (decoded samples [B, (T,) H, W, C] in [-1, 1]),
  # which the loop jits; it calls neither unless this is True.
  draws_samples: bool = False


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A registered task: what `config.task` names.

  Attributes:
    name: the `config.task` value.
    default_config: () -> the task's own config sections with defaults.
    validate: (config) -> None; value checks beyond keys, types and
      domains (ConfigError naming the key).
    model_registry: where `model.name` is looked up (a `vqlab.registry`
      facade: `validate`, `default_config`, `build`).
    build: (config, workdir) -> Task; reads what the task needs from disk.
    subcomponents: config section -> registry of the component its `name`
      selects (checked against that component's defaults).
    made_from: (config, workdir) -> {step key: step} of the other runs
      whose outputs the workdir already holds for this run (a generator's
      token shards: its tokenizer's step); a new run's -1 of that key reads
      that step, not the other run's newest.
  """
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  validate: Callable[[ml_collections.ConfigDict], None]
  model_registry: Any
  build: Callable[[ml_collections.ConfigDict, str], Task]
  subcomponents: dict[str, Any] = dataclasses.field(default_factory=dict)
  made_from: Callable[[ml_collections.ConfigDict, str], dict[str,
                                                             int]] | None = None


def accumulate_gradients(grads_fn: Callable[[Batch, jax.Array, Any],
                                            tuple[Any, Any, Metrics]],
                         batch: Batch, rng: jax.Array, carry: Any,
                         num_microbatches: int) -> tuple[Any, Any, Metrics]:
  """Gradients of a batch as the mean over its microbatches (to fit a global
  batch in memory: `train.microbatches`).

  Example i goes to microbatch i % k, so with the batch sharded over the
  devices every microbatch is too (the local batch divides by k); the
  microbatches run in order under `lax.scan`, each with key fold_in(rng, j),
  threading `carry` (e.g. pending EMA statistics) from one to the next.
  Gradients and metrics are the means over microbatches: for losses that are
  means over equally many terms per example, the full batch's exactly. Terms
  computed from a whole batch are a microbatch's: LFQ's batch entropy,
  Gumbel's and Regularized VQ's prior KL cover B / k examples, the adaptive
  GAN weight is each microbatch's gradient-norm ratio and a PatchGAN's batch
  norm sees B / k examples (as in taming on several GPUs, where each
  process computes both from its own batch). A loss that is a mean over a
  drawn number of terms (MaskGIT's masked tokens) is made the batch's mean
  by the caller (the generator task weighs each microbatch by its count).
  Statistics that move once per step must be made so by the caller (the
  tokenizer's EMA codebook and LeCam EMAs are; VQ-Diffusion's loss history
  moves once from `accumulate_gradients_and_outputs`' per-example outputs).

  Args:
    grads_fn: (microbatch, rng, carry) -> (grads, new carry, metrics).
    batch: {name: [B, ...]}.
    rng: PRNG key of the step (passed unchanged when k == 1).
    carry: the state threaded through the microbatches.
    num_microbatches: k, dividing B.

  Returns:
    (grads, carry after the last microbatch, metrics).
  """
  with_outputs = lambda *args: (*grads_fn(*args), None)
  grads, carry, metrics, _ = accumulate_gradients_and_outputs(
      with_outputs, batch, rng, carry, num_microbatches)
  return grads, carry, metrics


def accumulate_gradients_and_outputs(
    grads_fn: Callable[[Batch, jax.Array, Any],
                       tuple[Any, Any, Metrics,
                             Any]], batch: Batch, rng: jax.Array, carry: Any,
    num_microbatches: int) -> tuple[Any, Any, Metrics, Any]:
  """`accumulate_gradients` whose grads_fn also returns per-example outputs
  (a pytree of [b, ...] for its microbatch of b examples, or None): returned
  for the whole batch, [B, ...] in the batch's order.

  Returns:
    (grads, carry after the last microbatch, metrics, outputs).
  """
  if num_microbatches == 1:
    return grads_fn(batch, rng, carry)
  k = num_microbatches

  def split(x):
    x = jnp.reshape(x, (x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  # [k, B / k, ...] -> [B, ...]: row r of microbatch j is example r k + j.
  def merge(x):
    return jnp.reshape(jnp.swapaxes(x, 0, 1), (-1,) + x.shape[2:])

  micro = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro)
  # Under jit the shapes' trace is cached and the scan body reuses it: the
  # loss is traced once, not twice (seconds of a paper config's compile).
  grads_fn = jax.jit(grads_fn)
  grads_shape, _, metrics_shape, _ = jax.eval_shape(grads_fn, first, rng, carry)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       (grads_shape, metrics_shape))

  def body(acc, inputs):
    index, microbatch = inputs
    sums, carry = acc
    grads, carry, metrics, outputs = grads_fn(microbatch,
                                              jax.random.fold_in(rng, index),
                                              carry)
    sums = jax.tree.map(jnp.add, sums, (grads, metrics))
    return (sums, carry), outputs

  (sums, carry), outputs = jax.lax.scan(body, (zeros, carry),
                                        (jnp.arange(k), micro))
  grads, metrics = jax.tree.map(lambda s: s / k, sums)
  return grads, carry, metrics, jax.tree.map(merge, outputs)


def ema_decay_at(step: jax.Array, decay: float,
                 warmup: bool) -> float | jax.Array:
  """The EMA decay of the update from `step` to step + 1: `decay`, or with
  `warmup` min(decay, (1 + step) / (10 + step)), 0 at step 0 (diffusers'
  EMAModel without its power warm-up, TiTok's release). Without the warm-up
  a decay of 0.999 keeps 37% of the initial params in the EMA after 1,000
  steps; with it, none."""
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.where(step > 0, jnp.minimum(decay, (1 + step) / (10 + step)), 0.0)


def apply_gradients(state: TrainState, grads: dict[str, Any],
                    optimizers: dict[str, optax.GradientTransformation],
                    ema_decay: float = 0.0,
                    active: dict[str, jax.Array] | None = None,
                    frozen: dict[str, Sequence[str]] | None = None,
                    ema_warmup: bool = False,
                    **replace: Any) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step of each network in `optimizers`.

  Args:
    state: the current state; its `ema_params` networks (present when the
      task keeps an EMA) move towards the new params.
    grads: {network: gradient tree like state.params[network]}.
    optimizers: {network: optax transformation}.
    ema_decay: d of ema <- d * ema + (1 - d) * params, or (with
      `ema_warmup`) its cap.
    active: {network: bool scalar, or a Python bool (False: its update is
      not computed)}; a network whose flag is False keeps its params and
      optimizer state (its step count and schedule too), e.g. the
      discriminator before `loss.disc_start`: Adam stepping on zero
      gradients would leave its moments at 0 and its bias correction spent,
      and its first real updates would be up to 1/sqrt(1 - b2) times the
      learning rate (10x for b2 = 0.99).
    frozen: {network: names of its top-level param trees that never train}:
      their EMA is the params themselves, as the release's EMA copies
      frozen params (averaging equal values still moves them by rounding).
    ema_warmup: `ema_decay_at`'s warm-up.
    **replace: other TrainState fields of the new state (model_state,
      loss_state).

  Returns:
    (state with step + 1, {network: global norm of its gradient}).
  """
  params, opt_state, norms = dict(state.params), dict(state.opt_state), {}
  active = active or {}
  for name, tx in optimizers.items():
    norms[name] = optax.tree.norm(grads[name])
    if active.get(name) is False:
      continue
    updates, opt_state[name] = tx.update(grads[name], state.opt_state[name],
                                         state.params[name])
    params[name] = optax.apply_updates(state.params[name], updates)
    if name in active:
      keep = lambda new, old, on=active[name]: jax.tree.map(
          lambda n, o: jnp.where(on, n, o), new, old)
      params[name] = keep(params[name], state.params[name])
      opt_state[name] = keep(opt_state[name], state.opt_state[name])
  frozen = frozen or {}
  ema_params = {}
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  for name, ema in state.ema_params.items():
    ema = optax.incremental_update(params[name], ema, 1.0 - decay)
    kept = [k for k in frozen.get(name, ()) if k in ema]
    if kept:
      ema = {**ema, **{k: params[name][k] for k in kept}}
    ema_params[name] = ema
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_params, **replace), norms
