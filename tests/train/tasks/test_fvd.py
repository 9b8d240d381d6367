"""rFVD (--mode=eval of a video tokenizer) and FVD (--mode=sample of a video
generator: frame predictions, and free samples against the eval split's
statistics) against direct computations with the same I3D weights (seeded
random ones in a published-format file).

The I3D costs seconds per clip on CPU (224 x 224 frames), so these tests swap
in a cheap linear embedding of the clips (`fvd.features` patched): they check
everything around the network (its weight file is still loaded), which
tests/nn/test_i3d.py tests against pytorch-i3d."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.magvit2 import tiny_cpu
from configs.maskgit import ucf101_tiny_cpu
from tests import compile_options
from tests import random_weight_files
from tests import tiny
from vqlab import data as data_lib
from vqlab.errors import ConfigError
from vqlab.evals import fid
from vqlab.evals import fvd
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import loop
from vqlab.train import reference_stats
from vqlab.train import sampling
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import tokenizer as tokenizer_task

NUM_FRAMES = 9  # I3D's minimum: 9 -> 5 -> 3 -> 2 time steps.

# No test here changes the tokenizer run on disk.
pytestmark = pytest.mark.usefixtures('one_tokenizer_load_per_module')


def _devices():
  return jax.devices()[:2]


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory):
  return str(
      random_weight_files.write(tmp_path_factory.mktemp('weights'),
                                ['i3d_kinetics400']))


def _tokenizer_config(weights_dir, num_frames=NUM_FRAMES):
  config = tiny_cpu.get_config()
  config.data.num_frames = num_frames
  config.data.image_size = 8  # 5x4x4 tokens: short samplers.
  config.data.num_eval_examples = 4
  config.model.num_res_blocks = 0
  config.eval.lpips = config.eval.fid = 'off'
  config.eval.fvd = 'on'
  config.eval.batch_size, config.eval.max_batches = 2, -1
  config.weights_dir = weights_dir
  return config


@pytest.fixture(scope='module')
def tokenizer_run(tmp_path_factory, weights_dir):
  config = _tokenizer_config(weights_dir)
  workdir = tiny.initial_run(config, str(tmp_path_factory.mktemp('magvit2')),
                             _devices())
  return config, workdir


_EMBEDDING = np.random.default_rng(0).standard_normal((NUM_FRAMES * 3, 6))


def _linear_features(params, videos, num_frames):
  """A stand-in for the I3D: [B, 6] from each frame's mean color."""
  assert set(params) >= {'Conv3d_1a_7x7', 'Logits'}  # The I3D's, loaded.
  colors = videos[:, :num_frames].astype(jnp.float32).mean(axis=(2, 3))
  return colors.reshape(len(videos), -1) @ jnp.asarray(_EMBEDDING, jnp.float32)


def _embed(clips):
  return np.asarray(
      _linear_features({
          'Conv3d_1a_7x7': 0,
          'Logits': 0
      }, jnp.asarray(clips), NUM_FRAMES), np.float64)


@pytest.fixture
def cheap_i3d(monkeypatch):
  monkeypatch.setattr(fvd, 'features', _linear_features)
  sampling.i3d_features.clear_cache()  # No trace of the real I3D reused.
  yield
  sampling.i3d_features.clear_cache()


def _distance(a, b):
  return fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                              np.cov(b, rowvar=False))


def test_rfvd_of_a_video_tokenizer(tokenizer_run, cheap_i3d):
  """Two eval batches of 2 clips, streamed; directly: one batch of 4."""
  config, workdir = tokenizer_run
  result = loop.evaluate_checkpoint(config, workdir, devices=_devices())
  tokenizer = trained_tokenizer.load(workdir)
  source = data_lib.build(config.data, split='eval', global_batch_size=4)
  clips = next(source.batches())['video']
  reconstructions = compile_options.reconstruct(tokenizer, clips)
  want = _distance(_embed(clips), _embed(np.clip(reconstructions, -1, 1)))
  assert result['fvd_frames'] == NUM_FRAMES
  assert result['rfvd'] == pytest.approx(want, rel=1e-4)
  assert result['rfvd'] > 0


def test_rfvd_of_joint_data_is_that_of_its_videos(tokenizer_run, cheap_i3d):
  """Joint image-video data evaluates on its video source: the same rFVD
  (it said 'joint gives images' with eval.fvd on, nothing with auto)."""
  config, workdir = tokenizer_run
  videos = loop.evaluate_checkpoint(config, workdir, devices=_devices())
  joint = config.copy_and_resolve_references()
  joint.data = data_lib.default_config('joint')
  joint.data.video = config.data
  joint.data.image.image_size = joint.data.image_size = 8
  result = loop.evaluate_checkpoint(joint, workdir, devices=_devices(),
                                    allow_config_change=True)
  assert result['fvd_frames'] == NUM_FRAMES
  assert result['rfvd'] == pytest.approx(videos['rfvd'], rel=1e-6)


def test_fvd_on_clips_too_short_for_i3d_is_a_config_error(weights_dir):
  config = _tokenizer_config(weights_dir, num_frames=5)
  with pytest.raises(ConfigError, match=r'eval.fvd: .*5 frames.* at least 9'):
    tokenizer_task.build(experiment_config.validate(config, 2))
  config.eval.fvd = 'auto'  # Skipped, as without the weight file.
  task = tokenizer_task.build(experiment_config.validate(config, 2))
  assert 'i3d' not in task.frozen
  # --mode=fvd_stats on such clips.
  with pytest.raises(ConfigError, match=r'^data: I3D statistics need clips: '
                     r'.*5 frames'):
    reference_stats.compute_reference_statistics(config, 'unused.npz',
                                                 network='i3d',
                                                 devices=_devices())


