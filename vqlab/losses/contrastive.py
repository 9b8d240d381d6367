"""Probabilistic contrastive loss (PCL) of Regularized VQ (Zhang et al., 2023).

For one layer of features of the original image Y = [y_1..y_L] and of the
reconstruction Z = [z_1..z_L] (L patches, one per spatial position), with
per-patch weights w_i = ||z_s - z_q||^2 (sampled vs argmax code embedding of the
token under patch i; `extras['pcl_weights']` of the `regularized` quantizer)
normalized to w'_i summing to 1 over the L patches:

    L_pcl = -1/L sum_i log( w'_i e^{y_i.z_i/t} /
                            (w'_i e^{y_i.z_i/t} + 1/L sum_{j!=i} e^{y_i.z_j/t}) )

Positives are the same position in both images, negatives the other positions
of the same image (PatchNCE's pairing). Choices the paper leaves open (all
arguments): features are l2-normalized per patch before the dot products (as
PatchNCE does, so t = 0.07 means what it means there); `num_patches` random
positions per layer and image batch (PatchNCE: 256), because all positions of
relu1_2 at 256^2 would need a 65536^2 similarity matrix; `epsilon` is added to
every w_i before normalizing, since w_i = 0 wherever the sample equals the
argmax and log w'_i would be -inf there. The loss is averaged over the layers
it is given (relu1_2 .. relu5_3 of VGG-19 in the paper), skipping layers with
a single position (small images), which have no negatives.
"""

import jax
import jax.numpy as jnp


def weights_on_grid(weights: jax.Array, height: int, width: int) -> jax.Array:
  """Token-grid weights [B, h, w] -> the weight of the token under each
  feature position, [B, height, width].

  A feature position (r, c) lies in token (floor(r h / height),
  floor(c w / width)); when the feature grid is coarser than the token grid
  (height < h) each position averages the h/height x w/width tokens it covers.
  """
  b, h, w = weights.shape
  if height < h or width < w:
    if h % height or w % width:
      raise ValueError(f'pcl: feature grid {height}x{width} does not tile the '
                       f'token grid {h}x{w}')
    return weights.reshape(b, height, h // height, width,
                           w // width).mean(axis=(2, 4))
  rows = (jnp.arange(height) * h) // height
  cols = (jnp.arange(width) * w) // width
  return weights[:, rows][:, :, cols]


def sample_patch_indices(rng: jax.Array, num_positions: int,
                         num_patches: int) -> jax.Array:
  """Positions used by one layer: all of them in order if num_patches is 0 or
  >= num_positions, else num_patches distinct random ones. -> [n] int32."""
  if num_patches <= 0 or num_patches >= num_positions:
    return jnp.arange(num_positions, dtype=jnp.int32)
  return jax.random.choice(rng, num_positions, (num_patches,),
                           replace=False).astype(jnp.int32)


def layer_pcl(real: jax.Array, rec: jax.Array, weights: jax.Array, *,
              temperature: float, epsilon: float) -> jax.Array:
  """PCL of one layer on already selected patches.

  Args:
    real: [B, L, C] features of the original images (y).
    rec: [B, L, C] features of the reconstructions (z), same positions.
    weights: [B, L] raw w_i (>= 0) of those positions.
    temperature: t.
    epsilon: added to w_i before normalizing to sum 1 per image.

  Returns:
    Scalar, the mean over images of L_pcl.
  """
  length = real.shape[1]
  if length < 2:
    raise ValueError('pcl: need at least 2 patches per image for negatives')
  normalize = lambda v: v * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-12))
  y = normalize(real.astype(jnp.float32))
  z = normalize(rec.astype(jnp.float32))
  logits = jnp.einsum('bic,bjc->bij', y, z) / temperature
  w = jax.lax.stop_gradient(weights.astype(jnp.float32)) + epsilon
  log_w = jnp.log(w / jnp.sum(w, axis=-1, keepdims=True))
  diagonal = jnp.eye(length, dtype=bool)
  positive = log_w + jnp.diagonal(logits, axis1=1, axis2=2)
  negative = jax.nn.logsumexp(jnp.where(diagonal, -jnp.inf, logits),
                              axis=-1) - jnp.log(float(length))
  return jnp.mean(jnp.logaddexp(positive, negative) - positive)


def probabilistic_contrastive_loss(real_features: dict[str, jax.Array],
                                   rec_features: dict[str, jax.Array],
                                   token_weights: jax.Array, rng: jax.Array, *,
                                   temperature: float = 0.07,
                                   num_patches: int = 256,
                                   epsilon: float = 1e-6) -> jax.Array:
  """L_pcl averaged over feature layers.

  Args:
    real_features: layer name -> [B, H_l, W_l, C_l] features of the originals.
    rec_features: the same layers for the reconstructions.
    token_weights: [B, h, w] raw PCL weights on the token grid.
    rng: PRNG key for the patch positions (one draw per layer).
    temperature, num_patches, epsilon: see the module docstring.

  Returns:
    float32 scalar.
  """
  losses = []
  for layer_rng, name in zip(jax.random.split(rng, len(real_features)),
                             sorted(real_features)):
    real, rec = real_features[name], rec_features[name]
    b, height, width, channels = real.shape
    if height * width < 2:
      continue
    weights = weights_on_grid(token_weights, height, width).reshape(b, -1)
    idx = sample_patch_indices(layer_rng, height * width, num_patches)
    losses.append(
        layer_pcl(
            real.reshape(b, -1, channels)[:, idx],
            rec.reshape(b, -1, channels)[:, idx], weights[:, idx],
            temperature=temperature, epsilon=epsilon))
  if not losses:
    raise ValueError('pcl: every feature layer has a single position; the '
                     'images are too small for a contrastive loss')
  return jnp.mean(jnp.stack(losses))
