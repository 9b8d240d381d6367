"""MAGVIT-v2 through the tokenizer task: video training lowers the loss, joint
image-video batches train one model and one 3D discriminator, LPIPS scores
video frames, and the loop runs end to end on the built-in moving-shapes
videos (eval metrics per frame, PNG grids of frames)."""

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.magvit2 import tiny_cpu
from configs.magvit2 import ucf101_17x128
from tests import random_weight_files
from tests.compile_options import FAST_COMPILE
from vqlab import data as data_lib
from vqlab import tokenizers
from vqlab.evals import image_metrics
from vqlab.losses import perceptual
from vqlab.train import experiment_config
from vqlab.train import loop
from vqlab.train.tasks import tokenizer


def _tiny(num_steps=3):
  config = tiny_cpu.get_config()
  # No res blocks besides the middle's: a third less compile for every test
  # here (tests/tokenizers covers the blocks).
  config.model.num_res_blocks = 0
  config.eval.lpips = config.eval.fid = 'off'
  config.loss.disc_start = 2
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  config.eval.max_batches = 1
  return config


def _video_batch(config, batch_size=8):
  source = data_lib.build(config.data, split='train',
                          global_batch_size=batch_size)
  return next(source.batches(0))


def test_video_train_steps_lower_the_loss_and_eval_per_frame():
  config = experiment_config.validate(_tiny(), num_devices=8)
  config.unlock()
  config.loss.disc_start = 100  # Reconstruction + LFQ terms only.
  task = tokenizer.build(config)
  batch = {'video': jnp.asarray(_video_batch(config)['video'])}
  assert batch['video'].shape == (8, 5, 16, 16, 3)
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(0),
                                                            batch)
  step = jax.jit(task.train_step, compiler_options=FAST_COMPILE)
  losses = []
  for _ in range(6):  # One batch and one rng: only the parameters change.
    state, metrics = step(state, batch, jax.random.key(1), task.frozen)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.01, losses

  eval_batch = {**batch, 'mask': jnp.ones((8,), bool)}
  outputs, images = jax.jit(task.eval_step,
                            compiler_options=FAST_COMPILE)(state, eval_batch,
                                                           task.frozen)
  x, x_rec = batch['video'], images['reconstructions']
  assert x_rec.shape == x.shape
  frames = lambda v: v.reshape((-1,) + v.shape[2:])
  # Per frame, averaged over each clip's 5 frames, as SSIM.
  psnr = image_metrics.psnr(frames(x), frames(x_rec)).reshape(8, 5).mean(1)
  np.testing.assert_allclose(outputs['sums']['psnr'], np.sum(psnr), rtol=1e-5)
  ssim = image_metrics.ssim(frames(x), frames(x_rec)).reshape(8, 5).mean(1)
  np.testing.assert_allclose(outputs['sums']['ssim'], np.sum(ssim), rtol=1e-5)


def test_joint_image_video_batch_trains_one_model():
  config = _tiny()
  config.data = data_lib.default_config('joint')
  config.data.image_size = config.data.image.image_size = 16
  config.data.video.image_size = 16
  config.data.video.num_frames = 5
  config.model.quantizer.update(entropy_weight_final=0.0,
                                entropy_anneal_steps=4)
  config.loss.update(lecam_weight=0.001, lecam_decay=0.9)
  config = experiment_config.validate(config, num_devices=4)
  task = tokenizer.build(config)
  source = data_lib.build(config.data, split='train', global_batch_size=16)
  batch = {
      k: jnp.asarray(v)
      for k, v in next(source.batches(0)).items()
      if k in ('image', 'video')
  }
  assert batch['image'].shape == (8, 16, 16, 3)
  assert batch['video'].shape == (8, 5, 16, 16, 3)
  state = jax.jit(task.init, compiler_options=FAST_COMPILE)(jax.random.key(0),
                                                            batch)
  new_state, metrics = jax.jit(task.train_step, compiler_options=FAST_COMPILE)(
      state.replace(step=jnp.int32(5)), batch, jax.random.key(1), task.frozen)
  # The images and the videos read the step's LFQ schedule: one step.
  counter = new_state.model_state['quantizer_state']['quantizer']['step']
  assert int(counter) == 1
  assert metrics['image/quantizer/entropy_weight'] == metrics[
      'video/quantizer/entropy_weight'] == config.model.quantizer.entropy_weight
  for key in ('image', 'video'):
    assert np.isfinite(metrics[f'{key}/loss'])
    assert metrics[f'{key}/d_loss'] > 0  # The one 3D D scores both.
  np.testing.assert_allclose(metrics['loss'],
                             metrics['image/loss'] + metrics['video/loss'],
                             rtol=1e-6)
  # LeCam's EMAs move once, by the mean logit of the batch's 16 rows (they
  # moved by the images', then again by the videos').
  for which in ('real', 'fake'):
    before = state.loss_state['lecam'][which]
    mean = (metrics[f'image/logits_{which}'] +
            metrics[f'video/logits_{which}']) / 2
    np.testing.assert_allclose(new_state.loss_state['lecam'][which],
                               0.9 * before + 0.1 * mean, rtol=1e-5)


