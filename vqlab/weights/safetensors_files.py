"""Read and write `.safetensors` weight files as numpy arrays.

The format (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length N, N bytes of JSON mapping each tensor name to
`{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}` (plus an
optional `"__metadata__"` {str: str}), then the tensors' raw little-endian,
C-order bytes. Nothing in the file can run code.

Reading goes through the `safetensors` package (`safe_open(...,
framework='numpy')`), which checks the header, every shape and offset, and
that the tensors cover the data exactly. Its numpy backend has no float8 type
(it looks for `numpy.float8_e4m3fn`), so F8 tensors are read from the raw
bytes that `safetensors.deserialize` gives. BF16 needs `ml_dtypes` imported,
which registers the `bfloat16` name with numpy (done here).

Writing stays here rather than `safetensors.numpy.save_file`, which orders
the tensors by dtype size, not as given, and writes the wrong bytes for a
non-contiguous array (it copies `nbytes` from its data pointer).
"""

import json
import os
import struct
from typing import BinaryIO, Iterable

import ml_dtypes
import numpy as np
import safetensors

from vqlab import fileio
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
# Dtypes that the package's numpy backend cannot return.
_RAW_DTYPES = ('F8_E4M3', 'F8_E5M2')
# What the package's structural errors mean to a user.
_HINTS = {
    'header too small': 'empty or truncated',
    'header too large': 'truncated, or not a safetensors file',
    'not fully covered': 'truncated, or bytes beyond the tensors',
}


class _FormatError(ValueError):
  """The file's contents are wrong; `read_safetensors` adds the path."""


def _package_error(e: Exception) -> _FormatError:
  """A `safetensors.SafetensorError` as one line (with a hint)."""
  detail = ' '.join(str(e).split())
  hint = next((h for key, h in _HINTS.items() if key in detail), None)
  return _FormatError(f'not a valid safetensors file: {detail}' +
                      (f' ({hint}?)' if hint else ''))


def _raw_views(path: str) -> dict[str, dict]:
  """{name: {'dtype', 'shape', 'data' (bytes)}} of every tensor (reads the
  whole file)."""
  with open(path, 'rb') as file:
    return dict(safetensors.deserialize(file.read()))


def _read(
    path: str, names: Iterable[str] | None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  if os.path.isdir(path):
    raise IsADirectoryError(path)
  try:
    with safetensors.safe_open(path, framework='numpy') as file:
      order = file.offset_keys()  # Header order; keys() sorts by name.
      metadata = dict(file.metadata() or {})
      wanted = order if names is None else list(names)
      present = set(order)
      missing = [n for n in wanted if n not in present]
      if missing:
        raise _FormatError(f'no tensors named {missing}')
      out, raw = {}, None
      for name in wanted:
        dtype_name = file.get_slice(name).get_dtype()
        if dtype_name not in DTYPES:
          raise _FormatError(f'tensor {name!r}: unsupported dtype '
                             f'{dtype_name}; readable: {", ".join(DTYPES)}')
        if dtype_name not in _RAW_DTYPES:
          out[name] = file.get_tensor(name)
          continue
        raw = raw or _raw_views(path)
        dtype = DTYPES[dtype_name]
        out[name] = np.frombuffer(raw[name]['data'],
                                  dtype).reshape(raw[name]['shape']).astype(
                                      dtype.newbyteorder('='))
  except safetensors.SafetensorError as e:
    raise _package_error(e) from None
  return out, metadata


def load_safetensors(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file into numpy arrays.

  Args:
    path: the file.
    names: read only these tensors (all if None).

  Returns:
    {name: array} in header order (or `names`' order): fresh, writable,
    native-endian numpy arrays of the stored shape and dtype (BF16 and F8 as
    ml_dtypes types).

  Raises:
    WeightsError: the file is missing, truncated or corrupt (bad header JSON,
      unknown dtype, offsets that disagree with shapes, overlap or do not
      cover the data) or lacks a requested name; the message names the file
      and the problem.
  """
  return read_safetensors(path, names)[0]


def read_safetensors(
    path: str | os.PathLike,
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


def save_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
  """Writes arrays as a `.safetensors` file in the given order.

  Written to a temporary name first (a URL: uploaded in one piece), so a
  failure leaves no partial file.

  Args:
    path: the file to (over)write, a local path or a URL (`gs://`).
    arrays: {name: array-like} with a dtype of `DTYPES` (jax arrays work).
    metadata: the `__metadata__` entry, {str: str}.

  Raises:
    ValueError: a name is not a string or is `__metadata__`, a dtype has no
      safetensors name, or metadata is not {str: str}.
  """
  path = os.fspath(path)
  header = {}
  if metadata:
    if not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
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
    header[name] = {
        'dtype': dtype_name,
        'shape': list(array.shape),
        'data_offsets': [offset, offset + len(data)]
    }
    blobs.append(data)
    offset += len(data)
  raw = json.dumps(header, separators=(',', ':')).encode('utf-8')
  raw += b' ' * (-len(raw) % 8)  # Align the data buffer, like the reference.

  def write(file: BinaryIO) -> None:
    file.write(struct.pack('<Q', len(raw)))
    file.write(raw)
    for data in blobs:
      file.write(data)

  fileio.write_atomically(path, write)
