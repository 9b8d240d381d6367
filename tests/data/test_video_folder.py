"""The `video_folder` dataset on tiny generated videos: train clips are the
frames the draws name (the seek is exact), eval clips are the consecutive
clips of the held-out files, class labels, and files that give no clip."""

import itertools
import os

import av
import numpy as np
import pytest

from vqlab import data
from vqlab.data import folder_files
from vqlab.data import video_clips
from vqlab.data import video_folder
from vqlab.errors import DataError

FRAMES, HEIGHT, WIDTH = 24, 40, 48
# (file, codec, pixel format, options): keyframes every few frames and
# B-frames, so that most clips start between keyframes; the .mkv has no frame
# count in its metadata (its packets are counted).
_X264 = ('libx264', 'yuv444p', dict(crf='0', g='5', bf='2'))
VIDEOS = {
    'train/cats/a.mp4': _X264,
    'train/cats/b.mkv': ('ffv1', 'yuv444p', dict(g='7')),
    # B-frames in an AVI: its first frame's time is 1, not the stream's 0.
    'train/dogs/c.avi': ('mpeg4', 'yuv420p',
                         dict(g='6', bf='2', qmin='1', qmax='2')),
    'val/dogs/d.mp4': _X264,
    'val/cats/e.mov': ('png', 'rgb24', {}),
}


def _frame(file: int, index: int) -> np.ndarray:
  """uint8 [HEIGHT, WIDTH, 3]: red 8 * index, green 40 * file, blue a ramp
  (so windows and flips differ)."""
  frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
  frame[..., 0] = 8 * index
  frame[..., 1] = 40 * file
  frame[..., 2] = np.arange(WIDTH) * 5
  return frame


def _write(path: str, file: int, codec: str, pix_fmt: str, options: dict,
           frames: int = FRAMES, rotation: int = 0,
           container_options: dict | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, 'w', options=container_options or {}) as container:
    stream = container.add_stream(codec, rate=25, options=options)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
    if rotation:
      stream.set_display_rotation(rotation)
    for i in range(frames):
      frame = av.VideoFrame.from_ndarray(_frame(file, i), format='rgb24')
      container.mux(stream.encode(frame))
    container.mux(stream.encode())


