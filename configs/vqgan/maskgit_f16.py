"""The stronger MaskGIT-VQGAN recipe (MaskGIT / MAGVIT-v2 tokenizer training)
on the taming f=16 architecture:

  l2 reconstruction, non-saturating GAN at weight 0.1 (no adaptive weight),
  R1 penalty 10, perceptual loss 0.1, MaskGIT's StyleGAN discriminator with
  blur pooling (stem 64, six down blocks of 128 to 512 channels, 256^2 ->
  4^2), Adam betas (0, 0.99), lr 1e-4, LeCam 0.001, EMA of generator weights
  (0.999) for eval, and lookup-free quantization with commitment 0.25 and
  entropy penalty 0.1 (tau 0.01) over 2^10 codes (MaskGIT's own: VQ, 1024
  codes, on its own architecture: the released MaskGIT VQGAN converts with
  `python -m vqlab.convert maskgit_vqgan`). The l2 and R1 weights are the
  recipe's for pixels in [0, 1], rescaled to vqlab's [-1, 1] (below). Batch
  64 and 500k steps as the taming config (MaskGIT's vqgan_config: 256 and
  1M).

Departure: the perceptual loss is LPIPS (VGG16). MaskGIT's vqgan_config
(pretrained_image_model, perceptual_loss_on_logit False) takes an l2 between
ResNet-50 pool features, which vqlab has no weights for; at weight 0.1 the
two are of different scales.

Needs the torchvision VGG16 file for LPIPS (see configs/vqgan/taming_f16.py).
"""

from configs.vqgan import _base
from vqlab.losses import discriminators


def get_config():
  config = _base.with_quantizer('lfq')
  q = config.model.quantizer
  q.codebook_size = 2**10
  q.commitment_weight = 0.25
  q.entropy_weight = 0.1
  q.entropy_temperature = 0.01

  loss = config.loss
  loss.gan_loss = 'non_saturating'
  loss.adaptive_weight = False
  loss.disc_weight = 0.1
  loss.perceptual_weight = 0.1
  # The recipe's trainers (MaskGIT's vqgan_config, MAGVIT's vqgan_trainer)
  # see pixels in [0, 1], vqlab's losses in [-1, 1]: the same discriminator's
  # squared input gradient is 1/4 as large here, so their R1 of 10 is 40, and
  # their l2 reconstruction of weight 1 is 0.25.
  loss.reconstruction = 'l2'
  loss.reconstruction_weight = 0.25
  loss.r1_weight = 40.0
  # In the form of MAGVIT's lecam_reg (the batch's mean logits), at the
  # weight vqlab's MAGVIT-v2 configs use; MAGVIT's and MaskGIT's released
  # configs leave it at 0 (off).
  loss.lecam_weight = 0.001
  loss.lecam_form = 'mean_logit'
  # The released trainers start the GAN at step 0; this lets the
  # reconstruction settle first (TiTok's stage 2 starts at 20k); taming's
  # 250k would leave half the 500k steps without the GAN.
  loss.disc_start = 25_000
  config.discriminator = discriminators.default_config('stylegan')
  # MaskGIT's (nets/discriminator.py at 256^2): 64 * (2, 4, 8, 8, 8, 8).
  config.discriminator.channel_multipliers = (2, 4, 8, 8, 8, 8)
  config.ema.decay = 0.999

  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.learning_rate = 1e-4
    opt.b1, opt.b2 = 0.0, 0.99
  return config
