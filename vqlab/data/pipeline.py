"""tf.data pipelines from a host's shard of encoded records to padded numpy batches.

`records` is this host's shard in a fixed order: a finite dataset of
`{'image': encoded bytes, 'label'?: int}` (videos: `{'video': encoded frames [L], ...}`).
Train order: epoch `e` of the host is `records` shuffled through a `shuffle_buffer` reseeded from
`(seed, process_index, e)`, epochs are concatenated, and each element gets its augmentation seed
from `(seed, process_index, position)` where `position` counts elements from the start of
training. Resuming at step k therefore starts at epoch
`k * b // n` directly and replays at most one epoch of record reads (no decoding) to reach the
position inside it.

Unlike the numpy sources, the global batch of a step depends on `process_count`: each host reads
its own shard of the files, since reading everything on every host would multiply the I/O by the
number of hosts. With a fixed process_count, batches are a deterministic function of
(seed, step, process_index).
"""

from __future__ import annotations

import codecs
from typing import Any, Callable, Iterator

import numpy as np
from vqlab.data.lazy import tf
from vqlab.data.lazy import tfds

from vqlab.data import base
from vqlab.errors import DataError

_SHUFFLE_STREAM = 0x5F1
_AUGMENT_STREAM = 0xA06
_BAD_RECORD = 'vqlab bad record: '


