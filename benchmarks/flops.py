"""Model FLOPs of a JAX function, counted from its jaxpr.

Counts the multiply-adds of every matrix product (`dot_general`),
convolution (`conv_general_dilated`) and cuDNN flash attention, 2 FLOPs each, including those inside
jit, custom-vjp, remat and scan bodies (times the scan length). Elementwise
work is left out, as MFU conventionally does. Unlike XLA's cost analysis this
does not depend on the backend: on GPUs convolutions become cuDNN custom calls
that XLA does not count.
"""

import math
from typing import Any

import jax
import jax.extend  # pylint: disable=unused-import
import numpy as np

# cuDNN's flash attention (jax.nn.dot_product_attention on a GPU) is one
# primitive each way, counted as XLA's path counts its matmuls: q k^T and
# p v forward (4 B N T S H for q [B, T, N, H], k [B, S, N, H]), twice that
# backward; and with recomputation, the backward's q k^T again (flash
# attention keeps only the softmax statistics), as XLA's path recomputes it
# under its checkpoint.
_FLASH_ATTENTION = {
    'dot_product_attention_fwd_wrapper': (1.0, 1.0),
    'dot_product_attention_bwd_wrapper': (2.0, 2.5),
}


def _sub_jaxprs(value: Any):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def _taps(in_size: int, out_size: int, kernel: int, stride: int, pad_low: int,
          lhs_dilation: int, rhs_dilation: int) -> int:
  """(output position, kernel tap) pairs of one spatial dimension whose
  read lands on an input element: not on padding, nor on one of the zeros
  that an lhs dilation puts between inputs (a transposed conv, the input
  gradient of a strided conv). Each multiply of real numbers is then
  counted once in the forward conv and once in each gradient conv, so a
  backward costs exactly 2x its forward (XLA's cost analysis counts so);
  counting padding taps made the input gradient of an unpadded conv (a
  causal conv, padded before it) cost (T + 2) / T times its forward."""
  read = (np.arange(out_size)[:, None] * stride +
          np.arange(kernel)[None, :] * rhs_dilation - pad_low)
  real = ((read % lhs_dilation == 0) & (read >= 0) &
          (read <= (in_size - 1) * lhs_dilation))
  return int(np.count_nonzero(real))


def _conv_flops(eqn) -> float:
  """2 x the multiply-adds of one conv_general_dilated."""
  lhs = eqn.invars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  numbers, params = eqn.params['dimension_numbers'], eqn.params
  kernel = [rhs[d] for d in numbers.rhs_spec[2:]]
  taps = math.prod(
      _taps(lhs[i], out[o], k, stride, low, lhs_dilation, rhs_dilation)
      for i, o, k, stride, (low, _), lhs_dilation, rhs_dilation in zip(
          numbers.lhs_spec[2:], numbers.out_spec[2:], kernel,
          params['window_strides'], params['padding'], params['lhs_dilation'],
          params['rhs_dilation']))
  # Per (output position, tap): one MAC per input feature of the kernel, for
  # every output batch element and feature.
  in_features = rhs[numbers.rhs_spec[1]]
  batch_and_features = out[numbers.out_spec[0]] * out[numbers.out_spec[1]]
  return 2.0 * batch_and_features * in_features * taps


def _eqn_flops(eqn, recomputation: bool) -> float:
  name = eqn.primitive.name
  if name == 'dot_general':
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
    rhs_free = [
        d for i, d in enumerate(rhs)
        if i not in rhs_contract and i not in rhs_batch
    ]
    return 2.0 * math.prod(lhs) * math.prod(rhs_free)
  if name == 'conv_general_dilated':
    return _conv_flops(eqn)
  if name in _FLASH_ATTENTION:
    (b, t, n, h), (_, s, _, _) = (v.aval.shape for v in eqn.invars[:2])
    return _FLASH_ATTENTION[name][recomputation] * 4.0 * b * n * t * s * h
  return 0.0


# The name scope JAX gives the forward work a checkpoint (jax.checkpoint,
# nn.remat) recomputes in the backward pass.
_RECOMPUTED = 'rematted_computation'


def jaxpr_flops(jaxpr, recomputation: bool = True) -> float:
  """FLOPs of matmuls and convolutions in `jaxpr`, recursing into bodies
  (a scan's times its length, a cond's costliest branch once); without
  `recomputation`, leaving out the forward work that checkpoints recompute
  in the backward pass (model FLOPs rather than hardware FLOPs).

  Raises:
    ValueError: a while loop (a fori_loop of traced bounds) with matmuls or
      convolutions in it: how many times they run is not in the jaxpr.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    if not recomputation and _RECOMPUTED in str(eqn.source_info.name_stack):
      continue  # Its sub-jaxprs' name stacks are relative: skipped too.
    total += _eqn_flops(eqn, recomputation)
    if eqn.primitive.name == 'cond':
      total += max(
          jaxpr_flops(branch.jaxpr, recomputation)
          for branch in eqn.params['branches'])
      continue
    if eqn.primitive.name == 'while' and any(
        jaxpr_flops(sub, recomputation)
        for value in eqn.params.values()
        for sub in _sub_jaxprs(value)):
      raise ValueError('flops: a while loop (or a fori_loop of traced '
                       'bounds) runs matmuls or convolutions a number of '
                       'times the jaxpr does not hold')
    repeat = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        total += repeat * jaxpr_flops(sub, recomputation)
  return total


def count_flops(fn, *args, recomputation: bool = True, **kwargs) -> float:
  """Matmul + convolution FLOPs of one call fn(*args, **kwargs) (see
  jaxpr_flops for `recomputation`)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, recomputation)
