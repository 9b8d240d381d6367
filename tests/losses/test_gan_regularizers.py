"""LeCam, R1, blur pooling and the StyleGAN discriminator against direct
numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses import numpy_layers
from vqlab.errors import ConfigError
from vqlab.losses import discriminators
from vqlab.losses import gan
from vqlab.nn import blur


def test_lecam_matches_formula_and_ema():
  rng = np.random.default_rng(0)
  real, fake = rng.standard_normal((4, 3, 3, 1)), rng.standard_normal(
      (4, 3, 3, 1))
  ema = {'real': jnp.float32(0.3), 'fake': jnp.float32(-0.2)}
  got = gan.lecam_regularizer(jnp.asarray(real), jnp.asarray(fake), ema['real'],
                              ema['fake'])
  relu = lambda v: np.maximum(v, 0)
  want = np.mean(relu(real + 0.2)**2) + np.mean(relu(0.3 - fake)**2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  new = gan.lecam_ema_update(ema, jnp.asarray(real), jnp.asarray(fake), 0.999)
  np.testing.assert_allclose(new['real'], 0.999 * 0.3 + 0.001 * real.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(new['fake'], 0.999 * -0.2 + 0.001 * fake.mean(),
                             rtol=1e-5)
  # One step, in the official order: the EMAs move first, then measure.
  reg, moved = gan.lecam_term(jnp.asarray(real), jnp.asarray(fake), ema, 0.999)
  ema_real, ema_fake = 0.999 * 0.3 + 0.001 * real.mean(), 0.999 * -0.2 + (
      0.001 * fake.mean())
  np.testing.assert_allclose(
      reg,
      np.mean(relu(real - ema_fake)**2) + np.mean(relu(ema_real - fake)**2),
      rtol=1e-6)
  np.testing.assert_allclose(moved['real'], ema_real, rtol=1e-6)
  # No gradient reaches the EMAs.
  grads = jax.grad(lambda e: gan.lecam_regularizer(jnp.asarray(
      real), jnp.asarray(fake), e['real'], e['fake']))(ema)
  assert float(grads['real']) == 0.0 and float(grads['fake']) == 0.0


def test_lecam_mean_logit_form_is_magvits_over_two_steps():
  """MAGVIT's / TiTok's order: the regularizer of the batch's mean logits
  against the EMAs before it, then the EMAs move."""
  rng = np.random.default_rng(1)
  relu = lambda v: np.maximum(v, 0)
  ema = {'real': jnp.float32(0.0), 'fake': jnp.float32(0.0)}
  want_real = want_fake = 0.0
  for _ in range(2):
    real, fake = rng.standard_normal((4, 2, 2, 1)) + 1, rng.standard_normal(
        (4, 2, 2, 1)) - 1
    reg, ema = gan.lecam_term(jnp.asarray(real), jnp.asarray(fake), ema, 0.9,
                              'mean_logit')
    want = relu(real.mean() - want_fake)**2 + relu(want_real - fake.mean())**2
    np.testing.assert_allclose(reg, want, rtol=1e-5)
    per_logit, _ = gan.lecam_term(jnp.asarray(real), jnp.asarray(fake), {
        'real': jnp.float32(want_real),
        'fake': jnp.float32(want_fake)
    }, 0.9)
    assert float(per_logit) > float(reg)  # Per logit also sees the spread.
    want_real = 0.9 * want_real + 0.1 * real.mean()
    want_fake = 0.9 * want_fake + 0.1 * fake.mean()
    np.testing.assert_allclose(ema['real'], want_real, rtol=1e-5)
    np.testing.assert_allclose(ema['fake'], want_fake, rtol=1e-5)
  with pytest.raises(ValueError, match='unknown LeCam form'):
    gan.lecam_term(jnp.asarray(real), jnp.asarray(fake), ema, 0.9, 'mean')


def test_r1_penalty_equals_analytic_gradient():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
  x = rng.standard_normal((3, 5, 5, 2)).astype(np.float32)
  d = lambda v: jnp.sum(v**2 * a, axis=(1, 2, 3))  # grad_x = 2 a x.
  want = np.mean(np.sum(((2 * a * x)**2).reshape(3, -1), axis=-1))
  np.testing.assert_allclose(gan.r1_penalty(d, jnp.asarray(x)), want, rtol=1e-5)


@pytest.mark.parametrize('axes', [(1, 2), (1, 2, 3)])
def test_blur_pool_matches_separable_numpy(axes):
  shape = (2, 4, 6, 8, 3) if len(axes) == 3 else (2, 6, 8, 3)
  x = np.random.default_rng(2).standard_normal(shape)
  want = x
  for axis in axes:
    want = numpy_layers.blur_pool(want, axis)
  got = blur.blur_pool(jnp.asarray(x, jnp.float32), axes)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # A constant image stays constant away from the zero-padded border.
  ones = blur.blur_pool(jnp.ones((1, 8, 8, 1)), (1, 2))
  np.testing.assert_allclose(ones[0, 1:-1, 1:-1], 1.0, rtol=1e-6)
  # Other strides would need other paddings to stay centred: refused.
  with pytest.raises(ValueError, match='stride must be 1 or 2, got 3'):
    blur.blur_pool(jnp.ones((1, 6, 6, 1)), (1, 2), stride=3)


def test_stylegan_discriminator_shapes_and_errors():
  config = discriminators.default_config('stylegan')
  config.base_features = 4
  config.channel_multipliers = (1, 2)
  disc = discriminators.build(config)
  x = jnp.zeros((2, 16, 16, 3))
  params = disc.init(jax.random.key(0), x)
  logits = disc.apply(params, x)
  assert logits.shape == (2, 1) and logits.dtype == jnp.float32
  with pytest.raises(ValueError, match='not divisible'):
    disc.apply(params, jnp.zeros((2, 18, 18, 3)))
  config.channel_multipliers = ()
  with pytest.raises(ConfigError, match='discriminator.channel_multipliers'):
    discriminators.build(config)
  bad = discriminators.default_config('patchgan')
  bad.name = 'dcgan'
  with pytest.raises(
      ConfigError, match="discriminator.name: unknown "
      "discriminator 'dcgan'"):
    discriminators.build(bad)


def test_stylegan_discriminator_logits_match_a_float64_reference():
  """Stem conv, then per level conv3 -> lrelu -> blur -> conv3 -> lrelu
  plus blur -> 1x1 conv on the skip, summed / sqrt(2); head conv, dense,
  logit (LeakyReLU 0.2 throughout)."""
  config = discriminators.default_config('stylegan')
  config.base_features = 4
  config.channel_multipliers = (1, 2)
  disc = discriminators.build(config)
  x = jax.random.normal(jax.random.key(1), (2, 8, 12, 3))
  params = jax.jit(disc.init)(jax.random.key(0), x)['params']
  relu, conv = numpy_layers.leaky_relu, numpy_layers.same_conv2d
  blur = lambda v: numpy_layers.blur_pool(numpy_layers.blur_pool(v, 1), 2)
  h = relu(conv(x, params['stem']))
  for level in range(2):
    block = params[f'down_{level}']
    skip = numpy_layers.conv2d(blur(h), block['skip']['kernel'])
    h = relu(conv(blur(relu(conv(h, block['conv1']))), block['conv2']))
    h = (h + skip) / np.sqrt(2.0)
  h = relu(conv(h, params['head_conv'])).reshape(2, -1)
  dense = lambda v, p: v @ np.asarray(p['kernel'], np.float64) + np.asarray(
      p['bias'], np.float64)
  want = dense(relu(dense(h, params['head_dense'])), params['logit'])
  got = jax.jit(disc.apply)({'params': params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_stylegan_discriminator_is_3d_for_videos():
  disc = discriminators.StyleGANDiscriminator(base_features=4,
                                              channel_multipliers=(1, 2))
  video = jax.random.normal(jax.random.key(0), (2, 5, 8, 8, 3))
  params = disc.init(jax.random.key(1), video)
  kernel = params['params']['stem']['kernel']
  assert kernel.shape == (3, 3, 3, 3, 4)  # 3D convolutions.
  logits = disc.apply(params, video)
  assert logits.shape == (2, 1)
  # Time matters: reversing the frames changes the logit.
  flipped = disc.apply(params, video[:, ::-1])
  assert float(jnp.max(jnp.abs(flipped - logits))) > 1e-6
  # The same parameters score 1-frame videos (images in joint training).
  assert disc.apply(params, video[:, :1]).shape == (2, 1)
