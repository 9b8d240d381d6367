"""A tokenizer run's eval builds its state at the size the run trained on:
its train crops, or its image size before `--allow_config_change` changed
it; models that cannot be evaluated at another size are refused (the
MAGVIT-v2 run evaluated at 162 pixels: tests/train/tasks/
test_magvit2_training.py)."""

import flax.linen as nn
import numpy as np
import pytest

from tests import tiny
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.train import trained_size


class _FlatDense(nn.Module):
  """A 'tokenizer' whose kernel depends on the image size."""

  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


def _example(side, frames=0):
  shape = (2,) + ((frames,) if frames else ()) + (side, side, 3)
  return {
      'video' if frames else 'image': np.ones(shape, np.float32),
      'label': np.arange(2)
  }


def test_the_state_is_built_at_the_frames_the_run_trained_on():
  config = tiny.tokenizer_config(image_size=24)
  model = tokenizers.build(config.model)
  example = _example(24)
  assert trained_size.state_example(model, example, config, {}) is example
  # Trained on 16x16 crops, evaluated on 24x24 images.
  config.data.train_image_size = 16
  got = trained_size.state_example(model, example, config, {})
  assert got['image'].shape == (2, 16, 16, 3) and not got['image'].any()
  assert got['label'] is example['label']
  # Trained at 8 (whole images), evaluated at 24 (--allow_config_change).
  config.data.train_image_size = 0
  got = trained_size.state_example(model, example, config,
                                   {'data.image_size': (8, 24)})
  assert got['image'].shape == (2, 8, 8, 3)
  # Its train crops were 16 then: they count, not its image size.
  got = trained_size.state_example(model, example, config, {
      'data.image_size': (8, 24),
      'data.train_image_size': (16, 0)
  })
  assert got['image'].shape == (2, 16, 16, 3)
  config.data.image_size = 24
  video = trained_size.state_example(_FlatDense(), _example(24, frames=3),
                                     config, {})
  assert video['video'].shape == (2, 3, 24, 24, 3)


def test_models_whose_variables_follow_the_size_are_refused():
  config = tiny.tokenizer_config(image_size=24)
  with pytest.raises(
      ConfigError, match=r'^data\.image_size: 24, but the run trained on '
      r"16x16 frames, and its model's params/Dense_0/kernel is \(768, 2\) "
      r'there and \(1728, 2\) at 24: this model is evaluated at 16 only$'):
    trained_size.state_example(_FlatDense(), _example(24), config,
                               {'data.image_size': (16, 24)})
  titok = tokenizers.build(tokenizers.default_config('titok'))
  with pytest.raises(
      ConfigError, match=r'^data\.image_size: 48, but the model decodes '
      r'images of model\.image_size = 32 .*: it is evaluated at 32 only$'):
    trained_size.state_example(titok, _example(48), config,
                               {'data.image_size': (32, 48)})
