"""The Experiment: everything train, eval and sample modes share.

Validates the config, builds the task (`tasks/base.py`), the mesh, the data,
the abstract and sharded train state, the compiled steps and the
checkpointer, before anything is written to the workdir.
"""

import inspect
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import config_schema
from vqlab import data as data_lib
from vqlab import fileio
from vqlab.evals import accumulator
from vqlab.train import batched_draws
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment_config
from vqlab.train import partitioning
from vqlab.train import pins
from vqlab.train import run_record
from vqlab.train import tasks
from vqlab.train import trained_size
from vqlab.train import workdir_lock
from vqlab.train.tasks.base import Task


def init_key(key: jax.Array) -> jax.Array:
  """The key a fresh run's state is drawn from: an 'rbg' key made of `key`'s
  bits.

  An 'rbg' key's draw is one RngBitGenerator op where a threefry key's is a
  20-round hash that XLA compiles for every distinct shape: init compiles in
  about half the time (XLA:CPU, MAGVIT-v2 128x128: 13.6 -> 7.0 s). Its draws
  are the same for the same seed on one backend whatever the mesh, but not
  the same on CPU, GPU and TPU. Train steps keep threefry keys.
  """
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32),
                                  impl='rbg')


def init_function(task: Task,
                  abstract_batch: dict[str, Any]) -> Callable[[jax.Array], Any]:
  """`task.init` as a function of the rng alone: rng -> a fresh TrainState.

  The batch it sees is zeros of `abstract_batch`'s shapes made inside the
  program: init reads only their shapes and XLA drops them, where zeros made
  outside would be a global batch allocated on one device and passed in.
  """

  def init(rng):
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract_batch.items()}
    return task.init(rng, zeros)

  return init


def jitted_init(task: Task, abstract_batch: dict[str, Any],
                state_shardings: Any, init: Callable | None = None) -> Any:
  """`init_function(task, abstract_batch)` (or `init`, that function made
  before: jax reuses its trace) compiled onto `state_shardings`."""
  init = init or init_function(task, abstract_batch)
  # Same values; compiles one chain of random draws per distinct param shape
  # and initializer instead of one per param tensor.
  return jax.jit(batched_draws.batch_random_draws(init),
                 out_shardings=state_shardings)


def _abstract_batch(local_batch: dict[str, np.ndarray], global_size: int,
                    sharding) -> dict[str, jax.ShapeDtypeStruct]:
  return {
      k:
          jax.ShapeDtypeStruct((global_size,) + v.shape[1:], v.dtype,
                               sharding=sharding)
      for k, v in partitioning.device_arrays(local_batch).items()
  }


def _with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def _build_data(config: ml_collections.ConfigDict, split: str,
                global_batch_size: int, task: Task) -> data_lib.DataSource:
  """This host's data source (the task's own when it has one, e.g. token
  shards); bad values or missing files -> DataError."""
  with data_lib.data_errors():
    source = task.data_source(split, global_batch_size, jax.process_index(),
                              jax.process_count())
    if source is not None:
      return source
    return data_lib.build(config, split=split,
                          global_batch_size=global_batch_size,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())


def _pin_newest_steps(config: ml_collections.ConfigDict, workdir: str) -> None:
  """run_record.pin_newest_steps, with process 0's choice on every process
  (another run may save a newer step while the processes look)."""
  spec = tasks.get(config.task)
  with data_lib.data_errors():  # E.g. damaged token shards' metadata.
    made_from = spec.made_from(config, workdir) if spec.made_from else None
  run_record.pin_newest_steps(config, workdir, checkpoint_lib.newest_step,
                              announce=jax.process_index() == 0,
                              made_from=made_from)
  if jax.process_count() == 1:
    return
  present = [
      k for k, _ in run_record.NEWEST_STEP_KEYS
      if config_schema.lookup(config, k) is not None
  ]
  if not present:
    return
  chosen = multihost_utils.broadcast_one_to_all(
      np.asarray([config_schema.lookup(config, k) for k in present], np.int64))
  for key, step in zip(present, np.asarray(chosen).tolist()):
    section, name = key.split('.')
    config[section][name] = int(step)


