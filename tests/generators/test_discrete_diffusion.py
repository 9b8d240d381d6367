"""VQ-Diffusion's mask-and-replace process against brute force: explicit
(K+1) x (K+1) transition matrices in float64, Bayes' rule by enumeration."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import random_variables
from tests.compile_options import FAST_COMPILE
from tests.generators import head_probe
from vqlab import generators
from vqlab.generators import discrete_diffusion as dd
from vqlab.generators import vq_diffusion
from vqlab.nn import stack
from vqlab.train.tasks import generator_config

K, T = 5, 12


def _schedule():
  # Ends far from 0 and 1 so every entry is a visible probability.
  return dd.make_schedule(K, T, abar_1=0.97, abar_T=0.05, gbar_1=0.01,
                          gbar_T=0.8)


def _cumulative(t):
  abar = 0.97 + (0.05 - 0.97) * np.arange(T) / (T - 1)
  gbar = 0.01 + (0.8 - 0.01) * np.arange(T) / (T - 1)
  abar, gbar = np.concatenate([[1.0], abar]), np.concatenate([[0.0], gbar])
  return abar[t], gbar[t]


def _one_step_matrix(t):
  """Q_t[i, j] = q(x_t = j | x_{t-1} = i), from the per-step alpha, gamma."""
  (a1, g1), (a0, g0) = _cumulative(t), _cumulative(t - 1)
  alpha, gamma = a1 / a0, 1 - (1 - g1) / (1 - g0)
  beta = (1 - alpha - gamma) / K
  q = np.zeros((K + 1, K + 1))
  q[:K, :K] = beta + alpha * np.eye(K)
  q[:K, K] = gamma
  q[K, K] = 1.0
  return q


def _product(s, t):
  """Q_{s+1} ... Q_t: q(x_t | x_s) by matrix products."""
  out = np.eye(K + 1)
  for step in range(s + 1, t + 1):
    out = out @ _one_step_matrix(step)
  return out


def _jax_rows(fn, states):
  return np.exp(
      np.asarray(fn(dd.one_hot_log(jnp.asarray(states), K + 1)), np.float64))


@pytest.mark.parametrize('t', [1, 2, 7, T])
def test_closed_form_q_xt_given_x0_equals_matrix_products(t):
  states = np.arange(K + 1)[:, None]  # x_0 = every state.
  rows = _jax_rows(lambda lp: dd.q_xt_given_x0(lp, _schedule(), jnp.asarray(t)),
                   states)[:, 0]
  np.testing.assert_allclose(rows, _product(0, t), atol=2e-6)
  np.testing.assert_allclose(rows.sum(-1), 1.0, atol=2e-6)
  assert rows[K, K] == pytest.approx(1.0) and np.all(rows[K, :K] < 1e-30)


@pytest.mark.parametrize('s, t', [(0, 3), (2, 3), (4, 9), (1, T)])
def test_multi_step_transition_and_the_mask_is_absorbing(s, t):
  states = np.arange(K + 1)[:, None]
  rows = _jax_rows(
      lambda lp: dd.apply_transition(lp, _schedule(), jnp.asarray(s),
                                     jnp.asarray(t)), states)[:, 0]
  np.testing.assert_allclose(rows, _product(s, t), atol=2e-6)
  np.testing.assert_array_equal(rows[K, :K], 0.0)  # MASK stays MASK.


def _bayes_posterior(x_t, x0, t, u):
  """q(x_u = j | x_t, x_0) by enumeration: q(x_t | j) q(j | x_0) / q(x_t | x_0)."""
  forward, prior = _product(u, t), _product(0, u)
  joint = forward[:, x_t] * prior[x0, :]
  return joint / _product(0, t)[x0, x_t]


@pytest.mark.parametrize('t, u', [(1, 0), (2, 1), (7, 6), (T, T - 1), (9, 3),
                                  (T, 0)])
def test_posterior_equals_bayes_rule_and_rows_sum_to_one(t, u):
  schedule = _schedule()
  x0 = np.repeat(np.arange(K), K + 1)  # every (x_0, x_t) pair
  x_t = np.tile(np.arange(K + 1), K)
  log_post = dd.reverse_step_log_probs(
      dd.one_hot_log(jnp.asarray(x0), K + 1)[None],
      jnp.asarray(x_t)[None], schedule, jnp.asarray(t), jnp.asarray(u))[0]
  post = np.exp(np.asarray(log_post, np.float64))
  for i in range(len(x0)):
    if _product(0, t)[x0[i], x_t[i]] == 0:
      continue  # Impossible pair.
    np.testing.assert_allclose(post[i], _bayes_posterior(x_t[i], x0[i], t, u),
                               atol=2e-5)
  np.testing.assert_allclose(post.sum(-1), 1.0, atol=1e-5)
  # A code at time t never came from MASK.
  assert np.all(post[x_t < K][:, K] < 1e-30)


def test_a_schedule_no_markov_chain_has_is_refused():
  # abar 0.9 -> 0.1 and gbar 0.05 -> 0.9 over 7 steps: the replace mass
  # 1 - abar - gbar reaches 0 while abar stays at 0.1, so the last steps
  # would need K beta < 0 (float64 brute force: -0.0148 at t = 7).
  abar = np.concatenate([[1.0], np.linspace(0.9, 0.1, 7)])
  gbar = np.concatenate([[0.0], np.linspace(0.05, 0.9, 7)])
  k_beta = 1 - abar[1:] / abar[:-1] - (1 - (1 - gbar[1:]) / (1 - gbar[:-1]))
  assert k_beta.min() < -0.01 and np.argmin(k_beta) == 6
  with pytest.raises(ValueError, match=r'from t = 6 to 7 \(K beta = -0\.0148'):
    dd.make_schedule(3, 7, 0.9, 0.1, 0.05, 0.9)
  dd.make_schedule(3, 7, 0.9, 0.1, 0.05, 0.8)  # Valid: replace mass left.


def test_official_schedule_posteriors_equal_float64_brute_force():
  """The default (official) schedules keep abar_t + gbar_t within 1e-6 of 1,
  so the replace probability only survives if it never passes through
  float32 as 1 - alpha - gamma: every q(x_t | x_0), every one-step posterior
  and skip-step posteriors against explicit float64 matrices."""
  k, steps = 5, 100
  values = (0.99999, 0.000009, 0.000009, 0.99999)
  frac = np.arange(steps) / (steps - 1)
  abar = np.concatenate([[1.0], values[0] + frac * (values[1] - values[0])])
  gbar = np.concatenate([[0.0], values[2] + frac * (values[3] - values[2])])
  one_step = [None]
  for t in range(1, steps + 1):
    alpha = abar[t] / abar[t - 1]
    gamma = 1 - (1 - gbar[t]) / (1 - gbar[t - 1])
    q = np.zeros((k + 1, k + 1))
    q[:k, :k] = (1 - alpha - gamma) / k + alpha * np.eye(k)
    q[:k, k], q[k, k] = gamma, 1.0
    one_step.append(q)
  forward = lambda u, t: functools.reduce(np.matmul, one_step[u + 1:t + 1],
                                          np.eye(k + 1))
  cumulative = [forward(0, t) for t in range(steps + 1)]
  schedule = dd.make_schedule(k, steps)  # the defaults

  every_t = jnp.arange(steps + 1)
  rows = dd.q_xt_given_x0(
      jnp.broadcast_to(dd.one_hot_log(jnp.arange(k + 1), k + 1),
                       (steps + 1, k + 1, k + 1)), schedule, every_t)
  np.testing.assert_allclose(np.exp(np.asarray(rows, np.float64)),
                             np.stack(cumulative), atol=1e-6, rtol=0)

  pairs = [(t, t - 1) for t in range(1, steps + 1)
          ] + [(t, u) for t in (10, 50, steps) for u in (0, 3, t - 4)]
  x0 = np.repeat(np.arange(k), k + 1)  # every (x_0, x_t) pair
  x_t = np.tile(np.arange(k + 1), k)
  t, u = (jnp.asarray([p[i] for p in pairs]) for i in (0, 1))
  log_post = dd.reverse_step_log_probs(
      jnp.broadcast_to(dd.one_hot_log(jnp.asarray(x0), k + 1),
                       (len(pairs), len(x0), k + 1)),
      jnp.broadcast_to(jnp.asarray(x_t), (len(pairs), len(x_t))), schedule, t,
      u)
  post = np.exp(np.asarray(log_post, np.float64))
  for i, (ti, ui) in enumerate(pairs):
    for n in range(len(x0)):
      evidence = cumulative[ti][x0[n], x_t[n]]
      if evidence == 0:
        continue  # Impossible pair.
      expected = (forward(ui, ti)[:, x_t[n]] * cumulative[ui][x0[n], :] /
                  evidence)
      np.testing.assert_allclose(
          post[i, n], expected, atol=1e-6, rtol=0,
          err_msg=f't={ti} u={ui} x0={x0[n]} '
          f'x_t={x_t[n]}')


@pytest.mark.parametrize('t, u', [(1, 0), (5, 4), (T, 8)])
def test_reverse_step_sums_the_posterior_over_predicted_x0(t, u):
  rng = np.random.default_rng(0)
  p0 = rng.dirichlet(np.ones(K), size=K + 1)  # one p(x_0) per x_t
  x_t = np.arange(K + 1)
  log_p0 = np.concatenate([np.log(p0), np.full((K + 1, 1), dd.LOG_ZERO)], -1)
  got = np.exp(
      np.asarray(
          dd.reverse_step_log_probs(
              jnp.asarray(log_p0, jnp.float32)[None],
              jnp.asarray(x_t)[None], _schedule(), jnp.asarray(t),
              jnp.asarray(u))[0], np.float64))
  for s in x_t:
    expected = sum(p0[s, k] * _bayes_posterior(s, k, t, u)
                   for k in range(K)
                   if _product(0, t)[k, s] > 0)
    np.testing.assert_allclose(got[s], expected / expected.sum(), atol=2e-5)


@pytest.mark.parametrize('t, u', [(3, 2), (4, 0)])
def test_without_replacement_a_code_was_always_that_code(t, u):
  """abar + gbar = 1 (masking only, nothing replaced): a code at time t was
  that code at u, whatever p(x_0 | x_t) says; a [MASK] was x_0 with
  probability (abar_u - abar_t) / (1 - abar_t), else [MASK]."""
  k, steps = 3, 4
  schedule = dd.make_schedule(k, steps, abar_1=0.9, abar_T=0.1, gbar_1=0.1,
                              gbar_T=0.9)
  abar = np.concatenate([[1.0], np.linspace(0.9, 0.1, steps)])
  p0 = np.random.default_rng(0).dirichlet(np.ones(k), size=k + 1)
  log_p0 = np.concatenate([np.log(p0), np.full((k + 1, 1), dd.LOG_ZERO)], -1)
  got = np.exp(
      np.asarray(
          dd.reverse_step_log_probs(
              jnp.asarray(log_p0, jnp.float32)[None],
              jnp.arange(k + 1)[None], schedule, jnp.asarray(t),
              jnp.asarray(u))[0], np.float64))
  want = np.zeros((k + 1, k + 1))
  want[:k, :k] = np.eye(k)
  want[k, :k] = p0[k] * (abar[u] - abar[t]) / (1 - abar[t])
  want[k, k] = (1 - abar[u]) / (1 - abar[t])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_loss_terms_equal_brute_force_kl_and_decoder_nll():
  rng = np.random.default_rng(1)
  x0 = rng.integers(0, K, size=(3, 4))
  x_t = rng.integers(0, K + 1, size=(3, 4))
  t = np.array([1, 4, T])
  p0 = rng.dirichlet(np.ones(K), size=(3, 4))
  log_p0 = np.concatenate([np.log(p0), np.full((3, 4, 1), dd.LOG_ZERO)], -1)
  terms = dd.loss_terms(jnp.asarray(log_p0, jnp.float32), jnp.asarray(x0),
                        jnp.asarray(x_t), _schedule(), jnp.asarray(t))
  for b in range(3):
    expected = []
    for n in range(4):
      s, k = x_t[b, n], x0[b, n]  # Every pair is possible for t >= 1.
      p = sum(p0[b, n, j] * _bayes_posterior(s, j, t[b], t[b] - 1)
              for j in range(K))
      p /= p.sum()
      if t[b] == 1:
        expected.append(-np.log(p[k]))
      else:
        q = _bayes_posterior(s, k, t[b], t[b] - 1)
        expected.append(
            np.sum(
                np.where(
                    q > 0,
                    q * (np.log(np.maximum(q, 1e-300)) -
                         np.log(np.maximum(p, 1e-300))), 0.0)))
    np.testing.assert_allclose(terms.vlb[b], np.mean(expected), rtol=1e-4,
                               atol=1e-5)
  np.testing.assert_allclose(
      terms.x0_ce,
      -np.log(np.take_along_axis(p0, x0[..., None], -1))[..., 0].mean(-1),
      rtol=1e-5)


def _model(**overrides):
  config = generators.default_config('vq_diffusion')
  config.update(vocab_size=K, token_shape=(2, 3), num_timesteps=T, abar_1=0.97,
                abar_T=0.05, gbar_1=0.01, gbar_T=0.8, **overrides)
  model = generators.build(config)
  x = jnp.zeros((2, 2, 3), jnp.int32)
  cond = jnp.zeros((2,), jnp.int32) if model.condition == 'class' else None
  params = model.init(jax.random.key(0), x, jnp.ones((2,), jnp.int32),
                      cond)['params']
  return model, params


@pytest.mark.parametrize('num_steps, points', [(T, list(range(T, -1, -1))),
                                               (4, [T, 9, 6, 3, 0])],
                         ids=['every_step', 'skips_of_3'])
def test_fast_sampler_equals_the_brute_force_chain(num_steps, points):
  """All T steps (u = t - 1), and 4 of T: jumps t -> u = t - 3, the
  posterior q(x_u | x_t, x_0) of the skip, not of one step."""
  np.testing.assert_array_equal(vq_diffusion.time_points(T, num_steps), points)
  model, params = _model()
  rng = jax.random.key(3)
  fast = jax.jit(
      lambda p, r: vq_diffusion.sample(model, p, r, 4, num_steps=num_steps),
      compiler_options=FAST_COMPILE)(params, rng)
  apply = jax.jit(lambda p, x, t: model.apply({'params': p}, x, t),
                  compiler_options=FAST_COMPILE)
  # The chain written out with explicit matrices and Bayes' rule.
  x = np.full((4, 6), K)
  for i, (t, u) in enumerate(zip(points[:-1], points[1:])):
    p0 = np.exp(
        np.asarray(
            apply(params, jnp.asarray(x.reshape(4, 2, 3)), jnp.full((4,), t)),
            np.float64)[..., :K])
    # posterior[s, k]: q(x_u | x_t = s, x_0 = k); 0 where x_t = s is
    # impossible from k.
    posterior = np.zeros((K + 1, K, K + 1))
    for s in range(K + 1):
      for k in range(K):
        if _product(0, t)[k, s] > 0:
          posterior[s, k] = _bayes_posterior(s, k, t, u)
    probs = np.einsum('bnk,bnkj->bnj', p0, posterior[x])
    probs /= probs.sum(-1, keepdims=True)
    log_probs = jnp.asarray(
        np.log(np.maximum(probs, 1e-300)).clip(dd.LOG_ZERO), jnp.float32)
    x = np.asarray(dd.sample_states(jax.random.fold_in(rng, i), log_probs))
  np.testing.assert_array_equal(np.asarray(fast).reshape(4, 6), x)
  assert np.all(x < K)  # No MASK left at t=0.


def test_predict_x0_divides_the_log_probs_by_the_temperature():
  """temperature 0.5: log_softmax(log p / 0.5) over the codes, float64 (at
  1, log p / T and log p * T agree); [MASK] never predicted."""
  model, params = _model()
  x_t = jnp.asarray(np.random.default_rng(2).integers(0, K + 1, (4, 2, 3)))
  got, log_p = jax.jit(
      lambda p:
      (vq_diffusion.predict_x0(model, p, x_t, 5, None, temperature=0.5),
       model.apply({'params': p}, x_t, jnp.full(
           (4,), 5))), compiler_options=FAST_COMPILE)(params)
  log_p = np.asarray(log_p, np.float64)[..., :K]
  log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
  want = log_softmax(log_p / 0.5)
  np.testing.assert_allclose(got[..., :K], want, atol=1e-5)
  np.testing.assert_array_equal(got[..., K], dd.LOG_ZERO)
  # Sharper than log p itself, and than log p * 0.5.
  assert np.abs(log_softmax(log_p * 0.5) - want).max() > 0.5
  assert np.abs(log_p - want).max() > 0.2


def test_skip_sampler_time_points_and_outputs():
  np.testing.assert_array_equal(
      vq_diffusion.time_points(100, 25)[:3], [100, 96, 92])
  assert list(vq_diffusion.time_points(100, 10))[-2:] == [10, 0]
  model, params = _model()
  tokens = jax.jit(
      lambda r: vq_diffusion.sample(model, params, r, 3, num_steps=4))(
          jax.random.key(0))
  assert tokens.shape == (3, 2, 3) and int(tokens.max()) < K


def test_guidance_scale_zero_is_conditional_sampling_and_truncation():
  """guidance_scale is w, as MaskGIT's and GPT's (VQ-Diffusion's s = 1 + w):
  it was s, so 0 sampled unconditionally. Random params throughout: the
  init's zero AdaLN projections would leave the label unread, and every
  guided output equal to the unguided one."""
  model, _ = _model(condition='class', num_classes=3)
  labels = jnp.array([0, 1, 2, 1])
  x_t = jnp.asarray(np.random.default_rng(2).integers(0, K + 1, (4, 2, 3)))
  times = jnp.full((4,), 5, jnp.int32)
  params = random_variables.like_init(model, x_t, times, labels)['params']
  log_p = lambda drop: model.apply({'params': params}, x_t, times, labels,
                                   jnp.full((4,), drop))[..., :-1]
  assert float(jnp.abs(log_p(True) - log_p(False)).max()) > 0.05
  sample = lambda w, labels: np.asarray(
      vq_diffusion.sample(model, params, jax.random.key(1), 4, labels, num_steps
                          =4, guidance_scale=w))
  # Guided, the labels are joined with the null ones: a Python list too.
  np.testing.assert_array_equal(sample(0.0, labels),
                                sample(1e-12, [0, 1, 2, 1]))
  assert np.any(sample(0.0, labels) != sample(5.0, labels))
  # w = 2: log p_u + 3 (log p_c - log p_u) over the codes, renormalized.
  want = jax.nn.log_softmax(log_p(True) + 3 * (log_p(False) - log_p(True)))
  got = vq_diffusion.predict_x0(model, params, x_t, 5, labels,
                                guidance_scale=2.0)
  np.testing.assert_allclose(got[..., :-1], want, atol=1e-5)
  plain = vq_diffusion.predict_x0(model, params, x_t, 5, labels,
                                  guidance_scale=0.0)
  np.testing.assert_allclose(plain[..., :-1], jax.nn.log_softmax(log_p(False)),
                             atol=1e-5)
  log_p = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  kept = np.exp(np.asarray(vq_diffusion.truncate(log_p, 0.86)))
  np.testing.assert_allclose(kept, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
                             atol=1e-6)
  kept = np.exp(np.asarray(vq_diffusion.truncate(log_p, 0.86, False)))
  np.testing.assert_allclose(kept, [0.5, 0.3, 0.15, 0.0], atol=1e-6)


def _release_block(x, emb, labels, params, num_heads):
  """The release's class-conditional block ('selfcondition', float64):
  x += Attn(AdaLN(x, e_t)); x += MLP(AdaLN(x, E[y])), E the block's table."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def ada_ln(x, e, p):
    mod = (e / (1 + np.exp(-e))) @ p['modulation']['kernel']
    scale, shift = np.split(mod + p['modulation']['bias'], 2, axis=-1)
    norm = (x - x.mean(
        -1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    return norm * (1 + scale[:, None]) + shift[:, None]

  def attention(h, p):
    q, k, v = (np.einsum('bnd,dhk->bnhk', h, p[n]['kernel']) + p[n]['bias']
               for n in ('query', 'key', 'value'))
    logits = np.einsum('bnhk,bmhk->bhnm', q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum('bhnm,bmhk->bnhk', w, v)
    return np.einsum('bnhk,hkd->bnd', o, p['out']['kernel']) + p['out']['bias']

  def mlp(h, p):
    h = h @ p['fc1']['kernel'] + p['fc1']['bias']
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return h @ p['fc2']['kernel'] + p['fc2']['bias']

  assert num_heads == p['self_attention']['query']['kernel'].shape[1]
  x = x + attention(ada_ln(x, np.asarray(emb, np.float64), p['norm_self']),
                    p['self_attention'])
  class_emb = p['class_embed']['embedding'][np.asarray(labels)]
  return x + mlp(ada_ln(x, class_emb, p['norm_mlp']), p['mlp'])


def test_class_condition_is_each_blocks_mlp_adaln_as_the_release():
  """microsoft/VQ-Diffusion's ImageNet model: the class modulates each
  block's MLP LayerNorm through the block's own class table (with the null
  class's row), no cross-attention; nn.scan runs the same numbers."""
  model, params = _model(condition='class', num_classes=3)
  assert 'class_embed' not in params
  for block in ('block_0', 'block_1'):
    assert set(params[block]) == {
        'norm_self', 'self_attention', 'class_embed', 'norm_mlp', 'mlp'
    }
    assert params[block]['class_embed']['embedding'].shape == (4, model.width)
  rng = np.random.default_rng(0)  # Modulations away from their zero init.
  params = jax.tree.map(
      lambda a: a + 0.3 * rng.standard_normal(a.shape, np.float32), params)
  x_t = jnp.asarray(np.random.default_rng(3).integers(0, K + 1, (3, 2, 3)))
  times, labels = jnp.array([2, 7, 12]), jnp.array([0, 2, 1])
  drop = jnp.array([False, False, True])  # The last: the null class 3.
  apply = lambda m, p: m.apply({'params': p}, x_t, times, labels, drop)
  log_p, (args, block,
          out) = head_probe.module_call(lambda: apply(model, params), 'block_1')
  x, emb, context, _, y = args[:5]
  assert context is None
  np.testing.assert_array_equal(y, [0, 2, 3])
  np.testing.assert_allclose(
      out,
      _release_block(np.asarray(x, np.float64), emb, y, block, model.num_heads),
      rtol=1e-4, atol=1e-4)
  scanned = model.clone(scan_layers=True)
  like = jax.eval_shape(
      lambda: scanned.init(jax.random.key(0), x_t, times, labels))['params']
  np.testing.assert_allclose(apply(scanned, stack.match_layout(params, like)),
                             log_p, atol=1e-5)


def test_bfloat16_denoiser_has_float32_logits_of_its_final_norm():
  """The head computes in float32 from the float32 final norm (a bfloat16
  head rounded the logits to 8 bits: ties in truncation and purity)."""
  config = generators.default_config('vq_diffusion')
  config.update(vocab_size=K, token_shape=(2, 3), num_timesteps=T, width=16,
                num_layers=1, num_heads=2, mlp_dim=32)
  model = generators.build(config, dtype=jnp.bfloat16)
  x, t = jnp.asarray([[0, 1, 2], [3, 4, K]]), jnp.asarray([3, 9])
  x = jnp.stack([x, x[::-1]])
  params = model.init(jax.random.key(0), x, t)['params']
  log_p, hidden, head = head_probe.head_call(
      lambda: model.apply({'params': params}, x, t), 'head')
  logits = head_probe.dense_float64(hidden, head)
  expected = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(log_p[..., :K], expected, rtol=1e-5, atol=1e-6)


def test_out_of_range_tokens_are_a_clear_error():
  model, params = _model()
  with pytest.raises(ValueError, match=r'ids must be in \[0, 5\)'):
    model.apply({'params': params}, jnp.full((1, 2, 3), K + 1),
                jnp.ones((1,), jnp.int32))
  model, params = _model(condition='class', num_classes=3)
  for label in (-1, 4):  # 3 is the null class.
    with pytest.raises(ValueError, match=r'num_classes=3.*\[0, 4\)'):
      model.apply({'params': params}, jnp.zeros((1, 2, 3), jnp.int32),
                  jnp.ones((1,), jnp.int32), jnp.array([label]))
  # [B, 1] labels broadcast the AdaLN scale to [B, B, N, W] unnoticed.
  with pytest.raises(
      ValueError, match=r'^VQDiffusion: class ids must have shape \[B\] = '
      r'\(2,\), got \(2, 1\)'):
    model.apply({'params': params}, jnp.zeros((2, 2, 3), jnp.int32),
                jnp.ones((2,), jnp.int32), jnp.zeros((2, 1), jnp.int32))


@pytest.mark.parametrize('condition, cond, message', [
    ('none', jnp.array([1, 2]), "condition 'none' takes cond=None"),
    ('class', {
        'states': 0,
        'mask': 0
    }, 'a class condition is int'),
    ('text', ['a cat', 'a dog'], r"is \{'states': \[B, L, 8\], 'mask'.*"
     'got list'),
    ('text', {
        'states': jnp.zeros((2, 3, 8))
    }, r"got a dict with keys "
     r"\['states'\]"),
    ('text', {
        'states': jnp.zeros((3, 3, 8)),
        'mask': jnp.ones((3, 3))
    }, r'for B = 2 .* got states \(3, 3, 8\) and mask \(3, 3\)'),
    ('text', {
        'states': jnp.zeros((2, 3, 16)),
        'mask': jnp.ones((2, 3))
    }, r'got states \(2, 3, 16\)'),
])
def test_a_condition_the_model_cannot_take_is_a_clear_error(
    condition, cond, message):
  """A condition on an unconditional model was ignored; a wrong text
  condition failed deep in attention (or with KeyError: 'mask')."""
  config = generators.default_config('vq_diffusion')
  config.update(vocab_size=K, token_shape=(2, 3), num_timesteps=T,
                condition=condition, num_classes=3, cond_dim=8)
  model = generators.build(config)
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.key(0), jnp.zeros((2, 2, 3), int), jnp.ones(
        (2,), int), cond)


def test_hybrid_loss_weights_both_terms_by_the_times_probability(monkeypatch):
  """Per example, as the official code: (L_vlb + lambda w(t) L_x0) / (T p(t))
  with w(t) = 1 + (1 - t'/T) of its 0-based t' = t - 1."""
  model, params = _model()
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, K, (4, 2, 3)))
  times, weights = jnp.asarray([1, 2, 7, T]), jnp.asarray([0.5, 1.0, 2.0, 4.0])
  monkeypatch.setattr(vq_diffusion, 'sample_times', lambda *args, **kwargs:
                      (times, weights))
  loss = jax.jit(
      lambda ew: vq_diffusion.diffusion_loss(model, params, jax.random.key(
          0), tokens, aux_weight=0.3, example_weights=ew)[:2])
  for i in range(4):
    value, metrics = loss(jax.nn.one_hot(i, 4))
    w_t = 1 + (1 - (int(times[i]) - 1) / T)
    np.testing.assert_allclose(
        value,
        float(weights[i]) * (metrics['vlb'] + 0.3 * w_t * metrics['x0_ce']),
        rtol=1e-6)


def test_importance_sampling_probabilities_are_the_official_codes():
  """p(t) ~ sqrt(L_t^2 history + 1e-10) + 1e-4 with the decoder term's t = 1
  given t = 2's, once every t has more than 10 losses: the official
  sample_time, written in numpy on its 0-based t' = t - 1, with its L_t the
  sum over an example's n tokens where vqlab's history is of their mean."""
  steps, n = 6, 64
  history = np.array([0.0, 1e-12, 4e-8, 1.0, 0.25, 9.0, 0.0], np.float32)
  state = {
      'lt_sq': jnp.asarray(history),
      'lt_count': jnp.full((steps + 1,), 11)
  }
  lt_sqrt = np.sqrt(n**2 * np.float64(history[1:]) + 1e-10) + 1e-4
  lt_sqrt[0] = lt_sqrt[1]
  official = lt_sqrt / lt_sqrt.sum()
  t, weight = vq_diffusion.sample_times(jax.random.key(0), 4096, steps, state,
                                        'importance', num_tokens=n)
  np.testing.assert_allclose(weight, 1.0 / (steps * official[t - 1]), rtol=1e-5)
  frequency = np.bincount(np.asarray(t) - 1, minlength=steps) / 4096
  np.testing.assert_allclose(frequency, official, atol=0.03)
  # 10 losses of some t are not enough yet: uniform.
  state['lt_count'] = state['lt_count'].at[3].set(10)
  _, weight = vq_diffusion.sample_times(jax.random.key(0), 8, steps, state,
                                        'importance')
  np.testing.assert_allclose(weight, 1.0)
  with pytest.raises(ValueError, match="'uniform' or 'importance', got 'Imp"):
    vq_diffusion.sample_times(jax.random.key(0), 8, steps, state, 'Importance')
  with pytest.raises(ValueError, match="'importance' needs the loss_state"):
    vq_diffusion.sample_times(jax.random.key(0), 8, steps, None, 'importance')


def test_loss_history_moves_each_drawn_t_once_by_its_last_example():
  """The same t drawn by several examples moves by the last one's L_t^2, on
  every backend (a scatter of one value per example keeps whichever
  duplicate the backend writes last)."""
  state = {
      'lt_sq': jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0]),
      'lt_count': jnp.asarray([0, 5, 0, 7, 1], jnp.int32)
  }
  t = jnp.asarray([3, 1, 3, 2, 3, 1])
  vlb = jnp.asarray([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
  new = jax.jit(vq_diffusion.update_loss_history)(state, t, vlb)
  want = np.array(state['lt_sq'], np.float64)
  count = np.array(state['lt_count'])
  for i, ti in enumerate(np.asarray(t)):  # Later examples overwrite.
    want[ti] = 0.9 * np.float64(state['lt_sq'][ti]) + 0.1 * float(vlb[i])**2
    count[ti] += 1
  np.testing.assert_allclose(new['lt_sq'], want, rtol=1e-6)
  np.testing.assert_array_equal(new['lt_count'], count)


def test_training_lowers_the_loss():
  model, params = _model(condition='class', num_classes=3)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, K, size=(16, 2, 3)))
  labels = jnp.asarray(rng.integers(0, 3, size=16))
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    (loss, _), grads = jax.value_and_grad(
        lambda p: vq_diffusion.diffusion_loss(
            model, p, key, tokens, labels, aux_weight=1e-3, cond_drop=0.1)[:2],
        has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(60):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses


def test_byte_level_text_condition_reaches_the_denoiser(caplog):
  from vqlab.train.tasks import text_conditions  # pylint: disable=g-import-not-at-top
  ids, mask = text_conditions.encode_bytes(['a red', 'caf\u00e9'], 8)
  assert not caplog.records
  text_conditions.encode_bytes(['a red circle'], 8)  # Cut short: said once.
  assert 'text.max_length = 8 cuts captions short' in caplog.text
  assert ids[1, :5].tolist() == [99, 97, 102, 0xC3, 0xA9] and mask[1].sum() == 5
  assert ids[0, -1] == vq_diffusion.BYTE_VOCAB - 1 and not mask[0, -1]
  model, params = _model(condition='text', text_encoder='bytes')
  cond = {'ids': jnp.asarray(ids), 'mask': jnp.asarray(mask)}
  params = model.init(jax.random.key(0), jnp.zeros((2, 2, 3), jnp.int32),
                      jnp.ones((2,), jnp.int32), cond)['params']
  assert 'text_encoder' in params
  x_t = jnp.full((2, 2, 3), K)
  log_p = model.apply({'params': params}, x_t, jnp.full((2,), T), cond)
  assert float(jnp.abs(log_p[0] - log_p[1]).max()) > 1e-4
  dropped = model.apply({'params': params}, x_t, jnp.full((2,), T), cond,
                        jnp.array([True, True]))
  np.testing.assert_allclose(dropped[0], dropped[1], atol=1e-6)  # Null cond.


def _purity_inputs(batch):
  """Fixed p(x_0) per position (the same for every row), 3 codes + MASK."""
  p = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25],
                [0.34, 0.33, 0.33]])
  log_p = np.concatenate([np.log(p), np.full((4, 1), dd.LOG_ZERO)], -1)
  log_p = jnp.asarray(np.broadcast_to(log_p, (batch, 4, 4)), jnp.float32)
  purity = p.max(-1) / p.max()
  return p, log_p, purity


