"""Read and write PyTorch `.pth` state dicts with numpy only, never torch.

`torch.save` writes one of two formats:

* zip (torch >= 1.6): an uncompressed zip archive whose entries all sit in one
  directory, named after the file or `archive`: `data.pkl` (the pickled
  object), `data/<key>` (one raw storage per key), `byteorder` (`little` or
  `big`; absent in older files, meaning little) and `version`.
* legacy (torch < 1.6): consecutive pickles in one file: a magic number, the
  protocol version, a dict of system info, the object, then the list of
  storage keys; then, for each key in that order, the storage's element count
  (int64) followed by its raw bytes, both little-endian on any machine.

In both, the object pickle refers to storages by persistent id
`('storage', <torch.XStorage class>, key, location, numel[, view])`, and each
tensor is `torch._utils._rebuild_tensor_v2(storage, offset, shape, stride,
...)`.

Safety rule: a pickle can name any importable callable and call it, so
unpickling untrusted files runs arbitrary code. Here every global a pickle
names is looked up in a fixed table of inert stand-ins (numpy rebuilders,
markers for storage classes and dtypes, `OrderedDict`); anything else, e.g.
`os.system`, stops the load with a `WeightsError` before it can be called.
Nor may a small file ask for much memory: compressed records (an inflating
"zip bomb"), more than `_MAX_TENSORS` names, or tensors whose copies would
far exceed the storage bytes (one dict under many names, stride-0 shapes)
are refused before anything is copied.
"""

import collections
import io
import os
import pickle
import struct
from typing import Any, BinaryIO, Callable, NamedTuple
import zipfile

from absl import logging
import ml_dtypes
import numpy as np

from vqlab import fileio
from vqlab.errors import WeightsError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# torch storage class name -> element dtype. int8/int16 are Char/Short.
_STORAGE_DTYPES = {
    'FloatStorage': np.dtype(np.float32),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'DoubleStorage': np.dtype(np.float64),
    'ComplexFloatStorage': np.dtype(np.complex64),
    'ComplexDoubleStorage': np.dtype(np.complex128),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
    'UntypedStorage': np.dtype(np.uint8),
}
_STORAGE_NAMES = {
    dtype: name
    for name, dtype in _STORAGE_DTYPES.items()
    if name != 'UntypedStorage'
}
_TORCH_DTYPES = {
    'float32': np.float32,
    'float': np.float32,
    'float16': np.float16,
    'half': np.float16,
    'bfloat16': ml_dtypes.bfloat16,
    'float64': np.float64,
    'double': np.float64,
    'complex64': np.complex64,
    'complex128': np.complex128,
    'int64': np.int64,
    'long': np.int64,
    'int32': np.int32,
    'int': np.int32,
    'int16': np.int16,
    'short': np.int16,
    'int8': np.int8,
    'uint8': np.uint8,
    'bool': np.bool_,
}
# Dtypes without a legacy storage class: their tensors are pickled as
# `_rebuild_tensor_v3(<UntypedStorage (bytes)>, ..., dtype)`.
_TORCH_DTYPES_V3 = {
    'uint16': np.uint16,
    'uint32': np.uint32,
    'uint64': np.uint64,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2,
    'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
}
# A pickle may name one dict under many names ({'model': sd, 'ema': sd}),
# nest such names, or stride a small storage over a large shape (expand):
# each name gets its own copy, so a small file could ask for any amount of
# memory. Tensors beyond these bounds are refused before any is copied.
_MAX_TENSORS = 200_000
_MAX_COPY_FACTOR = 4  # Copied bytes <= 4 x the storages' bytes + 1 GiB.
_COPY_SLACK = 1 << 30


class _FormatError(ValueError):
  """The file's structure is wrong; `load_state_dict` adds the path."""


# Immutable (tuple) stand-ins, so that a pickle's BUILD cannot alter them.
class _StorageType(NamedTuple):
  """What a `torch.XStorage` global unpickles to."""
  dtype: np.dtype


class _TorchDtype(NamedTuple):
  """What a `torch.float32`-style global unpickles to (dropped on load)."""
  dtype: np.dtype


