"""`video_folder`: clips of your own video files, decoded with PyAV as they are needed.

The folder `data.path` is read in the layouts of `image_folder` (`folder_files`): split
folders `<path>/train/<class>/...` and `<path>/val/<class>/...`, whose batches carry 'label', or
`<path>/train/<files>` and `<path>/val/<files>` (Kinetics as its downloaders leave it), without
labels; or any other folder as one pool of files without labels (UCF-101's
`<path>/<class>/<files>` too), `eval_fraction` of them held out whole for eval. Video files
end in `VIDEO_EXTENSIONS` (any case).

Files are not held in memory. When the source is built each file of the split is probed once:
its frame count (the stream's metadata, else its packets counted), its frame size, and its first
frame decoded. A file that cannot be read, has fewer frames than a clip spans
(`(num_frames - 1) * frame_stride + 1`) or a shorter side under `image_size` is a `DataError`
whose one line names it (and the key), or, with `skip_unreadable`, is left out and one line says
how many were.

Clips are those of `video_clips`, cut from the frames decoded for them only: train example
(step, row) draws a file uniformly, a start, a square window and a flip from
`np.random.default_rng((seed, step, row))` as `video_clips.TrainDraws.clip` does, over frames
whose shorter side is reduced to `image_size / crop_min_fraction` (never enlarged); eval cuts
every held-out file into consecutive clips from its first frame (`video_clips.eval_clip_starts`;
the first `eval_clips_per_video` of them, unless 0), the centred square of frames reduced to
`image_size`. Frame i of a file is the frame shown at
time i / frame rate from its start (for a constant-rate file, its i-th frame): a clip is decoded
from the last keyframe before its first frame. The rows of a batch are decoded by threads; each
row depends on (step, row) only.

Each split has a fingerprint (`folder_files.files_fingerprint`): --mode=tokenize makes its
token shards again when its files change.

Batches: 'video' float32 [b, num_frames, S, S, 3] in [-1, 1], 'label' int32 [b] in the split
layout, and on eval 'mask' bool [b]. Needs the `av` package (a vqlab dependency).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import ml_collections
import numpy as np

from vqlab.data import base
from vqlab.data import folder_files
from vqlab.data import video_clips
from vqlab.errors import DataError

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm')
VIDEOS = folder_files.FileKind('video_folder', 'video', VIDEO_EXTENSIONS,
                               '--config.data.path=/path/to/videos')


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `video_folder` dataset; `path` must be set."""
  return ml_collections.ConfigDict({
      'name': 'video_folder',
      # Required: the folder of your videos (see the layouts above).
      'path': '',
      'train_split': 'train',  # Split layout: sub-folder of the train videos.
      'eval_split': 'val',  # Split layout: sub-folder of the eval videos.
      # Flat layout: fraction of the videos held out for eval (at least 1).
      'eval_fraction': 0.05,
      # Leave out files that cannot be read, or are too short or small for a
      # clip (counted and reported once), instead of stopping with an error
      # naming the first.
      'skip_unreadable': False,
      # Eval clips of each held-out file, consecutive from its first frame;
      # 0: every clip that fits.
      'eval_clips_per_video': 0,
      **video_clips.clip_defaults(),
  })


@functools.lru_cache(maxsize=1)
def _threads() -> concurrent.futures.ThreadPoolExecutor:
  """The threads that probe and decode files (PyAV decodes without the GIL)."""
  return concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1))


def probe(path: str) -> tuple[int, int, int]:
  """(frames, height, width) of the first video stream of `path`: frames from the stream's
  metadata, else counted from its packets; the first frame is decoded.

  Raises:
    ValueError or av.FFmpegError: the file cannot be read.
  """
  av = video_clips.import_av('video_folder')
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError('no video stream')
    stream = container.streams.video[0]
    if not (stream.average_rate or stream.guessed_rate):
      raise ValueError('no frame rate')
    length = stream.frames
    first = next(container.decode(stream), None)
    if first is None:
      raise ValueError('no frame decodes')
  if not length:  # No count in the metadata (e.g. .mkv, .webm).
    with av.open(path) as container:
      length = sum(1 for packet in container.demux(video=0) if packet.size)
  return length, first.height, first.width


