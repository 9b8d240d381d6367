"""MaskGIT: schedule, masked loss, decoding invariants, factorized heads."""

import decimal
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.compile_options import FAST_COMPILE
from tests.generators import head_probe
from vqlab import generators
from vqlab.generators import api
from vqlab.generators import mask_schedule
from vqlab.generators import maskgit
from vqlab.quantizers import lfq


def _model(**overrides):
  config = generators.default_config('maskgit')
  config.update(overrides)
  return generators.build(config)


def _init(model, batch=2):
  factors = model.factor_vocab_sizes
  factor_axes = (len(factors),) if factors else ()
  tokens = jnp.zeros((batch, *model.token_shape, *factor_axes), jnp.int32)
  labels = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  init = jax.jit(model.init, compiler_options=FAST_COMPILE)
  return init(jax.random.key(0), tokens, labels)['params']


@pytest.fixture(scope='module')
def default_model():
  """The default MaskGIT (4x4 tokens of 64 codes, unconditional) and its
  initial params, for the tests that only read them."""
  model = _model()
  return model, _init(model)


@pytest.fixture(scope='module')
def class_model():
  """The default MaskGIT conditioned on 3 classes and its initial params,
  for the tests that only read them."""
  model = _model(num_classes=3)
  return model, _init(model)


def _step_and_logits(model, params, state, conditions=(None,), **kwargs):
  """(decode_step's new state given labels conditions[0], the flat logits
  [B, N, F, V] of state.tokens given each of `conditions`), from one
  compiled program."""

  def run(params, state):
    logits_of = functools.partial(model.apply, {'params': params}, state.tokens,
                                  method=maskgit.MaskGIT.flat_logits)
    return (maskgit.decode_step(model, params, state, conditions[0], **kwargs),
            [logits_of(labels) for labels in conditions])

  return jax.jit(run, compiler_options=FAST_COMPILE)(params, state)


def _jit_sample(model, batch, **kwargs):
  fn = functools.partial(maskgit.sample, model, batch_size=batch, **kwargs)
  return jax.jit(fn, compiler_options=FAST_COMPILE)


@pytest.mark.parametrize('method', ['cosine', 'arccos', 'linear'])
def test_schedule_values(method):
  at_half = {
      'cosine': np.cos(np.pi / 4),
      'arccos': np.arccos(0.5) / (np.pi / 2),
      'linear': 0.5
  }[method]
  values = mask_schedule.schedule(jnp.array([0.0, 0.5, 1.0]), 1, method)
  np.testing.assert_allclose(values, [1.0, at_half, 0.0], atol=1e-6)
  np.testing.assert_allclose(mask_schedule.schedule(0.5, 16, method),
                             16 * at_half, rtol=1e-6)
  with pytest.raises(ValueError, match='unknown mask schedule'):
    mask_schedule.schedule(0.5, 1, 'nope')


@functools.cache
def _exact_gammas(steps, method):
  """gamma((s+1)/S) for s < S in 60-digit decimal arithmetic (Taylor cosine,
  arccos by bisection), computed once per (S, method)."""
  decimal.getcontext().prec = 60
  pi = decimal.Decimal('3.14159265358979323846264338327950288419716939937510'
                       '58209749445923')

  def cos(x):
    term, total, k = decimal.Decimal(1), decimal.Decimal(1), 0
    while abs(term) > decimal.Decimal('1e-58'):
      k += 2
      term *= -x * x / (k * (k - 1))
      total += term
    return total

  def arccos(y):
    lo, hi = decimal.Decimal(0), pi
    for _ in range(200):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if cos(mid) > y else (lo, mid)
    return lo

  gammas = []
  for s in range(steps):
    r = decimal.Decimal(s + 1) / steps
    gammas.append({
        'cosine': lambda: cos(pi * r / 2),
        'arccos': lambda: arccos(r) / (pi / 2),
        'linear': lambda: 1 - r
    }[method]())
  return gammas


def _exact_decode_counts(n, steps, method):
  """floor(gamma((s+1)/S) n) in 60-digit decimal arithmetic: the
  brute-force reference for the float64 counts."""
  decimal.getcontext().prec = 60
  counts = []
  for gamma in _exact_gammas(steps, method):
    kept = max(gamma, decimal.Decimal(0)) * n
    counts.append(
        int((kept + decimal.Decimal('1e-40')).to_integral_value(
            decimal.ROUND_FLOOR)))
  return counts


@pytest.mark.parametrize('method', ['cosine', 'arccos', 'linear'])
def test_decode_counts_are_exact(method):
  for n in (16, 96, 256, 1024):
    for steps in (6, 8, 12, 16):
      np.testing.assert_array_equal(
          mask_schedule.decode_mask_counts(n, steps, method),
          _exact_decode_counts(n, steps, method), err_msg=f'{n=} {steps=}')
  # float32 made this 127 (0.49999997 * 256).
  assert mask_schedule.decode_mask_counts(256, 12)[7] == 128