class _StorageRef(NamedTuple):
  """A storage that is read after unpickling; `offset` and `numel` (in
  elements) select a legacy storage view, else the whole storage."""
  key: str
  dtype: np.dtype
  offset: int
  numel: int


class _LazyTensor(NamedTuple):
  """A tensor whose storage bytes are not read yet; sizes in elements of
  `dtype` (the storage's, or for `_rebuild_tensor_v3` the dtype its bytes
  are read as)."""
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  strides: tuple[int, ...]
  dtype: np.dtype


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if (not isinstance(value, (tuple, list)) or
      not all(isinstance(v, int) and v >= 0 for v in value)):
    raise _FormatError(f'bad tensor {what} {value!r}')
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """numpy stand-in for `torch._utils._rebuild_tensor{,_v2}`."""
  if not isinstance(storage, _StorageRef):
    raise _FormatError(f'tensor built from {type(storage).__name__}, '
                       'not a storage')
  if not isinstance(storage_offset, int) or storage_offset < 0:
    raise _FormatError(f'bad tensor storage offset {storage_offset!r}')
  shape = _int_tuple(size, 'shape')
  strides = _int_tuple(stride, 'stride')
  if len(shape) != len(strides):
    raise _FormatError(f'tensor shape {shape} and stride {strides} differ '
                       'in rank')
  return _LazyTensor(storage, storage_offset, shape, strides, storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, *unused_args):
  """numpy stand-in for `torch._utils._rebuild_tensor_v3`: a tensor of
  `dtype` over a storage of bytes."""
  del requires_grad, backward_hooks
  tensor = _rebuild_tensor(storage, storage_offset, size, stride)
  if not isinstance(dtype, _TorchDtype):
    raise _FormatError(f'tensor of unknown dtype {dtype!r}')
  if storage.dtype != np.uint8:
    raise _FormatError(f'a {dtype.dtype} tensor over a {storage.dtype} '
                       'storage, not one of bytes')
  return tensor._replace(dtype=dtype.dtype)


def _rebuild_parameter(data, *unused_args):
  """numpy stand-in for `torch._utils._rebuild_parameter{,_with_state}`."""
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """(module, name) -> stand-in, for every global a state dict may name."""
  allowed = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch', 'Size'): tuple,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
  }
  for name, dtype in _STORAGE_DTYPES.items():
    # Old torch pickled storages of CUDA tensors as torch.cuda.XStorage.
    for module in ('torch', 'torch.cuda', 'torch.storage'):
      allowed[module, name] = _StorageType(dtype)
  for name, dtype in {**_TORCH_DTYPES, **_TORCH_DTYPES_V3}.items():
    allowed['torch', name] = _TorchDtype(np.dtype(dtype))
  return allowed


_ALLOWED = _allowed_globals()


class _Opaque:
  """What any other global unpickles to in lenient mode: a class whose
  instances ignore every argument, state and item given to them, so nothing
  the pickle names is ever looked up, let alone called."""

  def __new__(cls, *unused_args, **unused_kwargs):
    return object.__new__(cls)

  def __init__(self, *unused_args, **unused_kwargs):
    pass

  def __setstate__(self, unused_state):
    pass

  def __setitem__(self, unused_key, unused_value):
    pass

  def append(self, unused_value):
    pass

  def extend(self, unused_values):
    pass


