"""Gradient accumulation (train.microbatches): the microbatch split, and one
real GPT and one MaskGIT train step equal with 1 and 2 microbatches. Tokenizers (MAGVIT-v2,
the carry of its model and loss state threaded through), the video MaskGIT
and TiTok's stage 1 train in 2 microbatches in test_magvit2_training.py,
test_video_generation.py and test_titok_training.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.generators import maskgit
from vqlab.quantizers import base as quantizer_base
from vqlab.quantizers import lfq
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train.tasks import base
from vqlab.train.tasks import tokenizer


def _devices():
  return jax.devices()[:2]


def test_accumulate_gradients_splits_in_order_and_threads_the_carry():
  batch = {'x': jnp.arange(12.0).reshape(6, 2)}
  seen = []

  def grads_fn(microbatch, rng, carry):
    del rng
    seen.append(microbatch['x'].shape)
    grads = {'g': microbatch['x'].sum(0)}
    # The carry records the order: carry * 10 + the microbatch's first id.
    carry = carry * 10 + microbatch['x'][0, 0] / 2
    return grads, carry, {'first': microbatch['x'][0, 0]}

  grads, carry, metrics = jax.jit(base.accumulate_gradients,
                                  static_argnums=(0, 4))(grads_fn, batch,
                                                         jax.random.key(0),
                                                         jnp.float32(0), 3)
  assert set(seen) == {(2, 2)}  # Only microbatches of 6 / 3 examples.
  # Microbatch j holds examples j and j + 3: their sums, averaged over 3.
  np.testing.assert_allclose(grads['g'],
                             np.arange(12.0).reshape(6, 2).sum(0) / 3)
  np.testing.assert_allclose(carry, 12.0)  # ((0) * 10 + 1) * 10 + 2.
  np.testing.assert_allclose(metrics['first'], (0 + 2 + 4) / 3)
  # Per-example outputs come back in the batch's order.
  with_outputs = lambda m, r, c: (*grads_fn(m, r, c), {'x': m['x'][:, 0]})
  *_, outputs = jax.jit(base.accumulate_gradients_and_outputs,
                        static_argnums=(0, 4))(with_outputs, batch,
                                               jax.random.key(0),
                                               jnp.float32(0), 3)
  np.testing.assert_array_equal(outputs['x'], batch['x'][:, 0])


def test_codebook_metrics_of_a_step_in_microbatches_are_the_batchs():
  """usage and perplexity of the codes (and of LFQ's factors) describe the
  whole batch, not the mean of its microbatches' (about 1/k of the usage)."""
  q = lfq.LookupFreeQuantizer(codebook_size=2**10, factor_bits=(5, 5))
  z = jax.random.normal(jax.random.key(3), (16, 4, 10))

  def grads_fn(microbatch, rng, carry):
    del rng
    out = q.apply({}, microbatch['z'])
    return {'g': jnp.zeros(())}, carry, quantizer_base.train_metrics(out)

  _, _, metrics = jax.jit(base.accumulate_gradients,
                          static_argnums=(0, 4))(grads_fn, {
                              'z': z
                          }, jax.random.key(0), jnp.float32(0), 4)
  metrics = quantizer_base.batch_code_metrics(metrics)
  whole = q.apply({}, z).metrics
  assert 'quantizer/code_counts' not in metrics
  for key in ('usage', 'perplexity', 'usage/factor0', 'perplexity/factor1'):
    np.testing.assert_allclose(metrics[f'quantizer/{key}'], whole[key],
                               rtol=1e-5, err_msg=key)
  assert whole['usage'] > 2 * metrics_of_quarter(q, z)


def metrics_of_quarter(q, z):
  """The usage of one microbatch (what the mean of the four was near)."""
  return float(q.apply({}, z[::4]).metrics['usage'])


def _step(config, tmp_path, microbatches):
  """(params before, params after, metrics) of the run's first train step."""
  config.train.microbatches = microbatches
  exp = experiment.Experiment(config, str(tmp_path / str(microbatches)),
                              _devices())
  state, _ = exp.initial_state()
  before = jax.device_get(state.params)  # The step donates the state.
  batch = exp.global_batch(next(exp.train_data.batches()))
  new_state, metrics = exp.train_step(state, batch)
  return before, jax.device_get(new_state.params), jax.device_get(metrics)


def _assert_same_step(config, tmp_path, keys):
  before, params_1, metrics_1 = _step(config, tmp_path, 1)
  _, params_2, metrics_2 = _step(config, tmp_path, 2)
  for key in keys:
    np.testing.assert_allclose(metrics_2[key], metrics_1[key], rtol=2e-5,
                               err_msg=key)
  # Adam's first step moves each param by lr g / (|g| + eps), whose
  # sensitivity to g, lr eps / (|g| + eps)^2, is lr / (4 eps) where |g| ~ eps:
  # there the summation order's rounding of g (terms of ~1e-3 cancelling)
  # moves the param by a fraction of lr. Where |g| > 9 eps (a move > 0.9 lr,
  # most params) it is below 1e-3 lr.
  lr = config.optimizer.learning_rate
  moves = jax.tree.map(lambda a, b: np.abs(a - b), params_1, before)
  real = jax.tree.map(lambda m: m > 0.9 * lr, moves)
  jax.tree.map(
      lambda a, b, r: np.testing.assert_allclose(a[r], b[r], atol=1e-3 * lr),
      params_2, params_1, real)
  counted = sum(int(r.sum()) for r in jax.tree.leaves(real))
  assert counted > 0.9 * sum(r.size for r in jax.tree.leaves(real))


def test_a_gpt_step_is_the_same_in_two_microbatches(tokenizer_dir, tmp_path):
  """Next-token cross-entropy: a mean over equally many tokens per example.
  (The tokens are the tiny VQGAN's, encoded in the step.)"""
  config = tiny.generator_config(tokenizer_dir, 'gpt')
  config.tokens.source = 'on_the_fly'
  _assert_same_step(config, tmp_path, ('loss', 'accuracy', 'grad_norm'))


def test_a_maskgit_step_is_the_same_in_two_microbatches(tokenizer_dir, tmp_path,
                                                        monkeypatch):
  """MaskGIT's loss is a mean over the batch's masked tokens, as many as the
  masks draw per example: each microbatch weighs by its count (a mean of
  the microbatches' means weighed them alike). The masks here follow the
  tokens, the same however the batch is split."""
  config = tiny.generator_config(tokenizer_dir, 'maskgit')
  config.tokens.source = 'on_the_fly'
  config.loss.label_drop = 0.0
  masked_loss = maskgit.masked_loss

  def masked_by_content(model, params, rng, tokens, labels, **kwargs):
    codes = model.flatten(tokens)[..., 0]
    mask = (codes % 3 == 0) | (jnp.arange(codes.shape[1]) == 0)
    return masked_loss(model, params, rng, tokens, labels, mask=mask, **kwargs)

  monkeypatch.setattr(maskgit, 'masked_loss', masked_by_content)
  _assert_same_step(config, tmp_path, ('loss', 'nll', 'accuracy', 'grad_norm',
                                       'loss_weight', 'accuracy_weight'))


def test_microbatches_must_divide_the_batch_over_the_devices():
  config = tiny.tokenizer_config()
  config.train.microbatches = 3
  with pytest.raises(ConfigError,
                     match=r'train.microbatches: 3: train.batch_size 8'):
    experiment_config.validate(config, 2)


def test_a_tokenizer_trains_in_two_microbatches():
  """The tokenizer's step threads its model state and loss state through
  the microbatches, and both read the step's Gumbel temperature (XLA:CPU
  runs the scanned conv gradients slowly at the tests' optimization level
  0: one step, one device)."""
  config = tiny.tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  config.train.microbatches = 2
  config.model.quantizer = quantizers.default_config('gumbel')
  config.model.quantizer.update(codebook_size=32, embedding_dim=4,
                                temperature=1.0, temperature_final=0.5,
                                temperature_anneal_steps=4)
  task = tokenizer.build(experiment_config.validate(config, 1))
  x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1, maxval=1)
  state = jax.jit(task.init)(jax.random.key(1), {'image': x})
  new_state, metrics = jax.jit(task.train_step)(state, {
      'image': x
  }, jax.random.key(2), task.frozen)
  assert np.isfinite(float(metrics['loss']))
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                       new_state.params['generator'], state.params['generator'])
  assert all(jax.tree.leaves(moved))
  # Step 0's temperature in both microbatches; the schedule moved one step.
  assert float(metrics['quantizer/temperature']) == 1.0
  assert 'quantizer/code_counts' not in metrics  # It became the usage.
  assert 0 < float(metrics['quantizer/usage']) <= 1
  counter = new_state.model_state['quantizer_state']['quantizer']['step']
  assert int(counter) == 1


