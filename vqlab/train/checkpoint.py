"""Orbax checkpoints: async periodic saves, resume, fallback past corrupt ones."""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

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
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
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
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
  os.replace(tmp, path)
