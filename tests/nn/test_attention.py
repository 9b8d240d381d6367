"""The transformers' attention function: its numbers against a float64
reference in float32 and bfloat16, causal masking as a flag, the dropout
path, and when it asks for cuDNN's flash attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.nn import attention


def _reference(q, k, v, allowed=None):
  """float64 softmax(q k^T / sqrt(D)) v over heads; allowed [B|1, H|1, Lq,
  Lk] or None."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  if allowed is not None:
    scores = np.where(allowed, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v)


def _qkv(length=7, heads=3, head_dim=8, scale=1.0):
  keys = jax.random.split(jax.random.key(0), 3)
  return [
      scale * jax.random.normal(k, (2, length, heads, head_dim)) for k in keys
  ]


def test_float32_masks_and_causal_flag_match_the_float64_reference():
  q, k, v = _qkv()
  mask = jax.random.bernoulli(jax.random.key(1), 0.6, (2, 1, 7, 7))
  mask = mask.at[..., 0].set(True)  # Every query sees some key.
  causal = np.tril(np.ones((7, 7), bool))[None, None]
  cases = [
      (dict(), None),
      (dict(mask=mask), mask),
      # flax's masks are float32 (nn.make_attention_mask); any nonzero is on.
      (dict(mask=mask.astype(jnp.float32)), mask),
      (dict(is_causal=True), causal),
      (dict(mask=mask, is_causal=True), np.asarray(mask) & causal),
  ]
  for kwargs, allowed in cases:
    np.testing.assert_allclose(
        attention.dot_product_attention(q, k, v, **kwargs),
        _reference(q, k, v, allowed), atol=2e-6, err_msg=str(kwargs))


@pytest.mark.parametrize('dropout', [False, True])
def test_bfloat16_logits_and_softmax_run_in_float32(dropout):
  # Large logits: bfloat16 logits or softmax (flax's, also with
  # force_fp32_for_softmax on its dropout path) are off by about 0.03 RMS
  # here, float32 ones by about 0.005. A dropout rate of 1e-9 keeps all.
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(64, 4, 32, scale=3.0))
  out = attention.dot_product_attention(q, k, v, dropout_rate=1e-9,
                                        deterministic=not dropout,
                                        dropout_rng=jax.random.key(3))
  assert out.dtype == jnp.bfloat16
  error = np.asarray(out, np.float64) - _reference(q, k, v)
  assert np.sqrt(np.mean(error**2)) < 0.01


@pytest.mark.parametrize('broadcast', [True, False])
def test_attention_dropout_drops_as_flax_does(broadcast):
  """The same weights dropped by the same key as flax's attention, kept ones
  scaled by 1 / (1 - rate), in float32."""
  q, k, v = _qkv()
  kwargs = dict(dropout_rate=0.3, deterministic=False,
                dropout_rng=jax.random.key(5), broadcast_dropout=broadcast)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, **kwargs),
                             nn.dot_product_attention(q, k, v, **kwargs),
                             atol=2e-6)


def test_attention_dropout_keeps_the_causal_mask():
  q, k, v = _qkv()
  run = lambda k, v: attention.dot_product_attention(
      q, k, v, is_causal=True, dropout_rate=0.5, deterministic=False,
      dropout_rng=jax.random.key(2))
  out = run(k, v)
  changed = run(k.at[:, 4].add(1.0), v.at[:, 4].add(1.0))
  np.testing.assert_array_equal(out[:, :4], changed[:, :4])
  assert float(jnp.max(jnp.abs(out[:, 4:] - changed[:, 4:]))) > 1e-3
  # Without dropout on, the same call is the deterministic attention.
  np.testing.assert_allclose(
      attention.dot_product_attention(q, k, v, is_causal=True, dropout_rate=0.5,
                                      deterministic=True),
      _reference(q, k, v, np.tril(np.ones((7, 7), bool))), atol=2e-6)


@pytest.mark.parametrize('dtype, head_dim, masked, platform, applies', [
    (jnp.bfloat16, 64, False, 'gpu', True),
    (jnp.float16, 128, False, 'gpu', True),
    (jnp.bfloat16, 64, False, 'tpu', False),
    (jnp.bfloat16, 64, False, 'cpu', False),
    (jnp.float32, 64, False, 'gpu', False),
    (jnp.bfloat16, 64, True, 'gpu', False),
    (jnp.bfloat16, 60, False, 'gpu', False),
    (jnp.bfloat16, 512, False, 'gpu', False),
])
def test_when_flash_attention_is_asked_for(dtype, head_dim, masked, platform,
                                           applies):
  q = jnp.zeros((2, 16, 4, head_dim), dtype)
  mask = jnp.ones((2, 1, 16, 16), bool) if masked else None
  assert attention.cudnn_applies(q, q, mask, platform) == applies
  # An odd length (MaskGIT's 256 tokens + class) never asks: jax's cuDNN
  # training path refuses it, too late for the fallback inside a scan.
  odd = jnp.zeros((2, 17, 4, head_dim), dtype)
  assert not attention.cudnn_applies(odd, odd, None, platform)


def test_a_gpu_without_flash_attention_falls_back_to_xla(monkeypatch):
  # Here jax raises 'cuDNN is not detected' when asked for cuDNN.
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(16, 2, 16))
  expected = attention.dot_product_attention(q, k, v, is_causal=True)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert attention.cudnn_applies(q, k, None, jax.default_backend())
  np.testing.assert_array_equal(
      attention.dot_product_attention(q, k, v, is_causal=True), expected)
  # VQLAB_ATTENTION=xla does not ask for cuDNN at all.
  asked = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(
      jax.nn, 'dot_product_attention',
      lambda *a, **kw: asked.append(kw.get('implementation')) or real(*a, **kw))
  attention.dot_product_attention(q, k, v)
  monkeypatch.setenv(attention.IMPLEMENTATION_VARIABLE, 'xla')
  attention.dot_product_attention(q, k, v)
  assert asked == ['cudnn', None, None]


def test_flax_attention_module_takes_it_as_attention_fn():
  x = jax.random.normal(jax.random.key(3), (2, 5, 12))
  mask = nn.make_causal_mask(jnp.zeros((2, 5)))  # float32, as flax makes it.
  ours = nn.MultiHeadDotProductAttention(
      num_heads=3, attention_fn=attention.dot_product_attention)
  flax_default = nn.MultiHeadDotProductAttention(num_heads=3)
  params = ours.init(jax.random.key(4), x, x)
  np.testing.assert_allclose(ours.apply(params, x, x, mask=mask),
                             flax_default.apply(params, x, x, mask=mask),
                             atol=2e-6)
