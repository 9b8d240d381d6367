"""Checksums of a state's arrays, saved with a checkpoint and checked when it
is read: Orbax keeps none on its data chunks, so a flipped bit on disk would
otherwise restore as a silently different model.

The checksum of an array is sum_i w_i * (i * 2 + 1) * 2654435761 mod 2^32
over its elements' bit patterns w_i (as unsigned 32-bit words), i the
row-major index: every weight is odd, so any one flipped bit changes it, and
moved elements change it too. It is computed where the array lives (no
copy to the host, any sharding, the same value for every sharding).
"""

from collections.abc import Callable
import contextlib
import functools
from typing import Any

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


def _checksums(leaves: list[Any]) -> list[jax.Array]:
  return [_checksum(x) for x in leaves]


@functools.cache
def _checksums_on(
    mesh: jax.sharding.Mesh | None) -> Callable[[list[Any]], list[jax.Array]]:
  """_checksums jitted for arrays on `mesh` (None: other shardings), the
  results whole on every device so that every process reads them."""
  if mesh is None:
    return jax.jit(_checksums)
  return jax.jit(_checksums,
                 out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))


def _mesh_of(x: Any) -> jax.sharding.Mesh | None:
  return getattr(getattr(x, 'sharding', None), 'mesh', None)


# Bytes of 32-bit words one checksum program reads at most (or one array's):
# XLA:CPU keeps each array's weighted words whole before its sum.
BATCH_BYTES = 256 * 2**20


def batches(word_bytes: list[int]) -> list[list[int]]:
  """Consecutive groups of the indices of arrays of `word_bytes` (bytes as
  32-bit words), each over BATCH_BYTES only where one array is."""
  groups, size = [[]], 0
  for i, nbytes in enumerate(word_bytes):
    if groups[-1] and size + nbytes > BATCH_BYTES:
      groups.append([])
      size = 0
    groups[-1].append(i)
    size += nbytes
  return groups if groups[0] else []


def of_leaves(leaves: dict[str, Any]) -> dict[str, int]:
  """{path: checksum} of {path: array}; jax arrays of any sharding (also
  ones that span several processes: every process calls this alike) or
  numpy arrays.

  The arrays of one mesh go through a program per `batches` group, one after
  another, after the work that made them: a program per array, all in
  flight at once (each with its cross-device sums of sharded arrays),
  deadlocked XLA:CPU's devices, each waiting in another program's
  rendezvous; one program for all arrays held a copy of the whole state.
  """
  jax.block_until_ready(list(leaves.values()))
  by_mesh: dict[Any, list[str]] = {}
  for path, x in leaves.items():
    by_mesh.setdefault(_mesh_of(x), []).append(path)
  out = {}
  for mesh, paths in by_mesh.items():
    sizes = [np.size(leaves[p]) * max(4, _itemsize(leaves[p])) for p in paths]
    for group in batches(sizes):
      group = [paths[i] for i in group]
      # Under the arrays' own mesh whatever the caller's context: jit keys
      # its cache on that context, and a save outside the loop's mesh
      # compiled this program again.
      context = (jax.set_mesh(mesh)
                 if mesh is not None else contextlib.nullcontext())
      with context:
        sums = _checksums_on(mesh)([leaves[path] for path in group])
      out.update(zip(group, (int(s) for s in jax.device_get(sums))))
  return {path: out[path] for path in leaves}


def _itemsize(x: Any) -> int:
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    return 8  # Two 32-bit words per key, or more: a guess is enough here.
  return x.dtype.itemsize


def differing(leaves: dict[str, Any], saved: dict[str, int]) -> list[str]:
  """The paths of `leaves` whose checksum is not the one in `saved` (paths
  that `saved` lacks are not checked). Every leaf's checksum is computed
  whatever `saved` holds, so that processes that read different `saved`
  still run the same collectives."""
  return [
      path for path, checksum in of_leaves(leaves).items()
      if path in saved and checksum != int(saved[path])
  ]
