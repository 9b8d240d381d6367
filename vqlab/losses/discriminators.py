"""Image discriminators."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
  """Batch normalization with the current batch's statistics and a learned
  affine; no running averages (the discriminator only runs in training, as in
  taming, where it is always in train mode). Under jit with a sharded batch the
  statistics are global, so results do not depend on the device count."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.var(x32, axis=(0, 1, 2))
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(x.dtype)


class PatchGAN(nn.Module):
  """pix2pix / taming NLayerDiscriminator: per-patch real/fake logits.

  Attributes:
    base_features: channels of the first conv (ndf).
    num_layers: number of stride-2 convs (3 gives a 70x70 receptive field).
    use_norm: batch normalization after every inner conv (taming: True).
    dtype: compute dtype.
  """
  base_features: int = 64
  num_layers: int = 3
  use_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> logits [B, H', W', 1] (float32)."""
    if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError('PatchGAN: images must be floating [B, H, W, C], got '
                       f'{x.dtype} {tuple(x.shape)}')
    conv = lambda f, s, h: nn.Conv(f, (4, 4), strides=(s, s),
                                   padding=((1, 1), (1, 1)), dtype=self.dtype)(h)
    h = nn.leaky_relu(conv(self.base_features, 2, x.astype(self.dtype)), 0.2)
    for layer in range(1, self.num_layers + 1):
      features = self.base_features * min(2**layer, 8)
      h = conv(features, 2 if layer < self.num_layers else 1, h)
      if self.use_norm:
        h = BatchStatNorm()(h)
      h = nn.leaky_relu(h, 0.2)
    return conv(1, 1, h).astype(jnp.float32)