def hide_accelerators_from_tf() -> None:
  """Keeps TF off GPUs so it does not reserve memory JAX needs (no-op once TF is initialized)."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError,
          ValueError):  # Devices already initialized, or no such device type.
    pass


def cardinality(ds: tf.data.Dataset) -> int | None:
  """Number of elements of a finite dataset when tf.data knows it, else None."""
  n = int(ds.cardinality())
  return n if n >= 0 else None


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def train_dataset(records: tf.data.Dataset, *, preprocess: Callable[[Any, Any],
                                                                    Any],
                  seed: int, process_index: int, per_host_batch_size: int,
                  shuffle_buffer: int, start_step: int) -> tf.data.Dataset:
  """Infinite dataset of per-host train batches starting at global step `start_step`.

  Args:
    records: this host's shard, finite, in a fixed order.
    preprocess: f(example, seed [2] int64) -> example (see preprocess.train_fn).
    seed: data seed.
    process_index: this host, part of every seed.
    per_host_batch_size: b.
    shuffle_buffer: examples in the shuffle buffer.
    start_step: first global step to yield.

  Returns:
    Batches of the preprocessed examples, e.g. {'image': float32 [b, S, S, C], 'label'?: int32
    [b]} (video: {'video': float32 [b, T, S, S, C], ...}).
  """
  key = tf.constant([seed, process_index], tf.int64)
  n = cardinality(records)
  if n == 0:
    raise ValueError(
        'this host\'s train shard is empty; use fewer processes or more data.')
  first = start_step * per_host_batch_size
  first_epoch, offset = divmod(first, n) if n else (0, first)

  def epoch(e):
    epoch_key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(key, _SHUFFLE_STREAM), e)
    # A scalar of the whole key: stateless_fold_in keeps e in its second
    # element, so the first alone is the same every epoch.
    seed = tf.random.stateless_uniform([], epoch_key, minval=None, maxval=None,
                                       dtype=tf.int64)
    return records.shuffle(shuffle_buffer, seed=seed,
                           reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch,
                             np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.enumerate(start=first_epoch * (n or 0)).skip(offset)
  augment_key = tf.random.experimental.stateless_fold_in(key, _AUGMENT_STREAM)
  ds = ds.map(
      lambda i, ex: preprocess(
          ex, tf.random.experimental.stateless_fold_in(augment_key, i)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(per_host_batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    records: tf.data.Dataset, *, preprocess: Callable[[Any], Any],
    per_host_batch_size: int, num_batches: int, image_shape: tuple[int, int,
                                                                   int],
    has_label: bool, start_step: int, key: str = 'image',
    extra_padding: dict[str, Any] | None = None) -> tf.data.Dataset:
  """`num_batches - start_step` padded eval batches of this host, in order, with 'mask'.

  Args:
    records: this host's shard, finite, in order; at most `num_batches * b` elements.
    preprocess: f(example) -> example (see preprocess.eval_fn).
    per_host_batch_size: b.
    num_batches: batches every host yields (the same on all hosts).
    image_shape: shape of `example[key]` after preprocessing, for the padding rows: (S, S, C)
      for images, (T, S, S, C) for videos.
    has_label: whether examples carry 'label'.
    start_step: eval batches to skip.
    key: the key of the preprocessed data: 'image' or 'video'.
    extra_padding: padding values of further keys of the preprocessed examples (e.g.
      {'caption': ''}).

  Returns:
    Batches {key: float32 [b, *image_shape], 'label'?: int32 [b], 'mask': bool [b]}.
  """
  b = per_host_batch_size
  n = cardinality(records)
  if n is not None and n > num_batches * b:
    raise ValueError(
        f'host eval shard has {n} examples, more than {num_batches} batches of {b}.'
    )

  def with_mask(example):
    return dict(preprocess(example), mask=True)

  padding = {key: tf.zeros(image_shape, tf.float32), 'mask': False}
  if has_label:
    padding['label'] = tf.constant(0, tf.int32)
  padding.update(extra_padding or {})
  ds = records.skip(start_step * b).map(with_mask,
                                        num_parallel_calls=tf.data.AUTOTUNE,
                                        deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(max(0, num_batches - start_step) * b).batch(b)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def check_record(value, condition, problem: str):
  """`value` (a tensor of a preprocessing fn) once `condition` (bool []) holds.

  Where it does not, reading the batch of that record from
  `TfDataSource.batches` raises a DataError whose message is `problem` (one
  line naming the key and what to do), not TF's error from deep in the graph.
  """
  assertion = tf.debugging.Assert(condition, [_BAD_RECORD + problem])
  with tf.control_dependencies([assertion]):
    return tf.identity(value)


def _bad_record_problem(message: str) -> str | None:
  """The `problem` of the `check_record` whose tf error says `message`, or
  None for other errors."""
  start = message.find(_BAD_RECORD)
  if start < 0:
    return None
  # TF shows the assertion's data C-escaped, in brackets, before the node.
  shown = message[start + len(_BAD_RECORD):].split('\n')[0].removesuffix(']')
  return codecs.escape_decode(shown.encode('utf-8'))[0].decode(
      'utf-8', 'replace')


def _named_bad_records(batches: Iterator[base.Batch]) -> Iterator[base.Batch]:
  """`batches`, with a failed `check_record` raised as its DataError."""
  try:
    yield from batches
  except tf.errors.InvalidArgumentError as e:
    problem = _bad_record_problem(e.message)
    if problem is None:
      raise
    raise DataError(problem) from e


class TfDataSource:
  """A DataSource over `make_dataset(start_step) -> tf.data.Dataset` of numpy-convertible
  batches.

  Beyond the DataSource attributes, `host_num_examples` is the size of the shard of the split
  this host reads (its train epochs are that shard alone), or None when not given; an eval
  source's len() is the number of (padded) batches every host yields, which may exceed
  ceil(num_examples / global batch) when the hosts' shards differ in size.
  `fingerprint` is `base.DataSource`'s (optional) one, or None.
  """

  def __init__(self, make_dataset: Callable[[int], tf.data.Dataset], *,
               per_host_batch_size: int, num_examples: int | None,
               image_shape: tuple[int, int, int], num_classes: int | None,
               video_shape: tuple[int, int, int, int] | None = None,
               host_num_examples: int | None = None,
               num_batches: int | None = None, fingerprint: str | None = None):
    self._make_dataset = make_dataset
    self.fingerprint = fingerprint
    self._num_batches = num_batches
    self.per_host_batch_size = per_host_batch_size
    self.num_examples = num_examples
    self.host_num_examples = host_num_examples
    self.image_shape = image_shape
    self.video_shape = video_shape
    self.num_classes = num_classes

  def __len__(self) -> int:
    if self._num_batches is None:
      raise TypeError('a train source is endless: it has no length')
    return self._num_batches

  def batches(self, start_step: int = 0) -> Iterator[base.Batch]:
    """Yields numpy batches from global step (train) or eval batch (eval) `start_step` on."""
    return _named_bad_records(
        iter(tfds.as_numpy(self._make_dataset(start_step))))


def host_eval_batches(num_examples: int, global_batch_size: int,
                      process_count: int) -> int:
  """Batches per host for an eval set evenly split over hosts (shards differ by at most one).

  The largest shard has ceil(N / P) examples; every host pads to that many batches of B / P.
  """
  largest = -(-num_examples // process_count)
  return base.eval_num_batches(largest, global_batch_size // process_count)
