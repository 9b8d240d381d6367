"""The package layers of vqlab: every import runs downwards.

A package may import only packages of lower layers (its own modules aside),
function-level imports included, so there is no cycle and no import from a
lower layer back up (e.g. a loss that needs the train loop). A new package
gets a layer here.
"""

import ast
import pathlib

from tests import paths

# Lowest first. Packages in one layer do not import each other.
LAYERS = (
    ('errors',),
    ('checks', 'config_schema', 'fileio'),
    ('registry',),
    ('nn',),
    ('weights', 'quantizers', 'data', 'evals'),
    ('text', 'losses', 'tokenizers', 'generators'),
    ('train',),
    ('convert', 'cli'),
)
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str | None:
  """'vqlab.train.loop' -> 'train'; 'vqlab' -> None."""
  parts = module.split('.')
  return parts[1] if parts[0] == 'vqlab' and len(parts) > 1 else None


def _imports(path: pathlib.Path):
  """(line, imported package) of every vqlab import in the file."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = ([f'{node.module}.{alias.name}' for alias in node.names]
               if node.module == 'vqlab' else [node.module])
    else:
      continue
    for name in names:
      package = _package(name)
      if package:
        yield node.lineno, package


def test_every_import_runs_down_the_layers():
  root = pathlib.Path(paths.ROOT) / 'vqlab'
  packages = {
      p.stem if p.is_file() else p.name
      for p in root.iterdir()
      if p.suffix == '.py' or (p / '__init__.py').exists()
  }
  assert packages - {'__init__'} == set(LAYER), 'give new packages a layer'
  upward = []
  for path in sorted(root.rglob('*.py')):
    relative = path.relative_to(root)
    own = relative.parts[0].removesuffix('.py')
    if own == '__init__':
      continue
    for line, package in _imports(path):
      if package != own and LAYER[package] >= LAYER[own]:
        upward.append(f'vqlab/{relative}:{line}: {own} imports {package}')
  assert not upward, '\n'.join(upward)
