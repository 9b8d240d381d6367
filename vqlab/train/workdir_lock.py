"""One run per workdir: an advisory lock held while a run uses it.

Two runs writing one workdir crash mid-save and interleave their metrics, so
the process that trains (or tokenizes, or samples) into a workdir takes an
exclusive `fcntl.flock` on WORKDIR/vqlab.lock and keeps it until the run
returns (`held`), or until it exits. The kernel drops the lock when the
process dies, even by kill -9, so a stale lock file never blocks a restart.
The file says who holds it, for the error message of the run that is
refused. Within one process the lock is re-entrant (a notebook that reruns
its training cell is the same run); it is released when the last of its
holders returns, so a notebook kernel that finished training blocks no
other run.

Only process 0 locks, and only local paths: gs:// has no such locks. Its
outcome goes to every process, so a refused multi-host run stops with one
line on each host (not process 0 alone, the others waiting for it).
"""

from collections.abc import Iterator
import contextlib
import datetime
import fcntl
import os
import socket
import sys
import time
from typing import IO

import jax
from jax.experimental import multihost_utils
import numpy as np

from vqlab import fileio
from vqlab.errors import WorkdirError

LOCK_FILE = 'vqlab.lock'
_TRIES = 5  # Attempts to lock, 50 ms apart.
_held: dict[str, IO] = {}  # absolute workdir -> its open, locked file.
_holders: dict[str, int] = {}  # absolute workdir -> `held` blocks in it.


def acquire(workdir: str, mode: str) -> None:
  """Locks `workdir` for this process (creating it), or raises; on every
  process of a multi-host run (a collective: all of them call it).

  Args:
    workdir: the run's --workdir.
    mode: what this process does there ('train', 'sample', ...), recorded.

  Raises:
    WorkdirError: another live process holds the lock (named in the message;
      on processes other than 0: the message says process 0 found it).
  """
  if fileio.is_url(workdir):
    return
  workdir = os.path.abspath(workdir)
  if jax.process_count() == 1:
    refusal = _lock(workdir, mode)
    if refusal is not None:
      raise WorkdirError(refusal)
    return
  # Process 0's outcome -> every process: 0 locked, 1 refused, 2 failed
  # (e.g. an unwritable directory: its own error, raised after telling).
  refusal, failure, outcome = None, None, 0
  if jax.process_index() == 0:
    try:
      refusal = _lock(workdir, mode)
      outcome = int(refusal is not None)
    except Exception as e:  # pylint: disable=broad-exception-caught
      failure, outcome = e, 2
  outcome = int(multihost_utils.broadcast_one_to_all(np.int32(outcome)))
  if failure is not None:
    raise failure
  if refusal is not None:
    raise WorkdirError(refusal)
  if outcome == 1:
    raise WorkdirError(
        f'{workdir} is in use by another vqlab run (process 0 found its '
        f'lock); {_advice(mode)}')
  if outcome == 2:
    raise WorkdirError(f'{workdir}: process 0 could not lock it (its log '
                       'says why)')


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """A block that uses `workdir`: the lock this process took there
  (`acquire`, before or inside the block) is released when the last open
  `held` block of `workdir` leaves. A lock taken outside any (an Experiment
  used on its own) lasts until the process exits."""
  if fileio.is_url(workdir):  # No lock there.
    yield
    return
  key = os.path.abspath(workdir)
  _holders[key] = _holders.get(key, 0) + 1
  try:
    yield
  finally:
    _holders[key] -= 1
    if not _holders[key]:
      del _holders[key]
      locked = _held.pop(key, None)
      if locked is not None:
        locked.close()  # Drops the flock.


def trainer(workdir: str) -> str | None:
  """Who trains in `workdir` now (its lock file's line) when another live
  process holds its lock with --mode=train, else None (also for gs://)."""
  if fileio.is_url(workdir) or os.path.abspath(workdir) in _held:
    return None
  try:
    f = open(os.path.join(workdir, LOCK_FILE), encoding='utf-8')  # pylint: disable=consider-using-with
  except OSError:
    return None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = f.read().strip()
      return holder if '--mode=train' in holder else None
    except OSError:  # A filesystem without locks.
      return None
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


def _lock_exclusively(f: IO) -> None:
  """flock LOCK_EX without waiting on a holder, but past the moment a
  generator looks at the lock (`trainer`'s brief shared lock).

  Raises:
    BlockingIOError: another process holds the lock.
  """
  for _ in range(_TRIES - 1):
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      time.sleep(0.05)
  fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _advice(mode: str) -> str:
  """What a run of `mode` refused by the lock can do."""
  if mode == 'sample':  # It needs this run's checkpoints.
    return 'wait for it to finish (--mode=eval reads a run in progress)'
  return 'wait for it to finish or use another --workdir'


def _lock(workdir: str, mode: str) -> str | None:
  """Takes the lock of absolute `workdir` -> None, or the refusal's line."""
  if workdir in _held:
    return None
  try:
    fileio.makedirs(workdir)
  except OSError as e:  # E.g. under /proc, where os.access said yes.
    raise WorkdirError(f'cannot create {workdir}: {e.strerror or e}') from e
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
  try:
    _lock_exclusively(f)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    return (f'{workdir} is in use by another vqlab run ({holder}); '
            f'{_advice(mode)}')
  except OSError as e:  # ENOLCK, EOPNOTSUPP: a filesystem without locks.
    f.close()
    print(
        f'vqlab: cannot lock {workdir} ({e.strerror or e}): this filesystem '
        'has no file locks; make sure no other run uses this --workdir',
        flush=True)
    return None
  f.seek(0)
  f.truncate()
  started = datetime.datetime.now().isoformat(timespec='seconds')
  f.write(f'pid {os.getpid()} on {socket.gethostname()}, --mode={mode}, '
          f'started {started}: {" ".join(sys.argv)[:200]}\n')
  f.flush()
  _held[workdir] = f
  return None
