"""The FID InceptionV3 against pytorch-fid (tests/goldens/inception.npz, from
tests/goldens/make_inception_goldens.py), its resize, and the converter's
errors. The weights are seeded random ones redrawn from the golden's names
and shapes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from tests.goldens import seeded_weights
from vqlab.errors import WeightsError
from vqlab.nn import inception
from vqlab.nn import resize
from vqlab.weights import inception as inception_weights

GOLDENS = str(paths.GOLDENS)


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDENS, 'inception.npz')) as f:
    return dict(f)


@pytest.fixture(scope='module')
def state(golden):
  names, shapes = seeded_weights.unpack_shapes(golden)
  return seeded_weights.draw_state_dict(names, shapes, int(golden['seed']))


def _signed(images_u8):
  """The golden's uint8 images as our [-1, 1] inputs (pytorch-fid saw
  u8 / 255 in [0, 1])."""
  return jnp.asarray(images_u8.astype(np.float32) / 255.0 * 2.0 - 1.0)


def test_features_match_pytorch_fid(golden, state):
  params = inception_weights.convert_inception(state)
  model = inception.InceptionV3(resize_input=False)
  size = (inception.INPUT_SIZE,) * 2

  def features(params, small, large):
    # Both batches through one network: a single (slow) XLA:CPU compile.
    x = jnp.concatenate([
        resize.resize_bilinear(small, size),
        resize.resize_bilinear(large, size)
    ])
    return model.apply({'params': params}, x)

  out = jax.jit(features,
                compiler_options=FAST_COMPILE)(params,
                                               _signed(golden['inputs_small']),
                                               _signed(golden['inputs_large']))
  for key, name in (('pool', 'pool'), ('logits_unbiased', 'logits')):
    want = np.concatenate([golden[f'{name}_small'], golden[f'{name}_large']])
    got = np.asarray(out[key])
    assert got.shape == want.shape
    error = np.abs(got - want).max()
    print(f'{key}: max |ours - pytorch-fid| = {error:.3g} '
          f'(max |value| {np.abs(want).max():.3g})')
    assert error <= 1e-3, key


@pytest.mark.parametrize('name', ['small', 'large'])
def test_resize_matches_torch(golden, name):
  """64 -> 299 (upsampling) and 320 -> 299 (downsampling, no antialias).

  1e-6: a float32 rounding of the source index differs by 1.5e-5 near 256.
  """
  images = jnp.asarray(golden[f'inputs_{name}'][:1].astype(np.float32) / 255)
  resized = np.asarray(
      jax.jit(lambda x: resize.resize_bilinear(x, (299, 299)),
              compiler_options=FAST_COMPILE)(images))[0]
  lines = golden['resize_lines']
  np.testing.assert_allclose(resized[lines], golden[f'resize_{name}_rows'],
                             atol=1e-6)
  np.testing.assert_allclose(resized[:, lines], golden[f'resize_{name}_cols'],
                             atol=1e-6)


@pytest.mark.parametrize('in_size', [64, 256, 320])
def test_tf_protocol_input_is_the_tf_graphs(in_size):
  """'tf': what the TF Inception graph (IS code, ADM evaluator) makes of the
  uint8 pixels of the saved images: ResizeBilinear (TF1), then
  (x - 128) / 128."""
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(in_size)
  images = rng.uniform(-1.02, 1.02, (2, in_size, in_size + 5, 3))
  images = images.astype(np.float32)
  # As vqlab.train.writers saves them.
  pixels = np.clip((images + 1) * np.float32(127.5) + np.float32(0.5), 0,
                   255).astype(np.uint8)
  want = (tf.compat.v1.image.resize_bilinear(pixels.astype(np.float32),
                                             (299, 299)).numpy() - 128) / 128
  got = jax.jit(lambda x: inception.network_input(x, 'tf'))(jnp.asarray(
      images, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Another input than pytorch-fid's: a resize of different centres, the
  # pixels rounded, and 128 as zero.
  torch_input = inception.network_input(jnp.asarray(images, jnp.float32))
  assert np.abs(np.asarray(torch_input) - want).mean() > 1e-3
  with pytest.raises(ValueError, match='unknown input protocol'):
    inception.network_input(jnp.asarray(images), 'adm')


def test_model_output_shapes_with_resize():
  shapes = jax.eval_shape(
      lambda x: inception.InceptionV3().init_with_output(jax.random.key(0), x)[0
                                                                              ],
      jnp.zeros((2, 40, 50, 3)))
  assert shapes['pool'].shape == (2, inception.POOL_FEATURES)
  assert shapes['logits_unbiased'].shape == (2, inception.NUM_CLASSES)


def test_converter_tolerates_missing_num_batches_tracked(state):
  trimmed = {
      k: v for k, v in state.items() if not k.endswith('num_batches_tracked')
  }
  assert len(trimmed) < len(state)
  params = inception_weights.convert_inception(trimmed)
  assert params['Mixed_7c']['branch_pool']['kernel'].shape == (1, 1, 2048, 192)
  assert params['fc']['kernel'].shape == (2048, 1008)


def test_missing_weight_file_names_file_and_directory(tmp_path):
  with pytest.raises(WeightsError) as error:
    inception_weights.load_inception_params(tmp_path)
  assert 'pt_inception-2015-12-05-6726825d.pth' in str(error.value)
  assert str(tmp_path) in str(error.value)


def test_wrong_keys_are_named(state):
  missing = dict(state)
  del missing['Mixed_6b.branch7x7_2.bn.running_var']
  with pytest.raises(WeightsError, match=r'Mixed_6b\.branch7x7_2\.bn\.'
                     'running_var'):
    inception_weights.convert_inception(missing)
  extra = dict(state, **{'AuxLogits.fc.weight': np.zeros((1008, 768))})
  with pytest.raises(WeightsError, match=r'AuxLogits\.fc\.weight'):
    inception_weights.convert_inception(extra)
  wrong = dict(state, **{'Conv2d_1a_3x3.conv.weight': np.zeros((32, 3, 5, 5))})
  with pytest.raises(WeightsError, match=r'Conv2d_1a_3x3\.conv\.weight.*'
                     r'\(32, 3, 3, 3\)'):
    inception_weights.convert_inception(wrong)
