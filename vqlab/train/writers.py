"""Where a run's numbers and pictures go: TensorBoard, metrics.jsonl, PNGs.

Only process 0 writes; other processes get a writer that does nothing, so the
loop never branches on the process index. The workdir may be a URL
(`gs://bucket/run`): files then go through tf.io.gfile (vqlab.fileio), and so
do tensorboardX's event files (its own gs:// writer needs
google-cloud-storage). A GCS file is uploaded whole at each flush, so a URL's
metrics.jsonl and event files are flushed every 2 minutes, not every row
(and metrics.jsonl at each checkpoint save and at the end), and its
TensorBoard events go to a new file every 32 MB.
"""

import itertools
import json
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorboardX
from tensorboardX import record_writer

from vqlab import fileio

# Seconds between flushes of a URL's metrics.jsonl and event files (as
# tensorboardX's default): each uploads the whole file again (tf.io.gfile on
# GCS), so a flush per row uploads O(rows^2) bytes over a run.
URL_FLUSH_SECONDS = 120
# A URL's TensorBoard events file is closed and a new one begun after about
# this many bytes (image pixels, scalars): a run's eval grids in one file
# were uploaded again at every flush, for days.
URL_EVENTS_FILE_BYTES = 32 << 20
# A number for each events file this process begins: tensorboardX names a
# file by the second and the host alone and opens it anew, so a trainer and
# an eval (or two writers of one process) begun in one second on one host
# wrote one file, and one's events were lost.
_EVENTS_FILES = itertools.count()


