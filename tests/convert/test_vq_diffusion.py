"""The VQ-Diffusion converter against the release's own network
(tests/goldens/make_vq_diffusion_goldens.py runs its DiffusionTransformer.
predict_start in torch): a reduced random checkpoint whose log p(x_0 | x_t)
we must reproduce, the full-size released key list, and wrong files."""

import json
import os

import jax
import numpy as np
import pytest

from tests import paths
from vqlab.convert import published
from vqlab.convert import vq_diffusion
from vqlab.errors import WeightsError
from vqlab.generators import vq_diffusion as vq_diffusion_model
from vqlab.weights import torch_files

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'vq_diffusion_tiny.pth')
SETTINGS = dict(num_heads=2, grid_size=4)  # The tiny network's.


def _tiny_tensors():
  return torch_files.load_state_dict(TINY, lenient=True)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_reference_log_probs(scan_layers):
  with np.load(os.path.join(GOLDENS, 'vq_diffusion_tiny.npz')) as g:
    golden = dict(g)
  converted = vq_diffusion.convert_file(TINY, scan_layers=scan_layers,
                                        **SETTINGS)
  config = converted.model_config
  assert (config.vocab_size, config.num_classes, config.null_class,
          tuple(config.position_grid)) == (12, 5, 'mean', (8, 8))
  model = vq_diffusion_model.build(config)
  apply = jax.jit(model.apply)
  x_t = golden['x_t'].reshape(3, 4, 4)
  t = golden['t'] + 1  # The release counts from 0, vqlab from 1.
  for labels, key in ((golden['labels'], 'log_p'), (None, 'log_p_null')):
    log_p = apply({'params': converted.params}, x_t, t, labels)
    np.testing.assert_allclose(np.swapaxes(log_p, 1, 2), golden[key], atol=2e-5,
                               rtol=1e-5)


def test_a_checkpoint_with_an_ema_converts_its_ema_network():
  """The release's solver saves 'ema': the EMA DiffusionTransformer's state
  dict (network under 'ema.transformer.', its buffers under 'ema.'); the
  buffers' prefix was taken for 'ema.transformer.', and every such file was
  refused."""
  tensors = _tiny_tensors()
  with_ema = dict(tensors)
  model = 'model.transformer.'
  for key, value in tensors.items():
    if key.startswith(model):
      with_ema['ema.' + key[len(model):]] = value * (
          2 if key.endswith('to_logits.1.bias') else 1)
  assert any(k.startswith('ema.log_') for k in with_ema)
  converted = vq_diffusion.convert_state_dict(with_ema, 'tiny', **SETTINGS)
  head = converted.params['head']['bias']
  np.testing.assert_array_equal(
      head, 2 * tensors['model.transformer.transformer.to_logits.1.bias'])


def test_full_size_key_list_converts_to_the_imagenet_network():
  with open(os.path.join(GOLDENS, 'vq_diffusion_keys.json')) as f:
    shapes = json.load(f)
  block = lambda k: int(k.split('.blocks.')[1].split('.')[0])
  assert max(block(k) for k in shapes if '.blocks.' in k) == 23
  zero = np.zeros((), np.float32)
  # Two of its 24 blocks (the others are the same names and shapes).
  tensors = {
      k: np.broadcast_to(zero, s)
      for k, s in shapes.items()
      if '.blocks.' not in k or block(k) < 2
  }
  converted = vq_diffusion.convert_state_dict(tensors, 'released ImageNet')
  full = vq_diffusion.model_config(
      dict(converted.model_config.to_dict(), num_layers=24), False)
  assert (full.vocab_size, full.width, full.mlp_dim,
          full.num_timesteps, full.num_classes, tuple(full.token_shape),
          tuple(full.position_grid)) == (974, 512, 2048, 100, 1000, (16, 16),
                                         (32, 32))
  expected = vq_diffusion.expected_params(full)
  assert 'block_23' in expected
  del expected['block_23']  # Now as many blocks as converted.
  for i in range(2, 23):
    del expected[f'block_{i}']
  published.check_params_match(converted.params, expected, 'ImageNet')


def test_the_learned_null_row_is_taken_when_asked():
  tensors = _tiny_tensors()
  with pytest.raises(WeightsError, match='do not hold 2 classes'):
    vq_diffusion.convert_state_dict(tensors, 'tiny', num_classes=2, **SETTINGS)
  converted = vq_diffusion.convert_state_dict(tensors, 'tiny', num_classes=4,
                                              **SETTINGS)
  assert converted.model_config.null_class == 'row'


def test_a_file_that_is_not_the_network_is_named(tmp_path):
  other = os.path.join(GOLDENS, 'taming_transformer_tiny.ckpt')
  with pytest.raises(WeightsError, match='taming_transformer_tiny.ckpt: no '):
    vq_diffusion.convert_file(other)
  tensors = {k: v for k, v in _tiny_tensors().items() if '.mlp.' not in k}
  with pytest.raises(WeightsError, match="tiny: not the release's"):
    vq_diffusion.convert_state_dict(tensors, 'tiny', **SETTINGS)
  missing = tmp_path / 'missing.pth'
  with pytest.raises(WeightsError, match='missing.pth'):
    vq_diffusion.convert_file(str(missing))
