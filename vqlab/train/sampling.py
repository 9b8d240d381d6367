"""`main.py --mode=sample`: generate, decode to pixels, save and evaluate.

Restores the newest checkpoint of a generator run, draws
`sample.num_samples` samples (class-conditional models cycle through the
classes, or with sample.labels 'train' take random training labels),
decodes them with the frozen tokenizer and writes

  samples/step_<step>/grid_<i>.png   one PNG grid per sampling batch
  samples/step_<step>/sample_<n>.gif one GIF per video sample (and a frame
                                      strip per clip in the grid)
  samples_<step>.json                 the metrics below

With `sample.observed_frames` = k > 0 (MaskGIT or GPT on video tokens) the
samples are frame predictions: sample n continues eval clip n (cycling) from
its first k latent frames, and 'prediction_psnr' is the mean PSNR of the
predicted pixel frames against the clip's own (per frame, averaged over the
predicted frames of each clip, then over clips).

With the Inception file present (`eval.fid` 'auto' or 'on'): the Inception
Score of the samples and gFID against `eval.fid_reference`, or, when none is
given, against the statistics of the `data` section's eval split (computed
once and cached as WORKDIR/fid_stats.npz). Protocols: vqlab/evals/PROTOCOLS.md
(ImageNet gFID: 50k samples against the ADM reference batch).

Video samples with the I3D file present (`eval.fvd` 'auto' or 'on', clips of
>= 9 frames): 'fvd' against `eval.fvd_reference`, or the I3D statistics of
the eval split's clips (cached as WORKDIR/fvd_stats.npz); for frame
predictions 'prediction_fvd' against the very clips they continue.
"""

import functools
import json
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab import fileio
from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.evals import fvd
from vqlab.evals import image_metrics
from vqlab.nn import inception
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import frozen as frozen_lib
from vqlab.train import partitioning
from vqlab.train import progress as progress_lib
from vqlab.train import reference_files
from vqlab.train import reference_stats
from vqlab.train import workdir_lock
from vqlab.train import writers as writers_lib


@functools.partial(jax.jit, static_argnums=2)
def inception_outputs(params, images: jax.Array,
                      protocol: str) -> dict[str, jax.Array]:
  """images [N, H, W, 3] in [-1, 1] -> {'pool' [N, 2048], 'logits_unbiased'
  [N, 1008]} of the FID InceptionV3 given its input `protocol` (compiled
  once per image shape), split over the mesh's devices, the outputs whole on
  each (every process reads them)."""
  return partitioning.whole_on_every_device(
      inception.InceptionV3(input_protocol=protocol).apply(
          {'params': params}, partitioning.split_over_batch(images)))


@functools.partial(jax.jit, static_argnums=2)
def i3d_features(params, videos: jax.Array, num_frames: int) -> jax.Array:
  """videos [B, T, H, W, 3] in [-1, 1] -> FVD features [B, 400] of their
  first num_frames frames (compiled once per shape), split over the mesh's
  devices, the features whole on each (every process reads them)."""
  return partitioning.whole_on_every_device(
      fvd.features(params, partitioning.split_over_batch(videos), num_frames))


def _reference(
    config, workdir: str, network: str,
    devices: list[jax.Device] | None) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma): `eval.fid_reference` (or `eval.fvd_reference` for I3D), else
  the eval split's statistics, computed once into WORKDIR."""
  given = reference_files.load_given(config, network)
  if given is not None:
    return given
  path = os.path.join(workdir,
                      'fvd_stats.npz' if network == 'i3d' else 'fid_stats.npz')
  if fileio.exists(path):
    files = data_lib.split_fingerprint(config.data, 'eval')
    if fid.statistics_source(path) == reference_files.source(
        config, network, files):
      return fid.load_statistics(path)
    logging.warning(
        '%s is of other data settings or files (or from an older vqlab): '
        'recomputing it', path)
  # Every process computes the same statistics; process 0 writes them, so the
  # others must not read the file back.
  stats = reference_stats.compute_reference_statistics(config, path,
                                                       network=network,
                                                       devices=devices)
  return stats.mean(), stats.covariance()