def test_purity_step_reveals_by_purity_and_samples_sharpened_tokens():
  """Positions: a draw without replacement with probabilities proportional
  to the purity (Plackett-Luce, brute-forced over pairs); tokens:
  softmax((1 + r s_i) log p_i); revealed tokens never change."""
  batch, r = 20000, 1.0
  p, log_p, s = _purity_inputs(batch)
  x = jnp.full((batch, 4), 3, jnp.int32)
  step = jax.jit(vq_diffusion.purity_step, static_argnums=4)

  one = np.asarray(step(jax.random.key(0), log_p, x, 1, r))
  revealed = one != 3
  assert np.all(revealed.sum(1) == 1)
  np.testing.assert_allclose(revealed.mean(0), s / s.sum(), atol=0.015)
  sharpened = p**(1 + r * s)[:, None]
  sharpened /= sharpened.sum(-1, keepdims=True)
  for i in range(4):
    tokens = one[revealed[:, i], i]
    np.testing.assert_allclose(
        np.bincount(tokens, minlength=3) / len(tokens), sharpened[i], atol=0.03)

  two = np.asarray(step(jax.random.key(1), log_p, x, 2, r)) != 3
  total = s.sum()
  for i in range(4):
    for j in range(i + 1, 4):
      expected = (s[i] / total * s[j] / (total - s[i]) + s[j] / total * s[i] /
                  (total - s[j]))
      observed = np.mean(two[:, i] & two[:, j])
      np.testing.assert_allclose(observed, expected, atol=0.015)

  # A revealed token stays; the draw is over the masked positions only.
  x = x.at[:, 0].set(2)
  again = np.asarray(step(jax.random.key(2), log_p, x, 1, r))
  assert np.all(again[:, 0] == 2)
  np.testing.assert_allclose((again[:, 1:] != 3).mean(0), s[1:] / s[1:].sum(),
                             atol=0.015)


