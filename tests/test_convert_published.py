"""The converters' shared pieces: StateDict, check_params_match, write_run."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.train import loop
from vqlab.train import trained_tokenizer


def test_state_dict_converts_torch_layouts_and_tracks_use():
  rng = np.random.default_rng(0)
  conv = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)  # [O, I, kh, kw]
  linear = rng.standard_normal((6, 7)).astype(np.float32)      # [O, I]
  state = published.StateDict({
      'c.weight': conv, 'c.bias': np.arange(5.0),
      'l.weight': linear, 'l.bias': np.zeros(6),
      'n.weight': np.ones(3), 'n.bias': np.zeros(3),
      'extra.step': np.array(3)}, 'test.pth')
  out = state.conv('c')
  x = rng.standard_normal((1, 4, 6, 3)).astype(np.float32)
  flax_out = jax.lax.conv_general_dilated(
      x, out['kernel'], (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # The same correlation written out with the torch layout.
  torch_out = np.einsum('bhwi,oihw->bo', x[:, :2, :4], conv)
  np.testing.assert_allclose(flax_out[:, 0, 0], torch_out, rtol=1e-5)
  assert out['bias'].dtype == np.float32
  np.testing.assert_array_equal(state.linear('l')['kernel'], linear.T)
  assert set(state.norm('n')) == {'scale', 'bias'}
  assert state.unused() == ['extra.step']
  with pytest.raises(WeightsError, match='1 tensors were not converted'):
    state.check_all_used()
  state.check_all_used(ignore_prefixes=('extra.',))
  with pytest.raises(WeightsError, match="test.pth: missing tensor 'd.weight'"):
    state.conv('d')
  with pytest.raises(WeightsError, match='not that of a linear'):
    published.StateDict({'c.weight': conv, 'c.bias': 0}, 'f').linear('c')


def test_check_params_match_names_every_problem():
  expected = {'a': {'kernel': jax.ShapeDtypeStruct((3, 4), jnp.float32)},
              'b': jax.ShapeDtypeStruct((2,), jnp.float32)}
  published.check_params_match(
      {'a': {'kernel': np.zeros((3, 4))}, 'b': np.zeros(2)}, expected, 'f')
  with pytest.raises(WeightsError) as info:
    published.check_params_match(
        {'a': {'kernel': np.zeros((4, 3))}, 'c': np.zeros(2)}, expected, 'f')
  message = str(info.value)
  assert 'not filled: b' in message and 'lacks: c' in message
  assert 'a/kernel (4, 3) != (3, 4)' in message


@pytest.fixture(scope='module')
def converted():
  model_config = tiny.tokenizer_config().model
  model = tokenizers.build(model_config)
  x = jnp.zeros((1, 16, 16, 3))
  variables = model.init(jax.random.key(3), x)
  params = jax.tree.map(np.asarray, variables['params'])
  return published.Converted(model_config=model_config, params=params,
                             image_size=16, source='a tiny test VQGAN')


def test_write_run_is_a_tokenizer_run_main_can_evaluate(converted, tmp_path):
  out = str(tmp_path / 'run')
  result = published.write_run(out, converted)
  assert result['num_params'] == sum(
      p.size for p in jax.tree.leaves(converted.params))

  loaded = trained_tokenizer.load(out)
  assert loaded.step == 0
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1)
  direct = {'params': converted.params}
  expected = loaded.model.apply(direct, x, method=loaded.model.encode)[0]
  np.testing.assert_array_equal(loaded.encode(loaded.variables, x), expected)

  # config.py (what main.py --config= reads) restores the same run config.
  spec = importlib.util.spec_from_file_location('converted_config',
                                                f'{out}/config.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.eval.max_batches = 1
  metrics = loop.evaluate_checkpoint(config, out)
  assert metrics['step'] == 0 and np.isfinite(metrics['psnr'])

  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    published.write_run(out, converted)


def test_write_run_refuses_params_that_do_not_fit(converted, tmp_path):
  params = jax.tree.map(lambda p: p, converted.params)
  del params['to_pixels']
  bad = published.Converted(converted.model_config, params, 16, 'bad file')
  with pytest.raises(WeightsError, match='bad file: .*not filled: to_pixels'):
    published.write_run(str(tmp_path / 'bad'), bad)
