"""Every registered quantizer: registry, index <-> code round trips, input
errors, the configs/vqgan files, and a few FSQ VQGAN train steps that lower
the loss (the other quantizers train in tests/train). Formula tests per
quantizer are in tests/quantizers/test_<module>.py."""

import functools
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import paths
from tests import tiny
from tests.compile_options import FAST_COMPILE
from vqlab import quantizers
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.train import experiment_config
from vqlab.train.tasks import tokenizer

ROOT = paths.ROOT


def _config(name, **overrides):
  config = quantizers.default_config(name)
  config.update(overrides)
  return config


# Small variants of every quantizer and option.
VARIANTS = {
    'vq':
        _config('vq', codebook_size=32, embedding_dim=4),
    'vq_ema_restart':
        _config('vq', codebook_size=32, embedding_dim=4, ema=True,
                restart_threshold=0.5),
    'vq_l2_projection':
        _config('vq', codebook_size=32, embedding_dim=6, l2_normalize=True,
                projection_dim=3),
    'gumbel':
        _config('gumbel', codebook_size=32, embedding_dim=4),
    'regularized':
        _config('regularized', codebook_size=32, embedding_dim=4),
    'lfq':
        _config('lfq', codebook_size=64),
    'lfq_factorized':
        _config('lfq', codebook_size=64, factor_bits=(2, 4), entropy_groups=2),
    'fsq':
        _config('fsq', levels=(5, 4, 3)),
}


def _apply(q, variables, *args, method=None, **kwargs):
  """q.apply under jit (eager flax applies compile op by op: slow on CPU)."""
  fn = lambda v, *a: q.apply(v, *a, method=method, **kwargs)
  return jax.jit(fn)(variables, *args)


def _init(q, z):
  rngs = {'params': jax.random.key(0), 'quantizer': jax.random.key(1)}
  return jax.jit(functools.partial(q.init, train=False))(rngs, z)


def test_registry_names_and_defaults_build():
  assert quantizers.names() == ['fsq', 'gumbel', 'lfq', 'regularized', 'vq']
  expected_dims = {
      'fsq': (4, 1000),
      'gumbel': (16, 512),
      'lfq': (10, 1024),
      'regularized': (16, 512),
      'vq': (16, 512)
  }
  for name in quantizers.names():
    q = quantizers.build(quantizers.default_config(name))
    assert (q.code_dim, q.codebook_size) == expected_dims[name], name


# Codes are distinct fixed points of the lookup here (LFQ: sign(c) = c); not
# for Gumbel (codes -> logits head), projections, or FSQ (tanh bound; its
# mixed-radix round trip is tested in tests/quantizers/test_fsq.py).
FIXED_POINTS = ('vq', 'vq_ema_restart', 'regularized', 'lfq', 'lfq_factorized')


@pytest.mark.parametrize('config', [
    _config('gumbel', codebook_size=32, embedding_dim=4),
    _config('lfq', codebook_size=64, entropy_anneal_steps=10)
], ids=['gumbel', 'lfq_annealed'])
def test_quantizers_with_schedules_apply_with_params_alone(config):
  """Inference with `{'params': ...}` alone (no quantizer_state step counter)
  gives the codes of the full variables, whatever their step; training
  without the counter is refused by name."""
  q = quantizers.build(config)
  z = jax.random.normal(jax.random.key(2), (2, 3, q.code_dim))
  variables = _init(q, z)
  later = {**variables, 'quantizer_state': {'step': jnp.int32(7)}}
  want = _apply(q, later, z)
  got = _apply(q, {'params': variables.get('params', {})}, z)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.quantized, want.quantized)
  with pytest.raises(ValueError, match="train=True needs its step counter"):
    q.apply({'params': variables.get('params', {})}, z, train=True,
            rngs={'quantizer': jax.random.key(0)})


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_indices_to_codes_inverts_quantize(variant):
  """indices_to_codes(out.indices) == out.quantized at inference, and the
  codes of every id quantize back to that id where codes are fixed points."""
  q = quantizers.build(VARIANTS[variant])
  factor_bits = tuple(VARIANTS[variant].get('factor_bits', ()))
  z = jax.random.normal(jax.random.key(2), (3, 5, q.code_dim))

  @jax.jit  # One compile: eager flax calls are slow on CPU.
  def round_trip(z):
    rngs = {'params': jax.random.key(0), 'quantizer': jax.random.key(1)}
    variables = q.init(rngs, z, train=False)
    out = q.apply(variables, z)
    codes = q.apply(variables, out.indices, method=q.indices_to_codes)
    ids = jnp.arange(q.codebook_size)
    kwargs = {'factorized': False} if factor_bits else {}
    all_codes = q.apply(variables, ids, method=q.indices_to_codes, **kwargs)
    again = q.apply(variables, all_codes[:, None, :]).indices[:, 0]
    if factor_bits:
      again = quantizers.lfq.combine_factors(again, factor_bits)
    return out, codes, again

  out, codes, again = round_trip(z)
  assert out.indices.dtype == jnp.int32
  assert out.indices.shape == z.shape[:-1] + (
      (len(factor_bits),) if factor_bits else ())
  np.testing.assert_allclose(codes, out.quantized, atol=1e-6)
  if variant in FIXED_POINTS:
    np.testing.assert_array_equal(again, np.arange(q.codebook_size))