def read_frames(path: str, indices: np.ndarray,
                shorter_side: int) -> np.ndarray:
  """uint8 [k, h, w, 3]: the frames `indices` (int [k], increasing) of the video file `path`,
  their shorter side reduced to `shorter_side` (`video_clips.reduced_frame`).

  Frame i is the one shown at time i / rate from the stream's start (past the last frame: the
  last). Decoding starts at the last keyframe before the first one.

  Raises:
    DataError: naming the file, when it cannot be decoded.
  """
  av = video_clips.import_av('video_folder')
  wanted = [int(i) for i in indices]
  target = wanted[0]
  try:
    for _ in range(_SEEKS):
      frames, landed = _decoded(av, path, wanted, target)
      if frames is not None or landed is None:
        break
      # The seek landed on a keyframe past the first frame (a demuxer that seeks by decode
      # time, with B-frames): seek again, before the frames it went past.
      target -= 2 * (landed - target) + 1
    else:
      frames = None
    if frames is None:
      frames, _ = _decoded(av, path, wanted, 0)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise DataError(f'{folder_files.shown(path)}: cannot be decoded '
                    f'({_reason(e)}).') from e
  if frames is None:
    raise DataError(f'{folder_files.shown(path)}: no frame decodes.')
  return np.stack([video_clips.reduced_frame(f, shorter_side) for f in frames])


_SEEKS = 3  # Seeks to try before decoding a file from its start.


