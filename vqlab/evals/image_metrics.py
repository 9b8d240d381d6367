"""Per-example image quality metrics on [-1, 1] images."""

import jax
import jax.numpy as jnp

from vqlab import checks


def _check_same_shape(who: str, x: jax.Array, y: jax.Array) -> None:
  """Same shapes, and [-1, 1] floats (uint8 gave silently wrong numbers)."""
  if x.shape != y.shape:
    raise ValueError(f'{who}: shapes differ: {x.shape} vs {y.shape}')
  for images in (x, y):
    checks.check_float_pixels(images, who)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """PSNR in dB of [-1, 1] images [B, ...] measured on the [0, 1] scale -> [B].

  Reconstructions are clipped to [-1, 1] first, as saved images would be.
  """
  _check_same_shape('psnr', x, y)
  x01 = (x.astype(jnp.float32) + 1.0) / 2.0
  y01 = (jnp.clip(y.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  mse = jnp.mean((x01 - y01)**2, axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def mean_frame_psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """`psnr` of each frame of videos [B, T, H, W, C], averaged over the T
  frames of each -> [B] (images [B, H, W, C]: `psnr`)."""
  _check_same_shape('mean_frame_psnr', x, y)
  if x.ndim != 5:
    return psnr(x, y)
  frames = lambda v: v.reshape((-1,) + v.shape[2:])
  return psnr(frames(x), frames(y)).reshape(x.shape[:2]).mean(axis=1)


def mean_abs_error(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean |x - y| per example, [B, ...] -> [B]."""
  _check_same_shape('mean_abs_error', x, y)
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)),
                  axis=tuple(range(1, x.ndim)))


SSIM_WINDOW = 11  # Side of SSIM's Gaussian window at sigma 1.5.


def _gaussian_taps(sigma: float, radius: int) -> jax.Array:
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * (offsets / sigma)**2)
  return taps / jnp.sum(taps)


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable depthwise filter over H and W, 'valid' region: [B, H, W, C] ->
  [B, H - k + 1, W - k + 1, C]."""
  channels = x.shape[-1]
  k = taps.shape[0]
  for shape in ((k, 1), (1, k)):
    kernel = jnp.tile(taps.reshape(shape + (1, 1)), (1, 1, 1, channels))
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=channels,
                                     precision=jax.lax.Precision.HIGHEST)
  return x


def _local_terms(x: jax.Array, y: jax.Array, *, sigma: float, k1: float,
                 k2: float) -> tuple[jax.Array, jax.Array]:
  """SSIM's luminance and contrast-structure maps of [0, 1] images [B, H, W,
  C], each [B, H - 10, W - 10, C] (an 11x11 window at sigma 1.5, 'valid'
  positions only)."""
  taps = _gaussian_taps(sigma, int(3.5 * sigma + 0.5))
  blur = lambda v: _filter_valid(v, taps)
  # Moments of images shifted by their means per image and channel: in a flat
  # region E[v^2] - E[v]^2 of the unshifted float32 pixels is mostly rounding
  # error, which SSIM divides by c2 (up to 1.6e-4 above float64 on a
  # constant image; 6e-7 shifted). Shifts change no (co)variance.
  shift_x = jnp.mean(x, axis=(1, 2), keepdims=True)
  shift_y = jnp.mean(y, axis=(1, 2), keepdims=True)
  x, y = x - shift_x, y - shift_y
  dx, dy = blur(x), blur(y)
  var_x = blur(x * x) - dx**2
  var_y = blur(y * y) - dy**2
  cov = blur(x * y) - dx * dy
  window_sum = blur(jnp.ones_like(x[:1]))  # 1 up to float32 rounding.
  mu_x, mu_y = dx + window_sum * shift_x, dy + window_sum * shift_y
  c1, c2 = k1**2, k2**2
  luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
  contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
  return luminance, contrast_structure


def _unit_range_pair(who: str, x: jax.Array, y: jax.Array, min_side: int,
                     needs: str):
  """Checks [B, H, W, C] pairs of at least `min_side` pixels a side (what
  `needs` them, for the error); maps x and the clipped y from [-1, 1] to
  [0, 1]."""
  _check_same_shape(who, x, y)
  if x.ndim != 4:
    raise ValueError(f'{who}: need two [B, H, W, C] arrays of one shape, got '
                     f'{x.shape} and {y.shape}')
  if min(x.shape[1:3]) < min_side:
    raise ValueError(f'{who}: images {x.shape[1:3]} are smaller than the '
                     f'{min_side}x{min_side} {needs}')
  return ((x.astype(jnp.float32) + 1.0) / 2.0,
          (jnp.clip(y.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0)


def ssim(x: jax.Array, y: jax.Array, *, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
  """SSIM (Wang et al., 2004) of [-1, 1] images [B, H, W, C] -> [B].

  The standard Gaussian-window form, equal to scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)` on the images
  mapped to [0, 1]: an 11x11 window (radius round(3.5 sigma)), the SSIM map
  averaged over the positions where the window fits inside the image and over
  channels. `y` is clipped to [-1, 1] as saved images would be.
  """
  side = 2 * int(3.5 * sigma + 0.5) + 1
  x, y = _unit_range_pair('ssim', x, y, side, 'window')
  luminance, contrast_structure = _local_terms(x, y, sigma=sigma, k1=k1, k2=k2)
  return jnp.mean(luminance * contrast_structure, axis=(1, 2, 3))


# MS-SSIM's scale weights (Wang, Simoncelli and Bovik, 2003), finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The coarsest of the 5 scales (sides halved 4 times, rounding up) must still
# hold SSIM's 11x11 window.
MS_SSIM_MIN_SIDE = (SSIM_WINDOW - 1) * 2**(len(MS_SSIM_WEIGHTS) - 1) + 1


def _halve(x: jax.Array) -> jax.Array:
  """2x2 mean pooling of [B, H, W, C]; an odd side first repeats its last
  row or column -> [B, ceil(H / 2), ceil(W / 2), C]."""
  pad = [(0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)]
  x = jnp.pad(x, pad, mode='symmetric')
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Multi-scale SSIM of [-1, 1] images [B, H, W, C] -> [B] (H, W >= 161).

  TensorFlow's `tf.image.ssim_multiscale(max_val=1)` on the images mapped to
  [0, 1] (within 1e-5 on textured images; on flat regions TF's float32
  moments are off, 2e-3 on a constant image, where this is within 1e-6 of
  the closed form), the form Google's papers report (MAGVIT-v2's
  compression table):
  at each of 5 scales the contrast-structure term averaged over positions
  (SSIM itself at the coarsest), each clipped at 0 and raised to its weight
  in MS_SSIM_WEIGHTS, multiplied per channel, then averaged over channels.
  Each scale halves the last by 2x2 means. `y` is clipped to [-1, 1].
  """
  x, y = _unit_range_pair('ms_ssim', x, y, MS_SSIM_MIN_SIDE,
                          'that its 5 scales need')
  per_scale = []
  for scale in range(len(MS_SSIM_WEIGHTS)):
    if scale:
      x, y = _halve(x), _halve(y)
    luminance, contrast_structure = _local_terms(x, y, sigma=1.5, k1=0.01,
                                                 k2=0.03)
    if scale < len(MS_SSIM_WEIGHTS) - 1:
      per_scale.append(jnp.mean(contrast_structure, axis=(1, 2)))
    else:
      per_scale.append(jnp.mean(luminance * contrast_structure, axis=(1, 2)))
  weights = jnp.asarray(MS_SSIM_WEIGHTS, jnp.float32)
  per_channel = jnp.prod(jax.nn.relu(jnp.stack(per_scale, -1))**weights, -1)
  return jnp.mean(per_channel, axis=-1)