def test_random_mask_counts():
  """Per example ceil(cos(pi r / 2) N) masked (at least 1), r ~ U(0, 1) the
  first draw of the rng's split: float64 against the float32 counts."""
  rng = jax.random.key(3)
  mask = mask_schedule.random_mask(rng, 64, 10, 'cosine')
  counts = np.asarray(mask.sum(-1))
  ratio = np.float64(jax.random.uniform(jax.random.split(rng)[0], (64,)))
  want = np.clip(np.ceil(np.cos(np.pi / 2 * ratio) * 10), 1, 10)
  np.testing.assert_array_equal(counts, want)
  assert len(set(counts)) > 3


def test_random_mask_counts_rounded_as_titoks_release():
  """rounding='round': round(arccos(r) / (pi / 2) N) (half to even, as
  torch.round), at least 1: TiTok's release; ceil masks more."""
  rng = jax.random.key(3)
  counts = lambda rounding: np.asarray(
      mask_schedule.random_mask(rng, 256, 32, 'arccos', rounding=rounding).sum(
          -1))
  ratio = np.float64(jax.random.uniform(jax.random.split(rng)[0], (256,)))
  gamma = np.arccos(ratio) / (np.pi / 2) * 32
  np.testing.assert_array_equal(counts('round'),
                                np.clip(np.round(gamma), 1, 32))
  np.testing.assert_array_equal(counts('ceil'), np.clip(np.ceil(gamma), 1, 32))
  with pytest.raises(ValueError, match="unknown rounding 'floor'"):
    mask_schedule.random_mask(rng, 2, 32, rounding='floor')


def test_random_mask_masks_the_maskable_only_by_their_count():
  """Frame prediction's training mask: ceil(gamma(r) M) of the M maskable
  positions (at least 1 where M > 0; float64 counts), none of the others,
  every maskable position alike likely; all maskable: the plain mask."""
  rng, batch, n = jax.random.key(4), 4400, 10
  maskable = np.arange(n)[None] >= (np.arange(batch) % (n + 1))[:, None]
  mask = np.asarray(
      mask_schedule.random_mask(rng, batch, n, 'cosine', maskable=maskable))
  assert not np.any(mask & ~maskable)
  m = maskable.sum(-1)  # 10, 9, ..., 0.
  ratio = np.float64(jax.random.uniform(jax.random.split(rng)[0], (batch,)))
  want = np.clip(np.ceil(np.cos(np.pi / 2 * ratio) * m), np.minimum(1, m), m)
  np.testing.assert_array_equal(mask.sum(-1), want)
  frequency = mask[m == 7][:, 3:].mean(0)  # 400 examples, 7 maskable each.
  assert frequency.max() - frequency.min() < 0.12, frequency
  np.testing.assert_array_equal(
      mask_schedule.random_mask(rng, 64, n, maskable=np.ones((64, n), bool)),
      mask_schedule.random_mask(rng, 64, n))


def test_frame_prediction_gives_a_rate_of_examples_their_first_frames():
  known = np.asarray(
      maskgit.frame_prediction_mask(jax.random.key(0), 4000, (3, 2, 2), 2,
                                    0.25)).reshape(4000, 12)
  given = known.any(-1)
  np.testing.assert_array_equal(known[given][0], [True] * 8 + [False] * 4)
  assert np.all(known[given] == known[given][0])
  assert given.mean() == pytest.approx(0.25, abs=0.02)


def test_masked_loss_never_masks_the_known_positions():
  """known_mask is the random mask drawn over the other positions: the same
  loss as that mask given (a known_mask left out: a plain draw's mask); one
  shared by the batch too; another shape is named. Through the API, frame
  prediction at rate 0 draws as without it. One compile."""
  model = _model(vocab_size=16, token_shape=(3, 2, 2))
  params = _init(model)
  tokens = np.random.default_rng(1).integers(0, 16, (8, 3, 2, 2))
  rng = jax.random.key(3)

  def api_loss(params, frames, rate):
    settings = ml_collections.ConfigDict(
        dict(label_drop=0.0, label_smoothing=0.0, mask_schedule='cosine',
             mask_rounding='ceil', unmasked_weight=0.5, observed_frames=frames,
             observed_frames_rate=rate))
    return generators.get_api('maskgit').loss(model, params, tokens, None, rng,
                                              settings=settings, train=True)[0]

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def draws_and_losses(params):
    known = maskgit.frame_prediction_mask(jax.random.key(2), 8, (3, 2, 2), 1,
                                          0.5)
    mask = mask_schedule.random_mask(
        jax.random.split(rng, 3)[0], 8, 12, 'cosine',
        maskable=~known.reshape(8, 12))
    loss = functools.partial(maskgit.masked_loss, model, params, rng, tokens,
                             unmasked_weight=0.5)
    with_known, metrics = loss(known_mask=known)
    return known, mask, {
        'known': with_known,
        'masked': metrics['accuracy_weight'],
        'mask': loss(mask=mask)[0],
        'rate_0': api_loss(params, 1, 0.0),
        'off': api_loss(params, 0, 0.5),
    }

  known, mask, got = jax.device_get(draws_and_losses(params))
  assert known.any() and not np.any(mask & known.reshape(8, 12))
  assert got['known'] == pytest.approx(got['mask'], rel=1e-6)
  assert got['masked'] == mask.sum()
  assert got['rate_0'] == got['off']
  shared = np.zeros((3, 2, 2), bool)
  shared[0] = True
  np.testing.assert_array_equal(
      maskgit.flat_known_mask(model, shared, 8),
      maskgit.flat_known_mask(model, np.broadcast_to(shared, (8, 3, 2, 2)), 8))
  with pytest.raises(ValueError, match='a mask or known_mask, not both'):
    maskgit.masked_loss(model, params, rng, tokens, mask=mask, known_mask=known)
  with pytest.raises(
      ValueError, match=r'known_mask of shape \(8, 12\), '
      r'expected \[B, 3, 2, 2\] or \[3, 2, 2\]'):
    maskgit.masked_loss(model, params, rng, tokens,
                        known_mask=known.reshape(8, 12))


