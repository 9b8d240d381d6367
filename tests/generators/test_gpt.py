"""GPT generator: causality, cached sampling, filtering, conditioning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.compile_options import FAST_COMPILE
from tests.generators import head_probe
from tests.quantizers import reference
from vqlab import generators
from vqlab.errors import ConfigError
from vqlab.generators import gpt
from vqlab.train import experiment_config

VOCAB, GRID = 16, (3, 3)
LENGTH = GRID[0] * GRID[1]


def _model(**overrides):
  config = generators.default_config('gpt')
  config.update(vocab_size=VOCAB, length=LENGTH, width=32, mlp_dim=64,
                cond_vocab_size=8, cond_length=4, num_classes=5, **overrides)
  return generators.build(config)


def _init(model, cond=None, batch=2):
  tokens = jnp.zeros((batch, model.length), jnp.int32)
  return model.init(jax.random.key(0), tokens, cond)


def _tokens(batch=2, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, VOCAB)


def test_registry_and_causality():
  assert 'gpt' in generators.names()
  model = _model()
  params = _init(model)
  apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  tokens = _tokens()
  logits = apply(params, tokens)
  assert logits.shape == (2, LENGTH, VOCAB) and logits.dtype == jnp.float32
  for j in (0, 4, LENGTH - 2):
    changed = apply(params, tokens.at[:, j].set((tokens[:, j] + 1) % VOCAB))
    # logits[:, i] predicts token i from tokens < i: positions <= j unchanged.
    np.testing.assert_array_equal(logits[:, :j + 1], changed[:, :j + 1])
    assert float(jnp.max(jnp.abs(logits[:, j + 1:] - changed[:, j + 1:]))) > 0
  # The last token is never an input.
  last = apply(params, tokens.at[:, -1].set((tokens[:, -1] + 1) % VOCAB))
  np.testing.assert_array_equal(logits, last)


def test_bfloat16_model_has_float32_logits_of_its_hidden_state():
  """The head computes in float32 from the bfloat16 blocks' output: logits
  with more than bfloat16's 8 significant bits (fewer ties for top-k/p)."""
  config = generators.default_config('gpt')
  config.update(vocab_size=VOCAB, length=LENGTH, width=32, mlp_dim=64,
                num_layers=1)
  model = generators.build(config, dtype=jnp.bfloat16)
  params = _init(model)
  logits, hidden, head = head_probe.head_call(
      lambda: model.apply(params, _tokens()), 'head')
  assert logits.dtype == jnp.float32 and head_probe.bfloat16_valued(hidden)
  assert not head_probe.bfloat16_valued(logits)
  np.testing.assert_allclose(logits, head_probe.dense_float64(hidden, head),
                             rtol=1e-5, atol=1e-6)


def test_invalid_inputs_raise():
  model = _model()
  params = _init(model)
  with pytest.raises(ValueError, match='vocab_size=16'):
    model.apply(params, _tokens().at[0, 3].set(VOCAB))
  with pytest.raises(ValueError, match='vocab_size=16'):
    model.apply(params, _tokens().at[1, 0].set(-1))
  with pytest.raises(ValueError, match='vocab_size=16'):
    model.apply(params, _tokens().at[1, -1].set(VOCAB))  # Never an input.
  with pytest.raises(ValueError, match='length=9'):
    model.apply(params, jnp.zeros((2, LENGTH + 1), jnp.int32))
  with pytest.raises(ValueError, match='cond=None'):
    model.apply(params, _tokens(), jnp.zeros((2,), jnp.int32))
  class_model = _model(condition='class')
  class_params = _init(class_model, jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match=r'shape \[B\]'):
    class_model.apply(class_params, _tokens(), jnp.zeros((2, 1), jnp.int32))
  with pytest.raises(ValueError, match='num_classes=5'):
    class_model.apply(class_params, _tokens(), jnp.array([0, 6]))
  # Labels as a Python list, as MaskGIT takes them.
  np.testing.assert_array_equal(
      class_model.apply(class_params, _tokens(), [1, 4]),
      class_model.apply(class_params, _tokens(), jnp.array([1, 4])))


