"""Regularized VQ (Zhang et al., CVPR 2023; no official code exists).

Token distribution per position from the distances to the codebook E [N, d]:
    logits_k = -||z - e_k||^2 / temperature,   P = softmax(logits).
Prior distribution regularization: with P_post the mean of P over every
position of the (global) batch,
    L_kl = KL(P_post || uniform) = sum_n P_post,n log(N P_post,n).
Stochastic mask regularization (training only): a mask M, each position
masked independently with probability `mask_ratio` (paper: 0.4), picks a
Gumbel-max sample inside the mask and the argmax outside:
    k = where(M, argmax(logits + g), argmax(logits)),   g ~ Gumbel(0, 1)
    z_q = one_hot(k) @ E   (forward),
and the backward pass goes through softmax(logits) outside the mask and
through the Gumbel-softmax softmax((logits + g) / gumbel_temperature) inside
it (the paper's Algorithm 1: Argmax -> Softmax, Gumbel -> Gumbel-Softmax).
So `quantized`'s gradient reaches z through these relaxations, not as an
identity, and E gets the decoder's gradient through one_hot(k) @ E.

The paper follows VQGAN for everything else, so the deterministic (argmax)
code also gets VQGAN's terms: codebook_weight ||sg(z) - e_k*||^2 +
beta ||z - sg(e_k*)||^2 (k* the argmax code, never the random sample: pulling
z to a random code would fight the reconstruction).

    loss = kl_weight L_kl + codebook_weight L_codebook + beta L_commit.

Probabilistic contrastive loss (PCL) weights, in `extras`:
  'pcl_weights' [...]: w_i = ||z_s - z_q||^2 = ||E[argmax(logits + g)] -
    E[argmax logits]||^2 with the Gumbel sample drawn at every position (so w
    is defined for every patch; the PCL normalizes it to sum 1), stop-gradient.
  'mask' [...]: 1.0 where the sampled code was used.
Both are zeros at inference, where every position takes the argmax.

Choices where the paper gives no number (all config keys):
  temperature = 1.0: logits are distances in the units of z, so the encoder
    and codebook set the sharpness by their scale; 1.0 starts near-uniform
    like DALL-E's Gumbel tau = 1, and a fixed tau avoids a schedule the paper
    does not have.
  gumbel_temperature = 1.0: the standard Gumbel-softmax relaxation.
  kl_weight = 0.1: L_kl = log N - H(P_post) is the batch-entropy half of
    MAGVIT-v2's entropy penalty, whose weight is 0.1.
  codebook_weight = 1.0, beta = 0.25: VQGAN's quantizer loss.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab.quantizers import base
from vqlab.quantizers import vq


def regularized_quantize(z: jax.Array, codebook: jax.Array, noise: jax.Array,
                         mask: jax.Array, temperature: float,
                         gumbel_temperature: float) -> dict[str, jax.Array]:
  """Stochastic-mask quantization of flat latents.

  Args:
    z: [M, d].
    codebook: E [N, d].
    noise: [M, N] Gumbel(0, 1) samples.
    mask: [M] bool, True where the Gumbel sample is used.
    temperature: tau of logits = -||z - e||^2 / tau.
    gumbel_temperature: tau of the Gumbel-softmax relaxation (gradient only).

  Returns:
    dict with 'quantized' [M, d], 'indices' [M] int32 (used codes),
    'argmax' [M] int32, 'sample' [M] int32, 'probs' [M, N] = softmax(logits),
    'pcl_weights' [M] = ||E[sample] - E[argmax]||^2 (stop-gradient).
  """
  logits = -vq.pairwise_sq_distances(z, codebook) / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  perturbed = logits + noise
  sample = jnp.argmax(perturbed, axis=-1).astype(jnp.int32)
  indices = jnp.where(mask, sample, argmax)
  soft = jnp.where(mask[:, None],
                   jax.nn.softmax(perturbed / gumbel_temperature, axis=-1),
                   probs)
  quantized = base.straight_through_lookup(indices, soft, codebook)
  frozen = jax.lax.stop_gradient(codebook)
  weights = jnp.sum(
      (jnp.take(frozen, sample, axis=0) - jnp.take(frozen, argmax, axis=0))**2,
      axis=-1)
  return {
      'quantized': quantized,
      'indices': indices,
      'argmax': argmax,
      'sample': sample,
      'probs': probs,
      'pcl_weights': weights
  }


class RegularizedQuantizer(nn.Module):
  """Regularized VQ; see the module docstring.

  Attributes:
    codebook_size: N.
    embedding_dim: d, the dimension of z and of the codes.
    temperature: tau of the distance logits.
    gumbel_temperature: tau of the Gumbel-softmax relaxation.
    mask_ratio: probability that a position is stochastically quantized.
    kl_weight: weight of KL(P_post || uniform).
    codebook_weight: weight of ||sg(z) - e_k*||^2.
    beta: weight of the commitment term ||z - sg(e_k*)||^2.
  """
  codebook_size: int
  embedding_dim: int
  temperature: float = 1.0
  gumbel_temperature: float = 1.0
  mask_ratio: float = 0.4
  kl_weight: float = 0.1
  codebook_weight: float = 1.0
  beta: float = 0.25

  def __post_init__(self):
    super().__post_init__()
    who = 'RegularizedQuantizer'
    for name in ('codebook_size', 'embedding_dim', 'temperature',
                 'gumbel_temperature'):
      base.check_positive(getattr(self, name), name, who)
    base.check_in_unit_interval(self.mask_ratio, 'mask_ratio', who)
    if not self.mask_ratio:  # No position is sampled.
      base.check_unread(self, 'gumbel_temperature', 'mask_ratio > 0', who)

  @property
  def code_dim(self) -> int:
    """Channels of z and of the codes (embedding_dim)."""
    return self.embedding_dim

  def setup(self):
    self.codebook = self.param('codebook',
                               vq.symmetric_uniform(1.0 / self.codebook_size),
                               (self.codebook_size, self.embedding_dim))

  def __call__(self, z: jax.Array, *,
               train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., d]; training masks and samples (rng 'quantizer')."""
    base.check_latents(z, self.embedding_dim, 'RegularizedQuantizer')
    flat = z.astype(jnp.float32).reshape(-1, self.embedding_dim)
    m = flat.shape[0]
    if train:
      noise_key, mask_key = jax.random.split(self.make_rng('quantizer'))
      noise = base.gumbel_noise(noise_key, (m, self.codebook_size))
      mask = jax.random.bernoulli(mask_key, self.mask_ratio, (m,))
    else:
      noise = jnp.zeros((m, self.codebook_size), jnp.float32)
      mask = jnp.zeros((m,), bool)
    out = regularized_quantize(flat, self.codebook, noise, mask,
                               self.temperature, self.gumbel_temperature)
    kl = base.kl_to_uniform(jnp.mean(out['probs'], axis=0))
    best = jnp.take(self.codebook, out['argmax'], axis=0)
    codebook_loss = jnp.mean((jax.lax.stop_gradient(flat) - best)**2)
    commitment = jnp.mean((flat - jax.lax.stop_gradient(best))**2)
    loss = (self.kl_weight * kl + self.codebook_weight * codebook_loss +
            self.beta * commitment)
    counts = {'': base.code_histogram(out['indices'], self.codebook_size)}
    positions = z.shape[:-1]
    weights = out['pcl_weights'] if train else jnp.zeros((m,), jnp.float32)
    return base.QuantizerOutput(
        quantized=out['quantized'].reshape(z.shape).astype(z.dtype),
        indices=out['indices'].reshape(positions), loss=loss, metrics={
            'kl': kl,
            'codebook_loss': codebook_loss,
            'commitment_loss': commitment,
            'mask_fraction': jnp.mean(mask.astype(jnp.float32)),
            **base.code_metrics(counts)
        }, extras={
            'pcl_weights': weights.reshape(positions),
            'mask': mask.astype(jnp.float32).reshape(positions),
            base.CODE_COUNTS: counts
        })

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes for int indices [...] -> [..., d] (rows of E)."""
    base.check_indices(indices, self.codebook_size, 'RegularizedQuantizer')
    return jnp.take(self.codebook, indices, axis=0)


def default_config() -> ml_collections.ConfigDict:
  """Regularized VQ, CPU-sized; configs/vqgan/ has the paper's f=16, N=1024."""
  config = ml_collections.ConfigDict()
  config.codebook_size = 512  # N: number of codes (paper: 1024).
  config.embedding_dim = 16  # d: dimension of z and of each code.
  config.temperature = 1.0  # tau in logits = -||z - e||^2 / tau (not in paper).
  config.gumbel_temperature = 1.0  # tau of the Gumbel-softmax grad inside the mask.
  config.mask_ratio = 0.4  # P(position sampled, not argmax) (paper: 0.4).
  config.kl_weight = 0.1  # Weight of KL(P_post || uniform) (not in paper).
  config.codebook_weight = 1.0  # Weight of ||sg(z) - e_argmax||^2 (VQGAN).
  config.beta = 0.25  # Weight of ||z - sg(e_argmax)||^2 (VQGAN).
  return config


def build(config: ml_collections.ConfigDict, *,
          prefix: str = 'quantizer') -> RegularizedQuantizer:
  """Builds a RegularizedQuantizer from a validated config at `prefix`."""
  return base.build_module(
      RegularizedQuantizer, prefix, codebook_size=config.codebook_size,
      embedding_dim=config.embedding_dim, temperature=config.temperature,
      gumbel_temperature=config.gumbel_temperature,
      mask_ratio=config.mask_ratio, kl_weight=config.kl_weight,
      codebook_weight=config.codebook_weight, beta=config.beta)
