"""A tiny super-resolution GPT on tokens of the quickstart tokenizer (CPU).

Taming-style spatial conditioning: each 32x32 crop is average-pooled 4x and
upsampled back (nearest); the quickstart tokenizer encodes that condition
image into 64 tokens, which the GPT reads before generating the 64 tokens of
the full-resolution image. Samples are conditioned on the eval images.
Run the README's main job first (it trains the tokenizer in
workdirs/quickstart), then:

  python main.py --config=configs/gpt/tiny_superres_cpu.py \
      --workdir=workdirs/gpt_superres --mode=tokenize
  python main.py --config=configs/gpt/tiny_superres_cpu.py --workdir=workdirs/gpt_superres
  python main.py --config=configs/gpt/tiny_superres_cpu.py \
      --workdir=workdirs/gpt_superres --mode=sample

For colorization set condition.image = 'grayscale'.
"""

from configs.gpt import tiny_cpu


def get_config():
  config = tiny_cpu.get_config()
  config.model.condition = 'tokens'
  config.model.cond_vocab_size = config.model.vocab_size  # One tokenizer.
  config.model.cond_length = config.model.length  # 8x8 tokens.
  config.condition.image = 'downsampled'
  config.condition.factor = 4
  return config
