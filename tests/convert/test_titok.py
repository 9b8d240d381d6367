"""The TiTok converter against the PyTorch reference of
tests/goldens/make_titok_goldens.py: the released key lists (L-32, B-64,
S-128), and a reduced random checkpoint whose tokens and decoded images
(through the embedded MaskGIT VQGAN decoder) we must reproduce."""

import json
import os

import jax
import numpy as np
import pytest

from configs.titok import s128
from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.convert import titok
from vqlab.errors import WeightsError
from vqlab.weights import safetensors_files

GOLDENS = str(paths.GOLDENS)
TINY = os.path.join(GOLDENS, 'titok_tiny.bin')


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDENS, 'titok_goldens.npz')) as data:
    return dict(data)


@pytest.fixture(scope='module')
def converted(golden):
  return titok.convert_file(TINY, num_heads=int(golden['num_heads']),
                            num_groups=int(golden['num_groups']))


@pytest.fixture(scope='module')
def released_keys():
  with open(os.path.join(GOLDENS, 'titok_keys.json')) as f:
    return json.load(f)


def test_released_variants_are_read_from_shapes(released_keys):
  for name, size, tokens in (('titok_l32', 'L', 32), ('titok_b64', 'B', 64),
                             ('titok_s128', 'S', 128)):
    shapes = released_keys[name]
    sd = published.StateDict(
        {
            k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()
        }, name)
    config = titok.model_config(sd)
    assert (config.model_size, config.num_latent_tokens) == (size, tokens)
    assert (config.image_size, config.patch_size) == (256, 16)
    assert config.decoder_output == 'proxy_pixels'
    assert (config.quantizer.codebook_size,
            config.quantizer.embedding_dim) == (4096, 12)
    assert tuple(config.pixel_decoder.channel_multipliers) == (1, 1, 2, 2, 4)


def test_paper_configs_build_the_released_architecture(released_keys):
  # Every param of the released TiTok-S-128 (its pixel VQGAN aside) has the
  # shape of the paper config's: class tokens, the proxy head's hidden layer.
  shapes = released_keys['titok_s128']
  released = titok.convert_state_dict(
      {
          k: np.zeros(s, np.float32) for k, s in shapes.items()
      }, 'S-128', scan_layers=True).params
  model = tokenizers.build(s128.get_config('1').model)
  images = jax.ShapeDtypeStruct((1, 256, 256, 3), np.float32)
  ours = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  flat = lambda tree: {
      k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)
  }
  del released['pixel_vqgan']
  assert flat(ours) == flat(released)


def test_full_size_s128_converts(released_keys):
  shapes = released_keys['titok_s128']
  tensors = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  # Every tensor consumed and every param filled, or this raises.
  out = titok.convert_state_dict(tensors, 'TiTok-S-128')
  assert out.model_config.proxy_head_hidden == 1024
  assert out.params['pixel_vqgan']['quantizer']['codebook'].shape == (1024, 256)


def _tokens_and_images(converted, golden):
  model = tokenizers.build(converted.model_config)

  def run(variables, images, tokens):
    return (model.apply(variables, images, method=model.encode)[0],
            model.apply(variables, tokens, method=model.decode_indices))

  tokens, images = jax.jit(run, compiler_options=FAST_COMPILE)({
      'params': converted.params
  }, golden['images'], golden['tokens'])
  return np.asarray(tokens), np.asarray(images)


def test_reference_tokens_and_images(converted, golden):
  tokens, images = _tokens_and_images(converted, golden)
  np.testing.assert_array_equal(tokens, golden['tokens'])
  np.testing.assert_allclose(images, golden['decoded'], atol=1e-4)


def test_safetensors_file_converts_the_same(converted, golden, tmp_path):
  path = str(tmp_path / 'model.safetensors')
  safetensors_files.save_safetensors(path, titok.read_file(TINY))
  out = titok.convert_file(path, num_heads=int(golden['num_heads']),
                           num_groups=int(golden['num_groups']))
  for a, b in zip(jax.tree.leaves(out.params),
                  jax.tree.leaves(converted.params)):
    np.testing.assert_array_equal(a, b)


