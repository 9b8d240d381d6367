"""Name -> component registries: the only place ConfigDicts become modules.

Each of `vqlab.quantizers`, `vqlab.tokenizers`, `vqlab.generators` and
`vqlab.data` owns one `Registry` and re-exports its `names`, `default_config`
and `build`; `vqlab.train.tasks` registers its tasks in one too (their
`api`, a `TaskSpec`, is what the loop uses). An unknown name is the same
one-line ConfigError everywhere.
"""

from typing import Any, Callable

import ml_collections

from vqlab import config_schema
from vqlab.errors import ConfigError


class Registry:
  """Maps a component name to its default config and builder."""

  def __init__(self, kind: str, key_prefix: str,
               subcomponents: dict[str, 'Registry'] | None = None, *,
               name_key: str | None = None):
    """Args: kind: e.g. 'quantizer'; key_prefix: config path used in errors;
    subcomponents: config key (dotted when nested) -> registry of the
    component named under it (a tokenizer's 'quantizer', a TiTok's
    'pixel_decoder.quantizer'); that key is checked against the defaults of
    the component its `name` selects instead of the default component's;
    name_key: the config key that names a component (default
    `<key_prefix>.name`; tasks: 'task').
    """
    self.kind = kind
    self.key_prefix = key_prefix
    self.name_key = name_key or f'{key_prefix}.name'
    self.subcomponents = dict(subcomponents or {})
    self._entries: dict[str, tuple[Callable[[], Any], Callable[..., Any]]] = {}
    self._apis: dict[str, Any] = {}

  def register(self, name: str, *, default_config: Callable[[], Any],
               builder: Callable[..., Any], api: Any = None) -> None:
    """Adds component `name`; `api`: what tasks use it through, if the
    registry's components have one (a generator's `GeneratorApi`)."""
    if name in self._entries:
      raise ValueError(f'{self.kind} {name!r} is registered twice')
    self._entries[name] = (default_config, builder)
    if api is not None:
      self._apis[name] = api

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._entries)

  def check_name(self, name: Any, key: str | None = None) -> None:
    """ConfigError naming `key` (default: `name_key`) and the known names
    unless `name` is registered."""
    self._entry(name, key or self.name_key)

  def _entry(self, name: Any, key: str):
    if name not in self._entries:
      raise ConfigError(
          key,
          f'unknown {self.kind} {name!r}; known: {", ".join(self.names())}')
    return self._entries[name]

  def builder(self, name: str) -> Callable[..., Any]:
    """The builder registered as `name` (no validation; see `build`)."""
    return self._entry(name, self.name_key)[1]

  def get_api(self, name: str) -> Any:
    """The `api` registered with `name`; ConfigError naming `name_key` if
    the name is unknown or has none."""
    self._entry(name, self.name_key)
    if name not in self._apis:
      raise ConfigError(self.name_key, f'{self.kind} {name!r} has no api')
    return self._apis[name]

  def default_config(self, name: str) -> ml_collections.ConfigDict:
    """A complete, valid config for `name`; every key is documented there."""
    config = self._entry(name, self.name_key)[0]()
    config.name = name
    return config

  def validate(self, config: ml_collections.ConfigDict,
               prefix: str | None = None) -> ml_collections.ConfigDict:
    """Checks keys and types against the default; returns the filled config."""
    prefix = self.key_prefix if prefix is None else prefix
    if 'name' not in config:
      raise ConfigError(f'{prefix}.name',
                        f'missing: which {self.kind} to build')
    self._entry(config.name, f'{prefix}.name')
    reference = self.default_config(config.name)
    self._check_not_switched(config, reference, prefix)
    for key, registry in self.subcomponents.items():
      parent, _, leaf = key.rpartition('.')  # 'pixel_decoder.quantizer'.
      where = config_schema.lookup(reference, parent) if parent else reference
      sub = config_schema.lookup(config, key)
      if (isinstance(where, ml_collections.ConfigDict) and leaf in where and
          isinstance(sub, ml_collections.ConfigDict) and 'name' in sub):
        registry._entry(sub.name, f'{prefix}.{key}.name')  # Unknown: error.
        where[leaf] = registry.default_config(sub.name)
        registry._check_not_switched(sub, where[leaf], f'{prefix}.{key}')  # pylint: disable=protected-access
    config_schema.check_against(config, reference, prefix=f'{prefix}.')
    return config_schema.filled(config, reference)

  def _check_not_switched(self, config: ml_collections.ConfigDict,
                          reference: ml_collections.ConfigDict,
                          prefix: str) -> None:
    """ConfigError naming `<prefix>.name` when `config` keeps keys of another
    component of this registry (its name was switched, e.g. on the command
    line, and the old component's keys stayed); a key no component has is
    left to check_against's 'unknown key; did you mean'."""
    foreign = sorted(set(config.keys()) - set(reference.keys()))
    if not foreign:
      return
    owners = [
        name for name in self.names() if name != config.name and
        set(foreign) <= set(self.default_config(name).keys())
    ]
    if owners:
      listed = ', '.join(f'{prefix}.{k}' for k in foreign[:4])
      more = f' and {len(foreign) - 4} more' if len(foreign) > 4 else ''
      raise ConfigError(
          f'{prefix}.name',
          f'{config.name!r} does not take {listed}{more}, which this config '
          f'sets for {self.kind} {owners[0]!r}: a switched {self.kind} needs '
          f'its own section; in a config file, start {prefix} from '
          f'default_config({config.name!r}) of its registry and change that')

  def build(self, config: ml_collections.ConfigDict, *,
            prefix: str | None = None, **kwargs) -> Any:
    """Validates `config` and builds the component it names.

    Args:
      config: the component's config; `config.name` selects the component.
      prefix: dotted path of `config` in the experiment config (for errors;
        default: `key_prefix`); passed to the builder with `kwargs`.
      **kwargs: passed to the builder (e.g. `dtype`).
    """
    prefix = self.key_prefix if prefix is None else prefix
    config = self.validate(config, prefix)
    return self._entries[config.name][1](config, prefix=prefix, **kwargs)

  def build_validated(self, config: ml_collections.ConfigDict, *,
                      prefix: str | None = None, **kwargs) -> Any:
    """Builds the component a config already filled in by `validate` names,
    without checking its keys again (e.g. an experiment's validated
    `model`; a tokenizer's `quantizer`, which the tokenizer's `validate`
    checked). Arguments as `build`."""
    prefix = self.key_prefix if prefix is None else prefix
    return self._entry(config.name, f'{prefix}.name')[1](config, prefix=prefix,
                                                         **kwargs)
