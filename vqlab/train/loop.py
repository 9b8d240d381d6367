"""THE train loop. It knows nothing about models: a task supplies pure
`init`, `train_step`, `eval_step`; the loop owns the mesh, the data, the
checkpoints, the writers, the progress line and preemption.

Reads top to bottom: setup, state (restore or init), compiled steps, the loop.
"""

import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab import fileio
from vqlab.evals import accumulator
from vqlab.errors import CheckpointError
from vqlab.errors import ConfigError
from vqlab.errors import DataError
from vqlab.errors import WeightsError
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import partitioning
from vqlab.train import preemption
from vqlab.train import progress as progress_lib
from vqlab.train import tasks
from vqlab.train import writers as writers_lib

StepCallback = Callable[[int, dict[str, Any]], None]


def _abstract_batch(local_batch: dict[str, np.ndarray], global_size: int,
                    sharding) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct((global_size,) + v.shape[1:], v.dtype,
                                  sharding=sharding)
          for k, v in local_batch.items()}


def _with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def _build_data(config: ml_collections.ConfigDict, split: str,
                global_batch_size: int, task=None) -> data_lib.DataSource:
  """This host's data source (the task's own when it has one, e.g. token
  shards); bad values or missing files -> DataError."""
  try:
    own = getattr(task, 'data_source', None)
    source = own and own(split, global_batch_size, jax.process_index(),
                         jax.process_count())
    if source is not None:
      return source
    return data_lib.build(config, split=split,
                          global_batch_size=global_batch_size,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())
  except (ConfigError, WeightsError):
    raise
  except (ValueError, FileNotFoundError) as e:
    raise DataError(str(e)) from e


