"""Read and write `.safetensors` weight files with numpy only.

The format (https://github.com/huggingface/safetensors):

* 8 bytes: N, the header's length, an unsigned little-endian 64-bit integer;
* N bytes: a UTF-8 JSON object (possibly padded with trailing spaces) mapping
  each tensor name to `{"dtype": "F32", "shape": [..], "data_offsets":
  [begin, end]}`, plus an optional `"__metadata__"` {str: str} entry;
* the data buffer: every tensor's raw little-endian, C-order bytes at
  [begin, end) relative to the buffer's start.

Unlike a pickle, nothing in the file can run code; the reader still checks
every size and offset, so a truncated or corrupt file gives a `WeightsError`
naming the file and the problem instead of garbage or a numpy crash.
"""

import json
import math
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from vqlab.errors import WeightsError

# safetensors dtype name -> little-endian numpy dtype.
DTYPES = {
    'F64': np.dtype('<f8'),
    'F32': np.dtype('<f4'),
    'F16': np.dtype('<f2'),
    'BF16': np.dtype(ml_dtypes.bfloat16),
    'F8_E4M3': np.dtype(ml_dtypes.float8_e4m3fn),
    'F8_E5M2': np.dtype(ml_dtypes.float8_e5m2),
    'I64': np.dtype('<i8'),
    'I32': np.dtype('<i4'),
    'I16': np.dtype('<i2'),
    'I8': np.dtype('i1'),
    'U64': np.dtype('<u8'),
    'U32': np.dtype('<u4'),
    'U16': np.dtype('<u2'),
    'U8': np.dtype('u1'),
    'BOOL': np.dtype(np.bool_),
}
_NAMES = {dtype.newbyteorder('='): name for name, dtype in DTYPES.items()}

# The reference implementation refuses headers over 100 MB; so do we, before
# reading one (a corrupt length field would otherwise allocate it).
_MAX_HEADER = 100_000_000


class _FormatError(ValueError):
  """The file's structure is wrong; `load_safetensors` adds the path."""


def _parse_header(raw: bytes, data_size: int) -> tuple[dict, dict]:
  """({name: (dtype, shape, begin, end)}, metadata) of a header; checks that
  every tensor lies inside a data buffer of `data_size` bytes."""
  try:
    header = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _FormatError(f'the header is not valid JSON ({e})') from None
  if not isinstance(header, dict):
    raise _FormatError('the header is not a JSON object')
  metadata = header.pop('__metadata__', None) or {}
  if not isinstance(metadata, dict):
    raise _FormatError('__metadata__ is not a JSON object')
  entries = {}
  for name, info in header.items():
    if not isinstance(info, dict):
      raise _FormatError(f'tensor {name!r}: entry is not a JSON object')
    dtype_name, shape, offsets = (info.get('dtype'), info.get('shape'),
                                  info.get('data_offsets'))
    if dtype_name not in DTYPES:
      raise _FormatError(f'tensor {name!r}: unknown dtype {dtype_name!r}; '
                         f'known: {", ".join(DTYPES)}')
    if (not isinstance(shape, list) or
        not all(type(n) is int and n >= 0 for n in shape)):  # pylint: disable=unidiomatic-typecheck
      raise _FormatError(f'tensor {name!r}: bad shape {shape!r}')
    if (not isinstance(offsets, list) or len(offsets) != 2 or
        not all(type(n) is int for n in offsets) or  # pylint: disable=unidiomatic-typecheck
        not 0 <= offsets[0] <= offsets[1]):
      raise _FormatError(f'tensor {name!r}: bad data_offsets {offsets!r}')
    dtype = DTYPES[dtype_name]
    begin, end = offsets
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
      raise _FormatError(
          f'tensor {name!r}: {dtype_name} {tuple(shape)} needs {expected} '
          f'bytes, data_offsets {offsets} give {end - begin}')
    if end > data_size:
      raise _FormatError(
          f'tensor {name!r}: data_offsets {offsets} run past the end of the '
          f'{data_size}-byte data buffer (truncated?)')
    entries[name] = (dtype, tuple(shape), begin, end)
  spans = sorted((b, e, n) for n, (_, _, b, e) in entries.items() if e > b)
  for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
    if begin < end:
      raise _FormatError(f'tensors {first!r} and {second!r} overlap')
  return entries, metadata