class MetricWriter:
  """TensorBoard event files + `metrics.jsonl` + PNG image grids."""

  def __init__(self, workdir: str, trains_from: int | None = None,
               jsonl: bool = True, evaluates_again: bool = False):
    """Args: workdir: the run's directory; trains_from: the step a training
    run starts from (its checkpoint's, 0 when fresh). The numbers an earlier
    attempt logged after that step (work lost with it, e.g. to a kill -9)
    are dropped from metrics.jsonl (with a last row cut short) and hidden in
    TensorBoard (a purge event: RustBoard, its default loader, ignores it
    until a tag is written again), so that each train step is logged once.
    None (eval, sampling): nothing is dropped. jsonl: False leaves metrics.jsonl alone
    (`--mode=eval`: a step evaluated again is no second row there, and a
    run training in the workdir meanwhile keeps the file to itself).
    evaluates_again: the run evaluates step `trains_from` again (a final
    eval whose final_metrics.json was never written): that step's earlier
    eval rows are dropped from metrics.jsonl too."""
    self.workdir = workdir
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    if self._enabled:
      fileio.makedirs(os.path.join(workdir, 'images'))
      path = os.path.join(workdir, 'metrics.jsonl')
      if trains_from is not None and fileio.exists(path):
        _drop_rows_after(path, trains_from, evaluates_again)
      if jsonl:
        self._jsonl = fileio.open(path, 'a')
      self._flush_every = (URL_FLUSH_SECONDS if fileio.is_url(workdir) else 0)
      self._flushed = time.monotonic()
      if fileio.is_url(workdir):
        _register_gfile_event_writer(fileio.scheme(workdir))
      self._events_bytes = 0
      self._tb = self._events_writer(
          purge_step=None if trains_from is None else trains_from + 1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes float scalars at `step` to TensorBoard and metrics.jsonl."""
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    if self._jsonl is not None:
      self._jsonl.write(as_json({'step': int(step), **scalars}) + '\n')
      if time.monotonic() - self._flushed >= self._flush_every:
        self.flush_rows()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, global_step=step)
    self._count_events_bytes(64 * len(scalars))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes uint8 [H, W, C] images as PNG files and TensorBoard images."""
    if not self._enabled:
      return
    for name, image in images.items():
      save_png(os.path.join(self.workdir, 'images', f'{name}_{step:08d}.png'),
               image)
      self._tb.add_image(name, image, global_step=step, dataformats='HWC')
      self._count_events_bytes(np.asarray(image).nbytes)

  def _events_writer(self, purge_step: int | None = None):
    """A tensorboardX writer of a new events file, named after its second,
    host, process and number (_EVENTS_FILES): unlike any other's, and a
    run's later files (URL_EVENTS_FILE_BYTES) sort after its earlier ones."""
    suffix = f'.{os.getpid()}.{next(_EVENTS_FILES)}'
    # A queue that outlasts a flush's upload: the loop never waits on one.
    return tensorboardX.SummaryWriter(os.path.join(self.workdir, 'tensorboard'),
                                      purge_step=purge_step, max_queue=1000,
                                      flush_secs=URL_FLUSH_SECONDS,
                                      filename_suffix=suffix)

  def _count_events_bytes(self, written: int) -> None:
    """Begins a new events file once a URL's holds URL_EVENTS_FILE_BYTES."""
    self._events_bytes += written
    if self._flush_every and self._events_bytes >= URL_EVENTS_FILE_BYTES:
      self._tb.close()
      self._tb, self._events_bytes = self._events_writer(), 0

  def flush_rows(self) -> None:
    """Writes out the metrics.jsonl rows written so far: the loop calls it
    at each checkpoint save, so no row before a resumable step is lost."""
    if self._enabled and self._jsonl is not None:
      self._jsonl.flush()
      self._flushed = time.monotonic()

  def close(self) -> None:
    """Writes out and closes the files (again: nothing)."""
    if self._enabled:
      self._enabled = False
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()


def as_json(record: Any, indent: int | None = None) -> str:
  """`record` as strict JSON: a NaN or Inf float is written as null (bare
  NaN, Python's default, is no JSON that other readers take); numpy floats
  as floats."""

  def finite(value: Any) -> Any:
    if isinstance(value, dict):
      return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
      return float(value) if np.isfinite(value) else None
    return value

  return json.dumps(finite(record), indent=indent, allow_nan=False)


def has_eval_row(workdir: str, step: int) -> bool:
  """Whether the run's metrics.jsonl in `workdir` holds an eval row of
  `step`: the training run's own eval of it (`--mode=eval` writes none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not fileio.exists(path):
    return False
  with fileio.open(path) as f:
    return any(_parse_row(line) == (step, True) for line in f)


def _parse_row(line: str) -> tuple[int, bool] | None:
  """(step, whether it is an eval row) of a metrics.jsonl line, or None for
  a line that is not a complete row of ours."""
  try:
    row = json.loads(line)
    step = int(row['step'])
  except (ValueError, KeyError, TypeError):
    return None
  return step, all(k.startswith('eval/') for k in row if k != 'step')


def _drop_rows_after(path: str, step: int, evals_at_step: bool) -> None:
  """Rewrites the metrics.jsonl at `path` without its rows after `step`
  (with `evals_at_step`, without its eval rows at `step` too) and without a
  last row cut short."""
  with fileio.open(path) as f:
    lines = f.read().splitlines(keepends=True)

  def kept(line: str) -> bool:
    parsed = _parse_row(line)
    if parsed is None:
      return True  # Not a row of ours: left as it is.
    row_step, is_eval = parsed
    return row_step < step or row_step == step and not (evals_at_step and
                                                        is_eval)

  torn = bool(lines) and not lines[-1].endswith('\n')
  if torn:
    lines = lines[:-1]  # A last row cut short (kill -9).
  rows = [line for line in lines if kept(line)]
  if torn or len(rows) < len(lines):
    data = ''.join(rows).encode()
    fileio.write_atomically(path, lambda f: f.write(data))


class _GFileEventWriterFactory:
  """tensorboardX event files on tf.io.gfile URLs (gs://, ram://)."""

  def open(self, path: str):
    return fileio.open(path, 'wb')

  def directory_check(self, path: str) -> None:
    fileio.makedirs(path)


def _register_gfile_event_writer(url_scheme: str) -> None:
  record_writer.register_writer_factory(url_scheme, _GFileEventWriterFactory())


def save_png(path: str, image: np.ndarray) -> None:
  """Saves uint8 [H, W, C] (C = 1 or 3) atomically."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1,
                                                                           3):
    raise ValueError(f'save_png: {path}: the picture must be uint8 [H, W, 1 '
                     f'or 3] (writers.image_grid makes one of [-1, 1] '
                     f'floats), got {image.dtype} {image.shape}')
  if image.shape[-1] == 1:
    image = image[..., 0]
  fileio.write_atomically(
      path, lambda f: Image.fromarray(image).save(f, format='PNG'),
      tmp_suffix='.tmp.png')


def image_grid(rows: list[np.ndarray], padding: int = 2) -> np.ndarray:
  """Tiles rows of images into one uint8 picture.

  Args:
    rows: each float [N, H, W, C] in [-1, 1]; all the same shape.
    padding: pixels between images.

  Returns:
    uint8 [len(rows) * (H + p) + p, N * (W + p) + p, C].
  """
  if not isinstance(rows, (list, tuple)) or not rows:
    raise ValueError('image_grid: rows must be a non-empty list of float '
                     f'[N, H, W, C] arrays, got {type(rows).__name__} '
                     f'{np.shape(rows)}')
  for r, row in enumerate(rows):
    row = np.asarray(row)
    if (not jnp.issubdtype(row.dtype, jnp.floating) or row.ndim != 4 or
        row.shape != np.shape(rows[0])):
      raise ValueError(
          f'image_grid: each row must be float [N, H, W, C] in [-1, 1] of '
          f'the first row\'s shape {np.shape(rows[0])}, got row {r} of '
          f'{row.dtype} {row.shape} (uint8 pixels: x / 127.5 - 1)')
  n, h, w, c = rows[0].shape
  grid = np.full(
      (len(rows) * (h + padding) + padding, n * (w + padding) + padding, c),
      255, np.uint8)
  for r, row in enumerate(rows):
    pixels = np.clip((np.asarray(row, np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
    for i in range(n):
      y, x = padding + r * (h + padding), padding + i * (w + padding)
      grid[y:y + h, x:x + w] = pixels[i].astype(np.uint8)
  return grid


def save_gif(path: str, frames: np.ndarray, fps: int = 8) -> None:
  """Saves float [T, H, W, C] frames in [-1, 1] as a looping GIF, atomically."""
  pixels = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
  pixels = pixels.astype(np.uint8)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  images = [Image.fromarray(frame) for frame in pixels]
  fileio.write_atomically(
      path,
      lambda f: images[0].save(f, format='GIF', save_all=True, append_images=
                               images[1:], loop=0, duration=int(1000 / fps)),
      tmp_suffix='.tmp.gif')
