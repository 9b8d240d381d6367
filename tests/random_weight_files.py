"""Published-format weight files filled with seeded random weights.

The names and shapes come from the golden files (the torch reference models'
own state dicts), so these files look exactly like the published ones to the
loaders: `vgg16-397923af.pth`, `vgg19-dcbb9e9d.pth` and
`pt_inception-2015-12-05-6726825d.pth` and `rgb_imagenet.pt`, written by our
torch-format writer.
"""

import os
import pathlib

from tests import paths
from tests.goldens import seeded_weights
from vqlab.weights import files
from vqlab.weights import torch_files

GOLDENS = paths.GOLDENS
_SOURCES = {
    'vgg16': 'lpips.npz',
    'vgg19': 'vgg19.npz',
    'inception_fid': 'inception.npz',
    'i3d_kinetics400': 'i3d.npz'
}


def golden_state_dict(name: str) -> dict:
  """The seeded random state dict the golden for weight file `name` used."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(GOLDENS / _SOURCES[name]) as golden:
    names, shapes = seeded_weights.unpack_shapes(golden)
    seed = int(golden['seed'])
  return seeded_weights.draw_state_dict(names, shapes, seed)


def write(directory: str | os.PathLike, names=tuple(_SOURCES)) -> pathlib.Path:
  """Writes the weight files `names` (vqlab.weights.files keys) into
  `directory` and returns it."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name in names:
    torch_files.save_state_dict(directory / files.KNOWN_FILES[name].filename,
                                golden_state_dict(name))
  return directory
