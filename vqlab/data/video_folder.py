"""`video_folder`: clips of your own video files, decoded with PyAV as they are needed.

The folder `data.path` is read in the layouts of `image_folder` (`folder_files`): split
folders `<path>/train/<class>/...` and `<path>/val/<class>/...`, whose batches carry 'label', or
`<path>/train/<files>` and `<path>/val/<files>` (Kinetics as its downloaders leave it), without
labels; or any other folder as one pool of files without labels (UCF-101's
`<path>/<class>/<files>` too), `eval_fraction` of them held out whole for eval. Video files
end in `VIDEO_EXTENSIONS` (any case).

Files are not held in memory. When the source is built each file of the split is probed once
(`probe`): its first frame is decoded, and its last group of pictures after a seek to its end,
which gives its frame count in the units clips are cut in (a container's own count can be wrong:
a file cut short, or cut from a longer one without re-encoding). Frames are read as players
show them: turned by the display matrix (a phone's portrait video is stored as landscape
frames) and with square pixels (`video_clips.display_frame`). A file that cannot be read, has
fewer frames than a clip spans (`(num_frames - 1) * frame_stride + 1`) or a shorter side under
`image_size` is a `DataError` whose one line names it (and the key), or, with
`skip_unreadable`, is left out and one line says how many were.

Clips are those of `video_clips`, cut from the frames decoded for them only: train example
(step, row) draws a file uniformly, a start, a square window and a flip from
`np.random.default_rng((seed, step, row))` as `video_clips.TrainDraws.clip` does, over frames
whose shorter side is reduced to `image_size / crop_min_fraction` (never enlarged); eval cuts
every held-out file into consecutive clips from its first frame (`video_clips.eval_clip_starts`;
the first `eval_clips_per_video` of them, unless 0), the centred square of frames reduced to
`image_size` (with `eval_frame_size` (h, w): the largest centred window of that aspect,
resized to h x w). Frame i of a file is the frame shown at time i / frame rate after the first
frame's (for a constant-rate file, its i-th frame): a clip is decoded from the last keyframe
before its first frame. The rows of a batch are decoded by threads; each
row depends on (step, row) only.

Each split has a fingerprint (`folder_files.files_fingerprint`): --mode=tokenize makes its
token shards again when its files change.

Batches: 'video' float32 [b, num_frames, S, S, 3] in [-1, 1] (eval: [b, num_frames, h, w, 3]
with `eval_frame_size`), 'label' int32 [b] in the split layout, and on eval 'mask' bool [b].
Needs the `av` package (a vqlab dependency).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Any, NamedTuple

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
      # (height, width) of the eval frames: the largest centred window of
      # that aspect, resized to it (e.g. (360, 640): 16:9 videos whole, as
      # codecs are compared); (): the centred square at image_size.
      'eval_frame_size': (),
      **video_clips.clip_defaults(),
  })


@functools.lru_cache(maxsize=1)
def _threads() -> concurrent.futures.ThreadPoolExecutor:
  """The threads that probe and decode files (PyAV decodes without the GIL)."""
  return concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1))


class Probe(NamedTuple):
  """What `probe` finds in a video file.

  Attributes:
    frames: L; frame i is the one shown at time i / rate after the first frame's.
    height, width: of the frames as players show them (`video_clips.display_frame`).
    origin: the first frame's time (pts, in the stream's time base), or None when the frames
      carry no times (they are counted from the start instead).
  """
  frames: int
  height: int
  width: int
  origin: int | None


def probe(path: str) -> Probe:
  """Probes the first video stream of `path`: its first frame is decoded, and its last group of
  pictures after a seek to its end, for the last frame's time (when that fails, as in a file
  cut short, or without times, every frame is decoded).

  Raises:
    ValueError or av.FFmpegError: the file cannot be read.
  """
  av = video_clips.import_av('video_folder')
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError('no video stream')
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
      raise ValueError('no frame rate')
    first = next(container.decode(stream), None)
    if first is None:
      raise ValueError('no frame decodes')
    height, width = video_clips.display_frame(
        first, stream.sample_aspect_ratio).shape[:2]
    origin, time_base = first.pts, stream.time_base
    last = None if origin is None else _last_time(av, container, stream)
  if last is None:  # Every frame decoded: a damaged file fails here, not in training.
    with av.open(path) as container:
      count, last = 0, origin
      for frame in container.decode(video=0):
        count += 1
        if origin is not None and frame.pts is not None:
          last = max(last, frame.pts)
    if origin is None:
      return Probe(count, height, width, None)
  return Probe(
      _frame_index(last, origin, time_base, rate) + 1, height, width, origin)


def _last_time(av, container, stream) -> int | None:
  """The latest time of a frame decoded from `stream` after a seek to its end (its last
  group of pictures), or None (the seek or the decoding fails, or no frame is there: a file
  cut short, whose index names packets past the cut). Decoded frames, not packets: packets
  past the end of an edit list, or B-frames whose reference was cut off, decode to nothing."""
  try:
    container.seek(2**62, stream=stream, backward=True, any_frame=False)
    times = [
        frame.pts for frame in container.decode(stream) if frame.pts is not None
    ]
  except (av.FFmpegError, OSError):
    return None
  return max(times, default=None)


def _frame_index(pts: int, origin: int, time_base, rate) -> int:
  """The frame shown at time `pts` (`Probe`)."""
  return round((pts - origin) * time_base * rate)


def read_frames(path: str, indices: np.ndarray, shorter_side: int,
                origin: int | None) -> np.ndarray:
  """uint8 [k, h, w, 3]: the frames `indices` (int [k], increasing, below the probed
  `Probe.frames`) of the video file `path` whose first frame's time is `origin`
  (`Probe.origin`), as `video_clips.reduced_frame` gives them.

  Frame i is the one shown at time i / rate after the first frame's. Decoding starts at the
  last keyframe before the first one.

  Raises:
    DataError: naming the file, when it cannot be decoded or ends before the frames.
  """
  av = video_clips.import_av('video_folder')
  wanted = [int(i) for i in indices]
  target = wanted[0] if origin is not None else 0
  try:
    for _ in range(_SEEKS):
      frames, landed = _decoded(av, path, wanted, target, origin)
      if frames is not None or landed is None:
        break
      # The seek landed on a keyframe past the first frame (a demuxer that seeks by decode
      # time, with B-frames): seek again, before the frames it went past.
      target -= 2 * (landed - target) + 1
    else:
      frames = None
    if frames is None:
      frames, _ = _decoded(av, path, wanted, 0, origin)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise DataError(f'{folder_files.shown(path)}: cannot be decoded '
                    f'({_reason(e)}).') from e
  if frames is None:
    raise DataError(
        f'{folder_files.shown(path)}: ends before frame {wanted[-1]}, which its probe found '
        '(was it changed since?).')
  frames, sample_aspect = frames
  return np.stack([
      video_clips.reduced_frame(f, shorter_side, sample_aspect) for f in frames
  ])


_SEEKS = 3  # Seeks to try before decoding a file from its start.


def _decoded(av, path: str, wanted: list[int], seek_to: int,
             origin: int | None) -> tuple[tuple[list, Any] | None, int | None]:
  """(the PyAV frames shown at frames `wanted` of `path` (`read_frames`) and the stream's
  sample aspect ratio, None), decoding from the last keyframe at or before frame `seek_to`
  (> 0; 0: from the start); or (None, the frame it landed on) when that is past wanted[0];
  (None, None) when the file ends before wanted[-1]."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_count = 1  # Files are decoded by threads of their own.
    rate = stream.average_rate or stream.guessed_rate
    if seek_to > 0:
      # The time of frame seek_to in stream units.
      container.seek(origin + int(seek_to / rate / stream.time_base),
                     stream=stream, backward=True, any_frame=False)
    out, previous = [], None
    for n, frame in enumerate(container.decode(stream)):
      if origin is None or frame.pts is None:
        i = n  # Frames without times are counted from the start (seek_to is 0).
      else:
        i = _frame_index(frame.pts, origin, stream.time_base, rate)
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
    if len(out) < len(wanted):
      return None, None
    return (out, stream.sample_aspect_ratio), None