@pytest.mark.parametrize('condition', ['none', 'class', 'tokens'])
def test_cached_sampling_equals_full_recompute(condition):
  model = _model(condition=condition)
  cond = {
      'none': None,
      'class': jnp.array([1, 5]),
      'tokens': jnp.array([[0, 1, 2, 3], [7, 6, 5, 4]])
  }[condition]
  params = _init(model, cond)
  run = lambda use_cache, temperature: jax.jit(
      lambda p, r, c: gpt.
      sample(model, p, r, 2, c, temperature=temperature, top_k=8, use_cache=
             use_cache, return_logits=True), compiler_options=FAST_COMPILE)(
                 params, jax.random.key(3), cond)
  # Argmax and (same rng) sampled draws; argmax once is enough.
  for temperature in (0.0, 1.0) if condition == 'none' else (1.0,):
    cached, cached_logits = run(True, temperature)
    full, full_logits = run(False, temperature)
    assert cached.shape == (2, LENGTH) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached, full)
    np.testing.assert_allclose(cached_logits, full_logits, atol=1e-5)
    # Per-step logits are those of a forward pass on the sampled sequence.
    np.testing.assert_allclose(model.apply(params, cached, cond), full_logits,
                               atol=1e-5)
  assert int(cached.min()) >= 0 and int(cached.max()) < VOCAB


def test_draws_at_temperature_half_follow_softmax_of_twice_the_logits():
  """Tokens follow softmax(l / T) at T = 0.5 (at T = 1, l / T and l * T
  agree). With the head's kernel zeroed every position's logits l are the
  head's bias, so all B x N draws share one distribution."""
  model = _model()
  params = _init(model)
  bias = jnp.linspace(-1.5, 1.5, VOCAB)
  head = {
      'kernel': jnp.zeros_like(params['params']['head']['kernel']),
      'bias': bias
  }
  params = {'params': {**params['params'], 'head': head}}
  tokens, logits = jax.jit(
      lambda p, r: gpt.sample(model, p, r, 1000, temperature=0.5, return_logits=
                              True),
      compiler_options=FAST_COMPILE)(params, jax.random.key(4))
  np.testing.assert_allclose(logits, np.broadcast_to(bias, logits.shape),
                             atol=1e-6)
  probs = reference.softmax(np.float64(bias) / 0.5)
  reference.assert_follows(tokens, probs, 'gpt at temperature 0.5')


def test_filter_logits_matches_numpy():
  logits = jax.random.normal(jax.random.key(0), (4, 32)) * 2
  for k in (1, 5, 32):
    kept = np.isfinite(np.asarray(gpt.filter_logits(logits, top_k=k)))
    assert (kept.sum(-1) == k).all()
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    assert np.take_along_axis(kept, top, -1).all()
  for p in (0.1, 0.5, 0.9):
    kept = np.isfinite(np.asarray(gpt.filter_logits(logits, top_p=p)))
    probs = np.asarray(jax.nn.softmax(logits))
    for row, prob in zip(kept, probs):
      order = np.argsort(-prob)
      count = int(np.searchsorted(np.cumsum(prob[order]), p) + 1)
      expected = np.zeros_like(row)
      expected[order[:count]] = True
      np.testing.assert_array_equal(row, expected)
  with pytest.raises(ValueError, match=r'0 < top_p <= 1, got .*top_p=0\.0'):
    gpt.filter_logits(logits, top_p=0.0)
  with pytest.raises(ValueError, match=r'top_k >= 0.*got top_k=-1'):
    gpt.filter_logits(logits, top_k=-1)


def test_top_p_after_top_k_renormalizes_over_the_top_k():
  """top_k=5, top_p=0.5 (as configs/gpt/imagenet256.py's 600 and 0.92):
  the nucleus is the smallest prefix, by descending probability, of the
  softmax over the 5 kept logits alone that reaches 0.5."""
  logits = np.asarray(jax.random.normal(jax.random.key(1), (16, 32)) * 2)
  got = np.asarray(gpt.filter_logits(jnp.asarray(logits), top_k=5, top_p=0.5))

  def nucleus_sizes(renormalize):
    sizes = []
    for row in np.float64(logits):
      top = np.sort(row)[::-1][:5]
      probs = np.exp(top - top.max())
      probs /= (probs.sum() if renormalize else np.exp(row - top.max()).sum())
      before = np.cumsum(probs) - probs
      sizes.append(int((before < 0.5).sum()))
    return np.array(sizes)

  sizes = nucleus_sizes(renormalize=True)
  want = np.full_like(logits, -np.inf)
  for row, size in enumerate(sizes):
    keep = np.argsort(-logits[row], kind='stable')[:size]
    want[row, keep] = logits[row, keep]
  np.testing.assert_array_equal(got, want)
  # The softmax of all 32 logits would keep more in some rows, and both
  # filters cut: the largest nucleus holds 2 to 4 of the top 5.
  assert (nucleus_sizes(renormalize=False) != sizes).any()
  assert 1 < sizes.max() < 5


