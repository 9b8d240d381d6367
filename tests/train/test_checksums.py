"""The checksums saved with checkpoints: the formula against a uint64 numpy
reference (on the host and on the devices, every dtype and sharding), every
single flipped bit caught, the same for every sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.train import checksums

_GOLDEN = 2654435761


def _reference(x) -> int:
  """sum_i w_i * (2i + 1) * golden mod 2^32 over the uint32 words."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = np.asarray(x)
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


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Arrays of every dtype a state holds, of shapes 8 devices can shard."""
  return {
      'f32': rng.normal(size=(8, 7)).astype(np.float32),
      'bf16': rng.normal(size=(8, 4, 5)).astype(jnp.bfloat16),
      'f16': rng.normal(size=(8,)).astype(np.float16),
      'i32': rng.integers(-2**31, 2**31, size=(8, 3), dtype=np.int32),
      'u32': rng.integers(0, 2**32, size=(2, 8), dtype=np.uint32),
      'u16': rng.integers(0, 2**16, size=(8, 2), dtype=np.uint16),
      'i8': rng.integers(-128, 128, size=(8, 5), dtype=np.int8),
      'u8': rng.integers(0, 256, size=(4, 8), dtype=np.uint8),
      'bool': rng.integers(0, 2, size=(8, 3)).astype(bool),
      'scalar': np.float32(3.5),
  }


@pytest.mark.parametrize('on_host', [True, False])
def test_the_checksum_is_the_formula_for_every_dtype_and_sharding(
    monkeypatch, on_host):
  """Small arrays whole on every device are summed on the host, the others
  by a program on the devices (here every array: HOST_WORDS 0): both are
  the formula, for numpy arrays, arrays on one device, replicated and
  sharded ones, PRNG keys, and 64-bit dtypes under x64."""
  if not on_host:
    monkeypatch.setattr(checksums, 'HOST_WORDS', 0)
  arrays = _arrays(np.random.default_rng(0))
  mesh = jax.make_mesh((8,), ('a',))
  rows = jax.sharding.NamedSharding(mesh, jax.P('a'))
  columns = jax.sharding.NamedSharding(mesh, jax.P(None, 'a'))
  whole = jax.sharding.NamedSharding(mesh, jax.P())

  def placed(arrays):
    """Each array on the host, on one device, replicated and sharded."""
    leaves = dict(arrays)
    for k, v in arrays.items():
      leaves[f'{k}/device'] = jnp.asarray(v)
      leaves[f'{k}/replicated'] = jax.device_put(v, whole)
      if np.ndim(v):
        leaves[f'{k}/sharded'] = jax.device_put(
            v, rows if v.shape[0] % 8 == 0 else columns)
    return leaves

  leaves = placed(arrays)
  keys = jax.random.split(jax.random.key(3), 8)
  leaves['keys'] = keys
  leaves['keys/replicated'] = jax.device_put(keys, whole)
  leaves['keys/sharded'] = jax.device_put(keys, rows)
  leaves['rbg_key'] = jax.random.key(4, impl='rbg')
  expected = {k: _reference(v) for k, v in leaves.items()}
  summary = checksums.summarize(leaves)
  assert summary.checksums == expected and summary.nonfinite == []
  # One NaN or Inf in a floating-point array is named wherever it lives;
  # integers' extreme bit patterns are no NaN.
  poisoned = {k: v.copy() for k, v in arrays.items() if np.ndim(v)}
  poisoned['f32'][3, 2] = np.nan
  poisoned['bf16'][5, 1, 4] = np.inf
  poisoned['f16'][7] = -np.inf
  poisoned['i32'][0, 0] = -1
  summary = checksums.summarize(placed(poisoned))
  assert sorted(summary.nonfinite) == sorted(
      f'{k}{where}' for k in ('f32', 'bf16', 'f16')
      for where in ('', '/device', '/replicated', '/sharded'))
  assert summary.checksums['f32/sharded'] == _reference(poisoned['f32'])
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    wide = {
        'f64': rng.normal(size=(8, 3)),
        'i64': rng.integers(-2**63, 2**63, size=(8,), dtype=np.int64),
        'u64': rng.integers(0, 2**64, size=(2, 8), dtype=np.uint64),
    }
    leaves = dict(wide)
    for k, v in wide.items():
      leaves[f'{k}/device'] = jnp.asarray(v)
      leaves[f'{k}/replicated'] = jax.device_put(v, whole)
    leaves['f64/sharded'] = jax.device_put(wide['f64'], rows)
    assert checksums.of_leaves(leaves) == {
        k: _reference(v) for k, v in leaves.items()
    }


def test_the_formula_at_the_host_bound_and_for_converted_numpy_arrays():
  """Arrays of HOST_WORDS words (on the host) and more (on the devices);
  a float64 numpy array without x64 summed as the float32 array
  jit makes of it (the value that checkpoints saved before the host path
  hold)."""
  rng = np.random.default_rng(2)
  n = checksums.HOST_WORDS
  leaves = {
      'at_bound':
          jnp.asarray(rng.normal(size=(n // 4, 4)), jnp.float32),
      'over_bound':
          jnp.asarray(rng.normal(size=(n + 1,)), jnp.float32),
      # Keys of 2 words and (rbg) of 4: counted by their key data.
      'keys_at_bound':
          jax.random.split(jax.random.key(5), n // 2),
      'rbg_keys_over_bound':
          jax.random.split(jax.random.key(6, impl='rbg'), n // 4 + 1),
      'f64':
          rng.normal(size=(5, 3)),
  }
  assert checksums.of_leaves(leaves) == {
      k: _reference(v if isinstance(v, jax.Array) else jnp.asarray(v))
      for k, v in leaves.items()
  }


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
  assert checksums.differing(checksums.of_leaves({'x': jnp.asarray(swapped)}),
                             {'x': base}) == ['x']
  assert checksums.differing(
      checksums.of_leaves({
          'x': jnp.asarray(x),
          'new': x
      }), {'x': base}) == []


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
  devices): a program per array, one after another. All in flight at once,
  they deadlocked XLA:CPU's 8 devices in their rendezvous."""
  mesh = jax.make_mesh((8,), ('fsdp',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('fsdp'))
  values = {
      f'w{i}': np.arange(64 * (i % 5 + 1), dtype=np.float32) * i
      for i in range(60)
  }
  leaves = {k: jax.device_put(v, sharding) for k, v in values.items()}
  assert checksums.of_leaves(leaves) == checksums.of_leaves(values)


def test_one_program_per_kind_of_array_reused_by_every_state():
  """No program for small arrays whole on every device; one per shape,
  dtype and sharding of the others, reused by another state (of another
  model) with an array like it."""
  mesh = jax.make_mesh((8,), ('fsdp',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('fsdp'))
  jitted = checksums._checksum_on(mesh)  # pylint: disable=protected-access
  jitted.clear_cache()
  small = {
      'b': jnp.ones(16),
      'w': jax.device_put(jnp.ones((4, 4)), jax.NamedSharding(mesh, jax.P()))
  }
  checksums.of_leaves(small)
  assert jitted._cache_size() == 0  # pylint: disable=protected-access
  state = {
      f'w{i}': jax.device_put(jnp.full((8, 4), i, jnp.float32), sharding)
      for i in range(3)
  }
  checksums.of_leaves({**small, **state})
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  other = {
      'w': jax.device_put(jnp.ones((8, 4)), sharding),
      'v': jax.device_put(jnp.ones((16,), jnp.bfloat16), sharding)
  }
  checksums.of_leaves(other)
  assert jitted._cache_size() == 2  # pylint: disable=protected-access


def test_one_program_inside_and_outside_the_loops_mesh():
  """The loop saves inside jax.set_mesh and its final save (and a restore)
  outside: jit keys its cache on that context, and compiled again."""
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
  x = jax.device_put(jnp.arange(8.0), jax.NamedSharding(mesh, jax.P('data')))
  with jax.set_mesh(mesh):
    inside = checksums.of_leaves({'x': x})
  assert checksums.of_leaves({'x': x}) == inside
  assert checksums._checksum_on(mesh)._cache_size() == 1  # pylint: disable=protected-access