def test_decoding_keeps_revealed_tokens_and_follows_schedule():
  model = _model(token_shape=(16, 16))
  params = _init(model)
  steps, n = 12, model.num_tokens  # cos(pi/3) 256 = 128 at step 7.
  exact = _exact_decode_counts(n, steps, 'cosine')
  final, history = _jit_sample(model, 3, num_steps=steps,
                               return_history=True)(params, jax.random.key(1))
  history = np.asarray(history).reshape(steps, 3, n)
  masked = history == model.vocab_size
  unknown = np.full(3, n)
  previous = np.full((3, n), model.vocab_size)
  for s in range(steps):
    want = np.maximum(1, np.minimum(unknown - 1, exact[s]))
    want = want * 0 if s == steps - 1 else want
    np.testing.assert_array_equal(masked[s].sum(-1), want)
    revealed = previous != model.vocab_size
    np.testing.assert_array_equal(history[s][revealed], previous[revealed])
    previous, unknown = history[s], masked[s].sum(-1)
  np.testing.assert_array_equal(np.asarray(final).reshape(3, n), history[-1])
  assert history[-1].min() >= 0 and history[-1].max() < model.vocab_size


def test_a_step_remasks_the_lowest_annealed_confidences(default_model):
  """Step s = 3 of S = 6 from all-[MASK]: confidence = log p(sampled) +
  c (1 - 4/6) Gumbel; the floor(gamma(4/6) N) lowest are masked again, the
  rest keep their sample. c = 1 and positions made distinct (positional
  embeddings x10) so that log p and the annealed noise both decide."""
  model, params = default_model
  params = dict(params)
  params['pos_embedding'] = params['pos_embedding'] * 10
  state = maskgit.init_state(model, jax.random.key(3), 8)
  state = state.replace(step=jnp.full((), 3, jnp.int32))
  new, (logits,) = _step_and_logits(model, params, state, num_steps=6,
                                    temperature=0.0, choice_temperature=1.0)
  sampled = jnp.argmax(logits, -1)
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                              sampled[..., None], -1)[..., 0].sum(-1)
  _, _, gumbel_rng = jax.random.split(state.rng, 3)
  gumbel = jax.random.gumbel(gumbel_rng, log_p.shape)
  confidence = np.asarray(log_p + 1.0 * (1 - 4 / 6) * gumbel)
  n = model.num_tokens
  keep = _exact_decode_counts(n, 6, 'cosine')[3]
  masked = np.asarray(new.tokens[..., 0] == model.mask_ids[0])
  for b in range(8):
    want = np.zeros(n, bool)
    want[np.argsort(confidence[b])[:keep]] = True
    np.testing.assert_array_equal(masked[b], want)
    np.testing.assert_array_equal(
        np.asarray(new.tokens)[b][~want],
        np.asarray(sampled)[b][~want])
  # A temperature of 0 as an array (traced here) is the argmax too, not a
  # draw from logits / 0 (the first positive logit).
  traced = jax.jit(
      lambda p, s, t: maskgit.decode_step(model, p, s, num_steps=6, temperature=
                                          t, choice_temperature=1.0),
      compiler_options=FAST_COMPILE)(params, state, jnp.float32(0))
  np.testing.assert_array_equal(traced.tokens, new.tokens)


def test_tokens_are_drawn_from_the_logits_over_the_temperature(default_model):
  """At temperature 0.5 a step's tokens are categorical(its sampling key,
  logits / 0.5) (at 1, logits / T and logits * T agree); the last step
  (s = 5 of 6) re-masks none, so every position shows its draw."""
  model, params = default_model
  state = maskgit.init_state(model, jax.random.key(3), 8)
  state = state.replace(step=jnp.full((), 5, jnp.int32))
  new, (logits,) = _step_and_logits(model, params, state, num_steps=6,
                                    temperature=0.5, choice_temperature=1.0)
  _, sample_rng, _ = jax.random.split(state.rng, 3)
  draw = lambda logits: np.asarray(jax.random.categorical(sample_rng, logits))
  want = draw(logits / 0.5)
  np.testing.assert_array_equal(np.asarray(new.tokens), want)
  # Other temperatures draw other tokens from the same key.
  for other in (logits * 0.5, logits):
    assert (draw(other) != want).mean() > 0.2


