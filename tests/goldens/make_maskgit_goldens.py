"""Writes the MaskGIT VQGAN goldens (JAX reference, no torch):

  /work/venv/bin/python tests/goldens/make_maskgit_goldens.py

The reference is the published flax tokenizer of google-research/maskgit
(maskgit/nets/vqgan_tokenizer.py: ResBlock, Encoder, Decoder,
VectorQuantizer, VQVAE; maskgit/nets/layers.py: TF-style 2x2 average pool,
nearest upsampling), re-implemented below module for module so that flax
names its parameters exactly as the released checkpoint does (Conv_0,
ResBlock_3/GroupNorm_1, quantizer/codebook, ...), including the res-block
shortcut that projects the branch output.

Files:
  maskgit_tiny.msgpack   {'params': ...} of a reduced model (filters 8,
                         channel_multipliers (1, 2, 2), 2 res blocks,
                         8-dim codes, 32 codes, GroupNorm with 4 groups
                         instead of flax's default 32 to keep the file
                         small), every parameter random, written with
                         flax.serialization.to_bytes like the released
                         tokenizer_imagenet256_checkpoint.
  maskgit_goldens.npz    images [2, 16, 16, 3] in [-1, 1] (the reference
                         gets (x + 1) / 2, MaskGIT's [0, 1] pixels), its
                         tokens [2, 4, 4] (encode_to_indices) and the
                         decoded tokens (decode_from_indices) mapped back
                         to [-1, 1].
  maskgit_keys.json      names and shapes of the full-size released
                         tokenizer (vqgan_config: filters 128, multipliers
                         (1, 1, 2, 2, 4), 2 res blocks, 1024 codes x 256).
"""

import functools
import json
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
NUM_GROUPS_TINY = 4


class ResBlock(nn.Module):
  """maskgit ResBlock: norm, act, conv3x3 (no bias), twice; the 1x1 shortcut
  projects the branch output when the width changes."""
  filters: int
  norm_fn: Any
  activation_fn: Any = nn.swish

  @nn.compact
  def __call__(self, x):
    input_dim = x.shape[-1]
    residual = x
    x = self.activation_fn(self.norm_fn()(x))
    x = nn.Conv(self.filters, (3, 3), use_bias=False)(x)
    x = self.activation_fn(self.norm_fn()(x))
    x = nn.Conv(self.filters, (3, 3), use_bias=False)(x)
    if input_dim != self.filters:
      residual = nn.Conv(self.filters, (1, 1), use_bias=False)(x)
    return x + residual


def _avg_pool(x):
  """layers.dsample: TF 'same' 2x2 average pool (padding cells not counted)."""
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1),
                                'SAME')
  count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add,
                                (1, 2, 2, 1), (1, 2, 2, 1), 'SAME')
  return total / count


def _upsample(x):
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method='nearest')


class Encoder(nn.Module):
  config: ml_collections.ConfigDict
  norm_fn: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config.vqvae
    x = nn.Conv(cfg.filters, (3, 3), use_bias=False)(x)
    levels = len(cfg.channel_multipliers)
    for i in range(levels):
      filters = cfg.filters * cfg.channel_multipliers[i]
      for _ in range(cfg.num_res_blocks):
        x = ResBlock(filters, self.norm_fn)(x)
      if i < levels - 1:
        x = _avg_pool(x)
    for _ in range(cfg.num_res_blocks):
      x = ResBlock(filters, self.norm_fn)(x)
    x = nn.swish(self.norm_fn()(x))
    return nn.Conv(cfg.embedding_dim, (1, 1))(x)


class Decoder(nn.Module):
  config: ml_collections.ConfigDict
  norm_fn: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config.vqvae
    levels = len(cfg.channel_multipliers)
    filters = cfg.filters * cfg.channel_multipliers[-1]
    x = nn.Conv(filters, (3, 3), use_bias=True)(x)
    for _ in range(cfg.num_res_blocks):
      x = ResBlock(filters, self.norm_fn)(x)
    for i in reversed(range(levels)):
      filters = cfg.filters * cfg.channel_multipliers[i]
      for _ in range(cfg.num_res_blocks):
        x = ResBlock(filters, self.norm_fn)(x)
      if i > 0:
        x = nn.Conv(filters, (3, 3))(_upsample(x))
    x = nn.swish(self.norm_fn()(x))
    return nn.Conv(3, (3, 3))(x)


