"""Reference statistics files (FID, FVD): what a file of vqlab's records of
its making (`source`), and the reference a config names, checked against it.
"""

import json

import ml_collections
import numpy as np

from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.train import frozen as frozen_lib

# What decides the features themselves (not the data): a reference made with
# another value measures other features.
_PROTOCOL_KEYS = ('network', 'inception_input', 'fvd_frames')


def source(config: ml_collections.ConfigDict, network: str) -> str:
  """What the statistics of the eval split depend on, as one string: the
  network, the config's `data` section and, for I3D, the clip length (for
  Inception, its input protocol). Saved in the .npz, so that a cached file
  of other settings is not reused."""
  made = {'network': network, 'data': config.data.to_dict()}
  if network == 'i3d':
    made['fvd_frames'] = frozen_lib.fvd_clip_length(config)
  else:
    made['inception_input'] = config.eval.inception_input
  return json.dumps(made, sort_keys=True, default=str)


def load_given(config: ml_collections.ConfigDict,
               network: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(mu, sigma) of `eval.fid_reference` ('inception') or
  `eval.fvd_reference` ('i3d'), or None when unset.

  Raises:
    ConfigError (naming the key): the file cannot be read as statistics, or
      vqlab made it with another network, Inception input or clip length
      than this config measures with (another file, e.g. ADM's, records
      nothing and is taken as it is).
  """
  key = 'fvd_reference' if network == 'i3d' else 'fid_reference'
  path = config.eval[key]
  if not path:
    return None
  try:
    stats = fid.load_statistics(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'eval.{key}', str(e)) from e
  recorded = fid.statistics_source(path)
  if recorded:
    try:
      made, wanted = json.loads(recorded), json.loads(source(config, network))
    except ValueError:
      return stats
    for name in _PROTOCOL_KEYS:
      if name in made and made[name] != wanted.get(name):
        raise ConfigError(
            f'eval.{key}', f'{path} holds statistics of {name} '
            f'{made[name]!r}, but this config measures with '
            f'{wanted.get(name)!r}: a distance between them is meaningless')
  return stats
