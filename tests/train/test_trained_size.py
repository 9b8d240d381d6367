"""A tokenizer run evaluated at another image size than it was trained at:
the state keeps the training's shapes; models that cannot are refused (the
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


def test_a_convolutional_tokenizer_is_built_at_the_trained_size():
  model = tokenizers.build(tiny.tokenizer_config().model)
  example = _example(24)
  assert trained_size.state_example(model, example, {}) is example
  got = trained_size.state_example(model, example,
                                   {'data.image_size': (16, 24)})
  assert got['image'].shape == (2, 16, 16, 3) and not got['image'].any()
  assert got['label'] is example['label']
  video = trained_size.state_example(_FlatDense(), _example(24, frames=3),
                                     {'data.image_size': (24, 24)})
  assert video['video'].shape == (2, 3, 24, 24, 3)


def test_models_whose_variables_follow_the_size_are_refused():
  with pytest.raises(
      ConfigError, match=r'^data\.image_size: the run was trained at 16, and '
      r"its model's params/Dense_0/kernel is \(768, 2\) there but \(1728, 2\) "
      r'at 24: this model is evaluated at 16 only$'):
    trained_size.state_example(_FlatDense(), _example(24),
                               {'data.image_size': (16, 24)})
  titok = tokenizers.build(tokenizers.default_config('titok'))
  with pytest.raises(
      ConfigError, match=r'^data\.image_size: 48, but the model decodes '
      r'images of model\.image_size = 32 .*: it is evaluated at 32 only$'):
    trained_size.state_example(titok, _example(48),
                               {'data.image_size': (32, 48)})