def _titok_release_sampling(model, params, rng, labels, num_steps, w, c):
  """TiTok's released sampler as its FID script runs it (1d-tokenizer
  ImageBert.generate with softmax_temperature_annealing: arccos schedule,
  guidance w s/S, logits divided by 0.5 + 0.8 (1 - (s+1)/S), tokens and
  confidences both at the annealed temperature c (1 - (s+1)/S), the
  confidence the divided logit), in numpy, on the Gumbel noise that vqlab's
  steps draw from their keys."""
  logits_of = functools.partial(
      jax.jit(
          functools.partial(model.apply, method=maskgit.MaskGIT.flat_logits),
          compiler_options=FAST_COMPILE), {'params': params})
  state = maskgit.init_state(model, rng, len(labels))
  ids, rng = np.asarray(state.tokens)[..., 0], state.rng
  mask_id, n = int(model.mask_ids[0]), ids.shape[1]
  for step in range(num_steps):
    rng, sample_rng, gumbel_rng = jax.random.split(rng, 3)
    cond = np.asarray(logits_of(ids[..., None], labels))[:, :, 0]
    uncond = np.asarray(logits_of(ids[..., None], jnp.full_like(labels,
                                                                3)))[:, :, 0]
    logits = cond + (cond - uncond) * (w * step / num_steps)
    ratio = (step + 1) / num_steps
    logits = logits / (0.5 + 0.8 * (1 - ratio))
    temp = c * (1 - ratio)
    noise = np.asarray(
        jax.random.gumbel(sample_rng,
                          logits.shape[:2] + (1,) + logits.shape[2:]))[:, :, 0]
    is_mask = ids == mask_id
    sampled = np.argmax(logits + temp * noise, -1)
    picked = np.take_along_axis(logits, sampled[..., None], -1)[..., 0]
    sampled = np.where(is_mask, sampled, ids)
    picked = np.where(is_mask, picked, np.inf)
    mask_len = np.floor(n * np.arccos(ratio) / (np.pi / 2))
    mask_len = int(max(1, min(is_mask.sum(-1).min() - 1, mask_len)))
    confidence = picked + temp * np.asarray(
        jax.random.gumbel(gumbel_rng, picked.shape))
    cut_off = np.sort(confidence, -1)[:, mask_len - 1:mask_len]
    ids = (sampled if step == num_steps -
           1 else np.where(confidence <= cut_off, mask_id, sampled))
  return ids


def test_titok_decoding_is_the_released_sampler(class_model):
  """decoding='titok' with the arccos schedule and linear guidance gives the
  tokens of TiTok's release (its temperature 9.5 and scale 4.5 of L-32);
  'maskgit' (log p, tokens at temperature 1) other ones."""
  model, params = class_model
  params = dict(params)
  params['pos_embedding'] = params['pos_embedding'] * 10
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  run = lambda decoding: np.asarray(
      jax.jit(
          lambda p, rng: maskgit.
          sample(model, p, rng, 8, labels, num_steps=8, choice_temperature=9.5,
                 guidance_scale=4.5, guidance_schedule='linear', schedule_method
                 ='arccos', decoding=decoding), compiler_options=FAST_COMPILE)
      (params, jax.random.key(5)))
  want = _titok_release_sampling(model, params, jax.random.key(5), labels, 8,
                                 4.5, 9.5)
  got = run('titok')
  np.testing.assert_array_equal(got.reshape(8, -1), want)
  # The config's sample section reaches it (configs/maskgit/titok.py).
  from vqlab.train.tasks import generator_config  # pylint: disable=g-import-not-at-top
  config = generator_config.default_config()
  config.sample.update(decoding='titok', num_steps=8, choice_temperature=9.5,
                       guidance_scale=4.5, guidance_schedule='linear')
  config.loss.mask_schedule = 'arccos'
  sample = jax.jit(
      lambda p, rng: maskgit.API.sample(
          model, p, rng, 8, labels, settings=config.sample, loss_settings=config
          .loss, token_shape=model.token_shape), compiler_options=FAST_COMPILE)
  np.testing.assert_array_equal(sample(params, jax.random.key(5)), got)
  assert (run('maskgit').reshape(8, -1) != want).mean() > 0.3
  with pytest.raises(ValueError, match="unknown decoding 'muse'"):
    maskgit.sample(model, params, jax.random.key(5), 8, labels, decoding='muse')


def test_greedy_decoding_is_deterministic(default_model):
  model, params = default_model
  fn = _jit_sample(model, 2, num_steps=4, temperature=0.0,
                   choice_temperature=0.0)
  np.testing.assert_array_equal(fn(params, jax.random.key(1)),
                                fn(params, jax.random.key(2)))


def test_guidance_zero_equals_conditional_sampling(class_model):
  model, params = class_model
  labels = jnp.array([0, 2])
  # A traced w runs the unconditional pass too (a Python 0 would skip it).
  fn = jax.jit(
      lambda p, rng, w:
      (maskgit.sample(model, p, rng, 2, labels, num_steps=3),
       maskgit.sample(model, p, rng, 2, labels, num_steps=3, guidance_scale=w,
                      guidance_schedule='linear')),
      compiler_options=FAST_COMPILE)
  plain, guided = fn(params, jax.random.key(4), jnp.float32(0.0))
  np.testing.assert_array_equal(plain, guided)
  # Labels as a Python list, guided (joined with the null labels).
  guided_list = maskgit.sample(model, params, jax.random.key(4), 2, [0, 2],
                               num_steps=3, guidance_scale=1.0)
  np.testing.assert_array_equal(
      guided_list,
      maskgit.sample(model, params, jax.random.key(4), 2, labels, num_steps=3,
                     guidance_scale=1.0))
  cond, uncond = jnp.array([2.0, 1.0]), jnp.array([1.0, 1.0])
  np.testing.assert_allclose(api.guided_logits(cond, uncond, 2.0), [4.0, 1.0])