@pytest.mark.parametrize(
    'variant', ['fsq', 'gumbel', 'lfq', 'lfq_factorized', 'regularized', 'vq'])
def test_rejects_bad_inputs(variant):
  q = quantizers.build(VARIANTS[variant])
  # Concrete zeros of the right shapes: the checks run before any compute,
  # so nothing is compiled.
  variables = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(functools.partial(q.init, train=False),
                     {'params': jax.random.key(0)}, jnp.zeros((1, q.code_dim))))
  with pytest.raises(ValueError, match=rf'shape \[\.\.\., {q.code_dim}\]'):
    q.apply(variables, jnp.zeros((2, q.code_dim + 1)))
  with pytest.raises(TypeError, match='floating'):
    q.apply(variables, jnp.zeros((2, q.code_dim), jnp.int32))
  with pytest.raises(TypeError, match='integers'):
    q.apply(variables, jnp.array([0.0]), method=q.indices_to_codes)
  if variant == 'lfq_factorized':  # Factor 0 has 2 bits: ids 0..3.
    bad, low = jnp.array([[4, 0]]), jnp.array([[0, -1]])
    with pytest.raises(ValueError, match=r'shape \[\.\.\., 2\]'):
      q.apply(variables, jnp.array([[0, 0, 0]]), method=q.indices_to_codes)
  else:
    bad, low = jnp.array([0, q.codebook_size]), jnp.array([-1, 0])
  for ids in (bad, low):
    with pytest.raises(ValueError, match='out of range'):
      q.apply(variables, ids, method=q.indices_to_codes)
  # No ids at all: nothing out of range, no codes.
  empty = q.apply(variables, bad[:0], method=q.indices_to_codes)
  assert empty.shape == (0, q.code_dim)


