"""LFQ (vqlab/quantizers/lfq.py) against float64 numpy: indices, codes,
losses, the exact and sub-group entropies, factorized indices, memory at 2^18,
the entropy weight schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.magvit2 import imagenet_128
from configs.magvit2 import ucf101_17x128
from configs.vqgan import lfq_f16
from tests.compile_options import FAST_COMPILE
from tests.quantizers import reference
from vqlab.quantizers import base
from vqlab.quantizers import lfq


def _np_codes(num_bits):
  k = np.arange(2**num_bits)
  return np.where((k[:, None] >> np.arange(num_bits)) & 1, 1.0, -1.0)


def _np_entropy(p, axis=-1):
  p = np.float64(p)
  return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis)


def _np_lfq(z, tau):
  """Exact quantities over all 2^b codes, float64."""
  z = np.float64(z).reshape(-1, z.shape[-1])
  b = z.shape[-1]
  logits = 2 * z @ _np_codes(b).T / tau
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  codes = np.where(z > 0, 1.0, -1.0)
  return dict(codes=codes, indices=((z > 0) * 2**np.arange(b)).sum(-1),
              commitment=((z - codes)**2).mean(),
              sample_entropy=_np_entropy(p).mean(), mean_probs=p.mean(0))


def _np_group_entropy(mean_probs, num_bits, groups):
  """sum_g H(marginal of the mean code distribution over group g's bits)."""
  joint = mean_probs.reshape((2,) * num_bits)  # Axis j: bit (b - 1 - j).
  total, start = 0.0, 0
  for size in lfq.group_sizes(num_bits, groups):
    bits = range(start, start + size)
    keep = [num_bits - 1 - i for i in bits]
    other = tuple(a for a in range(num_bits) if a not in keep)
    total += _np_entropy(joint.sum(other).reshape(-1))
    start += size
  return total


def _apply(q, variables, z, train=False):
  return jax.jit(lambda v, z: q.apply(v, z, train=train))(variables, z)


def test_lfq_matches_exact_numpy_reference():
  z = np.asarray(jax.random.normal(jax.random.key(0), (4, 5, 6))) * 0.01
  z[0, 0, :3] = 0.0  # sign(0) = -1: bit off.
  q = lfq.LookupFreeQuantizer(codebook_size=64, commitment_weight=0.3,
                              entropy_weight=0.2, entropy_temperature=0.01)
  out = _apply(q, {}, jnp.asarray(z, jnp.float32))
  ref = _np_lfq(z, 0.01)
  np.testing.assert_array_equal(out.indices.reshape(-1), ref['indices'])
  assert out.indices[0, 0] == int(((z[0, 0] > 0) * 2**np.arange(6)).sum())
  np.testing.assert_array_equal(out.quantized.reshape(-1, 6), ref['codes'])
  np.testing.assert_allclose(out.metrics['commitment_loss'], ref['commitment'],
                             rtol=1e-5)
  batch_entropy = _np_entropy(ref['mean_probs'])
  assert 0.5 < ref['sample_entropy'] < 3 and batch_entropy > 2  # Informative.
  np.testing.assert_allclose(out.metrics['per_sample_entropy'],
                             ref['sample_entropy'], rtol=1e-4)
  np.testing.assert_allclose(out.metrics['batch_entropy'], batch_entropy,
                             rtol=1e-5)
  entropy_loss = ref['sample_entropy'] - batch_entropy
  np.testing.assert_allclose(out.metrics['entropy_loss'], entropy_loss,
                             rtol=1e-4)
  np.testing.assert_allclose(out.loss,
                             0.3 * ref['commitment'] + 0.2 * entropy_loss,
                             rtol=1e-4)
  counts = np.bincount(ref['indices'], minlength=64)
  p = counts[counts > 0] / counts.sum()
  np.testing.assert_allclose(out.metrics['usage'], (counts > 0).mean())
  np.testing.assert_allclose(out.metrics['perplexity'],
                             np.exp(-(p * np.log(p)).sum()), rtol=1e-5)


def test_lfq_subgroup_entropy():
  """Sum of the groups' marginal entropies: exact for independent groups,
  an upper bound otherwise."""
  tau = 0.01
  z = np.asarray(jax.random.normal(jax.random.key(1), (40, 6))) * 0.01
  mean_probs = _np_lfq(z, tau)['mean_probs']
  exact = _np_entropy(mean_probs)
  entropies = jax.jit(
      lambda z: [lfq.batch_entropy(z, tau, g) for g in (1, 2, 3, 4)])
  for groups, got in zip((1, 2, 3, 4), entropies(jnp.asarray(z, jnp.float32))):
    # groups = 4: uneven groups of 2, 2, 1, 1 bits.
    got = float(got)
    np.testing.assert_allclose(got, _np_group_entropy(mean_probs, 6, groups),
                               rtol=1e-5, err_msg=str(groups))
    assert got >= exact - 1e-5
  assert got > exact + 0.1  # The approximation is not exact here...
  # ...but it is when the batch is a product of independent group halves.
  a = np.asarray(jax.random.normal(jax.random.key(2), (5, 3))) * 0.01
  b = np.asarray(jax.random.normal(jax.random.key(3), (8, 3))) * 0.01
  product = np.concatenate([np.repeat(a, 8, 0), np.tile(b, (5, 1))], -1)
  exact = _np_entropy(_np_lfq(product, tau)['mean_probs'])
  got = entropies(jnp.asarray(product, jnp.float32))[1]  # 2 groups.
  np.testing.assert_allclose(got, exact, rtol=1e-5)


@pytest.mark.parametrize('num_bits', [10, 11, 12])
def test_lfq_exact_batch_entropy_equals_the_full_softmax(num_bits):
  """Two halves' distributions and one matmul give the entropy of the mean
  of the full softmax over all 2^b codes (uneven halves at b = 11)."""
  z = np.asarray(jax.random.normal(jax.random.key(num_bits), (96, num_bits)))
  z = z * 0.004  # Spread over many codes at tau = 0.01.
  exact = _np_entropy(_np_lfq(z, 0.01)['mean_probs'])
  got = jax.jit(lambda z: lfq.batch_entropy(z, 0.01))(jnp.asarray(z))
  assert exact > 5  # Far from a one-code batch.
  np.testing.assert_allclose(float(got), exact, atol=1e-6 * exact, rtol=0)


def test_lfq_exact_batch_entropy_at_2_to_18_against_float64():
  """K = 2^18 on a batch of 40 positions: the default term equals the
  float64 entropy of the mean over all 2^18 codes, and the grouped bound
  (2 groups of 9 bits) is far above it."""
  tau = 0.01
  z = np.asarray(jax.random.normal(jax.random.key(18), (40, 18))) * 0.006
  log_p = np.zeros((40, 1))
  for bit in range(18):  # log p(c | z) bit by bit, bit 0 first.
    one = -np.logaddexp(0, -4 * z[:, bit:bit + 1] / tau)  # log sigmoid
    zero = -np.logaddexp(0, 4 * z[:, bit:bit + 1] / tau)
    log_p = np.concatenate([log_p + zero, log_p + one], axis=-1)
  mean = np.exp(log_p).mean(0)
  np.testing.assert_allclose(mean.sum(), 1.0, atol=1e-9)
  exact = _np_entropy(mean)
  q = lfq.LookupFreeQuantizer(codebook_size=2**18, factor_bits=(9, 9))
  got = jax.jit(lambda z: q.apply({}, z).metrics['batch_entropy'])(jnp.asarray(
      z, jnp.float32))
  np.testing.assert_allclose(float(got), exact, rtol=1e-6)
  grouped = float(
      jax.jit(lambda z: lfq.batch_entropy(z, tau, 2))(jnp.asarray(
          z, jnp.float32)))
  assert grouped > exact + 1.0, (grouped, exact)
  for module in (lfq_f16, ucf101_17x128, imagenet_128):  # The 2^18 configs.
    quantizer = module.get_config().model.quantizer
    assert (quantizer.codebook_size, quantizer.entropy_groups) == (2**18, 1)


def test_lfq_exact_batch_entropy_is_a_global_mean_over_a_sharded_batch():
  """Under jit the batch axis sharded over 8 devices gives the entropy of
  the global mean (not a mean of per-device entropies)."""
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))  # as the loop
  z = jax.random.normal(jax.random.key(9), (64, 10)) * 0.005
  sharded = jax.device_put(z, jax.NamedSharding(mesh, jax.P('data')))
  fn = jax.jit(lambda z: lfq.batch_entropy(z, 0.01))
  np.testing.assert_allclose(
      float(fn(sharded)),
      _np_entropy(_np_lfq(np.asarray(z), 0.01)['mean_probs']), rtol=1e-6)