def _read(path: str, names: Iterable[str] | None
          ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  with open(path, 'rb') as file:
    file_size = os.fstat(file.fileno()).st_size
    prefix = file.read(8)
    if len(prefix) != 8:
      raise _FormatError(f'the file has {len(prefix)} bytes, fewer than the '
                         '8-byte header length (empty or truncated?)')
    (header_size,) = struct.unpack('<Q', prefix)
    if header_size > min(_MAX_HEADER, file_size - 8):
      raise _FormatError(
          f'header length {header_size} exceeds the file\'s {file_size} '
          'bytes (truncated, or not a safetensors file)')
    entries, metadata = _parse_header(file.read(header_size),
                                      file_size - 8 - header_size)
    if names is None:
      wanted = list(entries)
    else:
      wanted = list(names)
      missing = [n for n in wanted if n not in entries]
      if missing:
        raise _FormatError(f'no tensors named {missing}')
    start = 8 + header_size
    out = {}
    for name in wanted:
      dtype, shape, begin, end = entries[name]
      file.seek(start + begin)
      raw = file.read(end - begin)
      if len(raw) != end - begin:
        raise _FormatError(f'tensor {name!r}: file ends early (truncated?)')
      array = np.frombuffer(raw, dtype).reshape(shape)
      out[name] = array.astype(dtype.newbyteorder('='), copy=True)
  return out, metadata


def load_safetensors(path: str | os.PathLike,
                     names: Iterable[str] | None = None,
                     ) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file without the safetensors package.

  Args:
    path: the file.
    names: read only these tensors (all if None).

  Returns:
    {name: array} in header order (or `names`' order): fresh, writable,
    native-endian numpy arrays of the stored shape and dtype (BF16 and F8 as
    ml_dtypes types).

  Raises:
    WeightsError: the file is missing, truncated or corrupt (bad header JSON,
      unknown dtype, offsets that disagree with shapes or run past the end,
      overlapping tensors) or lacks a requested name; the message names the
      file and the problem.
  """
  return read_safetensors(path, names)[0]


def read_safetensors(path: str | os.PathLike,
                     names: Iterable[str] | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Like `load_safetensors`, also returning the `__metadata__` dict."""
  path = os.fspath(path)
  try:
    return _read(path, names)
  except FileNotFoundError:
    raise WeightsError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise WeightsError(f'{path}: is a directory, not a file') from None
  except OSError as e:
    raise WeightsError(f'{path}: cannot read the file ({e})') from None
  except _FormatError as e:
    raise WeightsError(f'{path}: {e}') from None


def save_safetensors(path: str | os.PathLike,
                     arrays: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
  """Writes arrays as a `.safetensors` file (readable by the safetensors
  package); written to a temporary name first, so a failure leaves no
  partial file.

  Raises:
    ValueError: a name is not a string or is `__metadata__`, a dtype has no
      safetensors name, or metadata is not {str: str}.
  """
  path = os.fspath(path)
  header = {}
  if metadata:
    if not all(isinstance(k, str) and isinstance(v, str)
               for k, v in metadata.items()):
      raise ValueError('safetensors metadata must map strings to strings')
    header['__metadata__'] = dict(metadata)
  blobs = []
  offset = 0
  for name, value in arrays.items():
    if not isinstance(name, str) or name == '__metadata__':
      raise ValueError(f'bad tensor name {name!r}')
    array = np.asarray(value)
    dtype = array.dtype.newbyteorder('=')
    if dtype not in _NAMES:
      raise ValueError(f'{name}: dtype {array.dtype} has no safetensors '
                       f'name; supported: {sorted(map(str, _NAMES))}')
    dtype_name = _NAMES[dtype]
    data = np.ascontiguousarray(array, DTYPES[dtype_name]).tobytes()
    header[name] = {'dtype': dtype_name, 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  raw = json.dumps(header, separators=(',', ':')).encode('utf-8')
  raw += b' ' * (-len(raw) % 8)  # Align the data buffer, like the reference.
  temporary = path + '.tmp'
  try:
    with open(temporary, 'wb') as file:
      file.write(struct.pack('<Q', len(raw)))
      file.write(raw)
      for data in blobs:
        file.write(data)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
