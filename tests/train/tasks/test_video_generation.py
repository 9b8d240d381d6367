"""MaskGIT over MAGVIT-v2 video tokens (factorized LFQ codes): --mode=sample
writes GIFs, and frame prediction keeps the observed frames and reports the
PSNR of the predicted ones."""

import glob
import os

import jax
import numpy as np
import pytest

from configs.maskgit import ucf101_tiny_cpu
from tests import compile_options
from tests import tiny
from vqlab import generators
from vqlab.errors import ConfigError
from vqlab.evals import image_metrics
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import sampling
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import generator_checks

# No test here changes the tokenizer run on disk.
pytestmark = pytest.mark.usefixtures('one_tokenizer_load_per_module')


def _devices():
  return jax.devices()[:2]


@pytest.fixture(scope='module')
def video_generator(tmp_path_factory):
  """An untrained (initial-checkpoint) video MaskGIT on the tiny MAGVIT-v2."""
  tokenizer_dir = tiny.video_tokenizer_run(
      str(tmp_path_factory.mktemp('magvit2')), _devices())
  config = ucf101_tiny_cpu.get_config()
  config.tokenizer.workdir = tokenizer_dir
  config.tokens.source = 'on_the_fly'
  config.data.num_eval_examples = 6
  config.model.factor_vocab_sizes = (32, 32)
  config.model.width, config.model.num_layers = 32, 1
  config.model.mlp_dim = 64
  config.eval.lpips = config.eval.fid = 'off'
  config.eval.batch_size = 4
  config.sample.num_steps = 3
  config.sample.num_samples, config.sample.batch_size = 4, 2
  workdir = tiny.initial_run(config, str(tmp_path_factory.mktemp('generator')),
                             _devices())
  return config, workdir


def test_samples_are_gifs(video_generator):
  config, workdir = video_generator
  result = sampling.sample(config, workdir, devices=_devices())
  assert len(glob.glob(os.path.join(result['samples_dir'], '*.gif'))) == 4
  assert 'prediction_psnr' not in result


def test_frame_prediction_keeps_the_observed_frames(video_generator):
  config, workdir = video_generator
  config = experiment_config.validate(config, 2)
  config.unlock()
  config.sample.observed_frames = 1
  result = sampling.sample(config, workdir, devices=_devices())

  # Directly: the first two eval clips, their first latent frame given.
  exp = experiment.Experiment(config, workdir, _devices())
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  clips, labels = next(exp.task.eval_clips(2))
  predicted = np.asarray(
      exp.sample_images(
          state, jax.random.fold_in(jax.random.key(config.sample.seed), 0),
          labels, batch_size=2, observed=clips))
  # Pixel frame 0 is latent frame 0 only (a causal decoder): it is the
  # clip's own reconstruction; frames 1-4 are predicted.
  assert exp.task.observed_pixel_frames(5) == 1
  tok = exp.task.tokenizer
  reconstruction = np.asarray(compile_options.reconstruct(tok, clips))
  np.testing.assert_allclose(predicted[:, 0], reconstruction[:, 0], atol=1e-5)
  psnr = _frame_psnr(clips[:, 1:], predicted[:, 1:])
  assert result['prediction_psnr'] == pytest.approx(
      float(np.mean(np.concatenate([psnr, _second_batch_psnr(exp, state)]))),
      rel=1e-5)


def test_clips_the_tokenizer_cannot_take_are_a_config_error(
    video_generator, tmp_path):
  config, _ = video_generator
  config = config.copy_and_resolve_references()
  config.data.num_frames = 6  # The tokenizer takes 1 + 2k.
  with pytest.raises(
      ConfigError, match=r'^data\.num_frames: inputs of shape '
      r'\(6, 16, 16, 3\) do not fit the tokenizer in .*5 or 7 '
      r'frames ok; got 6'):
    experiment.Experiment(config, str(tmp_path), _devices())


