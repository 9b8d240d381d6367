"""torchvision VGG16/19 `features.*` weights -> params of vqlab.nn.vgg.VGG."""

from collections.abc import Mapping
import os

import jax
import numpy as np

from vqlab.errors import WeightsError
from vqlab.nn import vgg
from vqlab.weights import files
from vqlab.weights import state_dicts
from vqlab.weights import torch_files


def convert_vgg(state: Mapping[str, np.ndarray], depth: int,
                prefix: str = 'features.') -> dict:
  """torchvision state dict -> VGG params {'conv1_1': {'kernel', 'bias'}}.

  Args:
    state: {name: array}; conv weights [O, I, 3, 3] and biases [O] under
      `{prefix}{index}.weight|bias` (other keys, e.g. the classifier's, are
      ignored).
    depth: 16 or 19.
    prefix: what precedes the layer index in the names.

  Returns:
    Params with HWIO kernels [3, 3, I, O] (numpy float32).
  """
  params, in_channels = {}, 3
  for name, index in vgg.torchvision_indices(depth).items():
    out_channels = vgg.CHANNELS[int(name[4]) - 1]
    key = f'{prefix}{index}'
    kernel = state_dicts.take(state, f'{key}.weight',
                              (out_channels, in_channels, 3, 3))
    params[name] = {
        'kernel': kernel.transpose(2, 3, 1, 0),
        'bias': state_dicts.take(state, f'{key}.bias', (out_channels,)),
    }
    in_channels = out_channels
  return params


def load_vgg_params(depth: int,
                    directory: str | os.PathLike | None = None) -> dict:
  """Params of VGG(depth) from the published torchvision file in the weights
  directory (see vqlab.weights.files); WeightsError if it is missing."""
  path = files.require(f'vgg{depth}', directory)
  state = torch_files.load_state_dict(path)
  try:
    params = convert_vgg(state, depth)
  except WeightsError as e:
    raise files.not_that_file(f'vgg{depth}', path, e) from None
  return jax.device_put(params)
