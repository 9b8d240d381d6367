"""`main.py --mode=fid_stats`: Inception (or I3D) statistics of a dataset split.

Streams the split of the config's `data` section through the FID
InceptionV3 (sharded over the mesh like any eval) and saves the float64 mean
and covariance of the 2048-d pool features as an .npz with keys `mu`, `sigma`
and `num_examples` -- the format pytorch-fid's `--save-stats` writes and the
ADM reference batches use, so either can serve as `eval.fid_reference`.

The eval split is used: one ordered pass over every example, no
augmentation. For the statistics of a training set point the eval split at it
(`--config.data.eval_split=train` for tfds and image folders).

Protocol notes: the features are pytorch-fid's or the TF graph's, as
`eval.inception_input` says (vqlab/evals/PROTOCOLS.md); the images are what
the data pipeline yields for that split (for ImageNet rFID: the 50k
validation images, resized and center-cropped to data.image_size = 256).

With network='i3d' the clips of a video dataset go through the FVD I3D
instead (400-d logits of the first `eval.fvd_frames` frames): the reference of
the FVD of samples (`eval.fvd_reference`, WORKDIR/fvd_stats.npz).
"""

import functools
import os

import jax
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab import fileio
from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.evals import fvd
from vqlab.nn import inception
from vqlab.train import experiment_config
from vqlab.train import frozen as frozen_lib
from vqlab.train import partitioning
from vqlab.train import progress as progress_lib
from vqlab.train import reference_files


def compute_reference_statistics(
    config: ml_collections.ConfigDict, output_path: str, *,
    network: str = 'inception',
    devices: list[jax.Device] | None = None) -> fid.FeatureStatistics:
  """Computes and saves the Inception or I3D statistics of the eval split.

  Args:
    config: an experiment config; its `data` section and `eval.batch_size`
      are used, and `weights_dir` locates the weight file.
    output_path: the .npz to write.
    network: 'inception' (the images, or every frame of videos) or 'i3d'
      (clips: video data only).
    devices: devices of the mesh (default: all).

  Returns:
    The accumulated statistics.

  Raises:
    WeightsError: the weight file is missing.
    ConfigError: network 'i3d' on data it cannot embed.
    DataError: a bad data value or missing data files.
  """
  devices = list(jax.devices() if devices is None else devices)
  config = experiment_config.validate(config, len(devices))
  if network == 'i3d':
    problem = frozen_lib.fvd_problem(config)
    if problem:
      raise ConfigError('data', f'I3D statistics need clips: {problem}')
    features_of = functools.partial(
        fvd.features, num_frames=frozen_lib.fvd_clip_length(config))
  else:
    features_of = lambda p, images: inception.InceptionV3(
        input_protocol=config.eval.inception_input).apply(
            {'params': p}, images.reshape((-1,) + images.shape[-3:]))['pool']
  params = frozen_lib.load([network], config.weights_dir or None)
  mesh = partitioning.make_mesh(config.mesh, devices)
  batch_sharding = partitioning.batch_sharding(mesh)
  replicated = partitioning.replicated(mesh)
  params = jax.device_put(params[network], replicated)
  source = data_lib.build_for_run(config.data, split='eval',
                                  global_batch_size=config.eval.batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  features = jax.jit(features_of, in_shardings=(replicated, batch_sharding),
                     out_shardings=replicated)
  # The global batch's mask on every host (on several hosts a global array
  # is not addressable as a whole: device_get of it raises).
  gather = jax.jit(lambda x: x, out_shardings=replicated)
  stats = fid.FeatureStatistics()
  progress = progress_lib.Progress(0, len(source), config.eval.batch_size,
                                   enabled=jax.process_index() == 0)
  with jax.set_mesh(mesh):
    for step, local in enumerate(source.batches(), start=1):
      batch = partitioning.global_batch(local, batch_sharding)
      values = jax.device_get(
          features(params, batch['video' if 'video' in batch else 'image']))
      real = np.asarray(jax.device_get(gather(batch['mask']))) > 0
      # Inception sees every frame of a video: each clip's mask per frame.
      stats.update(values[np.repeat(real, len(values) // len(real))])
      progress.update(step, {})
  progress.close()
  if jax.process_index() == 0:
    fileio.makedirs(os.path.dirname(fileio.absolute(output_path)))
    stats.save(
        output_path,
        source=reference_files.source(config, network,
                                      getattr(source, 'fingerprint', None)))
  return stats
