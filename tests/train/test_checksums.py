"""The checksums saved with checkpoints: the formula against a uint64 numpy
reference, every single flipped bit caught, the same for every sharding."""

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.train import checksums

_GOLDEN = 2654435761


def _reference(x: np.ndarray) -> int:
  """sum_i w_i * (2i + 1) * golden mod 2^32 over the uint32 words."""
  itemsize = x.dtype.itemsize
  words = x.reshape(-1).view({
      1: np.uint8,
      2: np.uint16,
      4: np.uint32,
      8: np.uint32
  }[itemsize]).astype(np.uint64)
  index = np.arange(words.size, dtype=np.uint64)
  weights = ((2 * index + 1) * _GOLDEN) % 2**32
  return int((words * weights % 2**32).sum() % 2**32)


def test_the_checksum_is_the_formula_for_every_dtype():
  rng = np.random.default_rng(0)
  arrays = {
      'f32': rng.normal(size=(5, 7)).astype(np.float32),
      'bf16': rng.normal(size=(3, 4, 5)).astype(jnp.bfloat16),
      'i32': rng.integers(-2**31, 2**31, size=(9,), dtype=np.int32),
      'u8': rng.integers(0, 256, size=(4, 4), dtype=np.uint8),
      'scalar': np.float32(3.5),
  }
  got = checksums.of_leaves({k: jnp.asarray(v) for k, v in arrays.items()})
  assert got == {k: _reference(np.asarray(v)) for k, v in arrays.items()}


def test_every_single_flipped_bit_and_a_swap_change_it():
  x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
  base = checksums.of_leaves({'x': jnp.asarray(x)})['x']
  words = x.view(np.uint32)
  flipped = np.repeat(words[None], words.size * 32, axis=0)
  for i in range(words.size):
    for bit in range(32):
      flipped[i * 32 + bit].flat[i] ^= np.uint32(1 << bit)
  sums = jax.vmap(checksums._checksum)(jnp.asarray(flipped.view(np.float32)))  # pylint: disable=protected-access
  assert (np.asarray(sums) != base).all()
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert checksums.differing({'x': jnp.asarray(swapped)}, {'x': base}) == ['x']
  assert checksums.differing({'x': jnp.asarray(x), 'new': x}, {'x': base}) == []


def test_the_checksum_is_the_same_for_every_sharding():
  x = np.random.default_rng(2).normal(size=(8, 12)).astype(np.float32)
  mesh = jax.sharding.Mesh(
      np.array(jax.devices()[:8]).reshape(4, 2), ('a', 'b'))
  whole = checksums.of_leaves({'x': jnp.asarray(x)})['x']
  for spec in (jax.P('a', 'b'), jax.P('b'), jax.P(None, 'a'), jax.P()):
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
    assert checksums.of_leaves({'x': sharded})['x'] == whole, spec


def test_many_sharded_arrays_at_once():
  """A state of many FSDP-sharded arrays (each checksum a reduction across
  devices): one program per mesh. A program per array, all in flight at
  once, deadlocked XLA:CPU's 8 devices in their rendezvous."""
  mesh = jax.make_mesh((8,), ('fsdp',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('fsdp'))
  values = {
      f'w{i}': np.arange(64 * (i % 5 + 1), dtype=np.float32) * i
      for i in range(60)
  }
  leaves = {k: jax.device_put(v, sharding) for k, v in values.items()}
  assert checksums.of_leaves(leaves) == checksums.of_leaves(values)


def test_one_program_reads_a_bounded_part_of_the_state():
  mib = 2**20
  assert checksums.BATCH_BYTES == 256 * mib
  assert checksums.batches([64 * mib] * 10) == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                [8, 9]]
  # An array over the bound alone; small ones fill a group.
  assert checksums.batches([300 * mib, 1, 2, 256 * mib, 1]) == [[0], [1, 2],
                                                                [3], [4]]
  assert not checksums.batches([])


def test_one_program_inside_and_outside_the_loops_mesh():
  """The loop saves inside jax.set_mesh and its final save (and a restore)
  outside: jit keys its cache on that context, and compiled again."""
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
  x = jax.device_put(jnp.arange(8.0), jax.NamedSharding(mesh, jax.P('data')))
  with jax.set_mesh(mesh):
    inside = checksums.of_leaves({'x': x})
  assert checksums.of_leaves({'x': x}) == inside
  assert checksums._checksums_on(mesh)._cache_size() == 1  # pylint: disable=protected-access
