"""The tokenizer task's optional losses through its real train step: LPIPS,
the probabilistic contrastive loss, LeCam, R1, the StyleGAN discriminator and
the EMA of generator weights (frozen networks from published-format files with
seeded random weights)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.flops import count_flops
from tests import random_weight_files
from tests import tiny
from tests.compile_options import FAST_COMPILE
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.losses import perceptual
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory):
  return str(
      random_weight_files.write(tmp_path_factory.mktemp('weights'),
                                ('vgg16', 'vgg19')))


def _task(mutate):
  config = tiny.tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  mutate(config)
  return tokenizer.build(experiment_config.validate(config, num_devices=8))


def _batch_and_state(task):
  """A batch of 8 random 16x16 images and the task's initial state."""
  batch = {
      'image':
          jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1,
                             maxval=1)
  }
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(1),
                                                            batch)
  return batch, state


def _first_step(task):
  batch, state = _batch_and_state(task)
  x = batch['image']
  step = jax.jit(task.train_step, compiler_options=FAST_COMPILE)
  new_state, metrics = step(state, batch, jax.random.key(2), task.frozen)
  return x, state, new_state, jax.device_get(metrics)


def test_lpips_term_is_weighted_lpips_of_the_reconstruction(weights_dir):

  def mutate(config):
    config.weights_dir = weights_dir
    config.loss.perceptual_weight = 0.5
    config.loss.disc_start = 1

  task = _task(mutate)
  assert set(task.frozen) == {'lpips'}
  x, state, new_state, metrics = _first_step(task)

  @jax.jit
  def direct(state, frozen):
    x_rec, _ = task.model.apply(
        {
            'params': state.params['generator'],
            **state.model_state
        }, x, train=False)
    return 0.5 * jnp.mean(perceptual.lpips_distance(frozen['lpips'], x, x_rec))

  want = direct(state, task.frozen)
  assert want > 0
  np.testing.assert_allclose(metrics['perceptual_loss'], want, rtol=1e-4)
  np.testing.assert_allclose(
      metrics['loss'], metrics['rec_loss'] + metrics['perceptual_loss'] +
      metrics['quantizer_loss'] + metrics['adaptive_weight'] * metrics['g_adv'],
      rtol=1e-5)
  # Step 0 < disc_start = 1: no GAN term, and the discriminator stays put.
  assert metrics['adaptive_weight'] == 0.0 and metrics['d_loss'] == 0.0
  for a, b in zip(jax.tree.leaves(state.params['discriminator']),
                  jax.tree.leaves(new_state.params['discriminator'])):
    np.testing.assert_array_equal(a, b)


def test_steps_before_disc_start_leave_the_gan_terms_out_to_the_same_state():
  # Adam for D (its step count must stay put) and LeCam (its EMAs too).

  def mutate(config):
    config.loss.disc_start = 1
    config.loss.lecam_weight = 0.1

  task = _task(mutate)
  assert task.train_step_options(0) == {'gan_terms': False}
  assert task.train_step_options(1) == {'gan_terms': True}
  batch, state = _batch_and_state(task)
  outputs = {
      gan_terms:
          jax.device_get(
              jax.jit(functools.partial(task.train_step, gan_terms=gan_terms),
                      compiler_options=FAST_COMPILE)(state, batch,
                                                     jax.random.key(2),
                                                     task.frozen))
      for gan_terms in (True, False)
  }
  (with_gan, with_metrics), (without_gan, without_metrics) = (outputs[True],
                                                              outputs[False])
  # The program with the GAN terms computes them times 0 at step 0.
  assert set(with_metrics) - set(without_metrics) == {
      'g_adv', 'd_adv', 'logits_real', 'logits_fake', 'lecam'
  }
  assert with_metrics['g_adv'] != 0
  for key, value in without_metrics.items():
    np.testing.assert_allclose(value, with_metrics[key], rtol=1e-6, err_msg=key)
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
      without_gan, with_gan)
  assert int(without_gan.step) == 1
  # Both keep the discriminator, its optimizer state and LeCam's EMAs.
  unchanged = (state.params['discriminator'], state.opt_state['discriminator'],
               state.loss_state)
  jax.tree.map(np.testing.assert_array_equal, unchanged,
               (without_gan.params['discriminator'],
                without_gan.opt_state['discriminator'], without_gan.loss_state))
  jax.tree.map(np.testing.assert_array_equal, unchanged,
               (with_gan.params['discriminator'],
                with_gan.opt_state['discriminator'], with_gan.loss_state))
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                       state.params['generator'],
                       without_gan.params['generator'])
  assert max(jax.tree.leaves(moved)) > 0


