"""TiTok 1D tokenizer: K tokens at any image size, every token reaches the
decoder and every patch reaches every token, pixel and proxy-code heads, the
paper sizes, one step under the tokenizer task, input and config errors."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests import tiny
from tests.compile_options import FAST_COMPILE
from tests.generators import head_probe
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.nn import vit
from vqlab.quantizers import base as quantizer_base
from vqlab.quantizers import lfq
from vqlab.train import experiment_config
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import tokenizer

K = 4  # Latent tokens of the tiny model.


def _config(**overrides):
  config = tokenizers.default_config('titok')
  config.image_size, config.patch_size, config.num_latent_tokens = 16, 4, K
  if overrides.get('model_size', 'tiny') == 'tiny':
    for section in (config.encoder, config.decoder):
      section.width, section.num_layers = 16, 1
      section.num_heads, section.mlp_dim = 2, 32
  config.quantizer.codebook_size, config.quantizer.embedding_dim = 32, 4
  config.update(overrides)
  return config


def _jit(model, method=None, **kwargs):
  """model.apply(variables, *args, method=method, **kwargs), compiled once."""
  return jax.jit(
      lambda variables, *args: model.apply(variables, *args, method=method, **
                                           kwargs),
      compiler_options=FAST_COMPILE)


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


@functools.cache
def _tiny():
  """(model, variables, images [2, 16, 16, 3]): the pixel model, built once."""
  model = tokenizers.build(_config())
  x = _images((2, 16, 16, 3))
  variables = jax.jit(model.init,
                      compiler_options=FAST_COMPILE)(jax.random.key(1), x)
  return model, variables, x


def test_k_tokens_at_any_image_size_and_pixel_round_trip():
  model, variables, x = _tiny()
  assert model.downsample_factor == 4 and model.grid_size == (4, 4)

  def round_trip(module, x):
    x_rec, out = module(x)
    indices, _ = module.encode(x)
    grid = (x.shape[1] // 4, x.shape[2] // 4)
    return x_rec, out, indices, module.decode_indices(indices, grid_size=grid)

  for shape in ((2, 16, 16, 3), (2, 24, 8, 3)):  # 4x4 and 6x2 patch grids.
    x = _images(shape)
    x_rec, out, indices, decoded = _jit(model, round_trip)(variables, x)
    assert x_rec.shape == x.shape and x_rec.dtype == jnp.float32
    assert out.indices.shape == (2, K) and out.indices.dtype == jnp.int32
    assert out.quantized.shape == (2, K, 4)
    np.testing.assert_array_equal(indices, out.indices)
    np.testing.assert_allclose(decoded, x_rec, atol=1e-5)
  # Without grid_size the decoder draws the config's image_size.
  default_grid = jax.eval_shape(
      lambda v, i: model.apply(v, i, method=model.decode_indices), variables,
      indices)
  assert default_grid.shape == (2, 16, 16, 3)


def test_decoder_output_depends_on_every_latent_token():
  model, variables, _ = _tiny()
  base = jax.random.normal(jax.random.key(2), (1, K, 4))
  # Row 0: base; row 1 + k: token k moved.
  variants = jnp.concatenate(
      [base, base + 0.5 * jnp.eye(K)[:, :, None] * jnp.ones((1, 1, 4))])
  out = _jit(model, model.decode)(variables, variants)
  change = jnp.max(jnp.abs(out[1:] - out[:1]), axis=(1, 2, 3))
  assert change.shape == (K,) and np.all(change > 1e-4), change


def test_every_patch_reaches_every_latent_token():
  model, variables, _ = _tiny()
  x = _images((1, 16, 16, 3))
  # Row 0: x; row 1 + i: patch i (of the 4x4 grid) brightened.
  masks = jnp.eye(16).reshape(16, 4, 4)
  masks = jnp.repeat(jnp.repeat(masks, 4, axis=1), 4, axis=2)[..., None]
  variants = jnp.concatenate([x, x + 0.5 * masks])
  latents = _jit(model, lambda m, v: m.encoder(v, train=False))(variables,
                                                                variants)
  assert latents.shape == (17, K, 4)
  change = jnp.max(jnp.abs(latents[1:] - latents[:1]), axis=-1)  # [16, K]
  assert np.all(change > 1e-5), change


def test_a_bfloat16_proxy_code_head_computes_in_float32():
  """As the generators' heads: no 8-bit logits (ties, other argmax codes)."""
  config = _config(decoder_output='proxy_codes', proxy_codebook_size=64,
                   proxy_head_hidden=32)
  model = tokenizers.build(config, dtype=jnp.bfloat16)
  x = _images((2, 16, 16, 3))
  variables = jax.jit(model.init,
                      compiler_options=FAST_COMPILE)(jax.random.key(1), x)
  (logits,
   _), hidden, head = head_probe.head_call(lambda: model.apply(variables, x),
                                           'to_proxy_logits')
  assert logits.dtype == jnp.float32
  assert not head_probe.bfloat16_valued(logits)
  np.testing.assert_allclose(logits, head_probe.dense_float64(hidden, head),
                             rtol=1e-5, atol=1e-5)


