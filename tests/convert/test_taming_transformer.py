"""The taming transformer converter against taming's own minGPT
(tests/goldens/make_taming_transformer_goldens.py runs
taming/modules/transformer/mingpt.py in torch): the full-size released key
list, a reduced random checkpoint whose logits we must reproduce, and the
run's sampling settings."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab import generators
from vqlab.convert import published
from vqlab.convert import taming_transformer
from vqlab.convert import taming_vqgan
from vqlab.errors import WeightsError
from vqlab.weights import torch_files

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'taming_transformer_tiny.ckpt')
# The tiny taming VQGAN's (make_taming_goldens.py) codes; the tiny GPT's
# heads and classes.
SETTINGS = dict(codebook_size=64, image_size=32, num_heads=4, num_classes=3)


def _convert(tensors=None, **options):
  tensors = (torch_files.load_state_dict(TINY, lenient=True)
             if tensors is None else tensors)
  return taming_transformer.convert_state_dict(tensors, 'tiny',
                                               **dict(SETTINGS, **options))


def test_full_size_key_list_converts():
  with open(os.path.join(GOLDENS, 'taming_transformer_keys.json')) as f:
    shapes = json.load(f)
  # Two of its 48 blocks (each block's tensors are the same names and
  # shapes; all 48 would take 5.6 GB here).
  blocks = [int(k.split('.')[2]) for k in shapes if '.blocks.' in k]
  assert max(blocks) == 47
  zero = np.zeros((), np.float32)
  tensors = {
      k: np.broadcast_to(zero, s)
      for k, s in shapes.items()
      if '.blocks.' not in k or int(k.split('.')[2]) < 2
  }
  # Every tensor consumed and every param filled, or this raises.
  out = taming_transformer.convert_state_dict(
      tensors, 'released cin transformer', codebook_size=16384, image_size=256,
      num_heads=24, num_classes=1000, scan_layers=False)
  config = out.model_config
  assert (config.vocab_size, config.length, config.num_classes) == (16384, 256,
                                                                    1000)
  assert (config.width, config.num_layers, config.mlp_dim) == (1536, 2, 6144)
  assert config.block_style == 'taming' and config.condition == 'class'


def test_reference_logits():
  with np.load(os.path.join(GOLDENS, 'taming_transformer_goldens.npz')) as g:
    golden = dict(g)
  converted = _convert()
  model = generators.build(converted.model_config)
  logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)({
      'params': converted.params
  }, golden['codes'], golden['labels'])
  np.testing.assert_allclose(logits, golden['logits'], atol=2e-4, rtol=1e-5)


def test_what_no_tensor_holds_comes_from_the_project_yaml_or_is_asked(tmp_path):
  run = tmp_path / 'cin_transformer'
  (run / 'checkpoints').mkdir(parents=True)
  ckpt = str(run / 'checkpoints' / 'last.ckpt')
  shutil.copy(TINY, ckpt)
  with pytest.raises(WeightsError, match='no --num_heads given.*n_head'):
    taming_transformer.convert_file(ckpt, tokenizer='unused')
  (run / 'configs').mkdir()
  (run / 'configs' / '2021-04-03T19-39-50-project.yaml').write_text(
      'model:\n  params:\n    transformer_config:\n      params:\n'
      '        n_head: 4\n    cond_stage_config:\n'
      '      target: taming.modules.util.Labelator\n      params:\n'
      '        n_classes: 3\n')
  assert taming_transformer.project_settings(ckpt) == {
      'num_heads': 4,
      'num_classes': 3
  }
  with pytest.raises(
      WeightsError, match='64 rows, but the tokenizer.s '
      'codebook has 1024 codes'):
    _convert(codebook_size=1024)
  with pytest.raises(WeightsError, match='5 heads do not divide the width '
                     '32'):
    _convert(num_heads=5)
  tensors = torch_files.load_state_dict(TINY, lenient=True)
  permuted = dict(tensors, **{'permuter.forward_shuffle_idx': np.arange(4)})
  with pytest.raises(WeightsError, match='identity permuter'):
    _convert(permuted)
  spatial = dict(tensors, **{'cond_stage_model.encoder.w': np.zeros(2)})
  with pytest.raises(WeightsError, match='spatially conditioned'):
    _convert(spatial)
  # An unconditional release starts from its start token's row.
  unconditional = _convert(num_classes=0, sos_token=5)
  np.testing.assert_array_equal(unconditional.params['start_embedding'],
                                tensors['transformer.tok_emb.weight'][5])


def test_its_first_stage_is_the_tokenizer_and_no_other_vqgan_is():
  own = taming_vqgan.convert_file(TINY, image_size=32)
  vqgan = taming_vqgan.convert_file(os.path.join(GOLDENS, 'taming_tiny.ckpt'),
                                    image_size=32)
  jax.tree.map(np.testing.assert_array_equal, own.params, vqgan.params)
  tensors = torch_files.load_state_dict(TINY, lenient=True)
  taming_transformer.check_first_stage(tensors, own.params, TINY, 'own')
  other = jax.tree.map(lambda x: x, own.params)
  other['quantizer']['codebook'] = other['quantizer']['codebook'][::-1]
  with pytest.raises(
      WeightsError, match="not on other's codebook: convert "
      'that VQGAN from this file'):
    taming_transformer.check_first_stage(tensors, other, TINY, 'other')


def test_the_run_samples_as_the_release():
  # Writing the run and sampling it are published.write_generator_run's,
  # tested through MaskGIT's converted transformer (test_published.py).
  for num_classes, (top_k, top_p) in ((3, (600, 0.92)), (0, (250, 1.0))):
    converted = _convert(num_classes=num_classes)
    condition = converted.model_config.condition
    config = published.generator_run_config(
        converted, taming_transformer.RUN_SETTINGS[condition])
    assert (config.sample.top_k, config.sample.top_p,
            config.sample.temperature) == (top_k, top_p, 1.0)
    assert config.model.block_style == 'taming'
    if condition == 'class':
      assert config.loss.label_drop == 0  # No null class to drop labels to.
