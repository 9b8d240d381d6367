"""Tests of the caption datasets: captioned_shapes, and tfds with data.caption_key."""

import itertools
import re

import numpy as np
import pytest

from tests.data.test_datasets import _with
from tests.data.test_datasets import assert_batches_equal
from tests.data.test_datasets import check_eval_contract
from tests.data.test_datasets import check_train_contract
from tests.data.test_datasets import concat_hosts
from tests.data.test_datasets import take
from vqlab import data
from vqlab.data import captioned_shapes as cs

_NOUN = r'an? (\w+) (\w+)'
CAPTION = re.compile(
    rf'^{_NOUN} (above|below|to the left of|to the right of) {_NOUN}$')


def small_config(**overrides):
  return _with(data.default_config('captioned_shapes'), num_train_examples=16,
               num_eval_examples=6, **overrides)


def check_caption_batch(batch, b, size, *, eval_):
  assert set(batch) == {'image', 'caption'} | ({'mask'} if eval_ else set())
  assert batch['image'].shape == (b, size, size,
                                  3) and batch['image'].dtype == np.float32
  assert batch['image'].min() >= -1 and batch['image'].max() <= 1
  assert batch['caption'].shape == (b,) and batch['caption'].dtype.kind == 'U'
  if eval_:
    assert batch['mask'].shape == (b,) and batch['mask'].dtype == bool


def parse(caption):
  """caption -> ((colour, shape), relation, (colour, shape)) per the module's grammar."""
  match = CAPTION.match(caption)
  assert match, caption
  c1, s1, relation, c2, s2 = match.groups()
  for colour, shape in ((c1, s1), (c2, s2)):
    assert colour in cs.PALETTE and shape in cs.SHAPES, caption
    article = caption.split()[0] if colour == c1 else None
    if article:
      assert article == ('an' if colour[0] in 'aeiou' else 'a')
  return (c1, s1), relation, (c2, s2)


# --------------------------------------------------------------------------------------------
# captioned_shapes.
# --------------------------------------------------------------------------------------------


def test_captioned_shapes_contract():
  config = small_config()
  assert data.kind('captioned_shapes') == 'image'
  assert isinstance(data.default_config('captioned_shapes').seed, int)
  source, batches = check_train_contract(config,
                                         steps=4)  # Also P=2 == P=1, resume.
  assert source.num_classes is None and source.video_shape is None
  assert source.image_shape == (32, 32, 3) and source.num_examples == 16
  check_caption_batch(batches[0], 8, 32, eval_=False)
  assert not np.array_equal(batches[0]['caption'], batches[1]['caption'])

  source, full, hosts = check_eval_contract(config, global_batch=4)
  assert_batches_equal(full, concat_hosts(hosts))
  check_caption_batch(full[0], 4, 32, eval_=True)
  assert [int(b['mask'].sum()) for b in full] == [4, 2]
  assert full[-1]['caption'][~full[-1]['mask']].tolist() == ['', ''
                                                            ]  # Padding rows.
  assert (full[-1]['image'][~full[-1]['mask']] == 0).all()


def test_captioned_shapes_deterministic_and_splits_disjoint():
  config = small_config()
  renderer = cs._renderer(config)
  want = renderer.batch(np.arange(
      16, 22))  # Eval = the indices after the train range.
  again = cs._renderer(config).batch(np.arange(16, 22))
  for k in ('image', 'caption'):
    np.testing.assert_array_equal(want[k], again[k])
  other_seed = cs._renderer(_with(config, seed=1)).batch(np.arange(16, 22))
  assert not np.array_equal(want['image'], other_seed['image'])

  full = list(data.build(config, split='eval', global_batch_size=4).batches())
  for k in ('image', 'caption'):
    np.testing.assert_array_equal(
        np.concatenate([b[k][b['mask']] for b in full]), want[k])

  # Two train steps of 8 = one epoch = each train index [0, 16) once.
  epoch = take(data.build(config, split='train', global_batch_size=8), 2)
  train = {(im.tobytes(), c)
           for b in epoch
           for im, c in zip(b['image'], b['caption'])}
  expected = renderer.batch(np.arange(16))
  assert train == {
      (im.tobytes(), c) for im, c in zip(expected['image'], expected['caption'])
  }
  evals = {im.tobytes() for im in want['image']}
  assert not evals & {im for im, _ in train}


