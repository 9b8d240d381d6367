"""SIGTERM and Ctrl-C: finish the current step, save, exit cleanly."""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
  """Records SIGTERM (a preemption notice) and SIGINT (Ctrl-C); the loop
  polls `should_stop` between steps and saves.

  Cloud TPU VMs and most schedulers send SIGTERM before taking a machine back.
  The handler only sets a flag: saving inside a signal handler could interrupt
  a half-finished step. A second Ctrl-C raises KeyboardInterrupt at once (the
  user gave up on the save). On several hosts the flag is OR-ed across
  processes so every host stops (and saves) at the same step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in _SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._flag.is_set():
      raise KeyboardInterrupt
    self._flag.set()
    name = signal.Signals(signum).name
    again = (' (Ctrl-C again to abort without saving)'
             if signum == signal.SIGINT else '')
    print(
        f'\nvqlab: {name} received; saving once the current step is '
        f'done{again}', flush=True)

  def should_stop(self) -> bool:
    """True once any process received SIGTERM or SIGINT (collective on
    multi-host)."""
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.array(local))
    return bool(np.any(flags))