class Experiment:
  """Everything the loop and `--mode=eval` share: config, task, mesh, data,
  compiled steps and the checkpointer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices: list[jax.Device] | None = None):
    devices = list(jax.devices() if devices is None else devices)
    self.config = config = experiment.validate(config, len(devices))
    self.workdir = workdir
    fileio.makedirs(workdir)
    self.task = tasks.get(config.task).build(config, workdir)
    self.mesh = partitioning.make_mesh(config.mesh, devices)
    self.batch_sharding = partitioning.batch_sharding(self.mesh)
    self.train_data = _build_data(config.data, 'train',
                                  config.train.batch_size, self.task)
    self.eval_data = _build_data(config.data, 'eval', config.eval.batch_size,
                                 self.task)
    init_rng, self._step_rng = jax.random.split(jax.random.key(config.seed))
    self._init_rng = init_rng

    # ------------------------------------------------ shapes and shardings ---
    example = next(iter(self.train_data.batches(0)))
    self.abstract_batch = _abstract_batch(example, config.train.batch_size,
                                          self.batch_sharding)
    with jax.set_mesh(self.mesh):
      abstract_state = jax.eval_shape(self.task.init, init_rng,
                                      self.abstract_batch)
    self.state_shardings = partitioning.state_shardings(
        abstract_state, self.mesh, config.mesh.rules)
    self.abstract_state = _with_shardings(abstract_state, self.state_shardings)
    self.checkpointer = checkpoint_lib.Checkpointer(
        workdir, max_to_keep=config.train.max_to_keep, config=config)

    # ------------------------------------------------------ compiled steps ---
    # Frozen networks (LPIPS, VGG, Inception) are arguments, not jit
    # constants: constants would be baked into every compiled program, and
    # they never enter the train state, so checkpoints stay small.
    replicated = partitioning.replicated(self.mesh)
    self.frozen = jax.device_put(self.task.frozen, replicated)

    # The step's rng is derived from (seed, step) inside the step, so a resumed
    # run draws the same randomness as an uninterrupted one.
    def train_step(state, batch, frozen):
      rng = jax.random.fold_in(self._step_rng, state.step)
      return self.task.train_step(state, batch, rng, frozen)

    # Donating the state lets XLA update parameters and optimizer state in
    # place instead of holding two copies.
    self.jit_train_step = jax.jit(
        train_step,
        in_shardings=(self.state_shardings, self.batch_sharding, replicated),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self.jit_eval_step = jax.jit(
        self.task.eval_step,
        in_shardings=(self.state_shardings, self.batch_sharding, replicated),
        out_shardings=replicated)

    # Any sharded array -> the whole array on every process.
    self._gather = jax.jit(lambda x: x, out_shardings=replicated)

    if hasattr(self.task, 'sample_images'):
      self.jit_sample_images = jax.jit(
          self.task.sample_images, static_argnames=('batch_size',),
          out_shardings=replicated)

  def sample_images(self, state, rng, cond=None, batch_size=None):
    """Decoded samples [B, (T,) H, W, C] of a generator task; cond: host
    arrays from `task.sample_conditions` (or None)."""
    if cond is not None:
      cond = jax.device_put(cond, self.batch_sharding)
    return self.jit_sample_images(state, rng, cond, self.frozen,
                                  batch_size=batch_size)

  def train_step(self, state, batch):
    """One compiled train step -> (new state, metrics); donates `state`."""
    return self.jit_train_step(state, batch, self.frozen)

  def eval_step(self, state, batch):
    """One compiled eval step -> (outputs, images)."""
    return self.jit_eval_step(state, batch, self.frozen)

  def initial_state(self):
    """(state, step): the newest readable checkpoint, or a fresh init."""
    restored = self.checkpointer.restore(self.abstract_state)
    if restored is not None:
      return restored
    zeros = {k: jnp.zeros(v.shape, v.dtype)
             for k, v in self.abstract_batch.items()}
    init = jax.jit(lambda rng: self.task.init(rng, zeros),
                   out_shardings=self.state_shardings)
    with jax.set_mesh(self.mesh):
      state = init(self._init_rng)
    if hasattr(self.task, 'warm_start'):  # Params copied from another run.
      state = jax.device_put(self.task.warm_start(state),
                             self.state_shardings)
    return state, 0

  def global_batch(self, local_batch):
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
        outputs, batch_images = self.eval_step(state, batch)
        acc.add(outputs)
        if images is None:
          images = jax.device_get(batch_images)
          if 'mask' in batch:  # A split smaller than a batch: no blank tiles.
            images = _real_examples(images,
                                    jax.device_get(self._gather(batch['mask'])))
    if not acc.num_batches:
      raise ValueError('eval: the eval split yielded no batches')
    if hasattr(self.task, 'sample_images'):
      n = self.config.eval.num_images
      count = -(-2 * n // len(self.mesh.devices.flat)) * len(
          self.mesh.devices.flat)
      with jax.set_mesh(self.mesh):
        samples = self.sample_images(
            state, jax.random.fold_in(self._step_rng, 2**31 - 1),
            self.task.sample_conditions(0, count), batch_size=count)
      images = {'samples': jax.device_get(samples)}
    return self.task.summarize_eval(acc), images


def _real_examples(images: dict[str, np.ndarray],
                   mask: np.ndarray) -> dict[str, np.ndarray]:
  """The images of an eval batch without its padding examples (mask [B])."""
  mask = np.asarray(mask, bool)
  return {k: v[mask] if np.ndim(v) and len(v) == len(mask) else v
          for k, v in images.items()}


def _write_eval(writer, exp: Experiment, step: int, metrics, images) -> None:
  writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
  n = exp.config.eval.num_images
  name = 'eval_samples' if 'samples' in images else 'eval_reconstructions'
  writer.write_images(step, {name: writers_lib.image_grid(
      exp.task.image_rows(images, n))})
  if jax.process_index() == 0:
    path = os.path.join(exp.workdir, f'eval_{step}.json')
    with fileio.open(path, 'w') as f:
      json.dump({'step': step, **metrics}, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list[jax.Device] | None = None,
                       step_callback: StepCallback | None = None
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: an experiment config (see vqlab.train.experiment).
    workdir: everything the run writes goes here.
    devices: devices of the mesh (default: all).
    step_callback: called as f(step, metrics) after every step, metrics
      still on device (the Colab notebooks redraw their live loss plot here).

  Returns:
    {'step', 'preempted', plus the final eval metrics unless preempted}.
  """
  exp = Experiment(config, workdir, devices)
  config = exp.config
  train_cfg = config.train
  writer = writers_lib.MetricWriter(workdir)
  state, start_step = exp.initial_state()
  if start_step:
    logging.info('Resuming from step %d', start_step)
    print(f'vqlab: resuming from the checkpoint at step {start_step}',
          flush=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    print(f'vqlab: {jax.process_count()} processes, {jax.device_count()} '
          f'devices, mesh {dict(exp.mesh.shape)}', flush=True)
  progress = progress_lib.Progress(start_step, train_cfg.num_steps,
                                   train_cfg.batch_size, enabled=is_chief)
  batches = exp.train_data.batches(start_step)
  last_saved = start_step
  t_log, step_log = time.perf_counter(), start_step

  with preemption.PreemptionWatcher() as watcher, jax.set_mesh(exp.mesh):
    for step in range(start_step + 1, train_cfg.num_steps + 1):
      # `step` counts steps done once this one finishes.
      state, metrics = exp.train_step(state, exp.global_batch(next(batches)))
      if step_callback is not None:
        step_callback(step, metrics)
      if step % train_cfg.log_every == 0 or step == start_step + 1:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        rate = (step - step_log) / max(now - t_log, 1e-9)
        t_log, step_log = now, step
        writer.write_scalars(step, {**metrics, 'steps_per_sec': rate,
                                    'examples_per_sec': rate *
                                    train_cfg.batch_size})
        progress.update(step, {k: metrics[k] for k in ('loss', 'rec_loss')
                               if k in metrics})
      if (train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0
          and step != train_cfg.num_steps):
        exp.checkpointer.save(step, state)
        last_saved = step
      if (train_cfg.eval_every and step % train_cfg.eval_every == 0 and
          step != train_cfg.num_steps):
        _write_eval(writer, exp, step, *exp.evaluate(state))
      if watcher.should_stop():
        # Preemption: save this exact step and leave; a restart resumes here.
        if step != last_saved:
          exp.checkpointer.save(step, state, force=True)
        exp.checkpointer.wait()
        progress.close()
        writer.close()
        print(f'vqlab: preempted; checkpoint saved at step {step}', flush=True)
        return {'step': step, 'preempted': True}

  progress.close()
  final_step = max(train_cfg.num_steps, start_step)
  if final_step not in exp.checkpointer.all_steps():
    exp.checkpointer.save(final_step, state, force=True)
  metrics, images = exp.evaluate(state)
  _write_eval(writer, exp, final_step, metrics, images)
  exp.checkpointer.wait()
  exp.checkpointer.close()
  writer.close()
  result = {'step': final_step, 'preempted': False, **metrics}
  if is_chief:
    with fileio.open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        devices: list[jax.Device] | None = None
                        ) -> dict[str, Any]:
  """`--mode=eval`: restores the latest checkpoint and evaluates it."""
  exp = Experiment(config, workdir, devices)
  restored = exp.checkpointer.restore(exp.abstract_state)
  if restored is None:
    raise CheckpointError(
        f'no checkpoint in {exp.checkpointer.directory}: train first '
        '(--mode=train) or point --workdir at a trained run')
  state, step = restored
  writer = writers_lib.MetricWriter(workdir)
  metrics, images = exp.evaluate(state)
  _write_eval(writer, exp, step, metrics, images)
  writer.close()
  return {'step': step, **metrics}
