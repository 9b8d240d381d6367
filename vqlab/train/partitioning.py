"""The device mesh and how arrays are laid out on it.

The batch is sharded over every device (mesh axes `data` x `fsdp`); parameters
and optimizer state are replicated unless a rule in `config.mesh.rules` shards
a leaf over `fsdp` (FSDP: the leaf's largest axis divisible by the fsdp size).
"""

import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from vqlab.errors import ConfigError

BATCH_AXES = ('data', 'fsdp')


def default_config() -> ml_collections.ConfigDict:
  """The `mesh` section: axis sizes and parameter-sharding rules."""
  config = ml_collections.ConfigDict()
  config.data = -1  # Data-parallel axis size; -1 takes the remaining devices.
  config.fsdp = 1  # Parameter-sharding axis size (the batch is sharded on it too).
  # (regex on the '/'-joined parameter path, 'fsdp' or 'replicate'); first match
  # wins, unmatched leaves are replicated.
  config.rules = (('.*', 'fsdp'),)
  return config


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  fsdp = config.fsdp
  if fsdp < 1 or len(devices) % fsdp:
    raise ConfigError('mesh.fsdp', f'{fsdp} does not divide the {len(devices)} '
                      'devices')
  data = len(devices) // fsdp if config.data == -1 else config.data
  if data * fsdp != len(devices):
    raise ConfigError(
        'mesh.data', f'data={data} x fsdp={fsdp} != '
        f'{len(devices)} devices')
  return jax.make_mesh((data, fsdp), BATCH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def split_over_batch(tree: Any) -> Any:
  """`tree` (arrays [B, ...]) constrained to be split over the batch axes
  of the mesh in use (jax.set_mesh), inside a jitted function: for batches
  made there from nothing batch-sharded (unconditional samples), which XLA
  would otherwise compute whole on every device. Unchanged outside a mesh
  or where B does not divide over its devices."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return tree
  devices = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, jax.P(BATCH_AXES))
      if x.shape and x.shape[0] % devices == 0 else x, tree)


def whole_on_every_device(tree: Any) -> Any:
  """`tree` constrained to be replicated over the mesh in use, inside a
  jitted function: an output that the host reads whole on every process
  (a batch-split one spans other hosts' devices). Unchanged outside a
  mesh."""
  if jax.sharding.get_abstract_mesh().empty:
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, jax.P()),
                      tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis over all devices, other axes whole."""
  return jax.sharding.NamedSharding(mesh, jax.P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """A full copy on every device of `mesh`."""
  return jax.sharding.NamedSharding(mesh, jax.P())


def _path_string(path) -> str:
  return '/'.join(
      str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
      for k in path)


def _fsdp_spec(shape: tuple[int, ...], size: int) -> jax.P:
  if size == 1:
    return jax.P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % size == 0 and shape[axis] >= size:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return jax.P(*spec)
  return jax.P()


def compiled_rules(
    rules: Sequence[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
  """`mesh.rules` as (compiled pattern, action) pairs.

  Raises:
    ConfigError (naming mesh.rules): a rule that is not a (pattern, action)
      pair, a pattern that is not a regular expression, an unknown action.
  """
  compiled = []
  for rule in rules:
    if (not isinstance(rule, (tuple, list)) or len(rule) != 2 or
        not all(isinstance(part, str) for part in rule)):
      raise ConfigError(
          'mesh.rules', f'{rule!r} is not a (pattern, action) pair of '
          "strings, e.g. ('.*', 'fsdp')")
    pattern, action = rule
    if action not in ('fsdp', 'replicate'):
      raise ConfigError(
          'mesh.rules', f'unknown action {action!r} in {rule!r} '
          "(use 'fsdp' or 'replicate')")
    try:
      compiled.append((re.compile(pattern), action))
    except re.error as e:
      raise ConfigError('mesh.rules',
                        f'{pattern!r} is not a regular expression: '
                        f'{e}') from None
  return compiled


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, str]]) -> Any:
  """NamedShardings for every leaf of `abstract_state` (shapes only)."""
  compiled = compiled_rules(rules)
  fsdp_size = mesh.shape['fsdp']

  def leaf_sharding(path, leaf):
    name = _path_string(path)
    spec = jax.P()
    for pattern, action in compiled:
      if pattern.fullmatch(name):
        if action == 'fsdp':
          spec = _fsdp_spec(tuple(leaf.shape), fsdp_size)
        break
    return jax.sharding.NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def device_arrays(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The arrays of a host batch {key: [B_local, ...]} that go to the
  devices, unchanged: all but text (a caption dataset's 'caption' strings
  [B_local], which only a text-conditional generator reads, as token ids
  made on the host)."""
  return {
      k: v
      for k, v in local_batch.items()
      if np.asarray(v).dtype.kind not in 'USO'
  }


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """Assembles per-host batches {key: [B_local, ...]} into global arrays
  {key: [B, ...]} (B = B_local * process count) sharded on the batch axis
  by `sharding` (their `device_arrays`)."""
  return {
      k: jax.make_array_from_process_local_data(sharding, v)
      for k, v in device_arrays(local_batch).items()
  }
