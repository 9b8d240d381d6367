"""The two TiTok training stages as configs of the one loop.

Stage 1 (task 'titok_proxy'): TiTok's decoder predicts the codes of a frozen,
trained 2D VQGAN (`proxy.workdir`); eval images are that VQGAN's decoding.
Stage 2 (task 'tokenizer'): the stage-1 run's encoder, quantizer, decoder and
proxy-code head are copied in (`warm_start`), encoder and quantizer frozen
(`freeze`), and the decoder is trained in pixel space with the VQGAN losses
through the proxy VQGAN's decoder, which starts from that run's weights
(`warm_start.pixel_vqgan`): the decoder's proxy-code probabilities weight the
VQGAN's codebook and its decoder makes the pixels (decoder_output
'proxy_pixels', as TiTok's released stage 2 and checkpoints). With
`model.decoder_output = 'pixels'`, `warm_start.pixel_vqgan = ''` and
`warm_start.params = ('encoder', 'quantizer', 'decoder')` a fresh linear pixel
head replaces that path instead.
"""

import ml_collections

from configs.vqgan import maskgit_f16
from vqlab import tokenizers
from vqlab.tokenizers import titok
from vqlab.train import experiment_config
from vqlab.train.tasks import proxy_codes

COPIED = ('encoder', 'quantizer', 'decoder', 'to_proxy_logits')
FROZEN = ('encoder', 'quantizer')

# Microbatches of the paper's global batch of 1024 by (model size, stage), so
# that 8 x 80 GB GPUs (128 images per device) hold it within JAX's default 75%
# of GPU memory. Compiled peak per device at 128 images in these microbatches
# (XLA:CPU, benchmarks/README.md, 2026-12-06, with norms, activations and
# attention weights recomputed in the backward pass): stage 1 S 34.3 (one
# piece), B 31.1, L 31.0 GiB; stage 2, through the proxy VQGAN's decoder,
# S 25.9 (48.8 in 4), B 29.2, L 26.4 GiB. On more devices, lower it so that
# it still divides the per-device batch.
MICROBATCHES = {
    ('S', '1'): 1,
    ('S', '2'): 8,
    ('B', '1'): 2,
    ('B', '2'): 8,
    ('L', '1'): 8,
    ('L', '2'): 16,
}


def titok_model(model_size: str, num_tokens: int, image_size: int,
                patch_size: int, codebook_size: int, proxy_codebook_size: int):
  model = tokenizers.default_config('titok')
  model.model_size = model_size
  model.num_latent_tokens = num_tokens
  model.image_size = image_size
  model.patch_size = patch_size
  model.quantizer.codebook_size = codebook_size
  # The release's U(-1/K, 1/K) codes: small codes of a cosine lookup turn
  # fast under Adam (vqlab.quantizers.vq.VectorQuantizer.codebook_init).
  model.quantizer.codebook_init = 'uniform'
  model.proxy_codebook_size = proxy_codebook_size
  return model


def stage1(model, proxy_workdir: str):
  """Stage 1 around `model` (a titok config), proxy codes from a VQGAN run."""
  config = experiment_config.base_config()
  config.update(proxy_codes.default_config())
  config.model = model
  config.model.decoder_output = 'proxy_codes'
  config.proxy.workdir = proxy_workdir
  config.data.image_size = model.image_size
  return config


def stage2(model, stage1_workdir: str, proxy_workdir: str, proxy_model):
  """Stage 2: decoder fine-tuning in pixel space with the MaskGIT-VQGAN
  recipe's losses (LPIPS, GAN, LeCam, EMA), through the decoder of the proxy
  VQGAN run `proxy_workdir`, whose model config is `proxy_model`."""
  config = maskgit_f16.get_config()
  config.model = model
  config.model.decoder_output = 'proxy_pixels'
  # The VQGAN's config without its name (pixel_decoder is always a VQGAN).
  config.model.pixel_decoder = ml_collections.ConfigDict({
      k: v for k, v in proxy_model.items() if k != 'name'
  })
  config.warm_start.workdir = stage1_workdir
  config.warm_start.params = COPIED + (
      ('proxy_hidden',) if model.proxy_head_hidden else ())
  config.warm_start.pixel_vqgan = proxy_workdir
  config.freeze = FROZEN
  config.data.image_size = model.image_size
  return config


# The proxy VQGAN of the paper configs, by the config string's second field:
# a run of configs/vqgan/maskgit_f16.py (the MaskGIT-VQGAN recipe on taming's
# architecture, LFQ over 1024 codes, trained with vqlab), or 'released': the
# released MaskGIT VQGAN that the paper's numbers are on (its architecture,
# VQ over 1024 codes), converted into workdirs/maskgit_vqgan by
#   python -m vqlab.convert maskgit_vqgan tokenizer_imagenet256_checkpoint \
#       workdirs/maskgit_vqgan
PROXIES = ('', 'released')


def _proxy(which: str):
  """(run directory, model config) of the proxy VQGAN `which`."""
  if which == 'released':
    from vqlab.convert import maskgit_vqgan  # pylint: disable=g-import-not-at-top
    return 'workdirs/maskgit_vqgan', maskgit_vqgan.released_model_config()
  return 'workdirs/vqgan_maskgit_f16', maskgit_f16.get_config().model


