"""batch_random_draws: the draws of the function it wraps, made in one chain
per distinct (draw, shape) instead of one per tensor."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny
from vqlab.train import batched_draws
from vqlab.train import experiment
from vqlab.train.tasks import tokenizer as tokenizer_task

SHAPES = ((3, 3, 4, 8), (3, 3, 4, 8), (8,), (3, 3, 4, 8), (5, 7), (8,), (5, 7))


def _count(closed_jaxpr, name: str) -> int:
  """Equations called `name` in the jaxpr and the jaxprs inside it."""

  def walk(jaxpr):
    return sum(
        (eqn.primitive.name == name) +
        sum(walk(sub)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns)

  return walk(closed_jaxpr.jaxpr)


def _draws(key):
  """Bits and normals of their own keys, as flax derives param keys."""
  keys = [jax.random.fold_in(key, 1000 + i) for i in range(len(SHAPES))]
  bits = [jax.random.bits(k, s) for k, s in zip(keys, SHAPES)]
  normals = [0.02 * jax.random.normal(k, s) for k, s in zip(keys, SHAPES)]
  return bits, normals


@pytest.mark.parametrize('impl,partitionable', [('threefry2x32', True),
                                                ('threefry2x32', False),
                                                ('rbg', False)])
def test_draws_are_the_same_bits_in_one_chain_per_shape(impl, partitionable):
  with jax.threefry_partitionable(partitionable):
    key = jax.random.key(7, impl=impl)
    plain = jax.jit(_draws)(key)
    batched = jax.jit(batched_draws.batch_random_draws(_draws))(key)
    jaxpr = jax.make_jaxpr(batched_draws.batch_random_draws(_draws))(key)
  for want, got in zip(plain[0], batched[0]):
    np.testing.assert_array_equal(got, want)
  _assert_same(batched[1], plain[1])
  # Bits for each distinct shape, twice: the bits and the normals are chains
  # of their own (each chain's body draws its bits).
  assert _count(jaxpr, 'random_bits') == 2 * len(set(SHAPES))
  assert _count(jax.make_jaxpr(_draws)(key), 'random_bits') == 2 * len(SHAPES)


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    return nn.Dense(16)(x), None


class _Net(nn.Module):
  """Repeated and distinct shapes, five initializers, a scanned stack."""

  @nn.compact
  def __call__(self, x):
    for features in (8, 8, 8, 16, 16):
      x = nn.GroupNorm(4)(nn.Conv(features, (3, 3))(x))
    for _ in range(3):
      x = nn.Dense(16, kernel_init=nn.initializers.normal(0.02))(x)
      x = nn.Dense(16, kernel_init=nn.initializers.uniform(0.1))(x)
    stack = nn.scan(_Block, variable_axes={'params': 0},
                    split_rngs={'params': True}, length=3)
    return stack()(x, None)[0]


def _assert_same(got, want):
  """Same tree; floats within an ulp (XLA may contract a multiply-add in one
  program and not the other), everything else equal."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if jnp.issubdtype(a.dtype, jnp.floating):
      np.testing.assert_array_max_ulp(a, b, maxulp=1)
    else:
      np.testing.assert_array_equal(a, b)


def test_flax_init_is_the_same_with_fewer_draws():
  model = _Net()
  init = lambda key: model.init(key, jnp.zeros((1, 6, 6, 4)))
  key = jax.random.key(3)
  _assert_same(
      jax.jit(batched_draws.batch_random_draws(init))(key),
      jax.jit(init)(key))
  plain_bits = _count(jax.make_jaxpr(init)(key), 'random_bits')
  batched_bits = _count(
      jax.make_jaxpr(batched_draws.batch_random_draws(init))(key),
      'random_bits')
  # Batched: conv kernels of 4 shapes; Dense kernels of one shape in the
  # chains of two initializers; the scan's own draw.
  assert (plain_bits, batched_bits) == (12, 7)


def test_the_loop_init_of_a_tokenizer_is_flax_init(monkeypatch):
  config = tiny.tokenizer_config()
  task = tokenizer_task.TokenizerTask(config)
  batch = {'image': jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)}
  key = experiment.init_key(jax.random.key(0))
  want = jax.jit(lambda k: task.init(k, {'image': jnp.zeros((8, 16, 16, 3))}))(
      key)
  # The Experiment's shapes and its init of a fresh run trace the model once.
  traces, init = [], task.init
  monkeypatch.setattr(task, 'init',
                      lambda *args: traces.append(1) or init(*args))
  init_function = experiment.init_function(task, batch)
  shapes = jax.eval_shape(init_function, key)
  got = experiment.jitted_init(task, batch, None, init_function)(key)
  assert len(traces) == 1
  assert jax.tree.map(lambda x: (x.shape, x.dtype),
                      shapes) == jax.tree.map(lambda x: (x.shape, x.dtype), got)
  _assert_same(got, want)


def test_a_function_with_effects_is_called_as_it_is(capsys):

  def noisy(key):
    jax.debug.print('drawn')
    return jax.random.normal(key, (2,))

  key = jax.random.key(0)
  got = jax.jit(batched_draws.batch_random_draws(noisy))(key)
  jax.effects_barrier()
  np.testing.assert_array_equal(got, jax.random.normal(key, (2,)))
  assert 'drawn' in capsys.readouterr().out
