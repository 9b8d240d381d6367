"""The MaskGIT transformer converter against the released flax module
(tests/goldens/make_maskgit_transformer_goldens.py runs
maskgit/nets/maskgit_transformer.py itself): the full-size released key
list, and a reduced random checkpoint whose logits we must reproduce."""

import json
import os

import jax
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab import generators
from vqlab.convert import maskgit_transformer
from vqlab.convert import maskgit_vqgan
from vqlab.errors import WeightsError

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'maskgit_transformer_tiny.msgpack')
CODES = 32  # The tiny MaskGIT VQGAN's (make_maskgit_goldens.py).


def _convert(tensors=None, **options):
  tensors = maskgit_vqgan.read_msgpack(TINY) if tensors is None else tensors
  options = dict(dict(codebook_size=CODES, image_size=16), **options)
  return maskgit_transformer.convert_state_dict(tensors, 'tiny', **options)


def test_full_size_key_list_converts():
  with open(os.path.join(GOLDENS, 'maskgit_transformer_keys.json')) as f:
    shapes = json.load(f)
  zero = np.zeros((), np.float32)
  tensors = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}
  # Every tensor consumed and every param filled, or this raises.
  out = maskgit_transformer.convert_state_dict(tensors, 'released transformer',
                                               codebook_size=1024,
                                               image_size=256,
                                               scan_layers=False)
  config = out.model_config
  assert (config.vocab_size, config.num_classes) == (1024, 1000)
  assert tuple(config.token_shape) == (16, 16)
  assert (config.width, config.num_layers, config.num_heads,
          config.mlp_dim) == (768, 24, 16, 3072)
  assert config.block_style == 'bert' and config.tied_heads
  # The class table: the release's 1000 class rows and the null class.
  assert out.params['class_embed']['embedding'].shape == (1001, 768)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_reference_logits(scan_layers):
  with np.load(os.path.join(GOLDENS, 'maskgit_transformer_goldens.npz')) as g:
    input_ids, reference = g['input_ids'], g['logits']
  converted = _convert(scan_layers=scan_layers)
  model = generators.build(converted.model_config)
  # MaskGIT's sequence: [label + K, codes with [MASK] = -1]; vqlab's: labels
  # apart, [MASK] = K, logits of the K codes only (what inference keeps).
  labels = input_ids[:, 0] - CODES
  tokens = np.where(input_ids[:, 1:] < 0, CODES, input_ids[:, 1:])
  logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)({
      'params': converted.params
  }, tokens.reshape(3, 4, 4), labels)
  np.testing.assert_allclose(
      np.asarray(logits).reshape(3, 16, CODES), reference[:, 1:, :CODES],
      atol=5e-5, rtol=1e-5)


def test_checkpoints_of_another_tokenizer_or_kind_are_named(tmp_path):
  with pytest.raises(WeightsError, match='does not hold the tokenizer.s 64 '
                     'codes'):
    _convert(codebook_size=64)
  tensors = maskgit_vqgan.read_msgpack(TINY)
  del tensors['TransformerLayer_1.Mlp_0.layer_output_ln.scale']
  with pytest.raises(
      WeightsError, match=r'TransformerLayer_1\.Mlp_0\.'
      r'layer_output_ln\.scale'):
    _convert(tensors)
  with pytest.raises(WeightsError, match='word_embeddings.*right kind of '
                     'checkpoint'):
    _convert(
        maskgit_vqgan.read_msgpack(os.path.join(GOLDENS,
                                                'maskgit_tiny.msgpack')))
  with pytest.raises(WeightsError, match='needs --tokenizer'):
    maskgit_transformer.convert_file(TINY, tokenizer='')
