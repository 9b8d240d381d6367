"""The tokenizer task's config: its sections' defaults and value checks."""

from typing import Any

import ml_collections

from vqlab import checks
from vqlab import config_schema
from vqlab import data as data_lib
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.losses import discriminators
from vqlab.losses import gan
from vqlab.losses import perceptual
from vqlab.nn import vgg
from vqlab.tokenizers import titok
from vqlab.train import optimizers


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is any registered tokenizer."""
  config = ml_collections.ConfigDict()
  config.model = tokenizers.default_config('vqgan')

  config.loss = loss = ml_collections.ConfigDict()
  loss.reconstruction = 'l1'  # 'l1' or 'l2' pixel loss.
  loss.reconstruction_weight = 1.0  # Weight of the pixel loss.
  loss.perceptual_weight = 0.0  # LPIPS weight (needs the VGG16 file).
  loss.gan_loss = 'hinge'  # 'hinge' or 'non_saturating'.
  loss.disc_weight = 0.8  # Scales the adaptive weight (taming: 0.8).
  loss.disc_start = 0  # Step at which the GAN terms switch on.
  loss.adaptive_weight = True  # Taming's gradient-norm ratio; else 1.
  loss.adaptive_delta = 1e-6  # Paper: 1e-6; taming's code: 1e-4.
  loss.adaptive_max = 1e4  # Upper clip of the adaptive weight.
  loss.lecam_weight = 0.0  # LeCam regularization of D (MAGVIT: 0.001).
  loss.lecam_decay = 0.999  # EMA decay of LeCam's D-output averages.
  # 'per_logit' (LeCam's code) or 'mean_logit' (MAGVIT's, TiTok's): see
  # vqlab.losses.gan.lecam_term.
  loss.lecam_form = 'per_logit'
  loss.r1_weight = 0.0  # R1 penalty weight (gamma / 2) on real images.
  # Probabilistic contrastive loss (Regularized VQ; needs the `regularized`
  # quantizer and the VGG19 file). Temperature and patch count as PatchNCE.
  loss.pcl_weight = 0.0
  loss.pcl_temperature = 0.07
  loss.pcl_num_patches = 256  # Random positions per layer; 0: all.
  loss.pcl_epsilon = 1e-6  # Added to w_i (0 where sample == argmax).

  # 'patchgan' or 'stylegan' (keys: vqlab.losses.discriminators).
  config.discriminator = discriminators.default_config('patchgan')

  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0  # EMA of generator params for eval; 0: off.
  # True: decay min(decay, (1 + t) / (10 + t)) at step t (TiTok's release).
  config.ema.warmup = False

  # Fine-tuning (TiTok stage 2): top-level generator params (with their
  # non-param state, e.g. an EMA codebook) copied from another run's
  # checkpoint at the start, and params kept fixed.
  config.warm_start = ml_collections.ConfigDict()
  config.warm_start.workdir = ''  # The run to copy from; '': fresh init.
  config.warm_start.step = -1  # Its checkpoint; -1: the newest.
  # Top-level trees, e.g. TiTok's ('encoder', 'quantizer'); a VQGAN's are
  # encoder, quant_conv, quantizer, post_quant_conv, decoder, to_pixels.
  config.warm_start.params = ()
  # A VQGAN tokenizer run whose decoder and codebook fill
  # a model.decoder_output = 'proxy_pixels' TiTok's pixel_vqgan (stage 2).
  config.warm_start.pixel_vqgan = ''
  config.warm_start.pixel_vqgan_step = -1  # Its checkpoint; -1: the newest.
  # e.g. ('encoder', 'quantizer'): no updates (a frozen quantizer's EMA stats
  # too).
  config.freeze = ()

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.generator = optimizers.default_config(1e-4, 0.5, 0.9)
  opt.discriminator = optimizers.default_config(1e-4, 0.5, 0.9)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond keys, types and domains; raises ConfigError naming
  the key."""
  loss = config.loss
  config_schema.require(
      loss.reconstruction in ('l1', 'l2'), 'loss.reconstruction',
      f"must be 'l1' or 'l2', got "
      f'{loss.reconstruction!r}')
  config_schema.require(
      loss.gan_loss in gan.G_LOSSES, 'loss.gan_loss',
      f'unknown GAN loss {loss.gan_loss!r}; known: '
      f'{", ".join(sorted(gan.G_LOSSES))}')
  config_schema.require(
      loss.lecam_form in gan.LECAM_FORMS, 'loss.lecam_form',
      f'unknown LeCam form {loss.lecam_form!r}; known: '
      f'{", ".join(gan.LECAM_FORMS)}')
  if loss.pcl_weight > 0:
    quantizer = config.model.get('quantizer', {}).get('name')
    config_schema.require(
        quantizer == 'regularized', 'loss.pcl_weight',
        'the probabilistic contrastive loss needs the per-token weights of '
        f"the 'regularized' quantizer, but model.quantizer.name is "
        f'{quantizer!r}')
    config_schema.require(
        data_lib.kind(config.data.name) == 'image', 'loss.pcl_weight',
        'the probabilistic contrastive loss is defined for images, but '
        f'data.name {config.data.name!r} gives videos')
  if (loss.r1_weight > 0 and config.discriminator.name == 'patchgan' and
      config.discriminator.get('use_norm')):
    # MaskGIT's and MAGVIT's R1 notes: no batch norm in the discriminator.
    raise ConfigError(
        'loss.r1_weight', f'{loss.r1_weight}, but the PatchGAN normalizes '
        'by its batch statistics, which make each image\'s gradient penalty '
        'depend on the whole batch: set discriminator.use_norm = False, or '
        "discriminator.name = 'stylegan'")
  if config.model.get('decoder_output') == 'proxy_codes':
    raise ConfigError(
        'model.decoder_output', "'proxy_codes' is TiTok's "
        "stage 1: use task = 'titok_proxy' (configs/titok/)")
  if (config.model.get('decoder_output') == 'proxy_pixels' and
      config.loss.adaptive_weight):
    raise ConfigError(
        'loss.adaptive_weight', "True, but the adaptive GAN weight needs "
        "TiTok's pixel head (model.decoder_output = 'pixels'); "
        "'proxy_pixels' (the released checkpoints' layout) decodes through "
        'the embedded VQGAN: fine-tune it with loss.adaptive_weight = False')
  if (config.warm_start.pixel_vqgan and
      config.model.get('decoder_output') != 'proxy_pixels'):
    raise ConfigError(
        'warm_start.pixel_vqgan', 'set, but only a TiTok with '
        "model.decoder_output = 'proxy_pixels' has a pixel_vqgan")
  start = config.warm_start
  if start.params and not start.workdir:
    raise ConfigError(
        'warm_start.workdir', 'empty, but warm_start.params '
        f'names {tuple(start.params)}')
  if start.workdir and not start.params:
    # It would start from a fresh init and say nothing.
    raise ConfigError(
        'warm_start.params', f'empty, but warm_start.workdir is '
        f'{start.workdir!r}: name the param trees to copy from it, e.g. '
        "('encoder', 'quantizer')")
  for step_key, run_key in (('step', 'workdir'), ('pixel_vqgan_step',
                                                  'pixel_vqgan')):
    if start[step_key] != -1 and not start[run_key]:
      raise ConfigError(
          f'warm_start.{step_key}', f'{start[step_key]}, but '
          f'warm_start.{run_key} is empty')
  model = tokenizers.build_validated(config.model)
  if loss.pcl_weight > 0 and isinstance(model, titok.TiTok):
    # Its per-token weights are laid over the VGG feature grid.
    raise ConfigError(
        'loss.pcl_weight', f'{loss.pcl_weight}, but the probabilistic '
        'contrastive loss needs a 2D grid of tokens and TiTok gives '
        f'{model.num_latent_tokens} 1D tokens: set loss.pcl_weight = 0')
  kind = data_lib.kind(config.data.name)
  config_schema.require(
      kind == 'image' or hasattr(model, 'temporal_factor'), 'data.name',
      f'{config.data.name!r} gives {kind} batches, but model.name '
      f'{config.model.name!r} tokenizes images only (videos: magvit2)')
  factor = model.downsample_factor
  for key in ('image_size', 'train_image_size'):
    size = config.data.get(key, 0)
    config_schema.require(
        size % factor == 0, f'data.{key}',
        f'{size} is not divisible by the model\'s downsampling factor {factor}')
  for section in ('image', 'video'):  # Joint data's nested datasets.
    nested_size = tuple((config.data.get(section) or
                         {}).get('eval_frame_size', ()))
    config_schema.require(
        not nested_size, f'data.{section}.eval_frame_size',
        f'{nested_size}, but joint data evaluates its images and videos at '
        'data.image_size: set it to ()')
  frame_size = tuple(config.data.get('eval_frame_size', ()))
  config_schema.require(
      all(isinstance(side, int) and side % factor == 0 for side in frame_size),
      'data.eval_frame_size', f'{frame_size} is not divisible by the model\'s '
      f'downsampling factor {factor}')
  _validate_data_fits_networks(config, model)


