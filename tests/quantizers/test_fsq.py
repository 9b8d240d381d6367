"""FSQ (vqlab/quantizers/fsq.py) against float64 numpy: codes, indices and
the gradient, the index <-> code round trip over the grid, the tanh bound."""

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.quantizers import fsq

LEVELS = (8, 5, 4, 3)


def _apply(q, variables, z, train=False):
  return jax.jit(lambda v, z: q.apply(v, z, train=train))(variables, z)


def _np_fsq(z, levels):
  lv = np.asarray(levels, np.float64)
  half_l = (lv - 1) * (1 - 1e-3) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  bounded = np.tanh(np.float64(z) + shift) * half_l - offset
  half_width = np.floor(lv / 2)
  codes = np.round(bounded) / half_width
  basis = np.concatenate([[1], np.cumprod(lv)[:-1]])
  indices = ((codes * half_width + half_width) * basis).sum(-1).astype(int)
  grad = (1 - np.tanh(np.float64(z) + shift)**2) * half_l / half_width
  return codes, indices, grad


def test_fsq_matches_numpy_reference_and_gradient():
  q = fsq.FiniteScalarQuantizer(levels=LEVELS)
  assert q.codebook_size == 480 and q.code_dim == 4
  z = jax.random.normal(jax.random.key(8), (6, 7, 4)) * 2
  out = _apply(q, {}, z)
  codes, indices, grad = _np_fsq(z, LEVELS)
  np.testing.assert_allclose(out.quantized, codes, atol=1e-6)
  np.testing.assert_array_equal(out.indices, indices)
  assert float(out.loss) == 0.0
  cot = jax.random.normal(jax.random.key(9), z.shape)
  g = jax.jit(lambda z, c: jax.vjp(lambda z: q.apply({}, z).quantized, z)[1]
              (c)[0])(z, cot)
  np.testing.assert_allclose(g, grad * np.asarray(cot), rtol=1e-4, atol=1e-6)
  counts = np.bincount(indices.ravel(), minlength=480)
  np.testing.assert_allclose(out.metrics['usage'], (counts > 0).mean())


def test_fsq_index_code_round_trip_covers_the_grid():
  q = fsq.FiniteScalarQuantizer(levels=LEVELS)
  ids = jnp.arange(q.codebook_size)
  codes = q.apply({}, ids, method=q.indices_to_codes)
  np.testing.assert_array_equal(fsq.codes_to_indices(codes, LEVELS), ids)
  assert len({tuple(c) for c in np.asarray(codes)}) == 480
  for i, levels in enumerate(LEVELS):  # Every level reachable from some z.
    sweep = jnp.zeros((2001, 4)).at[:, i].set(jnp.linspace(-8, 8, 2001))
    values = np.unique(np.asarray(fsq.quantize(sweep, LEVELS))[:, i])
    half = levels // 2
    np.testing.assert_allclose(values, (np.arange(levels) - half) / half)
    assert set(values) == set(np.unique(np.asarray(codes)[:, i]))


def test_fsq_bound_uses_atanh_so_zero_maps_to_the_zero_code():
  """Pins atanh (not the notebook's tan): bound(0) = 0 for even L too."""
  levels = (4, 6, 8, 5)
  got = np.asarray(fsq.bound(jnp.zeros((1, 4)), levels))[0]
  np.testing.assert_allclose(got, 0.0, atol=1e-6)
  # Away from 0 too, against float64 (with tan, L = 4 is off by 4e-4).
  z = np.linspace(-2, 2, 9)[:, None].repeat(4, -1)
  half_l = (np.array(levels) - 1) * (1 - 1e-3) / 2
  offset = np.where(np.array(levels) % 2 == 0, 0.5, 0.0)
  want = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
  np.testing.assert_allclose(fsq.bound(jnp.asarray(z, jnp.float32), levels),
                             want, atol=2e-6)
  np.testing.assert_array_equal(fsq.quantize(jnp.zeros((1, 4)), levels),
                                np.zeros((1, 4)))
