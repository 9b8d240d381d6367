"""Orbax checkpoints: async periodic saves, resume, and restore problems told
apart: an unreadable step (partial, corrupt) is set aside and the previous
one used; a readable step that does not fit this config is never touched."""

from collections.abc import Iterable
import contextlib
import dataclasses
import json
import os
import re
from typing import Any, Callable, NamedTuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vqlab import fileio
from vqlab.errors import CheckpointError
from vqlab.nn import stack
from vqlab.train import checksums
from vqlab.train import pins

SET_ASIDE_SUFFIX = '.corrupt'
_ITEM = 'default'  # The one item of each step: <directory>/<step>/default.
# The key of the arrays' checksums in a step's Orbax custom metadata.
_CHECKSUMS = 'vqlab_checksums'
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
  made: its failure there (a metadata file of a step that is valid JSON of
  another kind) is one line naming the directory."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    damaged = _damaged_step_metadata(directory)
    # A URL is not searched (an unreadable bucket, a scheme Orbax does not
    # take fail here too): no guess at damaged metadata there.
    where = f': {damaged} is damaged' if damaged else ''
    if not damaged and '://' not in directory:
      where = ": a step's _CHECKPOINT_METADATA may be damaged"
    raise CheckpointError(
        f'cannot open the checkpoints in {directory} ({_first_line(e)}); '
        f'nothing was changed{where}') from e


def _damaged_step_metadata(directory: str) -> str | None:
  """The first `<step>/_CHECKPOINT_METADATA` of a local `directory` that is
  not a JSON object, or None."""
  if '://' in directory:
    return None
  try:
    names = sorted(os.listdir(directory))
  except OSError:  # E.g. a folder this user may not read.
    return None
  for name in names:
    path = os.path.join(directory, name, '_CHECKPOINT_METADATA')
    if not name.isdigit() or not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        if not isinstance(json.load(f), dict):
          return path
    except (OSError, ValueError):
      continue  # Orbax reads past these itself.
  return None


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:300] if text else ""}'


def _path_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _is_leaf(x: Any) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype')