def sample(config: ml_collections.ConfigDict, workdir: str, *,
           devices: list[jax.Device] | None = None,
           allow_config_change: bool = False) -> dict[str, Any]:
  """Samples from the latest checkpoint (or `eval.step`'s) of the generator
  run in `workdir` (with `allow_config_change`, also under a config that
  differs from the run's record, e.g. a moved tokenizer.workdir).

  Returns:
    {'step', 'num_samples', 'samples_dir', and 'inception_score',
    'inception_score_std', 'gfid' when Inception is available (of every
    frame of video samples: vqlab/evals/PROTOCOLS.md), 'fvd' or
    'prediction_fvd' and 'fvd_frames' when I3D is}.
  """
  with workdir_lock.held(workdir):
    return _sample(config, workdir, devices, allow_config_change)


def _sample(config: ml_collections.ConfigDict, workdir: str,
            devices: list[jax.Device] | None,
            allow_config_change: bool) -> dict[str, Any]:
  """`sample` with its workdir's lock held."""
  no_checkpoint = checkpoint_lib.no_checkpoint_error(workdir)
  if checkpoint_lib.newest_step(workdir) is None:
    raise no_checkpoint  # Before anything is made in a mistyped --workdir.
  exp = experiment.Experiment(config, workdir, devices, lock='sample',
                              allow_config_change=allow_config_change,
                              trains=False)
  config, task = exp.config, exp.task
  if not task.draws_samples:
    raise ConfigError(
        'task', f'--mode=sample needs a generator config, got '
        f'task {config.task!r}')
  restored = exp.checkpointer.restore(exp.abstract_state, set_aside=False,
                                      step=config.eval.step)
  if restored is None:
    raise no_checkpoint
  state, step = restored
  s = config.sample
  devices_count = exp.mesh.devices.size
  if s.batch_size % devices_count:
    raise ConfigError(
        'sample.batch_size', f'{s.batch_size} is not divisible '
        f'by the {devices_count} devices')
  use_inception = 'inception' in exp.frozen
  use_i3d = 'i3d' in exp.frozen
  # The references are read (or made) first: a wrong one named after a
  # 50,000-sample run would lose its metrics.
  references = {}
  if use_inception:
    references['inception'] = _reference(config, workdir, 'inception', devices)
  if use_i3d and not s.observed_frames:  # Else the clips' own statistics.
    references['i3d'] = _reference(config, workdir, 'i3d', devices)
  out_dir = os.path.join(workdir, 'samples', f'step_{step}')
  is_chief = jax.process_index() == 0
  if is_chief:
    fileio.makedirs(out_dir)
    # An earlier sampling of this step (other settings, more samples) leaves
    # nothing here beside this one's files.
    for pattern in ('grid_*.png', 'sample_*.gif'):
      for old in fileio.glob(os.path.join(out_dir, pattern)):
        fileio.remove(old)
  stats = fid.FeatureStatistics()
  score = None
  fvd_frames = frozen_lib.fvd_clip_length(config)
  num_batches = math.ceil(s.num_samples / s.batch_size)
  progress = progress_lib.Progress(0, num_batches, s.batch_size,
                                   enabled=is_chief)
  base_rng = jax.random.key(s.seed)
  clips = task.eval_clips(s.batch_size) if s.observed_frames else None
  prediction_psnr = []
  # I3D statistics of the samples and, for frame predictions, of the clips.
  sample_stats = fid.FeatureStatistics()
  clip_stats = fid.FeatureStatistics() if clips is not None else None
  with jax.set_mesh(exp.mesh):
    for i in range(num_batches):
      keep = min(s.batch_size, s.num_samples - i * s.batch_size)
      rng = jax.random.fold_in(base_rng, i)
      if clips is None:
        cond = task.sample_conditions(i * s.batch_size, s.batch_size)
        images = exp.sample_images(state, rng, cond, batch_size=s.batch_size)
      else:  # Frame prediction: the eval clips' first frames given.
        observed, labels = next(clips)
        images = exp.sample_images(state, rng, labels, batch_size=s.batch_size,
                                   observed=observed)
      host = np.asarray(jax.device_get(images))[:keep]
      if clips is not None:
        first = task.observed_pixel_frames(observed.shape[1])
        prediction_psnr.append(
            np.asarray(
                image_metrics.mean_frame_psnr(
                    jnp.asarray(observed[:keep, first:]),
                    jnp.asarray(host[:, first:]))))
      if is_chief:
        _save(out_dir, i, host, i * s.batch_size)
      if use_i3d:
        sample_stats.update(
            jax.device_get(i3d_features(exp.frozen['i3d'], images,
                                        fvd_frames))[:keep])
        if clips is not None:
          clip_stats.update(
              jax.device_get(
                  i3d_features(exp.frozen['i3d'], jnp.asarray(observed),
                               fvd_frames))[:keep])
      if use_inception:
        frames = images.reshape((-1,) + images.shape[-3:])
        out = jax.device_get(
            inception_outputs(exp.frozen['inception'], frames,
                              config.eval.inception_input))
        per = frames.shape[0] // s.batch_size  # Frames per sample.
        if score is None:
          n = s.num_samples * per  # The usual 10 splits (fewer below 10).
          score = fid.InceptionScore(num_splits=min(10, n), num_examples=n)
        stats.update(np.asarray(out['pool'], np.float64)[:keep * per])
        score.update(np.asarray(out['logits_unbiased'])[:keep * per])
      progress.update(i + 1, {})
  progress.close()
  result = {'step': step, 'num_samples': s.num_samples, 'samples_dir': out_dir}
  if prediction_psnr:
    result['prediction_psnr'] = float(np.concatenate(prediction_psnr).mean())
  # A covariance needs two samples: one sample has no FID or FVD.
  use_inception = use_inception and stats.num_examples >= 2
  use_i3d = use_i3d and sample_stats.num_examples >= 2
  if use_inception:
    mu, sigma = references['inception']
    result['gfid'] = fid.frechet_distance(stats.mean(), stats.covariance(), mu,
                                          sigma)
    result['inception_score'], result['inception_score_std'] = score.result()
    if is_chief and task.text is not None and s.prompts:
      print(
          f'vqlab: gfid of samples of {len(s.prompts)} fixed prompts '
          '(sample.prompts) is not the papers\' protocol, which samples the '
          'eval captions: set sample.prompts = () for that', flush=True)
  if use_i3d:
    mu, sigma = ((clip_stats.mean(), clip_stats.covariance())
                 if clip_stats is not None else references['i3d'])
    key = 'prediction_fvd' if clip_stats is not None else 'fvd'
    result[key] = fid.frechet_distance(sample_stats.mean(),
                                       sample_stats.covariance(), mu, sigma)
    result['fvd_frames'] = fvd_frames
  if is_chief:
    with fileio.open(os.path.join(workdir, f'samples_{step}.json'), 'w') as f:
      f.write(
          writers_lib.as_json(
              {
                  **result, 'settings': _settings(config, references, task)
              }, indent=2))
  return result


