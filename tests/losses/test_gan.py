"""GAN losses and the adaptive weight against explicit computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests import random_weight_files
from tests import tiny
from tests.compile_options import FAST_COMPILE
from tests.losses import numpy_layers
from vqlab.losses import discriminators
from vqlab.losses import gan
from vqlab.losses import perceptual
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer


def test_hinge_and_non_saturating_values():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.5])
  np.testing.assert_allclose(
      gan.hinge_d_loss(real, fake),
      0.5 * (np.mean([0, 0.5, 2.0]) + np.mean([0, 1, 2.5])))
  np.testing.assert_allclose(gan.hinge_g_loss(fake), -np.mean([-2.0, 0.0, 1.5]))
  softplus = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(
      gan.non_saturating_d_loss(real, fake),
      np.mean(softplus(-np.array(real))) + np.mean(softplus(np.array(fake))),
      rtol=1e-6)
  np.testing.assert_allclose(gan.non_saturating_g_loss(fake),
                             np.mean(softplus(-np.array(fake))), rtol=1e-6)


def _perceptual_stand_in(params, x, y, dtype=None):
  """A cheap differentiable [B] distance in LPIPS' place (the task's wiring
  of its gradient is what is tested, not the network)."""
  del params, dtype
  return 3.0 * jnp.mean((jnp.tanh(2 * x) - jnp.tanh(2 * y))**2, axis=(1, 2, 3))


def test_generator_gradient_and_adaptive_weight_equal_full_backprop(
    tmp_path, monkeypatch):
  """The task computes x_hat's cotangents once, lambda by the last layer's
  VJP and the generator's gradient by pulling the lambda-weighted sum back;
  all equal full-network backprop of L_G = L_pixel + L_q + lambda L_G_adv,
  L_pixel = 0.25 mean((x_hat - x)^2) + 0.5 P(x, x_hat) written out here
  (P: a stand-in for LPIPS, as the task calls it). The discriminator's
  gradient, from the same call, is that of L_D = hinge + 0.1 LeCam + 2 R1
  written out here: each term reaches it through both its real and its
  fake logits."""
  monkeypatch.setattr(perceptual, 'lpips_distance', _perceptual_stand_in)
  config = tiny.tokenizer_config()
  config.weights_dir = str(random_weight_files.write(tmp_path, ('vgg16',)))
  config.eval.lpips = 'off'
  config.loss.update(reconstruction='l2', reconstruction_weight=0.25,
                     perceptual_weight=0.5, lecam_weight=0.1, r1_weight=2.0)
  config.discriminator.use_norm = False  # R1 needs per-image logits.
  config = experiment_config.validate(config, num_devices=1)
  task = tokenizer.build(config)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(1), {
      'image': x
  })
  disc = state.params['discriminator']
  model, rng = task.model, jax.random.key(2)
  step = jnp.int32(config.loss.disc_start)  # The GAN terms are on.
  dropout_rng, q_rng, _ = jax.random.split(jax.random.fold_in(rng, 0), 3)

  # EMAs of a discriminator that tells real (0.5) from fake (-0.5): both
  # LeCam terms are active at the initial logits (near 0).
  ema = {'real': jnp.float32(0.5), 'fake': jnp.float32(-0.5)}

  def forward(gen_params):
    (x_rec, q_out,
     _), _ = model.apply({
         'params': gen_params,
         **state.model_state
     }, x, train=True, method=model.forward_with_features, rngs={
         'dropout': dropout_rng,
         'quantizer': q_rng
     }, mutable=list(state.model_state))
    return x_rec, q_out

  def terms(gen_params):
    x_rec, q_out = forward(gen_params)
    g_adv = gan.G_LOSSES[config.loss.gan_loss](task._disc_logits(disc, x_rec))
    pixel = 0.25 * jnp.mean(
        (x_rec - x)**2) + 0.5 * jnp.mean(_perceptual_stand_in(None, x, x_rec))
    return pixel, g_adv, q_out.loss

  def d_loss(disc_params, x_rec):
    d = lambda v: task.discriminator.apply({'params': disc_params}, v)
    real, fake = d(x), d(x_rec)
    hinge = 0.5 * (jnp.mean(jnp.maximum(1 - real, 0)) +
                   jnp.mean(jnp.maximum(1 + fake, 0)))
    # LeCam's code: every logit against the EMAs moved by this batch's means.
    moved = lambda old, v: 0.999 * old + 0.001 * jax.lax.stop_gradient(
        jnp.mean(v))
    lecam = (jnp.mean(jnp.maximum(real - moved(ema['fake'], fake), 0)**2) +
             jnp.mean(jnp.maximum(moved(ema['real'], real) - fake, 0)**2))
    grad_x = jax.grad(lambda v: jnp.sum(d(v)))(x)
    r1 = jnp.mean(jnp.sum(grad_x.reshape(len(x), -1)**2, axis=-1))
    return hinge + 0.1 * lecam + 2.0 * r1

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def both_ways(params):
    grads, _, _, metrics = task.loss_and_grads(params, state.model_state,
                                               {'image': x}, rng, step,
                                               loss_state={'lecam': ema})
    _, pullback = jax.vjp(terms, params['generator'])
    one_hot = lambda i: tuple(jnp.float32(i == j) for j in range(3))
    last = lambda i: pullback(one_hot(i))[0]['to_pixels']['kernel']
    weight = config.loss.disc_weight * jnp.linalg.norm(
        last(0)) / (jnp.linalg.norm(last(1)) + config.loss.adaptive_delta)
    full = pullback((jnp.float32(1), weight, jnp.float32(1)))[0]
    d_grads = jax.grad(d_loss)(params['discriminator'],
                               forward(params['generator'])[0])
    return (grads['generator'], metrics['adaptive_weight'], full, weight,
            grads['discriminator'], d_grads)

  got, got_weight, want, want_weight, got_d, want_d = both_ways(state.params)
  assert 0.0 < float(want_weight) < 1e4
  np.testing.assert_allclose(got_weight, want_weight, rtol=1e-4)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), got,
      want)
  assert np.abs(want['to_pixels']['kernel']).max() > 0
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
      got_d, want_d)


def test_adaptive_weight_clips():
  big = gan.adaptive_weight(jnp.ones(3), jnp.zeros(3), delta=1e-6)
  assert float(big) == 1e4
  np.testing.assert_allclose(
      gan.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0]),
                          delta=0.5), 5.0 / 2.5)


def test_patchgan_starts_as_taming_initializes_it():
  """taming's weights_init: conv kernels N(0, 0.02), BatchNorm scales
  N(1, 0.02) and biases 0."""
  disc = discriminators.PatchGAN(base_features=64, num_layers=3)
  params = jax.jit(disc.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  params = params['params']
  kernels = [v['kernel'] for k, v in params.items() if k.startswith('Conv')]
  assert len(kernels) == 5
  for kernel in kernels[1:4]:  # 131k to 2.1M entries each.
    np.testing.assert_allclose(np.std(kernel), 0.02, rtol=0.02)
    assert abs(np.mean(kernel)) < 1e-3
  norms = [v for k, v in params.items() if k.startswith('BatchStatNorm')]
  scales = np.concatenate([np.asarray(n['scale']) for n in norms])
  assert len(scales) == 128 + 256 + 512
  np.testing.assert_allclose(np.mean(scales), 1.0, atol=0.003)
  np.testing.assert_allclose(np.std(scales), 0.02, rtol=0.1)
  assert all(np.all(n['bias'] == 0) for n in norms)


def test_stylegan_starts_as_maskgit_initializes_it():
  """MaskGIT's and MAGVIT's discriminators: every kernel xavier-uniform,
  U(+-sqrt(6 / (fan_in + fan_out))), biases 0; flax's default would be
  LeCun normal (3.2x xavier's spread at the 3-channel stem)."""
  disc = discriminators.StyleGANDiscriminator(base_features=16,
                                              channel_multipliers=(2, 4))
  params = jax.jit(disc.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  kernels = {
      '/'.join(str(k.key) for k in path[:-1]):
          leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
              params['params']) if path[-1].key == 'kernel'
  }
  assert len(kernels) == 10
  for name, kernel in kernels.items():
    receptive = np.prod(kernel.shape[:-2])
    fan_in, fan_out = kernel.shape[-2] * receptive, kernel.shape[-1] * receptive
    bound = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= bound, name
    if kernel.size >= 2_000:  # Spread of a uniform: bound / sqrt(3).
      np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.05,
                                 err_msg=name)
  biases = [
      leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == 'bias'
  ]
  assert biases and all(np.all(b == 0) for b in biases)


