"""Bilinear resizes of the metric networks' reference pipelines, bit for bit.

Two conventions of `bilinear` without antialiasing (jax.image.resize would
antialias when downsampling), each a [out, in] matrix applied along H and W:
  torch's `F.interpolate(align_corners=False)` (half-pixel centres), the
    resize of pytorch-fid;
  TF1's `tf.image.resize_bilinear` (no half-pixel offset), the resize inside
    the TF Inception graph (the original Inception Score and FID code, the
    ADM evaluator) and of the FVD reference.
And `as_rgb`, how both networks take gray images.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 weights of torch's 1-D bilinear resize.

  Matches `F.interpolate(mode='bilinear', align_corners=False)` given a
  `size`, without antialiasing also when downsampling, bit for bit.
  """
  # torch's float32 arithmetic; its CPU build fuses scale * (i + 0.5) - 0.5
  # into one FMA (a single rounding), which float64 then float32 reproduces.
  # Near source index 256 a float32 ulp is 1.5e-5, so the rounding matters.
  scale = np.float32(in_size) / np.float32(out_size)
  half = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0.0))
  low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = np.clip(src - low.astype(np.float32), 0.0, 1.0)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, low), np.float32(1.0) - frac)
  np.add.at(matrix, (rows, high), frac)
  return matrix


@functools.cache
def legacy_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 weights of TF1's `tf.image.resize_bilinear`
  (align_corners=False, half_pixel_centers=False): output i samples source
  position i * in / out (float32, as TF's legacy scaler), between floor and
  min(floor + 1, in - 1)."""
  scale = np.float32(in_size) / np.float32(out_size)
  position = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(position).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = (position - lower.astype(np.float32)).astype(np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), 1 - frac)
  np.add.at(matrix, (rows, upper), frac)
  return matrix.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int], *,
                    legacy: bool = False) -> jax.Array:
  """[..., H, W, C] -> [..., size[0], size[1], C] float32, torch's bilinear
  (`legacy`: TF1's), in float32 at HIGHEST precision. An axis already of its
  size is left as it is."""
  matrix = legacy_interpolation_matrix if legacy else interpolation_matrix
  x = x.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  if x.shape[-3] != size[0]:
    rows = jnp.asarray(matrix(x.shape[-3], size[0]))
    x = jnp.einsum('oh,...hwc->...owc', rows, x, precision=hi)
  if x.shape[-2] != size[1]:
    cols = jnp.asarray(matrix(x.shape[-2], size[1]))
    x = jnp.einsum('pw,...hwc->...hpc', cols, x, precision=hi)
  return x


def as_rgb(x: jax.Array, who: str) -> jax.Array:
  """[..., 3] unchanged; gray [..., 1] repeated to 3 equal channels (as
  torch-fidelity and clean-fid feed gray images to Inception)."""
  if x.shape[-1] not in (1, 3):
    raise ValueError(f'{who}: expected 3 (RGB) or 1 (gray) channels, got '
                     f'shape {x.shape}')
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
