"""A reader and writer for the IDX format of (Fashion-)MNIST.

Layout: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32 sizes,
then the values in big-endian C order. Files may be gzip-compressed (detected by content).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np

_DTYPES = {
    0x08: np.dtype('u1'),
    0x09: np.dtype('i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'


def parse(data: bytes, name: str = '<bytes>') -> np.ndarray:
  """Decodes the IDX bytes `data` (raw or gzip) into an array of the stored shape and type.

  Args:
    data: the file's contents.
    name: used in error messages (e.g. the file path).

  Returns:
    A native-endian array with the shape the header gives, e.g. uint8 [60000, 28, 28].

  Raises:
    ValueError: bad magic number, unknown type code, or a size that disagrees with the header.
  """
  if data[:2] == _GZIP_MAGIC:
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f'{name}: corrupt gzip stream ({e}).') from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(
        f'{name}: not an IDX file (bad magic number {data[:4].hex()}; '
        'expected 0000 then a type code and the number of dimensions).')
  code, ndim = data[2], data[3]
  if code not in _DTYPES:
    raise ValueError(f'{name}: unknown IDX type code 0x{code:02x}; known: '
                     f'{[hex(c) for c in _DTYPES]}.')
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(
        f'{name}: truncated IDX header ({len(data)} bytes for {ndim} dimensions).'
    )
  shape = struct.unpack(f'>{ndim}I', data[4:header])
  dtype = _DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(
        f'{name}: IDX header says shape {shape} of {dtype} ({expected} bytes of '
        f'data) but the file holds {len(data) - header}; truncated or corrupt.')
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(
      dtype.newbyteorder('='))


def read(path: str) -> np.ndarray:
  """Reads the IDX file at `path` (gzip or raw); see `parse`."""
  with open(path, 'rb') as f:
    return parse(f.read(), name=path)


def encode(array: np.ndarray) -> bytes:
  """The IDX bytes of `array` (uint8, int8, int16, int32, float32 or float64), uncompressed."""
  for code, dtype in _DTYPES.items():
    if array.dtype.newbyteorder('>') == dtype.newbyteorder('>'):
      header = bytes([0, 0, code, array.ndim]) + struct.pack(
          f'>{array.ndim}I', *array.shape)
      return header + np.ascontiguousarray(array,
                                           dtype.newbyteorder('>')).tobytes()
  raise ValueError(f'IDX cannot store dtype {array.dtype}.')