def test_proxy_pixels_through_a_vqgan_of_factorized_codes():
  """'proxy_pixels' decodes the softmax-weighted mean of the pixel VQGAN's
  codes by full id, factorized LFQ codes too (they crashed the init)."""
  config = _config(decoder_output='proxy_pixels', proxy_codebook_size=32)
  pixel = config.pixel_decoder
  pixel.channels, pixel.channel_multipliers = 8, (1, 1, 1)
  pixel.num_res_blocks, pixel.attention_levels = 0, ()
  pixel.quantizer = quantizers.default_config('lfq')
  pixel.quantizer.update(codebook_size=32, factor_bits=(2, 3))
  # The sizes disagreeing is named by the key every quantizer has.
  config.proxy_codebook_size = 64
  with pytest.raises(
      ConfigError, match=r"^model\.proxy_codebook_size: 64, but the pixel "
      r"decoder's lfq quantizer has 32 codes$"):
    tokenizers.build(config, prefix='model')
  config.proxy_codebook_size = 32
  model = tokenizers.build(config)
  x = _images((2, 16, 16, 3))
  variables = jax.jit(model.init,
                      compiler_options=FAST_COMPILE)(jax.random.key(1), x)
  images, _ = _jit(model)(variables, x)
  assert images.shape == x.shape and np.all(np.isfinite(images))
  quantizer = model.pixel_vqgan.quantizer
  by_factors = quantizer.indices_to_codes(
      lfq.split_factors(jnp.arange(32), (2, 3)))
  codes = quantizer_base.every_code(quantizer)
  np.testing.assert_array_equal(codes, by_factors)
  assert len(np.unique(np.asarray(codes), axis=0)) == 32


def test_proxy_code_head_shares_the_other_params():
  pixels, pixel_variables, x = _tiny()
  model = tokenizers.build(
      _config(decoder_output='proxy_codes', proxy_codebook_size=10))
  shapes = jax.eval_shape(model.init, jax.random.key(1), x)['params']
  head = shapes.pop('to_proxy_logits')
  assert head['kernel'].shape == (16, 10)
  # Stage 2 (pixels) can take stage 1's (proxy codes) encoder, quantizer and
  # decoder as they are: only the head differs.
  params = dict(pixel_variables['params'])
  del params['to_pixels']
  assert jax.tree.map(lambda a: a.shape,
                      params) == jax.tree.map(lambda a: a.shape, shapes)
  params['to_proxy_logits'] = {
      'kernel': jnp.ones((16, 10)) / 4,
      'bias': jnp.zeros((10,))
  }
  variables = {'params': params}

  def forward(module, x):
    logits, out = module(x)
    return logits, module.decode_logits(out.quantized, grid_size=(2, 3))

  logits, other_grid = _jit(model, forward)(variables, x)
  assert logits.shape == (2, 4, 4, 10) and logits.dtype == jnp.float32
  assert other_grid.shape == (2, 2, 3, 10)
  with pytest.raises(ValueError, match="decoder_output='pixels'"):
    model.apply(variables, jnp.zeros((1, 4, 4, 16)), method=model.last_layer)
  with pytest.raises(ValueError, match="needs decoder_output='proxy_codes'"):
    pixels.apply(pixel_variables, jnp.zeros((2, K, 4)),
                 method=pixels.decode_logits)


def test_vit_pieces():
  x = _images((2, 8, 12, 3))
  patches = vit.patchify(x, 4)
  assert patches.shape == (2, 2, 3, 48)
  np.testing.assert_array_equal(patches[0, 1, 2], x[0, 4:8, 8:12].reshape(-1))
  np.testing.assert_array_equal(vit.unpatchify(patches, 4, 3), x)
  table = jax.random.normal(jax.random.key(0), (6, 5))
  assert vit.resize_grid_embedding(table, (2, 3), (2, 3)) is table
  resized = vit.resize_grid_embedding(table, (2, 3), (4, 6))
  np.testing.assert_allclose(resized, _bilinear_x2(table, (2, 3)), atol=1e-6)
  constant = vit.resize_grid_embedding(jnp.ones((6, 5)), (2, 3), (5, 1))
  np.testing.assert_allclose(constant, 1.0, rtol=1e-6)


def _bilinear_x2(table, grid):
  """float64 bilinear resize of a row-major [h*w, D] grid table to (2h, 2w):
  half-pixel centres, edges clamped (what 2x upsampling gives)."""
  grid_values = np.asarray(table, np.float64).reshape(*grid, -1)
  for axis, n in enumerate(grid):
    source = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = (source - low).reshape([-1 if a == axis else 1 for a in range(3)])
    grid_values = (np.take(grid_values, low, axis) * (1 - frac) +
                   np.take(grid_values, high, axis) * frac)
  return grid_values.reshape(4 * grid[0] * grid[1], -1)


