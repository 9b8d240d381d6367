"""One run per workdir: an advisory lock held for the life of the process.

Two runs writing one workdir crash mid-save and interleave their metrics, so
the process that trains (or tokenizes, or samples) into a workdir takes an
exclusive `fcntl.flock` on WORKDIR/vqlab.lock and keeps it until it exits.
The kernel drops the lock when the process dies, even by kill -9, so a stale
lock file never blocks a restart. The file says who holds it, for the error
message of the run that is refused. Within one process the lock is
re-entrant (a notebook that reruns its training cell is the same run).

Only process 0 locks, and only local paths: gs:// has no such locks.
"""

import datetime
import fcntl
import os
import socket
import sys
from typing import IO

import jax

from vqlab import fileio
from vqlab.errors import WorkdirError

LOCK_FILE = 'vqlab.lock'
_held: dict[str, IO] = {}  # absolute workdir -> its open, locked file.


def acquire(workdir: str, mode: str) -> None:
  """Locks `workdir` for this process (creating it), or raises.

  Args:
    workdir: the run's --workdir.
    mode: what this process does there ('train', 'sample', ...), recorded.

  Raises:
    WorkdirError: another live process holds the lock (named in the message).
  """
  if jax.process_index() != 0 or fileio.is_url(workdir):
    return
  workdir = os.path.abspath(workdir)
  if workdir in _held:
    return
  fileio.makedirs(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise WorkdirError(
        f'{workdir} is in use by another vqlab run ({holder}); '
        'wait for it to finish or use another --workdir') from None
  except OSError as e:  # ENOLCK, EOPNOTSUPP: a filesystem without locks.
    f.close()
    print(
        f'vqlab: cannot lock {workdir} ({e.strerror or e}): this filesystem '
        'has no file locks; make sure no other run uses this --workdir',
        flush=True)
    return
  f.seek(0)
  f.truncate()
  started = datetime.datetime.now().isoformat(timespec='seconds')
  f.write(f'pid {os.getpid()} on {socket.gethostname()}, --mode={mode}, '
          f'started {started}: {" ".join(sys.argv)[:200]}\n')
  f.flush()
  _held[workdir] = f