def _opaque_class(module: str, name: str) -> type[_Opaque]:
  return type(f'Opaque[{module}.{name}]', (_Opaque,), {})


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles tensors to `_LazyTensor`s and refuses any other code.

  `roots` records, for each storage key met, its dtype and element count.
  """

  def __init__(self, file: BinaryIO, path: str, lenient: bool):
    super().__init__(file)
    self._path = path
    self._lenient = lenient
    self.roots: dict[str, tuple[np.dtype, int]] = {}

  def find_class(self, module: str, name: str) -> Any:
    stand_in = _ALLOWED.get((module, name))
    if stand_in is None and self._lenient:
      return _opaque_class(module, name)
    if stand_in is None:
      raise WeightsError(
          f'{self._path}: holds a `{module}.{name}` object, not only tensors '
          'and dicts: not the weight file this reads (is it the right '
          'file?). Objects other than tensors are never unpickled: that '
          'could run any code')
    return stand_in

  def persistent_load(self, pid: Any) -> _StorageRef:
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or
        pid[0] != 'storage'):
      raise _FormatError(f'unknown persistent id {pid!r}')
    storage_type, key, unused_location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise _FormatError(f'persistent id names {storage_type!r}, not a '
                         'storage class')
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise _FormatError(f'bad storage key or size in {pid!r}')
    dtype = storage_type.dtype
    if self.roots.setdefault(key, (dtype, numel)) != (dtype, numel):
      raise _FormatError(f'storage {key!r} is declared twice differently')
    if view is None:
      return _StorageRef(key, dtype, 0, numel)
    # Legacy storage views: (view_key, offset, size) into the root storage.
    if (not isinstance(view, tuple) or len(view) != 3 or
        not all(isinstance(v, int) and v >= 0 for v in view[1:]) or
        view[1] + view[2] > numel):
      raise _FormatError(f'bad storage view in {pid!r}')
    return _StorageRef(key, dtype, view[1], view[2])


def _storage_array(raw: bytes, dtype: np.dtype, numel: int, big_endian: bool,
                   where: str) -> np.ndarray:
  """The first `numel` elements of `raw`, as a little-endian 1-D array."""
  if len(raw) < numel * dtype.itemsize:
    raise _FormatError(f'{where} holds {len(raw)} bytes, needs '
                       f'{numel * dtype.itemsize} (truncated?)')
  array = np.frombuffer(raw, dtype, count=numel)
  if big_endian and dtype.itemsize > 1:
    unit = dtype.itemsize // (2 if dtype.kind == 'c' else 1)
    array = array.view(f'u{unit}').byteswap().view(dtype)
  return array


def _materialize(tensor: _LazyTensor, storages: dict[str, np.ndarray],
                 big_endian: bool) -> np.ndarray:
  """Copies one tensor out of its (possibly shared) storage."""
  ref = tensor.storage
  storage = storages[ref.key][ref.offset:ref.offset + ref.numel]
  if tensor.dtype != storage.dtype:  # _rebuild_tensor_v3: bytes as dtype.
    usable = storage.size - storage.size % tensor.dtype.itemsize
    storage = storage[:usable].view(tensor.dtype)
    if big_endian and tensor.dtype.itemsize > 1:
      unit = f'u{tensor.dtype.itemsize}'
      storage = storage.view(unit).byteswap().view(tensor.dtype)
  if 0 in tensor.shape:
    return np.zeros(tensor.shape, storage.dtype)
  last = tensor.offset + sum(
      (n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
  # as_strided does no bounds checks: an unchecked stride would read memory
  # outside the storage.
  if last >= storage.size:
    raise _FormatError(
        f'a tensor of shape {tensor.shape} (offset {tensor.offset}, stride '
        f'{tensor.strides}) reads past its storage of {storage.size} elements')
  view = np.lib.stride_tricks.as_strided(
      storage[tensor.offset:], tensor.shape,
      tuple(s * storage.itemsize for s in tensor.strides), writeable=False)
  return np.array(view, order='C')


def _materialize_all(tensors: dict[str, _LazyTensor],
                     storages: dict[str, np.ndarray],
                     big_endian: bool = False) -> dict[str, np.ndarray]:
  """{name: a copy of the tensor}, after checking that the copies take at
  most _MAX_COPY_FACTOR times the storages' bytes (+ _COPY_SLACK)."""
  copied = sum(
      int(np.prod(t.shape, dtype=np.float64)) * t.dtype.itemsize
      for t in tensors.values())
  stored = sum(s.nbytes for s in storages.values())
  if copied > _MAX_COPY_FACTOR * stored + _COPY_SLACK:
    raise _FormatError(
        f'its {len(tensors)} tensors declare {copied / 2**30:.1f} GiB from '
        f'{stored / 2**20:.1f} MiB of storage data (the same data under many '
        'names or strided over large shapes): refused')
  return {k: _materialize(t, storages, big_endian) for k, t in tensors.items()}


