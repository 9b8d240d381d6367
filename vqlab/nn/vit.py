"""ViT pieces: patch embedding, unpatchify and learned position embeddings.

The transformer itself is `vqlab.nn.transformer.Transformer`. Grid position
embeddings are stored for the grid they were initialized on, as [h*w, D], and
resized bilinearly when an image has a different grid, so a ViT trained at one
resolution runs at any image size divisible by the patch size.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlab.nn import linear

POSITION_INIT = nn.initializers.normal(stddev=0.02)


class PatchEmbed(nn.Module):
  """Non-overlapping patches: x [B, H, W, C] -> [B, (H/p)(W/p), width].

  A convolution with kernel = stride = patch_size; tokens are in row-major
  (raster) order of the (H/p, W/p) grid.
  """
  patch_size: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    h = linear.Conv(self.width, (p, p), strides=(p, p), padding='VALID',
                    dtype=self.dtype, name='proj')(x)
    return h.reshape(h.shape[0], -1, self.width)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Images [B, H, W, C] -> patches [B, H/p, W/p, p*p*C] (row-major within a
  patch, channels last); the inverse of `unpatchify`."""
  b, height, width, c = x.shape
  p = patch_size
  x = x.reshape(b, height // p, p, width // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height // p, width // p,
                                               p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
  """Patches [B, h, w, p*p*C] -> images [B, h*p, w*p, C]."""
  b, h, w, _ = patches.shape
  p = patch_size
  x = patches.reshape(b, h, w, p, p, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, channels)


def resize_grid_embedding(embedding: jax.Array, from_grid: tuple[int, int],
                          to_grid: tuple[int, int]) -> jax.Array:
  """[h0*w0, D] embeddings of a (h0, w0) grid -> [h*w, D] for (h, w), bilinear
  (identity when the grids match)."""
  from_grid, to_grid = tuple(from_grid), tuple(to_grid)
  if from_grid == to_grid:
    return embedding
  grid = embedding.reshape(*from_grid, embedding.shape[-1])
  resized = jax.image.resize(grid, (*to_grid, embedding.shape[-1]),
                             method='bilinear')
  return resized.reshape(to_grid[0] * to_grid[1], embedding.shape[-1])


class GridPositionEmbedding(nn.Module):
  """Learned 2D position embeddings: [B, h*w, D] -> x + pos (row-major grid).

  The parameter `embedding` is [init_grid[0] * init_grid[1], D]; other grids
  get it resized bilinearly (see `resize_grid_embedding`).
  """
  init_grid: tuple[int, int]

  @nn.compact
  def __call__(self, x: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """x: [B, grid[0]*grid[1], D]; returns x + embeddings, same shape."""
    grid = tuple(int(g) for g in grid)
    if x.shape[1] != grid[0] * grid[1]:
      raise ValueError(f'GridPositionEmbedding: {x.shape[1]} tokens for a '
                       f'{grid} grid')
    init_grid = tuple(int(g) for g in self.init_grid)
    embedding = self.param('embedding', POSITION_INIT,
                           (init_grid[0] * init_grid[1], x.shape[-1]))
    pos = resize_grid_embedding(embedding, init_grid, grid)
    return linear.add_bias(x, pos)


class TokenPositionEmbedding(nn.Module):
  """Learned 1D position embeddings of a fixed-length sequence:
  x [B, L, D] -> x + pos[:L] (parameter `embedding`: [length, D])."""
  length: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D], L <= length -> [B, L, D]."""
    if x.shape[1] > self.length:
      raise ValueError(f'TokenPositionEmbedding: {x.shape[1]} tokens, at most '
                       f'{self.length}')
    embedding = self.param('embedding', POSITION_INIT,
                           (self.length, x.shape[-1]))
    return linear.add_bias(x, embedding[:x.shape[1]])
