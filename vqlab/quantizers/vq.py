"""Vector quantization with a learned codebook (VQ-VAE / VQGAN).

k* = argmin_k ||z - e_k||^2,  z_q = z + sg(e_k* - z),
loss = ||sg(z) - e_k*||^2 + beta ||z - sg(e_k*)||^2.

beta weighs the commitment term (taming's `legacy=True` puts it on the codebook
term instead; that is a known bug and not reproduced here).

Options (ViT-VQGAN): `l2_normalize` looks up unit vectors (cosine similarity;
losses on the normalized vectors), `projection_dim` projects z to a low
dimension before the lookup and back after it. Both raise codebook usage.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab.quantizers import base


def pairwise_sq_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z_i - e_k||^2 for z: [N, d], codebook: [K, d] -> [N, K].

  Uses ||z||^2 - 2 z.e + ||e||^2 so memory is O(N K), never O(N K d).
  """
  return (jnp.sum(z**2, axis=-1, keepdims=True) - 2.0 * z @ codebook.T +
          jnp.sum(codebook**2, axis=-1)[None, :])


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| along the last axis."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, -1, keepdims=True), eps))


def symmetric_uniform(limit: float):
  """Initializer drawing from U(-limit, limit) (taming's codebook init)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


class VectorQuantizer(nn.Module):
  """Nearest-neighbour codebook lookup with straight-through gradients.

  Attributes:
    codebook_size: K, the number of codes.
    embedding_dim: d, the dimension of z and of each code.
    beta: weight of the commitment term ||z - sg(e)||^2.
    loss_weight: weight of the whole quantizer loss.
  """
  codebook_size: int
  embedding_dim: int
  beta: float = 0.25
  loss_weight: float = 1.0
  l2_normalize: bool = False
  projection_dim: int = 0

  @property
  def code_dim(self) -> int:
    return self.embedding_dim

  @property
  def lookup_dim(self) -> int:
    return self.projection_dim or self.embedding_dim

  def setup(self):
    init = nn.initializers.normal(1.0) if self.l2_normalize else \
        symmetric_uniform(1.0 / self.codebook_size)
    self.codebook = self.param('codebook', init,
                               (self.codebook_size, self.lookup_dim))
    if self.projection_dim:
      self.project_in = nn.Dense(self.projection_dim)
      self.project_out = nn.Dense(self.embedding_dim)

  def _normalized_codebook(self) -> jax.Array:
    return l2_normalize(self.codebook) if self.l2_normalize else self.codebook

  def __call__(self, z: jax.Array, *, train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., d] (d = embedding_dim); see QuantizerOutput."""
    base.check_latents(z, self.embedding_dim, 'VectorQuantizer')
    del train  # Same computation in training and inference.
    h = z.astype(jnp.float32)
    if self.projection_dim:
      h = self.project_in(h)
    if self.l2_normalize:
      h = l2_normalize(h)
    codebook = self._normalized_codebook()
    flat = h.reshape(-1, self.lookup_dim)
    indices = jnp.argmin(pairwise_sq_distances(flat, codebook), axis=-1)
    codes = jnp.take(codebook, indices, axis=0).reshape(h.shape)
    codebook_loss = jnp.mean((jax.lax.stop_gradient(h) - codes)**2)
    commitment = jnp.mean((h - jax.lax.stop_gradient(codes))**2)
    quantized = base.straight_through(h, codes)
    if self.projection_dim:
      quantized = self.project_out(quantized)
    loss = self.loss_weight * (codebook_loss + self.beta * commitment)
    counts = base.code_histogram(indices, self.codebook_size)
    metrics = {'codebook_loss': codebook_loss, 'commitment_loss': commitment,
               **base.usage_and_perplexity(counts)}
    return base.QuantizerOutput(
        quantized=quantized.astype(z.dtype),
        indices=indices.reshape(z.shape[:-1]).astype(jnp.int32),
        loss=loss, metrics=metrics)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes for int indices [...] -> [..., d] (what `quantized` holds)."""
    base.check_indices(indices, self.codebook_size, 'VectorQuantizer')
    codes = jnp.take(self._normalized_codebook(), indices, axis=0)
    return self.project_out(codes) if self.projection_dim else codes


def default_config() -> ml_collections.ConfigDict:
  """VQ as in VQGAN (taming): K codes of dimension d, commitment beta."""
  config = ml_collections.ConfigDict()
  config.codebook_size = 512   # K: number of codes.
  config.embedding_dim = 16    # d: dimension of each code (and of z).
  config.beta = 0.25           # Weight of the commitment term.
  config.loss_weight = 1.0     # Weight of the whole quantizer loss.
  config.l2_normalize = False  # Cosine lookup on unit vectors (ViT-VQGAN).
  config.projection_dim = 0    # >0: look up in this many dims (8-32), project back.
  return config


def build(config: ml_collections.ConfigDict) -> VectorQuantizer:
  """Builds a VectorQuantizer from a validated config."""
  return VectorQuantizer(codebook_size=config.codebook_size,
                         embedding_dim=config.embedding_dim, beta=config.beta,
                         loss_weight=config.loss_weight,
                         l2_normalize=config.l2_normalize,
                         projection_dim=config.projection_dim)