def test_eval_clips_cycle_through_every_clip_in_order(video_generator):
  # 6 eval clips in batches of 4: the second batch is clips 4, 5, 0, 1 (the
  # leftover 4 and 5 were dropped: samples 4 and 5 continued clips 0 and 1).
  config, workdir = video_generator
  exp = experiment.Experiment(config, workdir, _devices())
  one_by_one = exp.task.eval_clips(1)
  clips = np.concatenate([next(one_by_one)[0] for _ in range(6)])
  batches = exp.task.eval_clips(4)
  got = np.concatenate([next(batches)[0] for _ in range(3)])
  np.testing.assert_array_equal(got, clips[np.arange(12) % 6])


def _second_batch_psnr(exp, state):
  batches = exp.task.eval_clips(2)
  next(batches)
  clips, labels = next(batches)
  predicted = exp.sample_images(
      state, jax.random.fold_in(jax.random.key(exp.config.sample.seed), 1),
      labels, batch_size=2, observed=clips)
  return _frame_psnr(clips[:, 1:], predicted[:, 1:])


def _frame_psnr(clips, predicted):
  """PSNR of each frame [B, T, ...], averaged over the T frames -> [B]."""
  b, t = clips.shape[:2]
  frames = lambda v: np.asarray(v).reshape((b * t,) + v.shape[2:])
  return np.asarray(image_metrics.psnr(frames(clips),
                                       frames(predicted))).reshape(b, t).mean(1)


def test_frame_prediction_needs_fewer_observed_than_latent_frames(
    video_generator):
  config, workdir = video_generator
  config = experiment_config.validate(config, 2)
  config.unlock()
  config.sample.observed_frames = 3  # All 3 latent frames.
  with pytest.raises(
      ConfigError, match=r'sample.observed_frames: 3, but the '
      r'tokens have shape \(3, 8, 8\)'):
    sampling.sample(config, workdir, devices=_devices())


def test_training_frame_prediction_needs_fewer_observed_than_latent_frames(
    video_generator, tmp_path):
  config, _ = video_generator
  config = config.copy_and_resolve_references()
  config.loss.observed_frames = 3
  with pytest.raises(
      ConfigError, match=r'^loss.observed_frames: 3, but the tokens have '
      r'shape \(3, 8, 8\)'):
    experiment.Experiment(config, str(tmp_path), _devices())


@pytest.mark.parametrize('name', ['gpt', 'vq_diffusion'])
def test_gpt_and_vq_diffusion_refuse_factorized_codes_in_one_line(
    video_generator, name):
  config, _ = video_generator
  tokenizer = trained_tokenizer.load(config.tokenizer.workdir)
  assert tokenizer.factor_vocab_sizes == (32, 32)
  model = generators.default_config(name)
  model.vocab_size = 1024
  if name == 'gpt':
    model.length = 3 * 8 * 8
  else:
    model.token_shape = (3, 8, 8)
  with pytest.raises(
      ConfigError, match=rf'^model.name: {name} models plain indices; .*'
      'gives factorized codes: use maskgit'):
    generator_checks.check_model_fits(model, tokenizer, (5, 16, 16, 3))


def test_video_maskgit_trains_on_the_tokens_of_clips(video_generator, tmp_path):
  """Two train steps on clips encoded on the fly, in 2 microbatches:
  factorized tokens in, every param of the tied-head MaskGIT moves, the loss
  is finite. Frame prediction for every clip: 2 of 3 latent frames given,
  so at most the last 64 of 192 tokens are masked."""
  config, _ = video_generator
  config = experiment_config.validate(config, 2)
  config.unlock()
  config.train.microbatches = 2
  config.loss.observed_frames, config.loss.observed_frames_rate = 2, 1.0
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  state, _ = exp.initial_state()
  start = jax.device_get(state.params)
  with jax.set_mesh(exp.mesh):
    for _ in range(2):
      batch = exp.global_batch(next(exp.train_data.batches()))
      assert batch['video'].shape[1:] == (5, 16, 16, 3)
      state, metrics = exp.train_step(state, batch)
      assert np.isfinite(float(metrics['loss']))
      assert 0 < float(metrics['mask_ratio']) <= 64 / 192
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                         jax.device_get(state.params), start)
  assert all(jax.tree.leaves(changed))
