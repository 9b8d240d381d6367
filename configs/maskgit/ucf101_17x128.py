"""Class-conditional video MaskGIT on UCF-101, MAGVIT-v2's generation setup.

Tokens: the MAGVIT-v2 tokenizer of configs/magvit2/ucf101_17x128.py (trained
in workdirs/magvit2_ucf101): 17 frames of 128x128 -> 5x16x16 tokens, LFQ
2^18 codes as two factors of 2^9, predicted by factorized heads tied to the
per-factor embeddings (MAGVIT-v2). Transformer: MAGVIT-L
(24 layers, 16 heads, width 1024, MLP 4096, about 306M parameters);
101 classes, label dropout 0.1 for guidance; 12 decoding steps. The sizes
are the papers'; the training recipe is MAGVIT's (maskgvt_ucf101_config,
which MAGVIT-v2 follows): AdamW lr 1e-4, weight decay 0.045, 5k warmup
steps then cosine, gradient clip 1, label smoothing 1e-4, the cross-entropy
of every token (the unmasked ones too: MAGVIT's 'mask+refine+recons'), 2000
epochs of the 9,537 training videos at batch 256 (74,000 steps); plus an EMA
of the weights for eval (0.9999), which MAGVIT's trainer does not keep.

The transformer is MAGVIT's post-LN BERT (`model.block_style = 'bert'`,
with BERT's dropouts: `model.mlp_hidden_dropout = False`).

Departures: each example draws its own mask ratio and masks
ceil(gamma(r) N) tokens; MAGVIT draws one ratio per batch and masks
floor(gamma(r) N) (at least 1). The tokens are made once (--mode=tokenize: one random clip, crop
and flip per video, seen in all 2000 epochs); MAGVIT tokenizes each batch in
the train step, so each epoch draws new clips, crops and flips:
--config.tokens.source=on_the_fly --config.sample.labels=cycle does that, at
the cost of running the tokenizer's encoder in every step (the sample labels
below come from the token shards). Label dropout trains the null class for
guidance, which MAGVIT's class-conditional models do not have (the
papers' FVD is without guidance). FVD is against the eval split's clips by
default; the papers' protocol uses training clips (vqlab/evals/PROTOCOLS.md,
`--mode=fvd_stats`). As the papers, each sample is conditioned on the label
of a random training clip (`sample.labels = 'train'`: the samples follow
UCF-101's unbalanced class mix, as the reference clips do); 'cycle' would
take the 101 classes in turn.

  python main.py --config=configs/maskgit/ucf101_17x128.py --workdir=... --mode=tokenize
  python main.py --config=configs/maskgit/ucf101_17x128.py --workdir=...
  python main.py --config=configs/maskgit/ucf101_17x128.py --workdir=... --mode=sample

--config.sample.observed_frames=1 (one latent frame: the first pixel frame)
or 2 (frames 0-4) predicts the rest of each eval clip instead (frame
prediction) and reports the PSNR of the predicted frames; train with
--config.loss.observed_frames=1 (or 2) to learn that task too (MAGVIT's frame
prediction, on half the clips).
"""

from vqlab import data
from vqlab.train import experiment_config
from vqlab.train.tasks import generator_config


def model_config():
  """The video transformer over factorized LFQ tokens."""
  model = generator_config.default_config().model
  model.vocab_size = 2**18
  model.factor_vocab_sizes = (2**9, 2**9)
  model.tied_heads = True
  model.token_shape = (5, 16, 16)
  model.num_classes = 101
  model.width = 1024
  model.num_layers = 24
  model.num_heads = 16
  model.mlp_dim = 4096
  model.dropout_rate = 0.1
  model.mlp_hidden_dropout = False  # BERT's one dropout after the MLP.
  model.block_style = 'bert'  # MAGVIT's post-LN BERT blocks.
  model.scan_layers = True
  return model


def get_config():
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.compute_dtype = 'bfloat16'
  config.tokenizer.workdir = 'workdirs/magvit2_ucf101'
  config.data = data.default_config('tfds_video')
  # The frames as filmed (320x240): tfds' default 'ucf101' config is
  # 'ucf101_1_256', stretched to 256x256 by ffmpeg, where MAGVIT resizes the
  # shorter side to 128 and crops, keeping the aspect ratio.
  config.data.tfds_name = 'ucf101/ucf101_1'
  config.data.image_size = 128
  config.data.num_frames = 17
  config.tokens.batch_size = 64
  config.tokens.num_train_examples = -1  # One pass, one random clip per video.

  config.model = model_config()
  config.loss.label_smoothing = 1e-4
  # MAGVIT's default loss ('mask+refine+recons'): every token, the unmasked
  # ones reconstructed, not the masked ones alone.
  config.loss.unmasked_weight = 1.0
  config.loss.label_drop = 0.1

  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 0.045
  # MAGVIT's get_optimizer decays kernels only (no biases, scales, embeddings).
  config.optimizer.weight_decay_on = 'kernels'
  config.optimizer.warmup_steps = 5000
  config.optimizer.schedule = 'cosine'
  config.optimizer.grad_clip_norm = 1.0
  config.train.batch_size = 256
  config.train.num_steps = 2000 * (9_537 // 256)
  config.train.log_every = 100
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 64
  config.ema.decay = 0.9999

  # maskgvt_ucf101_config: sampling.mask_bins = 12 (parallel_decode's
  # num_iter), choice_temperature 4.5 (the default here).
  config.sample.num_steps = 12
  config.sample.batch_size = 64
  config.sample.num_samples = 10_000  # FVD on UCF-101: 10k samples.
  config.sample.labels = 'train'  # The training clips' class mix (MAGVIT).
  return config
