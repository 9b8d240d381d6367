"""VQ (vqlab/quantizers/vq.py) against float64 numpy: the lookup, losses and
gradients against brute force; the EMA codebook and dead-code restarts against
a hand computation. Round trips and input errors: test_all_quantizers.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab import quantizers
from vqlab.quantizers import base
from vqlab.quantizers import vq


def _build(codebook_size=32, dim=4, beta=0.25, beta_on_codebook=False):
  config = quantizers.default_config('vq')
  config.codebook_size, config.embedding_dim = codebook_size, dim
  config.beta, config.beta_on_codebook = beta, beta_on_codebook
  return quantizers.build(config)


def _reference(z, codebook, beta):
  z, codebook = np.float64(z), np.float64(codebook)
  flat = z.reshape(-1, z.shape[-1])
  dist = ((flat[:, None, :] - codebook[None])**2).sum(-1)  # Brute force.
  idx = dist.argmin(-1)
  codes = codebook[idx].reshape(z.shape)
  mse = ((z - codes)**2).mean()
  counts = np.bincount(idx, minlength=len(codebook))
  p = counts / counts.sum()
  perplexity = np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())
  return idx.reshape(z.shape[:-1]), codes, mse + beta * mse, counts, perplexity


def test_matches_brute_force_reference():
  q = _build(beta=0.3)
  z = jax.random.normal(jax.random.key(1), (2, 5, 6, 4)) * 0.05
  variables = q.init(jax.random.key(0), z)
  out = q.apply(variables, z)
  idx, codes, loss, counts, perplexity = _reference(
      z, variables['params']['codebook'], 0.3)
  np.testing.assert_array_equal(out.indices, idx)
  assert out.indices.dtype == jnp.int32 and out.indices.shape == (2, 5, 6)
  np.testing.assert_allclose(out.quantized, codes, atol=1e-6)
  np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(out.metrics['usage'], (counts > 0).mean())
  np.testing.assert_allclose(out.metrics['perplexity'], perplexity, rtol=1e-5)


def test_cosine_low_dim_codes_match_brute_force_reference():
  """ViT-VQGAN's factorized codes: z projected to 3 dims and l2-normalized,
  looked up among l2-normalized codes, the losses on the normalized vectors,
  the code projected back to 8 dims."""
  config = quantizers.default_config('vq')
  config.update(codebook_size=16, embedding_dim=8, projection_dim=3,
                l2_normalize=True, beta=0.3)
  q = quantizers.build(config)
  z = jax.random.normal(jax.random.key(1), (2, 5, 8))
  variables = q.init(jax.random.key(0), z)
  out = q.apply(variables, z)
  params = jax.tree.map(np.float64, variables['params'])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  h = unit(
      np.float64(z) @ params['project_in']['kernel'] +
      params['project_in']['bias'])
  codebook = unit(params['codebook'])
  dist = ((h[..., None, :] - codebook)**2).sum(-1)  # Brute force.
  idx = dist.argmin(-1)
  codes = codebook[idx]
  np.testing.assert_array_equal(out.indices, idx)
  np.testing.assert_allclose(out.loss, 1.3 * ((h - codes)**2).mean(), rtol=1e-5)
  np.testing.assert_allclose(
      out.quantized,
      codes @ params['project_out']['kernel'] + params['project_out']['bias'],
      atol=1e-5)


def test_distances_ask_for_float32_exact_matmuls():
  # XLA:CPU is exact at any precision; TPU's default is one bfloat16 pass,
  # which gives 0.4-2.4% of tokens a code that is not their nearest.
  jaxpr = jax.make_jaxpr(vq.pairwise_sq_distances)(jnp.ones((4, 3)),
                                                   jnp.ones((5, 3)))
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 1
  assert dots[0].params['precision'] == (jax.lax.Precision.HIGHEST,) * 2


@pytest.mark.parametrize('beta_on_codebook', [False, True])
def test_loss_terms_have_the_right_gradients(beta_on_codebook):
  """The codebook term moves only codes, the commitment term only z; beta
  weighs the commitment term, or (taming's legacy placement) the codebook
  term."""
  q = _build(beta=0.25, beta_on_codebook=beta_on_codebook)
  z = jax.random.normal(jax.random.key(2), (3, 4)) * 0.05
  variables = q.init(jax.random.key(0), z)
  codebook = variables['params']['codebook']
  idx, codes, *_ = _reference(z, codebook, 0.25)
  loss_fn = lambda v, z: q.apply(v, z).loss
  g_vars, g_z = jax.grad(loss_fn, argnums=(0, 1))(variables, z)
  n = z.size
  commitment_weight, codebook_weight = ((1.0, 0.25) if beta_on_codebook else
                                        (0.25, 1.0))
  # d/dz [w mean((z - sg(e))^2)] = 2 w (z - e) / n.
  np.testing.assert_allclose(g_z, 2 * commitment_weight * (z - codes) / n,
                             atol=1e-6)
  expected = np.zeros_like(codebook)
  np.add.at(expected, idx, 2 * codebook_weight * (codes - np.asarray(z)) / n)
  np.testing.assert_allclose(g_vars['params']['codebook'], expected, atol=1e-6)


def test_straight_through_gradient_is_identity():
  q = _build()
  z = jax.random.normal(jax.random.key(3), (2, 3, 4))
  variables = q.init(jax.random.key(0), z)
  cotangent = jax.random.normal(jax.random.key(4), z.shape)
  _, pullback = jax.vjp(lambda z: q.apply(variables, z).quantized, z)
  np.testing.assert_allclose(pullback(cotangent)[0], cotangent, atol=1e-6)


# ------------------------------------------------------------ EMA codebook ---
K, D = 8, 3


def _quantizer(**kwargs):
  return vq.VectorQuantizer(codebook_size=K, embedding_dim=D, ema=True,
                            **kwargs)


def _init(q, z):
  return jax.jit(functools.partial(q.init, train=False))({
      'params': jax.random.key(0)
  }, z)


def _stats(seed):
  """Fresh EMA statistics as init makes them (tested in
  test_ema_update_matches_hand_computation), uncompiled."""
  codebook = jax.random.uniform(jax.random.key(seed), (K, D), minval=-1 / K,
                                maxval=1 / K)
  return {
      base.STATS: {
          'codebook': codebook,
          'cluster_size': jnp.ones(K),
          'embed_sum': codebook
      }
  }


def _train_apply(q):
  """jit(apply(train=True)) -> (output, new quantizer_stats)."""

  def fn(variables, z, key):
    out, state = q.apply(variables, z, train=True, rngs={'quantizer': key},
                         mutable=[base.STATS])
    return out, state[base.STATS]

  return jax.jit(fn)


def _np_ema(stats, z, decay, eps):
  """Hand computation: lookup with the old codebook, then the EMA step."""
  codebook = np.float64(stats['codebook'])
  flat = np.float64(z).reshape(-1, D)
  idx = ((flat[:, None] - codebook[None])**2).sum(-1).argmin(-1)
  counts = np.bincount(idx, minlength=K)
  sums = np.zeros((K, D))
  np.add.at(sums, idx, flat)
  cluster = decay * np.float64(stats['cluster_size']) + (1 - decay) * counts
  embed = decay * np.float64(stats['embed_sum']) + (1 - decay) * sums
  total = cluster.sum()
  smoothed = (cluster + eps) / (total + K * eps) * total
  return idx, codebook[idx], cluster, embed, embed / smoothed[:, None]


def test_ema_update_matches_hand_computation():
  q = _quantizer(decay=0.9, epsilon=1e-3, beta=0.3)
  z = jax.random.normal(jax.random.key(1), (5, 8, D)) * 0.02
  variables = _init(q, z)
  # No codebook param.
  assert 'params' not in variables or not variables['params']
  stats = variables[base.STATS]
  np.testing.assert_array_equal(stats['cluster_size'], np.ones(K))
  np.testing.assert_array_equal(stats['embed_sum'], stats['codebook'])
  apply = _train_apply(q)
  for _ in range(2):  # Two steps: the second starts from updated statistics.
    out, new = apply(variables, z, jax.random.key(2))
    idx, codes, cluster, embed, codebook = _np_ema(stats, z, 0.9, 1e-3)
    np.testing.assert_array_equal(out.indices.reshape(-1), idx)
    np.testing.assert_allclose(out.quantized.reshape(-1, D), codes, atol=1e-6)
    # No codebook term: the loss is beta * commitment only.
    np.testing.assert_allclose(
        out.loss, 0.3 * np.mean((np.float64(z).reshape(-1, D) - codes)**2),
        rtol=1e-5)
    np.testing.assert_allclose(new['cluster_size'], cluster, rtol=1e-6)
    np.testing.assert_allclose(new['embed_sum'], embed, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(new['codebook'], codebook, rtol=1e-5, atol=1e-7)
    variables = {**variables, base.STATS: new}
    stats = new


def test_ema_step_of_cosine_low_dim_codes_matches_hand_computation():
  """The quickstart's EMA codebook of unit vectors (and a projection): the
  counts and sums are of the projected, normalized vectors."""
  q = vq.VectorQuantizer(codebook_size=K, embedding_dim=4, ema=True,
                         l2_normalize=True, projection_dim=D, decay=0.9,
                         epsilon=1e-3)
  z = jax.random.normal(jax.random.key(2), (4, 6, 4))
  variables = _init(q, z)
  out, new = _train_apply(q)(variables, z, jax.random.key(3))
  params = jax.tree.map(np.float64, variables['params'])
  stats = jax.tree.map(np.float64, variables[base.STATS])
  h = (np.float64(z).reshape(-1, 4) @ params['project_in']['kernel'] +
       params['project_in']['bias'])
  h /= np.linalg.norm(h, axis=-1, keepdims=True)
  codebook = stats['codebook'] / np.linalg.norm(stats['codebook'], axis=-1,
                                                keepdims=True)
  want = _np_ema({**stats, 'codebook': codebook}, h, 0.9, 1e-3)
  np.testing.assert_array_equal(out.indices.reshape(-1), want[0])
  for name, value in zip(('cluster_size', 'embed_sum', 'codebook'), want[2:]):
    np.testing.assert_allclose(new[name], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('l2_normalize', [False, True])
def test_codebook_init(l2_normalize):
  """'auto': N(0, 1) codes for a cosine lookup, else U(-1/K, 1/K) (taming);
  'uniform' (TiTok's release) and 'normal' whatever the lookup."""
  z = jnp.zeros((1, 4))
  draw = lambda init: np.asarray(
      vq.VectorQuantizer(codebook_size=256, embedding_dim=4, l2_normalize=
                         l2_normalize, codebook_init=init).init(
                             jax.random.key(0), z)['params']['codebook'])
  for init, bound in (('uniform', 1 / 256), ('normal', None),
                      ('auto', None if l2_normalize else 1 / 256)):
    codebook = draw(init)
    if bound:
      assert np.abs(codebook).max() <= bound
      assert np.abs(codebook).max() > 0.95 * bound
    else:
      assert 0.9 < codebook.std() < 1.1
  with pytest.raises(ValueError, match='codebook_init'):
    draw('zeros')


def test_ema_statistics_change_only_when_training_and_mutable():
  q = _quantizer()
  z = jax.random.normal(jax.random.key(3), (4, 6, D)) * 0.02
  variables = _stats(2)
  _, state = jax.jit(
      lambda v, z: q.apply(v, z, train=False, mutable=[base.STATS]))(variables,
                                                                     z)
  jax.tree.map(np.testing.assert_array_equal, state[base.STATS],
               variables[base.STATS])
  # Immutable.
  out = jax.jit(lambda v, z: q.apply(v, z, train=True))(variables, z)
  assert out.indices.shape == (4, 6)


def test_ema_quantized_is_straight_through_and_codebook_gets_no_gradient():
  q = _quantizer()
  z = jax.random.normal(jax.random.key(4), (3, 5, D))
  variables = _stats(3)
  cotangent = jax.random.normal(jax.random.key(5), z.shape)
  g_vars, g_z = jax.jit(lambda v, z, c: jax.vjp(
      lambda v, z: q.apply(v, z).quantized, v, z)[1](c))(variables, z,
                                                         cotangent)
  np.testing.assert_allclose(g_z, cotangent, atol=1e-6)
  # Only the loss may move z; the statistics get no gradient from the output.
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_vars))


