"""benchmarks/train_step.py on a tiny tokenizer: the figures of the steps it
times, at the size they train on."""

from benchmarks import train_step
from tests import tiny
from vqlab import data


def test_times_the_configs_train_size_on_the_built_in_photos(tmp_path):
  config = tiny.tokenizer_config()
  config.data = data.default_config('shapes')  # Swapped for the photos.
  config.data.image_size = 16
  config.data.train_image_size = 8
  config.discriminator.num_layers = 1  # Its logits need 8 pixels or more.
  config.eval.lpips = config.eval.fid = 'off'
  result = train_step.run_benchmark(config, str(tmp_path), steps=1)
  assert result['image_size'] == 8 and result['global_batch'] == 8
  assert result['step_s'] > 0 and result['flops_per_step'] > 0
