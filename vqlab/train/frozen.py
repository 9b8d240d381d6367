"""Pretrained networks a task uses without training them.

They load once, on the host, from the published weight files (see
vqlab/weights/files.py); the loop places them on the mesh and passes them to
every step as an argument (never in the train state or the optimizer).

  lpips      LPIPS-VGG16: perceptual loss and eval metric.
  vgg19      VGG19 features: Regularized VQ's probabilistic contrastive loss.
  inception  FID InceptionV3: rFID / FID in eval.
"""

from collections.abc import Iterable
import os

from vqlab.losses import perceptual
from vqlab.losses import vgg_features
from vqlab.weights import files
from vqlab.weights import inception as inception_weights

# Network -> the weight files it needs (vqlab.weights.files names).
WEIGHT_FILES = {
    'lpips': ('vgg16', 'lpips_vgg_heads'),
    'vgg19': ('vgg19',),
    'inception': ('inception_fid',)
}
_LOADERS = {
    'lpips': perceptual.load_lpips_params,
    'vgg19': vgg_features.load_vgg19_feature_params,
    'inception': inception_weights.load_inception_params
}


def wanted(network: str, mode: str,
           directory: str | os.PathLike | None) -> bool:
  """Whether to load `network` under mode 'on' / 'off' / 'auto' (= when all
  of its weight files are present)."""
  if mode == 'off':
    return False
  if mode == 'on':
    return True
  return all(
      files.locate(name, directory) is not None
      for name in WEIGHT_FILES[network])


def load(networks: Iterable[str],
         directory: str | os.PathLike | None) -> dict[str, dict]:
  """{network: params} for each name in `networks`; WeightsError naming the
  missing file and where to put it when one is absent."""
  return {name: _LOADERS[name](directory) for name in sorted(set(networks))}
