"""Learning-rate schedules, their config check, and a network held still
(the discriminator before loss.disc_start) keeping its optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import tiny
from vqlab.errors import ConfigError
from vqlab.train import experiment_config
from vqlab.train import optimizers
from vqlab.train.state import TrainState
from vqlab.train.tasks import base


def _schedule(schedule, warmup, steps=100, peak=1e-3):
  config = optimizers.default_config(peak, 0.9, 0.99)
  config.update(schedule=schedule, warmup_steps=warmup)
  return optimizers.learning_rate_schedule(config, steps)


def test_schedules():
  lr = _schedule('cosine', 10)
  reference = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
  for step in (0, 5, 10, 40, 99, 100):
    np.testing.assert_allclose(lr(step), reference(step), rtol=1e-6, atol=1e-12)
  # No warmup: the first step has the peak rate (not 0, a lost step).
  assert float(_schedule('cosine', 0)(0)) == pytest.approx(1e-3)
  assert float(_schedule('constant', 0)(0)) == pytest.approx(1e-3)
  linear = _schedule('linear', 20)
  for step, want in ((10, 5e-4), (20, 1e-3), (60, 5e-4), (100, 0.0)):
    assert float(linear(step)) == pytest.approx(want, abs=1e-9)


def test_adams_epsilon_is_the_configs():
  # One step of Adam from zero moments: the update is lr g / (|g| + eps).
  config = optimizers.default_config(1e-3, 0.9, 0.99)
  config.eps = 0.5
  tx = optimizers.build(config, num_steps=10)
  g = {'w': jnp.array([0.5, -2.0])}
  updates, _ = tx.update(g, tx.init(g), g)
  np.testing.assert_allclose(updates['w'], [-1e-3 * 0.5, 1e-3 * 2.0 / 2.5],
                             rtol=1e-6)


def test_the_logged_learning_rate_is_the_one_each_update_uses():
  # A constant gradient: each Adam update is -lr * g / (|g| + eps), so the
  # update reads back the rate it used, at every step of warmup and decay.
  config = optimizers.default_config(1e-3, 0.9, 0.99)
  config.update(schedule='cosine', warmup_steps=3, weight_decay=0.0,
                weight_decay_on='kernels')  # A masked state inside.
  tx = optimizers.build(config, num_steps=8)
  params = {'kernel': jnp.ones(2)}
  g = {'kernel': jnp.array([0.5, -2.0])}
  opt_state = tx.init(params)
  rates = []
  for _ in range(8):
    rate = optimizers.learning_rate(opt_state, config, 8)
    updates, opt_state = tx.update(g, opt_state, params)
    np.testing.assert_allclose(updates['kernel'],
                               -rate * g['kernel'] / (abs(g['kernel']) + 1e-8),
                               rtol=1e-5)
    rates.append(float(rate))
  schedule = optimizers.learning_rate_schedule(config, 8)
  np.testing.assert_allclose(rates, [schedule(s) for s in range(8)], rtol=1e-6)
  assert rates[0] == 0.0 and rates[3] == pytest.approx(1e-3)


def test_an_unknown_schedule_is_a_config_error():
  config = tiny.tokenizer_config()
  config.optimizer.discriminator.schedule = 'cosin'
  with pytest.raises(
      ConfigError, match=r"^optimizer\.discriminator\."
      r"schedule: must be one of \('constant', 'cosine', "
      r"'linear'\), got 'cosin'"):
    experiment_config.validate(config, num_devices=1)


def test_a_held_network_resumes_as_a_fresh_optimizer():
  """Adam (0, 0.99) stepping on 100 zero gradients would make the first real
  update 1 / sqrt(1 - 0.99^100 ...) ~ 10x the learning rate; held, it is the
  first update of a fresh Adam: lr * sign(g)."""
  tx = {'d': optax.adam(1e-2, b1=0.0, b2=0.99)}
  w = {'w': jnp.ones(3)}
  state = TrainState(step=jnp.int32(0), params={'d': w},
                     opt_state={'d': tx['d'].init(w)}, model_state={})
  zero = {'d': {'w': jnp.zeros(3)}}
  for _ in range(100):
    state, _ = base.apply_gradients(state, zero, tx,
                                    active={'d': jnp.asarray(False)})
  np.testing.assert_array_equal(state.params['d']['w'], jnp.ones(3))
  assert int(state.opt_state['d'][0].count) == 0
  grads = {'d': {'w': jnp.asarray([1.0, -2.0, 0.5])}}
  state, _ = base.apply_gradients(state, grads, tx,
                                  active={'d': jnp.asarray(True)})
  np.testing.assert_allclose(state.params['d']['w'],
                             1.0 - 1e-2 * np.sign([1.0, -2.0, 0.5]), rtol=1e-5)


def test_weight_decay_on_kernels_leaves_the_rest():
  params = {
      'dense': {
          'kernel': jnp.ones((2, 2)),
          'bias': jnp.ones(2)
      },
      'embed': {
          'embedding': jnp.ones((3, 2))
      },
      'ln': {
          'scale': jnp.ones(2)
      }
  }
  zero = jax.tree.map(jnp.zeros_like, params)
  moved = {}
  for decayed in optimizers.DECAYED:
    config = optimizers.default_config(0.1, 0.9, 0.99)
    config.update(weight_decay=0.5, weight_decay_on=decayed)
    tx = optimizers.build(config, 10)
    updates, _ = tx.update(zero, tx.init(params), params)
    moved[decayed] = jax.tree.map(lambda u: bool((u != 0).any()), updates)
  assert all(jax.tree.leaves(moved['all']))
  assert moved['kernels'] == {
      'dense': {
          'kernel': True,
          'bias': False
      },
      'embed': {
          'embedding': False
      },
      'ln': {
          'scale': False
      }
  }


def test_the_discriminators_schedule_spans_the_steps_from_disc_start():
  """Held before loss.disc_start, the discriminator's optimizer counts from
  there: its cosine spans the steps left (as TiTok's), or it stopped short
  (17% of its peak at the end of the MAGVIT-v2 video config)."""
  from vqlab.train.tasks import tokenizer  # pylint: disable=g-import-not-at-top
  config = tiny.tokenizer_config(steps=10)
  config.loss.disc_start = 6
  config.optimizer.discriminator.update(learning_rate=1.0, schedule='cosine',
                                        warmup_steps=0, weight_decay=0.0,
                                        grad_clip_norm=0.0)
  tx = tokenizer.build(experiment_config.validate(config,
                                                  1)).tx['discriminator']
  params = {'w': jnp.zeros(())}
  opt_state = tx.init(params)
  moves = []
  for _ in range(10 - 6):  # Steps 6 to 9: counts 0 to 3.
    updates, opt_state = tx.update({'w': jnp.ones(())}, opt_state, params)
    moves.append(-float(updates['w']))  # Adam on constant gradients: lr.
  np.testing.assert_allclose(
      moves, [0.5 * (1 + np.cos(np.pi * c / 4)) for c in range(4)], rtol=1e-4)


def _release_ema_decay(optimization_step: int, decay: float) -> float:
  """diffusers' EMAModel.get_decay (TiTok's release: update_after_step 0,
  no power warm-up, min_decay 0), called after its step count is advanced."""
  step = max(0, optimization_step - 1)
  if step <= 0:
    return 0.0
  return min((1 + step) / (10 + step), decay)


def test_ema_warmup_is_the_releases_and_moves_the_ema_so():
  from vqlab.train.tasks import base  # pylint: disable=g-import-not-at-top
  steps = np.array([0, 1, 2, 5, 50, 8_990, 8_991, 20_000])
  got = jax.jit(lambda s: base.ema_decay_at(s, 0.999, True))(steps)
  np.testing.assert_allclose(got,
                             [_release_ema_decay(s + 1, 0.999) for s in steps],
                             rtol=1e-6)
  assert base.ema_decay_at(jnp.int32(3), 0.999, False) == 0.999
  params = {'model': {'w': jnp.array([1.0, 2.0])}}
  state = TrainState(step=jnp.int32(5), params=params,
                     opt_state={'model': optax.sgd(1.0).init(params['model'])},
                     model_state={},
                     ema_params={'model': {
                         'w': jnp.array([0.0, 0.0])
                     }})
  grads = {'model': {'w': jnp.array([1.0, 1.0])}}
  new, _ = base.apply_gradients(state, grads, {'model': optax.sgd(1.0)}, 0.999,
                                ema_warmup=True)
  d = _release_ema_decay(6, 0.999)  # 6 / 15.
  np.testing.assert_allclose(new.ema_params['model']['w'],
                             (1 - d) * np.array([0.0, 1.0]), rtol=1e-6)
