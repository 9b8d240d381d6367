"""The tokenizer eval suite, shared by every task whose eval is a
reconstruction (the tokenizer task, TiTok's proxy-code stage).

Per batch: PSNR, L1, SSIM (frames of at least 11 pixels), MS-SSIM (frames of
at least 161 pixels), LPIPS (when its network is loaded), codebook counts and
Inception pool features (when Inception is loaded, for rFID) and I3D features
of clips (when I3D is loaded, for rFVD). Per-frame metrics of videos are
averaged over the frames of each example. Over the eval set: means over real
examples, codebook usage and perplexity, the token stream's bits per pixel,
rFID, rFVD and (with `eval.fid_reference`) FID against reference statistics.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.evals import fid
from vqlab.evals import fvd
from vqlab.evals import image_metrics
from vqlab.losses import perceptual
from vqlab.nn import inception
from vqlab.quantizers import base as quantizer_base
from vqlab.train import frozen as frozen_lib

INPUT_KEYS = ('image', 'video')  # Batch keys a tokenizer reads, in order.


def input_keys(batch: dict[str, Any]) -> list[str]:
  """The keys of INPUT_KEYS that `batch` has (ValueError when none)."""
  keys = [k for k in INPUT_KEYS if k in batch]
  if not keys:
    raise ValueError(f'the batch has none of {INPUT_KEYS}; keys: '
                     f'{sorted(batch)}')
  return keys


def frames(x: jax.Array) -> jax.Array:
  """Videos [B, T, H, W, C] -> frames [B * T, H, W, C]; images unchanged."""
  return x.reshape((-1,) + x.shape[-3:]) if x.ndim == 5 else x


def _per_example(values: jax.Array, batch_size: int) -> jax.Array:
  """Per-frame values [B * T] -> per-example means [B]."""
  return values.reshape(batch_size, -1).mean(axis=1)


def load_networks(config: ml_collections.ConfigDict, *, lpips: bool = False,
                  vgg19: bool = False) -> dict[str, Any]:
  """{network: params} of the frozen networks the losses need (`lpips`,
  `vgg19` True) and eval wants (`eval.lpips`, `eval.fid`, `eval.fvd`);
  reads files."""
  directory = config.weights_dir or None
  networks = {
      'lpips':
          lpips or frozen_lib.wanted('lpips', config.eval.lpips, directory),
      'vgg19':
          vgg19,
      'inception':
          frozen_lib.wanted('inception', config.eval.fid, directory),
      'i3d':
          frozen_lib.fvd_usable(config)
          and frozen_lib.wanted('i3d', config.eval.fvd, directory),
  }
  return frozen_lib.load([k for k, v in networks.items() if v], directory)


class ReconstructionEval:
  """Eval outputs of reconstructions, and the eval-set metrics."""

  def __init__(self, codebook_size: int, fid_reference=None,
               fvd_frames: int = 0, inception_input: str = 'pytorch_fid'):
    """Args: codebook_size: K of the token ids; fid_reference: (mu, sigma)
    of reference statistics, or None; fvd_frames: the frames of each clip
    rFVD sees (frozen.fvd_clip_length); inception_input: Inception's input
    protocol (eval.inception_input)."""
    self.codebook_size = codebook_size
    self.fid_reference = fid_reference
    self.fvd_frames = fvd_frames
    self.inception_input = inception_input

  def outputs(self, x: jax.Array, x_rec: jax.Array, indices: jax.Array,
              mask: jax.Array, frozen: dict[str, Any]):
    """Per-batch eval outputs (summed over real examples) and images.

    Args:
      x: inputs [B, (T,) H, W, C] in [-1, 1].
      x_rec: their reconstructions, same shape (clipped to [-1, 1] here).
      indices: int token ids in [0, K), [B, ...].
      mask: [B], 1 for real examples.
      frozen: may hold 'lpips', 'inception' and 'i3d' params.

    Returns:
      outputs: {'sums': {'psnr', 'l1', 'ssim' (images >= 11 pixels), 'ms_ssim'
        (images >= 161 pixels), 'lpips' (when LPIPS is loaded, images >= 16
        pixels), 'count'} scalars and 'code_counts' [K]; 'mask': [B];
        'constants': {'token_positions', 'pixel_positions'} of an example;
        when Inception is loaded 'features': {'real', 'reconstructed'} pool
        features [B * T, 2048] (frames of videos; T = 1 for images) and
        'feature_mask' [B * T]; when I3D is loaded
        (videos) 'features': {'i3d_real', 'i3d_reconstructed'} [B, 400] with
        'feature_masks': {name: [B]}}.
      images: {'inputs', 'reconstructions'} [B, (T,) H, W, C] in [-1, 1].
    """
    batch_size = x.shape[0]
    mask = mask.astype(jnp.float32)
    x_rec = jnp.clip(x_rec.astype(jnp.float32), -1, 1)
    codes_mask = jnp.broadcast_to(
        mask.reshape((-1,) + (1,) * (indices.ndim - 1)), indices.shape)
    counts = jnp.zeros(
        (self.codebook_size,),
        jnp.float32).at[indices.reshape(-1)].add(codes_mask.reshape(-1))
    # Frame metrics (SSIM, LPIPS, Inception) see videos as B * T frames.
    x_frames, rec_frames = frames(x), frames(x_rec)
    per_example = {
        'psnr': image_metrics.mean_frame_psnr(x, x_rec),
        'l1': image_metrics.mean_abs_error(x, x_rec)
    }
    if min(x_frames.shape[1:3]) >= image_metrics.SSIM_WINDOW:
      per_example['ssim'] = _per_example(
          image_metrics.ssim(x_frames, rec_frames), batch_size)
    if min(x_frames.shape[1:3]) >= image_metrics.MS_SSIM_MIN_SIDE:
      per_example['ms_ssim'] = _per_example(
          image_metrics.ms_ssim(x_frames, rec_frames), batch_size)
    if 'lpips' in frozen and min(x_frames.shape[1:3]) >= perceptual.MIN_SIDE:
      per_example['lpips'] = _per_example(
          perceptual.lpips_distance(frozen['lpips'], x_frames, rec_frames,
                                    precision=jax.lax.Precision.HIGHEST),
          batch_size)
    sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
    sums.update(count=jnp.sum(mask), code_counts=counts)
    # Token positions and pixels (frames x height x width) of an example.
    constants = {
        'token_positions': jnp.int32(math.prod(indices.shape[1:])),
        'pixel_positions': jnp.int32(math.prod(x.shape[1:-1]))
    }
    outputs = {'sums': sums, 'mask': mask, 'constants': constants}
    if 'inception' in frozen:
      pool = lambda images: inception.InceptionV3(
          input_protocol=self.inception_input).apply(
              {'params': frozen['inception']}, images)['pool']
      outputs['features'] = {
          'real': pool(x_frames),
          'reconstructed': pool(rec_frames)
      }
      outputs['feature_mask'] = jnp.repeat(mask,
                                           x_frames.shape[0] // batch_size)
    if 'i3d' in frozen and x.ndim == 5:
      clips = lambda v: fvd.features(frozen['i3d'], v, self.fvd_frames)
      features = outputs.setdefault('features', {})
      features.update(i3d_real=clips(x), i3d_reconstructed=clips(x_rec))
      outputs['feature_masks'] = {'i3d_real': mask, 'i3d_reconstructed': mask}
    return outputs, {'inputs': x, 'reconstructions': x_rec}

  def summarize(self, acc) -> dict[str, float]:
    """Eval-set metrics from an `EvalAccumulator` of `outputs`.

    Besides the means of the per-example metrics and the codebook's usage and
    perplexity: `bits_per_pixel`, the token stream stored as it is (log2 K
    bits a token), and `entropy_bits_per_pixel`, as an ideal entropy coder of
    the eval set's token frequencies would store it (the entropy of the code
    histogram, log2 of the perplexity, bits a token): the bit rates of a
    tokenizer used as a codec (MAGVIT-v2's compression table).
    """
    sums = acc.sums
    count = max(float(sums['count']), 1.0)
    codebook = quantizer_base.usage_and_perplexity(
        np.asarray(sums['code_counts'], np.float64))
    metrics = {
        k: float(sums[k]) / count
        for k in ('psnr', 'ssim', 'ms_ssim', 'l1', 'lpips')
        if k in sums
    }
    tokens_per_pixel = (acc.constants['token_positions'] /
                        acc.constants['pixel_positions'])
    metrics.update(
        codebook_usage=float(codebook['usage']),
        codebook_perplexity=float(codebook['perplexity']),
        bits_per_pixel=tokens_per_pixel * math.log2(self.codebook_size),
        entropy_bits_per_pixel=tokens_per_pixel *
        math.log2(float(codebook['perplexity'])), num_examples=count)
    # A covariance needs two examples: an eval set of one has no rFID/rFVD.
    features = {k: v for k, v in acc.features.items() if v.num_examples >= 2}
    if 'i3d_real' in features:
      real, rec = features['i3d_real'], features['i3d_reconstructed']
      metrics['rfvd'] = fid.frechet_distance(real.mean(), real.covariance(),
                                             rec.mean(), rec.covariance())
      metrics['fvd_frames'] = self.fvd_frames
    if 'real' in features:
      real, rec = features['real'], features['reconstructed']
      metrics['rfid'] = fid.frechet_distance(real.mean(), real.covariance(),
                                             rec.mean(), rec.covariance())
      if self.fid_reference is not None:
        metrics['fid_reference'] = fid.frechet_distance(rec.mean(),
                                                        rec.covariance(),
                                                        *self.fid_reference)
    return metrics


def image_rows(images: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
  """Rows of the eval picture: inputs above their reconstructions (for
  videos: the first n frames of the first clips, one row per clip)."""
  inputs, recs = images['inputs'], images['reconstructions']
  if inputs.ndim == 4:
    return [inputs[:n], recs[:n]]
  rows = []
  for clip in range(min(2, inputs.shape[0])):
    rows += [inputs[clip, :n], recs[clip, :n]]
  return rows
