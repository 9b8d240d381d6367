"""A tiny class-conditional VQ-Diffusion on CPU: the built-in `shapes`
(labels = the shape) at 32x32, tokens of the quickstart tokenizer (8x8 of 512
codes), T = 100. Run the README's main job first (workdirs/quickstart):

  python main.py --config=configs/vq_diffusion/tiny_class.py \
      --workdir=workdirs/vqd_class --mode=tokenize
  python main.py --config=configs/vq_diffusion/tiny_class.py --workdir=workdirs/vqd_class
  python main.py --config=configs/vq_diffusion/tiny_class.py \
      --workdir=workdirs/vqd_class --mode=sample
"""

from vqlab import data
from vqlab import generators
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.model = generators.default_config('vq_diffusion')
  config.tokenizer.workdir = 'workdirs/quickstart'
  config.data = data.default_config('shapes')
  config.data.image_size = 32
  config.data.num_train_examples = 4096
  config.data.num_eval_examples = 256

  config.model.vocab_size = 512
  config.model.token_shape = (8, 8)
  config.model.condition = 'class'
  config.model.num_classes = len(config.data.shapes)
  config.model.width = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.loss.aux_weight = 1e-3  # Paper: 1e-3 for class conditions.
  config.loss.label_drop = 0.1

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 1500
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 32
  config.sample.num_samples = 32
  config.sample.diffusion_steps = 25
  return config