@pytest.fixture(scope='module')
def video_generator(tmp_path_factory, tokenizer_run, weights_dir):
  """An untrained video MaskGIT on the 9-frame tokenizer: 5x4x4 tokens."""
  tokenizer_config, tokenizer_dir = tokenizer_run
  config = ucf101_tiny_cpu.get_config()
  config.tokenizer.workdir = tokenizer_dir
  config.tokens.source = 'on_the_fly'
  config.data = tokenizer_config.data
  config.model.vocab_size = 2**10
  config.model.token_shape = (5, 4, 4)
  config.model.factor_vocab_sizes = ()
  config.model.width, config.model.num_layers = 32, 1
  config.model.mlp_dim = 64
  config.eval.lpips = config.eval.fid = 'off'
  config.eval.fvd = 'on'
  config.weights_dir = weights_dir
  config.eval.batch_size = 2
  config.sample.num_steps = 2
  config.sample.num_samples, config.sample.batch_size = 4, 2
  workdir = tiny.initial_run(config, str(tmp_path_factory.mktemp('generator')),
                             _devices())
  return config, workdir


def _samples(exp, state, observed: bool, batches: int = 2):
  """The samples of sampling.sample (batches of 2), drawn again batch by
  batch, and the clips they continue (frame prediction)."""
  clips, samples = exp.task.eval_clips(2), []
  given = []
  for i in range(batches):
    rng = jax.random.fold_in(jax.random.key(exp.config.sample.seed), i)
    if observed:
      batch, labels = next(clips)
      given.append(batch)
      samples.append(
          exp.sample_images(state, rng, labels, batch_size=2, observed=batch))
    else:
      samples.append(
          exp.sample_images(state, rng, exp.task.sample_conditions(2 * i, 2),
                            batch_size=2))
  return np.concatenate(samples), given and np.concatenate(given)


@pytest.mark.parametrize('observed', [1, 0])
def test_fvd_of_video_samples(video_generator, observed, cheap_i3d):
  """Frame predictions: against the clips they continue. Free samples:
  against the eval split's clips, whose statistics are cached."""
  config, workdir = video_generator
  config = experiment_config.validate(config, 2)
  config.unlock()
  config.sample.observed_frames = observed
  result = sampling.sample(config, workdir, devices=_devices())

  exp = experiment.Experiment(config, workdir, _devices())
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  samples, given = _samples(exp, state, observed)
  generated = _embed(samples)
  if observed:
    want = _distance(generated, _embed(given))
    assert result['prediction_fvd'] == pytest.approx(want, rel=1e-4)
    assert 'fvd' not in result
  else:
    source = data_lib.build(config.data, split='eval', global_batch_size=4)
    real = _embed(next(source.batches())['video'])
    with np.load(os.path.join(workdir, 'fvd_stats.npz')) as stats:
      np.testing.assert_allclose(stats['mu'], real.mean(0), rtol=1e-4,
                                 atol=1e-4)
      assert int(stats['num_examples']) == 4
    assert result['fvd'] == pytest.approx(_distance(generated, real), rel=1e-4)
    assert 'prediction_fvd' not in result


def test_gpt_predicts_frames_from_a_prefix(tokenizer_run, weights_dir,
                                           cheap_i3d, tmp_path):
  """GPT frame prediction through --mode=sample: the first latent frame's
  tokens are the prefix, so the first pixel frame (causal decoder) is the
  clip's own reconstruction."""
  from configs.gpt import tiny_cpu as gpt_tiny  # pylint: disable=g-import-not-at-top
  tokenizer_config, tokenizer_dir = tokenizer_run
  config = gpt_tiny.get_config()
  config.tokenizer.workdir = tokenizer_dir
  config.tokens.source = 'on_the_fly'
  config.data = tokenizer_config.data
  config.model.condition = 'none'
  config.model.vocab_size, config.model.length = 2**10, 5 * 4 * 4
  config.model.width, config.model.num_layers = 32, 1
  config.model.num_heads, config.model.mlp_dim = 2, 64
  config.eval.lpips = config.eval.fid = 'off'
  config.eval.fvd, config.weights_dir = 'on', weights_dir
  config.eval.batch_size = 2
  config.sample.num_samples, config.sample.batch_size = 2, 2
  config.sample.observed_frames = 1
  workdir = tiny.initial_run(config, str(tmp_path), _devices())
  result = sampling.sample(config, workdir, devices=_devices())

  exp = experiment.Experiment(config, workdir, _devices())
  state, _ = exp.checkpointer.restore(exp.abstract_state)
  samples, clips = _samples(exp, state, observed=True, batches=1)
  tok = exp.task.tokenizer
  reconstruction = np.asarray(compile_options.reconstruct(tok, clips))
  np.testing.assert_allclose(samples[:, 0], reconstruction[:, 0], atol=1e-5)
  assert np.abs(samples[:, 1:] - reconstruction[:, 1:]).max() > 0.01
  assert result['prediction_fvd'] == pytest.approx(
      _distance(_embed(samples), _embed(clips)), rel=1e-4)
  assert 'prediction_psnr' in result
