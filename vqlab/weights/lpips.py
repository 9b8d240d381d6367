"""LPIPS v0.1 linear heads (`lin{k}.model.1.weight`) -> LPIPS head params."""

from collections.abc import Mapping

import numpy as np

from vqlab.nn import vgg
from vqlab.weights import state_dicts


def convert_lpips_heads(state: Mapping[str, np.ndarray]) -> dict:
  """lpips heads state dict -> {'lin0': {'kernel': [C, 1]}, ..., 'lin4'}.

  Args:
    state: {name: array} holding `lin{k}.model.1.weight` [1, C_k, 1, 1] for
      the five VGG16 layers (C = 64, 128, 256, 512, 512).

  Returns:
    Dense kernels [C_k, 1] (numpy float32); WeightsError names a missing or
    wrong-shape key.
  """
  params = {}
  for k, channels in enumerate(vgg.CHANNELS):
    weight = state_dicts.take(state, f'lin{k}.model.1.weight',
                              (1, channels, 1, 1))
    params[f'lin{k}'] = {'kernel': weight.reshape(1, channels).T}
  return params
