"""Dense and Conv layers whose bias gradients are summed in float32.

flax adds a layer's bias in the compute dtype, so under bfloat16 the bias's
gradient, a sum over every example and position, is summed in bfloat16 too:
on XLA:CPU, a conv bias's gradient over 4x64x64 cotangents of 1 comes out
1024 instead of 16384 (the sum stops growing once its bfloat16 steps exceed
the terms). These layers add the bias through `add_bias`, whose gradient is
summed in float32.

Same class names, fields, params and forward values as flax's: the param
trees (and the converters' names) are unchanged.
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
from flax.linen import attention as flax_attention
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def broadcast_param(param: jax.Array, shape: tuple[int, ...],
                    dtype: Any) -> jax.Array:
  """A param cast to `dtype` and broadcast to `shape`, whose gradient is
  summed over the broadcast in float32.

  Args:
    param: an array of at most len(shape) dims, broadcastable to `shape`
      from the right (a dimension of size 1 broadcasts), e.g. a bias
      [features] or a learned token [width].
    shape: the shape to broadcast to.
    dtype: the result's dtype (the compute dtype).

  Returns:
    [shape] in `dtype`, as `jnp.broadcast_to(param.astype(dtype), shape)`.
  """
  return jnp.broadcast_to(param.astype(dtype), shape)


def _broadcast_forward(param, shape, dtype):
  return broadcast_param(param, shape, dtype), param


def _broadcast_backward(shape, unused_dtype, param, cotangent):
  expanded = (1,) * (len(shape) - param.ndim) + param.shape
  axes = tuple(axis for axis, size in enumerate(expanded)
               if size == 1 and shape[axis] != 1)
  gradient = jnp.sum(cotangent, axes, dtype=jnp.float32, keepdims=True)
  return (gradient.reshape(param.shape).astype(param.dtype),)


broadcast_param.defvjp(_broadcast_forward, _broadcast_backward)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias in y's dtype, the bias's gradient summed in float32.

  Args:
    y: [..., *bias.shape] (a dimension of size 1 in `bias` broadcasts).
    bias: e.g. [features], or position embeddings [length, width].

  Returns:
    [y.shape] in y's dtype, as `y + bias.astype(y.dtype)`.
  """
  return y + broadcast_param(bias, y.shape, y.dtype)


def _call_with_bias(module: nn.Module, base: type[nn.Module], inputs: jax.Array,
                    features: tuple[int, ...]) -> jax.Array:
  """`module`'s output: `base` (the flax layer it extends) with its fields
  but no bias, sharing its scope (the kernel is `module`'s param 'kernel'),
  plus `module`'s param 'bias' [*features] through `add_bias`."""
  fields = {
      field.name: getattr(module, field.name)
      for field in dataclasses.fields(base)
      if field.init and field.name not in ('parent', 'name')
  }
  layer = base(**{**fields, 'use_bias': False})
  nn.share_scope(module, layer)
  y = layer(inputs)
  # As flax: the bias drawn flat, then shaped.
  init = lambda rng, shape, dtype: module.bias_init(rng, (math.prod(shape),),
                                                    dtype).reshape(shape)
  return add_bias(y, module.param('bias', init, features, module.param_dtype))


class Dense(nn.Dense):
  """nn.Dense with its bias gradient summed in float32."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """[..., in] -> [..., features]."""
    if not self.use_bias:
      return super().__call__(inputs)
    return _call_with_bias(self, nn.Dense, inputs, (self.features,))


class DenseGeneral(nn.DenseGeneral):
  """nn.DenseGeneral with its bias gradient summed in float32. Its bias is
  [*features]: batch_dims (a bias per batch index, which no vqlab network
  uses) are refused."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """[..., *in at axis] -> [..., *features]."""
    if not self.use_bias:
      return super().__call__(inputs)
    if self.batch_dims:
      raise ValueError(
          f'vqlab.nn.linear.DenseGeneral: batch_dims={self.batch_dims} is '
          'not supported (a bias per batch index); use flax.linen.'
          'DenseGeneral')
    features = ((self.features,)
                if isinstance(self.features, int) else tuple(self.features))
    return _call_with_bias(self, nn.DenseGeneral, inputs, features)


class Conv(nn.Conv):
  """nn.Conv with its bias gradient summed in float32."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """[batch, *spatial, in] -> [batch, *spatial', features]."""
    if not self.use_bias:
      return super().__call__(inputs)
    return _call_with_bias(self, nn.Conv, inputs, (self.features,))


@contextlib.contextmanager
def _as_flax_attentions_dense_general():
  """flax's attention module builds its projections from its global
  DenseGeneral; within this context, from this file's (the same layer:
  params and forward values), so that their bias gradients sum in float32."""
  flax_dense_general = flax_attention.DenseGeneral
  flax_attention.DenseGeneral = DenseGeneral
  try:
    yield
  finally:
    flax_attention.DenseGeneral = flax_dense_general


class MultiHeadDotProductAttention(nn.MultiHeadDotProductAttention):
  """nn.MultiHeadDotProductAttention with the query, key, value and out
  bias gradients summed in float32."""

  def __call__(self, *args, **kwargs):
    """As nn.MultiHeadDotProductAttention: [B, L, D] queries -> [B, L, D]."""
    with _as_flax_attentions_dense_general():
      return super().__call__(*args, **kwargs)