def _settings(config: ml_collections.ConfigDict, references: dict[str, Any],
              task: Any) -> dict[str, Any]:
  """What samples_<step>.json's numbers were made with: the sample section
  (free to change between samplings: guidance, temperature, steps, seed),
  the params (EMA or not), the tokenizer step, the classes the labels
  cycled through (sample i has label i mod that; class models with
  sample.labels 'cycle') and the FID / FVD references (a file, or the
  statistics of the data's eval split)."""
  settings = {
      'sample': config.sample.to_dict(),
      'params': 'ema' if config.ema.decay > 0 else 'trained',
      'tokenizer': config.tokenizer.to_dict(),
  }
  if task.sample_classes and config.sample.labels == 'cycle':
    settings['sample_classes'] = task.sample_classes
  for network, key in (('inception', 'fid_reference'), ('i3d',
                                                        'fvd_reference')):
    if network in references:
      settings[f'eval.{key}'] = (config.eval[key] or json.loads(
          reference_files.source(config, network)))
  return settings


def _save(out_dir: str, batch_index: int, images: np.ndarray,
          first: int) -> None:
  """Writes one batch of decoded samples (images or videos)."""
  path = os.path.join(out_dir, f'grid_{batch_index:04d}.png')
  if images.ndim == 4:
    per_row = max(1, int(math.ceil(math.sqrt(len(images)))))
    rows = [images[r:r + per_row] for r in range(0, len(images), per_row)]
    if len(rows[-1]) < per_row:
      pad = np.ones((per_row - len(rows[-1]),) + images.shape[1:], np.float32)
      rows[-1] = np.concatenate([rows[-1], pad])
    writers_lib.save_png(path, writers_lib.image_grid(rows))
    return
  writers_lib.save_png(path, writers_lib.image_grid(list(images)))
  for j, clip in enumerate(images):
    writers_lib.save_gif(os.path.join(out_dir, f'sample_{first + j:06d}.gif'),
                         clip)