def _leaves(tree: Any) -> dict[str, Any]:
  """{'params/decoder/conv_in/kernel': leaf} of a state, abstract state or
  Orbax metadata tree (attribute and dict paths alike), in tree order."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_leaf)
  return {
      '/'.join(_path_name(e) for e in path):
          leaf for path, leaf in leaves if hasattr(leaf, 'shape')
  }


def _signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/decoder/conv_in/kernel': (shape, dtype)} of a tree's leaves."""
  return {
      k: (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
      for k, leaf in _leaves(tree).items()
  }


def _unrolled_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """_signature with every scanned stack of blocks unstacked
  (vqlab.nn.stack): the same for both layouts of one state."""
  signature = _signature(tree)
  paths = stack.unstacked_paths({
      k: shape for k, (shape, _) in signature.items()
  })
  return {
      path: (signature[where][0][int(index is not None):], signature[where][1])
      for path, (where, index) in paths.items()
  }


def state_mismatch(saved: Any, expected: Any, limit: int = 3) -> str | None:
  """None when the two trees hold the same leaves (paths, shapes, dtypes) up
  to how repeated blocks are stacked (scanned or unrolled); else a short
  description of the first differences, in unrolled paths."""
  old, new = _unrolled_signature(saved), _unrolled_signature(expected)
  params_first = lambda keys: sorted(
      keys, key=lambda k: (not k.startswith('params/'), k))
  problems = [
      f'{k} is {old[k][0]} {old[k][1]} there, {new[k][0]} '
      f'{new[k][1]} here'
      for k in params_first(old.keys() & new.keys())
      if old[k] != new[k]
  ]
  problems += [
      f'{k} only in the checkpoint' for k in params_first(old.keys() -
                                                          new.keys())
  ]
  problems += [
      f'{k} missing from the checkpoint' for k in params_first(new.keys() -
                                                               old.keys())
  ]
  if not problems:
    return None
  more = len(problems) - limit
  differing = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
  return ('; '.join(problems[:limit]) + (f'; {more} more' if more > 0 else '') +
          _head_layout_hint(old.keys(), new.keys()) +
          _training_state_hint(differing))


# What shapes each part of the train state beside the params.
_STATE_KEYS = {
    'opt_state': 'optimizer.*.grad_clip_norm (on or off), the weight-decay '
                 'settings and freeze',
    'ema_params': 'ema.decay (on or off)',
    'loss_state': 'loss.lecam_weight (on or off)',
    'model_state': "the quantizer's settings",
}


def _training_state_hint(differing: set[str]) -> str:
  """A hint when the params are the same and only the state that training
  keeps beside them differs: the model is the same, a setting that shapes
  that state changed (e.g. gradient clipping switched on)."""
  parts = sorted({k.split('/')[0] for k in differing})
  if not parts or 'params' in parts or not set(parts) <= set(_STATE_KEYS):
    return ''
  return ('. The params are the same: the state training keeps beside them '
          f'differs ({", ".join(parts)}), which '
          f'{"; ".join(_STATE_KEYS[p] for p in parts)} shape; keep those as '
          'config.json records them to train on here, or start another '
          '--workdir from these params (a tokenizer: warm_start)')


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
  targets = _leaves(abstract_state)
  relaid = stack.relayout_leaves(_leaves(tree), {
      k: tuple(t.shape) for k, t in targets.items()
  })
  arrays = [
      jax.make_array_from_callback(t.shape, t.sharding,
                                   lambda index, x=relaid[k]: x[index])
      for k, t in targets.items()
  ]
  treedef = jax.tree_util.tree_structure(abstract_state, is_leaf=_is_leaf)
  return jax.tree_util.tree_unflatten(treedef, arrays)


def _head_layout_hint(saved: Iterable[str], expected: Iterable[str]) -> str:
  """A hint when a MaskGIT checkpoint's output heads are tied and the
  model's are not, or its blocks are of the other `block_style`, or the
  other way (vqlab.generators.maskgit), a GPT's are of the other
  `block_style`, or a class-conditional VQ-Diffusion checkpoint predates its
  class norms."""
  tied = lambda keys: any(re.search(r'/tied_head_\d+/', k) for k in keys)
  untied = lambda keys: any(re.search(r'/head_\d+/', k) for k in keys)
  if tied(saved) and untied(expected):
    return '. The checkpoint has tied heads: resume it with model.tied_heads = True'
  if untied(saved) and tied(expected):
    return ('. The checkpoint has untied heads (vqlab before 2026-12): resume '
            'it with model.tied_heads = False')
  bert = lambda keys: any(re.search(r'/embed_norm/', k) for k in keys)
  pre_ln = lambda keys: any(
      re.search(r'/transformer/final_norm/', k) for k in keys)
  if pre_ln(saved) and bert(expected):
    return ('. The checkpoint has pre-LN blocks (the MaskGIT configs before '
            "2026-12-06): resume it with model.block_style = 'pre_ln'")
  if bert(saved) and pre_ln(expected):
    return ('. The checkpoint has post-LN BERT blocks: resume it with '
            "model.block_style = 'bert'")
  head_bias = lambda keys: any(re.search(r'(^|/)head/bias$', k) for k in keys)
  head = lambda keys: any(re.search(r'(^|/)head/kernel$', k) for k in keys)
  if head_bias(saved) and head(expected) and not head_bias(expected):
    return ('. The checkpoint is a GPT with a head bias (the GPT configs '
            "before 2026-12-06): resume it with model.block_style = 'pre_ln'")
  if head(saved) and not head_bias(saved) and head_bias(expected):
    return ('. The checkpoint is a GPT of taming\'s blocks: resume it with '
            "model.block_style = 'taming'")
  class_token = lambda keys: any('/class_embed/' in k and '/block' not in k
                                 for k in keys) and any('/cross_attention/' in k
                                                        for k in keys)
  class_norms = lambda keys: any('/block' in k and '/class_embed/' in k
                                 for k in keys)
  if class_token(saved) and class_norms(expected):
    return ('. The checkpoint is a class-conditional VQ-Diffusion of vqlab '
            'before 2026-12-06 (cross-attention to a class token; its blocks '
            'now take the class through their norms, as the release): no '
            'config of this vqlab restores it, train it again')
  return ''


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
      problem = _first_line(e)
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
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step`; returns whether it saved.

    Raises:
      CheckpointError: this or the previous (async) save failed, e.g. the
        disk is full; the checkpoints already on disk are intact.
    """
    previous = self._pending
    try:
      with _quiet_orbax():
        saved = self._manager.save(
            step, args=ocp.args.StandardSave(state), force=force,
            custom_metadata={_CHECKSUMS: checksums.of_leaves(_leaves(state))})
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
                           f'({_first_line(e)}); {intact}')

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
      if restored is not None or not unreadable:
        break
      # A run in progress deletes its old steps as it saves (max_to_keep):
      # a step that failed may have been removed while it was read, which
      # says nothing of its files. Only a listing that stayed the same
      # while every step failed is judged unreadable.
      listed, steps = steps, chosen(self._agreed_steps(reload=True))
      if steps == listed:
        break
    else:
      raise CheckpointError(
          f'the checkpoints in {self.directory} kept changing while they '
          f'were read (steps {listed}, then {steps}): a run in progress '
          'saves and deletes them faster than they can be read (raise its '
          'train.max_to_keep). Nothing was changed; run again')
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
        mismatch = state_mismatch(saved, abstract_state)
        if mismatch:
          failure = _Failure(
              _MISMATCH,
              f'checkpoint {path} is readable but holds a different state '
              f'than this config builds ({mismatch}); it restores under the '
              'config it was trained with (config.json): use that config, or '
              'another --workdir for a different model')
      failure = _agreed(failure)
      if failure is None:
        # A state saved with its repeated blocks stacked the other way is
        # read as saved, on one device, then laid out as this config's.
        relay = _signature(saved) != _signature(abstract_state)
        target = _on_one_device(saved) if relay else abstract_state
        state, failure = self._read(
            self.directory, step, lambda s, t=target: self._restore_step(s, t))
        failure = _agreed(failure)
        if failure is not None and failure.kind == _OTHER_TREE and not relay:
          relay = True
          state, failure = self._read(
              self.directory, step,
              lambda s: self._restore_step(s, _on_one_device(saved)))
          failure = _agreed(failure)
        if failure is not None and failure.kind == _OTHER_TREE:
          failure = _Failure(
              _MISMATCH, f'checkpoint {path} is readable but its state tree '
              f'differs from this config\'s ({failure.why}); it restores under '
              'the config it was trained with (config.json)')
        if failure is None:
          failure = _agreed(_changed_on_disk(self._manager, step, state))
      if failure is None:
        return (state, step, relay), unreadable
      if failure.kind == _TRANSIENT_FAILURE:
        raise CheckpointError(
            f'could not restore checkpoint {path} ({failure.why}): memory, '
            'file permissions, a transient I/O error or a fault of this '
            'program, not a corrupt checkpoint. Nothing was changed; run '
            'again (with more memory if it ran out, as a user who may read '
            'its files if they are denied)')
      if failure.kind == _MISMATCH:
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
        self._manager.reload()
      steps = self.all_steps()
      if jax.process_count() == 1 or _same_on_every_process(steps):
        return steps
    raise CheckpointError(
        f'the processes see different checkpoints in {self.directory} '
        f'(this process, {jax.process_index()}: steps {steps}): every '
        'process must see the same --workdir (a gs:// URL or a shared '
        'filesystem). Nothing was changed')

  def _restore_step(self, step: int, target: Any) -> Any:
    """Reads step `step` as `target` describes, with no barrier at the end.

    Orbax's manager ends a restore with a barrier that only processes whose
    read succeeded reach; a process that failed would then meet it in
    `_agreed`'s allgather instead. The item handler has no barrier.
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
  def _read(directory: str, step: int,
            read: Callable[[int], Any]) -> tuple[Any, '_Failure | None']:
    """(read(step), None), or (None, why it failed) on this process; a step
    of `directory` holding files this process may not read failed for want
    of permissions, whatever Orbax said."""
    with _quiet_orbax():
      try:
        value = read(step)
        if value is None:
          raise ValueError('no state metadata (a partial step)')
        return value, None
      except Exception as e:  # pylint: disable=broad-except
        denied = _denied_path(os.path.join(directory, str(step)))
        if denied:
          return None, _Failure(_TRANSIENT_FAILURE,
                                f'permission denied: cannot read {denied}')
        misshapen = (_misshapen_metadata(os.path.join(directory, str(step)))
                     if isinstance(e, AttributeError) else None)
        if misshapen:
          return None, _Failure(
              _UNREADABLE, f'{misshapen} is not the metadata Orbax writes '
              f'({_first_line(e)})')
        if _not_the_files(e):
          kind = _TRANSIENT_FAILURE
        elif any(_TREE_DIFFERS in str(link) for link in _chain(e)):
          kind = _OTHER_TREE
        else:
          kind = _UNREADABLE
        # The innermost error says what went wrong (a 503, a truncated file).
        return None, _Failure(kind, _first_line(_chain(e)[-1]))

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
        stuck.append(f'{src} ({why}; renaming it failed: {_first_line(e)})')
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
    self._manager.close()


# Failures that say nothing about the checkpoint's files: status codes (as
# XLA, TensorStore and gRPC spell them) and OS errors, matched exactly.
_TRANSIENT = ('RESOURCE_EXHAUSTED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED',
              'PERMISSION_DENIED', 'Permission denied', 'Out of memory',
              'out of memory', 'Connection reset', 'Too many open files')

# Exceptions that are never a checkpoint's fault: memory, and this program's
# own mistakes (a corrupt file never raises these).
_NOT_THE_FILES = (MemoryError, PermissionError, AttributeError, NameError,
                  ImportError, NotImplementedError)


def _denied_path(step_directory: str) -> str | None:
  """The first folder or file of a local step that this process may not
  read (a run shared between users whose umask kept it private), else
  None; None for gs:// and other remote steps."""
  if '://' in step_directory or not os.path.isdir(step_directory):
    return None
  # os.access is False for a path that is gone too: a step another run
  # deletes as it is read (Orbax deletes its files first) is not denied.
  denied = lambda path, mode: (not os.access(path, mode) and os.path.lexists(
      path))
  if denied(step_directory, os.R_OK | os.X_OK):
    return step_directory
  for root, folders, files in os.walk(step_directory):
    for name in folders:
      if denied(os.path.join(root, name), os.R_OK | os.X_OK):
        return os.path.join(root, name)
    for name in files:
      if denied(os.path.join(root, name), os.R_OK):
        return os.path.join(root, name)
  return None


def _misshapen_metadata(step_directory: str) -> str | None:
  """The first JSON metadata file of a local step whose structure is not
  Orbax's (valid JSON of another kind: Orbax fails on it with an
  AttributeError, the kind of error that is otherwise this program's own),
  else None; None for gs:// and other remote steps."""
  if '://' in step_directory:
    return None
  expected = {
      '_CHECKPOINT_METADATA': {},
      '_METADATA': {
          'tree_metadata': dict
      },
      '_sharding': {},
      'process_*': {
          'array_metadatas': list
      },
  }
  for root, _, files in os.walk(step_directory):
    for name in sorted(files):
      kind = 'process_*' if name.startswith('process_') else name
      if kind not in expected:
        continue
      path = os.path.join(root, name)
      try:
        with open(path) as f:
          value = json.load(f)
      except (OSError, ValueError):
        continue  # Orbax names these itself.
      if not isinstance(value, dict) or any(
          not isinstance(value.get(key, kind_of()), kind_of)
          for key, kind_of in expected[kind].items()):
        return path
      entries = value.get('tree_metadata', {}).values()
      entries = list(entries) + value.get('array_metadatas', [])
      if not all(isinstance(entry, dict) for entry in entries):
        return path
  return None


def _chain(e: BaseException) -> list[BaseException]:
  """`e` and the errors it was raised from or while handling, outermost
  first: Orbax re-raises any error of an array read (a 503, MemoryError) as
  a bare Exception naming only the array."""
  errors = []
  while e is not None and e not in errors:
    errors.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  return errors


def _not_the_files(e: Exception) -> bool:
  """Whether a failed read says nothing about the checkpoint's files."""
  return any(
      isinstance(link, _NOT_THE_FILES) or any(t in str(link)
                                              for t in _TRANSIENT)
      for link in _chain(e))


# Why a step was not restored, mildest first: processes that disagree act on
# the gravest (a transient error or a mismatch anywhere stops the restore).
# _OTHER_TREE: the arrays fit, their tree does not (e.g. optax's
# MaskedState(EmptyState) for weight decay on kernels only, EmptyState for
# all): read again as saved.
_OTHER_TREE, _UNREADABLE, _MISMATCH, _TRANSIENT_FAILURE = 1, 2, 3, 4
# Orbax's message for a restore target whose tree differs from the saved one.
_TREE_DIFFERS = 'tree structures do not match'


class _Failure(NamedTuple):
  kind: int
  why: str


def _same_on_every_process(steps: list[int]) -> bool:
  """Whether every process listed `steps` (the same answer on each)."""
  counts = np.asarray(multihost_utils.process_allgather(np.int32(len(steps))))
  same = bool((counts == counts[0]).all())
  if same and steps:  # Equal counts: every process makes this call too.
    listed = multihost_utils.process_allgather(np.asarray(steps, np.int64))
    same = bool((np.asarray(listed) == np.asarray(steps)).all())
  return same


def _gather_kinds(kind: int) -> np.ndarray:
  """[num_processes] every process's failure kind (0: read it)."""
  if jax.process_count() == 1:
    return np.array([kind])
  return np.asarray(multihost_utils.process_allgather(np.int32(kind)))


def _agreed(failure: _Failure | None) -> _Failure | None:
  """The gravest of every process's failure at one step (None: all read it).

  A process that read the step is told which process did not and why in
  brief; the full reason is in that process's log.
  """
  kinds = _gather_kinds(0 if failure is None else failure.kind)
  if not np.isin(
      kinds,
      (0, _OTHER_TREE, _UNREADABLE, _MISMATCH, _TRANSIENT_FAILURE)).all():
    raise CheckpointError(
        'the processes fell out of step while restoring a checkpoint (an '
        f'exchange of failure kinds got {kinds.tolist()}). Nothing was '
        'changed; run again')
  worst = int(kinds.max())
  if worst == 0:
    return None
  if failure is not None and failure.kind == worst:
    return failure
  process = int(np.argmax(kinds))
  what = {
      _OTHER_TREE: 'found its arrays in another tree',
      _UNREADABLE: 'could not read it',
      _MISMATCH: 'found a state of another layout in it',
      _TRANSIENT_FAILURE: 'failed to read it for want of memory or '
                          'permissions, on a transient I/O error or by a '
                          'fault of this program',
  }[worst]
  return _Failure(worst, f"process {process} {what}; see that process's log")


def _saved_checksums(manager: ocp.CheckpointManager,
                     step: int) -> dict[str, int]:
  """{path: checksum} saved with `step`; {} for a step saved without them
  (by an older vqlab) or whose metadata cannot be read (not judged here)."""
  try:
    custom = manager.metadata(step).custom_metadata or {}
  except Exception:  # pylint: disable=broad-except
    return {}
  saved = custom.get(_CHECKSUMS)
  return saved if isinstance(saved, dict) else {}


def _changed_on_disk(manager: ocp.CheckpointManager, step: int,
                     state: Any) -> _Failure | None:
  """An _UNREADABLE failure if arrays of `state`, read from `step`, are not
  the ones saved (their checksums differ: the files changed on disk). Every
  process calls it (the checksums of arrays spanning processes are
  collectives)."""
  changed = checksums.differing(_leaves(state), _saved_checksums(manager, step))
  if not changed:
    return None
  more = f' and {len(changed) - 2} more' if len(changed) > 2 else ''
  return _Failure(
      _UNREADABLE, f'the data of {", ".join(changed[:2])}{more} differs from '
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
  """Reads a checkpoint of another run as a tree of arrays on one device.

  For loading a trained network into a different experiment (a tokenizer
  into a generator run), where the saving run's mesh and state layout are
  unknown: the layout comes from the checkpoint's own metadata.

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
        return tree, read_step
      manager.reload()
      if read_step in manager.all_steps():
        break
    else:
      raise CheckpointError(
          f'the checkpoints in {directory} kept changing while they were '
          'read: a run in progress saves and deletes them faster than they '
          "can be read (raise that run's train.max_to_keep); run again")
  finally:
    manager.close()
  path = os.path.join(directory, str(read_step))
  if failure.kind == _TRANSIENT_FAILURE:
    raise CheckpointError(
        f'could not read checkpoint {path} ({failure.why}): memory, file '
        'permissions, a transient I/O error or a fault of this program, not '
        'a corrupt checkpoint; run again (with more memory if it ran out, as '
        'a user who may read its files if they are denied)')
  raise CheckpointError(
      f'checkpoint {path} is missing or corrupt ({failure.why})')


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