def _decoded(path: str) -> np.ndarray:
  """Every frame of `path`, decoded in order: uint8 [L, h, w, 3]."""
  with av.open(path) as container:
    return np.stack(
        [f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


def _as_uint8(videos: np.ndarray) -> np.ndarray:
  return np.round((videos + 1) * 127.5).astype(np.uint8)


def _files(videos: np.ndarray) -> set[int]:
  """The files (numbers) the clips `videos` [n, T, H, W, 3] in [-1, 1] came
  from, told by their green (40 * file; a lossy codec is off by a few)."""
  green = _as_uint8(videos)[:, 0, 0, 0, 1]
  return set(np.round(green / 40).astype(int).tolist())


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  for file, (name, (codec, pix_fmt, options)) in enumerate(VIDEOS.items()):
    _write(str(root / name), file, codec, pix_fmt, options)
  return root


def _config(path, **overrides):
  config = data.default_config('video_folder')
  config.update(path=str(path), image_size=HEIGHT, num_frames=4, frame_stride=2,
                crop_min_fraction=1.0, **overrides)
  return config


def test_train_clips_are_the_frames_their_draws_name(folder):
  """Windows of the whole height (crop_min_fraction 1: nothing resized), so
  a clip is frames start, start + 2, .. of the drawn file, cut and flipped
  as drawn (video_clips' draws, in its order): equal to the fully decoded
  frames, and red tells each frame's index."""
  config = _config(folder)
  source = data.build(config, split='train', global_batch_size=4)
  assert source.video_shape == (4, HEIGHT, HEIGHT, 3)
  assert source.num_classes == 2
  files = sorted(str(folder / n) for n in VIDEOS if n.startswith('train'))
  decoded = [_decoded(f) for f in files]
  starts, flips = set(), set()
  for step, batch in zip(range(3), source.batches(0)):
    for row, clip in enumerate(_as_uint8(batch['video'])):
      rng = np.random.default_rng((config.seed, step, row))
      file = rng.integers(3)
      start = rng.integers(FRAMES - 7 + 1)
      assert max(HEIGHT, round(rng.random() * HEIGHT)) == HEIGHT
      top, left = rng.integers(1), rng.integers(WIDTH - HEIGHT + 1)
      flip = rng.random() < 0.5
      want = decoded[file][start:start + 7:2, top:, left:left + HEIGHT]
      np.testing.assert_array_equal(clip, want[:, :, ::-1] if flip else want)
      np.testing.assert_allclose(clip[:, 20, 20, 0],
                                 8 * np.arange(start, start + 7, 2), atol=3)
      assert batch['label'][row] == int(file == 2)  # c.avi: the dog.
      starts.add(int(start))
      flips.add(bool(flip))
  assert flips == {False, True} and len(starts) > 4
  # Resume gives the same batch.
  again = next(source.batches(2))
  np.testing.assert_array_equal(again['video'], batch['video'])


def test_eval_clips_are_consecutive_clips_of_the_held_out_files(folder):
  """The split layout's val files, each cut into clips from frames 0, 8, 16
  (4 frames every 2), the centred 40x40; labels from their class folders."""
  evaluation = data.build(_config(folder), split='eval', global_batch_size=4)
  assert evaluation.num_examples == 6
  batches = list(evaluation.batches())
  clips = _as_uint8(np.concatenate([b['video'][b['mask']] for b in batches]))
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  want = [
      _decoded(str(folder / name))[start:start + 7:2, :, 4:44]
      for name in ('val/cats/e.mov', 'val/dogs/d.mp4')
      for start in (0, 8, 16)
  ]
  np.testing.assert_array_equal(clips, np.stack(want))
  assert labels.tolist() == [0, 0, 0, 1, 1, 1]
  # The first two of each file's.
  evaluation = data.build(_config(folder, eval_clips_per_video=2), split='eval',
                          global_batch_size=4)
  first_two = np.concatenate(
      [b['video'][b['mask']] for b in evaluation.batches()])
  np.testing.assert_array_equal(_as_uint8(first_two),
                                np.stack(want)[[0, 1, 3, 4]])


def test_eval_frames_of_another_aspect_are_centred_windows(folder):
  """eval_frame_size (h, w): the largest centred window of aspect w:h of the
  48x40 frames as shown, resized once to w x h; (40, 40) is the default
  eval's centred square."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  decoded = [
      _decoded(str(folder / name))[:7:2]
      for name in ('val/cats/e.mov', 'val/dogs/d.mp4')
  ]
  resized = lambda frames, w, h: np.stack([
      np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
      for f in frames
  ])
  windows = {
      (40, 48): [f for f in decoded],  # Whole frames, as they are.
      (20, 24): [resized(f, 24, 20) for f in decoded],  # Whole, halved.
      (16, 32): [resized(f[:, 8:32], 32, 16) for f in decoded],  # 48x24.
      (30, 15): [resized(f[:, :, 14:34], 15, 30) for f in decoded],  # 20x40.
  }
  for (h, w), want in windows.items():
    evaluation = data.build(
        _config(folder, eval_frame_size=(h, w), eval_clips_per_video=1),
        split='eval', global_batch_size=4)
    assert evaluation.video_shape == (4, h, w, 3)
    batch = next(iter(evaluation.batches()))
    np.testing.assert_array_equal(_as_uint8(batch['video'][batch['mask']]),
                                  np.stack(want), err_msg=f'{(h, w)}')
  square = lambda **kw: next(
      iter(
          data.build(_config(folder, eval_clips_per_video=1, **kw), split=
                     'eval', global_batch_size=4).batches()))['video']
  np.testing.assert_array_equal(square(eval_frame_size=(40, 40)), square())
  with pytest.raises(
      DataError, match=r"data\.eval_frame_size: '.*e\.mov' "
      r'is 48x40, smaller than 64x36'):
    data.build(_config(folder, eval_frame_size=(36, 64)), split='eval',
               global_batch_size=4)
  with pytest.raises(
      ValueError, match=r'data\.eval_frame_size: must be \(\) '
      r'or \(height, width\) of positive integers'):
    data.build(_config(folder, eval_frame_size=(36,)), split='eval',
               global_batch_size=4)


def test_flat_folder_holds_out_whole_files(folder):
  """data.path = train/: one pool of 3 files, no labels, one held out."""
  config = _config(folder / 'train', eval_fraction=0.3)
  train = data.build(config, split='train', global_batch_size=4)
  evaluation = data.build(config, split='eval', global_batch_size=4)
  listed = folder_files.list_tree(str(folder / 'train'), video_folder.VIDEOS)
  kept, held_out = folder_files.hold_out(listed, str(folder / 'train'), 0.3)
  assert len(held_out) == 1 and train.num_classes is None
  file_of = lambda path: [n for n in VIDEOS if path.endswith(n)]
  number = lambda path: list(VIDEOS).index(file_of(path)[0])
  batches = list(itertools.islice(train.batches(), 4))
  assert 'label' not in batches[0]
  assert _files(np.concatenate([b['video'] for b in batches
                               ])) == {number(p) for p in kept}
  assert _files(next(
      evaluation.batches())['video'][:3]) == {number(held_out[0])}


def _class_folder(root, count: int) -> str:
  """root/train/x/<0..count-1>.mov and root/val/x/0.mov: root/train/x."""
  _write(str(root / 'val' / 'x' / '0.mov'), 0, 'png', 'rgb24', {})
  for i in range(count):
    _write(str(root / 'train' / 'x' / f'{i}.mov'), i, 'png', 'rgb24', {})
  return str(root / 'train' / 'x')


def test_a_file_that_gives_no_clip_is_named(tmp_path):
  folder = _class_folder(tmp_path, 3)
  short = os.path.join(folder, 'short.mp4')
  _write(short, 3, 'libx264', 'yuv444p', {}, frames=6)
  config = _config(tmp_path)
  with pytest.raises(DataError) as e:
    data.build(config, split='train', global_batch_size=2)
  assert '\n' not in str(e.value)
  assert str(e.value).startswith(
      f"data.num_frames: '{short}' has 6 frames, fewer than a clip of 4 "
      f'frames every 2 spans (7); 1 of the 4 videos in {tmp_path}/train '
      'cannot be read as clips: remove them, or set '
      '--config.data.skip_unreadable=True')
  config.update(image_size=HEIGHT + 1, crop_min_fraction=0.5)
  with pytest.raises(
      DataError, match=r"^data\.image_size: '.*/0\.mov' is "
      r'48x40, smaller than 41; 4 of the 4 videos'):
    data.build(config, split='train', global_batch_size=2)


def test_skip_unreadable_leaves_out_a_corrupt_file(tmp_path, capsys):
  bad = os.path.join(_class_folder(tmp_path, 3), '1.mov')
  with open(bad, 'r+b') as f:
    f.truncate(100)  # The header cut short.
  config = _config(tmp_path)
  with pytest.raises(DataError, match=f'^{bad}: cannot be read by PyAV '):
    data.build(config, split='train', global_batch_size=2)
  config.skip_unreadable = True
  source = data.build(config, split='train', global_batch_size=6)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'vqlab: skipped 1 of the 3 videos in {tmp_path}/train (unreadable; '
      f'first: {bad}: cannot be read by PyAV (')
  assert _files(next(source.batches())['video']) == {0, 2}


def test_fingerprint_follows_the_files(tmp_path):
  for i in range(3):
    _write(str(tmp_path / f'{i}.mov'), i, 'png', 'rgb24', {})
  config = _config(tmp_path, eval_fraction=0.3)
  fingerprint = lambda: data.build(config, split='train', global_batch_size=2
                                  ).fingerprint
  before = fingerprint()
  assert fingerprint() == before
  # The same without building the source (no probe): sampling's statistics
  # cache reads it.
  assert data.split_fingerprint(config, 'train') == before
  _write(str(tmp_path / '3.mov'), 3, 'png', 'rgb24', {})
  assert fingerprint() != before
  assert data.split_fingerprint(config, 'train') == fingerprint()


def test_two_hosts_each_probe_half_the_files_and_leave_out_the_same(
    tmp_path, monkeypatch):
  """Process 0 of 2 probes files 0 and 2 and takes process 1's shapes of 1
  and 3 (each host probed every file at every start); file 3, which process
  1 could not read, is left out by both."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  folder = _class_folder(tmp_path, 4)
  paths = [os.path.join(folder, f'{i}.mov') for i in range(4)]
  probed = []
  probe = video_folder.probe
  monkeypatch.setattr(video_folder, 'probe',
                      lambda path: probed.append(path) or probe(path))
  # Process 1's table: file 1's (frames, height, width, origin, has one),
  # file 3 unreadable.
  theirs = np.array([[7, 3, 2, 5, 1], [-1] * 5])
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda table: np.stack([table, theirs]))
  kept, _, shapes = video_folder.probe_split(paths, None, 'videos',
                                             num_frames=4, stride=2, size=2,
                                             skip=True, report=False,
                                             process_index=0, process_count=2)
  # File 3 once more, by this host, for why it is left out.
  assert probed == [paths[0], paths[2], paths[3]]
  assert kept == paths[:3]
  assert shapes == [(FRAMES, HEIGHT, WIDTH, 0), (7, 3, 2, 5),
                    (FRAMES, HEIGHT, WIDTH, 0)]
  with pytest.raises(
      DataError, match=f'^{paths[3]}: could not be read by PyAV on the host '
      'that probed it; 1 of the 4 videos cannot be read as clips'):
    video_folder.probe_split(paths, None, 'videos', num_frames=4, stride=2,
                             size=2, skip=False, report=False, process_index=0,
                             process_count=2)


def test_a_phone_video_is_turned_as_its_display_matrix_says(tmp_path):
  """A portrait phone video: landscape frames whose display matrix turns
  them a quarter clockwise (rotation -90, as ffmpeg's autorotate and
  players do); they were read sideways."""
  path = str(tmp_path / 'portrait.mp4')
  _write(path, 1, *_X264, frames=8, rotation=-90)
  found = video_folder.probe(path)
  assert (found.frames, found.height, found.width) == (8, WIDTH, HEIGHT)
  frames = video_folder.read_frames(path, np.arange(2, 5), 1000, found.origin)
  np.testing.assert_array_equal(frames,
                                np.rot90(_decoded(path)[2:5], -1, (1, 2)))


def test_a_file_cut_short_counts_the_frames_it_has(tmp_path):
  """An MP4 whose index (at its front) lists 24 frames, cut after 12 (a
  download stopped early): the last clips repeated its last frame."""
  whole = str(tmp_path / 'whole.mp4')
  _write(whole, 1, *_X264, container_options={'movflags': 'faststart'})
  with av.open(whole) as container:
    assert container.streams.video[0].frames == FRAMES
    packets = sorted(p.pos for p in container.demux(video=0) if p.size)
  cut = str(tmp_path / 'cut.mp4')
  with open(whole, 'rb') as f:
    content = f.read()
  with open(cut, 'wb') as f:
    f.write(content[:packets[12]])  # Up to packet 12, in file order.
  found = video_folder.probe(cut)
  assert found.frames == len(_decoded(cut)) < FRAMES
  last = np.arange(found.frames - 3, found.frames)
  np.testing.assert_allclose(
      video_folder.read_frames(cut, last, 1000, found.origin)[:, 20, 20, 0],
      8 * last, atol=3)
  with pytest.raises(DataError,
                     match=f'^{cut}: ends before frame {FRAMES - 1}'):
    video_folder.read_frames(cut, np.arange(FRAMES - 3, FRAMES), 1000,
                             found.origin)


_O = 1 << 16  # 1.0 in a display matrix's 16.16 entries.


@pytest.mark.parametrize(
    'matrix, rotation, shown',
    [
        # (m[0], m[1], m[3], m[4]), frame.rotation, what ffmpeg shows.
        ((-_O, 0, 0, _O), -180, lambda x: x[:, ::-1]),  # Mirrored.
        ((_O, 0, 0, -_O), 0, lambda x: x[::-1]),  # Upside down.
        ((-_O, 0, 0, -_O), -180, lambda x: x[::-1, ::-1]),  # Half a turn.
        ((0, _O, -_O, 0), -90,
         lambda x: np.rot90(x, -1)),  # A phone's portrait.
        ((0, -_O, _O, 0), 90, lambda x: np.rot90(x, 1)),
        ((0, _O, _O, 0), -90, lambda x: x.swapaxes(0, 1)),  # Transposed.
        ((0, -_O, -_O, 0), 90, lambda x: x[::-1, ::-1].swapaxes(0, 1)),
    ])
def test_display_matrices_turn_and_mirror_as_ffmpeg_does(
    matrix, rotation, shown):
  """The flipped matrices were read as their rotation alone (a mirrored
  video upside down, a flipped one not at all)."""
  rgb = np.arange(2 * 3 * 1).reshape(2, 3, 1)
  m0, m1, m3, m4 = matrix
  full = np.array([m0, m1, 0, m3, m4, 0, 0, 0, 1 << 30], np.int32)
  np.testing.assert_array_equal(video_clips.oriented(rgb, rotation, full),
                                shown(rgb))


def test_an_edit_list_that_ends_early_counts_the_frames_shown(tmp_path):
  """An MP4 trimmed without re-encoding: its edit list shows 17 of its 24
  frames, and the packets past it decode to nothing. The count of 24 from
  those packets made clips near the end a DataError."""
  path = str(tmp_path / 'trimmed.mp4')
  _write(path, 1, *_X264)
  with open(path, 'rb') as f:
    content = bytearray(f.read())
  elst = content.find(b'elst')  # Version 0, one entry: duration, time, rate.
  duration = int.from_bytes(content[elst + 12:elst + 16], 'big')
  content[elst + 12:elst + 16] = (duration * 17 // FRAMES).to_bytes(4, 'big')
  with open(path, 'wb') as f:
    f.write(content)
  assert len(_decoded(path)) == 17
  found = video_folder.probe(path)
  assert found.frames == 17
  last = np.arange(13, 17)
  np.testing.assert_allclose(
      video_folder.read_frames(path, last, 1000, found.origin)[:, 20, 20, 0],
      8 * last, atol=3)
