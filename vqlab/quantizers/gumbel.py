"""Gumbel-softmax VQ (DALL-E's dVAE, taming's GumbelQuantize).

A linear head turns z: [..., d] into logits over K codes. In training a code
is sampled with the Gumbel-max trick and the gradient is that of the
Gumbel-softmax relaxation (hard, straight-through):

    y_soft = softmax((logits + g) / tau),  g ~ Gumbel(0, 1)
    y = one_hot(argmax y_soft) + y_soft - sg(y_soft),    z_q = y @ E.

At inference y = one_hot(argmax logits). The loss is
kl_weight * KL(q_mean || uniform) with q_mean the mean of softmax(logits) over
all positions of the (global) batch, as DESIGN.md §4 states. (Taming's code
averages the per-position KL(q_i || uniform) instead, which also rewards flat
per-position distributions; we follow the design.)

Unlike VQ, `quantized` is not z with an identity gradient: the gradient
reaches z through the logits (the relaxation), and E through y @ E.

tau anneals with the train step (kept in the `quantizer_state` collection,
see base.advance_step_counter): geometrically from `temperature` to
`temperature_final` over `temperature_anneal_steps` steps (DALL-E: 1 -> 1/16).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab.nn import linear
from vqlab.quantizers import base


def gumbel_quantize(logits: jax.Array, codebook: jax.Array, noise: jax.Array,
                    temperature: jax.Array):
  """Hard Gumbel-softmax with straight-through gradients.

  Args:
    logits: [M, K].
    codebook: E [K, d].
    noise: [M, K] Gumbel(0, 1) samples (zeros give argmax with a softmax
      gradient at temperature `temperature`).
    temperature: tau > 0 of the relaxation.

  Returns:
    (quantized [M, d] = E[k] forward, relaxation gradient;
     indices [M] int32 = argmax(logits + noise)).
  """
  perturbed = logits + noise
  indices = jnp.argmax(perturbed, axis=-1).astype(jnp.int32)
  soft = jax.nn.softmax(perturbed / temperature, axis=-1)
  return base.straight_through_lookup(indices, soft, codebook), indices


class GumbelQuantizer(nn.Module):
  """Gumbel-softmax quantizer; see the module docstring.

  Attributes:
    codebook_size: K.
    embedding_dim: d, the dimension of z and of the codes.
    temperature: tau at step 0.
    temperature_final: tau after the annealing.
    temperature_anneal_steps: length of the geometric annealing; 0 keeps
      tau = temperature (no annealing).
    kl_weight: weight of KL(q_mean || uniform).
  """
  codebook_size: int
  embedding_dim: int
  temperature: float = 1.0
  temperature_final: float = 1.0 / 16
  temperature_anneal_steps: int = 0
  kl_weight: float = 5e-4

  def __post_init__(self):
    super().__post_init__()
    who = 'GumbelQuantizer'
    for name in ('codebook_size', 'embedding_dim', 'temperature',
                 'temperature_final'):
      base.check_positive(getattr(self, name), name, who)
    if self.temperature_anneal_steps < 0:
      raise base.FieldError(
          who, 'temperature_anneal_steps', 'must be >= 0, '
          f'got {self.temperature_anneal_steps}')
    if not self.temperature_anneal_steps:
      base.check_unread(self, 'temperature_final',
                        'temperature_anneal_steps > 0', who)

  @property
  def code_dim(self) -> int:
    """Channels of z and of the codes (embedding_dim)."""
    return self.embedding_dim

  def setup(self):
    self.to_logits = linear.Dense(self.codebook_size, name='to_logits')
    self.codebook = self.param('codebook', nn.initializers.normal(1.0),
                               (self.codebook_size, self.embedding_dim))
    self.step = base.step_counter(self)

  def current_temperature(self, step: jax.Array) -> jax.Array:
    """tau at train step `step` (float32 scalar)."""
    return base.anneal(step, self.temperature, self.temperature_final,
                       self.temperature_anneal_steps, 'exponential')

  def __call__(self, z: jax.Array, *,
               train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., d]; in training samples codes (rng 'quantizer')."""
    base.check_latents(z, self.embedding_dim, 'GumbelQuantizer')
    step = base.advance_step_counter(self, self.step, train)
    tau = self.current_temperature(step)
    logits = self.to_logits(z.astype(jnp.float32)).reshape(
        -1, self.codebook_size)
    if train:
      noise = base.gumbel_noise(self.make_rng('quantizer'), logits.shape)
    else:
      noise = jnp.zeros_like(logits)
    quantized, indices = gumbel_quantize(logits, self.codebook, noise, tau)
    mean_probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
    kl = base.kl_to_uniform(mean_probs)
    counts = {'': base.code_histogram(indices, self.codebook_size)}
    return base.QuantizerOutput(
        quantized=quantized.reshape(z.shape).astype(z.dtype),
        indices=indices.reshape(z.shape[:-1]), loss=self.kl_weight * kl,
        metrics={
            'kl': kl,
            'temperature': tau,
            **base.code_metrics(counts)
        }, extras={base.CODE_COUNTS: counts})

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes for int indices [...] -> [..., d] (rows of E)."""
    base.check_indices(indices, self.codebook_size, 'GumbelQuantizer')
    return jnp.take(self.codebook, indices, axis=0)


def default_config() -> ml_collections.ConfigDict:
  """Gumbel VQ with DALL-E's temperature annealing, CPU-sized."""
  config = ml_collections.ConfigDict()
  config.codebook_size = 512  # K: number of codes.
  config.embedding_dim = 16  # d: dimension of z and of each code.
  config.temperature = 1.0  # Gumbel-softmax tau at step 0.
  config.temperature_final = 1.0 / 16  # tau after annealing (DALL-E: 1/16).
  config.temperature_anneal_steps = 1000  # Geometric decay steps; 0: constant.
  config.kl_weight = 5e-4  # Weight of KL(mean q || uniform) (taming).
  return config


def build(config: ml_collections.ConfigDict, *,
          prefix: str = 'quantizer') -> GumbelQuantizer:
  """Builds a GumbelQuantizer from a validated config at `prefix`."""
  return base.build_module(
      GumbelQuantizer, prefix, codebook_size=config.codebook_size,
      embedding_dim=config.embedding_dim, temperature=config.temperature,
      temperature_final=config.temperature_final,
      temperature_anneal_steps=config.temperature_anneal_steps,
      kl_weight=config.kl_weight)
