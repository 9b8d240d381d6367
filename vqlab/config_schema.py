"""Checks a user's ConfigDict against a reference config before anything compiles.

The reference is the component's `default_config()`: every key a user may set is
present there with a value of the right type. A user config may omit keys (the
default is used) but may not add keys or change a key's type.
"""

from typing import Any

import ml_collections

from vqlab.errors import ConfigError

_NUMBER_TYPES = (int, float)


def _type_name(value: Any) -> str:
  return type(value).__name__


def _compatible(value: Any, reference: Any) -> bool:
  if reference is None or value is None:
    return True  # None marks an optional key; either side may be unset.
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, _NUMBER_TYPES)
  if isinstance(reference, int):
    return isinstance(value, int)
  if isinstance(reference, (tuple, list)):
    return isinstance(value, (tuple, list))
  if isinstance(reference, str):
    return isinstance(value, str)
  return isinstance(value, type(reference))


def check_against(config: ml_collections.ConfigDict,
                  reference: ml_collections.ConfigDict,
                  prefix: str = '') -> None:
  """Raises ConfigError for the first unknown key or type mismatch.

  Args:
    config: the user's (sub)config.
    reference: the complete default (sub)config of the same component.
    prefix: dotted path of `config` inside the experiment config, for messages.
  """
  for key in config.keys():
    path = f'{prefix}{key}'
    if key not in reference:
      known = ', '.join(sorted(reference.keys()))
      raise ConfigError(path, f'unknown key; known keys here: {known}')
    value, ref_value = config[key], reference[key]
    if isinstance(ref_value, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(path, f'expected a ConfigDict, got {_type_name(value)}')
      check_against(value, ref_value, prefix=f'{path}.')
    elif not _compatible(value, ref_value):
      raise ConfigError(
          path, f'expected {_type_name(ref_value)}, got {_type_name(value)} '
          f'({value!r})')


def filled(config: ml_collections.ConfigDict,
           reference: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `reference` updated with `config` (after `check_against`)."""
  merged = ml_collections.ConfigDict(reference.to_dict())
  merged.unlock()
  _update(merged, config)
  return merged


def _update(target: ml_collections.ConfigDict,
            source: ml_collections.ConfigDict) -> None:
  for key in source.keys():
    value = source[key]
    if isinstance(value, ml_collections.ConfigDict) and isinstance(
        target.get(key), ml_collections.ConfigDict):
      _update(target[key], value)
    else:
      # Replace whole values; ConfigDict would refuse a type change such as
      # int -> float otherwise.
      del target[key]
      target[key] = value


def require(condition: bool, key: str, problem: str) -> None:
  """Raises ConfigError(key, problem) unless `condition` holds."""
  if not condition:
    raise ConfigError(key, problem)