@pytest.mark.parametrize('step, w', [(0, 8.0), (3, 1.0)])
def test_the_linear_guidance_schedule_is_w_s_over_s(step, w, class_model):
  """Step s of S = 4 guides with w s / S (TiTok's release): greedy tokens
  are the argmax of l_u + (1 + w s/S)(l_c - l_u) where they are revealed;
  w (s + 1)/S would pick others. Positional embeddings x10 make the
  positions' logits distinct."""
  model, params = class_model
  params = dict(params)
  params['pos_embedding'] = params['pos_embedding'] * 10
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  state = maskgit.init_state(model, jax.random.key(3), 8)
  state = state.replace(step=jnp.full((), step, jnp.int32))
  new, (cond,
        uncond) = _step_and_logits(model, params, state,
                                   (labels, jnp.full_like(labels, 3)),
                                   num_steps=4, temperature=0.0,
                                   choice_temperature=0.0, guidance_scale=w,
                                   guidance_schedule='linear')
  greedy = lambda w: np.asarray(
      jnp.argmax(api.guided_logits(cond, uncond, w), -1))[..., 0]
  tokens = np.asarray(new.tokens)[..., 0]
  revealed = tokens != model.mask_ids[0]
  assert revealed.sum() >= 8
  np.testing.assert_array_equal(tokens[revealed],
                                greedy(w * step / 4)[revealed])
  assert (tokens[revealed] != greedy(w * (step + 1) / 4)[revealed]).any()


@pytest.mark.parametrize('factors', [(), (4, 16)])
def test_masked_loss_counts_only_masked_positions(factors):
  """The loss against float64: per factor, the cross-entropy over its own
  V_f ids with the smoothing spread over them, summed over factors, meaned
  over the masked positions; accuracy counts a position right only where
  every factor is."""
  model = _model(token_shape=(6,), factor_vocab_sizes=factors)
  params = _init(model)
  sizes = factors or (model.vocab_size,)
  tokens = jnp.stack([
      jax.random.randint(jax.random.key(5 + f), (2, 6), 0, v)
      for f, v in enumerate(sizes)
  ], -1)
  tokens = tokens if factors else tokens[..., 0]
  mask = jnp.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]], bool)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params, tokens):
    loss, metrics = maskgit.masked_loss(model, params, jax.random.key(6),
                                        tokens, mask=mask, label_smoothing=0.1)
    flat = model.flatten(tokens)
    inputs = jnp.where(mask[..., None], model.mask_ids, flat)
    return loss, metrics, model.apply({'params': params}, inputs,
                                      method=maskgit.MaskGIT.flat_logits)

  # Masked targets the model gets right: every factor at (0, 0), the first
  # alone at (0, 3) (the masked inputs, and so the logits, stay the same).
  best = np.asarray(run(params, tokens)[2]).argmax(-1)  # [B, N, F]
  targets = np.array(tokens).reshape(2, 6, len(sizes))
  targets[0, 0] = best[0, 0]
  targets[0, 3] = (best[0, 3] + np.arange(len(sizes)).clip(0, 1)) % sizes
  tokens = jnp.asarray(targets.reshape(tokens.shape))
  loss, metrics, logits = run(params, tokens)
  logits = np.asarray(logits, np.float64)  # [B, N, F, Vmax]
  ce, nll, right = 0.0, 0.0, True
  for f, v in enumerate(sizes):
    factor = logits[:, :, f, :v]
    log_p = factor - np.log(np.exp(factor).sum(-1, keepdims=True))
    one_hot = np.eye(v)[targets[..., f]]
    ce = ce - ((0.9 * one_hot + 0.1 / v) * log_p).sum(-1)
    nll = nll - (one_hot * log_p).sum(-1)
    right = right & (factor.argmax(-1) == targets[..., f])
  masked = np.asarray(mask)
  np.testing.assert_allclose(loss, ce[masked].mean(), rtol=1e-5)
  # Its nll, without the smoothing, is what eval's loss measures.
  np.testing.assert_allclose(metrics['nll'], nll[masked].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'], right[masked].mean())
  assert float(metrics['mask_ratio']) == pytest.approx(3 / 12)
  # MAGVIT's 'mask+refine+recons': the unmasked positions too, weighted.
  weighted, metrics = jax.jit(
      lambda p: maskgit.masked_loss(model, p, jax.random.key(
          6), tokens, mask=mask, label_smoothing=0.1, unmasked_weight=0.5),
      compiler_options=FAST_COMPILE)(params)
  weights = np.where(masked, 1.0, 0.5)
  np.testing.assert_allclose(weighted, (ce * weights).sum() / weights.sum(),
                             rtol=1e-5)
  assert float(metrics['mask_ratio']) == pytest.approx(3 / 12)
  # Accuracy stays over the masked tokens: eval weighs it by those.
  assert float(metrics['accuracy_weight']) == 3
  assert float(metrics['loss_weight']) == 3 + 0.5 * 9


def test_factorized_heads_with_lfq_indices():
  model = _model(vocab_size=2**18, factor_vocab_sizes=(512, 512),
                 token_shape=(2, 2))
  params = _init(model)
  signs = jax.random.normal(jax.random.key(7), (2, 2, 2, 18))
  indices = lfq.split_factors(lfq.bits_to_indices(signs), (9, 9))
  assert indices.shape == (2, 2, 2, 2)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params):
    logits = model.apply({'params': params}, indices)
    loss, _ = maskgit.masked_loss(model, params, jax.random.key(8), indices)
    return logits, loss, maskgit.sample(model, params, jax.random.key(9), 3,
                                        num_steps=3)

  logits, loss, tokens = run(params)
  assert logits.shape == (2, 2, 2, 2, 512)
  assert np.isfinite(float(loss))
  assert tokens.shape == (3, 2, 2, 2)
  assert tokens.min() >= 0 and tokens.max() < 512
  full = lfq.combine_factors(tokens, (9, 9))
  np.testing.assert_array_equal(lfq.split_factors(full, (9, 9)), tokens)
  # Uneven factors: the smaller head's padded ids are never sampled.
  uneven = _model(vocab_size=2**10, factor_vocab_sizes=(4, 256),
                  token_shape=(3,))
  tokens = _jit_sample(uneven, 4, num_steps=2)(_init(uneven), jax.random.key(1))
  assert tokens[..., 0].max() < 4 and tokens[..., 1].max() < 256


