"""SIGTERM handling: finish the current step, save, exit cleanly."""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionWatcher:
  """Records a SIGTERM (preemption notice); the loop polls `should_stop`.

  Cloud TPU VMs and most schedulers send SIGTERM before taking a machine back.
  The handler only sets a flag: saving inside a signal handler could interrupt
  a half-finished step. On several hosts the flag is OR-ed across processes so
  every host stops (and saves) at the same step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def _handle(self, signum, frame):
    del signum, frame
    self._flag.set()

  def should_stop(self) -> bool:
    """True once any process received SIGTERM (collective on multi-host)."""
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.array(local))
    return bool(np.any(flags))