def _tensors(obj: Any) -> dict[str, _LazyTensor]:
  """Flattens nested dicts of tensors to '.'-joined keys; drops the rest."""
  if not isinstance(obj, dict):
    kind = 'tensor' if isinstance(obj, _LazyTensor) else type(obj).__name__
    raise _FormatError(f'holds a {kind}, not a dict of tensors')
  out = {}
  path = set()  # Ids of the dicts being visited.

  def visit(node, prefix):
    # A pickle can make a dict contain itself (skipped), or hold one dict
    # under two names, e.g. {'model': sd, 'model_ema': sd} (read under both).
    if id(node) in path:
      return
    path.add(id(node))
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, _LazyTensor):
        out[name] = value
        if len(out) > _MAX_TENSORS:
          raise _FormatError(f'names more than {_MAX_TENSORS} tensors (one '
                             'dict under many names?): refused')
      elif isinstance(value, dict):
        visit(value, name + '.')
    path.remove(id(node))

  visit(obj, '')
  return out


def _unpickle(data: BinaryIO, path: str,
              lenient: bool = False) -> tuple[Any, dict]:
  """(object, storage roots) of the next pickle in `data`."""
  unpickler = _SafeUnpickler(data, path, lenient)
  return unpickler.load(), unpickler.roots


def _state_dict_of(obj: Any, lenient: bool, path: str) -> Any:
  """A training checkpoint's 'state_dict' entry in lenient mode (logging
  the entries beside it that hold tensors too, e.g. an EMA copy), else obj."""
  if lenient and isinstance(obj, dict) and isinstance(obj.get('state_dict'),
                                                      dict):
    others = [
        str(key)
        for key, value in obj.items()
        if key != 'state_dict' and isinstance(value, dict) and _tensors(value)
    ]
    if others:
      logging.warning(
          "%s: converting its 'state_dict'; the tensors under %s (an EMA "
          'copy?) are not read.', path, others)
    return obj['state_dict']
  return obj


def _read_zip(file: BinaryIO, path: str,
              lenient: bool) -> dict[str, np.ndarray]:
  """Reads the zip format (see the module docstring)."""
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as e:
    raise _FormatError(f'truncated or corrupt zip archive ({e})') from None
  with archive:
    pickles = [
        n for n in archive.namelist()
        if n.endswith('data.pkl') and n.count('/') == 1
    ]
    if len(pickles) != 1:
      raise _FormatError('zip archive without one <dir>/data.pkl entry; not '
                         'written by torch.save')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    compressed = [
        i.filename
        for i in archive.infolist()
        if i.compress_type != zipfile.ZIP_STORED
    ]
    if compressed:  # Each would be inflated whole, whatever it declares.
      raise _FormatError(f'compressed records ({compressed[0]}): torch.save '
                         'stores them uncompressed; not written by torch.save')
    byteorder = b'little'
    if prefix + 'byteorder' in names:
      byteorder = archive.read(prefix + 'byteorder').strip()
      if byteorder not in (b'little', b'big'):
        raise _FormatError(f'unknown byte order {byteorder!r}')
    obj, roots = _unpickle(io.BytesIO(archive.read(pickles[0])), path, lenient)
    tensors = _tensors(_state_dict_of(obj, lenient, path))
    storages = {}
    for key in {t.storage.key for t in tensors.values()}:
      name = f'{prefix}data/{key}'
      if name not in names:
        raise _FormatError(f'the archive has no storage record {name}')
      dtype, numel = roots[key]
      storages[key] = _storage_array(archive.read(name), dtype, numel,
                                     byteorder == b'big', name)
  return _materialize_all(tensors, storages, byteorder == b'big')


