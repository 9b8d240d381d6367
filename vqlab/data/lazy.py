"""Import-on-first-use modules, so configs and in-memory datasets never load
TensorFlow (slow to import, and absent on some accelerator images)."""

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
  """A module object that imports `name` when an attribute is first read."""

  def __init__(self, name: str):
    super().__init__(name)
    self._lazy_name = name
    self._lazy_module = None

  def __getattr__(self, attr: str) -> Any:
    if self._lazy_module is None:
      self._lazy_module = importlib.import_module(self._lazy_name)
    return getattr(self._lazy_module, attr)


tf = LazyModule('tensorflow')
tfds = LazyModule('tensorflow_datasets')