def test_conditioning_changes_logits():
  tokens = _tokens()
  model = _model(condition='class')
  params = _init(model, jnp.zeros((2,), jnp.int32))
  a = model.apply(params, tokens, jnp.array([0, 1]))
  b = model.apply(params, tokens, jnp.array([2, 1]))
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-4
  np.testing.assert_array_equal(a[1], b[1])
  null = model.apply(params, tokens, None)  # None = null class.
  np.testing.assert_array_equal(null,
                                model.apply(params, tokens, jnp.array([5, 5])))

  model = _model(condition='tokens')
  cond = jnp.array([[0, 1, 2, 3], [0, 1, 2, 3]])
  params = _init(model, cond)
  a = model.apply(params, tokens, cond)
  b = model.apply(params, tokens, cond.at[0, 2].set(7))
  assert a.shape == (2, LENGTH, VOCAB)
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-4
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(
      a, model.apply(params, tokens, cond.reshape(2, 2, 2)))
  with pytest.raises(ValueError, match='cond_vocab_size=8'):
    model.apply(params, tokens, cond.at[0, 0].set(8))
  with pytest.raises(ValueError, match='cond_length'):
    model.apply(params, tokens, cond[:, :3])


def _log_softmax64(logits):
  logits = np.float64(logits)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_loss_is_the_weighted_next_token_cross_entropy():
  """The task's loss (with 4 condition tokens before the image tokens) is
  the float64 cross-entropy of the model's own logits [:, i] against token
  i, averaged over the tokens of the examples by their weights [1, 0, 1, 1];
  its gradient in the logits is w (softmax - onehot) / (N sum w)."""
  from vqlab.train.tasks import generator_config  # pylint: disable=g-import-not-at-top
  model = _model(condition='tokens')
  tokens = _tokens(batch=4)
  cond = jax.random.randint(jax.random.key(2), (4, 4), 0, 8)
  params = dict(
      jax.jit(model.init,
              compiler_options=FAST_COMPILE)(jax.random.key(0), tokens,
                                             cond)['params'])
  # A head 20x its init: logits far from uniform, so the targets matter.
  params['head'] = jax.tree.map(lambda a: a * 20, params['head'])
  weights = jnp.array([1.0, 0.0, 1.0, 1.0])
  settings = generator_config.default_config().loss

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(p):
    loss, metrics, _ = gpt.API.loss(model, p, tokens, cond, jax.random.key(0),
                                    settings=settings, train=False,
                                    example_weights=weights)
    logits = model.apply({'params': p}, tokens, cond)
    grad = jax.grad(gpt.next_token_loss)(logits, tokens, weights)
    return loss, metrics, logits, grad

  loss, metrics, logits, grad = run(params)
  logits = np.asarray(logits)
  log_p = _log_softmax64(logits)
  w = np.float64(weights)[:, None]

  def weighted_mean(per_token):
    return (w * per_token).sum() / (w.sum() * LENGTH)

  targets = np.asarray(tokens)[..., None]
  nll = -np.take_along_axis(log_p, targets, -1)[..., 0]
  np.testing.assert_allclose(loss, weighted_mean(nll), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss)
  correct = logits.argmax(-1) == np.asarray(tokens)
  np.testing.assert_allclose(metrics['accuracy'], weighted_mean(correct),
                             rtol=1e-6)
  # Next-token targets shifted by one, or every example weighted 1, would
  # give other values.
  shifted = -np.take_along_axis(log_p, np.roll(targets, -1, 1), -1)[..., 0]
  assert abs(weighted_mean(shifted) - weighted_mean(nll)) > 0.1
  assert abs(nll.mean() - weighted_mean(nll)) > 0.05
  # Training follows the gradient of that value.
  onehot = np.eye(VOCAB)[np.asarray(tokens)]
  np.testing.assert_allclose(
      grad, w[..., None] * (np.exp(log_p) - onehot) / (w.sum() * LENGTH),
      atol=1e-7)


