"""Text-to-image end to end: captioned shapes, captions through the frozen
all-MiniLM-L6-v2 (or the trainable byte encoder), a tiny VQ-Diffusion trained
on a tiny tokenizer's tokens, samples decoded to images."""

import jax
import jax.numpy as jnp
import numpy as np

from configs.vq_diffusion import tiny_text
from tests import retrace
from vqlab.train import experiment


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
