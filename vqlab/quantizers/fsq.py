"""Finite scalar quantization (Mentzer et al. 2023).

z: [..., d] with d = len(levels). Channel i is bounded to L_i levels and
rounded with a straight-through estimator:

    half_l = (L - 1)(1 - 1e-3) / 2,   offset = 0.5 if L is even else 0,
    shift  = atanh(offset / half_l),
    bound(z) = tanh(z + shift) * half_l - offset,
    z_hat = round_ste(bound(z)) / (L // 2)      (values in [-1, 1]).

The index is mixed radix with channel 0 least significant:
index = sum_i (z_hat_i (L_i // 2) + L_i // 2) prod_{j<i} L_j.
There is no codebook and no auxiliary loss (`loss` is 0).

tan or atanh: the official notebook writes shift = tan(offset / half_l). The
shift exists so that z = 0 lands on the zero code, i.e. bound(0) = 0, which
needs tanh(shift) = offset / half_l: shift = atanh(...). tan agrees to third
order (both are x + x^3/3 + ...) but leaves bound(0) off by up to 4e-4 (L=4).
We use atanh; tests pin bound(0) = 0 for even L. atanh needs
offset < half_l, i.e. L >= 3; L = 2 (binary) is rejected: use `lfq` for bits.

The gradient of `quantized` w.r.t. z is the straight-through identity through
the rounding, times the bound's derivative (1 - tanh^2) half_l / (L // 2).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.quantizers import base

_EPS = 1e-3  # Keeps tanh * half_l strictly inside the outermost bins.


# ------------------------------------------------------------ pure functions ---
def _levels(levels: Sequence[int]) -> np.ndarray:
  return np.asarray(levels, np.int64)


def bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """tanh(z + shift) * half_l - offset, per channel: [..., d] -> [..., d]."""
  lv = _levels(levels)
  half_l = (lv - 1) * (1 - _EPS) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32) -
          offset.astype(np.float32))


def round_ste(x: jax.Array) -> jax.Array:
  """round(x) forward, identity gradient."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Normalized FSQ codes z_hat in [-1, 1]: [..., d] -> float32 [..., d]."""
  half_width = (_levels(levels) // 2).astype(np.float32)
  return round_ste(bound(z.astype(jnp.float32), levels)) / half_width


def radix_basis(levels: Sequence[int]) -> np.ndarray:
  """prod_{j<i} L_j for each channel i: int [d]."""
  return np.concatenate([[1],
                         np.cumprod(_levels(levels))[:-1]]).astype(np.int64)


def codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Mixed-radix index of normalized codes: [..., d] -> int32 [...]."""
  half_width = (_levels(levels) // 2)
  digits = jnp.round(codes * half_width.astype(np.float32)).astype(jnp.int32) \
      + jnp.asarray(half_width, jnp.int32)
  return jnp.sum(digits * jnp.asarray(radix_basis(levels), jnp.int32),
                 axis=-1).astype(jnp.int32)


def indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Inverse of codes_to_indices: int [...] -> float32 [..., d]."""
  lv = _levels(levels)
  half_width = (lv // 2).astype(np.float32)
  digits = (indices[..., None].astype(jnp.int32) // jnp.asarray(
      radix_basis(levels), jnp.int32)) % jnp.asarray(lv, jnp.int32)
  return (digits.astype(jnp.float32) - half_width) / half_width


# ------------------------------------------------------------------- module ---
class FiniteScalarQuantizer(nn.Module):
  """FSQ; see the module docstring.

  Attributes:
    levels: L_i per channel (each >= 3); codebook_size = prod L_i.
  """
  levels: Sequence[int]

  def __post_init__(self):
    super().__post_init__()
    who = 'FiniteScalarQuantizer'
    if not self.levels or any(
        int(level) != level or level < 3 for level in self.levels):
      raise base.FieldError(
          who, 'levels', 'must be integers >= 3 (L = 2 has no zero code: use '
          f'lfq for bits), got {tuple(self.levels)}')
    if math.prod(self.levels) > 2**31 - 1:
      raise base.FieldError(
          who, 'levels', f'have the product '
          f'{math.prod(self.levels)}, which does not fit '
          'int32 indices')

  @property
  def codebook_size(self) -> int:
    """K = prod(levels)."""
    return math.prod(self.levels)

  @property
  def code_dim(self) -> int:
    """Channels of z: one per level."""
    return len(self.levels)

  def __call__(self, z: jax.Array, *,
               train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., len(levels)]; see the module docstring."""
    del train  # Same computation in training and inference.
    base.check_latents(z, self.code_dim, 'FiniteScalarQuantizer')
    codes = quantize(z, self.levels)
    indices = codes_to_indices(codes, self.levels)
    counts = {'': base.code_histogram(indices, self.codebook_size)}
    return base.QuantizerOutput(quantized=codes.astype(z.dtype),
                                indices=indices, loss=jnp.zeros((),
                                                                jnp.float32),
                                metrics=base.code_metrics(counts),
                                extras={base.CODE_COUNTS: counts})

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes for int indices [...] -> float32 [..., d] (what `quantized` holds)."""
    base.check_indices(indices, self.codebook_size, 'FiniteScalarQuantizer')
    return indices_to_codes(indices, self.levels)


def default_config() -> ml_collections.ConfigDict:
  """FSQ with the paper's 2^10-ish setting [8, 5, 5, 5] (1000 codes)."""
  config = ml_collections.ConfigDict()
  config.levels = (8, 5, 5, 5
                  )  # L_i per channel (>= 3); K = prod, code_dim = len.
  return config


def build(config: ml_collections.ConfigDict, *,
          prefix: str = 'quantizer') -> FiniteScalarQuantizer:
  """Builds a FiniteScalarQuantizer from a validated config at `prefix`."""
  return base.build_module(FiniteScalarQuantizer, prefix,
                           levels=tuple(int(level) for level in config.levels))