def test_sliding_window_sampling():
  model = _model()
  params = _init(model)
  sliding = lambda grid, temperature: jax.jit(
      lambda p, r: gpt.sample_sliding_window(
          model, p, r, 2, grid_shape=grid, window=GRID, temperature=temperature
      ), compiler_options=FAST_COMPILE)(params, jax.random.key(5))
  big = sliding((5, 4), 1.0)
  assert big.shape == (2, 5, 4) and big.dtype == jnp.int32
  assert int(big.min()) >= 0 and int(big.max()) < VOCAB
  # Greedy, against a step-by-step loop over explicit crops: the crop
  # centred on (i, j) and clamped into the grid, the logits at (i, j)'s
  # row-major index inside it.
  apply = jax.jit(lambda t: model.apply(params, t, None))
  want = np.zeros((2, 5, 4), np.int32)
  for i in range(5):
    for j in range(4):
      si, sj = min(max(i - 1, 0), 5 - 3), min(max(j - 1, 0), 4 - 3)
      crop = want[:, si:si + 3, sj:sj + 3].reshape(2, LENGTH)
      logits = np.asarray(apply(jnp.asarray(crop)))
      want[:, i, j] = logits[:, (i - si) * 3 + (j - sj)].argmax(-1)
  np.testing.assert_array_equal(sliding((5, 4), 0.0), want)
  plain = jax.jit(lambda p, r: model.sample(p, r, 2, temperature=0.0),
                  compiler_options=FAST_COMPILE)(params, jax.random.key(5))
  np.testing.assert_array_equal(sliding(GRID, 0.0).reshape(2, -1), plain)
  with pytest.raises(ValueError, match='window'):
    gpt.sample_sliding_window(model, params, jax.random.key(0), 2,
                              grid_shape=(2, 4), window=GRID)


def _class_setup():
  model = _model(condition='class')
  cond = jnp.array([1, 3])
  return model, _init(model, cond), cond


def _guided_sampler(model, **kwargs):
  """Jitted `gpt.sample(model, params, rng, 2, cond, **kwargs)`."""
  return jax.jit(lambda p, r, c: gpt.sample(model, p, r, 2, c, **kwargs),
                 compiler_options=FAST_COMPILE)


def test_guidance_zero_is_the_unguided_sampler():
  model, params, cond = _class_setup()
  rng = jax.random.key(7)
  plain, plain_logits = _guided_sampler(model, return_logits=True)(params, rng,
                                                                   cond)
  zero, zero_logits = _guided_sampler(model, return_logits=True,
                                      guidance_scale=0.0)(params, rng, cond)
  np.testing.assert_array_equal(zero, plain)
  np.testing.assert_array_equal(zero_logits, plain_logits)


def test_guided_sampling_equals_brute_force_reference():
  model, params, cond = _class_setup()
  scale = 3.0
  apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  null = jnp.full_like(cond, model.null_class)
  # Greedy decoding with full-sequence logits of the cond and null prefixes.
  expected = np.zeros((2, LENGTH), np.int32)
  for i in range(LENGTH):
    prefix = jnp.asarray(expected)
    l_c = apply(params, prefix, cond)[:, i]
    l_u = apply(params, prefix, null)[:, i]
    logits = l_u + (1 + scale) * (l_c - l_u)
    expected[:, i] = np.argmax(np.asarray(logits), -1)
  rng = jax.random.key(0)
  for kwargs in ({
      'temperature': 0.0
  }, {
      'top_k': 1
  }, {
      'temperature': 0.0,
      'use_cache': False
  }):
    guided = _guided_sampler(model, guidance_scale=scale, **kwargs)(params, rng,
                                                                    cond)
    np.testing.assert_array_equal(guided, expected, err_msg=str(kwargs))
  sliding = jax.jit(
      lambda p, r, c: gpt.sample_sliding_window(
          model, p, r, 2, GRID, GRID, c, temperature=0.0, guidance_scale=scale),
      compiler_options=FAST_COMPILE)(params, rng, cond)
  np.testing.assert_array_equal(sliding, expected.reshape(2, *GRID))
  # Guidance changed the greedy choices, so the comparison tests it.
  unguided = _guided_sampler(model, temperature=0.0)(params, rng, cond)
  assert (np.asarray(unguided) != expected).any()


