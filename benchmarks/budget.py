"""Timing under a per-case budget, shared by the benchmarks that measure many
cases of very different cost (generators.py, titok.py), their progress
lines and results files, and fitting a train step into a memory budget
(paper_scale.py). No flags here, so any benchmark can import it.
"""

import os
import platform
import re
import resource
import statistics
import time
from typing import Callable

import jax

from benchmarks import results_json


def on_cpu() -> bool:
  return jax.devices()[0].platform == 'cpu'


def device_name() -> str:
  """'cpu' or the accelerator kind as a file-name part (e.g. 'nvidia_h100')."""
  if on_cpu():
    return 'cpu'
  return re.sub(r'[^a-z0-9]+', '_',
                jax.devices()[0].device_kind.lower()).strip('_')


def device_info() -> dict:
  """What the results JSON records about the machine."""
  device = jax.devices()[0]
  return {
      'platform': device.platform,
      'kind': device.device_kind,
      'count': jax.device_count(),
      'host': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count()
  }


def peak_host_rss_bytes() -> int:
  """The most resident memory this process has held, in bytes (Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def progress(name: str, kind: str, text: str) -> None:
  """Prints one progress line of model `kind` at config `name`, at once."""
  print(f'[{name} {kind}] {text}', flush=True)


def load_results(path: str) -> dict:
  """The results JSON at `path` ({} where there is none) with this run's
  'device' and 'jax': the caller merges its rows in."""
  results = results_json.load(path)
  results.update({'device': device_info(), 'jax': jax.__version__})
  return results


def save_results(path: str, results: dict) -> None:
  """Writes `results` to `path`, on CPU with the peak host RSS so far in
  results['device']. Called after each model: a long run keeps what it has."""
  if on_cpu():
    results['device']['peak_host_rss_bytes'] = peak_host_rss_bytes()
  results_json.write(path, results)


def measure(call: Callable[[], None], steps: int, budget: float) -> dict:
  """One warm-up `call()` (which blocks until done), then up to `steps`
  timed calls, as many as fit in `budget` seconds (at least one); median."""
  t0 = time.perf_counter()
  call()
  warmup_s = time.perf_counter() - t0
  fit = int((budget - warmup_s) // max(warmup_s, 1e-9))
  times = []
  for _ in range(max(1, min(steps, fit))):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return {
      'warmup_s': warmup_s,
      'timed_calls': len(times),
      'call_s': statistics.median(times),
      'call_s_min': min(times),
      'call_s_max': max(times)
  }


def skipped(estimated_call_s: float, how: str, reason: str) -> dict:
  """The JSON row of a case not run: its estimate, never a measurement."""
  return {
      'skipped': True,
      'reason': reason,
      'estimated_call_s': estimated_call_s,
      'estimate': how
  }


def available_host_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (None where there is none)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def more_microbatches(memory: dict[str, int], microbatches: int,
                      per_device_batch: int, budget: int) -> int | None:
  """The fewest microbatches above `microbatches` that divide the
  per-device batch and, by estimate, fit `budget` bytes.

  `memory` is the compiled step's memory analysis at `microbatches`
  ({'peak_estimate_bytes', 'temp_bytes'}, per device): the temp bytes
  (activations) shrink with the microbatch, the rest (state, batch) stays.
  Returns the most microbatches there are when none fits by the estimate,
  None when there are no more.
  """
  more = [
      k for k in range(microbatches + 1, per_device_batch + 1)
      if per_device_batch % k == 0
  ]
  fixed = memory['peak_estimate_bytes'] - memory['temp_bytes']
  for k in more:
    if fixed + memory['temp_bytes'] * microbatches / k <= budget:
      return k
  return more[-1] if more else None
