"""Checksums of a state's arrays, saved with a checkpoint and checked when it
is read: Orbax keeps none on its data chunks, so a flipped bit on disk would
otherwise restore as a silently different model.

The checksum of an array is sum_i w_i * (i * 2 + 1) * 2654435761 mod 2^32
over its elements' bit patterns w_i (as unsigned 32-bit words), i the
row-major index: every weight is odd, so any one flipped bit changes it, and
moved elements change it too. It is computed where the array lives (any
sharding, the same value for every sharding), but for small arrays that
every device holds whole: those on the host, from one device's copy. The same
pass says which floating-point arrays hold a NaN or Inf (`summarize`): a
diverged state is never saved over the good ones.
"""

from collections.abc import Callable
import contextlib
import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_GOLDEN = 2654435761  # Knuth's multiplicative hash constant (odd).


def _words(x: jax.Array) -> jax.Array:
  """An array's bit patterns as uint32 (64-bit elements: two words each)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = x.dtype.itemsize * 8
  if bits == 64:
    return lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bits]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  # The row-major index from per-axis iotas: a reshape of a sharded array
  # would move it between devices.
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    index += (lax.broadcasted_iota(jnp.uint32, words.shape, axis) *
              jnp.uint32(stride % 2**32))
    stride *= words.shape[axis]
  weights = (index * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(_GOLDEN)
  return jnp.sum(words * weights, dtype=jnp.uint32)


def _checksum_and_finite(x: jax.Array) -> jax.Array:
  """uint32 [2]: _checksum(x), and 1 unless `x` holds a NaN or Inf."""
  finite = (jnp.all(jnp.isfinite(x))
            if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True))
  return jnp.stack([_checksum(x), finite.astype(jnp.uint32)])


@functools.cache
def _checksum_on(
    mesh: jax.sharding.Mesh | None) -> Callable[[jax.Array], jax.Array]:
  """_checksum_and_finite jitted for arrays on `mesh` (None: other
  shardings), the result whole on every device so that every process reads
  it. One program per shape, dtype and sharding, reused by every state (of
  any model) that has an array like it."""
  if mesh is None:
    return jax.jit(_checksum_and_finite)
  return jax.jit(_checksum_and_finite,
                 out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))


def _mesh_of(x: Any) -> jax.sharding.Mesh | None:
  return getattr(getattr(x, 'sharding', None), 'mesh', None)


# Arrays of at most this many 32-bit words that every device holds whole
# (replicated or on one device) are summed on the host, from one device's
# copy: no program to compile for the many small arrays of a state (norms,
# biases, the tiny models of tests). Larger ones, and sharded ones, are
# summed where they live.
HOST_WORDS = 2**18

# The weights (i * 2 + 1) * golden mod 2^32 of the first HOST_WORDS indices.
_HOST_WEIGHTS = (
    (np.arange(HOST_WORDS, dtype=np.uint32) * np.uint32(2) + np.uint32(1)) *
    np.uint32(_GOLDEN))
_HOST_WEIGHTS.flags.writeable = False

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


def _host_value(x: Any) -> np.ndarray | None:
  """One whole copy of `x` on the host (PRNG keys: their key data) where
  that is cheap and exact: `x` small, whole on every device (or a numpy
  array of a dtype jax keeps); else None."""
  if isinstance(x, jax.Array):
    if not x.sharding.is_fully_replicated:
      return None
    # One device's copy, read into a new host array (np.asarray of `x`
    # itself would keep that copy with `x`).
    x = x.addressable_shards[0].data
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x) if _num_words(x) <= HOST_WORDS else None
  x = np.asarray(x)
  # Other dtypes (float64 without x64) go to the device as jit converts them.
  if (x.dtype != jax.dtypes.canonicalize_dtype(x.dtype) or
      _num_words(x) > HOST_WORDS):
    return None
  return x


def _num_words(x: Any) -> int:
  """How many 32-bit words `_words` makes of `x` (not a PRNG key array)."""
  return np.size(x) * (2 if x.dtype.itemsize == 8 else 1)


def _host_checksum(x: np.ndarray) -> int:
  """_checksum of a host array: the same words and weights, in uint32
  arithmetic (numpy wraps it mod 2^32 as XLA does)."""
  if x.dtype == np.bool_:
    words = x.reshape(-1).astype(np.uint32)
  else:
    words = np.ascontiguousarray(x).reshape(-1).view(
        _UNSIGNED[x.dtype.itemsize]).astype(np.uint32, copy=False)
  return int(np.sum(words * _HOST_WEIGHTS[:words.size], dtype=np.uint32))


class Summary(NamedTuple):
  """What one pass over a state's arrays finds (`summarize`)."""
  checksums: dict[str, int]  # {path: checksum}
  nonfinite: list[str]  # The paths of arrays that hold a NaN or Inf.


def of_leaves(leaves: dict[str, Any]) -> dict[str, int]:
  """{path: checksum} of {path: array} (see `summarize`)."""
  return summarize(leaves).checksums


def summarize(leaves: dict[str, Any]) -> Summary:
  """The checksums of {path: array} and the paths of its arrays that hold a
  NaN or Inf; jax arrays of any sharding (also ones that span several
  processes: every process calls this alike) or numpy arrays.

  Small arrays whole on every device are summed on the host (see
  HOST_WORDS); every other array goes through a program of its own, one
  after another, after the work that made them: programs all in flight at
  once (each with its cross-device sums of sharded arrays) deadlocked
  XLA:CPU's devices, each waiting in another program's rendezvous; one
  program for all arrays held a copy of the whole state (and compiled
  again for every state).
  """
  jax.block_until_ready(list(leaves.values()))
  out, nonfinite = {}, []
  for path, x in leaves.items():
    host = _host_value(x)
    if host is not None:
      out[path] = _host_checksum(host)
      if (jnp.issubdtype(host.dtype, jnp.inexact) and
          not np.isfinite(host).all()):
        nonfinite.append(path)
      continue
    mesh = _mesh_of(x)
    # Under the array's own mesh whatever the caller's context: jit keys
    # its cache on that context, and a save outside the loop's mesh
    # compiled this program again.
    context = (jax.set_mesh(mesh)
               if mesh is not None else contextlib.nullcontext())
    with context:
      summed = _checksum_on(mesh)(x)
    # Waits for it before the next program starts.
    checksum, finite = jax.device_get(summed)
    out[path] = int(checksum)
    if not finite:
      nonfinite.append(path)
  return Summary(out, nonfinite)


def differing(actual: dict[str, int], saved: dict[str, int]) -> list[str]:
  """The paths whose checksum in `actual` (`of_leaves`) is not the one in
  `saved` (paths that `saved` lacks are not checked)."""
  return [
      path for path, checksum in actual.items()
      if path in saved and checksum != int(saved[path])
  ]