@pytest.mark.parametrize('size', [16, 32])
def test_captions_match_images(size):
  """Decodes each shape from its colour's pixels and checks the caption's relation."""
  config = small_config(image_size=size,
                        colors=tuple(cs.PALETTE))  # All 8, 'orange' -> 'an'.
  renderer = cs._renderer(config)
  background = np.full(3, config.background)
  seen = set()
  for index in range(40):
    image, caption = renderer.example(index)
    assert caption == renderer.scene(index).caption
    (c1, s1), relation, (c2, s2) = parse(caption)
    seen.add(relation)
    assert c1 != c2
    rgb = (image.astype(np.float64) + 1) / 2
    # Every pixel is background, or a blend of the background with exactly one of the two
    # colours (antialiased edges): the shapes never overlap or touch.
    colours = [np.asarray(cs.PALETTE[c]) for c in (c1, c2)]
    residuals, alphas = [], []
    for colour in colours:
      direction = colour - background
      alpha = np.clip((rgb - background) @ direction / (direction @ direction),
                      0, 1)
      alphas.append(alpha)
      residuals.append(
          np.abs(rgb - background - alpha[..., None] * direction).max(-1))
    owner = np.argmin(residuals, axis=0)
    assert (np.min(residuals, axis=0) < 1e-4).all(), caption
    boxes = []
    for k in range(2):
      ys, xs = np.nonzero((owner == k) & (alphas[k] > 1e-6))
      full_ys, _ = np.nonzero(alphas[k] > 1 - 1e-6)
      assert len(full_ys), (caption, k
                           )  # The shape is visible with its exact colour.
      boxes.append((ys.min(), ys.max(), xs.min(), xs.max()))
    (t1, b1, l1, r1), (t2, b2, l2, r2) = boxes
    holds = {
        'above': b1 < t2,
        'below': t1 > b2,
        'to the left of': r1 < l2,
        'to the right of': l1 > r2
    }
    assert holds[relation], (index, caption, boxes)
    scene = renderer.scene(index)
    assert scene.shapes == (s1, s2) and scene.colors == (c1, c2)
  assert seen == set(cs.RELATIONS)


def test_caption_grammar_and_variety():
  renderer = cs._renderer(data.default_config('captioned_shapes'))
  captions = [renderer.scene(i).caption for i in range(300)]
  parsed = [parse(c) for c in captions]
  assert {p[1] for p in parsed} == set(cs.RELATIONS)
  assert {p[0][0] for p in parsed} == set(cs.COLORS)
  assert {p[2][1] for p in parsed} == set(cs.SHAPES)
  assert len(set(captions)) > 200


def test_captioned_shapes_config_errors():
  build = lambda config: data.build(config, split='train', global_batch_size=4)
  with pytest.raises(ValueError, match='data.colors: need at least 2'):
    build(small_config(colors=('red',)))
  with pytest.raises(ValueError, match='data.colors'):
    build(small_config(colors=('red', 'pink')))
  with pytest.raises(ValueError, match='data.relations'):
    build(small_config(relations=('inside',)))
  with pytest.raises(ValueError, match='data.shapes'):
    build(small_config(shapes=('blob',)))
  with pytest.raises(ValueError, match='data.size_range: two shapes'):
    build(small_config(size_range=(0.3, 0.5)))
  # Subsets work: one shape and one relation.
  batch = take(build(small_config(shapes=('circle',), relations=('below',))),
               1)[0]
  assert all(
      parse(c)[1] == 'below' and parse(c)[0][1] == 'circle'
      for c in batch['caption'])


# --------------------------------------------------------------------------------------------
# tfds with data.caption_key, on mocked coco_captions.
# --------------------------------------------------------------------------------------------

NUM_COCO = 10


@pytest.fixture(scope='module')
def tfds_module():
  return pytest.importorskip('tensorflow_datasets')


def _coco_example(i):
  """Example i of the mock: a flat grey image of level 10 * i and 3 captions naming i."""
  return {
      'image': np.full((20 + i, 24, 3), 10 * i, np.uint8),
      'image/filename': f'{i}.jpg',
      'image/id': i,
      'objects': {
          'area': np.zeros((0,), np.int64),
          'bbox': np.zeros((0, 4), np.float32),
          'id': np.zeros((0,), np.int64),
          'is_crowd': np.zeros((0,), bool),
          'label': np.zeros((0,), np.int64)
      },
      'captions': {
          'id': 10 * i + np.arange(3),
          'text': [f'image {i} caption {j}' for j in range(3)]
      }
  }