def test_lfq_quantized_is_straight_through():
  q = lfq.LookupFreeQuantizer(codebook_size=32)
  z = jax.random.normal(jax.random.key(4), (3, 4, 5))
  cot = jax.random.normal(jax.random.key(5), z.shape)
  grad = jax.jit(lambda z, c: jax.vjp(lambda z: q.apply({}, z).quantized, z)[1]
                 (c)[0])(z, cot)
  np.testing.assert_allclose(grad, cot, atol=1e-6)


def test_lfq_loss_terms_have_the_right_gradients():
  """d loss / d z of the commitment term, of the entropy penalty (exact, and
  over 2 bit groups) and of both, against central differences of the float64
  reference. q(z) is constant near z, so the commitment term's differences
  are those of ||z - sg(q(z))||^2: the term moves z towards its code."""
  tau = 0.01
  z = np.asarray(jax.random.normal(jax.random.key(10), (2, 3, 4))) * 0.01
  assert np.abs(z).min() > 1e-5  # No sign flips within the differences.
  settings = {  # (commitment_weight, entropy_weight, entropy_groups)
      'commitment': (0.3, 0.0, 1),
      'entropy': (0.0, 0.2, 1),
      'entropy_2_groups': (0.0, 0.2, 2),
      'both': (0.3, 0.2, 1),
  }
  modules = {
      name:
          lfq.LookupFreeQuantizer(codebook_size=16, commitment_weight=c,
                                  entropy_weight=e, entropy_groups=g,
                                  entropy_temperature=tau)
      for name, (c, e, g) in settings.items()
  }
  grads = jax.jit(
      lambda z: {
          name: jax.grad(lambda z, q=q: q.apply({}, z).loss)(z)
          for name, q in modules.items()
      }, compiler_options=FAST_COMPILE)(jnp.asarray(z, jnp.float32))

  def np_loss(z, commitment_weight, entropy_weight, groups):
    ref = _np_lfq(z, tau)
    batch = (_np_entropy(ref['mean_probs']) if groups == 1 else
             _np_group_entropy(ref['mean_probs'], 4, groups))
    return (commitment_weight * ref['commitment'] + entropy_weight *
            (ref['sample_entropy'] - batch))

  for name, weights in settings.items():
    want = reference.numerical_grad(lambda z, w=weights: np_loss(z, *w), z,
                                    eps=1e-7)
    reference.assert_grad_close(grads[name], want, err_msg=name)