def test_patchgan_logits_match_a_float64_reference():
  """Taming's NLayerDiscriminator: 4x4 convs (pad 1; stride 2, then 1),
  LeakyReLU 0.2, batch norm of the batch's statistics (biased variance, eps
  1e-5, over batch and space) after each inner conv."""
  disc = discriminators.PatchGAN(base_features=4, num_layers=2)
  x = jax.random.normal(jax.random.key(1), (3, 24, 20, 3))
  params = jax.jit(disc.init)(jax.random.key(0), x)['params']
  conv = lambda h, name, stride: numpy_layers.conv2d(h, params[name][
      'kernel'], params[name]['bias'], stride=stride, padding=1)
  h = numpy_layers.leaky_relu(conv(x, 'Conv_0', 2))
  for layer, stride in ((1, 2), (2, 1)):
    h = conv(h, f'Conv_{layer}', stride)
    norm = params[f'BatchStatNorm_{layer - 1}']
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    h = (h - mean) / np.sqrt(var + 1e-5) * np.asarray(
        norm['scale']) + np.asarray(norm['bias'])
    h = numpy_layers.leaky_relu(h)
  want = conv(h, 'Conv_3', 1)
  got = jax.jit(disc.apply)({'params': params}, x)
  assert got.shape == want.shape == (3, 4, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_patchgan_output_side_and_too_small_images():
  for layers in (1, 2, 3):
    disc = discriminators.PatchGAN(base_features=4, num_layers=layers)
    for side in range(discriminators.patchgan_min_side(layers), 41, 3):
      x = jax.ShapeDtypeStruct((1, side, side + 1, 3), jnp.float32)
      logits = jax.eval_shape(disc.init_with_output, jax.random.key(0), x)[0]
      assert logits.shape[1:3] == (discriminators.patchgan_output_side(
          side, layers), discriminators.patchgan_output_side(side + 1, layers))
    # Smaller: no logits (training refuses it: tokenizer_config.check_train_sizes).
    smaller = discriminators.patchgan_min_side(layers) - 1
    x = jax.ShapeDtypeStruct((1, smaller, smaller, 3), jnp.float32)
    logits = jax.eval_shape(disc.init_with_output, jax.random.key(0), x)[0]
    assert logits.size == 0
