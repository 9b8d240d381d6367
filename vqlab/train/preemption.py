"""SIGTERM and Ctrl-C: finish the current step, save, exit cleanly."""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status() -> int:
  """The exit status of a run stopped to save: 128 + the signal this process
  received (130 Ctrl-C, 143 SIGTERM; 143 where another process's signal
  stopped it), as a shell reports a process a signal ended, so that a
  chained command does not run and a scheduler restarts the job."""
  return 128 + (_received[-1] if _received else signal.SIGTERM)


_received: list[int] = []  # Signals the watchers of this process received.


class PreemptionWatcher:
  """Records SIGTERM (a preemption notice) and SIGINT (Ctrl-C); the loop
  polls `should_stop` between steps and saves.

  Cloud TPU VMs and most schedulers send SIGTERM before taking a machine back.
  The handler only sets a flag: saving inside a signal handler could interrupt
  a half-finished step. A second Ctrl-C raises KeyboardInterrupt at once (the
  user gave up on the save). On several hosts the flag is OR-ed across
  processes so every host stops (and saves) at the same step.

  That OR is an allgather: it runs on the devices behind the queued step and
  the host waits for its result, so after every step it would stall async
  dispatch (no queueing step s+1 while the devices run step s). Inside the
  step loop it is done only every `every` steps (`train.preemption_check_every`
  in the loop); Cloud TPU gives about 30 s of notice, so a few steps of delay
  are harmless.
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
    _received.append(signum)
    name = signal.Signals(signum).name
    again = (' (Ctrl-C again to abort without saving)'
             if signum == signal.SIGINT else '')
    print(
        f'\nvqlab: {name} received; saving once the current step is '
        f'done{again}', flush=True)

  def should_stop(self, step: int | None = None, *, every: int = 1) -> bool:
    """True once any process received SIGTERM or SIGINT.

    One process: the local flag, whatever `step` is (no collective). Several
    processes: a collective (every process must call it at the same point),
    but inside the step loop only on the steps where all of them run it.

    Args:
      step: the step just done, inside the step loop; None outside it (before
        the first step, after the final save), where several processes always
        gather the flag.
      every: with several processes and a `step`, the flag is gathered only
        when `step % every == 0`; on the other steps this is False without
        looking (every process decides the same from `step` alone).

    Returns:
      Whether to save and stop now.
    """
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    if step is not None and step % every:
      return False
    # Not multihost_utils.reached_preemption_sync_point: jax.distributed's
    # notifier catches SIGTERM in C++ (our handler replaces it), never SIGINT.
    flags = multihost_utils.process_allgather(np.array(local))
    return bool(np.any(flags))
