"""What an output head (a generator's, TiTok's proxy codes) reads, to check
its logits against a float64 computation of the same head (bfloat16 models:
float32 logits)."""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def module_call(fn: Callable[[], Any], name: str):
  """Runs fn() (eagerly) and returns (its output, (positional args, params,
  output) of the one call of the module named `name`)."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    result = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name == name:
      seen.append((args, context.module.variables['params'], result))
    return result

  with nn.intercept_methods(interceptor):
    out = fn()
  call, = seen
  return out, call


def head_call(fn: Callable[[], Any], name: str):
  """Runs fn() (eagerly) and returns (its output, the input [..., D] of the
  one call of the module named `name`, that module's params)."""
  out, (args, params, _) = module_call(fn, name)
  return out, args[0], params


def dense_float64(inputs, params) -> np.ndarray:
  """inputs [..., D] @ kernel [D, V] + bias [V], in float64."""
  kernel = np.asarray(params['kernel'], np.float64)
  return np.asarray(inputs, np.float64) @ kernel + np.asarray(
      params['bias'], np.float64)


def bfloat16_valued(x) -> bool:
  """Whether every entry of x is a bfloat16 number (8 significant bits)."""
  x = jnp.asarray(x, jnp.float32)
  return bool(jnp.all(x.astype(jnp.bfloat16).astype(jnp.float32) == x))
