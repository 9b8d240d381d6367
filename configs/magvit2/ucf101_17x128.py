"""MAGVIT-v2 at the paper's video size: 17 frames of 128x128 -> 5x16x16
tokens (temporal factor 4, spatial factor 8), LFQ with K = 2^18 (two 2^9
factors, the exact batch entropy over all 2^18 codes, of each microbatch:
32 clips, 40,960 positions; MAGVIT and Open-MAGVIT2 take it over one
device's batch), commitment 0.25, entropy penalty 0.1 at tau 0.01;
trained with MAGVIT's recipe, which the paper follows (google-research/magvit:
vqgan_trainer.py, vqgan2d/3d_ucf101_config.py, MAGVIT-L): non-saturating GAN
at a fixed weight of 0.1 (no adaptive weight), R1 penalty 10, l2
reconstruction, LeCam 0.001 on the mean logits (MAGVIT's lecam_reg; its
released configs leave lecam_weight at 0, off), a 3D StyleGAN discriminator
with blur pooling of width 128 and five downsampling blocks, Adam (0, 0.99)
at lr 1e-4 after 1 epoch of warmup then cosine decay over 2000 epochs of
the 9,537 training videos (74,000 steps of 256), EMA 0.999 for eval. MAGVIT
sees pixels in [0, 1], vqlab's losses in [-1, 1]: its R1 of 10 is 40 here
and its l2 weight of 1 is 0.25. Departures: LPIPS 0.1 on frames instead of
MAGVIT's ResNet-50 logit loss (no weights for it here), the GAN from step
20k instead of from an inflated 2D ImageNet model's start.

Needs the prepared tfds `ucf101/ucf101_1` (data.data_dir) and, for LPIPS, the VGG16
file in the weights directory.

Memory: the global batch of 256 runs as 8 microbatches with each stage's res
blocks scanned and rematerialized, which fits the paper's pods and 8 x 80 GB
GPUs. Compiled peak estimates per device (benchmarks/README.md, XLA:CPU)
for 1, 2, 4, 8 clips per device at a time: 15.4, 22.0, 35.7, 70.6 GiB
(16.4, 24.1, 39.6, 84.5 before GroupNorm and swish were recomputed in the
backward pass; without scan and remat, earlier: 24.2, 41.0, 74.7, 189.6).
So 8 x 80 GB GPUs (32
clips per device) run 4 at a time, a v5p-32 (16 devices) 2 and a v4-64
(32 devices, 32 GiB each) 1. On more devices, lower train.microbatches so
that it still divides the per-device batch; on fewer or smaller ones raise
it. `python benchmarks/paper_scale.py --cases=magvit2_video --compile_only`
reports the compiled memory on the machine it runs on.
"""

from vqlab import data
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.losses import discriminators
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer_config


def model_config():
  """The paper-sized tokenizer (shared with the image-only config)."""
  model = tokenizers.default_config('magvit2')
  model.channels = 128
  model.channel_multipliers = (1, 2, 2, 4)  # Spatial factor 8.
  model.num_res_blocks = 4
  model.num_temporal_downsamples = 2  # Temporal factor 4: 17 -> 5.
  model.num_groups = 32
  model.quantizer = quantizers.default_config('lfq')
  q = model.quantizer
  q.codebook_size = 2**18
  q.factor_bits = (9, 9)
  q.commitment_weight = 0.25
  q.entropy_weight = 0.1
  q.entropy_temperature = 0.01
  model.scan_blocks = True  # One compiled block per stage, and with remat
  model.remat_policy = 'full'  # the scan keeps only each block's input.
  return model


def get_config():
  config = experiment_config.base_config()
  config.update(tokenizer_config.default_config())
  config.compute_dtype = 'bfloat16'

  config.data = data.default_config('tfds_video')
  # The frames as filmed (320x240): tfds' default 'ucf101' config is
  # 'ucf101_1_256', stretched to 256x256 by ffmpeg, where MAGVIT resizes the
  # shorter side to 128 and crops, keeping the aspect ratio.
  config.data.tfds_name = 'ucf101/ucf101_1'
  config.data.image_size = 128
  config.data.num_frames = 17

  config.model = model_config()
  config.discriminator = discriminators.default_config('stylegan')
  config.discriminator.base_features = 128
  config.discriminator.channel_multipliers = (2, 4, 4, 4, 4)  # 128 -> 4.

  loss = config.loss
  loss.reconstruction = 'l2'
  loss.reconstruction_weight = 0.25
  loss.gan_loss = 'non_saturating'
  loss.adaptive_weight = False
  loss.disc_weight = 0.1
  loss.r1_weight = 40.0
  loss.perceptual_weight = 0.1
  loss.lecam_weight = 0.001
  loss.lecam_form = 'mean_logit'
  loss.disc_start = 20_000
  config.ema.decay = 0.999
  steps_per_epoch = 9_537 // 256
  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.learning_rate = 1e-4
    opt.b1, opt.b2 = 0.0, 0.99
    opt.warmup_steps = steps_per_epoch
    opt.schedule = 'cosine'

  config.train.batch_size = 256
  config.train.microbatches = 8  # 256 = 8 x 32 clips on 8 GPUs (see above).
  config.train.num_steps = 2000 * steps_per_epoch
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  return config