def test_dead_codes_restart_from_encoder_outputs():
  q = _quantizer(decay=0.3, epsilon=1e-3, restart_threshold=0.5)
  # All vectors sit near one point: one or two codes are used, the others
  # die (cluster size 0.3 < 0.5 after one step) and are restarted.
  z = 3.0 + 0.01 * jax.random.normal(jax.random.key(6), (4, 10, D))
  variables = _stats(0)
  stats = variables[base.STATS]
  out, new = _train_apply(q)(variables, z, jax.random.key(7))
  idx, _, cluster, embed, _ = _np_ema(stats, z, 0.3, 1e-3)
  dead = cluster < 0.5
  assert dead.sum() >= K - 2 and not dead[np.unique(idx)].any()
  np.testing.assert_allclose(out.metrics['restarted'], dead.mean())
  live = ~dead
  np.testing.assert_allclose(new['cluster_size'][live], cluster[live],
                             rtol=1e-6)
  np.testing.assert_allclose(new['embed_sum'][live], embed[live], rtol=1e-5)
  np.testing.assert_allclose(new['cluster_size'][dead], 1.0)
  flat = np.asarray(z).reshape(-1, D)
  for row in np.asarray(new['codebook'])[dead]:  # Each is one of the inputs.
    assert np.min(np.abs(flat - row).max(-1)) < 1e-7
  assert len({tuple(r) for r in np.asarray(new['codebook'])[dead]}) > 1
  # codebook == embed_sum / laplace_smooth(cluster_size) holds for live codes
  # (their smoothing sees the reset counts) and restarted ones.
  c = np.float64(new['cluster_size'])
  smoothed = (c + 1e-3) / (c.sum() + K * 1e-3) * c.sum()
  np.testing.assert_allclose(new['embed_sum'] / smoothed[:, None],
                             new['codebook'], rtol=1e-5)


