"""VQGAN tokenizer: shapes, encode/decode consistency, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_variables
from tests.compile_options import FAST_COMPILE
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.errors import ConfigError


def _tiny():
  config = tokenizers.default_config('vqgan')
  config.channels, config.channel_multipliers = 8, (1, 2, 2)
  config.z_channels, config.num_groups = 8, 4
  config.attention_levels = (2,)
  config.quantizer.codebook_size, config.quantizer.embedding_dim = 16, 4
  model = tokenizers.build(config)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  return model, random_variables.like_init(model, x), x


def _forward_encode_and_decode(model, variables, x):
  """(model(x), model.encode(x), model.decode_indices of model(x)'s
  indices), as one compiled program."""

  def run(m, x):
    x_rec, q_out = m(x)
    return (x_rec, q_out), m.encode(x), m.decode_indices(q_out.indices)

  return jax.jit(lambda variables, x: model.apply(variables, x, method=run),
                 compiler_options=FAST_COMPILE)(variables, x)


def test_shapes_and_decode_indices_matches_forward():
  model, variables, x = _tiny()
  assert model.downsample_factor == 4
  forward, encoded, decoded = _forward_encode_and_decode(model, variables, x)
  (x_rec, out), (indices, _) = forward, encoded
  assert x_rec.shape == x.shape and x_rec.dtype == jnp.float32
  assert indices.shape == (2, 4, 4) and indices.dtype == jnp.int32
  np.testing.assert_array_equal(indices, out.indices)
  np.testing.assert_allclose(decoded, x_rec, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  config = tokenizers.default_config('vqgan')
  config.channels, config.z_channels, config.num_groups = 8, 8, 4
  model = tokenizers.build(config, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  x_rec, out = jax.eval_shape(model.apply, variables, x)
  assert x_rec.dtype == out.quantized.dtype == jnp.float32


def test_rejects_bad_inputs():
  model, variables, x = _tiny()
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    model.apply(variables, x[..., :1])
  with pytest.raises(ValueError,
                     match='divisible by the downsampling factor 4'):
    model.apply(variables, x[:, :14, :14])
  with pytest.raises(TypeError, match='floating point'):
    model.apply(variables, (x * 127).astype(jnp.uint8))
  # It gave a NaN loss.
  with pytest.raises(ValueError, match=r'must not be empty, got shape '
                     r'\(2, 0, 0, 3\)'):
    model.apply(variables, x[:, :0, :0])
  # It failed in flax's param shape check of post_quant_conv.
  with pytest.raises(
      ValueError, match=r'4 dims and 4 channels .* got shape '
      r'\(1, 4, 4, 5\)'):
    model.apply(variables, jnp.zeros((1, 4, 4, 5)), method=model.decode)
  with pytest.raises(ValueError, match='out of range'):
    model.apply(variables, jnp.full((1, 4, 4), 16), method=model.decode_indices)
  with pytest.raises(ValueError, match='3 dims'):
    model.apply(variables, jnp.zeros((4, 4), jnp.int32),
                method=model.decode_indices)
  # A list failed with "'list' object has no attribute 'dtype'".
  with pytest.raises(TypeError, match='must be an integer array, got a list'):
    model.apply(variables, [[[0] * 4] * 4], method=model.decode_indices)
  with pytest.raises(TypeError, match='array of floats in .* got a list'):
    model.apply(variables, x.tolist())


def test_config_errors_name_the_key():
  config = tokenizers.default_config('vqgan')
  config.attention_levels = (5,)
  with pytest.raises(ConfigError, match=r'^model\.attention_levels'):
    tokenizers.build(config)
  config = tokenizers.default_config('vqgan')
  config.quantizer.name = 'nope'
  with pytest.raises(
      ConfigError, match=r"^model\.quantizer\.name: unknown quantizer 'nope'"):
    tokenizers.build(config)
  config = tokenizers.default_config('vqgan')
  config.quantizer.codebook_sise = 3
  with pytest.raises(ConfigError,
                     match=r'^model\.quantizer\.codebook_sise: unknown key'):
    tokenizers.build(config)
  config = tokenizers.default_config('vqgan')
  config.channels, config.num_groups = 6, 4
  with pytest.raises(ConfigError,
                     match=r'^model\.num_groups: 4 does not divide channels=6'):
    tokenizers.build(config)


def test_latent_width_need_not_be_a_multiple_of_the_groups():
  # No GroupNorm sees the latent: latent-diffusion's vq-f8 has 4 latent
  # channels and 32 groups.
  config = tokenizers.default_config('vqgan')
  config.channels, config.z_channels, config.num_groups = 8, 3, 4
  model = tokenizers.build(config)
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert variables['params']['encoder']['conv_out']['kernel'].shape[-1] == 3
  x_rec, _ = jax.eval_shape(model.apply, variables, x)
  assert x_rec.shape == x.shape


def test_factorized_lfq_tokens_decode_like_the_forward_pass():
  config = tokenizers.default_config('vqgan')
  config.channels, config.channel_multipliers = 8, (1, 2)
  config.z_channels, config.num_groups = 8, 4
  config.quantizer = quantizers.default_config('lfq')
  config.quantizer.codebook_size = 2**4
  config.quantizer.factor_bits = (1, 3)
  model = tokenizers.build(config)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  variables = random_variables.like_init(model, x)
  (x_rec, out), _, decoded = _forward_encode_and_decode(model, variables, x)
  assert out.indices.shape == (2, 4, 4, 2)
  assert int(out.indices[..., 0].max()) <= 1 and int(out.indices[...,
                                                                 1].max()) <= 7
  np.testing.assert_allclose(decoded, x_rec, atol=1e-5)
  with pytest.raises(ValueError, match='4 dims'):
    model.apply(variables, out.indices[..., 0], method=model.decode_indices)
