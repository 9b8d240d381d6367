"""A retrace guard: each task's train and eval steps compile once per run."""

import contextlib

import chex

from vqlab.train import tasks  # noqa: F401  (defines every task class)
from vqlab.train.tasks import base


def _subclasses(cls):
  for sub in cls.__subclasses__():
    yield sub
    yield from _subclasses(sub)


@contextlib.contextmanager
def traced_once():
  """Within this block, tracing (hence compiling) a task's `train_step` or
  `eval_step` a second time raises AssertionError (chex): over the steps and
  evals of one run, new shapes, dtypes or static values between steps are a
  retracing bug, a silent recompile per step at scale. Use one run per
  block."""
  methods = {
      (cls, name): cls.__dict__[name] for cls in _subclasses(base.Task)
      for name in ('train_step', 'eval_step')
      if name in cls.__dict__
  }
  chex.clear_trace_counter()
  for (cls, name), method in methods.items():
    setattr(cls, name, chex.assert_max_traces(method, n=1))
  try:
    yield
  finally:
    for (cls, name), method in methods.items():
      setattr(cls, name, method)
    chex.clear_trace_counter()
