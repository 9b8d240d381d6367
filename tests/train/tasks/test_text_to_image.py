"""Text-to-image end to end: captioned shapes, captions through the frozen
all-MiniLM-L6-v2 (or the trainable byte encoder), a tiny VQ-Diffusion trained
on a tiny tokenizer's tokens, samples decoded to images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.vq_diffusion import coco256_text
from configs.vq_diffusion import tiny_text
from tests import retrace
from vqlab import data as data_lib
from vqlab.errors import ConfigError
from vqlab.train import experiment
from vqlab.train import pretokenize

# No test here changes the tokenizer run on disk.
pytestmark = pytest.mark.usefixtures('one_tokenizer_load_per_module')


def _devices():
  return jax.devices()[:2]


def _config(tokenizer_dir, encoder='frozen', steps=3):
  config = tiny_text.get_config()
  config.tokenizer.workdir = tokenizer_dir
  config.tokens.source = 'on_the_fly'
  config.data.image_size = 16
  config.model.update(vocab_size=32, num_timesteps=20, width=32, num_layers=2,
                      num_heads=2, mlp_dim=64, text_encoder=encoder)
  config.eval.lpips = config.eval.fid = 'off'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 0
  config.train.num_steps = steps
  config.train.batch_size = config.eval.batch_size = 8
  config.train.log_every = 1
  config.train.eval_every = config.train.checkpoint_every = 0
  config.eval.max_batches = 1
  config.eval.num_images = 4
  config.sample.diffusion_steps = 5
  return config


def test_text_conditional_run_lowers_its_loss_and_samples_decode(
    tokenizer_dir, tmp_path):
  exp = experiment.Experiment(_config(tokenizer_dir), str(tmp_path), _devices())
  batches = exp.train_data.batches()
  assert next(batches)['text_ids'].shape == (8, 16)  # Captions -> ids.
  state, _ = exp.initial_state()
  ce = []
  with jax.set_mesh(exp.mesh), retrace.traced_once():
    for _ in range(20):
      state, metrics = exp.train_step(state, exp.global_batch(next(batches)))
      ce.append(float(metrics['x0_ce']))
    result, images = exp.evaluate(state)  # Eval samples the eval captions.
  assert np.mean(ce[-5:]) < np.mean(ce[:5]) - 0.1, ce
  assert np.isfinite(result['loss'])
  assert images['samples'].shape == (8, 16, 16, 3)

  prompts = [
      'a red circle above a blue square',
      'a green triangle below a yellow square'
  ] * 4
  cond = exp.task.text.host_arrays(prompts)
  with jax.set_mesh(exp.mesh):
    # The batch size evaluate used: the compiled sampler is reused.
    images = exp.sample_images(state, jax.random.key(0), cond, batch_size=8)
  assert images.shape == (8, 16, 16, 3) and np.all(np.isfinite(images))
  # The caption reaches the denoiser: another caption, other predictions.
  task = exp.task
  x_t = jnp.full((2, 8, 8), 32)
  log_p = jax.jit(lambda params, cond, frozen: task.model.apply(
      {'params': params}, x_t, jnp.full(
          (2,), 20), task.text.condition(cond, frozen)))(state.params['model'],
                                                         task.text.host_arrays(
                                                             prompts[:2]),
                                                         exp.frozen)
  assert float(jnp.abs(log_p[0] - log_p[1]).max()) > 1e-4


def test_token_shards_refuse_images_of_several_captions(tokenizer_dir,
                                                        tmp_path):
  """coco_captions' images hold 5 captions, of which training draws one each
  epoch: shards kept the one drawn when they were made, for every epoch."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from tests.data import test_captions  # pylint: disable=g-import-not-at-top
  config = _config(tokenizer_dir)
  config.tokens.source = 'shards'
  config.data = test_captions._with(  # pylint: disable=protected-access
      coco256_text.get_config().data, image_size=16, shuffle_buffer=8)
  assert coco256_text.get_config().tokens.source == 'on_the_fly'
  with tfds.testing.mock_data(
      num_examples=test_captions.NUM_COCO,
      as_dataset_fn=test_captions._mock_coco_as_dataset):  # pylint: disable=protected-access
    with pytest.raises(
        ConfigError, match=r"^tokens\.source: token shards "
        r"keep one caption per image, but the images of data "
        r"'coco_captions' hold several"):
      pretokenize.tokenize(config, str(tmp_path), devices=_devices())


def test_samples_take_the_eval_captions_in_order(tokenizer_dir, tmp_path):
  """Sample i is conditioned on eval caption i (cycling over the split), not
  on the first eval batch's captions over and over."""
  config = _config(tokenizer_dir)
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  source = data_lib.build(config.data, split='eval', global_batch_size=8)
  captions = [
      str(c)
      for b in source.batches()
      for c, m in zip(b['caption'], b['mask'])
      if m
  ]
  assert len(captions) > 16
  cond = exp.task.sample_conditions(8, 8)
  want = exp.task.text.host_arrays(captions[8:16])
  for key in want:
    np.testing.assert_array_equal(cond[key], want[key])
