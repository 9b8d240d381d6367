"""Text-to-image end to end: captioned shapes, captions through the frozen
all-MiniLM-L6-v2 (or the trainable byte encoder), a tiny VQ-Diffusion trained
on a tiny tokenizer's tokens, samples decoded to images."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.vq_diffusion import tiny_text
from tests import tiny
from vqlab.train import loop


def _devices():
  return jax.devices()[:2]


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  return tiny.tokenizer_run(str(tmp_path_factory.mktemp('tokenizer')),
                            _devices())


def _config(tokenizer_dir, encoder='frozen', steps=3):
  config = tiny_text.get_config()
  config.tokenizer.workdir = tokenizer_dir
  config.tokens.source = 'on_the_fly'
  config.data.image_size = 16
  config.model.update(vocab_size=32, num_timesteps=20, width=32,
                      num_layers=2, num_heads=2, mlp_dim=64,
                      text_encoder=encoder)
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
  config = _config(tokenizer_dir, steps=30)
  ce = []
  result = loop.train_and_evaluate(
      config, str(tmp_path), devices=_devices(),
      step_callback=lambda step, m: ce.append(float(m['x0_ce'])))
  assert np.mean(ce[-5:]) < np.mean(ce[:5]) - 0.1, ce
  assert np.isfinite(result['loss'])
  grid, = glob.glob(os.path.join(str(tmp_path), 'images', 'eval_samples_*.png'))
  assert np.asarray(Image.open(grid)).shape == (38, 74, 3)

  exp = loop.Experiment(config, str(tmp_path), _devices())
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  prompts = ['a red circle above a blue square',
             'a green triangle below a yellow square'] * 2
  cond = exp.task.text.host_arrays(prompts)
  images = exp.sample_images(state, jax.random.key(0), cond)
  assert images.shape == (4, 16, 16, 3) and np.all(np.isfinite(images))
  # The caption reaches the denoiser: another caption, other predictions.
  task = exp.task
  x_t = jnp.full((2, 8, 8), 32)
  log_p = task.model.apply(
      {'params': state.params['model']}, x_t, jnp.full((2,), 20),
      task.text.condition(task.text.host_arrays(prompts[:2]), exp.frozen))
  assert float(jnp.abs(log_p[0] - log_p[1]).max()) > 1e-4


def test_byte_level_text_encoder_trains(tokenizer_dir, tmp_path):
  config = _config(tokenizer_dir, encoder='bytes', steps=2)
  exp = loop.Experiment(config, str(tmp_path), _devices())
  batch = next(exp.train_data.batches())
  assert batch['text_ids'].shape == (8, 16) and 'caption' not in batch
  state, _ = exp.initial_state()
  state, metrics = exp.train_step(state, exp.global_batch(batch))
  assert np.isfinite(metrics['loss'])
  assert 'text_encoder' in state.params['model']
