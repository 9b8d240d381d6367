"""The `DataSource` interface and the numpy machinery every in-memory source shares.

Batching contract (the train loop relies on it; tests pin it):

* Train: `batches(start_step)` is infinite. The global batch of step `s` is a deterministic
  function of `(config, s)`; process `p` of `P` gets rows `[p * B / P, (p + 1) * B / P)` of it,
  so `batches(k)` yields exactly the items `k, k + 1, ...` of `batches(0)` (resume) and the union
  of the hosts' batches does not depend on `P` (for the in-memory sources; the tf.data sources
  read a per-host shard of the files, see `pipeline.py`).
* Eval: one ordered pass, padded, with the key `mask` (bool `[b]`) marking real rows. Every host
  yields the same number of batches, so a multi-host eval loop never waits on a host that ran
  out. In the numpy sources global batch `j` holds examples `[j * B, (j + 1) * B)`; the tf.data
  sources give each host a contiguous shard of the eval set instead.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]
SPLITS = ('train', 'eval')
# Seeds of the train order are (seed, PERMUTATION_STREAM, epoch): the tag keeps them apart from
# the (seed, index) seeds that sources use for their examples, but for one: numpy pads a seed
# with zeros, so epoch 0's order and example 0x5EED (24301) share one stream. Harmless (one
# example's content and a permutation, made differently from the same bits); kept, as another
# tag would change every run's data order.
PERMUTATION_STREAM = 0x5EED


@runtime_checkable
class DataSource(Protocol):
  """What `vqlab.data.build` returns.

  Attributes:
    per_host_batch_size: rows in each batch this host yields (`global_batch_size / process_count`).
    num_examples: eval: real examples in one pass over the whole eval set (all hosts together);
      train: size of the underlying finite set, or None for an unbounded one.
    image_shape: `(H, W, C)` of `batch['image'][i]`; for video sources, of one frame.
    video_shape: `(T, H, W, C)` of `batch['video'][i]` for video sources, None for image
      sources.
    num_classes: number of label values when batches carry 'label', else None.

  A source of files may also have `fingerprint`: a string that changes when the split's files do
  (image_folder's), or None; read it with getattr, as most sources have none.
  """

  per_host_batch_size: int
  num_examples: int | None
  image_shape: tuple[int, int, int]
  video_shape: tuple[int, int, int, int] | None
  num_classes: int | None

  def batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Yields per-host batches: 'image' float32 [b, H, W, C] (image sources) or 'video' float32
    [b, T, H, W, C] (video sources) in [-1, 1], 'label' int32 [b] where the data has labels, and
    on eval 'mask' bool [b]. Train is infinite and starts at global step `start_step`; eval is
    one finite pass (skipping `start_step` batches). (`joint` train batches carry both 'image'
    and 'video', see `joint.py`.)"""
    ...


# ---------------------------------------------------------------------------------------------
# Config and argument checks.
# ---------------------------------------------------------------------------------------------


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """Returns `config[key]`, or raises ValueError naming `data.<key>` when it is absent."""
  if key not in config:
    raise ValueError(
        f'data.{key}: missing from the data config of dataset {config.get("name")!r}; '
        f'start from vqlab.data.default_config({config.get("name")!r}).')
  return config[key]


def bundled_names(config: ml_collections.ConfigDict, key: str, bundled,
                  noun: str) -> tuple[str, ...]:
  """The names at `data.<key>`: at least one, each one of `bundled` (a photo
  or video of a built-in dataset: `noun`); ValueError naming the key."""
  names = tuple(get(config, key))
  if not names:
    raise ValueError(f'data.{key}: needs at least one {noun}.')
  unknown = [n for n in names if n not in bundled]
  if unknown:
    raise ValueError(
        f'data.{key}: unknown {noun}s {unknown}; bundled: {sorted(bundled)}')
  return names


def held_out_names(config: ml_collections.ConfigDict, noun: str,
                   bundled) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(train, eval) names at `data.train_<noun>s` and `data.eval_<noun>s`
  (`bundled_names`); ValueError where they share one: eval ones are held out
  whole."""
  train, held_out = (bundled_names(config, f'{split}_{noun}s', bundled, noun)
                     for split in ('train', 'eval'))
  shared = sorted(set(train) & set(held_out))
  if shared:
    raise ValueError(
        f'data.eval_{noun}s: {shared} also in data.train_{noun}s; eval '
        f'{noun}s must be held out whole.')
  return train, held_out


def positive_int(config: ml_collections.ConfigDict, key: str) -> int:
  """Returns `config[key]` as an int, raising ValueError unless it is a positive integer."""
  value = get(config, key)
  if isinstance(value, bool) or not isinstance(value,
                                               (int, np.integer)) or value <= 0:
    raise ValueError(f'data.{key}: must be a positive integer, got {value!r}.')
  return int(value)


def fraction_range(config: ml_collections.ConfigDict, key: str,
                   upper: float = 1.0) -> tuple[float, float]:
  """Returns `config[key]` as `(lo, hi)` with `0 < lo <= hi <= upper`, else ValueError."""
  value = get(config, key)
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(
        f'data.{key}: must be a pair (lo, hi), got {value!r}.') from None
  if not 0 < lo <= hi <= upper:
    raise ValueError(
        f'data.{key}: need 0 < lo <= hi <= {upper}, got {value!r}.')
  return lo, hi


def check_split(split: str) -> None:
  """Raises ValueError unless `split` is 'train' or 'eval'."""
  if split not in SPLITS:
    raise ValueError(f"split: must be one of {list(SPLITS)}, got {split!r}.")


def host_batch_size(global_batch_size: int, process_index: int,
                    process_count: int) -> int:
  """Returns `global_batch_size // process_count` after checking the three arguments."""
  if process_count < 1:
    raise ValueError(f'process_count: must be >= 1, got {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index: must be in [0, {process_count}), got {process_index}.')
  if global_batch_size < 1:
    raise ValueError(
        f'global_batch_size: must be >= 1, got {global_batch_size}.')
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}; every host must get the same number of rows.'
    )
  return global_batch_size // process_count


def eval_num_batches(num_examples: int, global_batch_size: int) -> int:
  """Number of (padded) global batches in one eval pass: `ceil(num_examples / B)`."""
  return -(-num_examples // global_batch_size)


# ---------------------------------------------------------------------------------------------
# Index helpers.
# ---------------------------------------------------------------------------------------------


class EpochPermutation:
  """Maps global train positions to example indices: epoch `e` visits a seeded permutation.

  Position `g` (= step * B + row) reads example `perm_e[g % n]` with `e = g // n`, where
  `perm_e = default_rng((seed, PERMUTATION_STREAM, e)).permutation(n)`: every epoch sees each
  example once, and any position can be looked up without replaying the ones before it. The
  last two permutations used are cached.
  """

  def __init__(self, num_examples: int, seed: int):
    self._n = num_examples
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        self._cache.pop(min(self._cache))
      rng = np.random.default_rng((self._seed, PERMUTATION_STREAM, epoch))
      self._cache[epoch] = rng.permutation(self._n)
    return self._cache[epoch]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    """positions: int [k] global positions -> int [k] example indices in [0, n)."""
    epochs, offsets = np.divmod(positions, self._n)
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._perm(int(e))[offsets[sel]]
    return out


def host_rows(per_host_batch_size: int, process_index: int) -> np.ndarray:
  """Rows of the global batch owned by this host: int [b]."""
  start = process_index * per_host_batch_size
  return np.arange(start, start + per_host_batch_size, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Numpy sources.
# ---------------------------------------------------------------------------------------------


class NumpyTrainSource:
  """Infinite train source from `make_batch(step, rows) -> Batch`.

  `make_batch` gets the global step and the int [b] rows of the global batch owned by this host
  and must depend only on them (and on state fixed at construction), so resuming and re-sharding
  reproduce the same global batches.
  """

  def __init__(self, make_batch: Callable[[int, np.ndarray],
                                          Batch], *, per_host_batch_size: int,
               process_index: int, num_examples: int | None,
               image_shape: tuple[int, int, int], num_classes: int | None,
               video_shape: tuple[int, int, int, int] | None = None):
    self._make_batch = make_batch
    self._rows = host_rows(per_host_batch_size, process_index)
    self.per_host_batch_size = per_host_batch_size
    self.num_examples = num_examples
    self.image_shape = image_shape
    self.video_shape = video_shape
    self.num_classes = num_classes

  def batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Yields the per-host batch of global steps `start_step, start_step + 1, ...`."""
    for step in itertools.count(start_step):
      yield self._make_batch(step, self._rows)


class NumpyEvalSource:
  """One ordered, padded, host-sharded pass from `get_examples(indices) -> Batch`.

  `get_examples` maps int [k] example indices in [0, num_examples) to a batch of k rows; rows
  past the end are zero-filled and carry mask=False.
  """

  def __init__(self, get_examples: Callable[[np.ndarray], Batch], *,
               num_examples: int, global_batch_size: int,
               per_host_batch_size: int, process_index: int,
               image_shape: tuple[int, int, int], num_classes: int | None,
               video_shape: tuple[int, int, int, int] | None = None):
    if num_examples < 1:
      raise ValueError('eval set is empty (num_examples=0).')
    self._get = get_examples
    self._global = global_batch_size
    self._rows = host_rows(per_host_batch_size, process_index)
    self.per_host_batch_size = per_host_batch_size
    self.num_examples = num_examples
    self.image_shape = image_shape
    self.video_shape = video_shape
    self.num_classes = num_classes

  def __len__(self) -> int:
    return eval_num_batches(self.num_examples, self._global)

  def batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Yields eval batches `start_step, ..., len(self) - 1` of this host, padded, with 'mask'."""
    for j in range(start_step, len(self)):
      indices = j * self._global + self._rows
      mask = indices < self.num_examples
      real = self._get(indices[mask])
      batch = {}
      for key, value in real.items():
        full = np.zeros((self.per_host_batch_size,) + value.shape[1:],
                        value.dtype)
        full[mask] = value
        batch[key] = full
      batch['mask'] = mask
      yield batch


class Renderer(Protocol):
  """A procedurally drawn dataset: example `i` is a pure function of `(seed, i)`.

  `image_shape`, `video_shape` and `num_classes` mean what they mean on `DataSource`.
  """

  seed: int
  image_shape: tuple[int, int, int]
  video_shape: tuple[int, int, int, int] | None
  num_classes: int | None

  def batch(self, indices: np.ndarray) -> Batch:
    """int [k] example indices -> a batch of k rows."""
    ...


def rendered_source(config: ml_collections.ConfigDict,
                    make_renderer: Callable[[ml_collections.ConfigDict],
                                            Renderer], *, split: str,
                    global_batch_size: int, process_index: int,
                    process_count: int) -> DataSource:
  """Builds the train or eval source of a `Renderer` made by `make_renderer(config)`.

  Train draws indices `[0, data.num_train_examples)` in `EpochPermutation` order (seeded by the
  renderer's seed); eval is one pass over `[N_train, N_train + data.num_eval_examples)`. Batches
  are `renderer.batch` of per-host rows: b = global_batch_size / process_count.
  """
  check_split(split)
  b = host_batch_size(global_batch_size, process_index, process_count)
  renderer = make_renderer(config)
  num_train = positive_int(config, 'num_train_examples')
  attrs = dict(image_shape=renderer.image_shape,
               video_shape=renderer.video_shape,
               num_classes=renderer.num_classes)
  if split == 'train':
    order = EpochPermutation(num_train, renderer.seed)
    return NumpyTrainSource(
        lambda step, rows: renderer.batch(order(step * global_batch_size + rows)
                                         ), per_host_batch_size=b,
        process_index=process_index, num_examples=num_train, **attrs)
  return NumpyEvalSource(lambda indices: renderer.batch(num_train + indices),
                         num_examples=positive_int(config, 'num_eval_examples'),
                         global_batch_size=global_batch_size,
                         per_host_batch_size=b, process_index=process_index,
                         **attrs)


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [..., C] in [0, 255] -> float32 in [-1, 1]."""
  return images_uint8.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
