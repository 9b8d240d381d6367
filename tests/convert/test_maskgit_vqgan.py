"""The MaskGIT VQGAN converter against the flax reference of
tests/goldens/make_maskgit_goldens.py: the full-size released key list, and
a reduced random checkpoint whose tokens and decoded images we must
reproduce."""

import json
import os

import flax.serialization
import jax
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab import tokenizers
from vqlab.convert import maskgit_vqgan
from vqlab.convert import published
from vqlab.errors import WeightsError

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'maskgit_tiny.msgpack')


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDENS, 'maskgit_goldens.npz')) as data:
    return dict(data)


@pytest.fixture(scope='module')
def converted(golden):
  return maskgit_vqgan.convert_file(TINY, num_groups=int(golden['num_groups']),
                                    image_size=16)


def _tokens_and_images(converted, golden):
  """Our model's tokens of the golden images and images of the golden tokens
  (one compile)."""
  model = tokenizers.build(converted.model_config)

  def run(variables, images, tokens):
    return (model.apply(variables, images, method=model.encode)[0],
            model.apply(variables, tokens, method=model.decode_indices))

  tokens, images = jax.jit(run, compiler_options=FAST_COMPILE)({
      'params': converted.params
  }, golden['images'], golden['tokens'])
  return np.asarray(tokens), np.asarray(images)


def test_full_size_key_list_converts():
  with open(os.path.join(GOLDENS, 'maskgit_keys.json')) as f:
    shapes = json.load(f)
  tensors = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  # Every tensor consumed and every param filled, or this raises.
  out = maskgit_vqgan.convert_state_dict(tensors, 'released tokenizer')
  config = out.model_config
  assert tuple(config.channel_multipliers) == (1, 1, 2, 2, 4)
  assert (config.channels, config.num_res_blocks) == (128, 2)
  assert (config.quantizer.codebook_size,
          config.quantizer.embedding_dim) == (1024, 256)
  assert config.shortcut_quirk and config.unit_pixels
  assert out.image_size == 256
  # What the paper configs' `released` proxy builds (configs/titok).
  assert config.to_dict() == maskgit_vqgan.released_model_config().to_dict()


def test_reference_tokens_and_images(converted, golden):
  tokens, images = _tokens_and_images(converted, golden)
  np.testing.assert_array_equal(tokens, golden['tokens'])
  np.testing.assert_allclose(images, golden['decoded'], atol=1e-4)


def test_shortcut_weights_only_fit_the_quirk():
  # The released shortcut kernels map the branch output [C_out -> C_out].
  with pytest.raises(WeightsError, match='shortcut_quirk'):
    maskgit_vqgan.convert_file(TINY, num_groups=4, image_size=16,
                               shortcut_quirk=False)


def test_converted_config_is_a_valid_run_config(converted):
  # write_run itself is tested once, through the CLI, in
  # tests/convert/test_published.py.
  config = published.run_config(converted)
  assert config.model.shortcut_quirk and config.data.image_size == 16


def _write(path, tensors):
  tree = {}
  for name, value in tensors.items():
    node = tree
    *parents, leaf = name.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  path.write_bytes(flax.serialization.msgpack_serialize({'params': tree}))
  return str(path)


def test_missing_wrong_and_unknown_tensors_are_named(tmp_path):
  tensors = maskgit_vqgan.read_msgpack(TINY)
  missing = dict(tensors)
  del missing['decoder.ResBlock_3.GroupNorm_1.scale']
  with pytest.raises(WeightsError, match=r'ResBlock_3\.GroupNorm_1\.scale'):
    maskgit_vqgan.convert_file(_write(tmp_path / 'a', missing), num_groups=4,
                               image_size=16)
  wrong = dict(tensors)
  wrong['encoder.Conv_1.bias'] = np.zeros(5, np.float32)
  with pytest.raises(WeightsError, match=r'encoder/conv_out/bias'):
    maskgit_vqgan.convert_file(_write(tmp_path / 'b', wrong), num_groups=4,
                               image_size=16)
  extra = dict(tensors, **{'decoder.Extra_0.kernel': np.zeros(3, np.float32)})
  with pytest.raises(WeightsError, match=r'decoder\.Extra_0\.kernel'):
    maskgit_vqgan.convert_file(_write(tmp_path / 'c', extra), num_groups=4,
                               image_size=16)
  (tmp_path / 'd').write_bytes(b'not msgpack at all')
  with pytest.raises(WeightsError, match='not a flax msgpack'):
    maskgit_vqgan.read_msgpack(str(tmp_path / 'd'))
  (tmp_path / 'e').write_bytes(
      flax.serialization.msgpack_serialize({'params': [np.zeros(2)]}))
  with pytest.raises(WeightsError, match="expected 'params' to be a dict"):
    maskgit_vqgan.read_msgpack(str(tmp_path / 'e'))


def test_arrays_beside_the_params_are_named(tmp_path, caplog):
  params = {'Conv_0': {'kernel': np.ones((2, 2), np.float32)}}
  (tmp_path / 'ema').write_bytes(
      flax.serialization.msgpack_serialize({
          'params': params,
          'ema_params': params,
          'step': 3
      }))
  tensors = maskgit_vqgan.read_msgpack(str(tmp_path / 'ema'))
  assert list(tensors) == ['Conv_0.kernel']
  assert "['ema_params'] beside them (an EMA copy?) are not read" in caplog.text
