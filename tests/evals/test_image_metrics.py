"""PSNR and SSIM against scikit-image, MS-SSIM against TensorFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import metrics as skmetrics
import tensorflow as tf

from tests.compile_options import FAST_COMPILE
from vqlab.evals import image_metrics

# One program per image shape: op by op, each of MS-SSIM's 5 scales compiles
# its own ops, seconds per shape.
_ms_ssim = jax.jit(image_metrics.ms_ssim, compiler_options=FAST_COMPILE)


def _pair(seed, shape):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, shape)
  y = np.clip(x + 0.3 * rng.standard_normal(shape), -1, 1)
  return x, y


def _assert_ssim_is_scikit_images(x, y):
  """vqlab's float32 SSIM of [-1, 1] pairs against scikit-image's float64."""
  got = image_metrics.ssim(jnp.asarray(x, jnp.float32),
                           jnp.asarray(y, jnp.float32))
  want = [
      skmetrics.structural_similarity(
          (a + 1) / 2, (b + 1) / 2, gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False, data_range=1.0, channel_axis=-1)
      for a, b in zip(x, y)
  ]
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize('shape', [(3, 24, 30, 3), (2, 11, 16, 1)])
def test_ssim_matches_scikit_image(shape):
  x, y = _pair(0, shape)
  _assert_ssim_is_scikit_images(x, y)
  np.testing.assert_allclose(image_metrics.ssim(jnp.asarray(x), jnp.asarray(x)),
                             1.0, atol=1e-6)


def test_ssim_of_flat_images_matches_scikit_image():
  """Flat backgrounds (a white page, the built-in shapes): the float32 local
  variance there is mostly rounding error unless the moments are shifted."""
  x = np.full((3, 32, 32, 3), 0.8)
  x[:, 8:20, 10:24] = -0.5
  x[2] = 0.4  # A constant image.
  y = np.clip(x + 1e-3 * np.random.default_rng(3).standard_normal(x.shape), -1,
              1)
  y[2] = 0.34
  _assert_ssim_is_scikit_images(x, y)


def test_psnr_matches_scikit_image():
  """Of pairs in [-1, 1]; a reconstruction beyond that range is clipped to
  it first (`_pair`'s are already in it)."""
  x, y = _pair(1, (2, 16, 16, 3))
  got = image_metrics.psnr(jnp.asarray(x, jnp.float32),
                           jnp.asarray(y, jnp.float32))
  want = [
      skmetrics.peak_signal_noise_ratio((a + 1) / 2, (b + 1) / 2,
                                        data_range=1.0) for a, b in zip(x, y)
  ]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  beyond = jnp.asarray(2 * x, jnp.float32)
  np.testing.assert_allclose(
      image_metrics.psnr(jnp.asarray(x), beyond),
      image_metrics.psnr(jnp.asarray(x), jnp.clip(beyond, -1, 1)), rtol=1e-6)


def test_video_psnr_is_the_mean_over_frames():
  x, y = _pair(2, (2, 3, 16, 16, 3))
  y[:, 0] = np.clip(x[:, 0] + 0.001, -1, 1)  # A near-perfect first frame.
  got = image_metrics.mean_frame_psnr(jnp.asarray(x, jnp.float32),
                                      jnp.asarray(y, jnp.float32))
  want = [
      np.mean([
          skmetrics.peak_signal_noise_ratio((a + 1) / 2, (b + 1) / 2,
                                            data_range=1.0)
          for a, b in zip(clip_x, clip_y)
      ])
      for clip_x, clip_y in zip(x, y)
  ]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ssim_rejects_small_or_mismatched_images():
  with pytest.raises(ValueError, match='smaller than the 11x11 window'):
    image_metrics.ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match='ssim: shapes differ'):
    image_metrics.ssim(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match='one shape'):
    image_metrics.ssim(jnp.zeros((1, 16, 16)), jnp.zeros((1, 16, 16)))
  # A pair in the wrong order or of other channels is not broadcast.
  for metric in (image_metrics.mean_frame_psnr, image_metrics.mean_abs_error):
    with pytest.raises(ValueError, match='shapes differ'):
      metric(jnp.zeros((2, 3, 4, 4, 1)), jnp.zeros((3, 2, 4, 4, 1)))
  with pytest.raises(ValueError, match='shapes differ'):
    image_metrics.mean_abs_error(jnp.zeros((1, 4, 4, 3)), jnp.zeros(
        (1, 4, 4, 1)))


