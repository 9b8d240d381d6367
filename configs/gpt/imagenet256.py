"""Class-conditional GPT on ImageNet 256x256 (taming-transformers, Esser et
al. 2021: 'cond_transformer' with a class token).

Tokens: the taming VQGAN f=16 (configs/vqgan/taming_f16.py, 1024 codes,
16x16) trained in workdirs/vqgan_taming_f16. Transformer: 24 layers, 16
heads, width 1536 (685M): half the depth of taming's published
class-conditional ImageNet model (48 layers, 24 heads, width 1536, 1.4B, on
a 16384-code VQGAN: set model.num_layers = 48, model.num_heads = 24 and
such a tokenizer for it; the released model itself converts, over its own
first stage: README, "Published checkpoints"), the size benchmarks/
paper_scale.py tracks. The paper's remark that 16x16 sequences are the
longest a GPT2-medium trains on (307M: model.width = 1024, model.mlp_dim =
4096) sizes neither;
minGPT's blocks (`model.block_style = 'taming'`);
AdamW (0.9, 0.95), weight decay 0.01 on the dense weights, lr 4.5e-6 x
batch; images as taming's loader makes them (shorter side to 256, random
crop, no flip). Taming encodes every batch anew; here the tokens are made
once (`tokens.source = 'shards'`: one crop of each image for the whole run;
`'on_the_fly'` draws new ones in every step, at the cost of the
tokenizer's forward pass). Sampling as taming's class-conditional ImageNet samples (its
README's sample_fast.py -k 600 -t 1.0 -p 0.92): temperature 1.0, top-k 600, top-p
0.92, KV cache.

  python main.py --config=configs/gpt/imagenet256.py --workdir=... --mode=tokenize
  python main.py --config=configs/gpt/imagenet256.py --workdir=...
  python main.py --config=configs/gpt/imagenet256.py --workdir=... --mode=sample
"""

from vqlab import data
from vqlab import generators
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def model_config():
  """The paper's transformer (also used by benchmarks/generators.py)."""
  model = generators.default_config('gpt')
  model.vocab_size = 1024
  model.length = 256
  model.width = 1536
  model.num_layers = 24
  model.num_heads = 16
  model.mlp_dim = 4 * 1536
  model.dropout_rate = 0.0
  model.condition = 'class'
  model.num_classes = 1000
  # minGPT's blocks as taming trains them: LayerNorm eps 1e-5, erf GELU, a
  # head without bias.
  model.block_style = 'taming'
  # One nn.scan over the blocks: XLA compiles one block, not all of them.
  model.scan_layers = True
  return model


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.compute_dtype = 'bfloat16'
  config.tokenizer.workdir = 'workdirs/vqgan_taming_f16'
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  # Taming's ImageNet loader: shorter side to 256 (OpenCV INTER_LINEAR) and
  # a random crop, no flip.
  config.data.random_flip = False
  config.data.resize_method = 'bilinear_no_antialias'
  config.tokens.batch_size = 256
  config.tokens.batches_per_shard = 100

  config.model = model_config()
  # Taming trains no null class, so no classifier-free guidance: a
  # sample.guidance_scale > 0 is a ConfigError (set loss.label_drop, e.g.
  # 0.1, when training a model to guide).
  config.loss.label_drop = 0.0

  config.train.batch_size = 64
  config.optimizer.learning_rate = 4.5e-6 * 64
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  # Taming's cond_transformer: AdamW 0.01 on Linear weights only.
  config.optimizer.weight_decay = 0.01
  config.optimizer.weight_decay_on = 'kernels'
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 64
  # gFID against the ADM reference batch and the Inception Score as
  # published: through the TF graph's input pipeline.
  config.eval.inception_input = 'tf'

  config.sample.temperature = 1.0
  # Taming's k for its 16384 codes; of this tokenizer's 1024 it keeps 59%,
  # so top-p does most of the filtering here.
  config.sample.top_k = 600
  config.sample.top_p = 0.92
  config.sample.batch_size = 64
  config.sample.num_samples = 50_000
  return config
