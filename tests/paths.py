"""Paths the tests share: the repository root and the goldens folder."""

import os
import pathlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = pathlib.Path(ROOT) / 'tests' / 'goldens'
