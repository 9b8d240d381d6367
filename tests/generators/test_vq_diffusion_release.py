"""VQ-Diffusion's 'release' blocks (the released ImageNet network); the
golden comparison with the release is tests/convert/test_vq_diffusion.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.errors import ConfigError
from vqlab.generators import vq_diffusion
from vqlab.nn import vq_diffusion_release as release


def _config(**overrides):
  config = vq_diffusion.default_config()
  config.update(condition='class', num_classes=5, block_style='release',
                position_grid=(8, 8))
  config.update(overrides)
  return config


def test_grid_positions_take_the_first_cells_of_the_table_grid():
  rows = jnp.arange(4.0)[:, None] * 10
  cols = jnp.arange(8.0)[:, None]
  positions = release.grid_positions(rows, cols, 16)  # A 4x4 grid, 4x8 table.
  np.testing.assert_array_equal(positions[:, 0], [0, 1, 2, 3, 4, 5, 6, 7] +
                                [10, 11, 12, 13, 14, 15, 16, 17])


def _init_and_apply(config, labels):
  model = vq_diffusion.build(config)
  tokens = jnp.full((2, 4, 4), config.vocab_size, jnp.int32)
  t = jnp.array([1, 100])
  params = model.init(jax.random.key(0), tokens, t, labels)['params']
  return model, params, model.apply({'params': params}, tokens, t, labels)


def test_release_log_probs_are_clamped_with_a_mask_row_of_minus_70():
  _, params, log_p = _init_and_apply(_config(), jnp.array([0, 4]))
  assert log_p.shape == (2, 16, 65)
  np.testing.assert_array_equal(log_p[..., -1], -70.0)
  assert float(log_p.min()) >= -70.0
  np.testing.assert_allclose(jnp.exp(log_p[..., :-1]).sum(-1), 1.0, rtol=1e-5)
  assert params['block_0']['norm_class']['embedding'].shape == (5, 32)
  assert params['block_0']['norm_time']['embedding'].shape == (100, 32)


def test_the_null_class_is_the_mean_of_the_class_rows_or_its_own_row():
  model, params, _ = _init_and_apply(_config(), jnp.array([0, 4]))
  tokens = jnp.full((1, 4, 4), 64, jnp.int32)
  t = jnp.array([3])
  null = model.apply({'params': params}, tokens, t, None)
  for block in ('block_0', 'block_1'):
    table = params[block]['norm_class']['embedding']
    params[block]['norm_class']['embedding'] = table.at[0].set(table.mean(0))
  mean = model.apply({'params': params}, tokens, t, jnp.array([0]))
  np.testing.assert_allclose(null, mean, atol=1e-6)
  _, row_params, _ = _init_and_apply(_config(null_class='row'),
                                     jnp.array([0, 5]))
  assert row_params['block_0']['norm_class']['embedding'].shape == (6, 32)


@pytest.mark.parametrize('overrides, key', [
    (dict(condition='text'), 'model.block_style'),
    (dict(condition='none', num_classes=10), 'model.block_style'),
    (dict(block_style='bert'), 'model.block_style'),
    (dict(position_grid=(2, 2)), 'model.position_grid'),
    (dict(null_class='zero'), 'model.null_class'),
    (dict(block_style='vqlab'), 'model.position_grid'),
])
def test_bad_release_settings_name_their_key(overrides, key):
  with pytest.raises(ConfigError, match=key):
    vq_diffusion.build(_config(**overrides))


def test_a_mean_null_class_is_not_trained_by_dropped_labels():
  """The 'mean' null is no param of its own: labels dropped to it would
  train every class row, so it takes loss.label_drop = 0 ('row' learns a
  null row)."""
  from vqlab.train.tasks import generator_config  # pylint: disable=g-import-not-at-top
  config = generator_config.default_config()
  config.model = _config()
  config.loss.label_drop = 0.1
  with pytest.raises(ConfigError, match=r"model\.null_class: 'mean'"):
    vq_diffusion.API.check_settings(config)
  config.model.null_class = 'row'
  vq_diffusion.API.check_settings(config)
  config.model.update(null_class='mean', block_style='vqlab')
  vq_diffusion.API.check_settings(config)
  config.model.block_style = 'release'
  config.loss.label_drop = 0.0
  vq_diffusion.API.check_settings(config)
