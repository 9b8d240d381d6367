"""Stacks of identical blocks, run unrolled or as one `nn.scan`.

A block that maps x to an array of x's shape can be repeated either as a
Python loop (one submodule per block) or as one `nn.scan` over a submodule
whose params carry a leading [count] axis. Both compute the same function of
the same numbers; their random draws differ (the scan splits the 'params'
and 'dropout' keys per block, the loop folds in each block's name), so a
fresh init, and with dropout each train step, draws other numbers in the
other layout. The scan makes XLA compile one block instead of `count`,
which keeps the transformer configs' compile time low; under remat it also
keeps only each block's input, which is what fits the MAGVIT-v2 paper
configs in memory (on XLA:CPU it does not shorten a CNN's compile:
benchmarks/README.md).

Names: the transformers' layer stack is `block_<i>` unrolled and `blocks`
scanned (vqlab.nn.transformer). A *run* of a convolutional stage's res blocks
is `<Class>_<first>`, ..., `<Class>_<last>` unrolled (the published layouts)
and one `<Class>_<first>_to_<last>` scanned, so each layout names its
counterpart: `unstack`, `stack_like` and `match_layout` convert params
between the layouts, both kinds at any depth.
"""

import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from vqlab.nn import remat

# Scanned blocks: params and the decoding cache get a leading layer axis;
# each layer draws its own init and dropout randomness.
_SCANNED_VARIABLES = {'params': 0, 'cache': 0}
_SCANNED_RNGS = {'params': True, 'dropout': True}
_RUN = re.compile(r'^(.+)_(\d+)_to_(\d+)$')
LAYERS = 'blocks'  # The scanned name of a layer stack (block_<i> unrolled).


def apply_blocks(block: type[nn.Module], fields: dict[str, Any], count: int,
                 x: jax.Array, *args: Any, scan: bool, remat_policy: str,
                 static_argnums: Sequence[int] = (),
                 name: Callable[[int], str] = 'block_{}'.format,
                 scanned_name: str = LAYERS) -> jax.Array:
  """x -> block_{n-1}(...block_0(x, *args)..., *args): `count` blocks.

  Call it inside a compact method: the blocks become submodules of the
  caller, named name(i) (unrolled) or `scanned_name` (one scanned module).

  Args:
    block: the block class; block(**fields)(x, *args) has x's shape.
    fields: its attributes.
    count: how many blocks.
    x: the input of the first block.
    *args: the other arguments of every block, positional (arrays or None are
      shared by all blocks).
    scan: one `nn.scan` over the blocks instead of a Python loop.
    remat_policy: a key of vqlab.nn.remat.POLICIES.
    static_argnums: positions in (self, x, *args) of Python values (flags).
    name, scanned_name: the submodules' names.

  Returns:
    The last block's output, shaped like x.
  """
  block = remat.rematerialized(block, remat_policy,
                               static_argnums=static_argnums, in_scan=scan)
  if not scan:
    for i in range(count):
      x = block(**fields, name=name(i))(x, *args)
    return x
  body = lambda module, carry, *shared: (module(carry, *shared), None)
  run = nn.scan(body, variable_axes=_SCANNED_VARIABLES,
                split_rngs=_SCANNED_RNGS, in_axes=(nn.broadcast,) * len(args),
                length=count)
  return run(block(**fields, name=scanned_name), x, *args)[0]


def run_name(prefix: str, first: int, last: int) -> str:
  """The scanned name of the run prefix_<first> ... prefix_<last>."""
  return f'{prefix}_{first}_to_{last}'


def _members(name: str, leading: Callable[[], int]) -> list[str] | None:
  """The unrolled names a scanned stack's name stands for (a run's from the
  name, a layer stack's count from `leading()`, its leaves' axis 0), or
  None where `name` is no scanned stack."""
  if name == LAYERS:
    return [f'block_{i}' for i in range(leading())]
  match = _RUN.match(name)
  if not match:
    return None
  prefix, first, last = match[1], int(match[2]), int(match[3])
  return [f'{prefix}_{i}' for i in range(first, last + 1)]


def _leading(tree: Any) -> Callable[[], int]:
  return lambda: jax.tree.leaves(tree)[0].shape[0]


