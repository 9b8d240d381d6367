"""Orbax checkpoints: async periodic saves, resume, and restore problems told
apart: an unreadable step (partial, corrupt) is set aside and the previous
one used; a readable step that does not fit this config is never touched.
read_failures judges a failed read; state_mismatch words a state that does
not fit."""

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vqlab import fileio
from vqlab.errors import CheckpointError
from vqlab.errors import TrainingDivergedError
from vqlab.nn import stack
from vqlab.train import checksums
from vqlab.train import pins
from vqlab.train import read_failures
from vqlab.train import state_mismatch

SET_ASIDE_SUFFIX = '.corrupt'
_ITEM = 'default'  # The one item of each step: <directory>/<step>/default.
# The key of the arrays' checksums in a step's Orbax custom metadata.
_CHECKSUMS = 'vqlab_checksums'
# Orbax's file of a step's metadata (vqlab's checksums among it).
_STEP_METADATA = '_CHECKPOINT_METADATA'
# A restore beside a run in progress: how many listings of its steps it
# reads through (the run may delete them meanwhile), and how many times the
# processes list them before concluding that they see different ones.
_READ_PASSES = 4
_LISTINGS = 3


class StateMismatchError(CheckpointError):
  """A readable checkpoint holds a state of another shape than this config's:
  the checkpoint is fine, the config is not the one it was trained with."""


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs a traceback per failed read (tens of thousands of lines for
  one corrupt step); the loop reports each problem in one line instead."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _opening(directory: str):
  """Orbax's manager lists the steps and reads their metadata as it is
  made and as it lists them again: its failure there (a metadata file of a
  step that is valid JSON of another kind, a step that a run in progress
  deleted meanwhile) is one line naming the directory."""
  try:
    yield
  except CheckpointError:
    raise
  except FileNotFoundError as e:  # A step listed, then gone.
    raise CheckpointError(
        f'a step in {directory} was deleted while the steps were listed '
        f'({read_failures.first_line(e)}): a run in progress deletes its old '
        'steps as it saves (train.max_to_keep). Nothing was changed; run '
        'again') from e
  except Exception as e:  # pylint: disable=broad-except
    damaged = read_failures.damaged_step_metadata(directory)
    # A URL is not searched (an unreadable bucket, a scheme Orbax does not
    # take fail here too): no guess at damaged metadata there.
    where = f': {damaged} is damaged' if damaged else ''
    if not damaged and '://' not in directory:
      where = ": a step's _CHECKPOINT_METADATA may be damaged"
    raise CheckpointError(f'cannot open the checkpoints in {directory} '
                          f'({read_failures.first_line(e)}); nothing was '
                          f'changed{where}') from e


