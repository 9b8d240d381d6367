"""Open-MAGVIT2 converter: the released key list at full size, and a reduced
random VQModel against a float64 re-implementation of the published code
(make_open_magvit2_goldens.py)."""

import json

import jax
import numpy as np
import pytest

from tests import paths
from vqlab import tokenizers
from vqlab.convert import open_magvit2
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.weights import torch_files

_GOLDENS = paths.GOLDENS
_TINY = str(_GOLDENS / 'open_magvit2_tiny.ckpt')
# The float64 reference's decoder output vs vqlab's float32: 9.4e-6 (with
# flax's one-pass variance in the GroupNorms, vqlab.nn.norms, 4.2e-4; torch
# float32 is 1.6e-3 from the reference on this random decoder).
_ATOL = 5e-5


@pytest.fixture(scope='module')
def golden():
  with np.load(_GOLDENS / 'open_magvit2_tiny.npz') as npz:
    return dict(npz)


@pytest.fixture(scope='module')
def tiny_state():
  return torch_files.load_state_dict(_TINY, lenient=True)


def _run(converted, images, tokens):
  model = tokenizers.build(converted.model_config)

  @jax.jit
  def run(variables, images, tokens):
    recon, out = model.apply(variables, images)
    decoded = model.apply(variables, tokens, method=model.decode_indices)
    return out.indices, recon, decoded

  return run({'params': converted.params}, images, tokens)


def test_released_key_list_converts_completely():
  with open(_GOLDENS / 'open_magvit2_keys.json') as f:
    shapes = json.load(f)['imagenet_256_L']
  # A distinct value per tensor, in int16 (which the converter keeps, where
  # it casts floats to float32): its 230M copied and stacked values then
  # take half the time of float32's.
  assert len(shapes) < 2**15
  state = {
      k: np.broadcast_to(np.int16(i), s)
      for i, (k, s) in enumerate(shapes.items())
  }
  out = open_magvit2.convert_state_dict(state)  # Checks keys and params.
  config = out.model_config
  assert config.channels == 128 and config.num_res_blocks == 4
  assert tuple(config.channel_multipliers) == (1, 1, 2, 2, 4)
  assert config.quantizer.codebook_size == 2**18
  assert tuple(config.quantizer.factor_bits) == (6, 12)  # Their generators'.
  assert 'EMA' in out.source
  # --scan_blocks: each stage's same-width res blocks stacked in order.
  scanned = open_magvit2.convert_state_dict(state, scan_blocks=True)
  assert scanned.model_config.scan_blocks
  assert 'ResBlock3D_0_to_3' in scanned.params['encoder']
  jax.tree.map(np.testing.assert_array_equal, stack.unstack(scanned.params),
               out.params)


@pytest.mark.parametrize('factor_bits', ['9,9', '6,12', 'none'])
def test_tokens_and_images_match_the_reference(golden, factor_bits):
  converted = open_magvit2.convert_file(_TINY, factor_bits=factor_bits,
                                        image_size=32)
  # The reference's factorized tokens are its 9 + 9 split; (6, 12) is its
  # pre_mask / post_mask split of the plain index's bits.
  want = {
      '9,9': golden['factorized'],
      '6,12': np.stack([golden['tokens'] & 63, golden['tokens'] >> 6], -1),
      'none': golden['tokens']
  }[factor_bits]
  tokens, recon, decoded = _run(converted, golden['images'], want)
  np.testing.assert_array_equal(np.asarray(tokens), want)
  assert len(np.unique(golden['tokens'])) > 400
  np.testing.assert_allclose(recon, golden['reconstructions'], atol=_ATOL)
  np.testing.assert_allclose(decoded, golden['decoded'], atol=_ATOL)


def test_raw_weights_differ_from_ema(golden):
  converted = open_magvit2.convert_file(_TINY, ema=False, factor_bits='9,9',
                                        image_size=32)
  assert 'raw' in converted.source
  _, recon, _ = _run(converted, golden['images'], golden['factorized'])
  assert np.abs(np.asarray(recon) - golden['reconstructions']).max() > 0.1


def test_converted_config_is_a_valid_run_config(golden):
  # write_run and the CLI are tested once, end to end, in
  # tests/convert/test_published.py.
  converted = open_magvit2.convert_file(_TINY, image_size=32)
  config = published.run_config(converted)
  assert config.model.name == 'magvit2'
  assert tuple(config.model.quantizer.factor_bits) == (6, 12)
  with pytest.raises(
      WeightsError, match=r'--factor_bits=9,8: need bits per '
      r"sub-token that sum to the checkpoint's 18 LFQ bits"):
    open_magvit2.convert_file(_TINY, factor_bits='9,8')


def test_missing_ema_tensor_is_named(tiny_state):
  state = dict(tiny_state)
  del state['model_ema.decoderadaptive0gammaweight']
  with pytest.raises(WeightsError,
                     match='model_ema.decoderadaptive0gammaweight'):
    open_magvit2.convert_state_dict(state)


def test_unknown_tensor_is_named(tiny_state):
  state = dict(tiny_state, **{'decoder.extra.weight': np.zeros((2, 2))})
  with pytest.raises(WeightsError, match=r'decoder\.extra\.weight'):
    open_magvit2.convert_state_dict(state, ema=False)


def test_wrong_shape_is_named(tiny_state):
  state = dict(tiny_state)
  state['decoder.adaptive.1.beta.weight'] = np.zeros((32, 17), np.float32)
  with pytest.raises(WeightsError, match='AdaptiveGroupNorm_0/shift/kernel'):
    open_magvit2.convert_state_dict(state, ema=False)


def test_deep_models_convert():
  # f = 32 with the pooled adaptive norm, which needs a latent of 2x2 or more.
  config = tokenizers.default_config('magvit2')
  config.channels, config.num_groups = 8, 4
  config.channel_multipliers = (1,) * 6
  config.num_temporal_downsamples = 0
  config.adaptive_norm = 'pooled'
  params = published.expected_tokenizer_params(config)
  assert 'decoder' in params
