"""The safetensors reader (the `safetensors` package's numpy API) and writer:
hand-packed files of every dtype, float8, corrupt and missing files."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from vqlab.errors import WeightsError
from vqlab.weights import safetensors_files


def _write_by_hand(path, tensors, metadata=None, pad=3):
  """A safetensors file from (name, dtype name, shape, raw bytes), packed
  in order, with the header padded by `pad` spaces."""
  header, offset, blobs = {}, 0, []
  if metadata is not None:
    header['__metadata__'] = metadata
  for name, dtype, shape, raw in tensors:
    header[name] = {
        'dtype': dtype,
        'shape': shape,
        'data_offsets': [offset, offset + len(raw)]
    }
    offset += len(raw)
    blobs.append(raw)
  raw_header = json.dumps(header).encode('utf-8') + b' ' * pad
  path.write_bytes(
      struct.pack('<Q', len(raw_header)) + raw_header + b''.join(blobs))


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
  assert list(state) == [
      'f32', 'f16', 'bf16', 'i64', 'flags', 'empty', 'scalar'
  ]
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
      'short prefix':
          (b'\x01\x02', r'header too small \(empty or truncated\?\)'),
      'huge header': (struct.pack('<Q', 2**40) + b'{}',
                      r'header too large \(truncated, or not a safetensors'),
      'truncated data': (good[:-3], r'not fully covered \(truncated'),
      'bad json': (struct.pack('<Q', 5) + b'{"a":' + data,
                   'invalid JSON in header: EOF while parsing'),
      'not an object':
          (rebuild([1, 2]), 'invalid JSON in header: invalid type: sequence'),
      'unknown dtype': (edited('a', dtype='Q7'), 'unknown variant `Q7`'),
      'bad shape': (edited('a', shape=[-1, 2]),
                    'invalid value: integer `-1`, expected usize'),
      'size mismatch': (edited('a', shape=[2, 3]),
                        'invalid shape, data type, or offset for tensor'),
      'bad offsets':
          (edited('a', data_offsets=[8, 0]), 'invalid offset for tensor `a`'),
      'overlap': (edited('b',
                         data_offsets=[0, 8]), 'invalid offset for tensor `a`'),
  }


@pytest.mark.parametrize('case', [
    'empty', 'short prefix', 'huge header', 'truncated data', 'bad json',
    'not an object', 'unknown dtype', 'bad shape', 'size mismatch',
    'bad offsets', 'overlap'
])
def test_safetensors_corrupt_file_errors(tmp_path, case):
  good = tmp_path / 'good.safetensors'
  _write_by_hand(good, [('a', 'F32', [2, 2], np.ones(4, '<f4').tobytes()),
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
