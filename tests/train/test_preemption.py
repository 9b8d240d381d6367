"""What the train loop does between steps without stalling the devices: the
preemption check syncs hosts only every `train.preemption_check_every` steps,
and the next batch is on its way to the devices before the step that needs it.

Fast unit tests (no model, no compile); tests/train/test_faults.py interrupts
real runs and tests/train/test_loop.py runs two processes.
"""

import os
import signal

import numpy as np

from vqlab.train import loop
from vqlab.train import preemption


def _checks(monkeypatch, process_count, steps, flag_at, every):
  """Runs should_stop(step) for `steps` with SIGTERM sent after step
  `flag_at`; returns (steps that said stop, steps that ran the collective,
  what the final out-of-loop check says)."""
  monkeypatch.setattr(preemption.jax, 'process_count', lambda: process_count)
  gathered = []
  current = [None]

  def allgather(flag):
    gathered.append(current[0])
    # The other process never received a signal.
    return np.stack([np.asarray(flag), np.array(False)])

  monkeypatch.setattr(preemption.multihost_utils, 'process_allgather',
                      allgather)
  stops = []
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.should_stop()  # Before the first step.
    for step in steps:
      current[0] = step
      if step == flag_at:
        os.kill(os.getpid(), signal.SIGTERM)
      if watcher.should_stop(step, every=every):
        stops.append(step)
    current[0] = 'final'
    final = watcher.should_stop()  # After the final save.
  return stops, gathered, final


def test_several_hosts_sync_only_every_check_every_steps(monkeypatch):
  stops, gathered, final = _checks(monkeypatch, process_count=2,
                                   steps=range(1, 26), flag_at=13, every=10)
  # Outside the step loop the check is always collective.
  assert gathered == [None, 10, 20, 'final']
  # Received during step 13; every host sees it at the next sync, step 20.
  assert stops == [20] and final


def test_one_host_sees_the_flag_at_once_without_a_collective(monkeypatch):
  stops, gathered, final = _checks(monkeypatch, process_count=1,
                                   steps=range(1, 26), flag_at=13, every=10)
  assert gathered == []
  assert stops == list(range(13, 26)) and final


def test_prefetched_puts_in_order_at_most_size_ahead():
  for size in (1, 3):
    pulled, put = [], []

    def source():
      for i in range(7):
        pulled.append(i)
        yield i

    def fake_put(i):
      put.append(i)
      return ('on device', i)

    out = []
    for item in loop._prefetched(source(), fake_put, size=size):  # pylint: disable=protected-access
      out.append(item)
      # Exactly `size` ahead of what was consumed, but never past the end.
      assert len(pulled) == len(put) == min(len(out) + size, 7), size
    assert out == [('on device', i) for i in range(7)]
    assert put == list(range(7))  # Each put exactly once.
