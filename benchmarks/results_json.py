"""Reading and writing the benchmarks' results JSON files. Imports no jax, so
the torch side of `throughput_cli.py` can use it too."""

import json
import os


def load(path: str) -> dict:
  """The JSON object in the file at `path`, or {} where there is no file
  (or `path` is '')."""
  if not path or not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write(path: str, results: dict) -> None:
  """Writes `results` to `path` as indented JSON, making its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