@pytest.mark.parametrize('condition', ['none', 'tokens'])
def test_guidance_needs_class_condition(condition):
  model = _model(condition=condition)
  cond = None if condition == 'none' else jnp.zeros((2, 4), jnp.int32)
  params = _init(model, cond)
  with pytest.raises(ValueError, match="guidance.*condition 'class'"):
    gpt.sample(model, params, jax.random.key(0), 2, cond, guidance_scale=1.0)
  if condition == 'none':
    with pytest.raises(ValueError, match="guidance.*condition 'class'"):
      gpt.sample_sliding_window(model, params, jax.random.key(0), 2, GRID, GRID,
                                guidance_scale=1.0)


def test_generator_config_refuses_gpt_guidance_it_cannot_run():
  from configs.gpt import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  config.sample.guidance_scale = 2.0
  with pytest.raises(ConfigError,
                     match='guidance_scale.*unconditional gpt ignores it'):
    experiment_config.validate(config, 1)
  config.model.condition = 'class'
  experiment_config.validate(config, 1)
  config.sample.guidance_schedule = 'linear'
  with pytest.raises(ConfigError, match='guidance_schedule'):
    experiment_config.validate(config, 1)


def test_prefix_tokens_are_kept_and_condition_the_rest():
  model = _model(condition='none')
  params = _init(model, None)
  prefix = jnp.array([[3, 1, 4], [1, 5, 9]])
  run = lambda use_cache, given: jax.jit(
      lambda p, r, g: gpt.sample(model, p, r, 2, temperature=0.0, use_cache=
                                 use_cache, return_logits=True, prefix=g),
      compiler_options=FAST_COMPILE)(params, jax.random.key(3), given)
  cached, cached_logits = run(True, prefix)
  full, full_logits = run(False, prefix)
  np.testing.assert_array_equal(cached, full)
  np.testing.assert_array_equal(cached[:, :3], prefix)
  # Logits at position i predict token i: every later token is the argmax
  # of a forward pass over the sequence.
  logits = model.apply(params, cached)
  np.testing.assert_allclose(cached_logits, logits, atol=1e-5)
  np.testing.assert_array_equal(cached[:, 3:], np.argmax(logits[:, 3:], -1))
  other, _ = run(True, (prefix + 1) % VOCAB)
  assert np.any(np.asarray(other)[:, 3:] != np.asarray(cached)[:, 3:])
  with pytest.raises(ValueError, match=r'prefix must be int \[B, P\]'):
    gpt.sample(model, params, jax.random.key(0), 2, prefix=jnp.zeros(
        (2, LENGTH), jnp.int32))
  with pytest.raises(ValueError, match='prefix token ids'):
    gpt.sample(model, params, jax.random.key(0), 2, prefix=prefix + VOCAB)


def test_known_tokens_must_be_a_row_major_prefix():
  """The task's `known` (frame prediction) reaches GPT as a prefix; any
  other mask of given tokens is refused, never silently ignored."""
  model = _model(condition='none')
  params = _init(model, None)
  from configs.gpt import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = experiment_config.validate(tiny_cpu.get_config(), 1)
  tokens = jnp.zeros((2, LENGTH), jnp.int32)
  mask = np.zeros(LENGTH, bool)
  mask[1] = True
  with pytest.raises(ValueError, match='row-major prefix'):
    gpt.API.sample(model, params, jax.random.key(0), 2, None,
                   settings=config.sample, loss_settings=config.loss,
                   token_shape=(LENGTH,), known=(tokens, mask))
  # Another batch's tokens: the reshape gave row 1 row 0's later tokens.
  mask[:] = False
  mask[0] = True
  with pytest.raises(
      ValueError, match=rf'known tokens of shape \(1, {2 * LENGTH}\), '
      rf'expected \[B, {LENGTH}\] with B = 2'):
    gpt.API.sample(model, params, jax.random.key(0), 2, None,
                   settings=config.sample, loss_settings=config.loss,
                   token_shape=(LENGTH,), known=(tokens.reshape(1, -1), mask))
