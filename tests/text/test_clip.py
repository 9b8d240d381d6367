"""The CLIP text encoder and its BPE tokenizer against transformers goldens
(tests/goldens/make_clip_goldens.py): a tiny random CLIPTextModel with a
tiny CLIP-format vocabulary, stored in tests/goldens/clip_tiny/."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab.errors import WeightsError
from vqlab.text import clip
from vqlab.text import clip_bpe
from vqlab.weights import safetensors_files

GOLDENS = str(paths.GOLDENS)
MODEL_DIR = os.path.join(GOLDENS, 'clip_tiny')


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDENS, 'clip_goldens.npz')) as data:
    return dict(data)


@pytest.fixture(scope='module')
def loaded():
  return clip.load_clip_text(MODEL_DIR)


@pytest.fixture(scope='module')
def states(golden, loaded):
  """(states [N, 77, D], pooled [N, D]) of the golden ids, one compile."""
  module, params, _ = loaded
  eos = module.config.eos_token_id

  def forward(params, ids, mask):
    out = module.apply(params, ids, mask)
    return out, clip.pool(out, ids, eos)

  out, pooled = jax.jit(forward,
                        compiler_options=FAST_COMPILE)(params, golden['ids'],
                                                       golden['mask'])
  return np.asarray(out), np.asarray(pooled)


# --------------------------------------------------------------- tokens ---


def test_token_ids_match_reference(golden, loaded):
  _, _, tokenizer = loaded
  texts = [str(t) for t in golden['texts']]
  ids, mask = tokenizer.encode(texts)
  assert ids.dtype == np.int32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(ids, golden['ids'])
  np.testing.assert_array_equal(mask, golden['mask'])
  # The long text is truncated to 77 ids ending in <|endoftext|>; '' is
  # start, end, then padding with the pad token (<|endoftext|> here).
  assert ids.shape[1] == 77 and mask.sum(1).max() == 77
  assert ids[mask.sum(1).argmax(), -1] == tokenizer.eos_id
  empty = texts.index('')
  assert list(
      ids[empty][:3]) == [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]
  assert tokenizer.pad_id == tokenizer.eos_id


def test_tricky_tokenization_matches_reference(golden, loaded):
  _, _, tokenizer = loaded
  for text, row in zip(golden['tokenize_texts'], golden['tokenize_ids']):
    ours = tokenizer.encode_one(str(text))
    reference = [int(i) for i in row if i >= 0]
    assert ours == reference, (
        f'{str(text)!r}: {tokenizer.convert_ids_to_tokens(ours)} != '
        f'{tokenizer.convert_ids_to_tokens(reference)}')


def test_encode_pad_to_truncation_and_decode(loaded):
  _, _, tokenizer = loaded
  ids, mask = tokenizer.encode(['a red car', 'one two three four five six'],
                               pad_to=6)
  assert ids.shape == mask.shape == (2, 6)
  assert mask[1].all() and ids[1, -1] == tokenizer.eos_id
  assert ids[0, 0] == tokenizer.bos_id and (ids[0, ~mask[0]]
                                            == tokenizer.pad_id).all()
  ids, mask = tokenizer.encode('A  Photo of a CAT!', max_length=77)
  assert ids.shape[0] == 1 and mask.all()
  assert tokenizer.decode(ids[0]) == 'a photo of a cat !'
  with pytest.raises(ValueError, match=r'pad_to must be >= 2 .* got 1'):
    tokenizer.encode('a cat', pad_to=1)
  for texts in (b'a cat', None, ['a', 3], {'a cat': 1}):
    with pytest.raises(
        ValueError, match='texts must be a string or a '
        'sequence of strings'):
      tokenizer.encode(texts)
  np.testing.assert_array_equal(
      tokenizer.encode(np.array('a cat'))[0],
      tokenizer.encode('a cat')[0])
  with pytest.raises(ValueError, match='pad_to must be an int or None'):
    tokenizer.encode('a cat', pad_to=2.5)


def test_bpe_rules():
  chars = clip_bpe.bytes_to_unicode()
  assert len(chars) == 256 and len(set(chars.values())) == 256
  assert chars[ord(' ')] == '\u0120' and chars[ord('a')] == 'a'
  tokens = list(chars.values())
  vocab = {
      t: i for i, t in
      enumerate(tokens + [t + '</w>' for t in tokens] +
                ['ab', 'ab</w>', 'abab</w>', clip_bpe.BOS, clip_bpe.EOS])
  }
  merges = [('a', 'b'), ('a', 'b</w>'), ('ab', 'ab</w>')]
  tokenizer = clip_bpe.ClipTokenizer(vocab, merges)
  assert tokenizer.tokenize('abab') == ['abab</w>']
  assert tokenizer.tokenize('ababab') == ['ab', 'abab</w>']
  assert tokenizer.tokenize("AB's 12") == [
      'ab</w>', "'", 's</w>', '1</w>', '2</w>'
  ]
  # Special tokens: matched in the raw text unless normalized_specials; a
  # special token's text left in a word splits as ByteLevel re-splits it.
  assert tokenizer.tokenize('ab<|endoftext|>') == ['ab</w>', clip_bpe.EOS]
  assert clip_bpe.EOS not in tokenizer.tokenize('<|EndOfText|>')
  assert clip_bpe._pre_tokenize('x<|endoftext|>') == [
      'x', '<|', 'endoftext', '|>'
  ]
  normalized = clip_bpe.ClipTokenizer(vocab, merges, normalized_specials=True)
  assert normalized.tokenize('<|EndOfText|>') == [clip_bpe.EOS]
  assert clip_bpe.clean_text('  A&amp;B\u00a0\u3000C ') == ' a&amp;b c '
  assert clip_bpe.clean_text('A&amp;B', html_unescape=True) == 'a&b'


# ---------------------------------------------------------------- model ---


def test_hidden_states_match_reference(golden, states):
  out, _ = states
  reference = golden['last_hidden_state']
  mask = golden['mask']
  assert out.shape == reference.shape and out.dtype == np.float32
  # Measured on CPU: 2.0e-6 at real tokens, 1.5e-6 at padding (|values| up
  # to 4.1).
  np.testing.assert_allclose(out[mask], reference[mask], rtol=0, atol=1e-5)
  np.testing.assert_allclose(out, reference, rtol=0, atol=1e-5)


def test_pooled_output_matches_reference(golden, loaded, states):
  module, _, _ = loaded
  out, pooled = states
  # Measured on CPU: 9.5e-7.
  np.testing.assert_allclose(pooled, golden['pooler_output'], rtol=0, atol=1e-5)
  # Old configs (eos_token_id 2) pool at the largest id: the same rows here,
  # since <|endoftext|> is the largest id of a CLIP vocab (up to the last
  # bit: `pooled` comes from the compiled encoder, where XLA may fuse the
  # final LayerNorm into the gather; other rows differ by O(1)).
  legacy = np.asarray(clip.pool(out, golden['ids'], 2))
  np.testing.assert_allclose(legacy, pooled, rtol=0, atol=1e-6)
  assert module.config.eos_token_id != 2


def test_text_encoder_interface(golden):
  encoder = clip.ClipTextEncoder(MODEL_DIR, pad_to=77)
  assert encoder.width == 64 and encoder.max_length == 77
  texts = [str(t) for t in golden['texts'][:2]]
  ids, mask = encoder.tokenizer.encode(texts, max_length=77, pad_to=77)
  np.testing.assert_array_equal(ids, golden['ids'][:2])
  states, pooled = jax.jit(encoder.apply,
                           compiler_options=FAST_COMPILE)(encoder.params, ids,
                                                          mask)
  assert states.shape == (2, 77, 64) and pooled.shape == (2, 64)
  np.testing.assert_allclose(
      np.asarray(states)[mask], golden['last_hidden_state'][:2][mask], rtol=0,
      atol=2e-5)


def test_text_encoder_takes_loaded_parts(golden, loaded):
  """Like minilm.TextEncoder, it takes (module, params, tokenizer) instead
  of a directory (e.g. random params for a benchmark)."""
  encoder = clip.ClipTextEncoder(loaded=loaded, pad_to=77)
  assert encoder.params is loaded[1] and encoder.max_length == 77
  ids, mask = encoder.tokenize([str(t) for t in golden['texts'][:2]])
  np.testing.assert_array_equal(ids, golden['ids'][:2])
  assert mask.shape == (2, 77)


def test_converter_prefixes_and_errors(loaded):
  module, params, _ = loaded
  # transformers 5 saves a CLIPTextModel without the `text_model.` prefix;
  # CLIPModel checkpoints (and older CLIPTextModel ones) have it.
  bare = safetensors_files.load_safetensors(
      os.path.join(MODEL_DIR, 'model.safetensors'))
  assert 'embeddings.token_embedding.weight' in bare
  state = {f'text_model.{k}': v for k, v in bare.items()}
  state['vision_model.embeddings.class_embedding'] = np.zeros(8, np.float32)
  state['logit_scale'] = np.float32(2.6)
  config = clip.ClipTextConfig.from_hf({
      'text_config': {
          'vocab_size': module.config.vocab_size,
          'hidden_size': 64,
          'intermediate_size': 128,
          'num_hidden_layers': 2,
          'num_attention_heads': 4,
          'max_position_embeddings': 77
      }
  })
  converted = clip.convert_clip_text(state, config)  # CLIPModel-style.
  jax.tree.map(np.testing.assert_array_equal, converted,
               jax.tree.map(np.asarray, params['params']))
  name = 'text_model.encoder.layers.1.self_attn.k_proj.weight'
  del state[name]
  with pytest.raises(WeightsError, match=name.replace('.', r'\.')):
    clip.convert_clip_text(state, config)
  state[name] = np.zeros((64, 63))
  with pytest.raises(WeightsError, match=r'shape \(64, 63\)'):
    clip.convert_clip_text(state, config)
  # A 1-layer config left the second layer out, without a word.
  with pytest.raises(WeightsError, match='holds 2 layers .* its config 1'):
    clip.convert_clip_text(state, dataclasses.replace(config, num_layers=1))
  with pytest.raises(WeightsError, match='hidden_act'):
    clip.ClipTextConfig.from_hf({'hidden_act': 'swish'})


# ------------------------------------------------------- missing files ---


@pytest.mark.parametrize('missing', clip.REQUIRED_FILES)
def test_missing_file_is_named(tmp_path, missing):
  for name in os.listdir(MODEL_DIR):
    if name != missing:
      shutil.copy(os.path.join(MODEL_DIR, name), tmp_path / name)
  with pytest.raises(WeightsError, match=missing) as info:
    clip.load_clip_text(tmp_path)
  message = str(info.value)
  assert str(tmp_path) in message and '\n' not in message
  assert all(f not in message.split('lacks')[1].split(';')[0]
             for f in clip.REQUIRED_FILES
             if f != missing)


def test_a_config_that_is_not_json_is_named(tmp_path):
  for name in os.listdir(MODEL_DIR):
    shutil.copy(os.path.join(MODEL_DIR, name), tmp_path / name)
  (tmp_path / 'config.json').write_text('{"hidden_size')
  with pytest.raises(WeightsError, match='config.json: unreadable JSON'):
    clip.load_clip_text(tmp_path)


def test_no_directory_given():
  with pytest.raises(WeightsError, match='needs a directory'):
    clip.load_clip_text('')


# ------------------------------------------------- generator text path ---


def _text_config(**text):
  import ml_collections  # pylint: disable=g-import-not-at-top
  values = {
      'max_length': 16,
      'encoder': 'clip',
      'encoder_dir': MODEL_DIR,
      'normalize_states': False
  }
  values.update(text)
  return ml_collections.ConfigDict({
      'model': {
          'text_encoder': 'frozen',
          'cond_dim': 64
      },
      'text': values
  })


def test_text_conditioner_uses_clip(golden, caplog):
  from vqlab.train.tasks import text_conditions  # pylint: disable=g-import-not-at-top
  conditioner = text_conditions.TextConditioner(_text_config())
  assert isinstance(conditioner.encoder, clip.ClipTextEncoder)
  text = str(golden['texts'][0])
  arrays = conditioner.host_arrays(np.array([text]))
  assert not caplog.records
  # UTF-8 bytes are the same caption (str() made "b'...'" of them).
  np.testing.assert_array_equal(
      conditioner.host_arrays(np.array([text.encode('utf-8')]))['text_ids'],
      arrays['text_ids'])
  with pytest.raises(ValueError, match='captions must be strings, got int'):
    conditioner.host_arrays([3])
  conditioner.host_arrays(np.array([' '.join(['cat'] * 14), text]))  # Fits.
  assert not caplog.records
  conditioner.host_arrays(np.array([' '.join(['cat'] * 15)]))  # Cut: said.
  assert 'text.max_length = 16 cuts captions short' in caplog.text
  ids, mask = arrays['text_ids'], arrays['text_mask']
  assert ids.shape == mask.shape == (1, 16)
  real = int(golden['mask'][0].sum())
  assert mask.sum() == real < 16
  np.testing.assert_array_equal(ids[0, :real], golden['ids'][0, :real])
  cond = jax.jit(conditioner.condition,
                 compiler_options=FAST_COMPILE)(arrays, conditioner.frozen)
  assert cond['states'].shape == (1, 16, 64)
  # Causal attention: the real positions do not see the extra padding.
  np.testing.assert_allclose(
      np.asarray(cond['states'])[0, :real],
      golden['last_hidden_state'][0, :real], rtol=0, atol=2e-5)
  # VQ-Diffusion's release: each state divided by its norm.
  unit = text_conditions.TextConditioner(_text_config(normalize_states=True))
  cond = jax.jit(unit.condition, compiler_options=FAST_COMPILE)(arrays,
                                                                unit.frozen)
  states = np.float64(golden['last_hidden_state'][0, :real])
  np.testing.assert_allclose(
      np.asarray(cond['states'])[0, :real],
      states / np.linalg.norm(states, axis=-1, keepdims=True), rtol=0,
      atol=2e-6)


def test_text_conditioner_clip_config_errors():
  from vqlab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from vqlab.train.tasks import text_conditions  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match='text.encoder_dir'):
    text_conditions.TextConditioner(_text_config(encoder_dir=''))
  with pytest.raises(ConfigError, match='text.encoder: '):
    text_conditions.TextConditioner(_text_config(encoder='t5'))
  with pytest.raises(ConfigError, match='text.max_length'):
    text_conditions.TextConditioner(_text_config(max_length=78))
  bytes_config = _text_config(normalize_states=True)
  bytes_config.model.text_encoder = 'bytes'
  with pytest.raises(ConfigError, match='^text.normalize_states: True, but '):
    text_conditions.TextConditioner(bytes_config)
  config = _text_config()
  config.model.cond_dim = 384
  with pytest.raises(ConfigError, match='model.cond_dim'):
    text_conditions.TextConditioner(config)


def test_generator_text_path_uses_clip_states():
  from configs.vq_diffusion import tiny_text  # pylint: disable=g-import-not-at-top
  from vqlab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from vqlab.train.tasks import text_conditions  # pylint: disable=g-import-not-at-top
  config = tiny_text.get_config()
  config.text.encoder = 'clip'
  with pytest.raises(ConfigError, match='text.encoder_dir'):
    text_conditions.TextConditioner(config)
  config.text.encoder_dir = MODEL_DIR
  with pytest.raises(ConfigError, match='model.cond_dim: 384'):
    text_conditions.TextConditioner(config)
  config.model.cond_dim = 64
  conditioner = text_conditions.TextConditioner(config)
  arrays = conditioner.host_arrays(
      np.array(['a red circle above a square', 'two cats']))
  cond = conditioner.condition(arrays, conditioner.frozen)
  assert cond['states'].shape == (2, config.text.max_length, 64)
  expected, _ = conditioner.encoder.apply(conditioner.encoder.params,
                                          arrays['text_ids'],
                                          arrays['text_mask'])
  np.testing.assert_array_equal(cond['states'], expected)