def test_lfq_factorized_indices():
  bits = (2, 4)  # Uneven: factor 0 = bits 0-1, factor 1 = bits 2-5.
  full = jnp.arange(64)
  factors = lfq.split_factors(full, bits)
  np.testing.assert_array_equal(
      factors,
      np.stack([np.arange(64) % 4, np.arange(64) // 4], -1))
  np.testing.assert_array_equal(lfq.combine_factors(factors, bits), full)
  q = lfq.LookupFreeQuantizer(codebook_size=64, factor_bits=bits)
  unfactored = lfq.LookupFreeQuantizer(codebook_size=64)
  z = jax.random.normal(jax.random.key(6), (3, 7, 6))

  @jax.jit
  def run(z):
    out, plain = q.apply({}, z), unfactored.apply({}, z)
    codes = (q.apply({}, out.indices, method=q.indices_to_codes),
             q.apply({}, plain.indices, factorized=False,
                     method=q.indices_to_codes))
    return out, plain, codes, q.full_indices(out.indices)

  out, plain, both_codes, full = run(z)
  assert out.indices.shape == (3, 7, 2)
  np.testing.assert_array_equal(lfq.combine_factors(out.indices, bits),
                                plain.indices)
  np.testing.assert_array_equal(full, plain.indices)
  for f in range(2):
    used = np.unique(np.asarray(out.indices[..., f]))
    np.testing.assert_allclose(out.metrics[f'usage/factor{f}'],
                               len(used) / 2**bits[f])
  np.testing.assert_allclose(out.metrics['usage'], plain.metrics['usage'])
  for codes in both_codes:  # Both forms of the indices.
    np.testing.assert_array_equal(codes, out.quantized)


def test_lfq_2_to_18_runs_with_small_memory():
  """K = 2^18, factors (9, 9), the exact batch entropy: temporaries stay far
  below one [M, 2^18] float32 array (what a full softmax over codes needs)."""
  z = jax.random.normal(jax.random.key(7), (2, 16, 16, 18)) * 0.01  # M = 512.

  q = lfq.LookupFreeQuantizer(codebook_size=2**18, factor_bits=(9, 9))

  def fn(z):
    loss_and_grad = jax.value_and_grad(lambda z: q.apply({}, z).loss)(z)
    out = q.apply({}, z)
    codes = q.apply({}, out.indices, method=q.indices_to_codes)
    return loss_and_grad, out.indices, out.quantized, codes

  compiled = jax.jit(fn).lower(z).compile()
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  one_full_array = 512 * 2**18 * 4  # What a full softmax would need.
  assert temp_bytes < one_full_array / 32, temp_bytes
  (loss, grad), indices, quantized, codes = compiled(z)
  assert np.isfinite(loss) and grad.shape == z.shape
  assert indices.shape == (2, 16, 16, 2) and int(indices.max()) < 512
  np.testing.assert_array_equal(codes, quantized)
  full = ((np.asarray(z) > 0) * 2**np.arange(18)).sum(-1)  # Bit 0 first.
  np.testing.assert_array_equal(indices, np.stack([full % 512, full // 512],
                                                  -1))


def test_lfq_entropy_weight_anneals_linearly():
  q = lfq.LookupFreeQuantizer(codebook_size=4, entropy_weight=0.5,
                              entropy_weight_final=0.1, entropy_anneal_steps=4)
  z = jnp.ones((2, 2))
  variables = jax.jit(functools.partial(q.init, train=False))(jax.random.key(0),
                                                              z)
  step = jax.jit(lambda v, z: q.apply(v, z, train=True, mutable=[base.STATE]))
  seen = []
  for _ in range(6):
    out, state = step(variables, z)
    seen.append(float(out.metrics['entropy_weight']))
    variables = state
  np.testing.assert_allclose(seen, [0.5, 0.4, 0.3, 0.2, 0.1, 0.1], rtol=1e-6)
  # Without annealing there is no state at all.
  assert not jax.eval_shape(
      lfq.LookupFreeQuantizer(codebook_size=4).init, jax.random.key(0), z)


def test_reverse_bits_maps_to_the_msb_first_order_of_lucidrains_lfq():
  """lucidrains' LFQ: index = sum_i 1{z_i > 0} 2^(b - 1 - i)."""
  b = 6
  z = jax.random.normal(jax.random.key(0), (50, b))
  msb_first = (np.asarray(z) > 0) @ (2**np.arange(b - 1, -1, -1))
  ours = lfq.bits_to_indices(z)
  np.testing.assert_array_equal(lfq.reverse_bits(ours, b), msb_first)
  np.testing.assert_array_equal(lfq.reverse_bits(msb_first, b), ours)
