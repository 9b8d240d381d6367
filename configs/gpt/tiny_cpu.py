"""A tiny unconditional GPT on tokens of the quickstart tokenizer (CPU).

Run the README's main job first (it trains the tokenizer in
workdirs/quickstart), then:

  python main.py --config=configs/gpt/tiny_cpu.py --workdir=workdirs/gpt_tiny --mode=tokenize
  python main.py --config=configs/gpt/tiny_cpu.py --workdir=workdirs/gpt_tiny
  python main.py --config=configs/gpt/tiny_cpu.py --workdir=workdirs/gpt_tiny --mode=sample

32x32 crops of the built-in photos become 64 tokens (8x8, row-major) of 512
codes.
"""

from vqlab import generators
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.model = generators.default_config('gpt')

  config.tokenizer.workdir = 'workdirs/quickstart'
  config.data.image_size = 32
  config.data.train_image_size = 0
  config.tokens.num_train_examples = 4096

  config.model.vocab_size = 512
  config.model.length = 64
  config.model.width = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.model.condition = 'none'

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.b2 = 0.95
  config.train.num_steps = 1500
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 32
  config.sample.num_samples = 32
  return config
