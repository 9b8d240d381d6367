"""Checks a user's ConfigDict against a reference config before anything compiles.

The reference is the component's `default_config()`: every key a user may set is
present there with a value of the right type. A user config may omit keys (the
default is used) but may not add keys or change a key's type. Numbers are
checked against their natural domain (`Domain`, e.g. a learning rate > 0).
"""

import dataclasses
import difflib
import math
import re
from typing import Any, Iterable, Mapping

import ml_collections

from vqlab.errors import ConfigError

_NUMBER_TYPES = (int, float)


def _type_name(value: Any) -> str:
  if isinstance(value, (tuple, list)) and value:
    entries = '/'.join(sorted({_type_name(v) for v in value}))
    return f'{type(value).__name__} of {entries}'
  return type(value).__name__


def _compatible(value: Any, reference: Any) -> bool:
  if reference is None:
    return True  # An optional key (unset by default) takes any value.
  if value is None:
    return False  # A key with a default needs a value of its type.
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, _NUMBER_TYPES)
  if isinstance(reference, int):
    return isinstance(value, int)
  if isinstance(reference, (tuple, list)):
    # Entries of the reference's entries' types (any, when it is empty).
    return isinstance(value, (tuple, list)) and (not reference or all(
        any(_compatible(v, r) for r in reference) for v in value))
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
      raise unknown_key(path, reference.keys())
    value, ref_value = config[key], reference[key]
    if isinstance(ref_value, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(path,
                          f'expected a ConfigDict, got {_type_name(value)}')
      check_against(value, ref_value, prefix=f'{path}.')
    elif not _compatible(value, ref_value):
      got = f'{_type_name(value)} ({value!r})'
      if (isinstance(ref_value, (tuple, list)) and
          isinstance(value, (tuple, list)) and len(value) == 1 and
          isinstance(value[0], str) and value[0].startswith(('(', '['))):
        # A command-line tuple that does not parse is kept as its text.
        got = f'{value[0]!r}, which does not parse as one'
      raise ConfigError(path, f'expected {_type_name(ref_value)}, got {got}')


def unknown_key(path: str, known: Iterable[str]) -> ConfigError:
  """The error for the dotted key `path`, whose siblings are `known`: the
  closest known key when one is close, else all of them."""
  parent, _, key = path.rpartition('.')
  close = difflib.get_close_matches(key, list(known), n=1)
  if close:
    suggestion = f'{parent}.{close[0]}' if parent else close[0]
    return ConfigError(path, f'unknown key; did you mean {suggestion}?')
  return ConfigError(
      path, f'unknown key; known keys here: {", ".join(sorted(known))}')


def lookup(tree: Any, dotted: str) -> Any:
  """tree['a']['b'] for 'a.b' (ConfigDicts and dicts); None when absent."""
  for part in dotted.split('.'):
    if not hasattr(tree, 'get'):
      return None
    tree = tree.get(part)
  return tree


def path_error(config: ml_collections.ConfigDict,
               path: str) -> ConfigError | None:
  """The error for the first component of the dotted `path` (e.g. of a
  command-line override) that `config` does not have, or None."""
  node, parts = config, path.split('.')
  for i, key in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      return ConfigError(
          '.'.join(parts[:i]), f'a value ({_type_name(node)}),'
          f' not a section: no key {key!r}')
    if key not in node:
      return unknown_key('.'.join(parts[:i + 1]), node.keys())
    node = node[key]
  return None


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


# ------------------------------------------------------------------ domains ---
_RANGE = re.compile(r'^(?:(?P<op>>=?) (?P<bound>\S+)|(?P<left>[(\[])'
                    r'(?P<low>\S+), (?P<high>\S+)(?P<right>[)\]]))$')


@dataclasses.dataclass(frozen=True)
class Domain:
  """The values a numeric key may take: a range, plus special values.

  `Domain.parse` reads the notation of the error messages: '>= 0', '> 0',
  '[0, 1)', '(0, 1]', with special values before the range: '-1 or >= 1'
  (-1 meaning e.g. 'all').
  """
  text: str  # As in 'must be <text>': '>= 0', 'in [0, 1)', '-1 or >= 1'.
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  special: tuple[float, ...] = ()

  @classmethod
  def parse(cls, notation: str) -> 'Domain':
    *special, bounds = notation.split(' or ')
    match = _RANGE.match(bounds)
    if not match:
      raise ValueError(f'not a domain: {notation!r}')
    if match['op']:
      limits = dict(low=float(match['bound']), low_open=match['op'] == '>')
    else:
      limits = dict(low=float(match['low']), high=float(match['high']),
                    low_open=match['left'] == '(',
                    high_open=match['right'] == ')')
      bounds = f'in {bounds}'
    return cls(' or '.join([*special, bounds]),
               special=tuple(float(s) for s in special), **limits)

  def __contains__(self, value: float) -> bool:
    if value in self.special:
      return True
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return above and below

  def __str__(self) -> str:
    return self.text


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def domain_problem(value: Any, domain: Domain) -> str | None:
  """Why `value` (a number, or a tuple of numbers checked entry by entry) is
  outside `domain`, or None. Other values (None, strings) are left to the
  type checks."""
  if isinstance(value, (tuple, list)):
    if all(v in domain for v in value if _is_number(v)):
      return None
    return f'every entry must be {domain}, got {tuple(value)}'
  if not _is_number(value) or value in domain:
    return None
  return f'must be {domain}, got {value}'


def check_domains(config: ml_collections.ConfigDict,
                  domains: Mapping[str, Domain], prefix: str = '') -> None:
  """Raises ConfigError for the first value outside its domain.

  Args:
    config: a (filled) config.
    domains: dotted key path in the experiment config -> its domain.
    prefix: dotted path of `config` inside the experiment config.
  """
  for key in config.keys():
    path, value = f'{prefix}{key}', config[key]
    if isinstance(value, ml_collections.ConfigDict):
      check_domains(value, domains, prefix=f'{path}.')
    elif path in domains:
      problem = domain_problem(value, domains[path])
      if problem:
        raise ConfigError(path, problem)
