"""Pre-tokenized datasets: token shards written by `main.py --mode=tokenize`.

Layout of a tokens directory:

  metadata.json                      tokenizer (workdir, step, config), token
                                     shape, vocab size, per-split progress
  <split>/shard-<i:05d>-<p:03d>.npz  shard i of process p: 'tokens' [n, *shape
                                     (, F)] (uint16 when the ids fit, else
                                     int32), 'cond_tokens' [n, *shape] of the
                                     condition images (spatial GPTs; same
                                     dtype), plus the data's other per-example
                                     arrays ('label' int32 [n], 'caption', ...)
                                     and 'position' int64 [n], the rows'
                                     places in the split's stream

Shard i holds process p's rows of global batches [i k, (i + 1) k) of the
split's stream (k = `batches_per_shard`); a split loads in stream order.
Files are written under a temporary name and renamed, so a shard file that
exists is complete; a split is usable once metadata marks it complete.
Readers load every shard of a split into memory (ImageNet at 16x16 tokens:
0.66 GB as uint16, as TokenSource keeps them).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any
import zipfile

import numpy as np

from vqlab import fileio
from vqlab.data import base

FORMAT_VERSION = 1
METADATA = 'metadata.json'
TOKENS = 'tokens'
COND_TOKENS = 'cond_tokens'
CODE_ARRAYS = (TOKENS, COND_TOKENS)  # Stored as uint16 when the ids fit.
# int64 [n]: each row's position in the split's global stream (step * B +
# process * b + row), by which `load_split` orders the rows of several
# processes' shards; shards of vqlab before 2026-12-06 have none.
POSITION = 'position'

SHARD_GLOB = 'shard-*.npz'  # The shard files of a split's directory.


def shard_path(directory: str, split: str, shard: int, process: int) -> str:
  """<directory>/<split>/shard-<shard:05d>-<process:03d>.npz."""
  return os.path.join(directory, split, f'shard-{shard:05d}-{process:03d}.npz')


def write_atomically(path: str, write) -> None:
  """Calls write(file object) on `path + '.tmp'`, then renames to `path`
  (URLs: uploads the whole file at once; see vqlab.fileio)."""
  fileio.write_atomically(path, write)


def write_metadata(directory: str, metadata: dict[str, Any]) -> None:
  """Writes metadata.json atomically."""
  data = json.dumps(metadata, indent=2).encode()
  write_atomically(os.path.join(directory, METADATA), lambda f: f.write(data))


def read_metadata(directory: str) -> dict[str, Any] | None:
  """The tokens directory's metadata, or None when there is none yet.

  Raises:
    ValueError: the file exists but is unreadable or of another format.
  """
  path = os.path.join(directory, METADATA)
  if not fileio.exists(path):
    return None
  try:
    with fileio.open(path) as f:
      metadata = json.load(f)
  except (OSError, ValueError) as e:
    _raise_if_unreadable(path, e)
    raise ValueError(f'{path} is corrupt ({e}); delete the tokens directory '
                     'and run --mode=tokenize again') from e
  if not isinstance(metadata, dict):
    raise ValueError(f'{path} holds a JSON {type(metadata).__name__}, not '
                     'the tokens\' metadata: delete the tokens directory and '
                     'run --mode=tokenize again')
  if metadata.get('format') != FORMAT_VERSION:
    raise ValueError(f'{path}: token format {metadata.get("format")}, this '
                     f'vqlab reads format {FORMAT_VERSION}')
  tokenizer = metadata.get('tokenizer')
  names_a_step = (isinstance(tokenizer, dict) and
                  isinstance(tokenizer.get('workdir'), str) and
                  isinstance(tokenizer.get('step'), int))
  if tokenizer is not None and not names_a_step:
    raise ValueError(f'{path}: its tokenizer is {tokenizer!r}, not the record '
                     'of a run and step; delete the tokens directory and run '
                     '--mode=tokenize again')
  return metadata


def _raise_if_unreadable(path: str, e: Exception) -> None:
  """ValueError without advice to delete when reading `path` failed for
  want of permission or by an I/O error (an OSError with an errno): the
  file may be good. Numpy's own format errors carry no errno."""
  if isinstance(e, OSError) and e.errno is not None:
    raise ValueError(f'could not read {path} ({e}): a permission or I/O '
                     'problem, not a corrupt file; fix it and run again') from e


