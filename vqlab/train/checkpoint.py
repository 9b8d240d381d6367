"""Orbax checkpoints: async periodic saves, resume, fallback past corrupt ones."""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from vqlab import fileio
from vqlab.errors import CheckpointError

class Checkpointer:
  """Saves and restores the TrainState under `<workdir>/checkpoints`.

  Saves are asynchronous (the train loop continues while arrays are written);
  `max_to_keep` old steps are kept. Orbax writes into a temporary directory
  and renames it when complete, so a save interrupted half-way is never seen
  as a checkpoint.
  """

  def __init__(self, workdir: str, *, max_to_keep: int,
               config: ml_collections.ConfigDict | None = None):
    # gs:// directories go to Orbax as they are (epath + TensorStore GCS).
    self.directory = os.path.join(fileio.absolute(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=True,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    if config is not None and jax.process_index() == 0:
      _write_config(workdir, config)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step`; returns whether it saved."""
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)

  def restore(self, abstract_state: Any) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with shardings, the
        target layout.

    Returns:
      (state, step), or None when there is no checkpoint at all.

    Raises:
      CheckpointError: checkpoints exist but none can be read.
    """
    steps = self.all_steps()
    failures = []
    for step in reversed(steps):
      try:
        state = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract_state))
        if failures:
          logging.warning('Resumed from step %d; newer checkpoints were '
                          'unreadable: %s', step, '; '.join(failures))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        message = (f'checkpoint {os.path.join(self.directory, str(step))} is '
                   f'missing or corrupt ({type(e).__name__}: '
                   f'{str(e).splitlines()[0] if str(e) else ""})')
        logging.error('%s; trying the previous one.', message)
        print(f'vqlab: {message}; trying the previous one.', flush=True)
        failures.append(message)
    if failures:
      raise CheckpointError(
          f'no readable checkpoint in {self.directory}: ' + '; '.join(failures) +
          '. Remove the broken step directories (or use another --workdir) to '
          'start over.')
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  data = json.dumps(json.loads(config.to_json_best_effort()), indent=2)
  fileio.write_atomically(os.path.join(workdir, 'config.json'),
                          lambda f: f.write(data.encode()))


def restore_on_host(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Reads a checkpoint of another run as a tree of arrays on one device.

  For loading a trained network into a different experiment (a tokenizer
  into a generator run), where the saving run's mesh and state layout are
  unknown: the layout comes from the checkpoint's own metadata.

  Args:
    workdir: the other run's --workdir (holding `checkpoints/`).
    step: the step to read; None: the newest.

  Returns:
    (tree of dicts like the saved TrainState, step).

  Raises:
    CheckpointError: no such directory, no checkpoint, or an unreadable one.
  """
  directory = os.path.join(fileio.absolute(workdir), 'checkpoints')
  if not fileio.isdir(directory):
    raise CheckpointError(f'no checkpoints in {workdir!r} ({directory} does '
                          'not exist): train that run first')
  manager = ocp.CheckpointManager(
      directory, item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}: train that run first')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f'no checkpoint at step {step} in {directory}; '
                          f'steps there: {steps}')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    metadata = manager.item_metadata(step)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        metadata)
    tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'checkpoint {os.path.join(directory, str(step))} is missing or '
        f'corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
    ) from e
  finally:
    manager.close()
  return tree, step
