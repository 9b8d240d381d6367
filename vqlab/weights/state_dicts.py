"""Tensors taken out of a state dict {name: array} by the weight converters,
each checked against the shape the model expects: a missing or misshapen one
is a one-line WeightsError naming it, never a broadcast or a KeyError."""

from collections.abc import Mapping
import re

import numpy as np

from vqlab.errors import WeightsError


def take(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], *,
         what: str = '', dtype: np.dtype | type = np.float32,
         hint: str = '') -> np.ndarray:
  """state[key] as a `dtype` array of `shape`.

  Args:
    state: {name: array}.
    key: the tensor's name.
    shape: the shape it must have.
    what: the weights, e.g. 'I3D weights': the errors start with it.
    dtype: the returned dtype.
    hint: appended to the missing-key error, e.g. '; is this ...?'.

  Raises:
    WeightsError: `key` is missing or has another shape (named).
  """
  where = f'{what}: ' if what else ''
  if key not in state:
    raise WeightsError(f'{where}state dict has no {key!r} '
                       f'(expected shape {shape}){hint}')
  value = np.asarray(state[key], dtype)
  if value.shape != shape:
    raise WeightsError(f'{where}{key!r} has shape {value.shape}, '
                       f'expected {shape}')
  return value


def linear(state: Mapping[str, np.ndarray], name: str, n_in: int, n_out: int, *,
           what: str = '') -> dict[str, np.ndarray]:
  """torch Linear `{name}.weight` [n_out, n_in] and `{name}.bias` [n_out] ->
  flax Dense {'kernel': [n_in, n_out], 'bias': [n_out]} (float32)."""
  return {
      'kernel': take(state, f'{name}.weight', (n_out, n_in), what=what).T,
      'bias': take(state, f'{name}.bias', (n_out,), what=what)
  }


def layer_norm(state: Mapping[str, np.ndarray], name: str, size: int, *,
               what: str = '') -> dict[str, np.ndarray]:
  """torch LayerNorm `{name}.weight`, `{name}.bias` [size] -> flax LayerNorm
  {'scale': [size], 'bias': [size]} (float32)."""
  return {
      'scale': take(state, f'{name}.weight', (size,), what=what),
      'bias': take(state, f'{name}.bias', (size,), what=what)
  }


def check_layer_count(state: Mapping[str, np.ndarray], layer_prefix: str,
                      num_layers: int, *, what: str = '') -> None:
  """Raises WeightsError when `state` holds layers `{layer_prefix}{i}.` with
  i >= num_layers (the config's count): a file of a deeper model (e.g. 12
  layers beside a 6-layer config.json) would load as its first layers."""
  pattern = re.compile(re.escape(layer_prefix) + r'(\d+)\.')
  layers = {int(m[1]) for k in state if (m := pattern.match(k))}
  if layers and max(layers) >= num_layers:
    where = f'{what}: ' if what else ''
    raise WeightsError(
        f'{where}the state dict holds {max(layers) + 1} layers '
        f'({layer_prefix}<i>.*), its config {num_layers}: are the weights and '
        'config.json of the same model?')
