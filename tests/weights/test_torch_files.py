"""The torch-free .pth reader and writer: goldens from real torch, refusals."""

import io
import pathlib
import pickle
import struct
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from tests import paths
from vqlab.errors import WeightsError
from vqlab.weights import torch_files
from vqlab.weights.torch_files import load_state_dict
from vqlab.weights.torch_files import save_state_dict

_GOLDENS = paths.GOLDENS
_LPIPS = (pathlib.Path(torch_files.__file__).parent / 'data' /
          'lpips_vgg_v0.1.pth')


@pytest.fixture(scope='module')
def expected():
  with np.load(_GOLDENS / 'torch_files.npz') as npz:
    return dict(npz)


def _check_against_golden(loaded, expected, prefix):
  names = list(expected[f'{prefix}_names'])
  assert list(loaded) == names
  for name, dtype in zip(names, expected[f'{prefix}_dtypes']):
    got = loaded[name]
    assert str(got.dtype) == dtype, name
    assert got.flags.c_contiguous and got.flags.writeable, name
    want = expected[f'{prefix}/{name}']
    assert got.shape == want.shape, name
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)


def test_reads_legacy_lpips_heads_like_torch(expected):
  loaded = load_state_dict(_LPIPS)
  _check_against_golden(loaded, expected, 'lpips')
  assert loaded['lin0.model.1.weight'].shape == (1, 64, 1, 1)
  assert loaded['lin4.model.1.weight'].shape == (1, 512, 1, 1)


def test_reads_zip_file_written_by_torch(expected):
  loaded = load_state_dict(_GOLDENS / 'torch_zip_sample.pth')
  _check_against_golden(loaded, expected, 'zip')
  # Nested keys are joined; ints and strings are dropped.
  assert 'nested.model.layer.weight' in loaded
  assert 'epoch' not in loaded and 'nested.model.step' not in loaded
  # Tensors that shared a storage come out as independent copies.
  np.testing.assert_array_equal(loaded['base_t'], loaded['base'].T)
  loaded['base'][0, 0] += 1
  assert loaded['base_t'][0, 0] != loaded['base'][0, 0]


_EVIL_MARKER = pathlib.Path('/tmp/vqlab_lenient_ckpt_ran_code')


def test_lenient_reads_a_lightning_checkpoint_without_running_its_code(
    expected):
  path = _GOLDENS / 'lightning_sample.ckpt'
  _EVIL_MARKER.unlink(missing_ok=True)
  # Strict mode names the first foreign global it meets.
  with pytest.raises(WeightsError,
                     match='holds a `.*` object, not only tensors'):
    load_state_dict(path)
  loaded = load_state_dict(path, lenient=True)
  _check_against_golden(loaded, expected, 'ckpt')
  # Optimizer states and callbacks are not returned, and the object whose
  # unpickling calls os.system became an inert placeholder.
  assert not _EVIL_MARKER.exists()


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_lenient_never_calls_pickled_globals(tmp_path, layout):
  marker = tmp_path / 'executed'
  evil = _evil_pickle(f'touch {marker}')
  path = tmp_path / 'evil.ckpt'
  if layout == 'zip':
    _zip(path, {'evil/data.pkl': evil, 'evil/version': b'3\n'})
  else:
    path.write_bytes(_legacy_header() + evil)
  with pytest.raises(WeightsError, match='not a dict of tensors'):
    load_state_dict(path, lenient=True)
  assert not marker.exists()


