"""A tiny class-conditional video MaskGIT on MAGVIT-v2 tokens (CPU).

The stand-in for configs/maskgit/ucf101_17x128.py on built-in data: 5-frame
16x16 moving-shapes clips (label: the first shape's class), tokenized by the
tiny MAGVIT-v2 of configs/magvit2/tiny_cpu.py into 3x8x8 tokens of 2^10 LFQ
codes. Train that tokenizer first (workdirs/magvit2_tiny), then:

  python main.py --config=configs/maskgit/ucf101_tiny_cpu.py \
      --workdir=workdirs/maskgit_video_tiny --mode=tokenize
  python main.py --config=configs/maskgit/ucf101_tiny_cpu.py --workdir=workdirs/maskgit_video_tiny
  python main.py --config=configs/maskgit/ucf101_tiny_cpu.py --workdir=workdirs/maskgit_video_tiny \
      --mode=sample

--mode=sample writes a GIF per sample. With
--config.sample.observed_frames=1 it predicts frames instead: the first
latent frame (pixel frame 0) of each eval clip is given, the rest generated,
and the PSNR of the predicted frames is reported.
"""

from vqlab import data
from vqlab.data import shapes
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())

  config.tokenizer.workdir = 'workdirs/magvit2_tiny'
  config.data = data.default_config('moving_shapes')
  config.data.image_size = 16
  config.data.num_frames = 5
  config.data.num_eval_examples = 16
  config.tokens.num_train_examples = 2048  # Clips drawn once.

  config.model.vocab_size = 2**10
  config.model.token_shape = (3, 8, 8)
  config.model.num_classes = len(shapes.SHAPES)
  config.model.width = 64
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.mlp_dim = 256
  config.model.block_style = 'bert'  # As the paper config (MAGVIT's).

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 1000
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 16
  config.sample.num_samples = 16
  config.sample.batch_size = 8
  return config
