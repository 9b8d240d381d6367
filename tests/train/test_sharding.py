"""The same global batch gives the same loss and gradients (random draws
included) on 1 device, on 8 data-parallel devices and on a 4 x 2 data x fsdp
mesh."""

import jax
import jax.numpy as jnp
import numpy as np

from tests import tiny
from vqlab import data as data_lib
from vqlab import quantizers
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import partitioning
from vqlab.train.tasks import tokenizer


def _loss_and_grads_on(devices, fsdp, task, state, batch, config):
  mesh_config = config.mesh.copy_and_resolve_references()
  mesh_config.fsdp = fsdp
  mesh = partitioning.make_mesh(mesh_config, devices)
  shardings = partitioning.state_shardings(state, mesh, mesh_config.rules)
  state = jax.device_put(state, shardings)
  batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
  fn = jax.jit(task.loss_and_grads)
  with jax.set_mesh(mesh):
    grads, _, _, metrics = fn(state.params, state.model_state, batch,
                              jax.random.key(7), jnp.int32(1))
  if fsdp > 1:  # Some parameters really are split over devices.
    assert any(not leaf.sharding.is_fully_replicated
               for leaf in jax.tree.leaves(state.params))
  return jax.device_get(grads), jax.device_get(metrics)


def _with_random_draws(config):
  """The tiny tokenizer with Regularized VQ, whose stochastic mask and Gumbel
  noise are drawn per element of the batch: every mesh must draw the same
  ones (a key drawn alike on every shard would not)."""
  quantizer = quantizers.default_config('regularized')
  quantizer.update(codebook_size=32, embedding_dim=4)
  config.model.quantizer = quantizer
  return config


def test_one_device_equals_eight_devices_equals_fsdp():
  assert jax.device_count() == 8
  config = experiment_config.validate(
      _with_random_draws(tiny.tokenizer_config()), num_devices=8)
  task = tokenizer.build(config)
  source = data_lib.build(config.data, split='train', global_batch_size=8)
  batch = {'image': next(source.batches(0))['image']}
  key = experiment.init_key(jax.random.key(0))
  state = jax.jit(task.init)(key, batch)
  devices = jax.devices()
  # The loop's init draws the same state on a mesh that splits params.
  mesh_config = config.mesh.copy_and_resolve_references()
  mesh_config.fsdp = 2
  mesh = partitioning.make_mesh(mesh_config, devices)
  abstract_batch = {
      'image':
          jax.ShapeDtypeStruct(batch['image'].shape, batch['image'].dtype,
                               sharding=partitioning.batch_sharding(mesh))
  }
  with jax.set_mesh(mesh):
    sharded_state = experiment.jitted_init(
        task, abstract_batch,
        partitioning.state_shardings(state, mesh, mesh_config.rules))(key)
  assert any(not leaf.sharding.is_fully_replicated
             for leaf in jax.tree.leaves(sharded_state.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded_state),
               jax.device_get(state))
  results = [
      _loss_and_grads_on(devices[:1], 1, task, state, batch, config),
      _loss_and_grads_on(devices, 1, task, state, batch, config),
      _loss_and_grads_on(devices, 2, task, state, batch, config)
  ]
  (grads_1, metrics_1) = results[0]
  assert metrics_1['g_adv'] != 0 and metrics_1['d_loss'] > 0  # GAN is on.
  for grads, metrics in results[1:]:
    for key in ('loss', 'rec_loss', 'quantizer_loss', 'd_loss',
                'adaptive_weight'):
      np.testing.assert_allclose(metrics[key], metrics_1[key], rtol=1e-5,
                                 err_msg=key)
    # The batch's code histogram (its usage and perplexity come from it).
    np.testing.assert_array_equal(metrics['quantizer/code_counts'][''],
                                  metrics_1['quantizer/code_counts'][''])
    jax.tree.map(_assert_close_to_scale, grads, grads_1)


def _assert_close_to_scale(got, expected, tolerance=1e-5):
  """max |got - expected| <= tolerance * max(1, max |expected|) per leaf.

  Summation order differs between meshes, so float32 results differ in the
  last bits relative to the leaf's scale (gradients here reach ~2).
  """
  scale = max(1.0, float(np.max(np.abs(expected))))
  assert float(np.max(np.abs(got - expected))) <= tolerance * scale


def test_split_over_batch_splits_what_divides_inside_a_mesh():
  mesh = partitioning.make_mesh(partitioning.default_config(),
                                jax.devices()[:4])
  made = jax.jit(lambda: partitioning.split_over_batch((jnp.zeros(
      (8, 3)), jnp.zeros((6, 3)), jnp.zeros(()))))
  with jax.set_mesh(mesh):
    split, odd, scalar = made()
  assert [s.data.shape for s in split.addressable_shards] == [(2, 3)] * 4
  assert [s.data.shape for s in odd.addressable_shards] == [(6, 3)] * 4
  assert scalar.shape == ()
  outside = jax.jit(lambda: partitioning.split_over_batch(jnp.zeros((8, 3))))
  assert outside().shape == (8, 3)  # No mesh: unchanged.
  # And back whole on every device, as the host reads it on every process.
  whole = jax.jit(lambda x: partitioning.whole_on_every_device(x * 2))
  with jax.set_mesh(mesh):
    doubled = whole(split)
  assert doubled.sharding.is_fully_replicated


def test_sample_features_are_split_then_whole_on_every_device(monkeypatch):
  """The samples' I3D (and Inception) pass runs split over the devices and
  gives features every process can read (device_get of a split array
  fails where the mesh spans other hosts)."""
  from vqlab.evals import fvd  # pylint: disable=g-import-not-at-top
  from vqlab.train import sampling  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(fvd, 'features',
                      lambda params, v, n: v[:, :n].mean(axis=(1, 2, 3)))
  sampling.i3d_features.clear_cache()
  mesh = partitioning.make_mesh(partitioning.default_config(),
                                jax.devices()[:4])
  with jax.set_mesh(mesh):
    features = sampling.i3d_features({}, jnp.ones((8, 3, 2, 2, 3)), 2)
  sampling.i3d_features.clear_cache()
  assert features.shape == (8, 3) and features.sharding.is_fully_replicated
