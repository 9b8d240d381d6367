"""MAGVIT-v2 tokenizer and its layers: causality, frame arithmetic, images as
1-frame videos, depth-to-space, adaptive GroupNorm, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_variables
from tests.compile_options import FAST_COMPILE
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.nn import sampling
from vqlab.nn import stack
from vqlab.nn.adaptive_norm import AdaptiveGroupNorm
from vqlab.nn.adaptive_norm import latent_frame_index
from vqlab.nn.causal_conv import CausalConv3D
from vqlab.nn.depth_to_space import depth_to_space
from vqlab.nn.depth_to_space import space_to_depth


def _config(levels=3, temporal=2, quantizer=None):
  config = tokenizers.default_config('magvit2')
  config.channels, config.num_groups = 4, 2
  config.channel_multipliers = (1, 2, 2)[:levels]
  config.num_temporal_downsamples = temporal
  if quantizer is None:
    quantizer = quantizers.default_config('lfq')
    quantizer.codebook_size, quantizer.factor_bits = 2**6, (3, 3)
  config.quantizer = quantizer
  return config


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


def _jit(model, method=None):
  """model.apply(variables, x, method=method), compiled fast."""
  return jax.jit(lambda variables, x: model.apply(variables, x, method=method),
                 compiler_options=FAST_COMPILE)


@pytest.fixture(scope='module')
def tiny():
  """f = 4, s = 4 model on 8x8 frames with random variables, and one compiled
  function returning (encoder latents, forward_with_features)."""
  model = tokenizers.build(_config())
  variables = random_variables.like_init(model, _video((2, 9, 8, 8, 3)))

  def run(m, x):
    video = x if x.ndim == 5 else x[:, None]
    return m.encoder(video), m.forward_with_features(x)

  return model, variables, _jit(model, run)


def test_causal_conv_frame_arithmetic_and_replicate_padding():
  conv = CausalConv3D(2, (3, 3, 3), strides=(2, 2, 2))
  x = _video((1, 9, 8, 8, 3))
  variables = conv.init(jax.random.key(0), x)
  for t in range(4):  # Kernel 3, stride 2: 1 + 2t frames -> 1 + t.
    shape = jax.eval_shape(conv.apply, variables, x[:, :1 + 2 * t]).shape
    assert shape == (1, 1 + t, 4, 4, 2)
  # Output j sees input frames 2j - 2 .. 2j: frame 5 moves output 3 only.
  y, y_moved = conv.apply(variables, x), conv.apply(variables, x.at[:,
                                                                    5].add(1.0))
  np.testing.assert_array_equal(y[:, :3], y_moved[:, :3])
  np.testing.assert_array_equal(y[:, 4], y_moved[:, 4])
  assert np.abs(y[:, 3] - y_moved[:, 3]).min() > 0
  # The padding repeats frame 0: a still clip gives identical output frames.
  still = jnp.repeat(x[:, :1], 5, axis=1)
  y = CausalConv3D(2, (3, 3, 3)).apply(variables, still)
  np.testing.assert_allclose(y, jnp.repeat(y[:, :1], 5, axis=1), atol=1e-6)


def test_depth_to_space_round_trip():
  x = np.arange(2 * 3 * 4 * 6 * 16, dtype=np.float32).reshape(2, 3, 4, 6, 16)
  y = depth_to_space(x, spatial=2, temporal=2)
  assert y.shape == (2, 6, 8, 12, 2)
  np.testing.assert_array_equal(space_to_depth(y, spatial=2, temporal=2), x)
  # Pixel (t, h, w) = (1, 0, 1) is channel block (i_t, i_h, i_w) = (1, 0, 1).
  np.testing.assert_array_equal(y[0, 1, 0, 1], x[0, 0, 0, 0, 10:12])
  image = x[:, 0]
  np.testing.assert_array_equal(space_to_depth(depth_to_space(image)), image)
  assert depth_to_space(image).shape == (2, 8, 12, 4)
  np.testing.assert_array_equal(depth_to_space(space_to_depth(y, 2, 3), 2, 3),
                                y)
  with pytest.raises(ValueError, match='not divisible'):
    space_to_depth(y[:, :5], temporal=2)


def test_adaptive_group_norm():
  x = _video((2, 5, 4, 4, 8))
  z_q = _video((2, 2, 2, 2, 3), seed=1)
  norm = AdaptiveGroupNorm(num_groups=2)
  variables = norm.init(jax.random.key(0), x, z_q)
  # Plain GroupNorm of each frame, in float64: 2 groups of 4 channels.
  groups = np.asarray(x, np.float64).reshape(2, 5, 4, 4, 2, 4)
  mean = groups.mean(axis=(2, 3, 5), keepdims=True)
  var = ((groups - mean)**2).mean(axis=(2, 3, 5), keepdims=True)
  per_frame = ((groups - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(norm.apply(variables, x, z_q), per_frame,
                             atol=2e-6)
  np.testing.assert_allclose(norm.apply(variables, x[:, 0], z_q[:, 0]),
                             per_frame[:, 0], atol=2e-6)
  # y = GroupNorm(x) * (1 + scale(z_q)) + shift(z_q), z_q resized causally.
  # A key per leaf: scale and shift have the same shapes, and equal draws
  # would not tell them apart.
  leaves, tree = jax.tree.flatten(variables['params'])
  params = jax.tree.unflatten(tree, [
      jax.random.normal(k, p.shape)
      for k, p in zip(jax.random.split(jax.random.key(3), len(leaves)), leaves)
  ])
  dense = lambda name: z_q @ params[name]['kernel'] + params[name]['bias']
  index = latent_frame_index(5, 2)
  np.testing.assert_array_equal(index, [0, 1, 1, 1, 1])
  up = lambda z: jnp.repeat(jnp.repeat(z[:, index], 2, 2), 2, 3)
  expected = per_frame * (1 + up(dense('scale'))) + up(dense('shift'))
  np.testing.assert_allclose(norm.apply({'params': params}, x, z_q), expected,
                             atol=1e-5)
  np.testing.assert_array_equal(latent_frame_index(9, 3),
                                [0, 1, 1, 1, 1, 2, 2, 2, 2])
  # 'pooled' takes z_q's unbiased std over each frame: none for 1x1.
  pooled = AdaptiveGroupNorm(num_groups=2, pooled=True)
  assert np.all(
      np.isfinite(pooled.apply(pooled.init(jax.random.key(0), x, z_q), x, z_q)))
  with pytest.raises(ValueError, match='a latent frame of 1x1 has no variance'):
    pooled.init(jax.random.key(0), x, z_q[:, :, :1, :1])


@pytest.mark.parametrize('levels,temporal', [(3, 2), (2, 1)])
def test_frame_and_shape_arithmetic(levels, temporal):
  model = tokenizers.build(_config(levels, temporal))
  s, f = 2**temporal, 2**(levels - 1)
  assert (model.temporal_factor, model.downsample_factor) == (s, f)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 1, 8, 8, 3)))
  for frames in (1, 5, 9, 17):
    x_rec, out = jax.eval_shape(model.apply, variables,
                                jnp.zeros((2, frames, 8, 8, 3)))
    latent = 1 + (frames - 1) // s
    assert out.indices.shape == (2, latent, 8 // f, 8 // f, 2)
    assert out.quantized.shape == (2, latent, 8 // f, 8 // f, 6)
    assert x_rec.shape == (2, frames, 8, 8, 3)
  x_rec, out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 8, 8, 3)))
  assert out.indices.shape == (2, 8 // f, 8 // f, 2)
  assert x_rec.shape == (2, 8, 8, 3)


def test_default_config_is_lfq_2_18_with_two_factors():
  model = tokenizers.build(tokenizers.default_config('magvit2'))
  assert model.quantizer.codebook_size == 2**18
  x = jnp.zeros((1, 5, 16, 16, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  x_rec, out = jax.eval_shape(model.apply, variables, x)
  assert out.indices.shape == (1, 3, 4, 4, 2) and x_rec.shape == x.shape
  assert out.quantized.shape == (1, 3, 4, 4, 18)


def test_bfloat16_compute_keeps_float32_params():
  model = tokenizers.build(_config(), dtype=jnp.bfloat16)
  x = jnp.zeros((1, 5, 8, 8, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  x_rec, _ = jax.eval_shape(model.apply, variables, x)
  assert x_rec.dtype == jnp.float32


def test_causality_by_perturbation(tiny):
  model, variables, forward = tiny
  x = _video((2, 9, 8, 8, 3))
  z, (x_rec, out, _) = forward(variables, x)
  assert z.shape == (2, 3, 2, 2, 6)
  # s = 4: latent j sees input frames <= 4j; decoded frame i reads latent
  # ceil(i / 4). Frame 5 moves latent 2 only; frames 0..4 decode from 0, 1.
  z2, (x_rec2, out2, _) = forward(variables, x.at[:, 5].set(-x[:, 5]))
  np.testing.assert_array_equal(z2[:, :2], z[:, :2])
  np.testing.assert_array_equal(out2.indices[:, :2], out.indices[:, :2])
  np.testing.assert_array_equal(x_rec2[:, :5], x_rec[:, :5])
  assert np.abs(z2[:, 2] - z[:, 2]).max() > 1e-3
  z3, (x_rec3, _, _) = forward(variables, x.at[:, 1].set(-x[:, 1]))
  np.testing.assert_array_equal(z3[:, :1], z[:, :1])
  np.testing.assert_array_equal(x_rec3[:, :1], x_rec[:, :1])
  # The first frame may change every latent frame.
  z4, _ = forward(variables, x.at[:, 0].set(-x[:, 0]))
  assert all(np.abs(z4[:, j] - z[:, j]).max() > 1e-3 for j in range(3))


def test_image_is_the_first_frame_of_a_video(tiny):
  model, variables, forward = tiny
  video = _video((2, 9, 8, 8, 3))
  _, (video_rec, video_out, _) = forward(variables, video)
  _, (image_rec, image_out, features) = forward(variables, video[:, 0])
  assert image_out.indices.shape == (2, 2, 2, 2)
  assert image_rec.shape == (2, 8, 8, 3) and features.shape == (2, 8, 8, 4)
  np.testing.assert_array_equal(image_out.indices, video_out.indices[:, 0])
  np.testing.assert_allclose(image_rec, video_rec[:, 0], atol=1e-5)


def test_last_layer_and_decode_indices(tiny):
  model, variables, forward = tiny
  assert model.LAST_LAYER == 'to_pixels'
  last = {'params': {model.LAST_LAYER: variables['params'][model.LAST_LAYER]}}
  assert set(last['params']['to_pixels']) == {'kernel', 'bias'}
  decode_indices = _jit(model, model.decode_indices)
  for x in (_video((2, 9, 8, 8, 3)), _video((2, 8, 8, 3))):
    _, (x_rec, out, features) = forward(variables, x)
    assert features.shape == x.shape[:-1] + (4,)
    # The tokenizer task's adaptive weight applies only this layer's params.
    np.testing.assert_allclose(
        model.apply(last, features, method=model.last_layer), x_rec, atol=1e-5)
    decoded = decode_indices(variables, out.indices)
    np.testing.assert_allclose(decoded, x_rec, atol=1e-4)


def test_rejects_bad_inputs(tiny):
  model, variables, _ = tiny
  x = _video((1, 9, 8, 8, 3))
  with pytest.raises(ValueError, match=r'5 or 9 frames ok; got 8: .*1 \+ 4k'):
    model.apply(variables, x[:, :8])
  with pytest.raises(ValueError, match=r'at least 1 frame, got 0 frames'):
    model.apply(variables, x[:, :0], method=model.encode)
  with pytest.raises(ValueError, match=r'\[B, T, H, W, 3\]'):
    model.apply(variables, x[..., :1])
  with pytest.raises(ValueError, match='divisible by the downsampling factor'):
    model.apply(variables, x[:, :, :6, :6])
  # A ZeroDivisionError deep in the decoder's adaptive norm.
  with pytest.raises(ValueError, match='must not be empty'):
    model.apply(variables, x[:, :, :0, :0])
  with pytest.raises(ValueError, match=r'4 or 5 dims and \d+ channels'):
    model.apply(variables, jnp.zeros((1, 2, 1, 1, 99)), method=model.decode)
  # 0 latent frames: a deep jnp.pad error in the causal conv.
  with pytest.raises(ValueError, match='latents must not be empty'):
    model.apply(variables, jnp.zeros((1, 0, 2, 2, model.quantizer.code_dim)),
                method=model.decode)
  with pytest.raises(TypeError, match='floating point'):
    model.apply(variables, (x * 127).astype(jnp.uint8))
  with pytest.raises(ValueError, match='4 or 5 dims'):
    model.apply(variables, jnp.zeros((2, 2, 2), jnp.int32),
                method=model.decode_indices)


def test_rematerialized_res_blocks_keep_the_param_tree(tiny):
  # Same param tree (names included) as without remat: checkpoints move
  # between the two. Its gradients: the scanned test below, whose
  # width-changing and single blocks run rematerialized but unscanned.
  _, variables, _ = tiny
  config = _config()
  config.remat_policy = 'full'
  rematerialized = tokenizers.build(config)
  x = jax.ShapeDtypeStruct((1, 5, 8, 8, 3), jnp.float32)
  assert (jax.tree.structure(
      jax.eval_shape(rematerialized.init, jax.random.key(0),
                     x)) == jax.tree.structure(variables))


def test_scanned_res_blocks_compute_the_same_function():
  # Two res blocks per stage: each stage of one width is a scanned run
  # (under remat too); the unrolled params, stacked, give the same outputs
  # and, unstacked, the same gradients.
  config = _config()
  config.num_res_blocks = 2
  x = _video((1, 5, 8, 8, 3))
  unrolled = tokenizers.build(config)
  variables = random_variables.like_init(unrolled, x)
  config.scan_blocks, config.remat_policy = True, 'full'
  scanned = tokenizers.build(config)
  shapes = jax.eval_shape(scanned.init, jax.random.key(0), x)['params']
  assert sorted(shapes['encoder'])[:3] == [
      'CausalDownsample3D_0', 'CausalDownsample3D_1', 'ResBlock3D_0_to_1'
  ]
  assert 'ResBlock3D_2' in shapes['encoder']  # 4 -> 8 channels: alone.
  stacked = stack.stack_like(variables['params'], shapes)
  assert jax.tree.structure(stacked) == jax.tree.structure(shapes)

  def value_and_grads(model, params):
    loss = lambda p: jnp.sum(model.apply({'params': p}, x)[0]**2)
    return jax.jit(jax.value_and_grad(loss),
                   compiler_options=FAST_COMPILE)(params)

  (want, want_grads), (got,
                       got_grads) = (value_and_grads(unrolled,
                                                     variables['params']),
                                     value_and_grads(scanned, stacked))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
      stack.unstack(got_grads), want_grads)


def test_config_errors_name_the_key():
  config = _config()
  config.remat_policy = 'everything'
  with pytest.raises(ConfigError, match=r'^model\.remat_policy'):
    tokenizers.build(config)
  config = _config(levels=2, temporal=2)
  with pytest.raises(ConfigError, match=r'^model\.num_temporal_downsamples'):
    tokenizers.build(config)
  config = _config()
  config.num_groups = 3
  with pytest.raises(ConfigError, match=r'^model\.num_groups'):
    tokenizers.build(config)


@pytest.mark.parametrize('name,options',
                         [('vq', dict(codebook_size=16, embedding_dim=4)),
                          ('fsq', dict(levels=(5, 3, 3)))])
def test_other_quantizers(name, options):
  quantizer = quantizers.default_config(name)
  quantizer.update(options)
  model = tokenizers.build(_config(levels=2, temporal=1, quantizer=quantizer))
  x = _video((1, 5, 8, 8, 3))
  x_rec, out = _jit(model)(random_variables.like_init(model, x), x)
  assert x_rec.shape == x.shape and out.indices.shape == (1, 3, 4, 4)
  assert np.all(np.isfinite(x_rec)) and np.isfinite(out.loss)


def test_causal_upsample_gives_latent_j_frames_s_j_minus_1_plus_1_to_s_j():
  """Time x2 upsampling: latent 0 fills frame 0, latent j frames 2j - 1 and
  2j (dropping the last frames instead stays causal but puts every latent a
  frame late, which the whole model's perturbation test cannot see)."""
  up = sampling.CausalUpsample3D(temporal=True, temporal_kernel=1)
  z = jax.random.normal(jax.random.key(0), (1, 3, 2, 2, 4))
  variables = up.init(jax.random.key(1), z)
  apply = jax.jit(up.apply, compiler_options=FAST_COMPILE)
  y = apply(variables, z)
  assert y.shape == (1, 5, 4, 4, 4)
  for j, frames in ((0, [0]), (1, [1, 2]), (2, [3, 4])):
    moved = np.abs(apply(variables, z.at[:, j].add(1.0)) - y).max((0, 2, 3, 4))
    np.testing.assert_array_equal(np.flatnonzero(moved > 0), frames)