def _read_legacy(file: BinaryIO, path: str,
                 lenient: bool) -> dict[str, np.ndarray]:
  """Reads the legacy format (see the module docstring)."""
  magic, _ = _unpickle(file, path)
  if magic != _LEGACY_MAGIC:
    raise _FormatError('not a PyTorch weight file (neither a zip archive nor '
                       'the legacy pickle format)')
  protocol, _ = _unpickle(file, path)
  if protocol != _LEGACY_PROTOCOL:
    raise _FormatError(f'unknown legacy protocol version {protocol!r}')
  # The system-info pickle says what machine wrote the file; torch ignores
  # it, as its writer stores sizes and data little-endian on any machine
  # (THPStorage_writeFileRaw).
  _unpickle(file, path)
  obj, roots = _unpickle(file, path, lenient)
  tensors = _tensors(_state_dict_of(obj, lenient, path))
  keys, _ = _unpickle(file, path)
  if not isinstance(keys, list) or not set(keys) <= set(roots):
    raise _FormatError('the storage key list names unknown storages')
  storages = {}
  needed = {t.storage.key for t in tensors.values()}
  for key in keys:  # Storages follow the pickles, in the order of `keys`.
    dtype, _ = roots[key]
    header = file.read(8)
    if len(header) != 8:
      raise _FormatError(f'file ends before storage {key!r} (truncated?)')
    (numel,) = struct.unpack('<q', header)
    if numel < 0:
      raise _FormatError(f'storage {key!r} has negative size {numel}')
    if key not in needed:  # E.g. optimizer state of a training checkpoint.
      file.seek(numel * dtype.itemsize, io.SEEK_CUR)
      continue
    storages[key] = _storage_array(file.read(numel * dtype.itemsize), dtype,
                                   numel, False, f'storage {key!r}')
  missing = {t.storage.key for t in tensors.values()} - set(storages)
  if missing:
    raise _FormatError(f'no data for storages {sorted(missing)}')
  return _materialize_all(tensors, storages)