def test_a_tokenizer_step_in_two_microbatches_moves_its_emas_once():
  """The EMA codebook (with dead-code restarts) and LeCam's EMAs move once
  per step, by the whole batch: with an EMA step per microbatch, codes went
  dead at 2 microbatches that are alive at 1."""
  config = tiny.tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  config.model.quantizer = quantizers.default_config('vq')
  config.model.quantizer.update(codebook_size=32, embedding_dim=4, ema=True,
                                decay=0.5, restart_threshold=1.2)
  config.loss.update(disc_start=0, lecam_weight=0.1)
  x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1, maxval=1)
  tasks = []
  for microbatches in (1, 2):
    config.train.microbatches = microbatches
    tasks.append(tokenizer.build(experiment_config.validate(config, 1)))
  # One initial state for both (the split changes the step, not the init).
  state = jax.jit(tasks[0].init)(jax.random.key(1), {'image': x})
  steps = []
  for task in tasks:
    new_state, metrics = jax.jit(task.train_step)(state, {
        'image': x
    }, jax.random.key(2), task.frozen)
    steps.append(
        jax.device_get((new_state.model_state[quantizer_base.STATS],
                        new_state.loss_state, metrics)))
  (stats_1, losses_1, metrics_1), (stats_2, losses_2, metrics_2) = steps
  stats_1, stats_2 = stats_1['quantizer'], stats_2['quantizer']
  # Codes used once or never in the batch restarted; the same ones.
  assert 0 < metrics_1['quantizer/restarted'] < 1
  assert metrics_2['quantizer/restarted'] == metrics_1['quantizer/restarted']
  np.testing.assert_allclose(stats_2['cluster_size'], stats_1['cluster_size'],
                             rtol=1e-6)
  live = ~np.isclose(stats_1['cluster_size'], 1.2)  # Restarted: reset to 1.2.
  np.testing.assert_allclose(stats_2['embed_sum'][live],
                             stats_1['embed_sum'][live], rtol=1e-4, atol=1e-6)
  # The PatchGAN's batch norm sees each microbatch apart, so the logits
  # differ by a few percent; an EMA step per microbatch moved them twice.
  assert losses_1['lecam']['real'] != 0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0.1),
               losses_2, losses_1)
