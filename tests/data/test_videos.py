"""Tests of the video datasets: moving_shapes, video_clips, tfds_video (on tfds mock data) and
joint."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from tests.data.test_datasets import _with
from tests.data.test_datasets import assert_batches_equal
from tests.data.test_datasets import check_eval_contract
from tests.data.test_datasets import check_train_contract
from tests.data.test_datasets import concat_hosts
from tests.data.test_datasets import take
from vqlab import data
from vqlab.data import moving_shapes
from vqlab.data import video_clips
from vqlab.errors import ConfigError
from vqlab.errors import DataError


def check_video_batch(batch, b, shape, *, label, eval_):
  """Keys, shapes, dtypes and range of a video batch; shape = (T, H, W, C)."""
  assert set(batch) == {'video'} | ({'label'} if label else
                                    set()) | ({'mask'} if eval_ else set())
  assert batch['video'].shape == (
      b,) + shape and batch['video'].dtype == np.float32
  assert batch['video'].min() >= -1 and batch['video'].max() <= 1
  if label:
    assert batch['label'].shape == (b,) and batch['label'].dtype == np.int32
  if eval_:
    assert batch['mask'].shape == (b,) and batch['mask'].dtype == bool


def small_moving_shapes(**overrides):
  return _with(
      data.default_config('moving_shapes'), **{
          'image_size': 16,
          'num_frames': 4,
          'num_train_examples': 20,
          'num_eval_examples': 10,
          **overrides
      })


def test_registry_kinds_and_image_sources_have_no_video_shape():
  assert [
      data.kind(n)
      for n in ('shapes', 'tfds', 'moving_shapes', 'tfds_video', 'joint')
  ] == ['image', 'image', 'video', 'video', 'joint']
  for name in ('moving_shapes', 'tfds_video', 'joint'):
    config = data.default_config(name)
    assert config.name == name and config.image_size > 0
  source = data.build(_with(data.default_config('shapes'), image_size=8),
                      split='train', global_batch_size=2)
  assert source.video_shape is None and source.image_shape == (8, 8, 3)


# --------------------------------------------------------------------------------------------
# moving_shapes.
# --------------------------------------------------------------------------------------------


def test_moving_shapes_contracts():
  config = small_moving_shapes()
  source, batches = check_train_contract(
      config, steps=4)  # 32 > 20 clips: crosses an epoch.
  assert source.video_shape == (4, 16, 16, 3) and source.image_shape == (16, 16,
                                                                         3)
  assert source.num_examples == 20 and source.num_classes == len(config.shapes)
  check_video_batch(batches[0], 8, (4, 16, 16, 3), label=True, eval_=False)

  source, full, hosts = check_eval_contract(config, global_batch=4)
  assert source.num_examples == 10 and [int(b['mask'].sum()) for b in full
                                       ] == [4, 4, 2]
  check_video_batch(full[-1], 4, (4, 16, 16, 3), label=True, eval_=True)
  assert_batches_equal(full, concat_hosts(hosts))
  want = moving_shapes._renderer(config).batch(np.arange(
      20, 30))  # The indices after train.
  for k in ('video', 'label'):
    np.testing.assert_array_equal(
        np.concatenate([b[k][b['mask']] for b in full]), want[k])
  assert not np.abs(
      full[-1]['video'][~full[-1]['mask']]).any()  # Padding rows are zeros.

  gray = take(
      data.build(_with(config, channels=1), split='train', global_batch_size=2),
      1)[0]
  check_video_batch(gray, 2, (4, 16, 16, 1), label=True, eval_=False)


def test_moving_shapes_move_and_bounce_inside():
  renderer = moving_shapes._renderer(
      small_moving_shapes(num_frames=6, min_speed=0.05))
  for i in range(5):
    video, _ = renderer.example(i)
    assert all(not np.array_equal(video[t], video[t + 1]) for t in range(5)), i
  still = moving_shapes._renderer(
      small_moving_shapes(min_speed=0.0, max_speed=0.0))
  video, _ = still.example(0)
  np.testing.assert_array_equal(video, np.broadcast_to(video[:1], video.shape))

  rng = np.random.default_rng(0)
  for _ in range(20):
    size, radius = 16, rng.uniform(1, 4)  # >= 8 pixels of free range per axis.
    start = rng.uniform(radius, size - radius, size=2)
    velocity = rng.uniform(-1, 1, size=2)
    centres = moving_shapes.bounce(start, velocity, radius, size, 200)
    assert centres.shape == (200, 2)
    np.testing.assert_allclose(centres[0], start)
    assert centres.min() >= radius - 1e-9 and centres.max(
    ) <= size - radius + 1e-9
    steps = np.abs(np.diff(centres, axis=0))
    assert (steps
            <= np.abs(velocity) + 1e-9).all()  # Reflection never speeds up.
    assert np.isclose(
        steps, np.abs(velocity)).mean() > 0.8  # Mostly straight-line steps.
  np.testing.assert_allclose(
      moving_shapes.bounce(np.array([2.0, 3.0]), np.array([1.0, 1.0]), 1.0, 5,
                           6)[:, 0], [2, 3, 4, 3, 2, 1])


def test_moving_shapes_errors():
  for overrides, match in ((dict(num_frames=0),
                            'data.num_frames: must be a positive integer'),
                           (dict(num_shapes=(2, 1)),
                            r'data.num_shapes: need 1 <= lo <= hi'),
                           (dict(min_speed=0.1, max_speed=0.05),
                            'data.max_speed: need 0 <= data.min_speed'),
                           (dict(shapes=('hexagon',)),
                            'data.shapes: need a non-empty tuple'),
                           (dict(size_range=(0.5, 1.5)),
                            'data.size_range: need 0 < lo <= hi <= 1')):
    with pytest.raises(ValueError, match=match):
      data.build(small_moving_shapes(**overrides), split='train',
                 global_batch_size=2)


# --------------------------------------------------------------------------------------------
# joint.
# --------------------------------------------------------------------------------------------


def small_joint(**overrides):
  config = data.default_config('joint')
  config.update({'image_size': 16, **overrides})
  config.image.update(image_size=16, num_train_examples=20, num_eval_examples=6)
  config.video = small_moving_shapes()
  return config


def _shown_frames(name):
  """Every frame of a bundled video as players show it: uint8 [L, h, w, 3],
  PyAV's decoded pixels stretched to the stream's sample aspect ratio
  (antialiased bilinear)."""
  import av  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with av.open(video_clips.video_path(name)) as container:
    aspect = container.streams.video[0].sample_aspect_ratio
    frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
  height, width = frames[0].shape[:2]
  shown = round(width * aspect)
  return np.stack([
      np.asarray(Image.fromarray(f).resize((shown, height), Image.BILINEAR))
      for f in frames
  ])


def test_video_clips_are_windows_of_the_bundled_frames():
  """At image_size = carphone's height (144) nothing is resized: an eval
  clip is the centred 144x144 of frames 0, 2, .. 8, then 10, 12, ..; a train
  clip (windows of the whole height) is frames s, s + 2, .. of one window at
  one offset, flipped or not, found by brute force."""
  # [120, 144, 193, 3]: 176x144 pixels of aspect 128:117 (the eval clips were
  # 9% narrower than shown).
  frames = _shown_frames('carphone')
  assert frames.shape == (120, 144, 193, 3)
  config = _with(data.default_config('video_clips'), image_size=144,
                 num_frames=5, frame_stride=2, train_videos=('carphone',),
                 eval_videos=('bikes',), crop_min_fraction=1.0)
  source, batches = check_train_contract(config, global_batch=4, steps=3)
  assert source.video_shape == (5, 144, 144, 3) and source.num_classes is None
  check_video_batch(batches[0], 4, (5, 144, 144, 3), label=False, eval_=False)
  as_uint8 = lambda v: np.round((v + 1) * 127.5).astype(np.uint8)
  # Row 72 of every window of every first frame: [112 starts, 50 lefts, 144, 3].
  rows = np.lib.stride_tricks.sliding_window_view(frames[:112, 72], 144, axis=1)
  rows = np.moveaxis(rows, -1, -2)
  found = set()
  for clip in np.concatenate([as_uint8(b['video']) for b in batches]):
    matches = [(int(start), int(left), flip)
               for flip in (False, True)
               for start, left in zip(*np.nonzero(
                   np.all(rows == _window(clip[0], 0, flip)[72], axis=(2, 3))))
               if np.array_equal(clip[0], _window(frames[start], left, flip))]
    assert len(matches) == 1
    start, left, flip = matches[0]
    for t in range(5):
      np.testing.assert_array_equal(clip[t],
                                    _window(frames[start + 2 * t], left, flip))
    found.add(flip)
  assert found == {False, True}

  config.update(train_videos=('bikes',), eval_videos=('carphone',))
  evaluation, full, _ = check_eval_contract(config, global_batch=4)
  assert evaluation.num_examples == 12  # Starts 0, 10, .., 110.
  clips = np.concatenate([as_uint8(b['video'][b['mask']]) for b in full])
  for k in (0, 11):
    np.testing.assert_array_equal(clips[k], frames[10 * k:10 * k + 9:2, :,
                                                   24:168])


def _window(frame, left, flip):
  window = frame[:, left:left + 144]
  return window[:, ::-1] if flip else window


def test_video_clips_errors():
  config = data.default_config('video_clips')
  for overrides, message in [
      ({
          'eval_videos': ('bikes',)
      }, r"data\.eval_videos: \['bikes'\] also in data\.train_videos"),
      ({
          'train_videos': ('cat',)
      }, r"data\.train_videos: unknown videos \['cat'\]"),
      ({
          'train_videos': ('carphone',),
          'eval_videos': ('bikes',),
          'num_frames': 61,
          'frame_stride': 2
      }, r"data\.num_frames: 'carphone' has 120 frames, fewer than a clip of "
       r'61 frames every 2 spans \(121\)'),
      ({
          'train_videos': ('carphone',),
          'eval_videos': ('bikes',),
          'image_size': 160,
          'crop_min_fraction': 1.0
      }, r"data\.image_size: 'carphone' is 193x144, smaller than 160"),
  ]:
    with pytest.raises(ValueError, match=message):
      data.build(_with(config, **overrides), split='train', global_batch_size=2)


def test_joint_contracts():
  config = small_joint()
  source, batches = check_train_contract(config, steps=4)
  assert source.image_shape == (16, 16, 3) and source.video_shape == (4, 16, 16,
                                                                      3)
  assert (source.per_host_image_batch_size,
          source.per_host_video_batch_size) == (4, 4)
  assert set(batches[0]) == {'image', 'video'}
  assert batches[0]['image'].shape == (4, 16, 16, 3)
  assert batches[0]['video'].shape == (4, 4, 16, 16, 3)
  image_only = take(
      data.build(config.image, split='train', global_batch_size=4), 4)
  video_only = take(
      data.build(config.video, split='train', global_batch_size=4), 4)
  for joint, image, video in zip(batches, image_only, video_only):
    np.testing.assert_array_equal(joint['image'], image['image'])
    np.testing.assert_array_equal(joint['video'], video['video'])

  quarter = data.build(_with(config, image_batch_fraction=0.25), split='train',
                       global_batch_size=8, process_index=1, process_count=2)
  assert (quarter.per_host_image_batch_size,
          quarter.per_host_video_batch_size) == (1, 3)

  _, full, hosts = check_eval_contract(config,
                                       global_batch=4)  # The video eval set.
  assert_batches_equal(
      full,
      list(
          data.build(config.video, split='eval',
                     global_batch_size=4).batches()))
  assert_batches_equal(full, concat_hosts(hosts))


def test_joint_errors():

  def build(config, **kwargs):
    return data.build(config, split='train', global_batch_size=8, **kwargs)

  with pytest.raises(ValueError,
                     match=r'data.image_batch_fraction: must be in \(0, 1\)'):
    build(small_joint(image_batch_fraction=1.0))
  with pytest.raises(
      ValueError, match='data.image_batch_fraction: 0.25 of the global batch 8 '
      'gives 2 images and 6 videos; .* process_count=4'):
    build(small_joint(image_batch_fraction=0.25), process_index=0,
          process_count=4)
  config = small_joint()
  config.video.num_frames = 0
  with pytest.raises(ValueError,
                     match='data.video.num_frames: must be a positive integer'):
    build(config)
  config = small_joint()
  config.video.name = 'shapes'
  with pytest.raises(
      ValueError,
      match=r"data.video.name: must name a video dataset .*'shapes'"):
    build(config)
  with pytest.raises(ValueError,
                     match='data.image_size: must equal data.video.image_size'):
    build(small_joint(image_size=32))
  config = small_joint()
  config.image.channels = 1
  with pytest.raises(ValueError,
                     match=r'data.image, data.video: images \(16, 16, 1\)'):
    build(config)


def test_joint_config_validation():
  experiment_config = pytest.importorskip('vqlab.train.experiment_config')
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top

  def config_with(section=None, key=None, value=None):
    sections = {
        'image': {
            'name': 'tfds',
            'tfds_name': 'cifar10',
            'image_size': 16
        },
        'video': {
            'name': 'tfds_video',
            'num_frames': 5,
            'image_size': 16
        }
    }
    if section:
      sections[section][key] = value
    config = tiny_cpu.get_config()  # A tokenizer of images and videos.
    config.data = ml_collections.ConfigDict({
        'name': 'joint',
        'image_size': 16,
        **sections
    })
    return config

  # Batch 8: 4 images and 4 videos, each over the 4 devices.
  filled = experiment_config.validate(config_with(), num_devices=4)
  assert filled.data.image.train_augment == 'resize_random_crop'  # tfds' defaults filled in.
  assert filled.data.video.frame_stride == 1 and filled.data.image_batch_fraction == 0.5
  assert filled.data.video.num_frames == 5
  reference = data.reference_config(config_with().data)
  assert reference.video == data.default_config('tfds_video')
  assert reference.image == data.default_config('tfds')

  for section, key, value, match in (
      ('video', 'name', 'shapes',
       r'^data\.video\.name: must name a video dataset'),
      ('image', 'name', 'nope', r"^data\.image\.name: unknown dataset 'nope'"),
      ('video', 'crop_area_range', (0.1, 1.0),
       r'^data\.video\.crop_area_range: unknown key'),
      ('video', 'num_frames', 'five',
       r'^data\.video\.num_frames: expected int')):
    with pytest.raises(ConfigError, match=match):
      experiment_config.validate(config_with(section, key, value),
                                 num_devices=4)


# --------------------------------------------------------------------------------------------
# tfds_video (tfds mock data: random videos of 5 to 49 frames).
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tfds_module():
  return pytest.importorskip('tensorflow_datasets')


def mock_video_config(**overrides):
  # ucf101_1: frames of random sizes (ucf101 itself, the default, is 256 x 256).
  return _with(
      data.default_config('tfds_video'), **{
          'tfds_name': 'ucf101/ucf101_1',
          'image_size': 8,
          'num_frames': 3,
          **overrides
      })


def test_tfds_video_mock_data(tfds_module):
  # First clips: comparable across strides (the middle one is another
  # test's).
  config = mock_video_config(frame_stride=2, eval_clip='first')
  with tfds_module.testing.mock_data(num_examples=5):
    source = data.build(config, split='train', global_batch_size=2)
    assert source.video_shape == (3, 8, 8, 3) and source.image_shape == (8, 8,
                                                                         3)
    assert source.num_classes == 101
    first = take(source, 4)  # 8 > 5 clips: crosses an epoch.
    assert_batches_equal(
        first, take(data.build(config, split='train', global_batch_size=2), 4))
    assert_batches_equal(first[3:], take(source, 1, start_step=3))
    check_video_batch(first[0], 2, (3, 8, 8, 3), label=True, eval_=False)

    with pytest.raises(
        ValueError, match=r"^data.video_key: feature 'label' of ucf101 is "
        r'not a video \(shape \(\)\)'):
      data.build(_with(config, video_key='label'), split='eval',
                 global_batch_size=2)
    evals = data.build(config, split='eval', global_batch_size=2)
    full = list(evals.batches())
    assert evals.num_examples == 5 and [int(b['mask'].sum()) for b in full
                                       ] == [2, 2, 1]
    check_video_batch(full[-1], 2, (3, 8, 8, 3), label=True, eval_=True)

    # Stride: frames 0, 2, 4 are frames 0, 2, 4 of the stride-1 clip of 5 frames.
    dense = list(
        data.build(_with(config, frame_stride=1, num_frames=5), split='eval',
                   global_batch_size=2).batches())
    for strided, every in zip(full, dense):
      np.testing.assert_array_equal(strided['video'], every['video'][:, ::2])

    # Eval crop: the shorter side resized to 8, the centre 8 x 8 of the first frames. (Mock data
    # JPEG-encodes the frames only when the video is read undecoded, as the pipeline does.)
    tf = pytest.importorskip('tensorflow')
    encoded = next(
        iter(
            tfds_module.builder('ucf101/ucf101_1').as_dataset(
                split='test', shuffle_files=False,
                decoders={'video': tfds_module.decode.SkipDecoding()})))
    raw = np.stack([
        tf.io.decode_jpeg(f, dct_method='INTEGER_ACCURATE').numpy()
        for f in encoded['video'][:5:2]
    ])
    h, w = raw.shape[1:3]
    new_h, new_w = max(8,
                       round(h * 8 / min(h, w))), max(8,
                                                      round(w * 8 / min(h, w)))
    resized = tf.image.resize(raw, (new_h, new_w), antialias=True).numpy()
    top, left = (new_h - 8) // 2, (new_w - 8) // 2
    want = resized[:, top:top + 8, left:left + 8] * (2 / 255) - 1
    np.testing.assert_allclose(full[0]['video'][0], want, atol=1e-5)


@pytest.mark.parametrize('eval_clip, first', [('center', 2), ('first', 0)])
def test_tfds_video_eval_clip(tfds_module, eval_clip, first):
  """Eval takes the middle clip (MAGVIT's single test clip: DMVR's offset
  (L - T s) // 2), or the first frames."""
  del tfds_module
  tf = pytest.importorskip('tensorflow')
  from vqlab.data import video_preprocess  # pylint: disable=g-import-not-at-top
  aug = video_preprocess.VideoAugment.from_config(
      mock_video_config(num_frames=3, frame_stride=2, image_size=4,
                        eval_clip=eval_clip))
  # Frame t is grey level 20 t: 10 frames, clips of 3 frames 2 apart.
  frames = [np.full((4, 4, 3), 20 * t, np.uint8) for t in range(10)]
  clip = video_preprocess.eval_fn(aug)({
      'video': tf.stack([tf.io.encode_png(f) for f in frames])
  })['video'].numpy()
  levels = np.round((clip[:, 0, 0, 0] + 1) * 255 / 2)
  np.testing.assert_array_equal(levels,
                                [20 * (first + 2 * t) for t in range(3)])


def test_tfds_video_clips(tfds_module):
  """Train: one crop and flip per clip; short videos repeat their last frame."""
  tf = pytest.importorskip('tensorflow')
  from vqlab.data import preprocess  # pylint: disable=g-import-not-at-top
  from vqlab.data import video_preprocess  # pylint: disable=g-import-not-at-top
  aug = video_preprocess.VideoAugment.from_config(
      mock_video_config(num_frames=5, image_size=6))
  np.testing.assert_array_equal(
      video_preprocess.frame_indices(10, 2,
                                     dataclasses.replace(
                                         aug, frame_stride=3)).numpy(),
      [2, 5, 8, 9, 9])

  base = np.random.default_rng(0).integers(0, 100, (9, 12, 3), dtype=np.uint8)
  frames = [base + np.uint8(50 * t) for t in range(3)
           ]  # 3 frames < 5: padded with frame 2.
  example = {
      'video': tf.stack([tf.io.encode_png(f) for f in frames]),
      'label': 7
  }
  resized = preprocess.resize_shorter_side(
      base, 6).numpy() * (2 / 255) - 1  # [6, 8, 3]
  windows = [
      w[:, x:x + 6] for x in range(3) for w in (resized, resized[:, ::-1])
  ]
  train = video_preprocess.train_fn(aug)
  flips = set()
  for seed in range(6):
    out = train(example, tf.constant([0, seed], tf.int64))
    clip = out['video'].numpy()
    assert clip.shape == (5, 6, 6, 3) and int(out['label']) == 7
    # Same window in every frame: frame t - frame 0 is the constant brightness step.
    steps = np.array([0, 1, 2, 2, 2]) * 100 / 255
    np.testing.assert_allclose(
        clip - clip[:1], np.broadcast_to(steps[:, None, None, None],
                                         clip.shape), atol=1e-4)
    matches = [
        i for i, w in enumerate(windows) if np.allclose(clip[0], w, atol=1e-5)
    ]
    assert len(matches) >= 1
    flips.add(matches[0] % 2)
  assert flips == {0, 1}


def test_tfds_video_errors(tfds_module):
  for overrides, match in ((dict(num_frames=0),
                            'data.num_frames: must be a positive integer'),
                           (dict(frame_stride=-1),
                            'data.frame_stride: must be a positive'),
                           (dict(channels=2), 'data.channels: must be 1 or 3')):
    with pytest.raises(ValueError, match=match):
      data.build(mock_video_config(**overrides), split='train',
                 global_batch_size=2)
  with tfds_module.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError,
                       match="data.video_key: ucf101 has no feature 'frames'"):
      data.build(mock_video_config(video_key='frames'), split='train',
                 global_batch_size=2)
    default = _with(data.default_config('tfds_video'), image_size=8,
                    num_frames=2, label_key='')
    unlabeled = take(data.build(default, split='eval', global_batch_size=2),
                     1)[0]  # ucf101.
    check_video_batch(unlabeled, 2, (2, 8, 8, 3), label=False, eval_=True)


