"""`image_folder`: your own images, in one of two layouts under `data.path`.

Split layout (that of `tfds.folder_dataset.ImageFolder`), used when
`<path>/<train_split>/` is a folder:

  <path>/<train_split>/<class_name>/<image files, in sub-folders too>
  <path>/<eval_split>/<class_name>/<image files, in sub-folders too>

Labels are the indices of the class folder names, sorted, over the train and
eval split folders together (so both splits agree); split folders without
any sub-folder hold their images themselves, without labels. An
`<eval_split>` folder without a `<train_split>` one is an error (its images
would otherwise train, as the flat layout's).

Flat layout, used otherwise: every image file under `<path>`, in sub-folders
too, without labels. `round(eval_fraction * N)` of the N images (at least one)
are held out for eval: those whose path relative to `<path>` has the smallest
MD5, so the split does not depend on the seed, the machine or `<path>` itself,
and adding images moves few others across. `eval_split = train_split`
evaluates on the train images instead (e.g. FID statistics of the training
set); other split names are not folders there.

Image files end in `IMAGE_EXTENSIONS` (any case); hidden files and folders
(names starting with '.', such as macOS's `._photo.jpg`) are ignored. A file
name that is not UTF-8 (TensorFlow reads UTF-8 paths only) is unreadable.

Unreadable files. Before anything trains, every file of the split is decoded
once, in parallel, with TensorFlow's decoders (those of the pipeline; JPEGs
at 1/8 scale, which still reads all of their data). A file that cannot be
read or decoded is a `DataError` whose one line names it, or, with
`skip_unreadable`, is left out of the list, and one line reports how many
were left out. The list, and so the data order, depends only on the files
(names and contents): it is the same on every host and on every resume.

Files are listed in sorted order; each host reads an even contiguous slice of
the eval list and every process_count-th file of the train list (so that no
host holds a run of classes). Preprocessing, order and resume are those of
the `tfds` dataset (`preprocess.py`, `pipeline.py`), with two differences: the
train shuffle buffer holds the file names of the whole host's slice, not
`shuffle_buffer` of them (each epoch is a uniform permutation, as a tfds
dataset's shuffled records give; each file is read after the shuffle), and
images are turned as their EXIF orientation tag says (read from each file's
header with PIL when the source is built; `preprocess.exif_orient`).

Each split has a fingerprint, a digest of its files' relative paths, sizes
and labels: token shards record it, and --mode=tokenize makes a split's
shards again when its files changed (adding one image can change which are
held out for eval at the same count). Shards already made stay a snapshot:
training reads them as they are.
"""

from __future__ import annotations

import concurrent.futures
import warnings

import ml_collections
import numpy as np
from PIL import Image
from vqlab.data.lazy import tf

from vqlab.data import base
from vqlab.data import folder_files
from vqlab.data import pipeline
from vqlab.data import preprocess

