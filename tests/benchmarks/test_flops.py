"""The benchmark's FLOP counter against hand-computed counts."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks import train_step
from benchmarks.flops import count_flops
from vqlab.nn import attention
from vqlab.nn import causal_conv


def test_conv_dot_and_backward_flops():
  x = jnp.zeros((2, 8, 8, 3))
  conv = nn.Conv(5, (3, 3))
  variables = conv.init(jax.random.key(0), x)
  # Taps that read an input pixel, not padding: 8 x 3 - 2 per axis.
  forward = 2 * (2 * 5) * 3 * (8 * 3 - 2)**2
  assert count_flops(conv.apply, variables, x) == forward
  # Gradient w.r.t. the kernel only: forward + one kernel-gradient conv.
  grad = jax.jit(jax.grad(lambda v, x: conv.apply(v, x).sum()))
  assert count_flops(grad, variables, x) == 2 * forward
  # Gradient w.r.t. input and kernel: forward + two convolutions.
  both = jax.grad(lambda v, x: conv.apply(v, x).sum(), argnums=(0, 1))
  assert count_flops(both, variables, x) == 3 * forward
  assert count_flops(jnp.dot, jnp.zeros((4, 6)), jnp.zeros(
      (6, 7))) == 2 * 4 * 6 * 7
  batched = lambda a, b: jnp.einsum('bij,bjk->bik', a, b)
  assert count_flops(batched, jnp.zeros((3, 4, 6)), jnp.zeros((3, 6, 7))) == \
      2 * 3 * 4 * 6 * 7


def test_lhs_dilation_holes_are_not_counted():
  """A transposed conv, and the input gradient of a strided conv, dilate
  their input with zeros that no backend multiplies: the input gradient
  costs what the forward conv does (4x more when the holes counted)."""
  x = jnp.zeros((2, 16, 16, 8))
  transposed = nn.ConvTranspose(16, (2, 2), strides=(2, 2), padding='VALID')
  variables = transposed.init(jax.random.key(0), x)
  # Each input pixel meets each of the 2x2 taps once.
  assert count_flops(transposed.apply, variables,
                     x) == 2 * (2 * 16 * 16 * 16) * (2 * 2 * 8)
  # 'SAME' at stride 2 pads 16 by (0, 1): the last output's last tap reads
  # padding, 8 x 3 - 1 real taps per axis.
  for kernel, padding, taps in (((2, 2), 'VALID', 8 * 2), ((3, 3), 'SAME',
                                                           8 * 3 - 1)):
    conv = nn.Conv(16, kernel, strides=(2, 2), padding=padding)
    variables = conv.init(jax.random.key(0), x)
    forward = 2 * (2 * 16) * 8 * taps**2
    assert count_flops(conv.apply, variables, x) == forward
    both = jax.grad(lambda v, x: conv.apply(v, x).sum(), argnums=(0, 1))
    assert count_flops(both, variables, x) == 3 * forward


def test_scan_bodies_count_per_iteration():
  w = jnp.zeros((6, 6))

  def body(h, _):
    return h @ w, None

  fn = lambda h: jax.lax.scan(body, h, None, length=5)[0]
  assert count_flops(fn, jnp.zeros((4, 6))) == 5 * 2 * 4 * 6 * 6


def test_flash_attention_counts_as_xla_attention(monkeypatch):
  """cuDNN's attention is one primitive each way (0 FLOPs before, so MFU
  dropped by its share): traced here as on a GPU with cuDNN 9.10."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cudnn, 'check_cudnn_version', lambda: 91000)
  monkeypatch.setattr(cudnn, 'check_compute_capability', lambda c: True)
  monkeypatch.setattr(cudnn, 'is_cuda_compute_capability_equal',
                      lambda c: False)
  q = jnp.zeros((2, 16, 4, 32), jnp.bfloat16)
  k = jnp.zeros((2, 24, 4, 32), jnp.bfloat16)

  def attend(implementation):
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, implementation=implementation).astype(jnp.float32).sum()

  forward = 4 * 2 * 4 * 16 * 24 * 32
  for implementation in ('cudnn', 'xla'):
    fn = attend(implementation)
    assert count_flops(fn, q, k, k) == forward
    grad = jax.grad(fn, argnums=(0, 1, 2))
    assert count_flops(grad, q, k, k, recomputation=False) == 3 * forward
  # With recomputation, cuDNN's backward computes q k^T again, as vqlab's XLA
  # path (under its checkpoint) does.
  assert count_flops(jax.grad(attend('cudnn'), argnums=(0, 1, 2)), q, k,
                     k) == 3.5 * forward
  xla_path = lambda q, k, v: attention.dot_product_attention(q, k, v).astype(
      jnp.float32).sum()
  assert count_flops(jax.grad(xla_path, argnums=(0, 1, 2)), q, k,
                     k) == 3.5 * forward


def test_a_cond_counts_its_costliest_branch_and_a_while_loop_is_refused():
  w = jnp.zeros((6, 6))
  branches = lambda i, h: jax.lax.switch(
      i, [lambda h: h, lambda h: h @ w, lambda h: h @ w @ w], h)
  assert count_flops(branches, 1, jnp.zeros((4, 6))) == 2 * 2 * 4 * 6 * 6
  loop = lambda n, h: jax.lax.fori_loop(0, n, lambda i, h: h @ w, h)
  with pytest.raises(ValueError, match='while loop'):
    count_flops(loop, 3, jnp.zeros((4, 6)))


def test_peak_flops_tells_the_h100_variants_apart():
  peak = lambda kind: train_step.peak_flops(
      types.SimpleNamespace(device_kind=kind), 'bfloat16')
  assert peak('NVIDIA H100 80GB HBM3') == peak('NVIDIA H200') == 989e12
  assert peak('NVIDIA H100 PCIe') == 756e12
  assert peak('NVIDIA H100 NVL') == 835e12
  assert peak('TPU v5') == peak('TPU v5p') == 459e12
  assert peak('TPU v5 lite') == 197e12 and peak('TPU v4') == 275e12
  assert peak('cpu') is None


def test_the_backward_of_a_conv_on_a_padded_input_is_twice_its_forward():
  """A causal conv pads time itself (jnp.pad), then convolves without
  padding: its input gradient convolves with k - 1 padding on each side,
  whose taps read nothing (counted, they made it (T + 2) / T times the
  forward: 1.4x at T = 5)."""
  conv = causal_conv.CausalConv3D(8, (3, 3, 3))
  x = jnp.zeros((1, 5, 8, 8, 4))
  variables = conv.init(jax.random.key(0), x)
  forward = count_flops(conv.apply, variables, x)
  assert forward == 2 * 8 * 4 * (5 * 3) * (8 * 3 - 2)**2
  both = jax.grad(lambda v, x: conv.apply(v, x).sum(), argnums=(0, 1))
  assert count_flops(both, variables, x) == 3 * forward
