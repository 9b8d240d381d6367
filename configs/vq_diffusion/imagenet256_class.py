"""Class-conditional VQ-Diffusion on ImageNet 256x256 (Gu et al. 2022,
VQ-Diffusion-B: 19 blocks of width 1024, 16 heads, T = 100, lambda = 1e-3).

Tokens: the taming VQGAN f=16 (configs/vqgan/taming_f16.py: 16x16 of 1024
codes; the paper's VQVAE gives 32x32 of 2886 codes, which this library has no
config for). The released ImageNet recipe (configs/imagenet.yaml of
microsoft/VQ-Diffusion) is smaller than this denoiser: 24 blocks of width
512 on taming's f=16 VQGAN with 16384 codes. The class conditions as there
(its Condition2ImageTransformer, 'selfcondition' blocks): each block's MLP
LayerNorm is adaptive on the class, through the block's own class embedding
table, and no block cross-attends (vqlab's other departures from those
blocks: vqlab/generators/vq_diffusion.py; `--config.model.block_style=release
--config.model.position_grid='(32, 32)' --config.model.null_class=row` trains
the release's own network instead, the one
`vqlab.convert.vq_diffusion.convert_file` converts its weights into). 343M
params (444M with the cross-attention to a class token that vqlab had
before). Classifier-free
guidance through label dropout (the null class has its row in every block's
table, as the release's model with class_number 1001); sampling as the
release samples its classifier-free ImageNet model (inference_VQ_Diffusion.py:
truncation 0.94, guidance s = 1.5), but with the fast sampler's 25 steps
(`sample.diffusion_steps`; the release walks all 100 by default; its own
fast sampler is not the paper's, which vqlab's is: vqlab/generators/
vq_diffusion.py). The
release trains its base models without label dropout and learns the null
condition in a fine-tune (configs/coco_tune.yaml: drop rate 0.1, a learnable
null embedding); this trains with label dropout 0.1 from the start. The
paper's FID 11.89 is without guidance. Length: the release's 100 epochs at
this batch of 512 (250k steps).

Other departures from the release's recipe: its learning rate halves
(ReduceLROnPlateauWithWarmup: patience 100k steps, threshold 10% relative,
floor 1e-6) when the loss stops falling; here it stays at 4.5e-4 after the
warm-up. Its train crop is DalleTransformerPreprocessor's (a near-centre
square, resized to a random 256-288, a random 256 crop); here the shorter
side goes to 256 and a random 256 crop is taken. Its codec encodes every
batch anew; here the tokens are made once (`tokens.source = 'shards'`: one
crop of each image for the whole run; `'on_the_fly'` draws new ones in every
step, at the cost of the tokenizer's forward pass).

Memory: the global batch of 512 runs in one piece on 8 x 80 GB GPUs (64
examples per device), within JAX's default 75% of GPU memory: compiled peak
per device 29.9 GiB (the text model 37.8) with its EMA of the weights, since
norms, activations and attention weights are recomputed in the backward pass
(62.6 GiB before, so 2 microbatches then); rematerializing the blocks
(model.remat_policy = 'full') saves more for 23% more FLOPs (XLA:CPU, jax
0.10.2, `benchmarks/paper_scale.py --cases=vq_diffusion_class --compile_only
--per_device_batch_sweep=64 --set=train.microbatches=1`).
"""

from vqlab import data
from vqlab import generators
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def model_config():
  """The paper's denoiser (also used by benchmarks)."""
  model = generators.default_config('vq_diffusion')
  model.vocab_size = 1024
  model.token_shape = (16, 16)
  model.condition = 'class'
  model.num_classes = 1000
  model.width = 1024
  model.num_layers = 19
  model.num_heads = 16
  model.mlp_dim = 4096
  model.dropout_rate = 0.0
  # One nn.scan over the blocks: XLA compiles one block, not all of them.
  model.scan_layers = True
  return model


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.compute_dtype = 'bfloat16'
  config.model = model_config()
  config.tokenizer.workdir = 'workdirs/vqgan_taming_f16'
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  config.data.random_flip = False  # The release's preprocessors never flip.
  config.tokens.batch_size = 256
  config.tokens.batches_per_shard = 100
  config.loss.aux_weight = 1e-3
  config.loss.label_drop = 0.1
  config.loss.time_sampling = 'importance'
  # Paper: AdamW (0.9, 0.96), lr 4.5e-4 with warmup, weight decay 4.5e-2.
  config.optimizer.learning_rate = 4.5e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.96
  config.optimizer.weight_decay = 4.5e-2
  config.optimizer.warmup_steps = 5000
  # The release (configs/imagenet.yaml) keeps an EMA of decay 0.99 updated
  # every 25 steps: the same time constant per step is 0.99^(1/25). It clips
  # gradients at 0.5 on every step (its ClipGradNorm clips from
  # start_iteration 0 on; end_iteration 5000 only adds steps before it) of
  # a loss T times vqlab's (its importance weight is 1/p(t), vqlab's
  # 1/(T p(t))): 0.5 / T here, and for the same reason AdamW's epsilon
  # (PyTorch's 1e-8 there) 1e-8 / T.
  config.ema.decay = 0.99**(1 / 25)
  # (Computed here: a run with another model.num_timesteps sets them too.)
  config.optimizer.grad_clip_norm = 0.5 / config.model.num_timesteps
  config.optimizer.eps = 1e-8 / config.model.num_timesteps
  config.train.batch_size = 512
  config.train.microbatches = 1  # 64 examples per device on 8 GPUs.
  config.train.num_steps = 250_000  # 100 epochs of 1,281,167 images.
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  # gFID against the ADM reference batch and the Inception Score as
  # published: through the TF graph's input pipeline.
  config.eval.inception_input = 'tf'
  config.sample.diffusion_steps = 25
  config.sample.truncation = 0.94
  config.sample.guidance_scale = 0.5  # s = 1 + w = 1.5.
  config.sample.batch_size = 256
  config.sample.num_samples = 50_000
  return config
