"""File IO on local paths and on URLs (`gs://bucket/run`): one place for both.

A workdir (or tokens directory, FID statistics file) is either a local path or
a URL that `tf.io.gfile` understands: `gs://` on Cloud TPU VMs, `ram://` (TF's
in-memory filesystem) in tests. Local paths use the standard library exactly
as before (TensorFlow is not even imported); URLs go through `tf.io.gfile`.
Orbax takes `gs://` directories natively (epath + TensorStore's GCS driver).

Not `etils.epath` (measured with etils 1.15): it knows only gs://, s3://, az://
and hf:// URLs (`epath.Path('ram://x')` raises KeyError 'ram://'), so the URL
paths here could be tested only against mocks, not a real filesystem without
a network; and for gs:// it goes through `tf.io.gfile` anyway when TensorFlow
is installed, as it is with vqlab.
"""

import builtins
import contextlib
import errno
import glob as glob_lib
import io
import os
import re
from typing import Callable, IO, Iterator

_URL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (`gs://...`) rather than a local path."""
  return bool(_URL.match(os.fspath(path)))


def scheme(path: str | os.PathLike) -> str:
  """'gs' for 'gs://b/x'; '' for a local path."""
  path = os.fspath(path)
  return path.split('://', 1)[0] if is_url(path) else ''


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
  """tf.errors of a URL operation as the OSErrors callers catch for local
  paths: a bucket that is missing, or not readable with these credentials,
  is then one line, not a traceback (a TF OpError is no OSError)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    yield
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(errno.ENOENT, e.message, path) from None
  except tf.errors.PermissionDeniedError as e:
    raise PermissionError(errno.EACCES, e.message, path) from None
  except tf.errors.OpError as e:
    raise OSError(f'{path}: {type(e).__name__}: {e.message}') from None


def absolute(path: str | os.PathLike) -> str:
  """os.path.abspath for local paths; URLs without trailing or doubled
  slashes after the scheme (abspath would turn 'gs://b/x' into
  '<cwd>/gs:/b/x'), so that 'gs://b/x/' names the run 'gs://b/x' does."""
  path = os.fspath(path)
  if not is_url(path):
    return os.path.abspath(path)
  head, rest = path.split('://', 1)
  return f'{head}://' + '/'.join(part for part in rest.split('/') if part)


def open(path: str | os.PathLike, mode: str = 'r') -> IO:  # pylint: disable=redefined-builtin
  """The builtin open for a local path, tf.io.gfile's GFile for a URL."""
  path = os.fspath(path)
  if is_url(path):
    gfile = _gfile()
    with _os_errors(path):
      if 'r' in mode and not gfile.exists(path):
        # What callers catch for a local path (gfile raises its NotFoundError
        # only at the first read).
        raise FileNotFoundError(f'No such file: {path!r}')
      return gfile.GFile(path, mode)
  return builtins.open(path, mode)


def exists(path: str | os.PathLike) -> bool:
  """Whether the file or folder exists (raises OSError if a URL cannot be
  asked)."""
  path = os.fspath(path)
  if is_url(path):
    with _os_errors(path):
      return _gfile().exists(path)
  return os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  """Whether it is a folder (raises OSError if a URL cannot be asked)."""
  path = os.fspath(path)
  if is_url(path):
    # gfile.isdir answers False for any error (no credentials, a bucket
    # not readable): exists raises those, and a run's checkpoints are not
    # taken for none.
    with _os_errors(path):
      return _gfile().exists(path) and _gfile().isdir(path)
  return os.path.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
  """Creates `path` and its parents; no error when it exists."""
  path = os.fspath(path)
  if is_url(path):
    with _os_errors(path):
      _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path: str | os.PathLike) -> None:
  """Deletes the file `path`."""
  path = os.fspath(path)
  if is_url(path):
    with _os_errors(path):
      _gfile().remove(path)
  else:
    os.remove(path)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Renames `src` to `dst`, overwriting it (atomic on local filesystems;
  on GCS a copy then a delete, so readers see the old or the new file)."""
  src, dst = os.fspath(src), os.fspath(dst)
  if is_url(src) or is_url(dst):
    with _os_errors(src):
      _gfile().rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]],
                                                              object],
                     tmp_suffix: str = '.tmp') -> None:
  """Calls write(binary file) so that readers never see a partial `path`.

  Local: writes `path + tmp_suffix`, then renames it over `path`; a write
  that fails removes that temporary file and re-raises. URL: the
  bytes are built in memory and uploaded in one piece (a GCS object appears
  only once complete, and a rename there would be a copy); this also serves
  writers that seek or tell (zip files, PIL), which GCS/ram files may not.
  """
  path = os.fspath(path)
  if is_url(path):
    buffer = io.BytesIO()
    write(buffer)
    with _os_errors(path), _gfile().GFile(path, 'wb') as f:
      f.write(buffer.getvalue())
    return
  tmp = path + tmp_suffix
  try:
    with builtins.open(tmp, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    # A failed write (bad input found mid-file, a full disk, Ctrl-C) leaves
    # neither a partial `path` nor its temporary file behind.
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def read_bytes(path: str | os.PathLike) -> bytes:
  """The whole file."""
  with open(path, 'rb') as f:
    return f.read()


def glob(pattern: str | os.PathLike) -> list[str]:
  """The paths that match `pattern`, in no set order."""
  pattern = os.fspath(pattern)
  if is_url(pattern):
    with _os_errors(pattern):
      return list(_gfile().glob(pattern))
  return glob_lib.glob(pattern)


def listdir(path: str | os.PathLike) -> list[str]:
  """The names in a folder (no trailing '/' on a URL's subfolders)."""
  path = os.fspath(path)
  if is_url(path):
    with _os_errors(path):
      return [name.rstrip('/') for name in _gfile().listdir(path)]
  return os.listdir(path)