def _reason(error: Exception) -> str:
  return str(getattr(error, 'strerror', None) or error)


def probe_split(
    paths: list[str], labels: np.ndarray | None, where: str, *, num_frames: int,
    stride: int, size: int, skip: bool, report: bool, process_index: int = 0,
    process_count: int = 1, frame_size: tuple[int, int] | None = None
) -> tuple[list[str], np.ndarray | None, list[Probe]]:
  """Probes every file of `paths` [N] (`probe`, by threads) and leaves out those that give no
  clip (`folder_files.leave_out`) of frames `frame_size` (h, w), else of side `size`. Each
  of the run's processes probes every process_count-th file and all exchange what they found
  (Kinetics-600's 390,000 files took each host minutes at every start); hosts simulated in one
  process (process_count is not jax's) probe every file.

  Returns:
    (paths [M], labels [M] or None, their probes [M]).

  Raises:
    DataError: naming the first file that gives no clip and the key, unless `skip`.
  """
  av = video_clips.import_av('video_folder')

  def probed(path: str) -> Probe | str:
    try:
      return probe(path)
    except (av.FFmpegError, OSError, ValueError) as e:
      return f'{folder_files.shown(path)}: cannot be read by PyAV ({_reason(e)})'

  probes = _probed_on_every_host(paths, probed, process_index, process_count)
  problems = [
      'unreadable' if found is None else
      (video_clips.clip_problem(repr(folder_files.shown(path)), found[:3],
                                num_frames, stride, size) or
       _frame_size_problem(repr(folder_files.shown(path)), found, frame_size))
      for path, found in zip(paths, probes)
  ]
  bad = [i for i, problem in enumerate(problems) if problem is not None]
  first = problems[bad[0]] if bad else ''
  if bad and probes[
      bad[0]] is None:  # Why, from this host (another may have probed it).
    first = probed(paths[bad[0]])
    if not isinstance(first, str):
      first = (
          f'{folder_files.shown(paths[bad[0]])}: could not be read by PyAV on the host '
          'that probed it')
  kept = dict(zip(paths, probes))
  paths, labels = folder_files.leave_out(paths, labels, bad, first.rstrip('.'),
                                         where, verb='read as clips', skip=skip,
                                         report=report)
  return paths, labels, [kept[p] for p in paths]


