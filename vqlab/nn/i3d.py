"""Inception-v1 I3D (Carreira and Zisserman, 2017): the FVD feature network.

The RGB stream of DeepMind's `kinetics-i3d` (`i3d.py`), the network the FVD
reference implementation (google-research `frechet_video_distance`, TF-Hub
`i3d-kinetics-400/1`) embeds videos with: its feature is the Kinetics-400
logits averaged over time (`RGB/inception_i3d/Mean`), 400-d.

Layout NDHWC. Every conv uses TF's SAME padding (the extra row at the end when
the padding is odd), max pools SAME (padding never wins: -inf), the final
average pool is VALID over (2, 7, 7). Each conv's BatchNorm (eps 1e-3, no
scale in the TF original) is folded into its kernel and bias by the weight
converter (vqlab.weights.i3d), so inference is conv + bias + ReLU.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import resize

INPUT_SIZE = 224  # Frames are resized to 224 x 224.
NUM_CLASSES = 400  # Kinetics-400.
# Time is halved three times (SAME, so ceil) and the final pool needs 2 steps.
MIN_FRAMES = 9

# The Inception modules: name, then the output channels of branch 0 (1x1),
# branch 1 (1x1, 3x3), branch 2 (1x1, 3x3) and branch 3 (max pool, 1x1).
MIXED = {
    'Mixed_3b': (64, 96, 128, 16, 32, 32),
    'Mixed_3c': (128, 128, 192, 32, 96, 64),
    'Mixed_4b': (192, 96, 208, 16, 48, 64),
    'Mixed_4c': (160, 112, 224, 24, 64, 64),
    'Mixed_4d': (128, 128, 256, 24, 64, 64),
    'Mixed_4e': (112, 144, 288, 32, 64, 64),
    'Mixed_4f': (256, 160, 320, 32, 128, 128),
    'Mixed_5b': (256, 160, 320, 32, 128, 128),
    'Mixed_5c': (384, 192, 384, 48, 128, 128),
}
# The convs inside a module, in MIXED's channel order: b0, b1a, b1b, b2a,
# b2b, b3b (b3a is the max pool).
BRANCH_CONVS = ('b0', 'b1a', 'b1b', 'b2a', 'b2b', 'b3b')


def resize_frames(videos: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Resizes every frame of videos [B, T, H, W, C] to size x size with the
  FVD reference's bilinear (TF1's, vqlab.nn.resize); float32."""
  return resize.resize_bilinear(videos, (size, size), legacy=True)


def _max_pool(x: jax.Array, window: tuple[int, int, int],
              strides: tuple[int, int, int]) -> jax.Array:
  return nn.max_pool(x, window, strides=strides, padding='SAME')


class _Unit3D(nn.Module):
  """Conv (BatchNorm folded in: kernel and bias) + optional ReLU."""
  features: int
  kernel: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  relu: bool = True
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=self.strides,
                padding='SAME', dtype=self.dtype, precision=self.precision,
                name='conv')(x)
    return nn.relu(x) if self.relu else x


class _Mixed(nn.Module):
  """An Inception module: four branches concatenated on channels."""
  channels: tuple[int, ...]
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    unit = lambda y, index, k: _Unit3D(self.channels[index], (
        k,) * 3, dtype=self.dtype, precision=self.precision, name=BRANCH_CONVS[
            index])(y)
    branch_0 = unit(x, 0, 1)
    branch_1 = unit(unit(x, 1, 1), 2, 3)
    branch_2 = unit(unit(x, 3, 1), 4, 3)
    branch_3 = unit(_max_pool(x, (3, 3, 3), (1, 1, 1)), 5, 1)
    return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


class InceptionI3d(nn.Module):
  """I3D logits of videos, averaged over time.

  Attributes:
    resize_input: resize frames to 224 x 224 first (resize_frames); without
      it the frames must already be 224 x 224.
    dtype: compute dtype.
    precision: of the convolutions; the default, HIGHEST, keeps float32
      accuracy on TPUs and GPUs (a metric network).
  """
  resize_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  def _unit(self, x, features, kernel, name, strides=(1, 1, 1), relu=True):
    return _Unit3D(features, kernel, strides, relu, dtype=self.dtype,
                   precision=self.precision, name=name)(x)

  def _mixed(self, x, name):
    return _Mixed(MIXED[name], dtype=self.dtype, precision=self.precision,
                  name=name)(x)

  @nn.compact
  def __call__(self, videos: jax.Array) -> dict[str, jax.Array]:
    """videos [B, T, H, W, 3] in [-1, 1], T >= 9 -> {'logits': [B, 400]}
    (float32; the FVD feature). Gray videos [..., 1] are seen as RGB with
    three equal channels.

    Raises:
      ValueError: not 5-d with 3 or 1 channels, too few frames, or (without
        resize_input) frames other than 224 x 224.
    """
    if videos.ndim != 5:
      raise ValueError(f'I3D: expected videos [B, T, H, W, 3], got shape '
                       f'{videos.shape}')
    videos = resize.as_rgb(videos, 'I3D')
    if videos.shape[1] < MIN_FRAMES:
      raise ValueError(f'I3D: clips need at least {MIN_FRAMES} frames, got '
                       f'{videos.shape[1]}')
    if self.resize_input:
      videos = resize_frames(videos)
    elif videos.shape[2:4] != (INPUT_SIZE, INPUT_SIZE):
      raise ValueError(f'I3D: frames must be {INPUT_SIZE}x{INPUT_SIZE}, got '
                       f'{videos.shape[2]}x{videos.shape[3]}')
    x = videos.astype(self.dtype)
    x = self._unit(x, 64, (7, 7, 7), 'Conv3d_1a_7x7', strides=(2, 2, 2))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self._unit(x, 64, (1, 1, 1), 'Conv3d_2b_1x1')
    x = self._unit(x, 192, (3, 3, 3), 'Conv3d_2c_3x3')
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self._mixed(x, 'Mixed_3b')
    x = self._mixed(x, 'Mixed_3c')
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
      x = self._mixed(x, name)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    x = self._mixed(x, 'Mixed_5b')
    x = self._mixed(x, 'Mixed_5c')
    x = nn.avg_pool(x.astype(jnp.float32), (2, 7, 7), strides=(1, 1, 1),
                    padding='VALID')
    logits = self._unit(x, NUM_CLASSES, (1, 1, 1), 'Logits', relu=False)
    # [B, T', 1, 1, 400] at 224 x 224: squeeze space, average time.
    return {'logits': logits.astype(jnp.float32).mean(axis=(1, 2, 3))}
