"""The sampling settings every generator shares: temperature 0 as an array,
and the Python API's checks of the settings' domains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab import generators
from vqlab.generators import api
from vqlab.generators import gpt
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion


def test_temperature_zero_is_the_argmax_as_a_number_or_an_array():
  logits = jax.random.normal(jax.random.key(0), (64, 10)) + 0.5
  argmax = np.argmax(logits, -1)
  rng = jax.random.key(1)
  draw = jax.jit(lambda t: api.draw_or_argmax(rng, logits, t))
  np.testing.assert_array_equal(api.draw_or_argmax(rng, logits, 0), argmax)
  np.testing.assert_array_equal(draw(jnp.float32(0)), argmax)
  # Other temperatures draw as the Python number does.
  np.testing.assert_array_equal(draw(jnp.float32(0.7)),
                                api.draw_or_argmax(rng, logits, 0.7))
  assert (np.asarray(draw(jnp.float32(0.7))) != argmax).any()
  # GPT's choice with top-k / top-p, traced (was a TracerBoolConversionError).
  choose = jax.jit(lambda t: gpt._choose(rng, logits, t, 3, 0.9))  # pylint: disable=protected-access
  np.testing.assert_array_equal(choose(jnp.float32(0)), argmax)
  # The nucleus is of the tempered distribution, as a number or an array:
  # p = (.5, .3, .2) at temperature 0.5 is (.66, .24, .11), whose top-p 0.6
  # is code 0 alone (untempered it would be codes 0 and 1).
  three = jnp.log(jnp.tile(jnp.array([.5, .3, .2]), (256, 1)))
  for temperature in (0.5, jnp.float32(0.5)):
    assert not np.asarray(gpt._choose(rng, three, temperature, 0, 0.6)).any()  # pylint: disable=protected-access
  # A traced setting is not checked (nor an error).
  assert jax.jit(lambda t: api.check_sampling_settings(temperature=t) or t)(
      1.0) == 1.0


def _model(name, **overrides):
  config = generators.default_config(name)
  config.update(overrides)
  return generators.build(config)


@pytest.mark.parametrize('setting, value, message', [
    ('temperature', -1.0, r'^temperature must be >= 0, got -1\.0$'),
    ('guidance_scale', -3.0, r'^guidance_scale must be >= 0, got -3\.0$'),
    ('choice_temperature', -5.0, '^choice_temperature must be >= 0'),
    ('truncation', 0.0, r'^truncation must be > 0 \(1 keeps every code\)'),
    ('purity_weight', -3.0, r'^purity_weight must be >= 0, got -3\.0$'),
    ('purity_weight', float('nan'), '^purity_weight must be >= 0, got nan$'),
])
def test_settings_out_of_their_domain_are_named(setting, value, message):
  """The config's sample.* keys are checked by their domains; the Python API
  sampled a negative temperature from the inverted distribution, and a
  truncation of 0 from a uniform one."""
  rng = jax.random.key(0)
  samplers = {
      'gpt':
          lambda **kw: gpt.sample(_model('gpt'), {}, rng, 2, **kw),
      'maskgit':
          lambda **kw: maskgit.sample(_model('maskgit'), {}, rng, 2, **kw),
      'vq_diffusion':
          lambda **kw: vq_diffusion.sample(_model('vq_diffusion'), {}, rng, 2,
                                           **kw),
  }
  takes = {
      'temperature': ('gpt', 'maskgit', 'vq_diffusion'),
      'guidance_scale': ('gpt', 'maskgit', 'vq_diffusion'),
      'choice_temperature': ('maskgit',),
      'truncation': ('vq_diffusion',),
      'purity_weight': ('vq_diffusion',),
  }
  for name in takes[setting]:
    with pytest.raises(ValueError, match=message):
      samplers[name](**{setting: value})
  if setting == 'truncation':
    with pytest.raises(ValueError, match=message):
      vq_diffusion.truncate(jnp.zeros((2, 4)), value)


@pytest.mark.parametrize('module', [gpt, maskgit, vq_diffusion])
def test_a_batch_of_no_samples_is_named(module):
  """It was a numpy reduction error deep inside (MaskGIT, GPT)."""
  model = _model(module.__name__.split('.')[-1])
  with pytest.raises(ValueError, match='^batch_size must be >= 1, got 0$'):
    module.sample(model, {}, jax.random.key(0), 0)


@pytest.mark.parametrize('labels', [[0, 4], [0, -1]])
def test_class_ids_are_checked_under_guidance_too(labels):
  """With guidance the steps saw the labels joined with the null ones,
  traced: 4 (past the null class 3) sampled all token 0 and -1 the null
  class, without an error."""
  rng, labels = jax.random.key(0), np.array(labels, np.int32)
  message = r'class ids \(num_classes=3, null class 3\) must lie in \[0, 4\)'
  model = _model('maskgit', num_classes=3)
  with pytest.raises(ValueError, match='^MaskGIT: ' + message):
    maskgit.sample(model, {}, rng, 2, labels, guidance_scale=1.0)
  model = _model('vq_diffusion', condition='class', num_classes=3)
  with pytest.raises(ValueError, match='^VQDiffusion: ' + message):
    vq_diffusion.sample(model, {}, rng, 2, labels, guidance_scale=1.0)


def test_guidance_without_a_condition_is_named():
  """guidance_scale != 0 with no labels sampled null against null: the
  unguided samples, silently (GPT at twice the cost)."""
  rng = jax.random.key(0)
  message = r'guidance_scale=2\.0 needs a condition to guide towards'
  samplers = {
      'GPT':
          lambda: gpt.sample(_model('gpt', condition='class', num_classes=3), {
          }, rng, 2, guidance_scale=2.0),
      'MaskGIT':
          lambda: maskgit.sample(_model('maskgit', num_classes=3), {}, rng, 2,
                                 guidance_scale=2.0),
      'VQDiffusion':
          lambda: vq_diffusion.sample(
              _model('vq_diffusion', condition='class', num_classes=3), {}, rng,
              2, guidance_scale=2.0),
  }
  for who, sample in samplers.items():
    with pytest.raises(ValueError, match=f'^{who}: {message}'):
      sample()
  with pytest.raises(
      ValueError, match='^MaskGIT: guidance_scale=2.0 needs a '
      'conditional model, and this one takes no condition'):
    maskgit.sample(_model('maskgit'), {}, rng, 2, guidance_scale=2.0)
  # A dict condition of a class model is named at sampling too (it read
  # "class ids must have shape [B] = (2,), got ()").
  with pytest.raises(
      ValueError, match='^VQDiffusion: a class condition is '
      r"int \[B\] labels, got a dict with keys \['ids'\]"):
    vq_diffusion.sample(
        _model('vq_diffusion', condition='class', num_classes=3), {}, rng, 2,
        {'ids': np.zeros((2, 3), np.int32)})


def test_vq_diffusion_temperature_zero_is_the_most_likely_code():
  """As GPT's and MaskGIT's 0: all of p(x_0 | x_t) on the argmax. It divided
  by 1e-6, which split codes whose log-probs are within 1e-6 (here code 5's
  bias is 1e-7 above code 2's, the head's kernel zero)."""
  model = _model('vq_diffusion')
  tokens = jnp.full((2, *model.token_shape), model.vocab_size, jnp.int32)
  times = jnp.full((2,), model.num_timesteps, jnp.int32)
  params = model.init(jax.random.key(0), tokens, times)['params']
  head = params['head']
  bias = np.full(head['bias'].shape, -1.0, np.float32)
  bias[2], bias[5] = 1.0, 1.0 + 1e-7
  params = dict(
      params, head={
          'kernel': jnp.zeros_like(head['kernel']),
          'bias': jnp.asarray(bias)
      })
  log_p = vq_diffusion.predict_x0(model, params, tokens, model.num_timesteps,
                                  None, temperature=0.0)
  one_hot = np.broadcast_to(np.eye(model.vocab_size)[5], log_p[..., :-1].shape)
  np.testing.assert_array_equal(np.exp(log_p[..., :-1]), one_hot)