def test_frozen_params_get_no_gradient_pass():
  tasks = {
      freeze: _task(lambda config, f=freeze: setattr(config, 'freeze', f))
      for freeze in ((), ('encoder', 'quantizer'))
  }
  batch, state = _batch_and_state(tasks[()])
  args = (state.params, state.model_state, batch, jax.random.key(2), state.step,
          tasks[()].frozen, state.loss_state)
  grads, flops = {}, {}
  for freeze, task in tasks.items():
    grads[freeze] = jax.device_get(
        jax.jit(task.loss_and_grads, compiler_options=FAST_COMPILE)(*args)[0])
    flops[freeze] = count_flops(task.loss_and_grads, *args)
  frozen, trained = grads[('encoder', 'quantizer')], grads[()]
  assert max(
      np.max(np.abs(g))
      for g in jax.tree.leaves(trained['generator']['encoder'])) > 0
  for name in ('encoder', 'quantizer'):
    for g in jax.tree.leaves(frozen['generator'][name]):
      np.testing.assert_array_equal(g, 0)
  # The decoder's and discriminator's gradients are the same.
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
      (frozen['generator']['decoder'], frozen['discriminator']),
      (trained['generator']['decoder'], trained['discriminator']))
  # The encoder's backward pass is not in the program: its weight gradients
  # (as many FLOPs as its forward pass) are gone.
  assert flops[('encoder', 'quantizer')] < flops[()]


def test_pcl_needs_regularized_quantizer_and_trains(weights_dir):

  def vq(config):
    config.loss.pcl_weight = 1.0

  with pytest.raises(ConfigError, match=r"loss.pcl_weight: .*'regularized'"):
    _task(vq)

  def regularized(config):
    config.weights_dir = weights_dir
    config.loss.pcl_weight = 1.0
    config.loss.pcl_num_patches = 8
    config.model.quantizer = quantizers.default_config('regularized')
    config.model.quantizer.codebook_size = 32
    config.model.quantizer.embedding_dim = 4

  task = _task(regularized)
  assert set(task.frozen) == {'vgg19'}
  _, state, new_state, metrics = _first_step(task)
  assert np.isfinite(metrics['pcl_loss']) and metrics['pcl_loss'] > 0
  # The contrastive term reaches the generator.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       state.params['generator'], new_state.params['generator'])
  assert max(jax.tree.leaves(moved)) > 0


def test_lecam_r1_stylegan_and_generator_ema():

  def mutate(config):
    config.discriminator = tokenizer.discriminators.default_config('stylegan')
    config.discriminator.base_features = 4
    config.discriminator.channel_multipliers = (1, 2)
    config.loss.disc_start = 0
    config.loss.lecam_weight = 0.1
    config.loss.r1_weight = 2.0
    config.ema.decay = 0.9

  task = _task(mutate)
  x, state, new_state, metrics = _first_step(task)
  assert metrics['r1'] > 0 and metrics['lecam'] > 0
  # disc_start = 0: the discriminator trains from the first step.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       state.params['discriminator'],
                       new_state.params['discriminator'])
  assert min(jax.tree.leaves(moved)) > 0
  np.testing.assert_allclose(
      metrics['d_loss'],
      metrics['d_adv'] + 0.1 * metrics['lecam'] + 2.0 * metrics['r1'],
      rtol=1e-5)
  # LeCam's EMAs start at 0 and move by (1 - 0.999) * the mean logits.
  lecam = jax.device_get(new_state.loss_state['lecam'])
  np.testing.assert_allclose(lecam['real'], 0.001 * metrics['logits_real'],
                             rtol=1e-5)
  np.testing.assert_allclose(lecam['fake'], 0.001 * metrics['logits_fake'],
                             rtol=1e-5)
  # EMA of the generator: 0.9 * old + 0.1 * new; eval uses it.
  expected = jax.tree.map(lambda o, n: 0.9 * o + 0.1 * n,
                          state.params['generator'],
                          new_state.params['generator'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               new_state.ema_params['generator'], expected)
  batch = {'image': x, 'mask': jnp.ones((8,), bool)}
  _, images = jax.jit(task.eval_step,
                      compiler_options=FAST_COMPILE)(new_state, batch,
                                                     task.frozen)
  x_ema, _ = task.model.apply(
      {
          'params': new_state.ema_params['generator'],
          **new_state.model_state
      }, x, train=False)
  np.testing.assert_allclose(images['reconstructions'], jnp.clip(x_ema, -1, 1),
                             atol=1e-5)