def test_converted_config_is_a_valid_run_config(converted):
  # write_run itself is tested once, through the CLI, in
  # tests/convert/test_published.py.
  config = published.run_config(converted)
  assert config.model.decoder_output == 'proxy_pixels'
  assert not config.loss.adaptive_weight  # Its layout has no pixel head.


def test_missing_wrong_and_unknown_tensors_are_named(golden):
  tensors = titok.read_file(TINY)
  kwargs = dict(num_heads=int(golden['num_heads']),
                num_groups=int(golden['num_groups']))
  missing = dict(tensors)
  del missing['decoder.transformer.1.mlp.c_proj.bias']
  with pytest.raises(WeightsError, match=r'transformer\.1\.mlp\.c_proj\.bias'):
    titok.convert_state_dict(missing, 'tiny', **kwargs)
  wrong = dict(tensors)
  wrong['pixel_decoder.norm_out.bias'] = np.zeros(3, np.float32)
  with pytest.raises(WeightsError, match=r'decoder/norm_out/bias'):
    titok.convert_state_dict(wrong, 'tiny', **kwargs)
  # Attention weights of another shape: numpy's reshape error before.
  cut = dict(tensors)
  key = 'encoder.transformer.0.attn.in_proj_weight'
  cut[key] = tensors[key][:, :-1]
  with pytest.raises(
      WeightsError, match=r'^tiny: encoder\.transformer\.0\.'
      r'attn\.in_proj_weight has shape'):
    titok.convert_state_dict(cut, 'tiny', **kwargs)
  key = 'decoder.transformer.1.attn.out_proj.weight'
  cut = dict(tensors, **{key: tensors[key][:-1, :-1]})
  with pytest.raises(
      WeightsError, match=r'^tiny: decoder\.transformer\.1\.'
      r'attn\.out_proj has a weight of shape'):
    titok.convert_state_dict(cut, 'tiny', **kwargs)
  extra = dict(tensors, **{'encoder.extra.weight': np.zeros(2, np.float32)})
  with pytest.raises(WeightsError, match=r'encoder\.extra\.weight'):
    titok.convert_state_dict(extra, 'tiny', **kwargs)
  modern = dict(
      tensors,
      **{'decoder.conv_out.weight': np.zeros((3, 3, 3, 3), np.float32)})
  with pytest.raises(WeightsError, match='is_legacy'):
    titok.convert_state_dict(modern, 'tiny', **kwargs)
  nested = {f'model.{k}': v for k, v in tensors.items()}
  with pytest.raises(WeightsError, match=r"tensors start with \['model'\]"):
    titok.convert_state_dict(nested, 'tiny', **kwargs)
  no_levels = {
      k: v for k, v in tensors.items() if not k.startswith('pixel_decoder.up.')
  }
  with pytest.raises(WeightsError, match='without pixel_decoder.up.<i> blocks'):
    titok.convert_state_dict(no_levels, 'tiny', **kwargs)
  # Stage 1: converted, then refused as a run ('use task titok_proxy').
  stage_1 = {k: v for k, v in tensors.items() if not k.startswith('pixel_')}
  with pytest.raises(WeightsError, match='a stage-1 checkpoint'):
    titok.convert_state_dict(stage_1, 'tiny', **kwargs)


def test_scanned_conversion_gives_the_reference_tokens_and_images(golden):
  # --scan_layers: both ViTs' blocks stacked for nn.scan, same numbers.
  scanned = titok.convert_file(TINY, num_heads=int(golden['num_heads']),
                               num_groups=int(golden['num_groups']),
                               scan_layers=True)
  assert scanned.model_config.scan_layers
  assert 'block_0' not in scanned.params['encoder']['transformer']
  tokens, images = _tokens_and_images(scanned, golden)
  np.testing.assert_array_equal(tokens, golden['tokens'])
  np.testing.assert_allclose(images, golden['decoded'], atol=1e-4)
