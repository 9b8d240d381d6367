"""The tokenizer task's optional losses through its real train step: LPIPS,
the probabilistic contrastive loss, LeCam, R1, the StyleGAN discriminator and
the EMA of generator weights (frozen networks from published-format files with
seeded random weights)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.flops import jaxpr_flops
from tests import random_weight_files
from tests import tiny
from tests.compile_options import FAST_COMPILE
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.losses import contrastive
from vqlab.losses import perceptual
from vqlab.losses import vgg_features
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


# Images for the VGG losses: from 24x24 its 3x3 convolutions see 3x3 and 1x1
# maps; from 16x16, 2x2 ones, which XLA:CPU runs about 100x slower per FLOP
# (seconds per LPIPS of two images).
VGG_IMAGE_SIZE = 24


def _batch_and_state(task, size=16):
  """A batch of 2 random `size` x `size` images and the task's initial
  state, on the host: the tests compare its trees in numpy (on device
  arrays each leaf's shape compiled its own subtract)."""
  batch = {
      'image':
          jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=-1,
                             maxval=1)
  }
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(1),
                                                            batch)
  return batch, jax.device_get(state)


def _first_step(task, loss_state=None, size=16):
  """(x, state, new state, metrics) of a train step with key(2) from the
  initial state (of `size` x `size` images), with `loss_state` in place of
  its own if given: the program the loop runs at step 0 (without the GAN
  terms where loss.disc_start > 0). The states and metrics are on the
  host."""
  batch, state = _batch_and_state(task, size)
  if loss_state is not None:
    state = state.replace(loss_state=loss_state)
  x = batch['image']
  step = jax.jit(
      functools.partial(task.train_step, **task.train_step_options(0)),
      compiler_options=FAST_COMPILE)
  new_state, metrics = step(state, batch, jax.random.key(2), task.frozen)
  return x, state, *jax.device_get((new_state, metrics))


def _train_forward(task, state, x, rng):
  """(x_rec, quantizer output, PCL key) of the generator pass of a train
  step with key `rng` on a batch of one input array and one microbatch (its
  key is rng folded with the input's index 0, split in three)."""
  dropout_rng, q_rng, pcl_rng = jax.random.split(jax.random.fold_in(rng, 0), 3)
  (x_rec, q_out, _), _ = task.model.apply(
      {
          'params': state.params['generator'],
          **state.model_state
      }, x, train=True, method=task.model.forward_with_features, rngs={
          'dropout': dropout_rng,
          'quantizer': q_rng
      }, mutable=list(state.model_state))
  return x_rec, q_out, pcl_rng


def _discriminator_on(task, state, x, rng):
  """The discriminator's (logits, R1) on x and on the reconstruction of the
  train step with key `rng`; R1 = the mean over examples of
  ||d sum_i D(x)_i / dx||^2."""

  def logits_and_r1(images):
    d = lambda v: task.discriminator.apply(
        {'params': state.params['discriminator']}, v)
    grads = jax.grad(lambda v: jnp.sum(d(v)))(images)
    return d(images), jnp.mean(
        jnp.sum(grads.reshape(len(images), -1)**2, axis=-1))

  def both(state):
    return logits_and_r1(x), logits_and_r1(
        _train_forward(task, state, x, rng)[0])

  return jax.device_get(jax.jit(both, compiler_options=FAST_COMPILE)(state))


def _d_adv(gan_loss, real, fake):
  """The discriminator's GAN loss of its logits on real and fake images."""
  if gan_loss == 'hinge':
    return 0.5 * (np.mean(np.maximum(1 - real, 0)) +
                  np.mean(np.maximum(1 + fake, 0)))
  assert gan_loss == 'non_saturating'  # -log sigmoid(r) - log(1 - sigmoid(f))
  return np.mean(np.logaddexp(0, -real)) + np.mean(np.logaddexp(0, fake))


