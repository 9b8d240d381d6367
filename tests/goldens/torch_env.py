"""Import torch, torchvision and the reference packages for golden scripts.

Only the golden scripts import this (never the tests). The machines this
project was built on have a CPU torch but only a CUDA build of torchvision,
whose compiled ops cannot load; the models we need are pure python, so skip
the module that registers the compiled ops' meta kernels.
"""

import sys
import types
import warnings

warnings.filterwarnings('ignore')
sys.modules.setdefault('torchvision._meta_registrations',
                       types.ModuleType('torchvision._meta_registrations'))

import torch  # pylint: disable=g-import-not-at-top,unused-import
import torchvision  # pylint: disable=g-import-not-at-top,unused-import