def test_restarted_codes_count_as_used_at_the_threshold():
  # Reset below a threshold over 1, a fresh code would be dead again after
  # its first step unless it got about threshold / (1 - decay) hits.
  cluster = jnp.array([5.0, 0.1, 0.1, 3.0])
  embed_sum = jnp.ones((4, 2))
  fresh = jnp.arange(8.0).reshape(4, 2)
  for threshold, reset in ((0.5, 1.0), (2.0, 2.0)):
    counts, _, codebook, dead = vq.restart_dead_codes(cluster, embed_sum, fresh,
                                                      threshold, 1e-5)
    np.testing.assert_array_equal(dead, [False, True, True, False])
    np.testing.assert_allclose(counts, [5.0, reset, reset, 3.0])
    np.testing.assert_array_equal(codebook[1:3], fresh[1:3])
  # With threshold 2 and decay 0.99, a restarted code hit 3 times in its
  # next step stays (2.01); one hit once is restarted again (1.99).
  counts, _, _ = vq.ema_update(counts, jnp.ones((4, 2)),
                               jnp.array([0.0, 3.0, 1.0, 3.0]), jnp.ones(
                                   (4, 2)), 0.99, 1e-5)
  np.testing.assert_array_equal(
      np.asarray(counts) < 2.0, [False, False, True, False])


