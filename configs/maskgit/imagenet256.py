"""Class-conditional MaskGIT on ImageNet 256x256 (Chang et al. 2022).

Tokens: a VQGAN trained with the MaskGIT-VQGAN recipe in
workdirs/vqgan_maskgit_f16 (configs/vqgan/maskgit_f16.py: taming's
architecture, LFQ over 1024 codes, 16x16). The paper's 6.18 is on the
released MaskGIT VQGAN (its own architecture, VQ over 1024 codes): convert
it (`python -m vqlab.convert maskgit_vqgan tokenizer_imagenet256_checkpoint
workdirs/maskgit_vqgan`) and pass
--config.tokenizer.workdir=workdirs/maskgit_vqgan. Transformer: MaskGIT's
post-LN BERT (`model.block_style = 'bert'`), 24 layers, 16 heads, width
768, MLP 3072, dropout 0.1 where BERT drops; AdamW (0.9, 0.96), lr 1e-4
after 5000 warmup steps, then constant, weight decay 0.045 (kernels), label
smoothing 0.1, batch 256, 300 epochs, EMA 0.999. Decoding: 8 steps, cosine
schedule, choice temperature 4.5. Label dropout 0.1 trains the null class
for classifier-free guidance (`sample.guidance_scale`), which MaskGIT does
not have (its 6.18 is without guidance); the tokens are made once, one
random crop and flip per image for all 300 epochs (--mode=tokenize;
--config.tokens.source=on_the_fly draws new ones in every step). The
released transformer itself (maskgit_imagenet256_checkpoint) converts to a
run of this architecture: `python -m vqlab.convert maskgit_transformer
maskgit_imagenet256_checkpoint workdirs/maskgit_released
--tokenizer=workdirs/maskgit_vqgan` (README, "Published checkpoints").

  python main.py --config=configs/maskgit/imagenet256.py --workdir=... --mode=tokenize
  python main.py --config=configs/maskgit/imagenet256.py --workdir=...
  python main.py --config=configs/maskgit/imagenet256.py --workdir=... --mode=sample \
      --config.sample.num_samples=50000 --config.eval.fid_reference=VIRTUAL_imagenet256_labeled.npz
"""

from vqlab import data
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def model_config():
  """The paper's transformer (also used by benchmarks/generators.py)."""
  model = generator_config.default_config().model
  model.vocab_size = 1024
  model.token_shape = (16, 16)
  model.num_classes = 1000
  model.width = 768
  model.num_layers = 24
  model.num_heads = 16
  model.mlp_dim = 3072
  model.dropout_rate = 0.1
  model.mlp_hidden_dropout = False  # BERT's one dropout after the MLP.
  model.block_style = 'bert'  # MaskGIT's post-LN BERT blocks.
  # One nn.scan over the blocks: XLA compiles one block, not all of them.
  model.scan_layers = True
  return model


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.compute_dtype = 'bfloat16'
  config.tokenizer.workdir = 'workdirs/vqgan_maskgit_f16'
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'imagenet2012'
  config.data.image_size = 256
  config.tokens.batch_size = 256
  config.tokens.batches_per_shard = 100

  config.model = model_config()
  config.loss.label_smoothing = 0.1
  config.loss.label_drop = 0.1

  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 0.045
  # MaskGIT's trainer is not released; the same authors' released trainer of
  # this recipe (MAGVIT's maskgvt_train_lib) decays kernels only, sparing
  # biases, norms and the (tied) token and position embeddings.
  config.optimizer.weight_decay_on = 'kernels'
  config.optimizer.warmup_steps = 5000
  # No decay after the warmup: maskgit's base_config has lr_schedule
  # 'constant', which its class-conditional config keeps.
  config.optimizer.schedule = 'constant'
  config.train.batch_size = 256
  config.train.num_steps = 1_500_000  # ~300 epochs of 1.28M images.
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  # gFID against the ADM reference batch and the Inception Score as
  # published: through the TF graph's input pipeline.
  config.eval.inception_input = 'tf'
  config.ema.decay = 0.999  # MaskGIT's base_config: polyak_decay 0.999.

  config.sample.num_steps = 8
  config.sample.choice_temperature = 4.5
  config.sample.batch_size = 256
  config.sample.num_samples = 50_000
  return config