def paper_config(name: str, model_size: str, num_tokens: int, stage: str):
  """TiTok-<size>-<K> at 256x256 on ImageNet (tfds imagenet2012), stage '1'
  (proxy codes of the proxy VQGAN) or '2' (from workdirs/titok_<name>_stage1),
  each with ',released' for the released MaskGIT VQGAN as the proxy (PROXIES;
  the paper's), e.g. '1,released'. Stage 1 as the paper: AdamW (0.9, 0.99),
  lr 1e-4, weight decay 1e-4, cosine schedule with 10k warmup steps (the
  release's cosine ends at 1e-5, this at 0), batch 1024; stage 2 as the
  released stage-2 config (below)."""
  from vqlab import data  # pylint: disable=g-import-not-at-top
  stage, _, which = stage.partition(',')
  if which not in PROXIES:
    raise ValueError(f"the proxy after the stage must be 'released' or "
                     f'nothing, got {which!r}')
  proxy_workdir, proxy_model = _proxy(which)
  model = titok_model(model_size, num_tokens=num_tokens, image_size=256,
                      patch_size=16, codebook_size=4096,
                      proxy_codebook_size=1024)
  # One nn.scan over the blocks: XLA compiles one block, not all of them.
  model.scan_layers = True
  # The released architecture (1d-tokenizer blocks.py, is_legacy): a class
  # token first in both ViTs, and the proxy codes from a tanh hidden layer
  # of twice the decoder's width. Not its latent reshape quirk (the release's
  # non-legacy path fixes it), LayerNorm eps 1e-5 or erf GELU (PyTorch's
  # defaults; this keeps 1e-6 and tanh GELU, as big_vision's ViT).
  model.class_token = True
  model.proxy_head_hidden = 2 * titok.PAPER_SIZES[model_size].width
  if stage == '1':
    config = stage1(model, proxy_workdir)
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4
    # As the released code, but for two kernels it leaves undecayed by name
    # ('embed'): encoder/patch_embed/proj and decoder/from_code (lr x decay
    # = 1e-8 a step).
    config.optimizer.weight_decay_on = 'kernels'
    config.optimizer.warmup_steps = 10_000
    config.optimizer.schedule = 'cosine'
    config.optimizer.grad_clip_norm = 1.0  # max_grad_norm of the release.
    config.ema.decay = 0.999  # Its use_ema; stage 2 starts from the EMA.
    config.ema.warmup = True  # Its EMAModel: min(0.999, (1 + t) / (10 + t)).
    config.train.num_steps = 1_000_000
  elif stage == '2':
    config = stage2(
        model, f'workdirs/titok_{name}_stage1' + (f'_{which}' if which else ''),
        proxy_workdir, proxy_model)
    # The released stage-2 recipe (1d-tokenizer configs/training/stage2):
    # AdamW (0.9, 0.999), lr 1e-4 for both networks, weight decay 1e-4,
    # cosine after 5k warmup steps (theirs ends at 1e-5, this at 0), clip 1,
    # l2 reconstruction, hinge GAN at weight 0.01 from step 20k, LeCam 0.001
    # of the mean logits, no R1. Their losses see pixels in [0, 1], vqlab's
    # in [-1, 1]: their l2 weight of 1 is 0.25 here. Their perceptual loss
    # is ConvNeXt-S and their discriminator their own NLayerDiscriminator;
    # this keeps LPIPS 0.1 and the recipe's StyleGAN discriminator.
    for opt in (config.optimizer.generator, config.optimizer.discriminator):
      opt.learning_rate = 1e-4
      opt.b1, opt.b2 = 0.9, 0.999
      opt.weight_decay = 1e-4
      opt.warmup_steps = 5_000
      opt.schedule = 'cosine'
      opt.grad_clip_norm = 1.0
    # Both networks without decay on biases, norms and embeddings, as the
    # release's create_optimizer (which also spares decoder/from_code).
    config.optimizer.generator.weight_decay_on = 'kernels'
    config.optimizer.discriminator.weight_decay_on = 'kernels'
    config.loss.reconstruction = 'l2'
    config.loss.reconstruction_weight = 0.25
    config.loss.gan_loss = 'hinge'
    config.loss.lecam_form = 'mean_logit'
    config.loss.disc_weight = 0.01
    config.loss.disc_start = 20_000
    config.loss.r1_weight = 0.0
    config.ema.warmup = True  # The release's EMAModel, as stage 1.
    config.train.num_steps = 500_000
  else:
    raise ValueError(f"stage must be '1' or '2' (then ',released' for the "
                     f'released proxy), got {stage!r}')
  config.compute_dtype = 'bfloat16'
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  # The release's ImageTransform: antialiased bicubic, train and eval.
  config.data.resize_method = 'bicubic'
  config.train.batch_size = 1024
  config.train.microbatches = MICROBATCHES[model_size, stage]
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  # The release's evaluator feeds uint8 images to torch-fidelity's TF
  # Inception (evaluator/inception.py): the TF graph's input.
  config.eval.inception_input = 'tf'
  return config