def test_purity_sampler_scores_the_truncated_unrenormalized_p(monkeypatch):
  """Renormalizing over the kept codes divides each position's top
  probability by its kept mass, which can reorder the positions' purity."""
  model, params = _model()
  renormalized = []
  predict_x0 = vq_diffusion.predict_x0

  def spy(*args, **kwargs):
    renormalized.append(kwargs['renormalize'])
    return predict_x0(*args, **kwargs)

  monkeypatch.setattr(vq_diffusion, 'predict_x0', spy)
  for sampler in ('purity', 'chain'):
    vq_diffusion.sample(model, params, jax.random.key(0), 2, num_steps=2,
                        sampler=sampler, truncation=0.6)
  assert renormalized == [False, True]


def test_purity_sampler_unmasks_as_the_schedule_and_equals_its_steps():
  model, params = _model()
  rng, n = jax.random.key(4), 6
  points = vq_diffusion.time_points(T, 4)
  # gbar_t, the mask probability of the chain from 0 to t.
  gbar = np.exp(np.asarray(model.schedule().log_gamma, np.float64)[0])
  reveals = vq_diffusion.purity_reveal_counts(gbar, points, n)
  masked_after = np.round(n * gbar[points[1:]])
  masked_after[-1] = 0
  np.testing.assert_array_equal(n - np.cumsum(reveals), masked_after)

  x = jnp.full((3, n), K, jnp.int32)
  schedule = model.schedule()
  for i, (t, u, num) in enumerate(zip(points[:-1], points[1:], reveals)):
    # Truncated, each position scored by its top code's own probability
    # (the release's p_sample), not renormalized over the kept codes.
    log_p = vq_diffusion.predict_x0(model, params, x.reshape(3, 2, 3), int(t),
                                    None, truncation=0.6, renormalize=False)
    step_rng = jax.random.fold_in(rng, i)
    if u == 0:
      # The last step is the chain's, as the release's p_sample at t = 0:
      # every position drawn from p(x_0 | x_t), revealed ones too.
      x = dd.sample_states(
          step_rng, dd.reverse_step_log_probs(log_p, x, schedule, int(t), 0))
      break
    new = vq_diffusion.purity_step(step_rng, log_p, x, int(num), 1.0)
    was = np.asarray(x) != K
    np.testing.assert_array_equal(np.asarray(new)[was], np.asarray(x)[was])
    assert np.all((np.asarray(new) != K).sum(1) == n - masked_after[i])
    x = new
  sampled = vq_diffusion.sample(model, params, rng, 3, num_steps=4,
                                sampler='purity', truncation=0.6)
  np.testing.assert_array_equal(np.asarray(sampled).reshape(3, n), x)
  # One step is the chain's one step, purity_weight or not.
  one_step = functools.partial(vq_diffusion.sample, model, params, rng, 3,
                               num_steps=1, purity_weight=2.0)
  np.testing.assert_array_equal(one_step(sampler='purity'),
                                one_step(sampler='chain'))
  # The generator task's settings reach it.
  settings = generator_config.default_config().sample
  settings.update(diffusion_sampler='purity', diffusion_steps=4, truncation=0.6)
  through_api = generators.get_api('vq_diffusion').sample(
      model, params, rng, 3, None, settings=settings, loss_settings=None,
      token_shape=(2, 3))
  np.testing.assert_array_equal(through_api, sampled)