def test_lenient_names_the_tensors_beside_the_state_dict(tmp_path, caplog):
  """{'state_dict': sd, 'ema': sd'}: the state dict is read, and the
  other tensors are named in a warning (not dropped without a word)."""
  weight = np.arange(6, dtype=np.float32).reshape(2, 3)
  state_dict = torch_files._pickle_state_dict([('w', weight, 'FloatStorage')])  # pylint: disable=protected-access
  body = state_dict[2:-1]  # Without the protocol header and STOP.
  nested = (b'\x80\x02}' + pickle.MARK + pickle.dumps('state_dict')[2:-1] +
            body + pickle.dumps('ema')[2:-1] + body + pickle.SETITEMS +
            pickle.STOP)
  path = tmp_path / 'with_ema.ckpt'
  _zip(
      path, {
          'ckpt/data.pkl': nested,
          'ckpt/data/0': weight.tobytes(),
          'ckpt/version': b'3\n'
      })
  loaded = load_state_dict(path, lenient=True)
  assert list(loaded) == ['w']
  np.testing.assert_array_equal(loaded['w'], weight)
  assert "the tensors under ['ema'] (an EMA copy?) are not read" in caplog.text


def test_save_then_load_round_trips_every_dtype(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      'f32': rng.standard_normal((3, 4)).astype(np.float32),
      'f16': rng.standard_normal(5).astype(np.float16),
      'bf16': rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
      'f64': rng.standard_normal(2),
      'c128': rng.standard_normal(2) + 1j,
      'i64': np.arange(-3, 4),
      'i32': np.arange(6, dtype=np.int32).reshape(2, 3),
      'i16': np.array([-7, 300], np.int16),
      'i8': np.array([-128, 127], np.int8),
      'u8': np.array([0, 255], np.uint8),
      'flags': rng.random(7) > 0.5,
      'scalar': np.array(2.5, np.float32),
      'empty': np.zeros((0, 3), np.float32),
      'a.transposed': np.arange(12, dtype=np.float32).reshape(3, 4).T,
      'big_endian': np.arange(3, dtype='>i4'),
  }
  path = tmp_path / 'out.pth'
  save_state_dict(path, arrays)
  loaded = load_state_dict(path)
  assert list(loaded) == list(arrays)
  for name, array in arrays.items():
    assert loaded[name].dtype == array.dtype.newbyteorder('='), name
    assert loaded[name].shape == array.shape, name
    np.testing.assert_array_equal(loaded[name], array, err_msg=name)
  with zipfile.ZipFile(path) as archive:
    assert all(
        i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
  assert not list(tmp_path.glob('*.tmp'))


def test_save_rejects_unsupported_dtype(tmp_path):
  with pytest.raises(ValueError, match='uint32'):
    save_state_dict(tmp_path / 'x.pth', {'w': np.zeros(2, np.uint32)})


def _legacy_header(little_endian: bool = True) -> bytes:
  return b''.join(
      pickle.dumps(x, protocol=2) for x in (0x1950a86a20f9469cfc6c, 1001, {
          'protocol_version': 1001,
          'little_endian': little_endian
      }))


def _state_dict_pickle(array: np.ndarray) -> bytes:
  """The pickle body (no PROTO, no STOP) of OrderedDict(w=array), its
  storage key '0'."""
  return torch_files._pickle_state_dict([('w', array, 'FloatStorage')])[2:-1]


def test_reads_legacy_files_from_big_endian_machines(tmp_path):
  # torch writes sizes and data little-endian on any machine and ignores
  # the system info's little_endian flag (THPStorage_writeFileRaw).
  w = np.array([1, 2, 3], np.float32)
  path = tmp_path / 'big_endian_host.pth'
  path.write_bytes(
      _legacy_header(little_endian=False) + b'\x80\x02' +
      _state_dict_pickle(w) + b'.' + pickle.dumps(['0'], protocol=2) +
      struct.pack('<q', 3) + w.tobytes())
  np.testing.assert_array_equal(load_state_dict(path)['w'], w)


def test_reads_one_dict_under_two_names(tmp_path):
  # {'model': sd, 'model_ema': sd}: pickle writes sd once and refers to it.
  w = np.array([1, 2, 3], np.float32)
  data = b''.join([
      b'\x80\x02}(',
      torch_files._pickle_str('model'),
      _state_dict_pickle(w),
      b'q\x00',  # BINPUT 0: memoize the state dict.
      torch_files._pickle_str('model_ema'),
      b'h\x00u.',  # BINGET 0, SETITEMS.
  ])
  path = tmp_path / 'shared.pth'
  _zip(
      path, {
          'archive/data.pkl': data,
          'archive/byteorder': b'little',
          'archive/data/0': w.tobytes(),
          'archive/version': b'3\n'
      })
  loaded = load_state_dict(path)
  assert sorted(loaded) == ['model.w', 'model_ema.w']
  for array in loaded.values():
    np.testing.assert_array_equal(array, w)


def _zip(path, records, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, 'w', compression) as archive:
    for name, data in records.items():
      archive.writestr(name, data)


# A pickle that calls os.system(command) when loaded by plain pickle.
def _evil_pickle(command: str) -> bytes:
  return (b'\x80\x02cos\nsystem\n' + pickle.dumps(command, protocol=2)[2:-1] +
          b'\x85R.')


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_refuses_pickled_code(tmp_path, layout):
  marker = tmp_path / 'executed'
  evil = _evil_pickle(f'touch {marker}')
  path = tmp_path / 'evil.pth'
  if layout == 'zip':
    _zip(path, {'evil/data.pkl': evil, 'evil/version': b'3\n'})
  else:
    path.write_bytes(_legacy_header() + evil)
  with pytest.raises(WeightsError, match='os.system') as info:
    load_state_dict(path)
  assert str(path) in str(info.value)
  assert not marker.exists()


def test_refuses_eval(tmp_path):
  path = tmp_path / 'eval.pth'
  path.write_bytes(_legacy_header() +
                   b'\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.')
  with pytest.raises(WeightsError, match='builtins.eval'):
    load_state_dict(path)


def test_refuses_strides_outside_the_storage(tmp_path):
  # Declares a 2-element storage but a (2, 3) tensor over it.
  fake = types.SimpleNamespace(size=2, shape=(2, 3), strides=(12, 4),
                               itemsize=4)
  data_pkl = torch_files._pickle_state_dict([('w', fake, 'FloatStorage')])
  path = tmp_path / 'oob.pth'
  _zip(path, {'a/data.pkl': data_pkl, 'a/data/0': b'\0' * 8})
  with pytest.raises(WeightsError, match='reads past its storage'):
    load_state_dict(path)


def _one_tensor_zip(path, tensor_pickle: bytes, storage: bytes, **zip_args):
  """A zip state dict {'w': <tensor_pickle>} over the storage record '0'."""
  data = (b'\x80\x02}(' + torch_files._pickle_str('w') + tensor_pickle + b'u.')
  _zip(path, {
      'a/data.pkl': data,
      'a/byteorder': b'little',
      'a/data/0': storage
  }, **zip_args)


def _tensor_pickle(rebuild, storage_class, numel, shape, strides, *extra):
  """`torch._utils.<rebuild>(<storage '0'>, 0, shape, strides, False,
  OrderedDict(), *extra)` in pickle opcodes."""
  storage = (pickle.MARK + torch_files._pickle_str('storage') +
             torch_files._pickle_global('torch', storage_class) +
             torch_files._pickle_str('0') + torch_files._pickle_str('cpu') +
             torch_files._pickle_int(numel) + pickle.TUPLE + pickle.BINPERSID)
  return (torch_files._pickle_global('torch._utils', rebuild) + pickle.MARK +
          storage + torch_files._pickle_int(0) +
          torch_files._pickle_int_tuple(shape) +
          torch_files._pickle_int_tuple(strides) + pickle.NEWFALSE +
          torch_files._pickle_global('collections', 'OrderedDict') +
          pickle.EMPTY_TUPLE + pickle.REDUCE + b''.join(extra) + pickle.TUPLE +
          pickle.REDUCE)


@pytest.mark.parametrize('dtype, name',
                         [(ml_dtypes.float8_e4m3fn, 'float8_e4m3fn'),
                          (np.uint16, 'uint16')])
def test_reads_dtypes_torch_saves_over_byte_storages(tmp_path, dtype, name):
  """float8 and uint16-64 have no storage class: torch pickles them as
  `_rebuild_tensor_v3(<UntypedStorage>, ..., torch.<dtype>)`."""
  w = np.arange(6).astype(dtype).reshape(2, 3)
  path = tmp_path / 'v3.pth'
  _one_tensor_zip(
      path,
      _tensor_pickle('_rebuild_tensor_v3', 'UntypedStorage', w.nbytes, (3, 2),
                     (1, 3), torch_files._pickle_global('torch', name)),
      w.tobytes())
  loaded = load_state_dict(path)['w']
  assert loaded.dtype == w.dtype
  np.testing.assert_array_equal(loaded, w.T)


def test_refuses_files_that_would_need_far_more_memory_than_their_size(
    tmp_path):
  """A 1-element storage strided over 20000 x 20000 (torch's expand), one
  dict nested under 2^18 names, and compressed records would each take GBs
  from a file of KBs."""
  path = tmp_path / 'expand.pth'
  _one_tensor_zip(
      path,
      _tensor_pickle('_rebuild_tensor_v2', 'FloatStorage', 1, (20000, 20000),
                     (0, 0)),
      np.float32(1).tobytes())
  with pytest.raises(WeightsError, match='declare 1.5 GiB from 0.0 MiB'):
    load_state_dict(path)
  w = np.ones(4, np.float32)
  chain = [_state_dict_pickle(w), b'q\x00']  # d0 = {'w': tensor}, memo 0.
  for depth in range(18):  # d(i+1) = {'a': d(i), 'b': d(i)}.
    chain += [
        b'}(',
        torch_files._pickle_str('a'), b'h' + bytes([depth]),
        torch_files._pickle_str('b'), b'h' + bytes([depth]),
        b'uq' + bytes([depth + 1])
    ]
  path = tmp_path / 'names.pth'
  _zip(path, {
      'a/data.pkl': b'\x80\x02' + b''.join(chain) + b'.',
      'a/data/0': w.tobytes()
  })
  with pytest.raises(WeightsError, match='more than 200000 tensors'):
    load_state_dict(path)
  path = tmp_path / 'deflated.pth'
  _one_tensor_zip(
      path, _tensor_pickle('_rebuild_tensor_v2', 'FloatStorage', 4, (4,), (1,)),
      w.tobytes(), compression=zipfile.ZIP_DEFLATED)
  with pytest.raises(WeightsError, match='compressed records'):
    load_state_dict(path)


def _damaged(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(WeightsError) as info:
    load_state_dict(path)
  assert str(path) in str(info.value)
  return str(info.value)


def test_truncated_or_corrupt_files_raise_weights_error(tmp_path):
  zip_bytes = (_GOLDENS / 'torch_zip_sample.pth').read_bytes()
  legacy_bytes = _LPIPS.read_bytes()
  assert 'corrupt' in _damaged(tmp_path, 'half.pth',
                               zip_bytes[:len(zip_bytes) // 2])
  assert 'truncated' in _damaged(tmp_path, 'short.pth', legacy_bytes[:-100])
  _damaged(tmp_path, 'head.pth', legacy_bytes[:500])
  # A flipped byte inside a storage fails the zip's CRC check.
  flipped = bytearray(zip_bytes)
  with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
    info = archive.getinfo('torch_zip_sample/data/0')
  name_len, extra_len = struct.unpack(
      '<HH', zip_bytes[info.header_offset + 26:info.header_offset + 30])
  flipped[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
  _damaged(tmp_path, 'flipped.pth', bytes(flipped))


def test_random_empty_and_missing_files_raise_weights_error(tmp_path):
  rng = np.random.default_rng(0)
  assert 'not a PyTorch' in _damaged(tmp_path, 'random.pth', rng.bytes(1000))
  _damaged(tmp_path, 'random80.pth', b'\x80' + rng.bytes(1000))
  assert 'empty' in _damaged(tmp_path, 'empty.pth', b'')
  missing = tmp_path / 'missing.pth'
  with pytest.raises(WeightsError, match='no such file') as info:
    load_state_dict(missing)
  assert str(missing) in str(info.value)
