"""Random variables shaped like a model's init, drawn on the host.

XLA:CPU compiles a random draw per parameter (a threefry hash each): a
compiled init of a small tokenizer takes 5-10 s, more than its forward and
backward passes. Tests of what a network computes with whatever weights it
has take these instead.
"""

import jax
import jax.numpy as jnp
import numpy as np


def like_init(model, *args, seed: int = 1):
  """Random variables shaped like model.init(key, *args)'s.

  Every parameter is nonzero, so zero-initialized layers (adaptive-norm
  projections) take part; kernels are lecun-normal-like (scale 1/sqrt(fan
  in), the fan in being all but the last axis), vectors have scale 0.2.

  Args:
    model: a flax module.
    *args: the arguments of model.init after its key (arrays or
      jax.ShapeDtypeStruct), e.g. an image batch [B, H, W, 3].
    seed: the numpy seed of the draws.

  Returns:
    A tree of arrays of model.init's structure, shapes and dtypes.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)  # numpy: nothing to compile.
  scale = lambda shape: (1 / np.sqrt(np.prod(shape[:-1]))
                         if len(shape) > 1 else 0.2)
  return jax.tree.map(
      lambda p: jnp.asarray(
          scale(p.shape) * rng.standard_normal(p.shape), p.dtype), shapes)