def _squared_distances(a, b):
  """maskgit losses.squared_euclidean_distance: |a|^2 - 2ab + |b|^2."""
  b2 = jnp.sum(b.T**2, axis=0, keepdims=True)
  a2 = jnp.sum(a**2, axis=1, keepdims=True)
  return a2 - 2 * jnp.matmul(a, b.T) + b2


class VectorQuantizer(nn.Module):
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x):
    size = self.config.vqvae.codebook_size
    codebook = self.param(
        'codebook', nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'),
        (size, x.shape[-1]))
    distances = _squared_distances(x.reshape(-1, x.shape[-1]), codebook)
    return jnp.argmin(distances.reshape(x.shape[:-1] + (size,)), axis=-1)

  def decode_ids(self, ids):
    return jnp.take(self.variables['params']['codebook'], ids, axis=0)


class VQVAE(nn.Module):
  config: ml_collections.ConfigDict
  num_groups: int = 32

  def setup(self):
    norm_fn = functools.partial(nn.GroupNorm, num_groups=self.num_groups)
    self.quantizer = VectorQuantizer(self.config)
    self.encoder = Encoder(self.config, norm_fn)
    self.decoder = Decoder(self.config, norm_fn)

  def encode_to_indices(self, image):
    return self.quantizer(self.encoder(image))

  def decode_from_indices(self, ids):
    return self.decoder(self.quantizer.decode_ids(ids))

  def __call__(self, image):
    return self.decode_from_indices(self.encode_to_indices(image))


def vqvae_config(filters, multipliers, num_res_blocks, embedding_dim,
                 codebook_size) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.vqvae = ml_collections.ConfigDict(
      dict(filters=filters, channel_multipliers=list(multipliers),
           num_res_blocks=num_res_blocks, embedding_dim=embedding_dim,
           codebook_size=codebook_size))
  return config


def randomize(params, seed):
  """Every leaf random: kernels ~ N(0, 1/fan_in), GroupNorm scales in
  [0.5, 1.5], biases ~ 0.1 N(0, 1), the codebook ~ 0.5 N(0, 1)."""
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in sorted(flat.items()):
    shape = leaf.shape
    if path[-1] == 'kernel':
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif path[-1] == 'scale':
      value = rng.uniform(0.5, 1.5, shape)
    elif path[-1] == 'codebook':
      value = 0.5 * rng.standard_normal(shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = np.asarray(value, np.float32)
  return flax.traverse_util.unflatten_dict(out)


def main():
  full = VQVAE(vqvae_config(128, (1, 1, 2, 2, 4), 2, 256, 1024))
  image = jnp.zeros((1, 256, 256, 3))
  shapes = jax.eval_shape(full.init, jax.random.PRNGKey(0), image)['params']
  keys = {
      '.'.join(path): list(leaf.shape)
      for path, leaf in flax.traverse_util.flatten_dict(shapes).items()
  }
  with open(os.path.join(GOLDEN_DIR, 'maskgit_keys.json'), 'w') as f:
    json.dump(keys, f, indent=0, sort_keys=True)

  tiny = VQVAE(vqvae_config(8, (1, 2, 2), 2, 8, 32), NUM_GROUPS_TINY)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3))
  x = x.astype(np.float32)
  x01 = (jnp.asarray(x) + 1.0) * 0.5
  params = tiny.init(jax.random.PRNGKey(0), x01)['params']
  params = randomize(params, seed=1)
  tokens = tiny.apply({'params': params}, x01, method=VQVAE.encode_to_indices)
  decoded = tiny.apply({'params': params}, tokens,
                       method=VQVAE.decode_from_indices)
  with open(os.path.join(GOLDEN_DIR, 'maskgit_tiny.msgpack'), 'wb') as f:
    f.write(flax.serialization.to_bytes({'params': params}))
  np.savez(os.path.join(GOLDEN_DIR, 'maskgit_goldens.npz'), images=x,
           tokens=np.asarray(tokens, np.int32),
           decoded=np.asarray(decoded * 2.0 - 1.0,
                              np.float32), num_groups=NUM_GROUPS_TINY)
  print('tokens used:', len(np.unique(tokens)), 'of', tokens.size,
        'decoded std', float(np.std(decoded)))


if __name__ == '__main__':
  main()