def test_bfloat16_model_has_float32_logits_of_its_hidden_state():
  """Untied heads compute in float32 from the bfloat16 blocks' output, as
  the tied heads' float32 embeddings do: no 8-bit logits (confidence ties)."""
  tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 17)
  for tied in (False, True):
    config = generators.default_config('maskgit')
    config.update(token_shape=(6,), vocab_size=16, width=16, num_layers=1,
                  num_heads=2, mlp_dim=32, tied_heads=tied)
    model = generators.build(config, dtype=jnp.bfloat16)
    params = model.init(jax.random.key(0), tokens)['params']
    apply = lambda: model.apply({'params': params}, tokens)  # pylint: disable=cell-var-from-loop
    if tied:
      assert not head_probe.bfloat16_valued(apply())
      continue
    logits, hidden, head = head_probe.head_call(apply, 'head_0')
    assert logits.dtype == jnp.float32 and head_probe.bfloat16_valued(hidden)
    assert not head_probe.bfloat16_valued(logits)
    np.testing.assert_allclose(logits, head_probe.dense_float64(hidden, head),
                               rtol=1e-5, atol=1e-6)


def test_out_of_range_tokens_raise(default_model, class_model):
  model, params = default_model
  bad = jnp.zeros((1, 4, 4), jnp.int32).at[0, 0, 0].set(65)
  with pytest.raises(ValueError, match='vocab size is 64'):
    model.apply({'params': params}, bad)
  with pytest.raises(ValueError, match='vocab size is 64'):
    model.apply({'params': params}, bad.at[0, 0, 0].set(-1))
  with pytest.raises(ValueError, match='vocab size is 64'):
    maskgit.masked_loss(model, params, jax.random.key(0), bad.at[0, 0,
                                                                 0].set(64))
  with pytest.raises(ValueError, match='expected'):
    model.apply({'params': params}, jnp.zeros((1, 16), jnp.int32))
  labelled, labelled_params = class_model
  tokens = jnp.zeros((1, 4, 4), jnp.int32)
  for label in (-1, 4):  # 3 is the null class.
    with pytest.raises(ValueError, match=r'num_classes=3.*\[0, 4\)'):
      labelled.apply({'params': labelled_params}, tokens, jnp.array([label]))
  # A loader's [B, 1] labels, or another batch's.
  for labels in (jnp.zeros((1, 1), jnp.int32), jnp.zeros((2,), jnp.int32)):
    with pytest.raises(
        ValueError, match=r'^MaskGIT: class ids must have shape \[B\] = '
        r'\(1,\), got \((1, 1|2,)\)'):
      labelled.apply({'params': labelled_params}, tokens, labels)
  # Silently dropped before: labels (and guidance) on an unconditional
  # model, known tokens without the mask that says where they are.
  with pytest.raises(ValueError, match='labels given to an unconditional'):
    model.apply({'params': params}, tokens, jnp.array([1]))
  with pytest.raises(ValueError, match='known_tokens needs known_mask'):
    maskgit.init_state(model, jax.random.key(0), 1, known_tokens=tokens)
  with pytest.raises(
      ValueError, match=r'known_mask of shape \(2, 4\), '
      r'expected \[B, 4, 4\] or \[4, 4\] with B = 1'):
    maskgit.init_state(model, jax.random.key(0), 1, tokens,
                       jnp.ones((2, 4), bool))
  # Another batch's tokens: a broadcasting error deep in jax (batch 1 was
  # silently given to every row).
  with pytest.raises(
      ValueError, match=r'known_tokens of shape \(1, 4, 4\), '
      r'expected \[B, 4, 4\(, F\)\] with B = 2'):
    maskgit.init_state(model, jax.random.key(0), 2, tokens,
                       jnp.ones((4, 4), bool))
  # A Python list of labels is an array of ids.
  np.testing.assert_array_equal(
      labelled.apply({'params': labelled_params}, tokens, [2]),
      labelled.apply({'params': labelled_params}, tokens, jnp.array([2])))