def test_paper_sizes():
  for size, want in (('S', (512, 8, 8, 2048)), ('B', (768, 12, 12, 3072)),
                     ('L', (1024, 24, 16, 4096))):
    model = tokenizers.build(_config(model_size=size))
    assert model.encoder_size == model.decoder_size == want, size
  # A size section of a paper size was ignored: a 24-layer decoder asked
  # for built TiTok-S's 8.
  config = _config(model_size='S')
  config.decoder.num_layers = 24
  with pytest.raises(
      ConfigError, match=r"^model.decoder.num_layers: 24, but "
      r"model_size 'S' sets the size \(num_layers 8\)"):
    tokenizers.build(config)
  config = _config(model_size='S', image_size=256, patch_size=16,
                   num_latent_tokens=128)
  config.quantizer.codebook_size, config.quantizer.embedding_dim = 4096, 12
  model = tokenizers.build(config)
  image = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image)
  params = variables['params']
  for part in ('encoder', 'decoder'):
    blocks = [k for k in params[part]['transformer'] if k.startswith('block')]
    assert len(blocks) == 8
    assert params[part]['transformer']['block_0']['mlp']['fc1'][
        'kernel'].shape == (512, 2048)
  assert params['encoder']['grid_position']['embedding'].shape == (256, 512)
  assert params['quantizer']['codebook'].shape == (4096, 12)
  tokens, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=model.encode), variables, image)
  assert tokens.shape == (1, 128)


def test_one_train_step_under_the_tokenizer_task():
  config = tiny.tokenizer_config(image_size=16)
  config.model = _config()
  config.eval.lpips = config.eval.fid = 'off'
  config = experiment_config.validate(config, num_devices=8)
  task = tokenizer.build(config)
  batch = {'image': _images((8, 16, 16, 3))}
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(0),
                                                            batch)
  new_state, metrics = jax.jit(task.train_step, compiler_options=FAST_COMPILE)(
      state.replace(step=jnp.int32(5)), batch, jax.random.key(1), task.frozen)
  assert np.isfinite(metrics['loss']) and metrics['rec_loss'] > 0
  assert metrics['adaptive_weight'] > 0  # Gradients reach `to_pixels`.
  for part in ('encoder', 'decoder', 'quantizer', 'to_pixels'):
    old, new = (s.params['generator'][part] for s in (state, new_state))
    assert any(
        np.any(a != b)
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))), part


def test_rejects_bad_inputs():
  model, variables, x = _tiny()
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    model.apply(variables, x[..., :1])
  with pytest.raises(ValueError, match=r'patch_size 4\): .* divisible by'):
    model.apply(variables, x[:, :14, :16])
  with pytest.raises(TypeError, match='floating point'):
    model.apply(variables, (x * 127).astype(jnp.uint8))
  with pytest.raises(ValueError, match=f'expected {K} tokens'):
    model.apply(variables, jnp.zeros((2, K + 1), jnp.int32),
                method=model.decode_indices)
  with pytest.raises(ValueError, match=r'shape \[B, 4, 4\]'):
    model.apply(variables, jnp.zeros((2, 16, 4)), method=model.decode)


@pytest.mark.parametrize('overrides, message', [
    (dict(image_size=18), r'^model\.image_size: 18 is not a positive multiple '
     r'of patch_size 4'),
    (dict(model_size='XL'),
     r'^model\.model_size: must be one of tiny, S, B, L'),
    (dict(decoder_output='rgb'), r'^model\.decoder_output: must be one of'),
    (dict(num_latent_tokens=0), r'^model\.num_latent_tokens: must be >= 1'),
])
def test_bad_configs_name_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message):
    tokenizers.build(_config(**overrides))


def test_heads_must_divide_width():
  config = _config()
  config.decoder.num_heads = 3
  with pytest.raises(
      ConfigError, match=r'^model\.decoder\.num_heads: 3 does '
      'not divide width 16'):
    tokenizers.build(config)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = tokenizers.build(_config(), dtype=jnp.bfloat16)
  image = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  x_rec, out = jax.eval_shape(model.apply, variables, image)
  assert x_rec.dtype == out.quantized.dtype == jnp.float32


def test_a_trained_titok_encodes_only_pictures_of_its_training_size():
  """Its 1D tokens do not record a picture's size, and decode gives the
  training size: another size is refused, not silently resized back."""
  config = ml_collections.ConfigDict(
      {'model': tokenizers.default_config('titok')})
  config.model.image_size = 48
  tok = trained_tokenizer.TrainedTokenizer(model=None, variables={},
                                           config=config, workdir='run', step=1)
  with pytest.raises(
      ValueError, match=r'^run: a TiTok tokenizer encodes pictures of its '
      r'training size 48x48 .* got pictures of shape \(2, 32, 32, 3\)'):
    tok.encode({}, jnp.zeros((2, 32, 32, 3)))
  # Concrete 0..255 pixels (any tokenizer's): refused, not encoded.
  with pytest.raises(
      ValueError, match=r'^run: pixels must be in \[-1, 1\], '
      r'got values in \[0, 255\]'):
    tok.encode({}, jnp.linspace(0, 255, 2 * 48 * 48 * 3).reshape(2, 48, 48, 3))
  with pytest.raises(ValueError, match='pixels must be finite, got NaN'):
    tok.encode({}, jnp.full((2, 48, 48, 3), jnp.nan))
