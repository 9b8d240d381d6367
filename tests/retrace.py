"""A retrace guard: each task's train and eval steps compile once per run."""

import contextlib
import functools

from vqlab.train import tasks  # noqa: F401  (defines every task class)
from vqlab.train.tasks import base


def _subclasses(cls):
  for sub in cls.__subclasses__():
    yield sub
    yield from _subclasses(sub)


def _once_per_options(method, traced: set):
  """`method` (called only while jit traces) that fails when it is traced a
  second time with the same static keyword options."""

  @functools.wraps(method)
  def wrapped(self, *args, **options):
    key = (method.__qualname__, tuple(sorted(options.items())))
    if key in traced:
      raise AssertionError(f'{key[0]} with options {dict(key[1])} was traced '
                           'twice in one run: a recompile')
    traced.add(key)
    return method(self, *args, **options)

  return wrapped


@contextlib.contextmanager
def traced_once():
  """Within this block, tracing (hence compiling) a task's `train_step` or
  `eval_step` a second time with the same static options
  (`Task.train_step_options`) raises AssertionError: over the steps and
  evals of one run, new shapes, dtypes or static values between steps are a
  retracing bug, a silent recompile per step at scale. Use one run per
  block. Yields the set of (method, options) traced."""
  methods = {
      (cls, name): cls.__dict__[name] for cls in _subclasses(base.Task)
      for name in ('train_step', 'eval_step')
      if name in cls.__dict__
  }
  traced = set()
  for (cls, name), method in methods.items():
    setattr(cls, name, _once_per_options(method, traced))
  try:
    yield traced
  finally:
    for (cls, name), method in methods.items():
      setattr(cls, name, method)
