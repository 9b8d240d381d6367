"""The shared transformer: causal masking, the KV-cache decode path, and
the scanned and rematerialized layer stacks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.compile_options import FAST_COMPILE
from vqlab import generators
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.nn import stack
from vqlab.nn import transformer


def _cached_steps(decoder, params, x):
  """decoder (decode=True) run one position per call over x [B, L, D], its
  key/value cache carried from call to call: [B, L, D]."""
  cache = jax.eval_shape(decoder.init, jax.random.key(1), x)['cache']
  cache = jax.tree.map(lambda c: jnp.zeros(c.shape, c.dtype), cache)
  step = jax.jit(
      lambda cache, x_t: decoder.apply({
          'params': params,
          'cache': cache
      }, x_t, mutable=['cache']), compiler_options=FAST_COMPILE)
  outputs = []
  for t in range(x.shape[1]):
    out, variables = step(cache, x[:, t:t + 1])
    cache = variables['cache']
    outputs.append(out)
  return jnp.concatenate(outputs, axis=1)


def test_causal_mask_and_cached_decode_equal_full_pass():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  model = transformer.Transformer(num_layers=2, num_heads=2, mlp_dim=16)
  mask = transformer.causal_mask(6)
  params = model.init(jax.random.key(1), x, mask)['params']
  full = model.apply({'params': params}, x, mask)
  # Changing position 3 leaves positions 0..2 untouched, changes later ones.
  changed = model.apply({'params': params}, x.at[:, 3].set(0.0), mask)
  np.testing.assert_array_equal(full[:, :3], changed[:, :3])
  assert float(jnp.max(jnp.abs(full[:, 3:] - changed[:, 3:]))) > 1e-3
  # `causal=True` (GPT's; cuDNN takes it as a flag) is the same mask.
  flagged = transformer.Transformer(num_layers=2, num_heads=2, mlp_dim=16,
                                    causal=True)
  np.testing.assert_allclose(flagged.apply({'params': params}, x), full,
                             atol=1e-6)
  # One position per call through the key/value cache, same parameters.
  decoder = transformer.Transformer(num_layers=2, num_heads=2, mlp_dim=16,
                                    decode=True)
  np.testing.assert_allclose(_cached_steps(decoder, params, x), full, atol=1e-5)


def _stacked_everywhere(tree):
  """Every {'block_0', ...} dict of an unrolled param tree stacked."""
  if not isinstance(tree, dict):
    return tree
  tree = {k: _stacked_everywhere(v) for k, v in tree.items()}
  return stack.stack_layers(tree) if 'block_0' in tree else tree


def test_scanned_and_rematerialized_stacks_compute_the_unrolled_stack():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  mask = transformer.causal_mask(6)
  unrolled = transformer.Transformer(num_layers=3, num_heads=2, mlp_dim=16)
  params = unrolled.init(jax.random.key(1), x, mask)['params']

  def value_and_grad(model, p):
    loss = lambda p: jnp.sum(model.apply({'params': p}, x, mask)**2)
    return jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)(p)

  want, want_grads = value_and_grad(unrolled, params)
  want_outputs = unrolled.apply({'params': params}, x, mask)
  stacked = stack.stack_layers(params)
  assert jax.tree.leaves(stacked['blocks'])[0].shape[0] == 3
  for scan, remat in ((False, 'full'), (True, 'none'), (True, 'dots')):
    model = transformer.Transformer(num_layers=3, num_heads=2, mlp_dim=16,
                                    scan_layers=scan, remat_policy=remat)
    value, grads = value_and_grad(model, stacked if scan else params)
    if scan:
      grads = stack.unstack(grads)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 grads, want_grads)
  # The decoding cache gets a layer axis too: cached steps = full pass.
  decoder = transformer.Transformer(num_layers=3, num_heads=2, mlp_dim=16,
                                    decode=True, scan_layers=True)
  np.testing.assert_allclose(_cached_steps(decoder, stacked, x), want_outputs,
                             atol=1e-5)
  with pytest.raises(ConfigError, match=r'model\.remat_policy'):
    transformer.stack_options(
        ml_collections.ConfigDict({
            'scan_layers': True,
            'remat_policy': 'some'
        }), 'model')


@pytest.mark.parametrize('name', ['gpt', 'maskgit', 'vq_diffusion', 'titok'])
def test_every_transformer_model_scans_to_the_same_numbers(name):
  registry = tokenizers if name == 'titok' else generators
  config = registry.default_config(name)
  rng = jax.random.key(0)
  if name == 'titok':
    inputs = (jax.random.uniform(rng, (2, 32, 32, 3), minval=-1.0),)
  else:
    inputs = (jax.random.randint(rng, (2, 4, 4), 0, config.vocab_size),)
    if name == 'gpt':
      inputs = (inputs[0].reshape(2, 16),)
    if name == 'vq_diffusion':
      inputs += (jnp.array([3, 70]),)
  outputs = {}
  for scan in (False, True):
    config.scan_layers = scan
    model = registry.build(config)
    if not scan:
      variables = model.init(rng, *inputs)
    else:
      variables = {
          **variables, 'params': _stacked_everywhere(variables['params'])
      }
    outputs[scan] = jax.jit(model.apply,
                            compiler_options=FAST_COMPILE)(variables, *inputs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               outputs[True], outputs[False])


def test_mlp_hidden_dropout_is_a_switch():
  """ViT's MLP drops its hidden units; BERT's (MaskGIT, MAGVIT) only after
  the MLP, which the block does: without hidden dropout a train-mode MLP is
  its eval-mode self."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  for hidden, same in ((True, False), (False, True)):
    mlp = transformer.MlpBlock(16, dropout_rate=0.5, hidden_dropout=hidden)
    variables = mlp.init(jax.random.key(1), x)
    train = mlp.apply(variables, x, train=True,
                      rngs={'dropout': jax.random.key(2)})
    assert np.allclose(train, mlp.apply(variables, x)) == same
  config = generators.default_config('maskgit')
  config.mlp_hidden_dropout = False
  assert generators.build(config).mlp_hidden_dropout is False