def _mock_coco_as_dataset(self, split, decoders=None, read_config=None,
                          **kwargs):
  """`as_dataset` of the mock: the same NUM_COCO hand-made examples in every split; a host's
  `tfds.even_splits` part gets its contiguous share (np.array_split).

  tfds' own random mock of coco_captions fails to encode (its 'objects' sequence gets
  different random lengths per sub-feature), so the examples are built here and go through the
  real coco_captions features (encode, then decode with the caller's decoders)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  del read_config, kwargs
  features = self.info.features
  indices = np.arange(NUM_COCO)
  if not isinstance(split,
                    str):  # A part from tfds.even_splits: index of count.
    indices = np.array_split(indices, split.count)[split.index]

  def to_arrays(value):
    if isinstance(value, dict):
      return {k: to_arrays(v) for k, v in value.items()}
    value = np.asarray(value)
    return value.astype(bytes) if value.dtype == object else value

  encoded = [
      to_arrays(features.encode_example(_coco_example(i))) for i in indices
  ]
  ds = tf.data.Dataset.from_tensor_slices(_stack(encoded))
  return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))


def _stack(examples):
  first = examples[0]
  if isinstance(first, dict):
    return {k: _stack([e[k] for e in examples]) for k in first}
  return np.stack(examples)


@pytest.fixture
def mock_coco(tfds_module):
  # The shipped config's data section (its label_key and eval_split were
  # tfds' defaults, which coco_captions lacks), at a tiny size.
  from configs.vq_diffusion import coco256_text  # pylint: disable=g-import-not-at-top
  config = _with(coco256_text.get_config().data, image_size=16,
                 shuffle_buffer=8)
  with tfds_module.testing.mock_data(num_examples=NUM_COCO,
                                     as_dataset_fn=_mock_coco_as_dataset):
    yield config


def _image_ids(images):
  """Index i of the mock's flat images (grey level 10 * i)."""
  levels = (images[:, 0, 0, 0] + 1) * 127.5 / 10
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  return np.round(levels).astype(int)


def test_tfds_caption_key_eval(mock_coco):
  source, full, hosts = check_eval_contract(mock_coco, global_batch=4)
  assert source.num_examples == NUM_COCO and source.num_classes is None
  check_caption_batch(full[0], 4, 16, eval_=True)
  captions = np.concatenate([b['caption'][b['mask']] for b in full])
  ids = np.concatenate([_image_ids(b['image'][b['mask']]) for b in full])
  assert ids.tolist() == list(range(NUM_COCO))
  assert captions.tolist() == [f'image {i} caption 0' for i in range(NUM_COCO)
                              ]  # The first.
  assert full[-1]['caption'][~full[-1]['mask']].tolist() == ['', '']
  shards = [c for h in hosts for b in h for c in b['caption'][b['mask']]]
  assert sorted(shards) == sorted(
      captions.tolist())  # Host shards: disjoint and covering.


def test_tfds_caption_key_train(mock_coco):
  config = mock_coco
  source = data.build(config, split='train', global_batch_size=4)
  assert source.several_captions  # Token shards refuse it.
  first = take(source, 8)  # 32 examples: over 3 epochs of 10.
  assert_batches_equal(
      first, take(data.build(config, split='train', global_batch_size=4), 8))
  assert_batches_equal(first[5:], take(source, 3,
                                       start_step=5))  # Resume mid-epoch.
  check_caption_batch(first[0], 4, 16, eval_=False)
  drawn = {}
  for batch in first:
    for i, caption in zip(_image_ids(batch['image']), batch['caption']):
      match = re.fullmatch(r'image (\d+) caption (\d)', caption)
      assert match and int(match.group(1)) == i, (i, caption
                                                 )  # The image's own caption.
      drawn.setdefault(i, set()).add(int(match.group(2)))
  assert set(drawn) == set(range(NUM_COCO))
  assert set().union(*drawn.values()) == {
      0, 1, 2
  }  # Random choices, not always the first.
  hosts = [
      take(
          data.build(config, split='train', global_batch_size=4,
                     process_index=p, process_count=2), 2) for p in range(2)
  ]
  for batch in itertools.chain(*hosts):
    check_caption_batch(batch, 2, 16, eval_=False)


def test_tfds_caption_key_off_and_errors(mock_coco):
  plain = take(
      data.build(_with(mock_coco, caption_key=''), split='train',
                 global_batch_size=4), 1)[0]
  assert set(plain) == {'image'}
  for bad, match in (('captions/txt', "no feature 'txt' under captions"),
                     ('caption', "no feature 'caption' under the top level"),
                     ('image', 'must be a text feature'),
                     ('objects/bbox', 'must be a text feature'),
                     ('captions', 'must be a text feature')):
    with pytest.raises(ValueError, match=f'data.caption_key: .*{match}'):
      data.build(_with(mock_coco, caption_key=bad), split='eval',
                 global_batch_size=4)


def test_pick_caption(tfds_module):
  del tfds_module
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from vqlab.data import tfds_images  # pylint: disable=g-import-not-at-top
  seed = tf.constant([1, 2], tf.int64)
  assert tfds_images.pick_caption(tf.constant('only')).numpy() == b'only'
  assert tfds_images.pick_caption(tf.constant('only'), seed).numpy() == b'only'
  assert tfds_images.pick_caption(tf.constant([], tf.string),
                                  seed).numpy() == b''
  assert tfds_images.pick_caption(tf.constant(['x', 'y'])).numpy() == b'x'
  picks = {
      tfds_images.pick_caption(tf.constant(['x', 'y', 'z']),
                               tf.constant([s, 0], tf.int64)).numpy()
      for s in range(40)
  }
  assert picks == {b'x', b'y', b'z'}
  np.testing.assert_array_equal(
      tfds_images.to_unicode(np.array([b'a\xc3\xa9', b''], object)),
      np.array(['a\u00e9', '']))
