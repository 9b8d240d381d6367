"""GPT generator: causality, cached sampling, filtering, conditioning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.compile_options import FAST_COMPILE
from tests.generators import head_probe
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
  with pytest.raises(ValueError):
    gpt.filter_logits(logits, top_p=0.0)


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


def test_training_steps_lower_loss():
  model = _model()
  params = _init(model)['params']
  tokens = _tokens(batch=4)
  optimizer = optax.adam(3e-3)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, opt_state):
    loss_fn = lambda p: gpt.next_token_loss(model.apply({'params': p}, tokens),
                                            tokens)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses = []
  for _ in range(10):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(VOCAB), rel=0.1)
  assert losses[-1] < losses[0] - 0.3


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