def test_metrics_reject_integer_pixels():
  """uint8 images (a saved PNG) gave PSNR -37 dB and SSIM 3e-5, no error."""
  pixels = jnp.full((1, 16, 16, 3), 128, jnp.uint8)
  for metric in (image_metrics.psnr, image_metrics.mean_frame_psnr,
                 image_metrics.ssim, image_metrics.ms_ssim,
                 image_metrics.mean_abs_error):
    with pytest.raises(TypeError, match=r'x / 127\.5 - 1'):
      metric(pixels, pixels.astype(jnp.float32) / 127.5 - 1)
    with pytest.raises(TypeError, match='got uint8'):
      metric(pixels.astype(jnp.float32) / 127.5 - 1, pixels)


@pytest.mark.parametrize('shape', [(2, 161, 175, 3), (1, 176, 170, 1)])
def test_ms_ssim_matches_tensorflow(shape):
  """Odd sides at every scale (161 -> 81 -> 41 -> 21 -> 11: each halving
  repeats the last row); noisy, smooth and darker pairs (the last moves the
  coarsest scale's luminance term), against TF (which computes in float32:
  textured images only, see the next test)."""
  x, y = _pair(4, shape)
  smooth = np.cumsum(np.cumsum(x, 1), 2)
  smooth = smooth / np.abs(smooth).max(axis=(1, 2, 3), keepdims=True)
  near = np.clip(
      smooth + 0.05 * np.random.default_rng(5).standard_normal(shape), -1, 1)
  for a, b in ((x, y), (smooth, near), (smooth, 0.6 * smooth - 0.3)):
    got = _ms_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    want = tf.image.ssim_multiscale((a + 1) / 2, (np.clip(b, -1, 1) + 1) / 2,
                                    max_val=1.0).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(_ms_ssim(jnp.asarray(x), jnp.asarray(x)), 1.0,
                             atol=1e-6)
  # The reconstruction is clipped to [-1, 1], as for PSNR and SSIM.
  np.testing.assert_array_equal(
      _ms_ssim(jnp.asarray(x), jnp.asarray(2 * x)),
      _ms_ssim(jnp.asarray(x), jnp.clip(jnp.asarray(2 * x), -1, 1)))


def test_ms_ssim_of_flat_images_is_exact():
  """Constant images: every contrast-structure term is 1, so MS-SSIM is the
  coarsest scale's luminance term to its weight. TF's float32 moments give
  0.99783 for the first pair (2e-3 off), as its SSIM's would."""
  a, b = 0.9, 0.8  # On the [-1, 1] scale.
  x = jnp.full((2, 161, 170, 3), a)
  y = jnp.full((2, 161, 170, 3), b).at[1].set(-0.5)
  u, v = (a + 1) / 2, np.array([(b + 1) / 2, 0.25])
  luminance = (2 * u * v + 1e-4) / (u**2 + v**2 + 1e-4)
  np.testing.assert_allclose(_ms_ssim(x, y),
                             luminance**image_metrics.MS_SSIM_WEIGHTS[-1],
                             atol=1e-6)


def test_ms_ssim_names_the_size_it_needs():
  assert image_metrics.MS_SSIM_MIN_SIDE == 161
  with pytest.raises(
      ValueError, match=r'\(160, 200\) are smaller than the '
      r'161x161 that its 5 scales need'):
    image_metrics.ms_ssim(jnp.zeros((1, 160, 200, 3)),
                          jnp.zeros((1, 160, 200, 3)))