def test_loop_trains_and_evaluates_videos(tmp_path):
  # Two devices: the batch is still sharded, and XLA:CPU compiles and runs
  # much less than for eight. No step reaches disc_start: one train program,
  # the one without the GAN terms (the first test here compiles the one with
  # them; the loop's switch between the two is tests/train/test_loop.py's).
  config = _tiny()
  config.loss.disc_start = 100
  result = loop.train_and_evaluate(config, str(tmp_path),
                                   devices=jax.devices()[:2])
  assert result['step'] == 3 and np.isfinite(result['psnr'])
  assert 0 < result['ssim'] <= 1 and 0 < result['codebook_usage'] <= 1
  with open(tmp_path / 'final_metrics.json') as f:
    assert json.load(f)['num_examples'] == 8
  assert glob.glob(
      os.path.join(tmp_path, 'images', 'eval_reconstructions_*.png'))

  # The run evaluated at 162-pixel frames, as codecs are compared: MS-SSIM
  # needs 161. The state keeps the training's shapes (the discriminator's
  # dense head was built for 16x16 frames; the eval never runs it).
  config.data.image_size = 162
  metrics = loop.evaluate_checkpoint(config, str(tmp_path),
                                     devices=jax.devices()[:2],
                                     allow_config_change=True)
  assert 0 < metrics['ms_ssim'] <= 1 and metrics['num_examples'] == 8
  # 3 x 81 x 81 tokens of 10 bits for 5 x 162 x 162 pixels.
  assert metrics['bits_per_pixel'] == 1.5
  assert 0 < metrics['entropy_bits_per_pixel'] < 1.5


def test_lpips_on_video_frames(tmp_path):
  # The perceptual term the train step adds (the train-step path itself is
  # tested on images in tests/train/tasks/test_tokenizer_losses.py): LPIPS of every frame.
  config = _tiny()
  # 24x24 frames: VGG's last convolutions see 3x3 and 1x1 maps (from 16x16,
  # 2x2 ones, which XLA:CPU runs about 100x slower per FLOP).
  config.data.image_size = 24
  config.weights_dir = str(random_weight_files.write(tmp_path, ('vgg16',)))
  config.loss.perceptual_weight = 0.5
  config = experiment_config.validate(config, num_devices=8)
  task = tokenizer.build(config)
  assert set(task.frozen) == {'lpips'}
  x = jnp.asarray(_video_batch(config, batch_size=2)['video'])
  x_rec = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(0), x.shape), -1,
                   1)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def both(frozen):
    _, term = task._pixel_losses(x, x_rec, frozen)  # pylint: disable=protected-access
    # Frame by frame in a loop (one VGG16 to compile, not one per frame).
    per_frame = jax.lax.map(
        lambda frames: perceptual.lpips_distance(frozen['lpips'], *frames),
        (jnp.swapaxes(x, 0, 1), jnp.swapaxes(x_rec, 0, 1)))
    assert per_frame.shape == (x.shape[1], len(x))
    return term, 0.5 * jnp.mean(per_frame)

  term, want = both(task.frozen)
  assert want > 0
  np.testing.assert_allclose(term, want, rtol=1e-5)


def test_paper_config_gives_5x16x16_tokens_for_17x128x128():
  config = ucf101_17x128.get_config()
  model = tokenizers.build(config.model)
  clip = jax.ShapeDtypeStruct((1, 17, 128, 128, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), clip)
  tokens, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=model.encode), variables, clip)
  assert tokens.shape == (1, 5, 16, 16, 2)  # Two 2^9 factors: K = 2^18.
  assert model.quantizer.codebook_size == 2**18