def test_video_token_shape():
  """3D tokens (1D: the loss test, 2D: the defaults, also run above)."""
  shape = (2, 2, 2)
  model = _model(token_shape=shape)
  params = _init(model)
  run = jax.jit(
      lambda p: (model.apply({'params': p}, jnp.zeros((2, *shape), jnp.int32)),
                 model.sample(p, jax.random.key(0), 2, num_steps=2)),
      compiler_options=FAST_COMPILE)
  logits, tokens = run(params)
  assert logits.shape == (2, *shape, 64)
  assert tokens.shape == (2, *shape) and tokens.max() < 64


def test_adam_lowers_loss_on_fixed_batch():
  model = _model(num_classes=2)
  params = _init(model)
  tokens = jax.random.randint(jax.random.key(1), (4, 4, 4), 0, 64)
  labels = jnp.array([0, 1, 0, 1])
  optimizer = optax.adam(3e-3)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(
        lambda p: maskgit.masked_loss(model, p, rng, tokens, labels),
        has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses = []
  for i in range(30):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i % 3))
    losses.append(float(loss))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


def test_known_tokens_stay_and_the_schedule_runs_over_the_rest():
  """Video prediction from observed frames: the first latent frame given;
  its tokens never change and the cosine schedule counts the others. An
  example whose every token is given (a per-example mask) stays as given."""
  model = _model(token_shape=(3, 4, 4))
  params = _init(model, batch=3)
  steps, n = 6, model.num_tokens
  known = jax.random.randint(jax.random.key(5), (3, 3, 4, 4), 0,
                             model.vocab_size)
  prefix = maskgit.frame_prefix_mask(model.token_shape, 1)
  assert prefix.sum() == 16 and prefix[0].all() and not prefix[1:].any()
  mask = np.stack([np.ones_like(prefix), prefix, prefix])
  final, history = _jit_sample(model, 3, num_steps=steps, known_tokens=known,
                               known_mask=mask,
                               return_history=True)(params, jax.random.key(1))
  history = np.asarray(history).reshape(steps, 3, n)
  flat_mask = mask.reshape(3, n)
  exact = _exact_decode_counts(n - 16, steps, 'cosine')
  unknown = np.full(2, n - 16)
  for s in range(steps):
    np.testing.assert_array_equal(history[s][flat_mask],
                                  np.asarray(known).reshape(3, n)[flat_mask])
    masked = (history[s] == model.vocab_size).sum(-1)
    want = np.maximum(1, np.minimum(unknown - 1, exact[s]))
    want = want * 0 if s == steps - 1 else want
    np.testing.assert_array_equal(masked, np.concatenate([[0], want]))
    unknown = masked[1:]
  np.testing.assert_array_equal(np.asarray(final).reshape(3, n), history[-1])
  # The given tokens condition the rest: other given tokens, other samples.
  other = _jit_sample(model, 3, num_steps=steps,
                      known_tokens=(known + 1) % model.vocab_size,
                      known_mask=mask)(params, jax.random.key(1))
  assert np.any(
      np.asarray(other).reshape(3, n)[~flat_mask] != history[-1][~flat_mask])
  with pytest.raises(ValueError, match='token ids'):
    maskgit.sample(model, params, jax.random.key(0), 3, num_steps=2,
                   known_tokens=known + model.vocab_size, known_mask=mask)


def test_tied_heads_score_against_each_factors_input_embeddings():
  """logits_f = h_f E_f^T + b_f, E_f factor f's input embedding without its
  [MASK] row: with every input [MASK], those rows enter only through the
  head, so swapping them for the identity exposes h_f."""
  model = _model(token_shape=(2, 2), factor_vocab_sizes=(8, 16), vocab_size=128,
                 width=8, num_heads=2, mlp_dim=16)
  params = _init(model)
  masked = jnp.broadcast_to(jnp.asarray(model.mask_ids), (2, 2, 2, 2))
  logits_of = jax.jit(lambda p: model.apply({'params': p}, masked),
                      compiler_options=FAST_COMPILE)
  logits = np.asarray(logits_of(params))
  for f, size in enumerate((8, 16)):
    table = params[f'embed_{f}']['embedding']
    bias = np.asarray(params[f'tied_head_bias_{f}'])
    probe = jax.tree.map(lambda a: a, params)
    probe[f'embed_{f}'] = {'embedding': table.at[:size].set(jnp.eye(size, 8))}
    h = np.asarray(logits_of(probe))[..., f, :8] - bias[:8]
    np.testing.assert_allclose(logits[..., f, :size],
                               h @ np.asarray(table[:size]).T + bias, atol=1e-5)
  untied = _init(_model(token_shape=(2, 2), tied_heads=False))
  assert 'head_0' in untied and 'tied_head_0' not in untied


