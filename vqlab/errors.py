"""Exceptions that carry a one-line, user-facing explanation."""


class ConfigError(ValueError):
  """A configuration key is unknown, mistyped or holds an impossible value.

  The message always starts with the dotted key path, e.g.
  `model.quantizer.name: unknown quantizer 'foo'; known: fsq, vq`.
  """

  def __init__(self, key: str, problem: str):
    self.key = key
    self.problem = problem
    super().__init__(f'{key}: {problem}')


class CheckpointError(RuntimeError):
  """No usable checkpoint could be restored (all candidates corrupt)."""


class DataError(ValueError):
  """A dataset cannot be built: a bad data.* value or missing files."""


class WeightsError(FileNotFoundError):
  """A pretrained weight file is missing, unreadable or does not match the
  network it is loaded into; the message names the file and where to put it."""


class WorkdirError(RuntimeError):
  """The --workdir cannot be used: another run holds it, or it cannot be
  written; the message names the directory (and the other run)."""


class TrainingDivergedError(RuntimeError):
  """The training run's loss, gradients or state became NaN or Inf: it
  stopped without saving them; the message names the step and what is not
  finite, and says which checkpoint is kept."""
