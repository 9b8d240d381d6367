"""The files of a folder dataset (`image_folder`, `video_folder`): the two
layouts of `data.path`, the flat layout's hold-out, a split's fingerprint,
and leaving out files that cannot be used.

Split layout, used when `<path>/<train_split>/` is a folder:

  <path>/<train_split>/<class_name>/<files, in sub-folders too>
  <path>/<eval_split>/<class_name>/<files, in sub-folders too>

Labels are the indices of the class folder names, sorted, over the train and
eval split folders together (so both splits agree); each class needs files
under `<train_split>/` (a class folder without any, or one only under
`<eval_split>/`, is an error: its label would never be trained). Split
folders with no sub-folders at all hold their files without labels:

  <path>/<train_split>/<files>
  <path>/<eval_split>/<files>

(e.g. Kinetics as its downloaders leave it); files beside class folders are an
error (they would be left out). An `<eval_split>` folder
without a `<train_split>` one is an error (its files would otherwise train,
as the flat layout's).

Flat layout, used otherwise: every file under `<path>`, in sub-folders too,
without labels. `round(eval_fraction * N)` of the N files (at least one) are
held out for eval: those whose path relative to `<path>` has the smallest
MD5, so the split does not depend on the seed, the machine or `<path>`
itself, and adding files moves few others across. `eval_split = train_split`
evaluates on the train files instead; other split names are not folders
there.

A dataset's files end in its `FileKind.extensions` (any case); hidden files
and folders (names starting with '.', such as macOS's `._photo.jpg`) are
ignored. Files are listed in sorted order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator

import ml_collections
import numpy as np

from vqlab.data import base
from vqlab.errors import DataError


@dataclasses.dataclass(frozen=True)
class FileKind:
  """What a folder dataset reads, for listing and messages.

  Attributes:
    dataset: the dataset's name ('image_folder').
    noun: one file, in words ('image').
    extensions: lower-case endings of its files ('.jpg', ...).
    path_example: how to set data.path, in words (for the missing one).
  """
  dataset: str
  noun: str
  extensions: tuple[str, ...]
  path_example: str

  def matches(self, name: str) -> bool:
    return _visible(name) and name.lower().endswith(self.extensions)

  def none_found(self) -> str:
    """'no images (.jpg, .png)'."""
    return f'no {self.noun}s ({", ".join(self.extensions)})'


# ------------------------------------------------------------------------------
# Listing files.
# ------------------------------------------------------------------------------


def _visible(name: str) -> bool:
  return not name.startswith('.')


def _subfolders(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if _visible(d) and os.path.isdir(os.path.join(path, d)))


def _split_dir(root: str, split_name: str, key: str) -> str:
  path = os.path.join(root, split_name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'data.{key}: no folder {path!r}; sub-folders of '
                            f'{root!r}: {_subfolders(root)}.')
  return path


def _classes(root: str, split_names: list[str]) -> list[str]:
  """Sorted class folder names found under the existing split folders."""
  names = set()
  for split_name in split_names:
    path = os.path.join(root, split_name)
    if os.path.isdir(path):
      names.update(_subfolders(path))
  return sorted(names)


def list_classes(split_dir: str, classes: list[str],
                 kind: FileKind) -> tuple[list[str], np.ndarray]:
  """Split layout: the files of `kind` under `split_dir/<class>/`, sorted.

  Returns:
    (paths [N], int32 labels [N]): labels index `classes`.
  """
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    found = _files_under(class_dir, kind)
    paths += found
    labels += [label] * len(found)
  if not paths:
    raise FileNotFoundError(
        f'{kind.none_found()} in the class folders of {split_dir!r}; expected '
        f'{split_dir}/<class_name>/<{kind.noun} files>.')
  return paths, np.asarray(labels, np.int32)


def _walk_files(root: str, kind: FileKind) -> Iterator[str]:
  """Every file of `kind` under `root`, unsorted (nothing if `root` is no
  folder). Sub-folders are searched, linked ones too, each real folder once."""
  seen = set()
  for folder, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # A link back to a folder already listed.
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if _visible(d)]
    yield from (os.path.join(folder, f) for f in files if kind.matches(f))


def _files_under(root: str, kind: FileKind) -> list[str]:
  """Every file of `kind` under `root` (`_walk_files`), sorted."""
  return sorted(_walk_files(root, kind))


def _check_classes_train(root: str, splits: list[str], classes: list[str],
                         kind: FileKind) -> None:
  """Split layout: raises unless each of `classes` has a file of `kind` under
  `<root>/<train split>/<class>/` (`splits`: the train and eval split names);
  a class without one would count in num_classes, its label never trained."""
  train_dir, eval_dir = (os.path.join(root, s) for s in splits)
  # Stops at each class's first file: cheap on the eval split's build too.
  untrained = [
      c for c in classes
      if next(_walk_files(os.path.join(train_dir, c), kind), None) is None
  ]
  empty = [c for c in untrained if os.path.isdir(os.path.join(train_dir, c))]
  if empty:
    raise FileNotFoundError(
        f'data.train_split: {len(empty)} class folder(s) of {train_dir!r} '
        f'hold {kind.none_found()}: {_first_names(empty)}; their labels would '
        f'never be trained: add {kind.noun} files to them, or remove them.')
  if untrained:
    raise FileNotFoundError(
        f'data.eval_split: {len(untrained)} class folder(s) of {eval_dir!r} '
        f'are not in {train_dir!r}: {_first_names(untrained)}; their labels '
        f'would never be trained: add them to {train_dir!r} with {kind.noun} '
        f'files, or remove them from {eval_dir!r}.')


def _first_names(names: list[str]) -> str:
  """"'a', 'b'": the first 5 of `names`, then '...' if there are more."""
  return ', '.join([repr(n) for n in names[:5]] + ['...'] * (len(names) > 5))


def list_tree(root: str, kind: FileKind) -> list[str]:
  """Flat layout: every file of `kind` under `root` (`_files_under`)."""
  paths = _files_under(root, kind)
  if not paths:
    raise FileNotFoundError(
        f'data.path: {kind.none_found()} in {root!r} or its sub-folders.')
  return paths


def hold_out(paths: list[str], root: str, fraction: float,
             noun: str = 'file') -> tuple[list[str], list[str]]:
  """Flat layout: splits `paths` [N] into (train, eval) lists, both sorted.

  Eval gets the `max(1, round(fraction * N))` paths whose path relative to
  `root` has the smallest MD5: a function of the names alone. `noun` names
  a file in messages.
  """
  if not 0 < fraction < 1:
    raise ValueError(f'data.eval_fraction: must be in (0, 1), got {fraction}.')
  num_eval = max(1, int(fraction * len(paths) + 0.5))
  if num_eval >= len(paths):
    raise FileNotFoundError(
        f'data.path: {len(paths)} {noun}(s) in {root!r}; need at least 2 '
        '(one to train on, one held out for eval).')

  def digest(path: str) -> bytes:
    relative = os.path.relpath(path, root).replace(os.sep, '/')
    return hashlib.md5(relative.encode('utf-8', 'surrogateescape')).digest()

  held_out = set(sorted(paths, key=digest)[:num_eval])
  return ([p for p in paths if p not in held_out],
          [p for p in paths if p in held_out])


def split_files(
    config: ml_collections.ConfigDict, split: str,
    kind: FileKind) -> tuple[list[str], np.ndarray | None, int | None, str]:
  """The files of `kind` of `split` under `data.path`, in either layout.

  Returns:
    (paths [N], int32 labels [N] or None, number of classes or None, what
    they are in words: 'images in <path>/<split folder>' or '<split> images
    in <path>').
  """
  root = str(base.get(config, 'path'))
  if not root:
    raise ValueError(
        f'data.path: required for data.name={kind.dataset!r}: the folder of '
        f'your {kind.noun}s, e.g. {kind.path_example}.')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'data.path: {root!r} is not a folder.')
  splits = [str(base.get(config, k)) for k in ('train_split', 'eval_split')]
  if not os.path.isdir(os.path.join(root, splits[0])):  # Flat layout.
    if splits[1] != splits[0] and os.path.isdir(os.path.join(root, splits[1])):
      raise FileNotFoundError(
          f'data.train_split: no folder {os.path.join(root, splits[0])!r}, '
          f'but the eval split\'s {os.path.join(root, splits[1])!r} is one: '
          f'the split layout needs both (set data.train_split to the train '
          f'{kind.noun}s\' folder; sub-folders of {root!r}: '
          f'{_subfolders(root)}); to read every {kind.noun} under it as one '
          'pool instead (the flat layout), set data.eval_split to a name that '
          'is no folder there.')
    fraction = float(base.get(config, 'eval_fraction'))
    train, held_out = hold_out(list_tree(root, kind), root, fraction, kind.noun)
    # eval_split = train_split evaluates on the train files (e.g. the
    # statistics of the training set, reference_stats.py).
    on_train = split == 'train' or splits[1] == splits[0]
    paths = train if on_train else held_out
    return (paths, None, None,
            f"{'train' if on_train else split} {kind.noun}s in {root}")
  split_key = 'train_split' if split == 'train' else 'eval_split'
  split_dir = _split_dir(root, str(base.get(config, split_key)), split_key)
  classes = _classes(root, splits)
  where = f'{kind.noun}s in {split_dir}'
  if not classes:  # The split folders hold the files themselves.
    paths = _files_under(split_dir, kind)
    if not paths:
      raise FileNotFoundError(
          f'data.{split_key}: {kind.none_found()} in {split_dir!r}; expected '
          f'{split_dir}/<{kind.noun} files>, or '
          f'{split_dir}/<class_name>/<{kind.noun} files>.')
    return paths, None, None, where
  loose = sorted(
      f for f in os.listdir(split_dir)
      if kind.matches(f) and os.path.isfile(os.path.join(split_dir, f)))
  if loose:
    raise FileNotFoundError(
        f'data.{split_key}: {len(loose)} {kind.noun}(s) in {split_dir!r} '
        f'itself ({loose[0]!r}, ...) beside its class folders {classes}, '
        'which would be left out: move them into a class folder.')
  _check_classes_train(root, splits, classes, kind)
  paths, labels = list_classes(split_dir, classes, kind)
  return paths, labels, len(classes), where


def files_fingerprint(paths: list[str], labels: np.ndarray | None,
                      root: str) -> str:
  """A digest of the files of a split: each one's path relative to `root`,
  size and label (`labels` int32 [N] or None, one per path of `paths` [N]),
  in order. Only os.stat: a file rewritten at the same size keeps it; one
  that cannot be stat'ed (a broken link) counts as size -1, and the dataset's
  check of its files names it."""
  digest = hashlib.sha256()
  for i, path in enumerate(paths):
    relative = os.path.relpath(path, root).replace(os.sep, '/')
    label = '' if labels is None else int(labels[i])
    # NUL cannot stand in a path: the records cannot run into each other.
    try:
      size = os.stat(path).st_size
    except OSError:
      size = -1
    record = f'{relative}\0{size}\0{label}\0'
    digest.update(record.encode('utf-8', 'surrogateescape'))
  return digest.hexdigest()


# ------------------------------------------------------------------------------
# Files that cannot be used.
# ------------------------------------------------------------------------------


def shown(path: str) -> str:
  """`path` for messages: bytes that are not UTF-8 as \\x escapes."""
  return path.encode('utf-8', 'surrogateescape').decode('utf-8',
                                                        'backslashreplace')


def leave_out(paths: list[str], labels: np.ndarray | None, bad: list[int],
              first_problem: str, where: str, *, verb: str, skip: bool,
              report: bool) -> tuple[list[str], np.ndarray | None]:
  """Leaves the files `bad` (increasing indices into `paths` [N]) out, or
  raises: the `skip_unreadable` rule of the folder datasets.

  Args:
    paths: the files of one split.
    labels: int32 [N], or None.
    bad: the files that cannot be used.
    first_problem: what is wrong with `paths[bad[0]]`, naming it.
    where: what `paths` are, for messages: 'images in <folder>'.
    verb: what the bad files cannot be ('decoded').
    skip: leave them out; else raise.
    report: print the one line that says how many were left out (the first
      host does).

  Returns:
    (paths [M], labels [M] or None) without the files `bad`.

  Raises:
    DataError: naming the first bad file, unless `skip`; or, when every file
      is bad, naming the first.
  """
  if not bad:
    return paths, labels
  count = f'{len(bad)} of the {len(paths)} {where}'
  if not skip:
    raise DataError(
        f'{first_problem}; {count} cannot be {verb}: remove them, or set '
        '--config.data.skip_unreadable=True to leave them out.')
  if len(bad) == len(paths):
    raise DataError(f'none of the {len(paths)} {where} can be {verb} '
                    f'(first: {first_problem}).')
  if report:
    print(f'vqlab: skipped {count} (unreadable; first: {first_problem})',
          flush=True)
  keep = np.setdiff1d(np.arange(len(paths)), bad)
  return [paths[i] for i in keep], None if labels is None else labels[keep]


def skip_unreadable(config: ml_collections.ConfigDict) -> bool:
  """`data.skip_unreadable`, a bool, or ValueError naming it."""
  skip = base.get(config, 'skip_unreadable')
  if not isinstance(skip, bool):
    raise ValueError(f'data.skip_unreadable: must be True or False, got '
                     f'{skip!r}.')
  return skip
