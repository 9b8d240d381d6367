"""MAGVIT-v2's tokenizer on Kinetics-600, the data of its frame-prediction
benchmark: the model, losses and optimizer of configs/magvit2/ucf101_17x128.py
(MAGVIT's recipe, which MAGVIT-v2 follows: 17 frames of 128x128 -> 5x16x16
tokens, LFQ with 2^18 codes; its docstring lists the departures) on clips of
your copy of Kinetics-600, read by the `video_folder` dataset:

  <data.path>/train/<files>  and  <data.path>/val/<files>

(.mp4 and the other video formats; the layout Kinetics' downloaders leave, or
class folders under train/ and val/). Train clips take 17 consecutive frames
at a random start, a random square window of at least half the shorter side,
resized to 128, and a random flip; eval takes the first 17 frames of each val
video, its centred square (`data.eval_clips_per_video = 1`).

MAGVIT's warmup of one epoch is one of Kinetics-600's here (1,523 steps of
256 clips, for its roughly 390,000 training videos). Choices where neither
paper gives Kinetics-600's numbers: the UCF-101 config's 74,000 steps (about
48 epochs), the GAN from step 20k, and frames at the videos' own rate
(`data.frame_stride = 1`).

  python main.py --config=configs/magvit2/k600_17x128.py \\
      --config.data.path=/path/to/kinetics600 --workdir=workdirs/magvit2_k600

configs/maskgit/k600_frame_prediction.py trains the frame-prediction
transformer on its tokens.
"""

from configs.magvit2 import ucf101_17x128
from vqlab import data


def data_config():
  """Kinetics-600 clips from `video_folder` (data.path to be set)."""
  config = data.default_config('video_folder')
  config.image_size = 128
  config.num_frames = 17
  config.eval_clips_per_video = 1
  return config


TRAIN_VIDEOS = 390_000  # About; downloads miss some of the listed ones.


def get_config():
  config = ucf101_17x128.get_config()
  config.data = data_config()
  for opt in (config.optimizer.generator, config.optimizer.discriminator):
    opt.warmup_steps = TRAIN_VIDEOS // config.train.batch_size
  return config