def _on_one_device(metadata: Any) -> Any:
  """Orbax metadata -> ShapeDtypeStructs on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      metadata)


def _relaid(tree: Any, abstract_state: Any) -> Any:
  """A restored state tree whose repeated blocks are stacked the other way
  (vqlab.nn.stack) -> the state `abstract_state` describes, on its
  shardings."""
  targets = state_mismatch.leaves(abstract_state)
  relaid = stack.relayout_leaves(state_mismatch.leaves(tree), {
      k: tuple(t.shape) for k, t in targets.items()
  })
  arrays = [
      jax.make_array_from_callback(t.shape, t.sharding,
                                   lambda index, x=relaid[k]: x[index])
      for k, t in targets.items()
  ]
  treedef = jax.tree_util.tree_structure(abstract_state,
                                         is_leaf=state_mismatch.is_leaf)
  return jax.tree_util.tree_unflatten(treedef, arrays)


def no_checkpoint_error(workdir: str) -> CheckpointError:
  """The error of a mode that needs a trained run in `workdir` (eval,
  sampling) and finds no checkpoint there."""
  return CheckpointError(
      f'no checkpoint in {os.path.join(workdir, "checkpoints")}: train the '
      'run first (--mode=train) or point --workdir at a trained run')


@dataclasses.dataclass
class _PinnedSteps(ocp.checkpoint_managers.PreservationPolicy):
  """Keeps the steps of the run in `workdir` that other runs read
  (vqlab.train.pins); every step while a pin cannot be read (said once)."""
  workdir: str
  _said: str = ''

  def should_preserve(self, checkpoints, *, context):
    del context
    pinned, problem = pins.pinned_steps(self.workdir)
    if problem and problem != self._said:
      print(
          f'vqlab: WARNING: cannot read the pin {problem}: every checkpoint '
          'is kept (train.max_to_keep is not applied) until it is readable '
          'or removed', flush=True)
      self._said = problem
    return [pinned is None or c.step in pinned for c in checkpoints]


class Checkpointer:
  """Saves and restores the TrainState under `<workdir>/checkpoints`.

  Saves are asynchronous (the train loop continues while arrays are written);
  `max_to_keep` old steps are kept. Orbax writes into a temporary directory
  and renames it when complete, so a save interrupted half-way (kill -9) is
  never seen as a checkpoint; the run that owns the workdir removes such
  leftovers when it opens it (`owns_run`).
  """

  def __init__(self, workdir: str, *, max_to_keep: int, owns_run: bool = False):
    # gs:// directories go to Orbax as they are (epath + TensorStore GCS).
    self.directory = os.path.join(fileio.absolute(workdir), 'checkpoints')
    keep = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(max_to_keep),
        _PinnedSteps(fileio.absolute(workdir))
    ])
    # Only a run that holds the workdir (its lock) removes the temporary
    # directories of unfinished saves: an eval beside a training run would
    # delete the save being written.
    options = ocp.CheckpointManagerOptions(preservation_policy=keep,
                                           enable_async_checkpointing=True,
                                           create=True,
                                           cleanup_tmp_directories=owns_run)
    with _opening(self.directory):
      self._manager = ocp.CheckpointManager(
          self.directory, item_handlers=ocp.StandardCheckpointHandler(),
          options=options)
    self._pending = None  # The step of the newest save started.

  def check_writable(self) -> None:
    """Raises CheckpointError on every process unless each can write into
    the checkpoint directory: a run that cannot save should stop before it
    trains, not at its first save (and no host alone)."""
    probe = os.path.join(self.directory,
                         f'.vqlab_write_probe_{jax.process_index()}')
    problem = ''
    try:
      fileio.write_atomically(probe, lambda f: f.write(b'ok'))
      fileio.remove(probe)
    except Exception as e:  # pylint: disable=broad-except
      problem = read_failures.first_line(e)
    failed = [problem != '']
    if jax.process_count() > 1:
      failed = list(multihost_utils.process_allgather(
          np.asarray(problem != '')))
    if any(failed):
      where = (f'process {failed.index(True)} '
               if jax.process_count() > 1 and not problem else '')
      raise CheckpointError(
          f'{where}cannot write into {self.directory}'
          f'{f" ({problem})" if problem else ""}: the run could not save '
          'its progress. Make it writable or use another --workdir')

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints in the directory, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest checkpoint's step; None when there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step`; returns whether it saved.

    Raises:
      CheckpointError: this or the previous (async) save failed, e.g. the
        disk is full; the checkpoints already on disk are intact.
      TrainingDivergedError: `state` holds a NaN or Inf: it is not saved
        (with max_to_keep, it would have deleted the last good steps).
    """
    previous = self._pending
    try:
      summary = checksums.summarize(state_mismatch.leaves(state))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e, previous) from e  # E.g. out of memory.
    if summary.nonfinite:
      paths = summary.nonfinite
      more = f' and {len(paths) - 3} more' if len(paths) > 3 else ''
      raise self.diverged(f'the state of step {step} holds NaN or Inf values '
                          f'({", ".join(paths[:3])}{more})')
    try:
      with _quiet_orbax():
        saved = self._manager.save(
            step, args=ocp.args.StandardSave(state), force=force,
            custom_metadata={_CHECKSUMS: summary.checksums})
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e, previous) from e
    if saved:
      self._pending = step
    return saved

  def wait(self) -> None:
    """Blocks until pending async saves are on disk.

    Raises:
      CheckpointError: a pending save failed (see `save`).
    """
    try:
      with _quiet_orbax():
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._pending, e) from e

  def diverged(self, what: str) -> TrainingDivergedError:
    """The error that stops a run whose training diverged (`what`: the
    numbers that are not finite), naming the newest checkpoint it keeps
    (once the save in flight landed)."""
    self.wait()
    kept = self.all_steps()
    newest = (f'its newest checkpoint, step {kept[-1]}, is kept'
              if kept else 'it has no checkpoint')
    return TrainingDivergedError(
        f'training diverged: {what}. Nothing of it was saved; {newest}. Lower '
        'the learning rate (with --allow_config_change to go on from that '
        'checkpoint) or check the data')

  def _save_error(self, step: int | None, e: Exception,
                  previous: int | None = None) -> CheckpointError:
    """The error of a failed save of `step`, or of the async save of
    `previous` that failed before it (Orbax raises it at the next call)."""
    self._manager.reload()
    kept = self.all_steps()
    if previous is not None and previous not in kept:
      step = previous
    which = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
    intact = (f'step {kept[-1]} is the newest intact one'
              if kept else 'there is no earlier checkpoint')
    return CheckpointError(f'could not write {which} to {self.directory} '
                           f'({read_failures.first_line(e)}); {intact}')

  def restore(self, abstract_state: Any, *, set_aside: bool = True,
              step: int = -1,
              step_key: str = 'eval.step') -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint that fits `abstract_state`.

    Unreadable steps (partial or corrupt) newer than the restored one are
    renamed `<step>.corrupt` (one line each), so later saves and evals see a
    consistent run; with `set_aside=False` (eval mode, which takes no
    lock, so a trainer may own the run; sample mode, which reads a run
    that may be another's) they are named and left as they are. Steps that
    all fail while their listing changes were deleted as they were read (a
    trainer's train.max_to_keep), not unreadable: they are listed again and
    the newest read (a few times). A restore that fails for want of memory
    or on a transient I/O error is not a corrupt checkpoint: it stops with
    nothing changed. A step saved with its repeated blocks stacked the other
    way (model.scan_layers / scan_blocks) is converted to this layout. A
    readable step whose state does not fit otherwise is an error and is left
    as it is: it restores under the config it was trained with.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with shardings, the
        target layout.
      set_aside: rename unreadable steps aside (see above).
      step: read this step only (-1: the newest readable), named by config
        key `step_key` in the error when the run has no such step.

    Returns:
      (state, step), or None when there is no checkpoint at all.

    Raises:
      StateMismatchError: a readable checkpoint of another state layout.
      CheckpointError: checkpoints exist but none can be read; a run in
        progress deleted them faster than they could be read; a restore
        ran out of memory or hit a transient I/O error; an unreadable step
        could not be renamed aside.
    """

    def chosen(steps: list[int]) -> list[int]:
      if step < 0:
        return steps
      if step not in steps:
        raise CheckpointError(
            f'{step_key}: no checkpoint at step {step} in {self.directory}; '
            f'steps there: {steps} (-1: the newest)')
      return [step]

    steps = chosen(self._agreed_steps())
    for _ in range(_READ_PASSES):
      restored, unreadable = self._newest_readable(abstract_state, steps)
      if not unreadable:
        break
      # A run in progress deletes its old steps as it saves (max_to_keep):
      # a step that failed may have been removed while it was read, which
      # says nothing of its files, and a newer step may have come (an eval
      # fell back to an older step and called the newest unreadable). Only
      # a listing that stayed the same while its steps failed is judged.
      listed, steps = steps, chosen(self._agreed_steps(reload=True))
      if steps == listed:
        break
    else:
      if restored is None:
        raise CheckpointError(
            f'the checkpoints in {self.directory} kept changing while they '
            f'were read (steps {listed}, then {steps}): a run in progress '
            'saves and deletes them faster than they can be read (raise its '
            'train.max_to_keep). Nothing was changed; run again')
      unreadable = [(s, why) for s, why in unreadable if s in steps]
    if restored is None:
      if not unreadable:
        return None
      failed = '; '.join(f'step {s}: {why}' for s, why in unreadable)
      # A read-only mode (eval, sample) gives no advice on the run itself.
      advice = ('; to start over, use another --workdir' if set_aside else '')
      raise CheckpointError(f'no readable checkpoint in {self.directory} '
                            f'({failed}). Nothing was changed{advice}')
    state, step, relay = restored
    path = os.path.join(self.directory, str(step))
    if set_aside:
      self._set_aside(unreadable, step)
    else:
      for bad, why in unreadable:
        print(
            f'vqlab: checkpoint {os.path.join(self.directory, str(bad))} '
            f'is unreadable ({why}); left as it is; using step {step}',
            flush=True)
    if relay:
      print(
          f'vqlab: checkpoint {path} stores its arrays in another tree '
          '(repeated blocks in the other layout (scanned or unrolled), or '
          'optimizer states without arrays); restored in this config\'s',
          flush=True)
      state = _relaid(state, abstract_state)
    return state, step

  def _newest_readable(
      self, abstract_state: Any, steps: list[int]
  ) -> tuple[tuple[Any, int, bool] | None, list[tuple[int, str]]]:
    """((state, step, relay), unreadable): the newest of `steps` that every
    process reads, as saved if `relay` (stacked the other way), else as
    `abstract_state`; the newer steps that failed, (step, why) each. None
    in place of the state: no step could be read.

    Raises:
      StateMismatchError: a readable checkpoint of another state layout.
      CheckpointError: a read ran out of memory or hit a transient I/O
        error.
    """
    unreadable = []
    for step in reversed(steps):
      path = os.path.join(self.directory, str(step))
      # Every process reads the files it needs; they go on together only
      # where all of them read the step (a corrupt shard may be read by one
      # host alone), so no host trains from another step than the rest.
      saved, failure = self._read(self.directory, step,
                                  self._manager.item_metadata)
      if failure is None:
        mismatch = state_mismatch.describe(saved, abstract_state)
        if mismatch:
          failure = read_failures.Failure(
              read_failures.MISMATCH,
              f'checkpoint {path} is readable but holds a different state '
              f'than this config builds ({mismatch}); it restores under the '
              'config it was trained with (config.json): use that config, or '
              'another --workdir for a different model')
      failure = read_failures.agreed(failure)
      if failure is None:
        # A state saved with its repeated blocks stacked the other way is
        # read as saved, on one device, then laid out as this config's.
        relay = (state_mismatch.signature(saved)
                 != state_mismatch.signature(abstract_state))
        target = _on_one_device(saved) if relay else abstract_state
        state, failure = self._read(
            self.directory, step, lambda s, t=target: self._restore_step(s, t))
        failure = read_failures.agreed(failure)
        other_tree = failure is not None and (failure.kind
                                              == read_failures.OTHER_TREE)
        if other_tree and not relay:
          relay = True
          state, failure = self._read(
              self.directory, step,
              lambda s: self._restore_step(s, _on_one_device(saved)))
          failure = read_failures.agreed(failure)
        if failure is not None and failure.kind == read_failures.OTHER_TREE:
          failure = read_failures.Failure(
              read_failures.MISMATCH,
              f'checkpoint {path} is readable but its state tree '
              f'differs from this config\'s ({failure.why}); it restores under '
              'the config it was trained with (config.json)')
        if failure is None:
          failure = read_failures.agreed(
              _changed_on_disk(self._manager, step, state))
      if failure is None:
        return (state, step, relay), unreadable
      if failure.kind == read_failures.TRANSIENT:
        raise CheckpointError(
            f'could not restore checkpoint {path} ({failure.why}): memory, '
            'file permissions, a transient I/O error or a fault of this '
            'program, not a corrupt checkpoint. Nothing was changed; run '
            'again (with more memory if it ran out, as a user who may read '
            'its files if they are denied)')
      if failure.kind == read_failures.MISMATCH:
        raise StateMismatchError(failure.why)
      unreadable.append((step, failure.why))
    return None, unreadable

  def _agreed_steps(self, *, reload: bool = False) -> list[int]:
    """all_steps(), the same on every process (the restore's collectives
    pair up only if the processes try the same steps in order); with
    `reload`, listed afresh (the manager keeps the listing it made when
    opened).

    Processes that list a run in progress a moment apart (a trainer saving
    and deleting steps beside an eval) may see different steps: they list
    again, together, before concluding that they see different directories.

    Raises:
      CheckpointError: processes see different checkpoints (a workdir that
        is not one shared directory).
    """
    for listing in range(_LISTINGS):
      if reload or listing:
        with _opening(self.directory):
          self._manager.reload()
      steps = self.all_steps()
      if jax.process_count() == 1 or read_failures.same_on_every_process(steps):
        return steps
    raise CheckpointError(
        f'the processes see different checkpoints in {self.directory} '
        f'(this process, {jax.process_index()}: steps {steps}): every '
        'process must see the same --workdir (a gs:// URL or a shared '
        'filesystem). Nothing was changed')

  def _restore_step(self, step: int, target: Any) -> Any:
    """Reads step `step` as `target` describes, with no barrier at the end.

    Orbax's manager ends a restore with a barrier that only processes whose
    read succeeded reach; a process that failed would then meet it in the
    allgather of read_failures.agreed instead. The item handler has none.
    """
    item = os.path.join(self.directory, str(step), _ITEM)
    if not fileio.isdir(item):  # Another Orbax layout: the manager's way.
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.restore(epath.Path(item),
                             args=ocp.args.StandardRestore(target))
    finally:
      handler.close()

  @staticmethod
  def _read(
      directory: str, step: int,
      read: Callable[[int], Any]) -> tuple[Any, 'read_failures.Failure | None']:
    """(read(step), None), or (None, why it failed) on this process."""
    with _quiet_orbax():
      try:
        value = read(step)
        if value is None:
          raise ValueError('no state metadata (a partial step)')
        return value, None
      except Exception as e:  # pylint: disable=broad-except
        return None, read_failures.judge(e, os.path.join(directory, str(step)))

  def _set_aside(self, unreadable: list[tuple[int, str]],
                 restored: int) -> None:
    """Renames unreadable steps `<step>.corrupt` (process 0; others wait).

    Raises:
      CheckpointError: a step could not be renamed (e.g. permissions, or a
        gs:// directory). Left listed, it would stay the newest step: saves
        up to it would be skipped without a word and a save at it refused.
    """
    if not unreadable:
      return
    stuck = []
    for step, why in unreadable:
      src = os.path.join(self.directory, str(step))
      dst = src + SET_ASIDE_SUFFIX
      n = 1
      while fileio.exists(dst):
        dst, n = f'{src}{SET_ASIDE_SUFFIX}.{n}', n + 1
      if jax.process_index() != 0:
        continue
      try:
        fileio.replace(src, dst)
      except Exception as e:  # pylint: disable=broad-except
        stuck.append(
            f'{src} ({why}; renaming it failed: {read_failures.first_line(e)})')
        continue
      print(
          f'vqlab: checkpoint {src} is unreadable ({why}); moved to '
          f'{os.path.basename(dst)}; continuing from step {restored}',
          flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('vqlab_checkpoint_set_aside')
    self._manager.reload()
    # Every process sees the same directory, so all raise or none does.
    left = sorted({s for s, _ in unreadable} & set(self.all_steps()))
    if left:
      details = '; '.join(stuck) or ', '.join(f'step {s}' for s in left)
      raise CheckpointError(
          f'unreadable checkpoints could not be moved aside: {details}. Move '
          f'them out of {self.directory} (e.g. to <step>.corrupt) and run '
          f'again: step {restored} is readable and training continues from '
          'it')

  def close(self) -> None:
    """Waits for the pending async save and releases the manager."""
    self._manager.close()


def _saved_checksums(manager: ocp.CheckpointManager,
                     step: int) -> dict[str, int] | None:
  """{path: checksum} saved with `step`; {} for a step saved without them (by
  an older vqlab); None when the step's metadata file is missing or
  unreadable, so that its data cannot be checked.

  Raises:
    What reading the file raises otherwise (permissions, a storage error).
  """
  # The step's own metadata file only (read here: Orbax's reader logs and
  # swallows a broken one): manager.metadata(step) also reads every array's
  # metadata (half a second for a tiny model's 500 arrays).
  try:
    metadata = json.loads(
        (manager.directory / str(step) / _STEP_METADATA).read_text())
  except (FileNotFoundError, ValueError):  # ValueError: not JSON.
    return None
  if not isinstance(metadata, dict):
    return None
  saved = (metadata.get('custom_metadata') or {}).get(_CHECKSUMS)
  return saved if isinstance(saved, dict) else {}


def _changed_on_disk(manager: ocp.CheckpointManager, step: int,
                     state: Any) -> read_failures.Failure | None:
  """An UNREADABLE failure if arrays of `state`, read from `step`, are not the
  ones saved (their checksums differ: the files changed on disk). Every
  process calls it (the checksums of arrays spanning processes are
  collectives)."""
  # First, whatever this process reads of the metadata: a process returning
  # early would leave the others waiting in the collectives.
  actual = checksums.of_leaves(state_mismatch.leaves(state))
  try:
    saved = _saved_checksums(manager, step)
  except Exception as e:  # pylint: disable=broad-except
    # Denied or a storage error: judged as a read's (not a corrupt step).
    return read_failures.judge(e, os.fspath(manager.directory / str(step)))
  if saved is None:
    return read_failures.Failure(
        read_failures.UNREADABLE,
        f'its metadata file {_STEP_METADATA} is missing or unreadable, so '
        'its data cannot be checked against the checksums saved with it')
  changed = checksums.differing(actual, saved)
  if not changed:
    return None
  more = f' and {len(changed) - 2} more' if len(changed) > 2 else ''
  return read_failures.Failure(
      read_failures.UNREADABLE,
      f'the data of {", ".join(changed[:2])}{more} differs from '
      'the checksums saved with it: its files changed on disk after the save')


def _checked(manager: ocp.CheckpointManager, step: int, tree: Any) -> Any:
  """`tree`, read from `step` on this process alone, if it is what was saved.

  Raises:
    ValueError: it is not (see _changed_on_disk).
  """
  failure = _changed_on_disk(manager, step, tree)
  if failure is not None:
    raise ValueError(failure.why)
  return tree


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A manager of another run's checkpoints (without Orbax's warning that
  the directory is read only)."""
  with _quiet_orbax(), _opening(directory):
    return ocp.CheckpointManager(
        directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def newest_step(workdir: str) -> int | None:
  """The newest checkpoint step of the run in `workdir` (None: none yet)."""
  directory = os.path.join(fileio.absolute(workdir), 'checkpoints')
  if not fileio.isdir(directory):
    return None
  manager = _read_only_manager(directory)
  try:
    steps = manager.all_steps()
  finally:
    manager.close()
  return max(steps) if steps else None


def restore_on_host(workdir: str, step: int | None = None,
                    step_key: str = '') -> tuple[Any, int]:
  """Reads a checkpoint of another run as a tree of host (numpy) arrays.

  For loading a trained network into a different experiment (a tokenizer
  into a generator run), where the saving run's mesh and state layout are
  unknown: the layout comes from the checkpoint's own metadata. The arrays
  are read onto this process's first device and returned on the host: every
  process holds the same values, which it may put on a mesh spanning all of
  them (an array committed to one device cannot go to another host's).

  Args:
    workdir: the other run's --workdir (holding `checkpoints/`).
    step: the step to read; None: the newest.
    step_key: the config key that named `step`, for the error when it is
      gone.

  Returns:
    (tree of dicts like the saved TrainState, step).

  A step the other run deletes while it is read (it trains on, with its
  train.max_to_keep) is listed again: the newest then, or for a named
  `step`, the error that it is gone.

  Raises:
    CheckpointError: no such directory, no checkpoint, not that step, or an
      unreadable one.
  """
  directory = os.path.join(fileio.absolute(workdir), 'checkpoints')
  if not fileio.isdir(directory):
    raise CheckpointError(f'no checkpoints in {workdir!r} ({directory} does '
                          'not exist): train that run first')
  manager = _read_only_manager(directory)
  try:
    # The other run may still train, deleting old steps as it saves
    # (train.max_to_keep): a step that fails and is no longer listed was
    # removed while read, not corrupt. The listing is made again.
    for _ in range(_READ_PASSES):
      read_step = _listed_step(directory, sorted(manager.all_steps()), step,
                               step_key)
      tree, failure = Checkpointer._read(  # pylint: disable=protected-access
          directory, read_step, lambda s: _checked(
              manager, s,
              manager.restore(
                  s, args=ocp.args.StandardRestore(
                      _on_one_device(manager.item_metadata(s))))))
      if failure is None:
        return jax.tree.map(np.asarray, tree), read_step
      with _opening(directory):
        manager.reload()
      if read_step in manager.all_steps():
        break
    else:
      raise CheckpointError(
          f'the checkpoints in {directory} kept changing while they were '
          'read: a run in progress saves and deletes them faster than they '
          "can be read (raise that run's train.max_to_keep); run again")
    others = sorted(set(manager.all_steps()) - {read_step}, reverse=True)
  finally:
    manager.close()
  path = os.path.join(directory, str(read_step))
  if failure.kind == read_failures.TRANSIENT:
    raise CheckpointError(
        f'could not read checkpoint {path} ({failure.why}): memory, file '
        'permissions, a transient I/O error or a fault of this program, not '
        'a corrupt checkpoint; run again (with more memory if it ran out, as '
        'a user who may read its files if they are denied)')
  # It stays where it is (this reader does not own the run): name the way on.
  way_on = (f'set {step_key or "the step"} to one of its other steps '
            f'{others[:5]}, or ' if others else '')
  raise CheckpointError(
      f'checkpoint {path} is missing or corrupt ({failure.why}): '
      f'{way_on}resume that run, which sets the step aside')


def _listed_step(directory: str, steps: list[int], step: int | None,
                 step_key: str) -> int:
  """`step` (None: the newest of `steps`), if listed.

  Raises:
    CheckpointError: no steps, or not that one (naming `step_key`).
  """
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}: train that run first')
  if step is None:
    return steps[-1]
  if step not in steps:
    advice = (
        f' {step_key} = {step} names it (a -1 there is pinned to the newest '
        'step when a run starts, and config.json keeps it); if that run\'s '
        'train.max_to_keep has deleted it since (it keeps the steps of runs '
        'that read it once they start: pinned/ there), it cannot come back: '
        'set '
        f'{step_key} to one of those steps (--allow_config_change to continue '
        "a run; a generator's token shards must then be made again with "
        '--mode=tokenize, into another tokens.dir: the old ones name the old '
        'step)' if step_key else '')
    raise CheckpointError(f'no checkpoint at step {step} in {directory}; '
                          f'steps there: {steps}.{advice}')
  return step