def write_shard(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes one shard atomically.

  Args:
    path: the shard file (`shard_path`).
    arrays: the rows of the shard, each [n, ...]: 'tokens' int [n, *shape(,
      F)], 'cond_tokens' int [n, cond_length] (spatial conditions),
      'position' int64 [n], and the data's other keys (e.g. 'label' int32
      [n]). Tokens and condition tokens are stored as uint16 when every id
      of that array fits (each array on its own: a condition tokenizer may
      have a larger vocabulary than the main one).
  """
  arrays = dict(arrays)
  for key in CODE_ARRAYS:
    if key in arrays and _fits_uint16(arrays[key]):
      arrays[key] = arrays[key].astype(np.uint16)
  write_atomically(path, lambda f: np.savez(f, **arrays))


def _fits_uint16(ids: np.ndarray) -> bool:
  return ids.size == 0 or (ids.min() >= 0 and
                           ids.max() <= np.iinfo(np.uint16).max)


def load_split(
    directory: str, split: str, code_dtype: Any = np.int32,
    keys: tuple[str, ...] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """All examples of a complete split -> ({key: [N, ...]}, metadata).

  Tokens (and condition tokens) come back as `code_dtype`; None: as stored
  (uint16 where the ids fit, half the memory). keys: the arrays to read,
  those of them the shards hold (e.g. ('label',): not the tokens); None:
  every array.

  Raises:
    ValueError: no tokens there, an unfinished split, or a corrupt shard.
  """
  base.check_split(split)
  metadata = read_metadata(directory)
  if metadata is None:
    raise ValueError(f'no token shards in {directory!r}: run main.py '
                     '--mode=tokenize with this config first')
  info = metadata['splits'].get(split)
  if not info or not info.get('complete'):
    raise ValueError(f'the {split} tokens in {directory!r} are incomplete: '
                     'run main.py --mode=tokenize again to finish them')
  paths = sorted(fileio.glob(os.path.join(directory, split, SHARD_GLOB)))
  if len(paths) != info['num_files']:
    fix = ('run main.py --mode=tokenize again to write the missing ones'
           if len(paths) < info['num_files'] else
           'move out the files that are not of this split')
    raise ValueError(f'{directory}/{split}: {len(paths)} shard files, the '
                     f'metadata lists {info["num_files"]}: {fix}')
  wanted = None if keys is None else {*keys, POSITION}
  parts: dict[str, list[np.ndarray]] = {}
  for path in paths:
    try:
      with np.load(
          io.BytesIO(fileio.read_bytes(path)) if fileio.is_url(path) else path
      ) as shard:
        for key in shard.files:
          if wanted is None or key in wanted:
            parts.setdefault(key, []).append(shard[key])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      _raise_if_unreadable(path, e)
      raise ValueError(f'token shard {path} is corrupt ({e}); delete it and '
                       'run --mode=tokenize again') from e
  # One array at a time, each copy dropped once made: the peak is the shards
  # and their joined copy (ImageNet's train tokens: 2 x 0.66 GB).
  arrays = {k: np.concatenate(parts.pop(k)) for k in list(parts)}
  order = (np.argsort(arrays.pop(POSITION), kind='stable')
           if POSITION in arrays else None)
  for key in list(arrays):
    if order is not None:
      arrays[key] = arrays[key][order]
    if key in CODE_ARRAYS and code_dtype is not None:
      arrays[key] = arrays[key].astype(code_dtype)
  count = len(next(iter(arrays.values()))) if arrays else None
  if count not in (None, info['num_examples']):
    raise ValueError(f'{directory}/{split}: {count} examples in the shards, '
                     f'the metadata lists {info["num_examples"]}')
  return arrays, metadata


class TokenSource:
  """A DataSource over a split's tokens.

  Train: infinite, a seeded permutation per epoch. Eval: one ordered pass,
  padded, with 'mask'. Batches: 'tokens' int32 [b, *shape(, F)], 'label'
  int32 [b] when the data had labels, and whatever else the shards hold.
  """

  def __init__(self, directory: str, split: str, *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1, seed: int = 0):
    # Ids as stored (uint16 where they fit), each batch's made int32.
    self.arrays, self.metadata = load_split(directory, split, code_dtype=None)
    num = len(self.arrays[TOKENS])
    b = base.host_batch_size(global_batch_size, process_index, process_count)
    get = lambda idx: {
        k: v[idx].astype(np.int32) if k in CODE_ARRAYS else v[idx]
        for k, v in self.arrays.items()
    }
    shapes = dict(image_shape=tuple(self.metadata['input_shape'][-3:]),
                  num_classes=self.metadata.get('num_classes'))
    if split == 'train':
      order = base.EpochPermutation(num, seed)
      self._source = base.NumpyTrainSource(
          lambda step, rows: get(order(step * global_batch_size + rows)),
          per_host_batch_size=b, process_index=process_index, num_examples=num,
          **shapes)
    else:
      self._source = base.NumpyEvalSource(get, num_examples=num,
                                          global_batch_size=global_batch_size,
                                          per_host_batch_size=b,
                                          process_index=process_index, **shapes)
    self.per_host_batch_size = b
    self.num_examples = num
    self.image_shape = shapes['image_shape']
    self.video_shape = None
    self.num_classes = shapes['num_classes']

  def __len__(self) -> int:
    return len(self._source)

  def batches(self, start_step: int = 0):
    """Yields this host's batches: 'tokens' int32 [b, *shape(, F)], the
    shards' other arrays (e.g. 'label' int32 [b], 'cond_tokens' int32
    [b, cond_length]) and on eval 'mask' bool [b]. Train is infinite from
    global step `start_step`; eval one padded pass (`base.DataSource`)."""
    return self._source.batches(start_step)