def load_state_dict(path: str | os.PathLike, *,
                    lenient: bool = False) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d (nested) dict of tensors without torch.

  Args:
    path: a `.pth`/`.pt`/`.ckpt` file in the zip or the legacy format.
    lenient: for training checkpoints (PyTorch Lightning `.ckpt`), whose
      pickle also holds optimizer states, hyper-parameter objects and
      callbacks: every global outside the tensor/dict allow-list unpickles to
      an inert placeholder that ignores its arguments (it is never resolved,
      so no code of the file runs), and only the tensors under the top-level
      'state_dict' entry (when there is one) are returned.

  Returns:
    {name: array} in file order, each a fresh C-contiguous numpy array of the
    tensor's shape and dtype (bfloat16 as `ml_dtypes.bfloat16`). Nested dicts
    give '.'-joined names (`{'model': {'w': t}}` -> 'model.w'); values that
    are not tensors (step counters, strings) are left out.

  Raises:
    WeightsError: the file is missing, truncated or corrupt, its pickle
      names anything but tensors, storages and dicts, or it would take far
      more memory than its size (module docstring); the message names the
      file and the problem.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as file:
      head = file.read(4)
      file.seek(0)
      if not head:
        raise _FormatError('the file is empty')
      if head == b'PK\x03\x04':
        return _read_zip(file, path, lenient)
      if head[:1] == b'\x80':  # A pickle's PROTO opcode.
        return _read_legacy(file, path, lenient)
      raise _FormatError('not a PyTorch weight file (neither a zip archive '
                         'nor the legacy pickle format)')
  except WeightsError:
    raise
  except FileNotFoundError:
    raise WeightsError(f'{path}: no such file') from None
  except OSError as e:
    raise WeightsError(f'{path}: cannot read the file ({e})') from None
  except _FormatError as e:
    raise WeightsError(f'{path}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    # A damaged pickle or zip fails in many ways (EOFError, UnpicklingError,
    # KeyError, zlib.error, ...); all mean the same thing to the user.
    raise WeightsError(f'{path}: truncated or corrupt file '
                       f'({type(e).__name__}: {e})') from None


# ---------------------------------------------------------------- writing ---

_ALIGNMENT = 64  # torch.save starts every record's data at a multiple of 64.


def _pickle_int(n: int) -> bytes:
  if 0 <= n < 1 << 8:
    return pickle.BININT1 + bytes([n])
  if 0 <= n < 1 << 16:
    return pickle.BININT2 + struct.pack('<H', n)
  if -(1 << 31) <= n < 1 << 31:
    return pickle.BININT + struct.pack('<i', n)
  data = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
  return pickle.LONG1 + bytes([len(data)]) + data


def _pickle_str(s: str) -> bytes:
  data = s.encode('utf-8')
  return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


def _pickle_int_tuple(values: tuple[int, ...]) -> bytes:
  return (pickle.MARK + b''.join(_pickle_int(v) for v in values) + pickle.TUPLE)


def _pickle_global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f'{module}\n{name}\n'.encode('ascii')


def _pickle_state_dict(arrays: list[tuple[str, np.ndarray, str]]) -> bytes:
  """data.pkl for (name, C-contiguous array, storage class name) triples;
  array i lives in storage key str(i).

  The same opcodes torch's pickler writes (protocol 2, no memo), so that
  `torch.load(weights_only=True)` accepts them.
  """
  empty_ordered_dict = (_pickle_global('collections', 'OrderedDict') +
                        pickle.EMPTY_TUPLE + pickle.REDUCE)
  out = [pickle.PROTO + b'\x02', empty_ordered_dict, pickle.MARK]
  for i, (name, array, storage_name) in enumerate(arrays):
    storage_id = (pickle.MARK + _pickle_str('storage') +
                  _pickle_global('torch', storage_name) + _pickle_str(str(i)) +
                  _pickle_str('cpu') + _pickle_int(array.size) + pickle.TUPLE)
    strides = tuple(s // array.itemsize for s in array.strides)
    out += [
        _pickle_str(name),
        _pickle_global('torch._utils', '_rebuild_tensor_v2'), pickle.MARK,
        storage_id, pickle.BINPERSID,
        _pickle_int(0),
        _pickle_int_tuple(array.shape),
        _pickle_int_tuple(strides), pickle.NEWFALSE, empty_ordered_dict,
        pickle.TUPLE, pickle.REDUCE
    ]
  out += [pickle.SETITEMS, pickle.STOP]
  return b''.join(out)


def _write_aligned(archive: zipfile.ZipFile, tell: Callable[[], int], name: str,
                   data: bytes) -> None:
  """Stores one record whose data starts at a multiple of `_ALIGNMENT`.

  Pads like torch: an extra field with id 'FB' in the local header.
  """
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  # zipfile adds a 20-byte zip64 field to the local header of large records.
  zip64 = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0
  header = 30 + len(name.encode('utf-8')) + 4 + zip64
  pad = -(tell() + header) % _ALIGNMENT
  info.extra = b'FB' + struct.pack('<H', pad) + b'Z' * pad
  archive.writestr(info, data)


def save_state_dict(path: str | os.PathLike, arrays: dict[str,
                                                          np.ndarray]) -> None:
  """Writes arrays as a zip-format state dict that torch.load reads back.

  `torch.load(path, weights_only=True)` gives an OrderedDict of CPU tensors
  with the same names, shapes, dtypes and values. The file is written to a
  temporary name first (a URL: uploaded in one piece), so a failed export
  leaves no partial file.

  Args:
    path: the `.pth` file to (over)write, a local path or a URL (`gs://`).
    arrays: {name: array-like} with dtypes float16/32/64, bfloat16,
      complex64/128, int8/16/32/64, uint8 or bool (jax arrays work too).

  Raises:
    ValueError: a name is not a string or an array's dtype has no torch
      storage type.
  """
  path = os.fspath(path)
  items = []
  for name, value in arrays.items():
    if not isinstance(name, str):
      raise ValueError(f'state dict names must be strings, got {name!r}')
    array = np.asarray(value)
    dtype = array.dtype.newbyteorder('=')
    if dtype not in _STORAGE_NAMES:
      raise ValueError(f'{name}: dtype {array.dtype} has no torch storage '
                       f'type; supported: {sorted(map(str, _STORAGE_NAMES))}')
    # Storages are little-endian; order='C' makes the strides plain.
    items.append((name, np.asarray(array, dtype.newbyteorder('<'),
                                   order='C'), _STORAGE_NAMES[dtype]))
  # No `.format_version` record: with it, torch.load(mmap=True) may compute
  # storage offsets itself, assuming the data descriptors that torch's own zip
  # writer puts after each record and Python's zipfile does not.
  records = [('data.pkl', _pickle_state_dict(items)), ('byteorder', b'little')]
  records += [(f'data/{i}', item[1].tobytes()) for i, item in enumerate(items)]
  records.append(('version', b'3\n'))

  def write(file: BinaryIO) -> None:
    with zipfile.ZipFile(file, 'w', zipfile.ZIP_STORED) as archive:
      for name, data in records:
        _write_aligned(archive, file.tell, f'archive/{name}', data)

  fileio.write_atomically(path, write)
