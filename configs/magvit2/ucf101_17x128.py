"""MAGVIT-v2 at the paper's video size: 17 frames of 128x128 -> 5x16x16
tokens (temporal factor 4, spatial factor 8), LFQ with K = 2^18 (two 2^9
factors, the exact batch entropy over all 2^18 codes), commitment 0.25,
entropy penalty 0.1 at tau 0.01;
3D StyleGAN discriminator with blur pooling, LeCam 0.001 (MAGVIT's form, on
the mean logits), LPIPS 0.1 on frames, non-saturating GAN 0.1 with the
adaptive weight, EMA generator for eval.

The paper trains its tokenizer with MAGVIT's settings; MAGVIT's released
trainer and UCF-101 configs (google-research/magvit) differ from this
config in: a fixed GAN weight of 0.1 (no adaptive weight) from step 0, R1
10 on pixels in [0, 1] (40 here), l2 reconstruction (weight 0.25 here),
ResNet-50 logits instead of LPIPS, a discriminator of width 128 with five
downsampling blocks, 1 epoch of warmup then cosine decay, 2000 epochs (74k
steps at batch 256), and a start from an inflated 2D ImageNet model. R1
and the wider discriminator change the memory per device that the
microbatches below were chosen by, so they are left for a re-measured
config.

Needs the prepared tfds `ucf101` (data.data_dir) and, for LPIPS, the VGG16
file in the weights directory.

Memory: the global batch of 256 runs as 8 microbatches with each stage's res
blocks scanned and rematerialized, which fits the paper's pods and 8 x 80 GB
GPUs. Compiled peak estimates per device (benchmarks/README.md, XLA:CPU)
for 1, 2, 4, 8 clips per device at a time: 14.8, 22.3, 37.3, 81.3 GiB
(without scan and remat: 24.2, 41.0, 74.7, 189.6). So 8 x 80 GB GPUs (32
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
from vqlab.train.tasks import tokenizer


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
  config.update(tokenizer.default_config())
  config.compute_dtype = 'bfloat16'

  config.data = data.default_config('tfds_video')
  config.data.tfds_name = 'ucf101'
  config.data.image_size = 128
  config.data.num_frames = 17

  config.model = model_config()
  config.discriminator = discriminators.default_config('stylegan')
  config.discriminator.base_features = 64
  config.discriminator.channel_multipliers = (2, 4, 4, 4)  # 128 -> 8.

  loss = config.loss
  loss.gan_loss = 'non_saturating'
  loss.disc_weight = 0.1
  loss.perceptual_weight = 0.1
  loss.lecam_weight = 0.001
  loss.lecam_form = 'mean_logit'
  loss.disc_start = 20_000
  config.ema.decay = 0.999
  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.learning_rate = 1e-4
    opt.b1, opt.b2 = 0.0, 0.99

  config.train.batch_size = 256
  config.train.microbatches = 8  # 256 = 8 x 32 clips on 8 GPUs (see above).
  config.train.num_steps = 500_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  return config
