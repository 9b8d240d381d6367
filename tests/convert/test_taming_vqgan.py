"""taming VQGAN converter: the released key lists at full size, and a reduced
random VQModel against the reference package (make_taming_goldens.py)."""

import json

import jax
import numpy as np
import pytest

from tests import paths
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.convert import taming_vqgan
from vqlab.errors import WeightsError
from vqlab.weights import torch_files

_GOLDENS = paths.GOLDENS
_TINY = str(_GOLDENS / 'taming_tiny.ckpt')


@pytest.fixture(scope='module')
def golden():
  with np.load(_GOLDENS / 'taming_tiny.npz') as npz:
    return dict(npz)


@pytest.fixture(scope='module')
def tiny_state():
  return torch_files.load_state_dict(_TINY, lenient=True)


@pytest.fixture(scope='module')
def converted():
  return taming_vqgan.convert_file(_TINY, image_size=32)


@pytest.mark.parametrize('variant,codes', [('vqgan_imagenet_f16_1024', 1024),
                                           ('vqgan_imagenet_f16_16384', 16384)])
def test_released_key_list_converts_completely(variant, codes):
  with open(_GOLDENS / 'taming_keys.json') as f:
    shapes = json.load(f)[variant]
  zero = np.zeros((), np.float32)
  state = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}
  # convert_state_dict checks that every non-loss key is consumed and that the
  # params equal the model's eval_shape tree.
  out = taming_vqgan.convert_state_dict(state)
  config = out.model_config
  assert config.channels == 128
  assert tuple(config.channel_multipliers) == (1, 1, 2, 2, 4)
  assert config.num_res_blocks == 2 and config.z_channels == 256
  assert tuple(config.attention_levels) == (4,) and config.mid_attention
  assert config.quantizer.codebook_size == codes
  assert config.quantizer.embedding_dim == 256
  assert config.quantizer.beta_on_codebook  # taming's own loss placement.
  assert out.image_size == 256 and 'f16' in out.source
  assert any(k.startswith('loss.') for k in shapes)


def test_tokens_and_images_match_the_reference(converted, golden):
  model = tokenizers.build(converted.model_config)

  @jax.jit
  def run(variables, images, tokens):
    recon, out = model.apply(variables, images)
    decoded = model.apply(variables, tokens, method=model.decode_indices)
    return out.indices, recon, decoded

  tokens, recon, decoded = run({'params': converted.params}, golden['images'],
                               golden['tokens'])
  np.testing.assert_array_equal(np.asarray(tokens), golden['tokens'])
  assert len(np.unique(golden['tokens'])) > 32
  np.testing.assert_allclose(recon, golden['reconstructions'], atol=1e-4)
  np.testing.assert_allclose(decoded, golden['decoded'], atol=1e-4)


def test_converted_config_is_a_valid_run_config(converted):
  # write_run and the CLI are tested once, end to end, in
  # tests/convert/test_published.py.
  config = published.run_config(converted)
  assert config.model.name == 'vqgan' and config.data.image_size == 32


def test_missing_tensor_is_named(tiny_state):
  state = dict(tiny_state)
  del state['decoder.up.0.block.1.conv1.bias']
  with pytest.raises(WeightsError,
                     match=r'decoder\.up\.0\.block\.1\.conv1\.bias'):
    taming_vqgan.convert_state_dict(state)
  # The one tensor the mid attention was inferred from: "19 tensors were not
  # converted" before.
  state = dict(tiny_state)
  del state['encoder.mid.attn_1.q.weight']
  with pytest.raises(WeightsError,
                     match=r"missing tensor 'encoder\.mid\.attn_1\.q\.weight'"):
    taming_vqgan.convert_state_dict(state)


def test_unknown_tensor_is_named(tiny_state):
  state = dict(
      tiny_state,
      **{'encoder.down.0.block.0.temb_proj.weight': np.zeros((64, 512))})
  with pytest.raises(WeightsError,
                     match=r'encoder\.down\.0\.block\.0\.temb_proj'):
    taming_vqgan.convert_state_dict(state)


def test_wrong_shape_is_named(tiny_state):
  state = dict(tiny_state)
  weight = state['decoder.mid.block_2.conv1.weight']
  state['decoder.mid.block_2.conv1.weight'] = np.zeros(
      weight.shape[:2] + (1, 1), weight.dtype)
  with pytest.raises(WeightsError, match=r'decoder/ResBlock2D_1/conv1/kernel'):
    taming_vqgan.convert_state_dict(state)


def test_not_a_taming_checkpoint():
  with pytest.raises(WeightsError, match='encoder.conv_in.weight'):
    taming_vqgan.convert_state_dict({'model.weight': np.zeros((2, 2))})


def test_deep_models_convert():
  # Params of a 64x-downsampling VQGAN, from an image it can take.
  config = tokenizers.default_config('vqgan')
  config.channels, config.num_groups = 8, 4
  config.channel_multipliers = (1,) * 7
  params = published.expected_tokenizer_params(config)
  assert sum(k.startswith('Downsample2D') for k in params['encoder']) == 6