def _validate_data_fits_networks(config: ml_collections.ConfigDict,
                                 model: Any) -> None:
  """Clip lengths that the tokenizer's temporal downsampling takes."""
  temporal = getattr(model, 'temporal_factor', 1)
  video = config.data.get('video', config.data)
  key = 'data.video.num_frames' if 'video' in config.data else 'data.num_frames'
  frames = video.get('num_frames', 0)
  if temporal > 1 and frames:
    config_schema.require(
        (frames - 1) % temporal == 0, key,
        f'{frames}, but the model downsamples time by {temporal}: clips need '
        f'1 + {temporal}k frames (e.g. '
        f'{checks.nearest_frame_counts(frames, temporal)})')


def check_train_sizes(config: ml_collections.ConfigDict, model: Any) -> None:
  """ConfigError naming the data size when the train images are too small for
  the networks the train step runs on them: PatchGAN's logit map would be
  empty (the GAN silently off, its losses NaN), LPIPS NaN, the contrastive
  loss's VGG grids not tile the token grid; or when the StyleGAN
  discriminator's blocks do not halve them evenly. Checked before training
  only: evaluating or tokenizing with such a config (a small converted
  checkpoint, a run evaluated at another size) runs none of them."""
  train_key = ('data.train_image_size' if config.data.get(
      'train_image_size', 0) else 'data.image_size')
  train_size = config.data.get('train_image_size', 0) or config.data.get(
      'image_size', 0)
  if not train_size:
    return
  if config.discriminator.name == 'stylegan':
    blocks = len(config.discriminator.channel_multipliers)
    config_schema.require(
        train_size % 2**blocks == 0, train_key,
        f'{train_size} is not divisible by 2^{blocks}: the StyleGAN '
        f'discriminator halves it in each of its {blocks} blocks '
        '(discriminator.channel_multipliers)')
  if config.discriminator.name == 'patchgan':
    layers = config.discriminator.num_layers
    config_schema.require(
        discriminators.patchgan_output_side(train_size, layers) >= 1, train_key,
        f'{train_size}: PatchGAN leaves no logits on it after its '
        f'{layers} stride-2 convs (discriminator.num_layers): use fewer layers '
        f'or images of {discriminators.patchgan_min_side(layers)} pixels or '
        'more')
  if config.loss.perceptual_weight > 0:
    config_schema.require(
        train_size >= perceptual.MIN_SIDE, train_key,
        f'{train_size}: LPIPS (loss.perceptual_weight) needs images of '
        f'{perceptual.MIN_SIDE} pixels or more (its last VGG layer is 16x '
        'coarser)')
  if config.loss.pcl_weight > 0:
    _validate_contrastive_grids(train_size, model.downsample_factor, train_key)


def _validate_contrastive_grids(size: int, factor: int, key: str) -> None:
  """The contrastive loss lays each token's weight over VGG-19's feature
  grids (relu1_2 .. relu5_3, after 0..4 2x2 pools, each floor-halving): one
  coarser than the token grid must tile it."""
  tokens, side = size // factor, size
  for pools in range(len(vgg.DEFAULT_OUTPUTS)):
    config_schema.require(
        not 1 < side < tokens or tokens % side == 0, key,
        f'{size}: VGG-19\'s {side}x{side} features after {pools} 2x2 pools '
        f'do not tile the {tokens}x{tokens} token grid that the contrastive '
        'loss (loss.pcl_weight) weights them by: use a size divisible by 16')
    side //= 2
