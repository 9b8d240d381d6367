"""What the frozen text condition encoders (MiniLM, CLIP) share: texts ->
(token states, mask, pooled) with loaded, never trained, weights. A subclass
says how to load its files, how long a caption may be, and how to pool."""

import abc
from collections.abc import Sequence
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class FrozenTextEncoder(abc.ABC):
  """A frozen text condition encoder: texts -> (token states, mask, pooled).

  Attributes:
    module, params, tokenizer: the flax module (whose `config` has
      `hidden_size`), its params ({'params': ...}) and a tokenizer with
      `encode(texts, max_length, pad_to) -> (ids, mask)`.
    pad_to: a fixed token width L (None: the batch's longest row, capped at
      `max_length`); fixing it avoids one compile per distinct length.
    width: the state width D.
  """

  def __init__(self, path: str | os.PathLike | None = None, *,
               pad_to: int | None = None, dtype: Any = jnp.float32,
               precision: Any = None,
               loaded: tuple[Any, Any, Any] | None = None):
    """`loaded`: (module, params, tokenizer) to use instead of reading
    `path` (e.g. random params for a benchmark)."""
    self.module, self.params, self.tokenizer = loaded or self._load(
        path, dtype=dtype, precision=precision)
    self.pad_to = pad_to
    self.width = self.module.config.hidden_size
    self._apply = jax.jit(self.apply)

  @abc.abstractmethod
  def _load(self, path: str | os.PathLike | None, *, dtype: Any,
            precision: Any) -> tuple[Any, Any, Any]:
    """(module, params, tokenizer) read from `path`."""

  @property
  @abc.abstractmethod
  def max_length(self) -> int:
    """The most tokens a caption may have, start and end tokens included."""

  @abc.abstractmethod
  def pool_states(self, states: jax.Array, ids: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """Token states [B, L, D] float32 (of ids, mask [B, L]) -> pooled
    [B, D] float32."""

  def tokenize(self,
               texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, L], mask bool [B, L]) in numpy."""
    return self.tokenizer.encode(texts, self.max_length, self.pad_to)

  def apply(self, params: Any, ids: jax.Array,
            mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pure (jit-able): (token states [B, L, D] float32, pooled [B, D]
    float32, see `pool_states`)."""
    params = jax.lax.stop_gradient(params)
    states = self.module.apply(params, ids, mask).astype(jnp.float32)
    return states, self.pool_states(states, ids, mask)

  def __call__(
      self,
      texts: str | Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """texts -> (token states [B, L, D] float32, mask [B, L] bool, pooled
    [B, D] float32)."""
    ids, mask = self.tokenize(texts)
    states, pooled = self._apply(self.params, ids, mask)
    return states, jnp.asarray(mask), pooled