def test_label_dropout_draws_its_rate_and_drops_to_the_null_class():
  labels = jnp.zeros(20000, jnp.int32)
  drop = api.drop_mask(jax.random.key(0), 0.1, labels, True)
  assert abs(float(drop.mean()) - 0.1) < 6 * np.sqrt(0.1 * 0.9 / len(labels))
  for probability, cond, train in ((0.1, labels, False), (0.0, labels, True),
                                   (0.1, None, True)):
    assert api.drop_mask(jax.random.key(0), probability, cond, train) is None
  # Every label dropped (label_drop 1) is the loss of the null class; kept
  # (0), that of the labels, which differs.
  tokens = jax.random.randint(jax.random.key(1), (4, 4, 4), 0, 16)
  labels, rng = jnp.array([0, 1, 2, 1]), jax.random.key(2)
  for name, extra in (('maskgit', dict(token_shape=(4, 4))),
                      ('gpt', dict(length=16, condition='class'))):
    config = generators.default_config(name)
    config.update(vocab_size=16, num_classes=3, **extra)
    model, api_ = generators.build(config), generators.get_api(name)
    params = jax.jit(functools.partial(api_.init, model),
                     compiler_options=FAST_COMPILE)(jax.random.key(0), tokens,
                                                    labels)
    null = jnp.full_like(labels, 3)

    @functools.partial(jax.jit, static_argnums=1, compiler_options=FAST_COMPILE)
    def loss_of(cond, label_drop, model=model, api_=api_, params=params):
      settings = ml_collections.ConfigDict(
          dict(label_drop=label_drop, label_smoothing=0.0,
               mask_schedule='cosine', mask_rounding='ceil',
               unmasked_weight=0.0))
      return api_.loss(model, params, tokens, cond, rng, settings=settings,
                       train=True)[0]

    loss = lambda cond, label_drop, f=loss_of: float(f(cond, label_drop))

    assert loss(labels, 1.0) == pytest.approx(loss(null, 0.0), rel=1e-6)
    assert loss(labels, 0.0) != pytest.approx(loss(null, 0.0), rel=1e-3)
    if name == 'maskgit':  # Its public loss drops no label in an eval loss.
      eval_loss = jax.jit(
          lambda cond, drop, model=model, params=params: maskgit.masked_loss(
              model, params, rng, tokens, cond, label_drop=drop, label_smoothing
              =0.0, train=False)[0], static_argnums=1,
          compiler_options=FAST_COMPILE)
      assert float(eval_loss(labels, 1.0)) == float(eval_loss(labels, 0.0))


def test_the_papers_blocks_draw_the_papers_inits():
  """MaskGIT's BERT: every kernel (an untied head's too), embedding and
  position truncated N(0, 0.02) within 2 stds (std 0.88 x 0.02); taming's
  minGPT: kernels N(0,
  0.02), positions 0; vqlab's pre-LN blocks keep flax's LeCun normal."""

  def leaves(name, style, **extra):
    config = generators.default_config(name)
    config.update(vocab_size=64, width=128, mlp_dim=512, num_classes=3,
                  block_style=style, **extra)
    model, api_ = generators.build(config), generators.get_api(name)
    tokens = jnp.zeros((1, 16) if name == 'gpt' else (1, 4, 4), jnp.int32)
    params = jax.jit(functools.partial(api_.init, model),
                     compiler_options=FAST_COMPILE)(jax.random.key(0), tokens,
                                                    jnp.zeros(1, jnp.int32))
    flat = {
        '/'.join(str(k.key) for k in path): np.asarray(leaf) for path, leaf in
        jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return {k: v for k, v in flat.items() if re.search(r'kernel$', k)}, flat

  kernels, flat = leaves('maskgit', 'bert', token_shape=(4, 4))
  drawn = [kernels[k] for k in kernels
          ] + [v for k, v in flat.items() if k.endswith('embedding')]
  values = np.concatenate([v.ravel() for v in drawn])
  assert np.abs(values).max() <= 0.04
  np.testing.assert_allclose(values.std(), 0.02 * 0.8796, rtol=0.02)
  # The untied output layer too (TiTok's ImageBert: its lm_head).
  kernels, _ = leaves('maskgit', 'bert', token_shape=(4, 4), tied_heads=False)
  head = kernels['head_0/kernel']
  assert np.abs(head).max() <= 0.04
  np.testing.assert_allclose(head.std(), 0.02 * 0.8796, rtol=0.05)
  kernels, flat = leaves('gpt', 'taming', length=16, condition='class')
  np.testing.assert_array_equal(flat['pos_embedding'], 0)
  block_kernels = np.concatenate(
      [v.ravel() for k, v in kernels.items() if k.startswith('transformer/')])
  np.testing.assert_allclose(block_kernels.std(), 0.02, rtol=0.02)
  kernels, _ = leaves('gpt', 'pre_ln', length=16, condition='class')
  fc1 = kernels['transformer/block_0/mlp/fc1/kernel']  # LeCun: 1/sqrt(128).
  np.testing.assert_allclose(fc1.std(), 128**-0.5, rtol=0.03)