def test_lpips_term_and_steps_before_disc_start_leave_the_gan_terms_out(
    weights_dir):
  """The LPIPS term is the weighted LPIPS of the reconstruction; a step
  before disc_start leaves the GAN terms out, to the same state as the
  program with them (which computes them times 0). Adam for D (its step
  count must stay put) and LeCam (its EMAs too). One task for both: two
  train programs, not three."""

  def mutate(config):
    config.weights_dir = weights_dir
    config.data.image_size = VGG_IMAGE_SIZE
    config.loss.perceptual_weight = 0.5
    config.loss.disc_start = 1
    config.loss.lecam_weight = 0.1
    config.loss.gan_loss = 'non_saturating'

  task = _task(mutate)
  assert set(task.frozen) == {'lpips'}
  assert task.train_step_options(0) == {'gan_terms': False}
  assert task.train_step_options(1) == {'gan_terms': True}
  batch, state = _batch_and_state(task, VGG_IMAGE_SIZE)
  x = batch['image']
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

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def direct(state, frozen):
    x_rec, _ = task.model.apply(
        {
            'params': state.params['generator'],
            **state.model_state
        }, x, train=False)
    return (0.5 *
            jnp.mean(perceptual.lpips_distance(frozen['lpips'], x, x_rec)),
            jnp.mean(jnp.abs(x_rec - x)))

  want, l1 = direct(state, task.frozen)
  assert want > 0
  metrics = with_metrics
  np.testing.assert_allclose(metrics['perceptual_loss'], want, rtol=1e-4)
  np.testing.assert_allclose(metrics['rec_loss'], l1, rtol=1e-4)  # l1 x 1.
  np.testing.assert_allclose(
      metrics['loss'], metrics['rec_loss'] + metrics['perceptual_loss'] +
      metrics['quantizer_loss'] + metrics['adaptive_weight'] * metrics['g_adv'],
      rtol=1e-5)
  # Step 0 < disc_start = 1: no GAN term, and the discriminator stays put
  # (below, with its optimizer state and LeCam's EMAs, in both programs).
  assert metrics['adaptive_weight'] == 0.0 and metrics['d_loss'] == 0.0
  # The program with the GAN terms computes them times 0 at step 0.
  assert set(with_metrics) - set(without_metrics) == {
      'g_adv', 'd_adv', 'logits_real', 'logits_fake', 'lecam',
      'learning_rate/discriminator'
  }
  assert with_metrics['g_adv'] != 0
  (real, _), (fake, _) = _discriminator_on(task, state, batch['image'],
                                           jax.random.key(2))
  np.testing.assert_allclose(with_metrics['d_adv'],
                             _d_adv('non_saturating', real, fake), rtol=1e-5)
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
    # One trace for the program and its FLOPs.
    traced = jax.jit(task.loss_and_grads,
                     compiler_options=FAST_COMPILE).trace(*args)
    grads[freeze] = jax.device_get(traced.lower().compile()(*args)[0])
    flops[freeze] = jaxpr_flops(traced.jaxpr.jaxpr)
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
    config.data.image_size = VGG_IMAGE_SIZE
    config.loss.pcl_weight = 0.5
    config.loss.pcl_num_patches = 8
    config.model.quantizer = quantizers.default_config('regularized')
    config.model.quantizer.codebook_size = 32
    config.model.quantizer.embedding_dim = 4

  task = _task(regularized)
  assert set(task.frozen) == {'vgg19'}
  x, state, new_state, metrics = _first_step(task, size=VGG_IMAGE_SIZE)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def direct(state, frozen):
    x_rec, q_out, rng = _train_forward(task, state, x, jax.random.key(2))
    features = lambda images: vgg_features.VGG19Features().apply(
        {'params': frozen['vgg19']}, images)
    weights = q_out.extras['pcl_weights']
    return weights, 0.5 * contrastive.probabilistic_contrastive_loss(
        features(x), features(x_rec), weights, rng, num_patches=8)

  weights, want = direct(state, task.frozen)
  # Weights that vary: constant ones would give the loss of any constant.
  assert np.ptp(weights) > 0
  np.testing.assert_allclose(metrics['pcl_loss'], want, rtol=1e-5)
  # The contrastive term reaches the generator.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
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
  # EMAs of a discriminator that tells real (0.5) from fake (-0.5).
  ema = {'real': jnp.float32(0.5), 'fake': jnp.float32(-0.5)}
  x, state, new_state, metrics = _first_step(task, {'lecam': ema})
  (real, r1), (fake, r1_fake) = _discriminator_on(task, state, x,
                                                  jax.random.key(2))
  np.testing.assert_allclose(metrics['logits_real'], np.mean(real), rtol=1e-5)
  np.testing.assert_allclose(metrics['logits_fake'], np.mean(fake), rtol=1e-5)
  np.testing.assert_allclose(metrics['d_adv'], _d_adv('hinge', real, fake),
                             rtol=1e-5)
  # R1 of the real images, far from that of the reconstructions.
  np.testing.assert_allclose(metrics['r1'], r1, rtol=1e-5)
  assert abs(r1_fake / r1 - 1) > 0.1
  # LeCam's code: every logit against the EMAs moved by this batch's means.
  ema_real = 0.999 * 0.5 + 0.001 * np.mean(real)
  ema_fake = 0.999 * -0.5 + 0.001 * np.mean(fake)
  np.testing.assert_allclose(
      metrics['lecam'],
      np.mean(np.maximum(real - ema_fake, 0)**2) +
      np.mean(np.maximum(ema_real - fake, 0)**2), rtol=1e-5)
  # disc_start = 0: the discriminator trains from the first step.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                       state.params['discriminator'],
                       new_state.params['discriminator'])
  assert min(jax.tree.leaves(moved)) > 0
  np.testing.assert_allclose(
      metrics['d_loss'],
      metrics['d_adv'] + 0.1 * metrics['lecam'] + 2.0 * metrics['r1'],
      rtol=1e-5)
  lecam = jax.device_get(new_state.loss_state['lecam'])
  np.testing.assert_allclose(lecam['real'], ema_real, rtol=1e-6)
  np.testing.assert_allclose(lecam['fake'], ema_fake, rtol=1e-6)
  # EMA of the generator: 0.9 * old + 0.1 * new; eval uses it.
  expected = jax.tree.map(lambda o, n: 0.9 * o + 0.1 * n,
                          state.params['generator'],
                          new_state.params['generator'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               new_state.ema_params['generator'], expected)
  batch = {'image': x, 'mask': jnp.ones((2,), bool)}
  (_, images), (x_ema, _) = jax.jit(
      lambda state, frozen: (task.eval_step(state, batch, frozen),
                             task.model.apply(
                                 {
                                     'params': state.ema_params['generator'],
                                     **state.model_state
                                 }, x, train=False)),
      compiler_options=FAST_COMPILE)(new_state, task.frozen)
  np.testing.assert_allclose(images['reconstructions'], np.clip(x_ema, -1, 1),
                             atol=1e-5)


def test_a_frozen_encoder_and_quantizer_encode_as_in_eval():
  """TiTok's stage 2: the decoder trains on the tokens eval will give it.
  A Gumbel quantizer in train mode samples its codes (and an encoder
  drops out): the frozen ones encoded so, unlike the release."""

  def frozen_gumbel(config):
    config.loss.disc_start = 1  # The step without the GAN terms.
    config.freeze = ('encoder', 'quantizer')
    config.ema.decay = 0.9
    config.model.quantizer = quantizers.default_config('gumbel')
    config.model.quantizer.update(codebook_size=32, embedding_dim=4,
                                  temperature=1.0)

  task = _task(frozen_gumbel)
  batch, state = _batch_and_state(task)
  x = batch['image']
  x_rec, _ = jax.jit(
      lambda state: task.model.apply(
          {
              'params': state.params['generator'],
              **state.model_state
          }, x, train=False), compiler_options=FAST_COMPILE)(state)
  # Their EMA is the frozen params themselves (as the release's EMA copies
  # frozen params), whatever it was; the trained decoder's is averaged.
  ema = jax.tree.map(lambda p: p + 1.0, state.params['generator'])
  state = state.replace(ema_params={'generator': ema})
  # One train step (its loss_and_grads, whose rec_loss it reports, reads the
  # params, not their EMA) checks both.
  new_state, metrics = jax.jit(
      functools.partial(task.train_step, **task.train_step_options(0)),
      compiler_options=FAST_COMPILE)(state, batch, jax.random.key(3),
                                     task.frozen)
  np.testing.assert_allclose(metrics['rec_loss'],
                             task._reconstruction_loss(x, x_rec), rtol=1e-5)  # pylint: disable=protected-access
  for name in ('encoder', 'quantizer'):
    jax.tree.map(np.testing.assert_array_equal,
                 new_state.ema_params['generator'][name],
                 state.params['generator'][name])
  decoder = new_state.ema_params['generator']['decoder']
  assert all(
      np.all(np.asarray(d) != np.asarray(p))
      for d, p in zip(jax.tree.leaves(decoder),
                      jax.tree.leaves(state.params['generator']['decoder'])))


def test_a_frozen_quantizers_schedule_moves_on():
  """freeze = ('quantizer',) with the encoder training: LFQ's entropy weight
  anneals as configured (what the frozen quantizer does not keep is a
  step's EMA statistics, not its schedule's counter)."""

  def mutate(config):
    config.loss.disc_start = 1  # The step without the GAN terms.
    config.freeze = ('quantizer',)
    config.model.quantizer = quantizers.default_config('lfq')
    config.model.quantizer.update(codebook_size=2**4, entropy_weight_final=0.0,
                                  entropy_anneal_steps=4)

  _, state, new_state, _ = _first_step(_task(mutate))
  counter, = jax.tree.leaves(state.model_state['quantizer_state'])
  moved, = jax.tree.leaves(new_state.model_state['quantizer_state'])
  assert (int(counter), int(moved)) == (0, 1)


@pytest.mark.parametrize('quantizer', ['ema', 'fsq'])
def test_a_quantizer_without_params_can_be_frozen(quantizer):
  """An EMA codebook lives in model state, FSQ holds nothing: freezing
  ('encoder', 'quantizer') (TiTok's stage 2) keeps the codebook and its
  statistics and counts no restarts; a name that is nowhere is refused."""

  def frozen(config):
    config.loss.disc_start = 1  # The step without the GAN terms.
    config.freeze = ('encoder', 'quantizer')
    if quantizer == 'ema':
      config.model.quantizer.update(ema=True, restart_threshold=0.99)
    else:
      config.model.quantizer = quantizers.default_config('fsq')
      config.model.quantizer.levels = (5, 3, 3)

  _, state, new_state, metrics = _first_step(_task(frozen))
  assert 'quantizer' not in state.params['generator']
  jax.tree.map(np.testing.assert_array_equal, new_state.model_state,
               state.model_state)
  jax.tree.map(np.testing.assert_array_equal,
               new_state.params['generator']['encoder'],
               state.params['generator']['encoder'])
  assert 'quantizer/restarted' not in metrics
  if quantizer == 'ema':
    assert state.model_state['quantizer_stats']['quantizer']

  def misspelled(config):
    frozen(config)
    config.freeze = ('encoders',)

  task = _task(misspelled)
  with pytest.raises(
      ConfigError, match=r"^freeze: no params or state named "
      r"\['encoders'\]"):
    _batch_and_state(task)
