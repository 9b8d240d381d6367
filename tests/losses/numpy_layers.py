"""float64 numpy references of the discriminators' layers (NHWC, HWIO)."""

import numpy as np


def conv2d(x, kernel, bias=None, *, stride=1, padding=0):
  """x [B, H, W, Cin] * kernel [kh, kw, Cin, Cout], zero padding on each side
  of both spatial axes, then stride; + bias [Cout]."""
  x = np.pad(np.asarray(x, np.float64), [(0, 0), (padding, padding),
                                         (padding, padding), (0, 0)])
  kernel = np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  windows = windows[:, ::stride, ::stride]  # [B, H', W', Cin, kh, kw]
  out = np.einsum('bhwcij,ijco->bhwo', windows, kernel)
  return out if bias is None else out + np.asarray(bias, np.float64)


def same_conv2d(x, params):
  """A flax nn.Conv of an odd window, stride 1, 'SAME' padding."""
  kernel = params['kernel']
  return conv2d(x, kernel, params.get('bias'), padding=kernel.shape[0] // 2)


def leaky_relu(x, slope=0.2):
  return np.where(x >= 0, x, slope * x)


def blur_pool(x, axis):
  """Stride-2 blur of one axis: taps [1, 3, 3, 1] / 8, zero padding 1."""
  taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
  a = np.pad(np.moveaxis(x, axis, 0), [(1, 1)] + [(0, 0)] * (x.ndim - 1))
  out = np.stack([
      sum(taps[k] * a[2 * i + k]
          for k in range(4))
      for i in range(x.shape[axis] // 2)
  ])
  return np.moveaxis(out, 0, axis)
