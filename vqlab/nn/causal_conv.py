"""Causal 3D convolution (MAGVIT-v2): output frame t sees input frames <= t.

Time: k_t - 1 frames are padded BEFORE the clip and none after. The padding
replicates the first frame (as the causal convolutions of Open-Sora-Plan,
CogVideoX and LTX-Video do; lucidrains' and Open-Sora's reimplementations pad
zeros; the paper does not say and MAGVIT-v2's code is not public). Both are
causal; replication makes a 1-frame input behave exactly like a still clip of
that frame, so an image is encoded as a static video rather than as a frame
preceded by black, which is the point of the shared image/video codebook.

With stride s_t, output frame j covers padded frames [j s_t, j s_t + k_t - 1],
i.e. input frames [j s_t - k_t + 1, j s_t]: it sees input frames <= j s_t.
T input frames give (T + k_t - 1 - k_t) // s_t + 1 = (T - 1) // s_t + 1
outputs, so 1 + s t frames give exactly 1 + t (for any k_t >= 1).

Space: TF 'SAME' zero padding, so H -> ceil(H / s_h) (for a 3x3 kernel:
pads (1, 1) at stride 1, (0, 1) at stride 2 on even H). `spatial_padding=
'symmetric'` pads k // 2 on both sides instead, as PyTorch's
`Conv2d(padding=k // 2)` (Open-MAGVIT2's stride-2 downsampling pads (1, 1)).

Parameters are `kernel` [k_t, k_h, k_w, C_in, features] and `bias`
[features] at the top of the module (as nn.Conv), so the tokenizer task can
take the gradient w.r.t. `params[name]['kernel']`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' (low, high) padding of one axis: output ceil(size / stride)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class CausalConv3D(nn.Module):
  """Causal in time, 'SAME' in space 3D convolution; see the module docstring.

  Attributes:
    features: output channels.
    kernel_size: (k_t, k_h, k_w).
    strides: (s_t, s_h, s_w).
    use_bias: add a bias.
    dtype: compute dtype (parameters stay float32).
    spatial_padding: 'same' (TF) or 'symmetric' (k // 2 on both sides).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  use_bias: bool = True
  dtype: Any = jnp.float32
  spatial_padding: str = 'same'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, 1 + (T-1)//s_t, ceil(H/s_h), ceil(W/s_w),
    features]."""
    if x.ndim != 5:
      raise ValueError(f'CausalConv3D: input must be [B, T, H, W, C], got '
                       f'shape {tuple(x.shape)}')
    k_t, k_h, k_w = self.kernel_size
    s_t, s_h, s_w = self.strides
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k_t, k_h, k_w, x.shape[-1], self.features))
    bias = (self.param('bias', nn.initializers.zeros,
                       (self.features,)) if self.use_bias else None)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    x = jnp.pad(x, ((0, 0), (k_t - 1, 0), (0, 0), (0, 0), (0, 0)), mode='edge')
    if self.spatial_padding == 'same':
      spatial = (same_padding(x.shape[2], k_h,
                              s_h), same_padding(x.shape[3], k_w, s_w))
    elif self.spatial_padding == 'symmetric':
      spatial = ((k_h // 2, k_h // 2), (k_w // 2, k_w // 2))
    else:
      raise ValueError(f'CausalConv3D: spatial_padding must be same or '
                       f'symmetric, got {self.spatial_padding!r}')
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(s_t, s_h, s_w), padding=((0, 0),) + spatial,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
    return linear.add_bias(y, bias) if bias is not None else y
