"""Kinetics-600 frame prediction, MAGVIT-v2's video benchmark: a MaskGIT over
the tokens of configs/magvit2/k600_17x128.py (trained in
workdirs/magvit2_k600) that is given the first 5 frames of a 17-frame clip
and predicts the other 12.

The causal tokenizer encodes frames 0-4 into the first 2 of the 5 latent
frames without looking at the rest, so those 512 tokens are the condition
exactly: training keeps them unmasked in every clip
(`loss.observed_frames = 2`, `loss.observed_frames_rate = 1.0`; MAGVIT's
frame-prediction configs train that one task) and masks and predicts the
other 768; sampling starts from them (`sample.observed_frames = 2`) and
reports `prediction_psnr` and `prediction_fvd` (the predicted clips, the 5
given frames included, against the real ones). No classes: the frames are
the condition.

Transformer and recipe: those of configs/maskgit/ucf101_17x128.py (MAGVIT-L,
post-LN BERT blocks, factorized heads over the 2^18 codes; AdamW 1e-4,
weight decay 0.045, 5k warmup steps, cosine, clip 1; MAGVIT's loss on every
token); 12 decoding steps. Choices where neither paper gives Kinetics-600's
numbers: 74,000 steps of 256 clips, as the UCF-101 config, and 50,000
samples for the FVD (the count the Kinetics-600 frame-prediction papers
report), cycling through the first clips of the val videos
(`data.eval_clips_per_video = 1`). --mode=tokenize encodes 390,000 train
clips, drawn as training draws them (a random file, start, window and flip
each), about one per training video; MAGVIT draws new clips every epoch
(`--config.tokens.source=on_the_fly` does, at the cost of the tokenizer's
encoder in every step).

  python main.py --config=configs/maskgit/k600_frame_prediction.py \\
      --config.data.path=/path/to/kinetics600 --workdir=... --mode=tokenize
  python main.py --config=configs/maskgit/k600_frame_prediction.py \\
      --config.data.path=/path/to/kinetics600 --workdir=...
  python main.py --config=configs/maskgit/k600_frame_prediction.py \\
      --config.data.path=/path/to/kinetics600 --workdir=... --mode=sample
"""

from configs.magvit2 import k600_17x128
from configs.maskgit import ucf101_17x128

OBSERVED_LATENT_FRAMES = 2  # Pixel frames 0-4 (1 + 4 per latent frame).


def get_config():
  config = ucf101_17x128.get_config()
  config.tokenizer.workdir = 'workdirs/magvit2_k600'
  config.data = k600_17x128.data_config()
  # video_folder draws train clips at random (files with replacement), so
  # the tokens are a number of draws: about one per training video.
  config.tokens.num_train_examples = k600_17x128.TRAIN_VIDEOS
  config.model.num_classes = 0
  config.loss.label_drop = 0.0
  config.loss.observed_frames = OBSERVED_LATENT_FRAMES
  config.loss.observed_frames_rate = 1.0
  config.sample.labels = 'cycle'  # No classes to draw.
  config.sample.observed_frames = OBSERVED_LATENT_FRAMES
  config.sample.num_samples = 50_000
  return config