def _decoded(av, path: str, wanted: list[int],
             seek_to: int) -> tuple[list | None, int | None]:
  """(the PyAV frames shown at frames `wanted` of `path` (`read_frames`), None), decoding from
  the last keyframe at or before frame `seek_to` (> 0; 0: from the start); or (None, the frame
  it landed on) when that is past wanted[0], (None, None) when its frames have no times."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_count = 1  # Files are decoded by threads of their own.
    rate = stream.average_rate or stream.guessed_rate
    origin = stream.start_time or 0
    if seek_to > 0:
      # The time of frame seek_to in stream units.
      container.seek(origin + int(seek_to / rate / stream.time_base),
                     stream=stream, backward=True, any_frame=False)
    out, previous = [], None
    for n, frame in enumerate(container.decode(stream)):
      if frame.pts is not None:
        i = round((frame.pts - origin) * stream.time_base * rate)
      elif seek_to > 0:
        return None, None  # Frames without times are counted from the start.
      else:
        i = n
      if previous is None and i > wanted[0]:
        if seek_to > 0:
          return None, i
        previous = frame  # The first frame stands for the times before it.
      while len(out) < len(wanted) and i > wanted[len(out)]:
        out.append(previous)  # Still shown at that time.
      if len(out) == len(wanted):
        break
      previous = frame
      if i == wanted[len(out)]:
        out.append(frame)
        if len(out) == len(wanted):
          break
    if previous is None:
      return None, None
    return out + [previous] * (len(wanted) - len(out)), None


def _reason(error: Exception) -> str:
  return str(getattr(error, 'strerror', None) or error)


def probe_split(
    paths: list[str], labels: np.ndarray | None, where: str, *, num_frames: int,
    stride: int, size: int, skip: bool, report: bool, process_index: int = 0,
    process_count: int = 1
) -> tuple[list[str], np.ndarray | None, list[tuple[int, int, int]]]:
  """Probes every file of `paths` [N] (`probe`, by threads) and leaves out those that give no
  clip (`folder_files.leave_out`). Each of the run's processes probes every process_count-th
  file and all exchange what they found (Kinetics-600's 390,000 files took each host minutes
  at every start); hosts simulated in one process (process_count is not jax's) probe every
  file.

  Returns:
    (paths [M], labels [M] or None, their (frames, height, width) [M]).

  Raises:
    DataError: naming the first file that gives no clip and the key, unless `skip`.
  """
  av = video_clips.import_av('video_folder')

  def probed(path: str) -> tuple[int, int, int] | str:
    try:
      return probe(path)
    except (av.FFmpegError, OSError, ValueError) as e:
      return f'{folder_files.shown(path)}: cannot be read by PyAV ({_reason(e)})'

  shapes = _probed_on_every_host(paths, probed, process_index, process_count)
  problems = [
      'unreadable' if shape is None else video_clips.clip_problem(
          repr(folder_files.shown(path)), shape, num_frames, stride, size)
      for path, shape in zip(paths, shapes)
  ]
  bad = [i for i, problem in enumerate(problems) if problem is not None]
  first = problems[bad[0]] if bad else ''
  if bad and shapes[
      bad[0]] is None:  # Why, from this host (another may have probed it).
    first = probed(paths[bad[0]])
    if not isinstance(first, str):
      first = (
          f'{folder_files.shown(paths[bad[0]])}: could not be read by PyAV on the host '
          'that probed it')
  kept = dict(zip(paths, shapes))
  paths, labels = folder_files.leave_out(paths, labels, bad, first.rstrip('.'),
                                         where, verb='read as clips', skip=skip,
                                         report=report)
  return paths, labels, [kept[p] for p in paths]


def _probed_on_every_host(
    paths: list[str], probed, process_index: int,
    process_count: int) -> list[tuple[int, int, int] | None]:
  """(frames, height, width) of every file of `paths`, or None where `probed(path)` gave a
  string (unreadable); this process probes every process_count-th file and gathers the
  others' from theirs."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  if process_count == 1 or process_count != jax.process_count():
    return [
        None if isinstance(r, str) else r
        for r in _threads().map(probed, paths)
    ]
  mine = paths[process_index::process_count]
  table = np.full((-(-len(paths) // process_count), 3), -1, np.int64)
  for row, result in enumerate(_threads().map(probed, mine)):
    if not isinstance(result, str):
      table[row] = result
  gathered = np.asarray(multihost_utils.process_allgather(table))
  rows = [
      gathered[i % process_count, i // process_count] for i in range(len(paths))
  ]
  return [None if row[0] < 0 else tuple(int(v) for v in row) for row in rows]


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'video' float32 [b, T, S, S, 3] in [-1, 1], 'label' int32 [b] in the
  split layout. Its `fingerprint` is `folder_files.files_fingerprint` of the split's files
  before the probe.

  Raises:
    DataError: a file of the split gives no clip (unless `skip_unreadable`).
  """
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  size = base.positive_int(config, 'image_size')
  num_frames = base.positive_int(config, 'num_frames')
  stride = base.positive_int(config, 'frame_stride')
  skip = folder_files.skip_unreadable(config)
  draws = video_clips.TrainDraws.from_config(config)
  paths, labels, num_classes, where = folder_files.split_files(
      config, split, VIDEOS)
  fingerprint = folder_files.files_fingerprint(paths, labels,
                                               str(base.get(config, 'path')))
  paths, labels, shapes = probe_split(paths, labels, where,
                                      num_frames=num_frames, stride=stride,
                                      size=size, skip=skip,
                                      report=process_index == 0,
                                      process_index=process_index,
                                      process_count=process_count)
  video_shape = (num_frames, size, size, 3)
  span = (num_frames - 1) * stride + 1  # Frames a clip covers.
  attrs = dict(image_shape=video_shape[1:], num_classes=num_classes,
               video_shape=video_shape)

  def batch(clips: list[np.ndarray], files: list[int]) -> base.Batch:
    stacked = np.stack(clips) if clips else np.zeros(
        (0,) + video_shape, np.uint8)
    out = {'video': base.to_unit_range(stacked)}
    if labels is not None:
      out['label'] = labels[np.asarray(files, np.int64)]
    return out

  if split == 'train':
    shorter_side = draws.shorter_side(size)
    reduced = [
        (length,) + video_clips.reduced_size(width, height, shorter_side)[::-1]
        for length, height, width in shapes
    ]

    def train_clip(step: int, row: int) -> tuple[np.ndarray, int]:
      clip = draws.clip(step, row, reduced, span=span, size=size)
      frames = read_frames(paths[clip.video],
                           np.arange(clip.start, clip.start + span, stride),
                           shorter_side)
      return video_clips.cut_train_clip(frames, clip, size), clip.video

    def make_batch(step: int, rows: np.ndarray) -> base.Batch:
      made = list(_threads().map(lambda row: train_clip(step, int(row)), rows))
      return batch([clip for clip, _ in made], [file for _, file in made])

    source = base.NumpyTrainSource(make_batch, per_host_batch_size=b,
                                   process_index=process_index,
                                   num_examples=None, **attrs)
  else:
    per_video = int(base.get(config, 'eval_clips_per_video'))
    starts = [(file, start)
              for file, (length, _, _) in enumerate(shapes)
              for start in video_clips.eval_clip_starts(
                  length, num_frames, stride)[:per_video or None]]

    def eval_clip(index: int) -> np.ndarray:
      file, start = starts[index]
      frames = read_frames(paths[file], np.arange(start, start + span, stride),
                           size)
      return video_clips.centre_clip(frames, size)

    def get_examples(indices: np.ndarray) -> base.Batch:
      clips = list(_threads().map(eval_clip, (int(i) for i in indices)))
      return batch(clips, [starts[int(i)][0] for i in indices])

    source = base.NumpyEvalSource(get_examples, num_examples=len(starts),
                                  global_batch_size=global_batch_size,
                                  per_host_batch_size=b,
                                  process_index=process_index, **attrs)
  source.fingerprint = fingerprint  # Token shards record it.
  return source
