"""Lookup-free quantization (MAGVIT-v2).

z: [..., b] with b = log2 K. Each channel is a bit:
    q(z) = sign(z) in {-1, 1}^b  (0 maps to -1),
    index = sum_i 2^i 1{z_i > 0}  (bit 0 first, as Open-MAGVIT2; lucidrains'
                                   LFQ puts channel 0 in the most
                                   significant bit: `reverse_bits` maps),
straight-through gradients, and

    loss = commitment_weight * mean ||z - sg(q(z))||^2
         + entropy_weight * (E[H(p(z))] - H[E p(z)]),

p(z) = softmax over the K codes c of 2 <z, c> / tau (tau = 0.01). Since
<z, c> = sum_i z_i c_i, p(z) is a product over bits of
p(z_i = +1) = sigmoid(4 z_i / tau), so the per-sample entropy is exactly a
sum of binary entropies. The batch term H[E p] is the entropy of the mean
distribution over all K codes, also exact and cheap for any K: split the b
bits into a low half (ceil(b/2) bits) and a high half; p(z) is the product of
the halves' distributions Q_lo(z) [2^ceil(b/2)] and Q_hi(z) [2^floor(b/2)],
so over M positions
    E p = (1/M) Q_lo^T Q_hi     ([M, 2^(b/2)] x [M, 2^(b/2)] -> [2^(b/2)]^2),
one matmul: O(M 2^b) FLOPs and O(M 2^(b/2) + 2^b) memory, never an [M, K]
array (K = 2^18: two [M, 512] halves and one 512 x 512 mean). The mean is
over every position of the global batch: under jit with a sharded batch the
contraction over M is already global. The released code (MAGVIT's losses.py,
Open-MAGVIT2's entropy_loss) takes -sum p log(p + 1e-5), which at 2^18
codes, where most E p are below 1e-5, is up to about 1 nat lower and has a
3-35% different gradient (a review's measure, 2048 positions); curves of
`batch_entropy` and fine-tunes of converted weights differ from theirs so.

`entropy_groups` = G > 1 replaces H[E p] by the sum of the marginal entropies
of G bit groups (about b/G bits each, the first groups get the extra bit),
    sum_g H[E p_g],   p_g = softmax(2 <z_g, c_g> / tau) over 2^|g|,
an upper bound of H[E p] that is tight only when the groups are independent
under E p and very loose when M is small against K (an explicit option, for
comparison with code that uses it; MAGVIT-v2's penalty is the exact term).

Factorized codes (MAGVIT-v2's factorized heads): `factor_bits`, e.g. (9, 9)
for 2^18 = 2^9 x 2^9 (or uneven, (6, 12)), splits the bits in order (factor 0
holds bits 0..f0-1) and `indices` is then int32 [..., n_factors], factor f
being sum_j 2^j 1{z_(o_f + j) > 0}. The full index is
sum_f factor_f * 2^(o_f). `indices_to_codes` accepts either form.
Metrics: `usage` and `perplexity` are over the full 2^b codes (an O(K)
scatter-add histogram); with factors also `usage/factor{f}` and
`perplexity/factor{f}` per factor.

Entropy-weight annealing (MAGVIT-v2 found it useful): with
`entropy_anneal_steps` > 0 the weight goes linearly from `entropy_weight` to
`entropy_weight_final` over that many train steps, counted in the
`quantizer_state` collection (base.advance_step_counter).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.quantizers import base


# ------------------------------------------------------------ pure functions ---
def sign_codes(z: jax.Array) -> jax.Array:
  """q(z) = sign(z) with 0 -> -1: [..., b] -> float32 [..., b] in {-1, 1}."""
  return jnp.where(z > 0, 1.0, -1.0).astype(jnp.float32)


def bits_to_indices(z: jax.Array) -> jax.Array:
  """sum_i 2^i 1{z_i > 0}: [..., b] -> int32 [...] (b <= 30)."""
  weights = jnp.left_shift(1, jnp.arange(z.shape[-1], dtype=jnp.int32))
  return jnp.sum(jnp.where(z > 0, weights, 0), axis=-1).astype(jnp.int32)


def indices_to_sign_codes(indices: jax.Array, num_bits: int) -> jax.Array:
  """Inverse of bits_to_indices: int [...] -> float32 [..., num_bits] in {-1, 1}."""
  bits = jnp.right_shift(indices[..., None].astype(jnp.int32),
                         jnp.arange(num_bits, dtype=jnp.int32)) & 1
  return jnp.where(bits == 1, 1.0, -1.0).astype(jnp.float32)


def reverse_bits(indices: jax.Array, num_bits: int) -> jax.Array:
  """The index with its num_bits bits in reverse order: int [...] -> int32
  [...]. Maps vqlab's (and Open-MAGVIT2's) bit order, bit 0 first, to the
  order of lucidrains' LFQ, channel 0 the most significant bit, and back
  (it is its own inverse)."""
  bits = jnp.right_shift(indices[..., None].astype(jnp.int32),
                         jnp.arange(num_bits, dtype=jnp.int32)) & 1
  weights = jnp.left_shift(1, jnp.arange(num_bits - 1, -1, -1, dtype=jnp.int32))
  return jnp.sum(bits * weights, axis=-1).astype(jnp.int32)


def _offsets(factor_bits: Sequence[int]) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(factor_bits)[:-1]]).astype(np.int32)


def split_factors(indices: jax.Array, factor_bits: Sequence[int]) -> jax.Array:
  """Full index [...] -> factor indices int32 [..., len(factor_bits)]."""
  offsets = jnp.asarray(_offsets(factor_bits))
  masks = jnp.asarray([(1 << f) - 1 for f in factor_bits], jnp.int32)
  return (jnp.right_shift(indices[..., None].astype(jnp.int32), offsets) &
          masks).astype(jnp.int32)


def combine_factors(factors: jax.Array,
                    factor_bits: Sequence[int]) -> jax.Array:
  """Factor indices [..., F] -> full index int32 [...]: sum_f x_f 2^(o_f)."""
  offsets = jnp.asarray(_offsets(factor_bits))
  return jnp.sum(jnp.left_shift(factors.astype(jnp.int32), offsets),
                 axis=-1).astype(jnp.int32)


def binary_entropy_from_logits(x: jax.Array) -> jax.Array:
  """H(sigmoid(x)) in nats, elementwise, stable for large |x|."""
  return (jax.nn.sigmoid(x) * jax.nn.softplus(-x) +
          jax.nn.sigmoid(-x) * jax.nn.softplus(x))


def per_sample_entropy(z: jax.Array, temperature: float) -> jax.Array:
  """H(p(z)) for p = softmax_c(2 <z, c> / tau): [M, b] -> [M] (exact)."""
  return jnp.sum(binary_entropy_from_logits(4.0 * z / temperature), axis=-1)


def group_sizes(num_bits: int, groups: int) -> list[int]:
  """Bits per entropy group: `groups` near-equal parts, larger ones first."""
  return [len(part) for part in np.array_split(np.arange(num_bits), groups)]


def code_table(num_bits: int) -> jax.Array:
  """All 2^num_bits codes in index order: float32 [2^n, n] in {-1, 1}."""
  return indices_to_sign_codes(jnp.arange(2**num_bits), num_bits)


def _distributions_over_codes(z: jax.Array, temperature: float) -> jax.Array:
  """softmax_c(2 <z, c> / tau) over the 2^n codes c: [M, n] -> [M, 2^n]."""
  logits = jnp.matmul(2.0 * z,
                      code_table(z.shape[-1]).T,
                      precision=jax.lax.Precision.HIGHEST) / temperature
  return jax.nn.softmax(logits, axis=-1)


def _entropy(probs: jax.Array) -> jax.Array:
  """-sum p log p over every entry of probs (a distribution): scalar."""
  return -jnp.sum(probs * base.safe_log(probs))


def batch_entropy(z: jax.Array, temperature: float,
                  groups: int = 1) -> jax.Array:
  """H[mean_m p(z_m)] over all 2^b codes (groups == 1), or the sum over
  `groups` bit groups of their marginals' entropies (an upper bound).

  Args:
    z: [M, b] latents of every position of the batch.
    temperature: tau of p(z) = softmax(2 <z, c> / tau).
    groups: 1 for the exact joint entropy, G > 1 for the grouped bound.

  Returns:
    float32 scalar, in nats. The exact term costs one
    [2^ceil(b/2), M] @ [M, 2^floor(b/2)] matmul (see the module docstring).
  """
  if groups == 1:
    low = (z.shape[-1] + 1) // 2
    q_low = _distributions_over_codes(z[:, :low], temperature)
    q_high = _distributions_over_codes(z[:, low:], temperature)
    mean = jnp.matmul(q_low.T, q_high,
                      precision=jax.lax.Precision.HIGHEST) / z.shape[0]
    return _entropy(mean)
  total = jnp.zeros((), jnp.float32)
  start = 0
  for size in group_sizes(z.shape[-1], groups):
    q = _distributions_over_codes(z[:, start:start + size], temperature)
    total += _entropy(jnp.mean(q, axis=0))
    start += size
  return total


# ------------------------------------------------------------------- module ---
class LookupFreeQuantizer(nn.Module):
  """LFQ; see the module docstring.

  Attributes:
    codebook_size: K = 2^b; z has b channels.
    factor_bits: () for plain indices, else bits per factor (sum b).
    commitment_weight: weight of mean ||z - sg(q(z))||^2.
    entropy_weight: weight of the entropy penalty (at step 0 if annealed).
    entropy_weight_final: weight after annealing.
    entropy_anneal_steps: linear annealing length; 0: constant weight.
    entropy_temperature: tau in p(z) = softmax(2 <z, c> / tau).
    entropy_groups: 1 for the exact batch entropy; G > 1 for the sum
      of G bit groups' entropies (an upper bound).
  """
  codebook_size: int
  factor_bits: Sequence[int] = ()
  commitment_weight: float = 0.25
  entropy_weight: float = 0.1
  entropy_weight_final: float = 0.1
  entropy_anneal_steps: int = 0
  entropy_temperature: float = 0.01
  entropy_groups: int = 1

  def __post_init__(self):
    super().__post_init__()
    who = 'LookupFreeQuantizer'
    k = self.codebook_size
    if not (isinstance(k, int) and k >= 2 and k & (k - 1) == 0 and k <= 2**30):
      raise base.FieldError(who, 'codebook_size',
                            f'must be a power of 2 in [2, 2^30], got {k}')
    b = self.num_bits
    if self.factor_bits and (sum(self.factor_bits) != b or
                             min(self.factor_bits) < 1):
      raise base.FieldError(
          who, 'factor_bits', f'{tuple(self.factor_bits)} must be positive '
          f'and sum to log2(codebook_size) = {b}')
    if not 1 <= self.entropy_groups <= b:
      raise base.FieldError(
          who, 'entropy_groups', f'must be in [1, {b}], '
          f'got {self.entropy_groups}')
    base.check_positive(self.entropy_temperature, 'entropy_temperature', who)
    if self.entropy_anneal_steps < 0:
      raise base.FieldError(who, 'entropy_anneal_steps', 'must be >= 0, got '
                            f'{self.entropy_anneal_steps}')
    if self.entropy_anneal_steps == 0:
      base.check_unread(self, 'entropy_weight_final',
                        'entropy_anneal_steps > 0', who)

  @property
  def num_bits(self) -> int:
    """b = log2(codebook_size)."""
    return int(self.codebook_size).bit_length() - 1

  @property
  def code_dim(self) -> int:
    """Channels of z: one per bit."""
    return self.num_bits

  @property
  def num_factors(self) -> int:
    """Length of the trailing factor axis of `indices` (0: no such axis)."""
    return len(self.factor_bits)

  def full_indices(self, indices: jax.Array) -> jax.Array:
    """Indices as `__call__` returns them -> full indices int32 [...] in [0, K).

    Identity without factors; combines [..., n_factors] factor indices
    otherwise (for histograms over the whole code space).
    """
    if not self.factor_bits:
      return indices
    return combine_factors(indices, self.factor_bits)

  def current_entropy_weight(self, step: jax.Array) -> jax.Array:
    """The entropy weight at train step `step` (float32 scalar)."""
    return base.anneal(step, self.entropy_weight, self.entropy_weight_final,
                       self.entropy_anneal_steps, 'linear')

  @nn.compact
  def __call__(self, z: jax.Array, *,
               train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., b]; see the module docstring."""
    base.check_latents(z, self.num_bits, 'LookupFreeQuantizer')
    if self.entropy_anneal_steps > 0:
      step = base.advance_step_counter(self, base.step_counter(self), train)
      weight = self.current_entropy_weight(step)
    else:
      weight = jnp.asarray(self.entropy_weight, jnp.float32)
    h = z.astype(jnp.float32)
    codes = sign_codes(h)
    indices = bits_to_indices(h)
    commitment = jnp.mean((h - jax.lax.stop_gradient(codes))**2)
    flat = h.reshape(-1, self.num_bits)
    sample_entropy = jnp.mean(per_sample_entropy(flat,
                                                 self.entropy_temperature))
    codebook_entropy = batch_entropy(flat, self.entropy_temperature,
                                     self.entropy_groups)
    entropy_loss = sample_entropy - codebook_entropy
    metrics = {
        'commitment_loss': commitment,
        'entropy_loss': entropy_loss,
        'per_sample_entropy': sample_entropy,
        'batch_entropy': codebook_entropy,
        'entropy_weight': weight,
    }
    counts = {'': base.code_histogram(indices, self.codebook_size)}
    if self.factor_bits:
      factors = split_factors(indices, self.factor_bits)
      for f, bits in enumerate(self.factor_bits):
        counts[f'/factor{f}'] = base.code_histogram(factors[..., f], 2**bits)
      indices = factors
    metrics.update(base.code_metrics(counts))
    return base.QuantizerOutput(
        quantized=base.straight_through(h,
                                        codes).astype(z.dtype), indices=indices,
        loss=self.commitment_weight * commitment + weight * entropy_loss,
        metrics=metrics, extras={base.CODE_COUNTS: counts})

  def indices_to_codes(self, indices: jax.Array,
                       factorized: bool | None = None) -> jax.Array:
    """Codes in {-1, 1}^b for indices -> float32 [..., b].

    Args:
      indices: int [...] full indices in [0, K), or [..., n_factors] factor
        indices (factor f in [0, 2^factor_bits[f])).
      factorized: which form `indices` has; default: the form `__call__`
        returns (factorized iff factor_bits is set).
    """
    who = 'LookupFreeQuantizer'
    factorized = bool(self.factor_bits) if factorized is None else factorized
    if factorized:
      if not self.factor_bits:
        raise ValueError(f'{who}: factorized indices need factor_bits')
      base.check_indices(indices, 2**max(self.factor_bits), who)
      if indices.ndim < 1 or indices.shape[-1] != self.num_factors:
        raise ValueError(
            f'{who}: factorized indices must have shape '
            f'[..., {self.num_factors}], got {tuple(indices.shape)}')
      for f, bits in enumerate(self.factor_bits):
        base.check_indices(indices[..., f], 2**bits, f'{who} (factor {f})')
      indices = combine_factors(indices, self.factor_bits)
    else:
      base.check_indices(indices, self.codebook_size, who)
    return indices_to_sign_codes(indices, self.num_bits)