def _frame_size_problem(name: str, found: Probe,
                        frame_size: tuple[int, int] | None) -> str | None:
  """Why the file `name` (in words) cannot give eval frames of `frame_size` (h, w) without
  enlarging them; None when it can (or no frame size is asked for)."""
  if frame_size is None or (found.height >= frame_size[0] and
                            found.width >= frame_size[1]):
    return None
  return (
      f'data.eval_frame_size: {name} is {found.width}x{found.height}, smaller than '
      f'{frame_size[1]}x{frame_size[0]}.')


def eval_frame_size(
    config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """`data.eval_frame_size` as (height, width), or None for ()."""
  value = tuple(base.get(config, 'eval_frame_size'))
  if not value:
    return None
  if len(value) != 2 or not all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
      for v in value):
    raise ValueError('data.eval_frame_size: must be () or (height, width) of '
                     f'positive integers, got {value!r}.')
  return int(value[0]), int(value[1])


def _probed_on_every_host(paths: list[str], probed, process_index: int,
                          process_count: int) -> list[Probe | None]:
  """The `Probe` of every file of `paths`, or None where `probed(path)` gave a string
  (unreadable); this process probes every process_count-th file and gathers the others'
  from theirs."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  if process_count == 1 or process_count != jax.process_count():
    return [
        None if isinstance(r, str) else r
        for r in _threads().map(probed, paths)
    ]
  mine = paths[process_index::process_count]
  # A row per file: frames (-1: unreadable), height, width, origin, whether it has one.
  table = np.full((-(-len(paths) // process_count), 5), -1, np.int64)
  for row, found in enumerate(_threads().map(probed, mine)):
    if not isinstance(found, str):
      table[row] = (*found[:3], found.origin or 0, found.origin is not None)
  gathered = np.asarray(multihost_utils.process_allgather(table))
  rows = [
      gathered[i % process_count, i // process_count] for i in range(len(paths))
  ]
  return [
      None if row[0] < 0 else Probe(int(row[0]), int(row[1]), int(row[2]),
                                    int(row[3]) if row[4] else None)
      for row in rows
  ]


def fingerprint(config: ml_collections.ConfigDict, split: str) -> str:
  """The `fingerprint` of `build`'s source of `split`, without building it
  (no probe)."""
  paths, labels, _, _ = folder_files.split_files(config, split, VIDEOS)
  return folder_files.files_fingerprint(paths, labels,
                                        str(base.get(config, 'path')))


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'video' float32 [b, T, S, S, 3] in [-1, 1] (eval: [b, T, h, w, 3]
  with `eval_frame_size`), 'label' int32 [b] in the split layout. Its `fingerprint` is
  `folder_files.files_fingerprint` of the split's files before the probe.

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
  frame_size = eval_frame_size(config) if split == 'eval' else None
  paths, labels, num_classes, where = folder_files.split_files(
      config, split, VIDEOS)
  fingerprint = folder_files.files_fingerprint(paths, labels,
                                               str(base.get(config, 'path')))
  paths, labels, probes = probe_split(
      paths, labels, where, num_frames=num_frames, stride=stride, size=size,
      skip=skip, report=process_index == 0, process_index=process_index,
      process_count=process_count, frame_size=frame_size)
  video_shape = (num_frames,) + (frame_size or (size, size)) + (3,)
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
        (found.frames,) +
        video_clips.reduced_size(found.width, found.height, shorter_side)[::-1]
        for found in probes
    ]

    def train_clip(step: int, row: int) -> tuple[np.ndarray, int]:
      clip = draws.clip(step, row, reduced, span=span, size=size)
      frames = read_frames(paths[clip.video],
                           np.arange(clip.start, clip.start + span, stride),
                           shorter_side, probes[clip.video].origin)
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
              for file, found in enumerate(probes)
              for start in video_clips.eval_clip_starts(
                  found.frames, num_frames, stride)[:per_video or None]]

    def eval_clip(index: int) -> np.ndarray:
      file, start = starts[index]
      found = probes[file]
      indices = np.arange(start, start + span, stride)
      if frame_size is None:
        frames = read_frames(paths[file], indices, size, found.origin)
        return video_clips.centre_clip(frames, size)
      # Frames as shown, resized once: their window to frame_size.
      frames = read_frames(paths[file], indices, min(found.height, found.width),
                           found.origin)
      return video_clips.centre_window(frames, *frame_size)

    def get_examples(indices: np.ndarray) -> base.Batch:
      clips = list(_threads().map(eval_clip, (int(i) for i in indices)))
      return batch(clips, [starts[int(i)][0] for i in indices])

    source = base.NumpyEvalSource(get_examples, num_examples=len(starts),
                                  global_batch_size=global_batch_size,
                                  per_host_batch_size=b,
                                  process_index=process_index, **attrs)
  source.fingerprint = fingerprint  # Token shards record it.
  return source