@pytest.mark.parametrize(
    'name, overrides, message',
    [
        ('vq', {
            'restart_threshold': 1.0
        }, r'^quantizer\.restart_threshold: 1\.0 > 0 needs ema=True'),
        ('vq', {
            'ema': True,
            'beta_on_codebook': True
        }, r'^quantizer\.beta_on_codebook: True needs ema=False'),
        ('vq', {
            'ema': True,
            'decay': 1.0
        }, r'^quantizer\.decay: must be in \[0, 1\), got 1\.0$'),
        # Settings the quantizer would ignore: accepted without a word before.
        ('vq', {
            'decay': 0.9
        },
         r'^quantizer\.decay: 0\.9 does nothing without ema=True: leave it at '
         r'0\.99$'),
        ('lfq', {
            'entropy_weight_final': 0.001
        }, r'^quantizer\.entropy_weight_final: 0\.001 does nothing without '
         r'entropy_anneal_steps > 0'),
        ('lfq', {
            'codebook_size': 1000
        }, r'^quantizer\.codebook_size: must be a power of 2'),
        ('lfq', {
            'factor_bits': (4, 4)
        }, r'^quantizer\.factor_bits: \(4, 4\) must be positive and sum to '
         r'log2\(codebook_size\) = 10$'),
        ('lfq', {
            'entropy_groups': 11
        }, r'^quantizer\.entropy_groups: must be in \[1, 10\], got 11$'),
        ('fsq', {
            'levels': (8, 2)
        }, r'^quantizer\.levels: must be integers >= 3'),
        ('regularized', {
            'mask_ratio': 1.5
        }, r'^quantizer\.mask_ratio: must be in \[0, 1\], got 1\.5$'),
        ('gumbel', {
            'temperature': 0.0
        }, r'^quantizer\.temperature: must be > 0, got 0\.0$'),
        ('gumbel', {
            'temperature_anneal_steps': 0,
            'temperature_final': 0.5
        }, r'^quantizer\.temperature_final: 0\.5 does nothing without '
         r'temperature_anneal_steps > 0'),
        ('regularized', {
            'mask_ratio': 0.0,
            'gumbel_temperature': 0.3
        }, r'^quantizer\.gumbel_temperature: 0\.3 does nothing without '
         r'mask_ratio > 0'),
    ])
def test_impossible_values_are_named(name, overrides, message):
  with pytest.raises(ConfigError, match=message):  # One line from main.py.
    quantizers.build(_config(name, **overrides))


# ------------------------------------------------------------ configs/vqgan ---
CONFIG_FILES = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(ROOT, 'configs', 'vqgan'))
    if f.endswith('.py') and not f.startswith('_'))


def test_a_vqgan_config_per_quantizer():
  names = set()
  for module in CONFIG_FILES:
    config = importlib.import_module(f'configs.vqgan.{module}').get_config()
    config = experiment_config.validate(config, num_devices=8)
    q = quantizers.build(config.model.quantizer)  # Values checked too.
    tokenizers.build(config.model)  # Any tokenizer takes any quantizer.
    names.add(config.model.quantizer.name)
    if module == 'regularized_f16':  # The paper's setting.
      assert config.model.quantizer.codebook_size == 1024
      assert config.model.quantizer.mask_ratio == 0.4
      assert len(config.model.channel_multipliers) == 5  # f = 16.
    if module == 'lfq_f16':
      assert q.codebook_size == 2**18 and q.code_dim == 18
  assert names == set(quantizers.names())


# ---------------------------------------------- a few FSQ VQGAN train steps ---
# The other quantizers train in a tokenizer step elsewhere: LFQ (MAGVIT-v2,
# steps that lower the loss) in tests/train/tasks/test_magvit2_training.py,
# Gumbel (with its temperature schedule) and the EMA codebook with dead-code
# restarts in tests/train/test_microbatches.py, Regularized VQ in
# tests/train/tasks/test_tokenizer_losses.py (PCL), the plain VQ in every
# tiny tokenizer run. FSQ trains in no other test.
def test_fsq_vqgan_train_steps_lower_the_loss():
  config = tiny.tokenizer_config(image_size=8)
  config.model.channel_multipliers = (1,)  # Smallest model: fast compiles.
  config.model.num_res_blocks = 0
  config.model.mid_attention = False
  config.discriminator.num_layers = 1
  config.discriminator.base_features = 4
  config.discriminator.use_norm = False
  config.loss.disc_start = 1000  # GAN off: loss = reconstruction + quantizer.
  config.loss.adaptive_weight = False
  config.optimizer.generator.learning_rate = 3e-3
  config.model.quantizer = _config('fsq', levels=(5, 3, 3))
  config = experiment_config.validate(config, num_devices=8)
  task = tokenizer.build(config)
  batch = {
      'image':
          jax.random.uniform(jax.random.key(0), (8, 8, 8, 3), minval=-1,
                             maxval=1)
  }
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(1),
                                                            batch)
  step = jax.jit(task.train_step, compiler_options=FAST_COMPILE)
  losses = []
  for _ in range(5):  # One batch and one rng: only the parameters change.
    state, metrics = step(state, batch, jax.random.key(2))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0] - 0.01, losses
  assert 0 < metrics['quantizer/usage'] <= 1