def default_config() -> ml_collections.ConfigDict:
  """LFQ with MAGVIT-v2's weights, CPU-sized (configs/vqgan/ has 2^18)."""
  config = ml_collections.ConfigDict()
  config.codebook_size = 1024  # K = 2^b: a power of 2; z has b channels.
  config.factor_bits = ()  # () or bits per factor, sum b: (9, 9).
  config.commitment_weight = 0.25  # Weight of ||z - sg(q(z))||^2.
  config.entropy_weight = 0.1  # Entropy penalty weight (step 0 if annealed).
  config.entropy_weight_final = 0.1  # Entropy weight after annealing.
  config.entropy_anneal_steps = 0  # Linear annealing length; 0: constant weight.
  config.entropy_temperature = 0.01  # tau in p(z) = softmax(2 <z, c> / tau).
  config.entropy_groups = 1  # 1: exact H[E p] (any K); G > 1: bound.
  return config


def build(config: ml_collections.ConfigDict, *,
          prefix: str = 'quantizer') -> LookupFreeQuantizer:
  """Builds a LookupFreeQuantizer from a validated config at `prefix`."""
  return base.build_module(LookupFreeQuantizer, prefix,
                           codebook_size=config.codebook_size,
                           factor_bits=tuple(config.factor_bits),
                           commitment_weight=config.commitment_weight,
                           entropy_weight=config.entropy_weight,
                           entropy_weight_final=config.entropy_weight_final,
                           entropy_anneal_steps=config.entropy_anneal_steps,
                           entropy_temperature=config.entropy_temperature,
                           entropy_groups=config.entropy_groups)
