"""Whole-eval-set accumulation of eval-step outputs on the host, in float64.

An eval step returns {'sums': tree of arrays summed over the batch's real
examples, 'mask': [B], and optionally 'features': {name: [N, D]} feature rows
with 'feature_mask' [N] (N = B, or B * T for the frames of videos) or, per
name, 'feature_masks' {name: [N]}, and 'constants': {name: int scalar} that
every batch gives alike (e.g. the pixels of an example)}. Sums
add up across batches in float64 (float32 sums over 50k images lose digits);
features go into streamed mean/covariance statistics (FID), so no feature
matrix of the whole set is ever held in memory.
"""

from typing import Any

import jax
import numpy as np

from vqlab.evals import fid


class EvalAccumulator:
  """Collects eval-step outputs; read `sums` and `features` at the end."""

  def __init__(self):
    self.sums: Any = None
    self.features: dict[str, fid.FeatureStatistics] = {}
    self.constants: dict[str, int] = {}
    self.num_batches = 0

  def add(self, outputs: dict[str, Any]) -> None:
    """Adds one batch's eval-step outputs (device or host arrays)."""
    outputs = jax.device_get(outputs)
    sums = jax.tree.map(lambda a: np.asarray(a, np.float64), outputs['sums'])
    self.sums = sums if self.sums is None else jax.tree.map(
        np.add, self.sums, sums)
    for name, value in (outputs.get('constants') or {}).items():
      value = int(value)
      if self.constants.setdefault(name, value) != value:
        raise ValueError(f'eval: {name} is {self.constants[name]} in one '
                         f'batch and {value} in another')
    features = outputs.get('features') or {}
    if features:
      shared = outputs.get('feature_mask', outputs['mask'])
      masks = outputs.get('feature_masks') or {}
      for name, values in features.items():
        real = np.asarray(masks.get(name, shared)) > 0
        values = np.asarray(values, np.float64)[real]
        if name not in self.features:
          self.features[name] = fid.FeatureStatistics()
        self.features[name].update(values)
    self.num_batches += 1
