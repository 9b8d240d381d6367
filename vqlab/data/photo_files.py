"""The real photos that ship inside the scikit-image and scikit-learn wheels.

Only files bundled in the wheels are listed; `skimage.data` also names images that it fetches over
the network with pooch (eagle, kidney, lily, ...), and those are never used. Files are read
straight from the packages' data folders, so loading cannot touch the network.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

# name -> (installed package, file path inside the package's folder, description).
PHOTOS: dict[str, tuple[str, str, str]] = {
    'astronaut': ('skimage', 'data/astronaut.png',
                  'RGB 512x512, portrait of Eileen Collins'),
    'chelsea': ('skimage', 'data/chelsea.png', 'RGB 300x451, a cat'),
    'coffee': ('skimage', 'data/coffee.png', 'RGB 400x600, a cup of coffee'),
    'rocket': ('skimage', 'data/rocket.jpg', 'RGB 427x640, a rocket launch'),
    'hubble_deep_field':
        ('skimage', 'data/hubble_deep_field.jpg', 'RGB 872x1000, galaxies'),
    'immunohistochemistry':
        ('skimage', 'data/ihc.png', 'RGB 512x512, stained tissue'),
    'retina': ('skimage', 'data/retina.jpg', 'RGB 1411x1411, a human retina'),
    'motorcycle':
        ('skimage', 'data/motorcycle_left.png', 'RGB 500x741, a motorcycle'),
    'camera': ('skimage', 'data/camera.png', 'gray 512x512, a cameraman'),
    'coins': ('skimage', 'data/coins.png', 'gray 303x384, Greek coins'),
    'moon': ('skimage', 'data/moon.png', 'gray 512x512, the moon surface'),
    'brick':
        ('skimage', 'data/brick.png', 'gray 512x512, a brick wall texture'),
    'grass': ('skimage', 'data/grass.png', 'gray 512x512, a grass texture'),
    'gravel': ('skimage', 'data/gravel.png', 'gray 512x512, a gravel texture'),
    'china': ('sklearn', 'datasets/images/china.jpg',
              'RGB 427x640, a Chinese temple'),
    'flower':
        ('sklearn', 'datasets/images/flower.jpg', 'RGB 427x640, a flower'),
}


def photo_path(name: str) -> str:
  """Absolute path of the bundled file of photo `name`."""
  if name not in PHOTOS:
    raise ValueError(
        f'unknown photo {name!r}; bundled photos: {sorted(PHOTOS)}')
  package, filename, _ = PHOTOS[name]
  # find_spec locates the package without importing it (importing sklearn costs seconds).
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(
        f'photo {name!r} ships in the {package} wheel, which is not installed '
        '(pip install scikit-image scikit-learn).')
  path = os.path.join(list(spec.submodule_search_locations)[0], filename)
  if not os.path.isfile(path):
    raise ValueError(
        f'photo {name!r}: expected the bundled file {path}, which is missing.')
  return path


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
  """Decoded photo `name`: uint8 [H, W, 3] RGB (gray replicated to 3 channels, alpha dropped).

  Cached: each photo is decoded once per process. Do not modify the returned array.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(photo_path(name)) as image:
    rgb = np.asarray(image.convert('RGB'), dtype=np.uint8)
  rgb.setflags(write=False)
  return rgb
