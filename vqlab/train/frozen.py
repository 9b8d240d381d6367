"""Pretrained networks a task uses without training them.

They load once, on the host, from the published weight files (see
vqlab/weights/files.py); the loop places them on the mesh and passes them to
every step as an argument (never in the train state or the optimizer).

  lpips      LPIPS-VGG16: perceptual loss and eval metric.
  vgg19      VGG19 features: Regularized VQ's probabilistic contrastive loss.
  inception  FID InceptionV3: rFID / FID in eval.
  i3d        Kinetics-400 I3D: rFVD / FVD in eval.
"""

from collections.abc import Iterable
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab.errors import ConfigError
from vqlab.losses import perceptual
from vqlab.losses import vgg_features
from vqlab.nn import i3d
from vqlab.weights import files
from vqlab.weights import i3d as i3d_weights
from vqlab.weights import inception as inception_weights

# Network -> the weight files it needs (vqlab.weights.files names).
WEIGHT_FILES = {
    'lpips': ('vgg16', 'lpips_vgg_heads'),
    'vgg19': ('vgg19',),
    'inception': ('inception_fid',),
    'i3d': ('i3d_kinetics400',)
}
_LOADERS = {
    'lpips': perceptual.load_lpips_params,
    'vgg19': vgg_features.load_vgg19_feature_params,
    'inception': inception_weights.load_inception_params,
    'i3d': i3d_weights.load_i3d_params
}

_REPORTED = set()  # The notices printed (once per run and weights directory).


def wanted(network: str, mode: str,
           directory: str | os.PathLike | None) -> bool:
  """Whether to load `network` under mode 'on' / 'off' / 'auto' (= when all
  of its weight files are present, on every process: hosts that decided
  apart built different programs and failed in their first collective)."""
  if mode == 'off':
    return False
  if mode == 'on':
    return True
  filenames = [files.KNOWN_FILES[n].filename for n in WEIGHT_FILES[network]]
  absent = [
      filename for name, filename in zip(WEIGHT_FILES[network], filenames)
      if files.locate(name, directory) is None
  ]
  present = not absent
  if jax.process_count() == 1:
    lacking = [] if present else [0]
  else:
    everywhere = np.asarray(multihost_utils.process_allgather(
        np.int32(present)))
    lacking = [int(i) for i in np.flatnonzero(everywhere == 0)]
  notice = (network, str(files.weights_dir(directory)), tuple(lacking))
  if lacking and jax.process_index() == 0 and notice not in _REPORTED:
    _REPORTED.add(notice)
    who = (f'processes {lacking} lack' if jax.process_count() > 1 and
           len(lacking) < jax.process_count() else 'no')
    print(
        f'vqlab: {network} is left out (its mode is \'auto\'): {who} '
        f'{", ".join(absent or filenames)} in '
        f'{files.weights_dir(directory)} (README: Pretrained metric '
        'networks)', flush=True)
  return not lacking


def load(networks: Iterable[str],
         directory: str | os.PathLike | None) -> dict[str, dict]:
  """{network: params} for each name in `networks`; WeightsError naming the
  missing file and where to put it when one is absent."""
  return {name: _LOADERS[name](directory) for name in sorted(set(networks))}


def fvd_clip_length(config: ml_collections.ConfigDict) -> int | None:
  """Frames per FVD clip under `config` (min(data.num_frames, eval.fvd_frames);
  joint data: its video source's, which is its eval split), or None when the
  data gives images."""
  kind = data_lib.kind(config.data.name)
  if kind == 'joint':
    frames = config.data.video.num_frames
  elif kind == 'video':
    frames = config.data.num_frames
  else:
    return None
  return min(int(frames), int(config.eval.fvd_frames))


def fvd_problem(config: ml_collections.ConfigDict) -> str | None:
  """Why FVD cannot be computed on the data's clips, or None."""
  frames = fvd_clip_length(config)
  if frames is None:
    return f'data.name {config.data.name!r} gives images, not videos'
  if frames < i3d.MIN_FRAMES:
    key = ('data.video.num_frames'
           if data_lib.kind(config.data.name) == 'joint' else 'data.num_frames')
    return (f'FVD clips would have {frames} frames (min of {key} and '
            f'eval.fvd_frames); I3D needs at least {i3d.MIN_FRAMES}')
  return None


def fvd_usable(config: ml_collections.ConfigDict) -> bool:
  """Whether FVD can be computed on the data's clips; with `eval.fvd = 'on'`
  a reason it cannot is a ConfigError."""
  problem = fvd_problem(config)
  if problem and config.eval.fvd == 'on':
    raise ConfigError('eval.fvd', f"'on', but {problem}")
  return problem is None
