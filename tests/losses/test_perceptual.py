"""LPIPS (VGG16) and VGG19 features against the lpips / torchvision goldens
(tests/goldens/make_lpips_goldens.py), the converters' errors, and gradients.

The trunks carry seeded random weights redrawn from the goldens' names and
shapes; the LPIPS heads are the real packaged v0.1 file.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops as flops_lib
from tests import paths
from tests.compile_options import FAST_COMPILE
from tests.goldens import seeded_weights
from vqlab.errors import WeightsError
from vqlab.losses import perceptual
from vqlab.losses import vgg_features
from vqlab.nn import vgg
from vqlab.train.tasks import reconstruction_eval
from vqlab.weights import files
from vqlab.weights import lpips as lpips_weights
from vqlab.weights import torch_files
from vqlab.weights import vgg as vgg_weights

GOLDENS = str(paths.GOLDENS)


def _golden(name):
  with np.load(os.path.join(GOLDENS, name)) as golden:
    return dict(golden)


def _seeded_state(golden):
  names, shapes = seeded_weights.unpack_shapes(golden)
  return seeded_weights.draw_state_dict(names, shapes, int(golden['seed']))


@pytest.fixture(scope='module')
def lpips_golden():
  return _golden('lpips.npz')


@pytest.fixture(scope='module')
def lpips_params(lpips_golden):
  heads = torch_files.load_state_dict(files.require('lpips_vgg_heads'))
  return {
      'vgg': vgg_weights.convert_vgg(_seeded_state(lpips_golden), 16),
      **lpips_weights.convert_lpips_heads(heads)
  }


def _lpips_fn(dtype=jnp.float32):
  return jax.jit(
      lambda p, x, y: perceptual.lpips_distance(p, x, y, dtype=dtype),
      compiler_options=FAST_COMPILE)


@pytest.mark.parametrize('tag', ['square', 'wide'])
def test_lpips_matches_reference(lpips_golden, lpips_params, tag):
  x, y = lpips_golden[f'{tag}_x'], lpips_golden[f'{tag}_y']
  out = np.asarray(_lpips_fn()(lpips_params, x, y))
  assert out.shape == (x.shape[0],) and out.dtype == np.float32
  # Measured: <= 3e-8 (the values are 0.02 to 0.15).
  np.testing.assert_allclose(out, lpips_golden[f'{tag}_lpips'], rtol=0,
                             atol=1e-4)
  if tag == 'square':  # Identical images: exactly zero.
    same = np.asarray(_lpips_fn()(lpips_params, x, x))
    np.testing.assert_array_equal(same, np.zeros_like(same))


def test_lpips_bfloat16_trunk_is_close(lpips_golden, lpips_params):
  x, y = lpips_golden['wide_x'], lpips_golden['wide_y']
  out = np.asarray(_lpips_fn(jnp.bfloat16)(lpips_params, x, y))
  assert out.dtype == np.float32
  # Measured: 0.1% (the normalization and heads run in float32).
  np.testing.assert_allclose(out, lpips_golden['wide_lpips'], rtol=0.01)


def test_lpips_gradient_is_finite(lpips_params):
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1.0,
                         maxval=1.0)
  grad = jax.jit(
      jax.grad(lambda y: perceptual.lpips_distance(lpips_params, x, y).sum()),
      compiler_options=FAST_COMPILE)
  far = np.asarray(grad(-x))
  assert np.all(np.isfinite(far)) and np.abs(far).max() > 0
  # At y = x every difference is 0; all-zero features must not give NaNs.
  assert np.all(np.isfinite(np.asarray(grad(x))))


def test_a_gradient_wrt_the_reconstruction_runs_no_backward_through_x(
    lpips_params):
  """The training loss differentiates LPIPS w.r.t. x_hat only: two trunk
  forwards and one backward (input gradients of y's trunk: 1x its forward),
  3/2 of the distance's FLOPs. A trunk run on [x; y] at once ran its
  backward on both halves: 2x."""
  x = jnp.zeros((2, 32, 32, 3))
  distance = lambda y: perceptual.lpips_distance(lpips_params, x, y).sum()
  forward = flops_lib.count_flops(distance, x)
  assert flops_lib.count_flops(jax.grad(distance),
                               x) == pytest.approx(1.5 * forward, rel=0.01)


def test_lpips_as_a_metric_runs_at_highest_precision():
  """Every conv and head of the metric's LPIPS at HIGHEST (no TF32 or bf16
  passes on a GPU or TPU); the loss's at the backend's default."""
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(perceptual.LPIPS().init, jax.random.key(0), x,
                          x)['params']

  def precisions(precision):
    jaxpr = jax.make_jaxpr(lambda p: perceptual.lpips_distance(
        p, x, x, precision=precision))(params)
    return [
        eqn.params['precision']
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name in ('conv_general_dilated', 'dot_general')
    ]

  highest = jax.lax.Precision.HIGHEST
  metric = precisions(highest)
  # The VGG16 trunk's convs on x and on y, the five heads.
  assert len(metric) == 2 * 13 + 5
  assert all(p == (highest, highest) for p in metric), metric
  assert all(p is None for p in precisions(None))


def test_the_eval_suite_measures_lpips_at_highest_precision():
  evaluation = reconstruction_eval.ReconstructionEval(codebook_size=4)
  x = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(perceptual.LPIPS().init, jax.random.key(0), x,
                          x)['params']
  jaxpr = jax.make_jaxpr(lambda p: evaluation.outputs(
      x, x, jnp.zeros((2, 4, 4), jnp.int32), jnp.ones(2), {'lpips': p}))(params)

  def convs(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        yield eqn.params['precision']
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from convs(sub)

  highest = (jax.lax.Precision.HIGHEST,) * 2
  assert sum(p == highest for p in convs(jaxpr.jaxpr)) >= 13  # VGG16's.


def test_vgg19_features_match_reference():
  golden = _golden('vgg19.npz')
  params = {'vgg': vgg_weights.convert_vgg(_seeded_state(golden), 19)}
  features = jax.jit(
      lambda p, x: vgg_features.VGG19Features().apply({'params': p}, x),
      compiler_options=FAST_COMPILE)(params, golden['x'])
  assert sorted(features) == sorted(vgg.DEFAULT_OUTPUTS)
  for name, value in features.items():
    value = np.asarray(value)
    maps = golden[f'{name}_maps']
    # float32 sums in another order through up to 14 convolutions: measured
    # <= 7e-6 of the largest activation; a wrong layer is off by O(1).
    scale = np.abs(maps).max()
    np.testing.assert_allclose(value[..., :maps.shape[-1]], maps, rtol=0,
                               atol=1e-4 * scale, err_msg=name)
    np.testing.assert_allclose(value.mean(axis=(1, 2)),
                               golden[f'{name}_channel_mean'], rtol=0,
                               atol=1e-4 * scale, err_msg=name)


def test_vgg_stops_after_last_requested_layer():
  model = vgg.VGG(19, ('relu2_2', 'relu1_1'))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
      (1, 8, 8, 3)))
  assert sorted(
      shapes['params']) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']
  out = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 8, 8, 3)))
  assert out['relu2_2'].shape == (1, 4, 4, 128)
  with pytest.raises(ValueError, match='relu3_4'):
    jax.eval_shape(
        vgg.VGG(16, ('relu3_4',)).init, jax.random.key(0),
        jnp.zeros((1, 8, 8, 3)))


def test_missing_vgg16_file_names_file_and_directory(tmp_path):
  with pytest.raises(WeightsError) as error:
    perceptual.load_lpips_params(tmp_path)
  assert 'vgg16-397923af.pth' in str(error.value)
  assert str(tmp_path) in str(error.value)


def test_loaders_read_published_files(tmp_path, lpips_golden, lpips_params):
  """load_*_params read the torchvision files from the weights directory
  (written here by torch_files.save_state_dict) and the packaged heads."""
  torch_files.save_state_dict(tmp_path / 'vgg16-397923af.pth',
                              _seeded_state(lpips_golden))
  loaded = perceptual.load_lpips_params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, loaded, lpips_params)
  vgg19_state = _seeded_state(_golden('vgg19.npz'))
  torch_files.save_state_dict(tmp_path / 'vgg19-dcbb9e9d.pth', vgg19_state)
  loaded = vgg_features.load_vgg19_feature_params(tmp_path)
  expected = {'vgg': vgg_weights.convert_vgg(vgg19_state, 19)}
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_a_file_of_other_tensors_names_the_file_and_what_it_should_be(
    tmp_path, lpips_golden):
  state = _seeded_state(lpips_golden)
  del state['features.2.weight']  # E.g. VGG16-BN's numbering.
  torch_files.save_state_dict(tmp_path / 'vgg16-397923af.pth', state)
  with pytest.raises(WeightsError) as error:
    perceptual.load_lpips_params(tmp_path)
  assert str(tmp_path / 'vgg16-397923af.pth') in str(error.value)
  assert "no 'features.2.weight'" in str(error.value)
  assert 'torchvision VGG16' in str(error.value)


def test_wrong_shapes_name_the_key(lpips_golden):
  state = _seeded_state(lpips_golden)
  narrow = {**state, 'features.7.weight': state['features.7.weight'][:, :32]}
  with pytest.raises(WeightsError, match=r"'features\.7\.weight'"):
    vgg_weights.convert_vgg(narrow, 16)
  del state['features.28.bias']
  with pytest.raises(WeightsError, match=r"'features\.28\.bias'"):
    vgg_weights.convert_vgg(state, 16)
  with pytest.raises(WeightsError, match=r"'features\.16\.weight'"):
    vgg_weights.convert_vgg(state, 19)  # A VGG16 file for VGG19.
  heads = {
      f'lin{k}.model.1.weight': np.zeros((1, c, 1, 1), np.float32)
      for k, c in enumerate(vgg.CHANNELS)
  }
  heads['lin3.model.1.weight'] = np.zeros((1, 256, 1, 1), np.float32)
  with pytest.raises(WeightsError, match=r"'lin3\.model\.1\.weight'"):
    lpips_weights.convert_lpips_heads(heads)


@pytest.mark.parametrize('shape, dtype, error, message', [
    ((2, 5, 32, 32, 3), jnp.float32, ValueError,
     r'LPIPS: images must have shape \[B, H, W, 3 or 1\]'),
    ((2, 3, 32, 32), jnp.float32, ValueError, r'got \(2, 3, 32, 32\)'),
    ((2, 32, 32, 4), jnp.float32, ValueError, r'3 or 1'),
    ((2, 8, 8, 3), jnp.float32, ValueError, r'at least 16 pixels'),
    ((2, 32, 32, 3), jnp.uint8, TypeError, r'x / 127\.5 - 1'),
])
def test_lpips_rejects_what_it_would_measure_wrong(shape, dtype, error,
                                                   message):
  """A video gave [B, W] distances (its mean over T and H), 8x8 NaN, uint8
  a third of the distance, NCHW a broadcasting error deep in the trunk."""
  x = jnp.zeros(shape, dtype)
  with pytest.raises(error, match=message):
    jax.eval_shape(perceptual.LPIPS().init, jax.random.key(0), x, x)


def test_eval_leaves_lpips_out_below_its_smallest_side():
  """Its relu5_3 has no positions under 16 pixels: NaN, not a metric."""
  from vqlab.train.tasks import reconstruction_eval  # pylint: disable=g-import-not-at-top
  params = jax.eval_shape(perceptual.LPIPS().init, jax.random.key(0),
                          jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))
  evaluator = reconstruction_eval.ReconstructionEval(codebook_size=4)
  for side, has_lpips in ((8, False), (16, True)):
    x = jnp.zeros((2, side, side, 3))
    outputs, _ = jax.eval_shape(
        lambda p, x=x: evaluator.outputs(x, x, jnp.zeros(
            (2, 2), jnp.int32), jnp.ones(2), {'lpips': p}), params['params'])
    assert ('lpips' in outputs['sums']) == has_lpips