def _stacked(trees: list[Any]) -> Any:
  return jax.tree.map(
      lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


def unstack(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Params with scanned stacks (layer stacks `blocks`, runs `X_<a>_to_<b>`)
  -> the unrolled layout (`block_<i>`; `X_<a>`, ..., `X_<b>`), at any
  depth; unstacked leaves become numpy arrays."""
  out = {}
  for key, value in tree.items():
    members = _members(key, _leading(value))
    if members:
      for i, member in enumerate(members):
        out[member] = jax.tree.map(lambda leaf, i=i: np.asarray(leaf)[i], value)
    elif isinstance(value, Mapping):
      out[key] = unstack(value)
    else:
      out[key] = value
  return out


def stack_like(tree: Mapping[str, Any], like: Mapping[str,
                                                      Any]) -> dict[str, Any]:
  """Unrolled params -> the layout of `like` (params of the same model, e.g.
  from jax.eval_shape of its init): every scanned stack of `like` gets its
  members from `tree` stacked on a new axis 0 (numpy); the rest is kept.

  Raises:
    ValueError: a member of a stack is missing from `tree`.
  """
  out = dict(tree)
  for key, value in like.items():
    members = _members(key, _leading(value))
    if members:
      missing = [m for m in members if m not in tree]
      if missing:
        raise ValueError(f'{key} needs {", ".join(missing)}, not among '
                         f'{sorted(tree)}')
      out[key] = _stacked([tree[m] for m in members])
      for member in members:
        del out[member]
    elif isinstance(value, Mapping) and isinstance(tree.get(key), Mapping):
      out[key] = stack_like(tree[key], value)
  return out


def match_layout(tree: Mapping[str, Any], like: Mapping[str,
                                                        Any]) -> dict[str, Any]:
  """Params of a model in either layout -> the layout of `like` (the same
  model's params, or their shapes): unstacked, then stacked as `like` is.

  Raises:
    ValueError: `like` has a stack whose members `tree` lacks.
  """
  return stack_like(unstack(tree), like)


def stack_layers(tree: Mapping[str, Any]) -> dict[str, Any]:
  """One level of unrolled layer params {'block_0': p0, ...,
  'block_<n-1>': ..., **rest} -> {'blocks': leaves stacked on axis 0,
  **rest} (numpy arrays)."""
  count = sum(key.startswith('block_') for key in tree)
  names = [f'block_{i}' for i in range(count)]
  if not count or any(name not in tree for name in names):
    raise ValueError(f'stack_layers: no block_0..block_<n-1> among '
                     f'{sorted(tree)}')
  rest = {k: v for k, v in tree.items() if k not in names}
  return {**rest, LAYERS: _stacked([tree[n] for n in names])}


def _stack_in_path(parts: Sequence[str],
                   shape: Sequence[int]) -> tuple[int, list[str]] | None:
  """(position, member names) of the scanned stack a leaf path passes
  through, or None."""
  for j, part in enumerate(parts[:-1]):
    members = _members(part, lambda: shape[0])
    if members:
      return j, members
  return None


def unstacked_paths(
    shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[str, int | None]]:
  """Leaf paths ('/'-joined, of any state: params, optimizer moments, EMA)
  -> {unrolled leaf path: (its path in `shapes`, index on the stacked axis 0,
  or None where the leaf is not stacked)}."""
  out = {}
  for path, shape in shapes.items():
    parts = path.split('/')
    found = _stack_in_path(parts, shape)
    if found is None:
      out[path] = (path, None)
      continue
    j, members = found
    for i, member in enumerate(members):
      out['/'.join([*parts[:j], member, *parts[j + 1:]])] = (path, i)
  return out


def relayout_leaves(leaves: Mapping[str, Any],
                    shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
  """Leaves {path: array} of one layout -> the leaves at the paths of
  `shapes` {path: shape}, the other layout of the same state (numpy).

  Raises:
    KeyError: a leaf `shapes` needs has no counterpart in `leaves`.
  """
  source = unstacked_paths({p: np.shape(x) for p, x in leaves.items()})

  def unrolled(path: str) -> np.ndarray:
    where, index = source[path]
    leaf = np.asarray(leaves[where])
    return leaf if index is None else leaf[index]

  out = {}
  for path, shape in shapes.items():
    parts = path.split('/')
    found = _stack_in_path(parts, shape)
    if found is None:
      out[path] = unrolled(path)
      continue
    j, members = found
    out[path] = np.stack([
        unrolled('/'.join([*parts[:j], member, *parts[j + 1:]]))
        for member in members
    ])
  return out
