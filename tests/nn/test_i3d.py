"""The FVD I3D against piergiaj/pytorch-i3d (tests/goldens/i3d.npz, from
tests/goldens/make_i3d_goldens.py), its resize against TF1's
resize_bilinear, and both weight converters: PyTorch (the golden's seeded
random weights) and TF (the variable names and shapes of DeepMind's
rgb_imagenet checkpoint, tests/goldens/i3d_tf_keys.json, written into a real
TF checkpoint)."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import paths
from tests import random_weight_files
from tests.compile_options import FAST_COMPILE
from tests.goldens import seeded_weights
from vqlab.errors import WeightsError
from vqlab.evals import fvd
from vqlab.nn import i3d
from vqlab.weights import files
from vqlab.weights import i3d as i3d_weights
from vqlab.weights import torch_files


@pytest.fixture(scope='module')
def golden():
  with np.load(paths.GOLDENS / 'i3d.npz') as f:
    return dict(f)


@pytest.fixture(scope='module')
def state(golden):
  names, shapes = seeded_weights.unpack_shapes(golden)
  return seeded_weights.draw_state_dict(names, shapes, int(golden['seed']))


@pytest.fixture(scope='module')
def tf_keys():
  with open(paths.GOLDENS / 'i3d_tf_keys.json') as f:
    return {name: tuple(shape) for name, shape in json.load(f).items()}


def test_logits_match_pytorch_i3d(golden, state):
  """Two 19-frame clips: time 19 -> 10 -> 5 -> 3 -> 2 output steps (odd
  sizes: TF SAME pads one more at the end), averaged as the FVD feature."""
  clips = np.repeat(np.repeat(golden['clips_small'], 8, axis=2), 8, axis=3)
  x = jnp.asarray(clips.astype(np.float32) / 127.5 - 1)
  params = i3d_weights.convert_pytorch_i3d(state)
  logits = jax.jit(
      lambda p, v: i3d.InceptionI3d().apply({'params': p}, v)['logits'],
      compiler_options=FAST_COMPILE)(params, x)
  want = golden['logits']
  error = np.abs(np.asarray(logits) - want).max()
  print(f'max |ours - pytorch-i3d| = {error:.3g} (max |logit| '
        f'{np.abs(want).max():.3g})')
  assert golden['logits_per_time'].shape == (2, i3d.NUM_CLASSES, 2)
  assert error <= 2e-4


@pytest.mark.parametrize('in_size', [28, 64, 128, 300])
def test_resize_matches_tf1_resize_bilinear(in_size):
  """The FVD reference's tf.image.resize_bilinear (TF1 defaults: no half
  pixel centers), up and down."""
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(in_size)
  frames = rng.uniform(-1, 1, (1, 2, in_size, in_size + 3, 3))
  frames = frames.astype(np.float32)
  want = tf.compat.v1.image.resize_bilinear(frames[0], (224, 224)).numpy()
  got = np.asarray(i3d.resize_frames(jnp.asarray(frames)))[0]
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_tf_checkpoint_converts_like_pytorch(golden, state, tf_keys, tmp_path):
  """DeepMind's variable names -> the same params as the port's state dict.

  The TF values come from the seeded state dict through the port's own
  record of each unit's TF scope (gamma 1: Sonnet's BatchNorm has none);
  two of its names differ from the real checkpoint's and are fixed here.
  """
  tf = pytest.importorskip('tensorflow')
  state = {
      k: (np.ones_like(v) if k.endswith('bn.weight') else v)
      for k, v in state.items()
  }
  fixes = {
      'logits': 'Logits/Conv3d_0c_1x1',
      'Mixed_5b/Branch_2/Conv3d_0b_3x3': 'Mixed_5b/Branch_2/Conv3d_0a_3x3'
  }
  variables = {}
  for prefix, tf_name in zip(golden['unit_names_torch'],
                             golden['unit_names_tf']):
    scope = str(tf_name).removeprefix('inception_i3d')
    scope = 'RGB/inception_i3d/' + fixes.get(scope, scope)
    weight = state[f'{prefix}.conv3d.weight'].transpose(2, 3, 4, 1, 0)
    variables[f'{scope}/conv_3d/w'] = weight
    if prefix == 'logits':
      variables[f'{scope}/conv_3d/b'] = state['logits.conv3d.bias']
      continue
    for tf_stat, torch_stat in (('beta', 'bias'), ('moving_mean',
                                                   'running_mean'),
                                ('moving_variance', 'running_var')):
      variables[f'{scope}/batch_norm/{tf_stat}'] = state[
          f'{prefix}.bn.{torch_stat}'].reshape(1, 1, 1, 1, -1)
  # The names and shapes are exactly those of DeepMind's checkpoint.
  assert {k: v.shape for k, v in variables.items()} == tf_keys
  prefix = str(tmp_path / 'model.ckpt')
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[variables[n] for n in names])
  from_tf = i3d_weights.convert_tf_i3d(i3d_weights.read_tf_checkpoint(prefix))
  from_torch = i3d_weights.convert_pytorch_i3d(state)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      from_tf, from_torch)
  assert len(jax.tree.leaves(from_tf)) == 2 * len(golden['unit_names_torch'])
  # Cut short, its data file fails in the read of a tensor: one line.
  data = tmp_path / 'model.ckpt.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:1000])
  with pytest.raises(WeightsError, match='cannot read the TF checkpoint'):
    i3d_weights.read_tf_checkpoint(prefix)


def test_weight_file_loads(state, tmp_path):
  """rgb_imagenet.pt (our torch-format writer) -> the converted params."""
  random_weight_files.write(tmp_path, ['i3d_kinetics400'])
  loaded = i3d_weights.load_i3d_params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, loaded,
               i3d_weights.convert_pytorch_i3d(state))
  # Another file there: named (it was not), and what it should be.
  path = tmp_path / files.KNOWN_FILES['i3d_kinetics400'].filename
  torch_files.save_state_dict(path, {'fc.weight': np.zeros((2, 2), np.float32)})
  with pytest.raises(WeightsError, match=rf'^{re.escape(str(path))}: .*\(is '
                     r'it .*\?\)$'):
    i3d_weights.load_i3d_params(tmp_path)


def test_missing_weight_file_names_file_and_directory(tmp_path):
  with pytest.raises(WeightsError) as error:
    i3d_weights.load_i3d_params(tmp_path)
  assert 'rgb_imagenet.pt' in str(error.value)
  assert str(tmp_path) in str(error.value)


def test_wrong_weights_are_named(state):
  missing = dict(state)
  del missing['Mixed_4e.b2b.bn.running_var']
  with pytest.raises(WeightsError, match=r'Mixed_4e\.b2b\.bn\.running_var'):
    i3d_weights.convert_pytorch_i3d(missing)
  wrong = dict(state,
               **{'logits.conv3d.weight': np.zeros((600, 1024, 1, 1, 1))})
  with pytest.raises(WeightsError, match=r'logits\.conv3d\.weight.*\(400, '):
    i3d_weights.convert_pytorch_i3d(wrong)
  with pytest.raises(WeightsError, match='not under'):
    i3d_weights.convert_tf_i3d({'RGB/other/w': np.zeros(1)})
  with pytest.raises(WeightsError, match='2 networks'):  # A joint checkpoint.
    i3d_weights.convert_tf_i3d({
        'RGB/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b': np.zeros(400),
        'Flow/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b': np.zeros(400)
    })


def test_short_clips_and_wrong_shapes_are_refused():
  model = i3d.InceptionI3d()
  with pytest.raises(ValueError, match='at least 9 frames'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))
  with pytest.raises(ValueError, match=r'\[B, T, H, W, 3\]'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 9, 32, 32)))


def test_fvd_features_are_of_the_first_frames_clipped(monkeypatch):

  class Clips:  # An I3D whose logits are the clips it is given.

    def apply(self, variables, clips):
      del variables
      return {'logits': clips}

  monkeypatch.setattr(fvd.i3d, 'InceptionI3d', Clips)
  videos = jnp.linspace(-3.0, 3.0, 2 * 5 * 3).reshape(2, 5, 1, 1, 3)
  np.testing.assert_array_equal(fvd.features({}, videos, 3),
                                np.clip(videos[:, :3], -1, 1))
