"""Reference statistics files (FID, FVD): what a file of vqlab's records of
its making (`source`), and the reference a config names, checked against it.
"""

import json

import ml_collections
import numpy as np

from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.nn import i3d
from vqlab.nn import inception
from vqlab.train import frozen as frozen_lib

# What decides the features themselves (not the data): a reference made with
# another value measures other features.
_PROTOCOL_KEYS = ('network', 'inception_input', 'fvd_frames')


def source(config: ml_collections.ConfigDict, network: str,
           files: str | None = None) -> str:
  """What the statistics of the eval split depend on, as one string: the
  network, the config's `data` section, the split's `files` (its data
  source's fingerprint, where it has one) and, for I3D, the clip length (for
  Inception, its input protocol). Saved in the .npz, so that a cached file
  of other settings, or of a folder whose files changed since, is not
  reused."""
  made = {'network': network, 'data': config.data.to_dict()}
  if files is not None:
    made['files'] = files
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
    ConfigError (naming the key): the file cannot be read as statistics,
      holds statistics of another feature size than the network's (2048
      Inception pool features, 400 I3D logits), or vqlab made it with
      another network, Inception input or clip length than this config
      measures with (another file, e.g. ADM's, records nothing and is taken
      as it is).
  """
  key = 'fvd_reference' if network == 'i3d' else 'fid_reference'
  path = config.eval[key]
  if not path:
    return None
  try:
    stats = fid.load_statistics(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'eval.{key}', str(e)) from e
  size = i3d.NUM_CLASSES if network == 'i3d' else inception.POOL_FEATURES
  if stats[0].shape != (size,):
    raise ConfigError(
        f'eval.{key}', f'{path} holds statistics of {stats[0].shape[0]} '
        f'features, but {network} gives {size} (pytorch-fid: --dims 2048; '
        'FID statistics are no FVD reference, nor the other way round)')
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
