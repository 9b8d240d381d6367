"""The shared transformer: causal masking and the KV-cache decode path."""

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.nn import transformer


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
  # One position per call through the key/value cache, same parameters.
  decoder = transformer.Transformer(num_layers=2, num_heads=2, mlp_dim=16,
                                    decode=True)
  cache = decoder.init(jax.random.key(1), x)['cache']
  steps = []
  for t in range(6):
    out, variables = decoder.apply({
        'params': params,
        'cache': cache
    }, x[:, t:t + 1], mutable=['cache'])
    cache = variables['cache']
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
