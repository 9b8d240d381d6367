"""A tiny unconditional MaskGIT on tokens of the quickstart tokenizer (CPU).

Run the README's main job first (it trains the tokenizer in
workdirs/quickstart), then:

  python main.py --config=configs/maskgit/tiny_cpu.py \
      --workdir=workdirs/maskgit_tiny --mode=tokenize
  python main.py --config=configs/maskgit/tiny_cpu.py --workdir=workdirs/maskgit_tiny
  python main.py --config=configs/maskgit/tiny_cpu.py --workdir=workdirs/maskgit_tiny --mode=sample

32x32 crops of the built-in photos become 8x8 tokens of 512 codes.
"""

from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())

  config.tokenizer.workdir = 'workdirs/quickstart'
  config.data.image_size = 32
  config.data.train_image_size = 0
  config.tokens.num_train_examples = 4096  # Random crops, drawn once.

  config.model.vocab_size = 512
  config.model.token_shape = (8, 8)
  config.model.width = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 512

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 0.045
  config.train.num_steps = 1500
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 32
  config.sample.num_samples = 32
  return config
