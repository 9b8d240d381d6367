"""Why a checkpoint read failed, and the verdict every process acts on.

A failed read is judged by kind, mildest first: the arrays fit in another
tree (read again as saved), the step is unreadable (partial or corrupt: set
aside and an older step read), the state does not fit the config (an error,
the checkpoint left as it is), or the failure says nothing about the files
(memory, permissions, a transient I/O error, a fault of this program: stop
and change nothing). The processes of a run exchange their kinds and act on
the gravest, so no host trains from another step than the rest.
"""

import json
import os
from typing import NamedTuple

import jax
from jax.experimental import multihost_utils
import numpy as np

from vqlab.errors import CheckpointError

# Why a step was not restored, mildest first: processes that disagree act on
# the gravest (a transient error or a mismatch anywhere stops the restore).
# OTHER_TREE: the arrays fit, their tree does not (e.g. optax's
# MaskedState(EmptyState) for weight decay on kernels only, EmptyState for
# all): read again as saved.
OTHER_TREE, UNREADABLE, MISMATCH, TRANSIENT = 1, 2, 3, 4
# Orbax's message for a restore target whose tree differs from the saved one.
_TREE_DIFFERS = 'tree structures do not match'


class Failure(NamedTuple):
  """A failed read: its kind (OTHER_TREE ... TRANSIENT) and why, one line."""
  kind: int
  why: str


def judge(e: Exception, step_directory: str) -> Failure:
  """The failure of a read of the step in `step_directory` that raised `e`.
  A step holding files this process may not read failed for want of
  permissions, whatever Orbax said."""
  denied = _denied_path(step_directory)
  if denied:
    return Failure(TRANSIENT, f'permission denied: cannot read {denied}')
  misshapen = (_misshapen_metadata(step_directory) if isinstance(
      e, AttributeError) else None)
  if misshapen:
    return Failure(
        UNREADABLE, f'{misshapen} is not the metadata Orbax writes '
        f'({first_line(e)})')
  if _not_the_files(e):
    kind = TRANSIENT
  elif any(_TREE_DIFFERS in str(link) for link in _chain(e)):
    kind = OTHER_TREE
  else:
    kind = UNREADABLE
  # The innermost error says what went wrong (a 503, a truncated file).
  return Failure(kind, first_line(_chain(e)[-1]))


def agreed(failure: Failure | None) -> Failure | None:
  """The gravest of every process's failure at one step (None: all read it).

  A process that read the step is told which process did not and why in
  brief; the full reason is in that process's log.
  """
  kinds = _gather_kinds(0 if failure is None else failure.kind)
  if not np.isin(kinds, (0, OTHER_TREE, UNREADABLE, MISMATCH, TRANSIENT)).all():
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
      OTHER_TREE: 'found its arrays in another tree',
      UNREADABLE: 'could not read it',
      MISMATCH: 'found a state of another layout in it',
      TRANSIENT: 'failed to read it for want of memory or '
                 'permissions, on a transient I/O error or by a '
                 'fault of this program',
  }[worst]
  return Failure(worst, f"process {process} {what}; see that process's log")


def same_on_every_process(steps: list[int]) -> bool:
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


def first_line(e: Exception) -> str:
  """'TypeName: the first line of its message' (at most 300 characters)."""
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:300] if text else ""}'


def damaged_step_metadata(directory: str) -> str | None:
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