def test_ema_update_is_identical_on_one_and_eight_devices():
  q = _quantizer(decay=0.8, restart_threshold=0.85)
  z = jax.random.normal(jax.random.key(8), (16, 4, 4, D)) * 0.03
  variables = _stats(1)
  results = []
  for n in (1, 8):
    mesh = jax.make_mesh((n,), ('data',), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(z, jax.sharding.NamedSharding(mesh, jax.P('data')))
    replicated = jax.device_put(variables,
                                jax.sharding.NamedSharding(mesh, jax.P()))
    with jax.set_mesh(mesh):
      out, new = _train_apply(q)(replicated, sharded, jax.random.key(9))
    assert len(sharded.sharding.device_set) == n
    results.append(jax.device_get((out.indices, out.metrics, new)))
  (idx1, metrics1, new1), (idx8, metrics8, new8) = results
  assert 0 < metrics1['restarted'] < 1  # Restarts happen, and agree:
  np.testing.assert_array_equal(idx1, idx8)
  for key in new1:
    np.testing.assert_allclose(new8[key], new1[key], rtol=1e-6, atol=1e-7,
                               err_msg=key)
  np.testing.assert_allclose(metrics8['usage'], metrics1['usage'])


def test_pure_ema_update_and_laplace_smoothing():
  cluster = np.array([2.0, 0.0, 1.0])
  smoothed = np.asarray(vq.laplace_smooth(jnp.asarray(cluster), 0.5))
  np.testing.assert_allclose(smoothed, (cluster + 0.5) / (3 + 1.5) * 3)
  assert np.isclose(smoothed.sum(), cluster.sum())
  c, e, codebook = vq.ema_update(jnp.ones(3), jnp.ones((3, 2)),
                                 jnp.array([4.0, 0.0, 2.0]),
                                 jnp.array([[8.0, 4.0], [0, 0], [2, 2]]), 0.5,
                                 1e-9)
  np.testing.assert_allclose(c, [2.5, 0.5, 1.5])
  np.testing.assert_allclose(e, [[4.5, 2.5], [0.5, 0.5], [1.5, 1.5]])
  np.testing.assert_allclose(codebook, [[1.8, 1.0], [1, 1], [1, 1]], rtol=1e-6)


class _Tokenizer(nn.Module):
  """A model holding the quantizer as tokenizers do (`.quantizer`)."""
  quantizer: nn.Module

  def __call__(self, z, train=False):
    return self.quantizer(z, train=train)


def _step_in_calls(model, variables, parts, key):
  """A train step applying `model` once per array of `parts`, gathering the
  EMA statistics as the train tasks do -> (new variables, restarted)."""
  state = base.with_pending(model, variables)
  for i, z in enumerate(parts):
    _, new = model.apply(state, z, train=True,
                         rngs={'quantizer': jax.random.fold_in(key, i)},
                         mutable=base.mutable_collections(state))
    state = {**state, **new}
  state, metrics = base.apply_pending(model, state)
  return state, metrics['quantizer/restarted']


def test_a_step_in_several_calls_makes_one_ema_step_of_the_whole_batch():
  """Microbatches (and joint image-video batches) apply the quantizer several
  times per step: one EMA step of the whole batch, as one call makes. An EMA
  step per call counted each code k times too few against the restart
  threshold: at 2 calls a fifth of a healthy codebook restarted per step."""
  model = _Tokenizer(_quantizer(decay=0.9, epsilon=1e-3, restart_threshold=1.0))
  # Two vectors near each code, in calls of 3, 5 and 8 rows.
  codebook = jax.random.normal(jax.random.key(10), (K, D))
  z = jnp.repeat(codebook, 2,
                 axis=0) + 0.01 * jax.random.normal(jax.random.key(11),
                                                    (2 * K, D))
  z = jax.random.permutation(jax.random.key(12), z)
  stats = {
      'codebook': codebook,
      'cluster_size': 2.0 * jnp.ones(K),
      'embed_sum': 2.0 * codebook
  }
  variables = {base.STATS: {'quantizer': stats}}
  whole, restarted_whole = jax.jit(_step_in_calls,
                                   static_argnums=0)(model, variables, [z],
                                                     jax.random.key(0))
  parts, restarted_parts = jax.jit(_step_in_calls,
                                   static_argnums=0)(model, variables,
                                                     [z[:3], z[3:8], z[8:]],
                                                     jax.random.key(0))
  assert base.PENDING not in whole and base.PENDING not in parts
  assert float(restarted_whole) == float(restarted_parts) == 0.0
  _, _, cluster, embed, book = _np_ema(stats, z, 0.9, 1e-3)
  for new in (whole, parts):
    new = new[base.STATS]['quantizer']
    np.testing.assert_allclose(new['cluster_size'], cluster, rtol=1e-6)
    np.testing.assert_allclose(new['embed_sum'], embed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new['codebook'], book, rtol=1e-5, atol=1e-6)


def test_restart_candidates_of_a_step_in_several_calls_are_uniform_over_it():
  """Each code's candidate is drawn from all the step's rows: a call with
  three quarters of them gives about three quarters of the candidates."""
  k = 4096
  model = _Tokenizer(
      vq.VectorQuantizer(codebook_size=k, embedding_dim=D, ema=True,
                         restart_threshold=1e9))
  variables = model.init({'params': jax.random.key(0)}, jnp.zeros((1, D)))
  small = jnp.full((10, D), -1.0) + jnp.arange(10.0)[:, None] * 1e-3
  large = jnp.full((30, D), 1.0) + jnp.arange(30.0)[:, None] * 1e-3
  new, restarted = jax.jit(_step_in_calls, static_argnums=0)(model, variables,
                                                             [small, large],
                                                             jax.random.key(1))
  assert float(restarted) == 1.0  # Every code is below the threshold.
  fresh = np.asarray(new[base.STATS]['quantizer']['codebook'])
  from_large = np.mean(fresh[:, 0] > 0)
  assert abs(from_large - 0.75) < 3 * np.sqrt(0.75 * 0.25 / k)
  # Within each call, uniform over its rows.
  rows = np.round((fresh[fresh[:, 0] > 0, 0] - 1.0) * 1e3).astype(int)
  assert np.bincount(rows, minlength=30).min() > 0