def test_tfds_video_uint8_tensor_is_read_as_frames_of_data_channels(
    tfds_module, tmp_path):
  tfds = tfds_module

  class VqlabGrayClips(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    __module__ = 'vqlab_gray_clips_test'  # See test_datasets' VqlabTinyImages.

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'video':
                  tfds.features.Video(shape=(None, 8, 10, 1)),
              'frames':
                  tfds.features.Tensor(shape=(None, 8, 10, 1), dtype=np.uint8),
          }))

    def _split_generators(self, dl_manager):
      return {
          'test': self._generate_examples((2, 3)),
          'train': self._generate_examples((0,))
      }

    def _generate_examples(self, lengths):
      for i, length in enumerate(lengths):
        video = np.random.default_rng(i).integers(0, 256, (length, 8, 10, 1),
                                                  dtype=np.uint8)
        yield i, {'video': video, 'frames': video}

  VqlabGrayClips(data_dir=str(tmp_path)).download_and_prepare()
  config = mock_video_config(tfds_name='vqlab_gray_clips',
                             data_dir=str(tmp_path), label_key='', channels=1)
  assert_batches_equal(
      take(
          data.build(_with(config, video_key='frames'), split='eval',
                     global_batch_size=2), 1),
      take(data.build(config, split='eval', global_batch_size=2), 1))
  # Taken as they are: 3 channels of gray frames failed at the first batch.
  with pytest.raises(
      DataError, match="^data.video_key: feature 'frames' of vqlab_gray_clips "
      r'is a uint8 Tensor of 1 channels, .* but data.channels=3; they must be '
      r'equal.$'):
    data.build_for_run(_with(config, video_key='frames', channels=3),
                       split='eval', global_batch_size=2)
  # A video of no frames: one line naming its split (it was TF's
  # `indices[0] = -1` from deep in the graph). Train clips cut them alike.
  with pytest.raises(
      DataError, match=r"^data\.video_key: a video of feature 'video' of "
      r"vqlab_gray_clips in data\.eval_split='train' has no frames; "):
    take(
        data.build(_with(config, eval_split='train'), split='eval',
                   global_batch_size=2), 1)