_ORIENTATION = 0x0112  # The EXIF tag.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
IMAGES = folder_files.FileKind(
    'image_folder', 'image', IMAGE_EXTENSIONS,
    '--config=configs/image_folder.py:/path/to/images or '
    '--config.data.path=/path/to/images')


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `image_folder` dataset; `path` must be set."""
  return ml_collections.ConfigDict({
      'name': 'image_folder',
      'image_size': 256,  # Side of the square eval (and train) images.
      # >0: train on crops of this side instead (see preprocess.py).
      'train_image_size': 0,
      'seed': 0,  # Seeds the train order and augmentations.
      # Required: the folder of your images (see the layouts above).
      'path': '',
      'train_split': 'train',  # Split layout: sub-folder of the train images.
      'eval_split': 'val',  # Split layout: sub-folder of the eval images.
      # Flat layout: fraction of the images held out for eval (at least 1).
      'eval_fraction': 0.05,
      # Leave out files that cannot be decoded (counted and reported once)
      # instead of stopping with an error naming the first.
      'skip_unreadable': False,
      **preprocess.augment_defaults(),
  })


# ------------------------------------------------------------------------------
# Unreadable files.
# ------------------------------------------------------------------------------

# Bytes of a BMP that say whether TensorFlow decodes it right: the header
# and a palette of up to 256 entries.
_BMP_HEAD = 14 + 124 + 4 * 256


def _coloured_palette_bmp(head: bytes) -> bool:
  """Whether `head` (a file's first _BMP_HEAD bytes) is a BMP of palette
  indices whose palette is not the grey ramp (entry i = grey level i):
  TensorFlow decodes the indices as grey levels, right only for that ramp
  (a gray image saved as BMP), silently wrong for colours or 1-bit images."""
  if head[:2] != b'BM' or len(head) < 54:
    return False
  bits = int.from_bytes(head[28:30], 'little')
  if bits > 8:
    return False
  count = int.from_bytes(head[46:50], 'little') or 2**bits
  start = 14 + int.from_bytes(head[14:18], 'little')
  palette = np.frombuffer(head[start:start + 4 * count], np.uint8)
  if palette.size != 4 * count:
    return True
  bgr = palette.reshape(count, 4)[:, :3].astype(int)
  return bool(np.any(bgr != np.arange(count)[:, None]))


def _utf8_name(path: str) -> bool:
  """Whether `path` is UTF-8 (a name of other bytes is a str with lone
  surrogates, which TensorFlow's string tensors refuse)."""
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def _decoded_shape(path, channels: int):
  """Reads and decodes the image file `path` (a string tensor): int32 [3]."""
  encoded = tf.io.read_file(path)
  jpeg = lambda: tf.shape(tf.io.decode_jpeg(encoded, channels, ratio=8))
  other = lambda: tf.shape(preprocess.decode_image(encoded, channels))
  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _head(path: str, size: int) -> bytes:
  with open(path, 'rb') as f:
    return f.read(size)


def unreadable(paths: list[str], channels: int) -> list[int]:
  """Indices into `paths` [N] of the files TensorFlow cannot read or decode
  as images of `channels` channels (or decodes wrong: `.bmp` files of
  coloured palettes), in increasing order."""
  named = [i for i, path in enumerate(paths) if _utf8_name(path)]
  readable = np.zeros(len(paths), bool)
  if not named:
    return np.flatnonzero(~readable).tolist()
  names = tf.constant([paths[i] for i in named])
  ds = tf.data.Dataset.from_tensor_slices(names).enumerate()
  ds = ds.map(lambda i, path: (i, _decoded_shape(path, channels)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  decoded = [int(i) for i, _ in ds.ignore_errors().as_numpy_iterator()]
  readable[np.asarray(named, np.int64)[decoded]] = True
  for i, path in enumerate(paths):
    if readable[i] and path.lower().endswith('.bmp'):
      readable[i] = not _coloured_palette_bmp(_head(path, _BMP_HEAD))
  return np.flatnonzero(~readable).tolist()


_SIGNATURES = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'),
               (b'GIF87a', 'GIF'), (b'GIF89a', 'GIF'), (b'BM', 'BMP'))


def describe_unreadable(path: str) -> str:
  """Why TensorFlow could not decode the file `path`, in a few words.

  From the file's first bytes: asking TensorFlow again would print its own
  log lines on the console.
  """
  if not _utf8_name(path):
    return ('its name is not UTF-8, and TensorFlow reads UTF-8 paths only: '
            'rename it')
  try:
    head = _head(path, _BMP_HEAD)
  except OSError as e:
    return f'cannot be read: {e.strerror or e}'
  if not head:
    return 'an empty file'
  if _coloured_palette_bmp(head):
    return ('a BMP of palette colours, which TensorFlow decodes without them '
            '(as grey): convert it to PNG')
  for signature, kind in _SIGNATURES:
    if head.startswith(signature):
      return f'{kind} data that is truncated, corrupt or of an unsupported kind'
  return 'not a JPEG, PNG, GIF or BMP file'


def unreadable_on_every_host(paths: list[str], channels: int,
                             process_index: int,
                             process_count: int) -> list[int]:
  """`unreadable(paths, channels)`, each of the run's processes decoding
  every process_count-th file and all exchanging their verdicts, so every
  host leaves out the same files (decoding all of ImageNet took each host
  half a CPU-hour, and read the whole set, at every start). Hosts simulated
  in one process (process_count is not jax's) decode every file."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if process_count == 1 or process_count != jax.process_count():
    return unreadable(paths, channels)
  mine = np.arange(process_index, len(paths), process_count)
  bad = mine[unreadable([paths[i] for i in mine], channels)]
  counts = np.asarray(multihost_utils.process_allgather(np.int64(len(bad))))
  padded = np.full(max(int(counts.max()), 1), -1, np.int64)
  padded[:len(bad)] = bad
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return sorted(int(i) for i in gathered.ravel() if i >= 0)


def drop_unreadable(
    paths: list[str], labels: np.ndarray | None, where: str, *, channels: int,
    skip: bool, report: bool, process_index: int = 0,
    process_count: int = 1) -> tuple[list[str], np.ndarray | None]:
  """Checks that every file of `paths` [N] decodes.

  Args:
    paths: the image files of one split.
    labels: int32 [N], or None.
    where: what `paths` are, for messages: 'images in <folder>'.
    channels: decoded channels (`data.channels`).
    skip: leave unreadable files out; else raise.
    report: print the one line that says how many were left out (the first
      host does).
    process_index, process_count: this process and the run's processes,
      which share the decoding (`unreadable_on_every_host`).

  Returns:
    (paths [M], labels [M] or None) without the unreadable files.

  Raises:
    DataError: naming the first unreadable file, unless `skip`
      (`folder_files.leave_out`).
  """
  bad = unreadable_on_every_host(paths, channels, process_index, process_count)
  first_problem = ''
  if bad:
    first = paths[bad[0]]
    first_problem = f'{folder_files.shown(first)}: {describe_unreadable(first)}'
  return folder_files.leave_out(paths, labels, bad, first_problem, where,
                                verb='decoded', skip=skip, report=report)


def exif_orientation(path: str) -> int:
  """The EXIF orientation tag of the image file `path`: 1-8 (how a viewer
  turns the stored pixels; `preprocess.exif_orient`), 1 without one.

  Phones store portrait photos as landscape pixels with tag 6 or 8;
  TensorFlow's decoders ignore the tag. Only the file's header is read (a
  PNG's EXIF chunk after its pixels, which no camera writes, is not).
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as image:
        if image.format in ('JPEG', 'MPO'):  # MPO: a JPEG and more images.
          return int(image.getexif().get(_ORIENTATION, 1))
        if image.format == 'PNG' and 'exif' in image.info:
          exif = Image.Exif()
          exif.load(image.info['exif'])
          return int(exif.get(_ORIENTATION, 1))
        return 1
  except (OSError, SyntaxError, ValueError, TypeError,
          Image.DecompressionBombError):
    return 1  # A header PIL refuses (e.g. over 179 MP): the stored pixels.


def exif_orientations(paths: list[str]) -> np.ndarray:
  """int32 [N]: `exif_orientation` of each of `paths`, read by threads."""
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    return np.array(list(pool.map(exif_orientation, paths)),
                    np.int32).reshape(-1)


# ------------------------------------------------------------------------------
# The source.
# ------------------------------------------------------------------------------


def split_files(
    config: ml_collections.ConfigDict,
    split: str) -> tuple[list[str], np.ndarray | None, int | None, str]:
  """`folder_files.split_files` of the images: (paths [N], int32 labels [N]
  or None, number of classes or None, what they are in words)."""
  return folder_files.split_files(config, split, IMAGES)


def fingerprint(config: ml_collections.ConfigDict, split: str) -> str:
  """The `fingerprint` of `build`'s source of `split`, without building it."""
  paths, labels, _, _ = split_files(config, split)
  return folder_files.files_fingerprint(paths, labels,
                                        str(base.get(config, 'path')))


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source.

  Batches: 'image' float32 [b, T, T, channels] (train; T = train_image_size
  or image_size) or [b, S, S, channels] (eval) in [-1, 1], and 'label' int32
  [b] in the split layout. Its `fingerprint` is
  `folder_files.files_fingerprint` of the
  split's files before the decode check (token shards record it).

  Raises:
    DataError: a file of the split cannot be decoded (unless
      `skip_unreadable`).
  """
  base.check_split(split)
  b = base.host_batch_size(global_batch_size, process_index, process_count)
  aug = preprocess.Augment.from_config(config)
  skip = folder_files.skip_unreadable(config)
  paths, labels, num_classes, where = split_files(config, split)
  files = folder_files.files_fingerprint(paths, labels,
                                         str(base.get(config, 'path')))
  pipeline.hide_accelerators_from_tf()
  paths, labels = drop_unreadable(paths, labels, where, channels=aug.channels,
                                  skip=skip, report=process_index == 0,
                                  process_index=process_index,
                                  process_count=process_count)
  num_examples = len(paths)
  if split == 'train':
    # Listed files run class by class (or folder by folder): every
    # process_count-th file, not a contiguous run of classes.
    host = np.arange(process_index, num_examples, process_count)
  else:
    host = np.array_split(np.arange(num_examples), process_count)[process_index]
  host_records = {
      'image': tf.constant([paths[i] for i in host], tf.string),
      'orientation': exif_orientations([paths[i] for i in host])
  }
  if labels is not None:
    host_records['label'] = labels[host]

  read = lambda ex: dict(ex, image=tf.io.read_file(ex['image']))
  records = lambda: tf.data.Dataset.from_tensor_slices(host_records)

  num_batches = None  # Train: endless.
  if split == 'train':
    seed = int(base.get(config, 'seed'))
    augment = preprocess.train_fn(aug)
    # The shuffle buffer holds paths, all of the host's: each epoch is a
    # uniform permutation (a smaller buffer would mix only files listed near
    # each other: batches of a few neighbouring classes), and each file is
    # read after the shuffle, in the parallel preprocessing.
    make = lambda start: pipeline.train_dataset(
        records(), preprocess=lambda ex, key: augment(read(ex), key), seed=seed,
        process_index=process_index, per_host_batch_size=b, shuffle_buffer=max(
            len(host), 1), start_step=start)
    shape = aug.train_shape
  else:
    num_batches = pipeline.host_eval_batches(num_examples, global_batch_size,
                                             process_count)
    make = lambda start: pipeline.eval_dataset(
        records().map(read), preprocess=preprocess.eval_fn(
            aug), per_host_batch_size=b, num_batches=num_batches, image_shape=
        aug.image_shape, has_label=labels is not None, start_step=start)
    shape = aug.image_shape
  return pipeline.TfDataSource(make, per_host_batch_size=b,
                               num_examples=num_examples, image_shape=shape,
                               num_classes=num_classes,
                               host_num_examples=len(host),
                               num_batches=num_batches, fingerprint=files)
