"""pytorch-fid's FID Inception weights -> params of vqlab.nn.inception.

The file `pt_inception-2015-12-05-6726825d.pth` holds the state dict of
pytorch-fid's `fid_inception_v3()`: per BasicConv2d `{name}.conv.weight`
[O, I, kh, kw] and `{name}.bn.weight|bias|running_mean|running_var` [O]
(`{name}.bn.num_batches_tracked` may be there too and is ignored), then
`fc.weight` [1008, 2048] and `fc.bias` [1008]. Each BatchNorm is folded into
its conv here (in float64): kernel * s and bias = beta - mean * s, with
s = gamma / sqrt(var + 1e-3). fc.bias is checked and dropped: the model's
logits are the unbiased ones (see vqlab.nn.inception).

The expected param tree is InceptionV3's own (vqlab.nn.inception, a module
that imports nothing else from vqlab).
"""

from collections.abc import Mapping
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.errors import WeightsError
from vqlab.nn import inception
from vqlab.weights import files
from vqlab.weights import state_dicts
from vqlab.weights import torch_files

BN_EPS = 1e-3
_BN_STATS = ('weight', 'bias', 'running_mean', 'running_var')


@functools.cache
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(module path..., 'kernel'|'bias'): shape} of InceptionV3's params."""
  model = inception.InceptionV3(resize_input=False)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 75, 75, 3)))['params']
  return {
      tuple(k.key for k in path): tuple(
          leaf.shape
      ) for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
  }


def _take(state: Mapping[str, np.ndarray], key: str,
          shape: tuple[int, ...]) -> np.ndarray:
  """state[key] as float64, or WeightsError naming the key if it is missing
  or does not have `shape`."""
  return state_dicts.take(state, key, shape, what='FID Inception weights',
                          dtype=np.float64)


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value.astype(np.float32)


def convert_inception(state: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid state dict {name: array} -> InceptionV3 params.

  Returns:
    numpy float32 params: `{conv path}/kernel` [kh, kw, I, O] and `/bias` [O]
    with BatchNorm folded in, `fc/kernel` [2048, 1008].

  Raises:
    WeightsError naming the first missing, unexpected or misshapen key.
  """
  params, expected = {}, set()
  for path, shape in _param_shapes().items():
    if path == ('fc', 'kernel'):
      kernel = _take(state, 'fc.weight', shape[::-1])
      _take(state, 'fc.bias', shape[1:])
      _set(params, path, kernel.T)
      expected.update(('fc.weight', 'fc.bias'))
      continue
    if path[-1] != 'kernel':
      continue  # Conv biases come with their kernels.
    prefix = '.'.join(path[:-1])
    kh, kw, cin, cout = shape
    kernel = _take(state, f'{prefix}.conv.weight', (cout, cin, kh, kw))
    gamma, beta, mean, var = (
        _take(state, f'{prefix}.bn.{stat}', (cout,)) for stat in _BN_STATS)
    scale = gamma / np.sqrt(var + BN_EPS)
    _set(params, path, kernel.transpose(2, 3, 1, 0) * scale)
    _set(params, path[:-1] + ('bias',), beta - mean * scale)
    expected.add(f'{prefix}.conv.weight')
    expected.update(f'{prefix}.bn.{stat}' for stat in _BN_STATS)
    expected.add(f'{prefix}.bn.num_batches_tracked')  # Optional.
  extra = sorted(set(state) - expected)
  if extra:
    raise WeightsError(f'FID Inception weights: unexpected key {extra[0]!r} '
                       f'({len(extra)} unexpected in all); is this '
                       'pytorch-fid\'s pt_inception-2015-12-05 file?')
  return params


def load_inception_params(directory: str | os.PathLike | None = None) -> dict:
  """Params of InceptionV3 from pytorch-fid's published weight file in the
  weights directory (see vqlab.weights.files); WeightsError if it is
  missing or does not match."""
  path = files.require('inception_fid', directory)
  state = torch_files.load_state_dict(path)
  try:
    params = convert_inception(state)
  except WeightsError as e:
    raise files.not_that_file('inception_fid', path, e) from None
  return jax.device_put(params)
