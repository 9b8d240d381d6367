"""The TiTok generator converter against the released ImageBert
(tests/goldens/make_titok_generator_goldens.py runs it on HF transformers'
BertModel): the full-size released key list, and a reduced random checkpoint
whose logits we must reproduce."""

import json
import os

import jax
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab import generators
from vqlab.convert import maskgit_vqgan
from vqlab.convert import published
from vqlab.convert import titok
from vqlab.convert import titok_generator
from vqlab.errors import WeightsError

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'titok_generator_tiny.safetensors')
CODES = 16  # The tiny TiTok's (make_titok_goldens.py).


def _convert(tensors=None, **options):
  tensors = titok.read_file(TINY) if tensors is None else tensors
  options = dict(dict(codebook_size=CODES, image_size=32, num_heads=4),
                 **options)
  return titok_generator.convert_state_dict(tensors, 'tiny', **options)


def test_full_size_key_list_converts_to_the_configs_network():
  with open(os.path.join(GOLDENS, 'titok_generator_keys.json')) as f:
    shapes = json.load(f)
  zero = np.zeros((), np.float32)
  tensors = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}
  # Every tensor consumed and every param filled, or this raises.
  out = titok_generator.convert_state_dict(tensors, 'released generator',
                                           codebook_size=4096, image_size=256,
                                           scan_layers=False)
  config = out.model_config
  assert (config.vocab_size, config.num_classes) == (4096, 1000)
  assert tuple(config.token_shape) == (32,)
  assert (config.width, config.num_layers, config.num_heads,
          config.mlp_dim) == (768, 24, 16, 3072)
  # The class table: the 1000 classes and the dropped label (null class).
  assert out.params['class_embed']['embedding'].shape == (1001, 768)
  # The network configs/maskgit/titok.py:l32 trains, sampled as the release.
  run = published.generator_run_config(out, titok_generator.run_settings(out))
  from configs.maskgit import titok as titok_config  # pylint: disable=g-import-not-at-top
  trained = titok_config.get_config('l32')
  for key in ('vocab_size', 'token_shape', 'num_classes', 'width', 'num_layers',
              'num_heads', 'mlp_dim', 'block_style', 'tied_heads',
              'exact_gelu'):
    assert run.model[key] == trained.model[key], key
  for key in ('decoding', 'num_steps', 'choice_temperature', 'guidance_scale',
              'guidance_schedule'):
    assert run.sample[key] == trained.sample[key], key
  for key in ('mask_schedule', 'mask_rounding', 'label_drop',
              'unmasked_weight'):
    assert run.loss[key] == trained.loss[key], key


def test_reference_logits():
  with np.load(os.path.join(GOLDENS, 'titok_generator_goldens.npz')) as g:
    tokens, conditions, reference = g['tokens'], g['conditions'], g['logits']
  converted = _convert()
  assert converted.model_config.scan_layers
  model = generators.build(converted.model_config)
  # The release's dropped label (condition C) is vqlab's null class, id C.
  logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)({
      'params': converted.params
  }, tokens, conditions)
  np.testing.assert_allclose(logits, reference, atol=5e-5, rtol=1e-5)
  # A token count the release published no sampler for: TiTok's decoding,
  # guidance left off (a 'linear' schedule of no guidance was refused).
  run = published.generator_run_config(converted,
                                       titok_generator.run_settings(converted))
  assert run.sample.decoding == 'titok' and run.sample.guidance_scale == 0


def test_checkpoints_of_another_tokenizer_or_kind_are_named():
  with pytest.raises(WeightsError, match='does not predict the tokenizer.s 64 '
                     'codes'):
    _convert(codebook_size=64)
  with pytest.raises(
      WeightsError, match='5 heads do not divide width 32; '
      'pass --num_heads'):
    _convert(num_heads=5)
  tensors = titok.read_file(TINY)
  del tensors['model.encoder.layer.1.output.LayerNorm.weight']
  with pytest.raises(WeightsError,
                     match=r'model\.encoder\.layer\.1\.output\.LayerNorm'):
    _convert(tensors)
  # A layer of another width: numpy's reshape error, or np.stack's for
  # the scanned layers, before.
  tensors = titok.read_file(TINY)
  key = next(k for k in tensors if k.endswith('layer.1.attention.self.query.'
                                              'weight'))
  tensors[key] = tensors[key][:-1]
  with pytest.raises(
      WeightsError, match=r'attention\.self\.query has a '
      r'weight of shape \(31, 32\)'):
    _convert(tensors)
  tensors = dict(titok.read_file(TINY), extra=np.zeros(3, np.float32))
  with pytest.raises(WeightsError, match='1 tensors were not converted'):
    _convert(tensors)
  # Older transformers saved the position ids buffer: not a parameter.
  tensors = titok.read_file(TINY)
  tensors[titok_generator._POSITION_IDS] = np.arange(9)[None]  # pylint: disable=protected-access
  _convert(tensors)
  with pytest.raises(WeightsError, match='word_embeddings.*right kind of '
                     'checkpoint'):
    _convert(
        maskgit_vqgan.read_msgpack(
            os.path.join(GOLDENS, 'maskgit_transformer_tiny.msgpack')))
  with pytest.raises(WeightsError, match='needs --tokenizer'):
    titok_generator.convert_file(TINY, tokenizer='')