class Experiment:
  """Everything the loop and `--mode=eval` share: config, task, mesh, data,
  compiled steps and the checkpointer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices: list[jax.Device] | None = None, *,
               allow_config_change: bool = False, lock: str | None = None,
               trains: bool = True):
    """Validates and builds everything; compiles lazily.

    Args:
      config: the experiment config (validated here).
      workdir: the run's directory.
      devices: devices of the mesh (default: all).
      allow_config_change: continue a run whose saved config.json differs
        from `config` (else a ConfigError naming the keys, before anything
        is written).
      lock: take the workdir lock for this mode ('train', 'sample'); None:
        no lock (reading runs: eval).
      trains: False builds no train data (`train_data` None; sampling
        needs neither a generator's train token shards nor their memory).
    """
    devices = list(jax.devices() if devices is None else devices)
    self.config = config = experiment_config.validate(config, len(devices))
    self.workdir = workdir
    _pin_newest_steps(config, workdir)
    checkpointed = checkpoint_lib.newest_step(workdir) is not None
    self.config_changes = run_record.check(config, workdir, allow_config_change,
                                           checkpointed=checkpointed,
                                           trains=lock == 'train')
    # Data problems (a missing folder, an unreadable image) stop the run
    # before anything is written to the workdir.
    self.task: Task = tasks.get(config.task).build(config, workdir)
    run_record.check_read_checkpoints(workdir, self.task.read_for_life(),
                                      checkpointed)
    if lock == 'train':
      self.task.check_training()
    self.mesh = partitioning.make_mesh(config.mesh, devices)
    self.batch_sharding = partitioning.batch_sharding(self.mesh)
    self.train_data = _build_data(config.data, 'train', config.train.batch_size,
                                  self.task) if trains else None
    self.eval_data = _build_data(config.data, 'eval', config.eval.batch_size,
                                 self.task)
    init_rng, self._step_rng = jax.random.split(jax.random.key(config.seed))
    self._init_rng = init_rng = init_key(init_rng)

    # ------------------------------------------------ shapes and shardings ---
    # Before the workdir is made: a model that does not fit the data (the
    # task's init) or a bad mesh.rules action is a ConfigError too.
    if trains:
      example = next(iter(self.train_data.batches(0)))
    else:  # An eval batch has the train batch's inputs, and its padding mask.
      example = next(iter(self.eval_data.batches(0)))
      example = {k: v for k, v in example.items() if k != 'mask'}
    if not trains and not self.task.draws_samples:
      # A tokenizer's eval: the state has the shapes of the training's frames.
      example = trained_size.state_example(self.task.model, example, config,
                                           self.config_changes)
    self.abstract_batch = _abstract_batch(example, config.train.batch_size,
                                          self.batch_sharding)
    # One function for the shapes here and the init of a fresh run: jax
    # traces the model's init once for both.
    self._init = init_function(self.task, self.abstract_batch)
    with jax.set_mesh(self.mesh):
      abstract_state = jax.eval_shape(self._init, init_rng)
    self.state_shardings = partitioning.state_shardings(abstract_state,
                                                        self.mesh,
                                                        config.mesh.rules)
    self.abstract_state = _with_shardings(abstract_state, self.state_shardings)
    if lock:
      workdir_lock.acquire(workdir, lock)
    if lock == 'train' and jax.process_index() == 0:
      # Other runs keep the steps this one reads. Only the run that owns the
      # workdir pins: an eval or sample under a changed config (another
      # tokenizer.step) replaced the training run's pin, and the tokenizer
      # run then deleted the step the generator was trained with.
      pins.pin_read_steps(config, workdir)
    fileio.makedirs(workdir)
    self.checkpointer = checkpoint_lib.Checkpointer(
        workdir, max_to_keep=config.train.max_to_keep, owns_run=lock == 'train')

    # ------------------------------------------------------ compiled steps ---
    # Frozen networks (LPIPS, VGG, Inception) are arguments, not jit
    # constants: constants would be baked into every compiled program, and
    # they never enter the train state, so checkpoints stay small.
    replicated = partitioning.replicated(self.mesh)
    self.frozen = jax.device_put(self.task.frozen, replicated)

    self._jitted_train_steps = {}
    self._train_step_defaults = {
        name: parameter.default for name, parameter in inspect.signature(
            self.task.train_step).parameters.items()
    }
    # Outputs (sums, masks, feature rows) go whole to every host's
    # accumulator; images [B, ...] stay split over the batch's devices:
    # `evaluate` brings only the grid's examples to the hosts.
    self.jit_eval_step = jax.jit(
        self.task.eval_step,
        in_shardings=(self.state_shardings, self.batch_sharding, replicated,
                      replicated),
        out_shardings=(replicated, self.batch_sharding))

    # Rows [R] of sharded arrays [B, ...] -> [R, ...] whole on every process
    # (each device gathers its own rows; no whole [B, ...] on any device).
    self._take_rows = jax.jit(
        lambda tree, rows: jax.tree.map(lambda x: x[rows], tree),
        out_shardings=replicated)

    if self.task.draws_samples:
      self.jit_sample_images = jax.jit(self.task.sample_images,
                                       static_argnames=('batch_size',),
                                       out_shardings=replicated)

  def sample_images(self, state, rng, cond=None, batch_size=None,
                    observed=None):
    """Decoded samples [B, (T,) H, W, C] of a generator task; cond: host
    arrays from `task.sample_conditions` (or None); observed: host clips
    whose first frames are given (`task.eval_clips`), or None."""
    if cond is not None:
      cond = jax.device_put(cond, self.batch_sharding)
    if observed is not None:
      observed = jax.device_put(observed, self.batch_sharding)
    return self.jit_sample_images(state, rng, cond, self.frozen,
                                  batch_size=batch_size, observed=observed)

  def record_config(self, step: int) -> None:
    """Writes config.json and the checkpoints the run reads for life
    (run_record.READ_CHECKPOINTS_FILE), once the restore has decided which
    run this is. A run continued with a changed config keeps the old config
    as config_until_step_<step>.json (never over an earlier one)."""
    if jax.process_index() != 0:
      return
    previous = None
    if self.config_changes:
      previous = run_record.unused_name(self.workdir,
                                        f'config_until_step_{step}')
      print(
          'vqlab: continuing the run with a changed config ('
          f'{run_record.describe(self.config_changes)}); the previous one '
          f'is kept as {previous}', flush=True)
    run_record.write(self.workdir, self.config, keep_previous_as=previous)
    run_record.record_read_checkpoints(self.workdir, self.task.read_for_life())

  def jitted_train_step(self, step: int | None = None):
    """The jitted train step (state, batch, frozen) -> (new state, metrics)
    for a state at `step` (`task.train_step_options`), or, for None, the
    program that is right at every step; one per distinct options."""
    options = {} if step is None else self.task.train_step_options(step)
    # Options equal to train_step's defaults give the program without them.
    options = {
        k: v for k, v in options.items() if
        k not in self._train_step_defaults or self._train_step_defaults[k] != v
    }
    key = tuple(sorted(options.items()))
    if key not in self._jitted_train_steps:
      # The step's rng is derived from (seed, step) inside the step, so a
      # resumed run draws the same randomness as an uninterrupted one.
      def train_step(state, batch, frozen):
        rng = jax.random.fold_in(self._step_rng, state.step)
        return self.task.train_step(state, batch, rng, frozen, **options)

      replicated = partitioning.replicated(self.mesh)
      # Donating the state lets XLA update parameters and optimizer state
      # in place instead of holding two copies.
      self._jitted_train_steps[key] = jax.jit(
          train_step,
          in_shardings=(self.state_shardings, self.batch_sharding, replicated),
          out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    return self._jitted_train_steps[key]

  def train_step(self, state, batch, step: int | None = None):
    """One compiled train step -> (new state, metrics); donates `state`.
    `step`: the state's step (its program may leave out work that is 0 at
    that step); None: the program right at every step."""
    return self.jitted_train_step(step)(state, batch, self.frozen)

  def eval_step(self, state, batch, index: int = 0):
    """One compiled eval step of the eval split's batch `index` -> (outputs,
    images). Its key is fold_in(key(0), index): a generator's eval masks are
    new in each batch and the same in every evaluation (and run)."""
    rng = jax.random.fold_in(jax.random.key(0), index)
    return self.jit_eval_step(state, batch, self.frozen, rng)

  def initial_state(self):
    """(state, step): the newest readable checkpoint, or a fresh init."""
    restored = self.checkpointer.restore(self.abstract_state)
    if restored is not None:
      return restored
    init = jitted_init(self.task, self.abstract_batch, self.state_shardings,
                       self._init)
    with jax.set_mesh(self.mesh):
      state = init(self._init_rng)
    # E.g. params copied from another run.
    state = jax.device_put(self.task.warm_start(state), self.state_shardings)
    return state, 0

  def global_batch(self, local_batch):
    """This host's batch {key: [B_local, ...]} as global arrays
    {key: [B, ...]} sharded over the mesh's batch axis (text left out:
    `partitioning.global_batch`)."""
    return partitioning.global_batch(local_batch, self.batch_sharding)

  def evaluate(self, state) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs the task's eval over the eval split -> (metrics, first images)."""
    acc = accumulator.EvalAccumulator()
    images = None
    max_batches = self.config.eval.max_batches
    with jax.set_mesh(self.mesh):
      for i, local in enumerate(self.eval_data.batches()):
        if 0 <= max_batches <= i:
          break
        batch = self.global_batch(local)
        outputs, batch_images = self.eval_step(state, batch, i)
        acc.add(outputs)
        if images is None:
          rows = _grid_examples(jax.device_get(outputs['mask']),
                                self.config.eval.num_images)
          images = jax.device_get(self._take_rows(batch_images, rows))
    if not acc.num_batches:
      raise ValueError('eval: the eval split yielded no batches')
    if self.task.draws_samples:
      n = self.config.eval.num_images
      count = -(-2 * n // len(self.mesh.devices.flat)) * len(
          self.mesh.devices.flat)
      with jax.set_mesh(self.mesh):
        samples = self.sample_images(
            state, jax.random.fold_in(self._step_rng, 2**31 - 1),
            self.task.sample_conditions(0, count), batch_size=count)
      images = {'samples': jax.device_get(samples)}
    return self.task.summarize_eval(acc), images


def _grid_examples(mask: np.ndarray, n: int) -> np.ndarray:
  """Indices [<= max(n, 2)] of the examples an eval batch (mask [B]) shows in
  the grid of `n` (`Task.image_rows`): its first real ones, so that a split
  smaller than a batch shows no blank tiles."""
  return np.flatnonzero(np.asarray(mask) > 0)[:max(n, 2)]
