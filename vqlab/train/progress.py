"""A console progress line with rate and ETA."""

import sys
import time
from typing import Mapping


def format_duration(seconds: float) -> str:
  """'1h02m03s', or '2m03s' under an hour."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else \
      f'{minutes}m{seconds:02d}s'


class Progress:
  """Prints `step N/T [bar] x steps/s, y ex/s, ETA ..., metrics` lines.

  The rate is measured from the first step after the first (compiling) one, so
  compile time does not distort the ETA. On a terminal the line is redrawn in
  place; in a log file (not a terminal) a line is written at most every
  `log_interval_s` seconds, plus the first and the last.
  """

  def __init__(self, start_step: int, total_steps: int, examples_per_step: int,
               stream=sys.stdout, enabled: bool = True,
               log_interval_s: float = 30.0):
    self.total = total_steps
    self.examples_per_step = examples_per_step
    self._stream = stream
    self._enabled = enabled
    self._tty = hasattr(stream, 'isatty') and stream.isatty()
    self._interval = log_interval_s
    self._last_written = None
    self._t0 = None
    self._step0 = start_step

  def update(self, step: int,
             metrics: Mapping[str, float] | None = None) -> str:
    """Reports that `step` steps are done; returns the printed line."""
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._step0 = now, step
      rate = 0.0
    else:
      rate = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = format_duration((self.total - step) / rate) if rate > 0 else '?'
    done = int(30 * step / max(self.total, 1))
    bar = '#' * done + '.' * (30 - done)
    shown = ' '.join(f'{k}={v:.4g}' for k, v in (metrics or {}).items())
    line = (f'step {step}/{self.total} [{bar}] {rate:.2f} steps/s '
            f'{rate * self.examples_per_step:.1f} ex/s ETA {eta} {shown}')
    if self._enabled and self._due(now, step):
      self._stream.write(('\r' + line + '\x1b[K') if self._tty else line + '\n')
      self._stream.flush()
      self._last_written = now
    return line

  def _due(self, now: float, step: int) -> bool:
    return (self._tty or self._last_written is None or step >= self.total or
            now - self._last_written >= self._interval)

  def close(self) -> None:
    if self._enabled and self._tty:
      self._stream.write('\n')
      self._stream.flush()
