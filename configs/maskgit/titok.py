"""Class-conditional MaskGIT on TiTok's 1D tokens, ImageNet 256x256 (Yu et
al. 2024): TiTok-L-32 (`:l32`, gFID 2.77) or TiTok-B-64 (`:b64`, gFID 2.48),
as TiTok's release trains and samples them (1d-tokenizer
configs/training/generator/maskgit.yaml and configs/titok_{l32,b64}.yaml).

Tokens: a TiTok run trained by configs/titok/{l32,b64}.py:2 (or the released
tokenizer, converted: `python -m vqlab.convert titok
tokenizer_titok_l32_imagenet/model.safetensors workdirs/titok_l32_released` and
--config.tokenizer.workdir=workdirs/titok_l32_released): K 1D tokens of 4096
codes. Transformer: the release's ImageBert, a post-LN BERT
(`model.block_style = 'bert'`, erf GELU) of 24 layers, width 768, 16 heads,
MLP 3072, dropout 0.1, the class as a first token, an untied output layer with a bias
(`model.tied_heads = False`). Loss: cross-entropy with label smoothing 0.1,
the unmasked positions weighted 0.1, masks drawn by the arccos schedule with
round(gamma(r) N) tokens (`loss.mask_rounding = 'round'`; MaskGIT's ceil
masks more), label dropout 0.1. AdamW (0.9, 0.96), lr 2e-4 after 10k warmup
steps, cosine decay, weight decay 0.03, clip 1, batch 2048, 500k steps, EMA
0.999 with the release's warmup. Sampling: 8 steps, the arccos schedule, TiTok's
sampler as its FID script runs it (`sample.decoding = 'titok'`: logits
divided by the annealed softmax temperature 1.3 -> 0.5, tokens and
confidences at the annealed Gumbel temperature 9.5 (L-32) / 11.0 (B-64), the
confidence a logit), guidance 4.5 / 3.0 rising linearly from 0.

Departures: the tokens are made once (--mode=tokenize), one crop and flip
per image for the whole training, where the release encodes every batch
with a new flip (--config.tokens.source=on_the_fly does, at the cost of
running the tokenizer's encoder in every step); the train crops are random
256 crops of the shorter side resized to 256 (the release takes the
centre); the cosine decays to 0, not 1e-5; HF BERT's token-type
embedding, a constant added to every position, is absent (the position
embeddings can learn it; the converter adds the released one into them).
The released generators convert into runs of this network: `python -m
vqlab.convert titok_generator` (README). TiTok-S-128's generator (U-ViT, 64 steps,
power-cosine guidance) is not written.

  python main.py --config=configs/maskgit/titok.py:l32 --workdir=... --mode=tokenize
  python main.py --config=configs/maskgit/titok.py:l32 --workdir=...
  python main.py --config=configs/maskgit/titok.py:l32 --workdir=... --mode=sample \\
      --config.sample.num_samples=50000 --config.eval.fid_reference=VIRTUAL_imagenet256_labeled.npz
"""

from configs.maskgit import imagenet256
from vqlab.convert import titok_generator

# name: tokens K (the release's sampler: titok_generator.RELEASED_SAMPLING).
VARIANTS = {'l32': 32, 'b64': 64}


def get_config(variant: str = 'l32'):
  if variant not in VARIANTS:
    raise ValueError(f'configs/maskgit/titok.py: the argument is one of '
                     f'{sorted(VARIANTS)}, got {variant!r}')
  num_tokens = VARIANTS[variant]
  config = imagenet256.get_config()
  config.tokenizer.workdir = f'workdirs/titok_{variant}_stage2'
  config.model.vocab_size = 4096
  config.model.token_shape = (num_tokens,)
  config.model.tied_heads = False
  config.model.exact_gelu = True
  # The release's ImageTransform (antialiased bicubic), as the tokenizer's
  # configs/titok: tokens of the pixels it was trained on.
  config.data.resize_method = 'bicubic'
  # The base's label smoothing and label dropout (0.1), token batches, TF
  # Inception input (the release's torch-fidelity), EMA decay and 8 steps
  # are the release's too.
  config.loss.unmasked_weight = 0.1
  config.loss.mask_schedule = 'arccos'
  config.loss.mask_rounding = 'round'

  config.optimizer.learning_rate = 2e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.96
  config.optimizer.weight_decay = 0.03
  config.optimizer.weight_decay_on = 'kernels'
  config.optimizer.warmup_steps = 10_000
  config.optimizer.schedule = 'cosine'
  config.optimizer.grad_clip_norm = 1.0
  config.ema.warmup = True
  config.train.batch_size = 2048
  config.train.num_steps = 500_000

  config.sample.decoding = 'titok'
  config.sample.update(titok_generator.RELEASED_SAMPLING[num_tokens])
  return config
