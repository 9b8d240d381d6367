"""TiTok's two training stages on the loop, and MaskGIT on its 1D tokens.

Stage 1 predicts the codes of a (tiny, untrained) VQGAN run; stage 2 starts
from the stage-1 checkpoint with encoder and quantizer frozen. Runs on 2 of
the 8 test devices.
"""

import functools
import json
import os
import shutil

import flax
import jax
import ml_collections
import numpy as np
import pytest

from configs.titok import _common
from configs.titok import s128
from configs.titok import tiny_stage1
from configs.titok import tiny_stage2
from tests import retrace
from tests import tiny
from vqlab import quantizers
from vqlab.convert import maskgit_vqgan
from vqlab.errors import CheckpointError
from vqlab.errors import ConfigError
from vqlab.nn import stack
from vqlab.quantizers import base as quantizers_base
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import loop
from vqlab.train import run_record
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import proxy_codes
from vqlab.train.tasks import tokenizer
from vqlab.train.tasks import warm_start


def _devices():
  return jax.devices()[:2]


def _shrink(config):
  """16x16 photos, patch 2 (the tiny VQGAN's 8x8 grid of 32 codes), K = 8."""
  model = config.model
  model.image_size, model.patch_size, model.num_latent_tokens = 16, 2, 8
  model.proxy_codebook_size = 32
  model.quantizer.codebook_size = 32
  for vit in (model.encoder, model.decoder):
    vit.width, vit.num_layers, vit.num_heads, vit.mlp_dim = 32, 1, 2, 64
  config.data.image_size = 16
  config.eval.lpips = config.eval.fid = 'off'
  config.train.batch_size = config.eval.batch_size = 8
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  config.eval.max_batches = 1
  config.eval.num_images = 4
  return config


def _stage1_config(proxy_dir, steps):
  config = _shrink(tiny_stage1.get_config())
  config.proxy.workdir = proxy_dir
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 0
  config.train.num_steps = steps
  config.train.microbatches = 2  # Gradient accumulation's real path.
  return config


@pytest.fixture(scope='module')
def proxy_dir(tokenizer_dir):
  return tokenizer_dir  # The shared tiny VQGAN run (tests/conftest.py).


@pytest.fixture(scope='module')
def stage1(proxy_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stage1'))
  losses = []

  def step_callback(step, metrics):
    del step
    losses.append(float(metrics['proxy_ce']))
    # The batch's code histogram, summed over the 2 microbatches, became its
    # usage (a scalar); the histogram itself is not a metric.
    assert not [k for k in metrics if k.endswith('code_counts')]
    assert 0 < float(metrics['quantizer/usage']) <= 1

  with retrace.traced_once():  # 16 steps and an eval: one compile each.
    result = loop.train_and_evaluate(_stage1_config(proxy_dir, 16), workdir,
                                     devices=_devices(),
                                     step_callback=step_callback)
  return workdir, result, losses


def test_stage1_proxy_code_cross_entropy_decreases(stage1):
  _, result, losses = stage1
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses
  # Eval decodes TiTok's predicted codes with the VQGAN and scores them.
  assert np.isfinite(result['psnr']) and 0 < result['codebook_usage'] <= 1


def test_stage1_proxy_ce_is_the_cross_entropy_of_the_proxy_vqgan_codes(
    stage1, proxy_dir, tmp_path):
  """Step 1's reported proxy_ce, recomputed: the init params' logits
  [B, h, w, K] against the codes [B, h, w] that the proxy run, loaded on its
  own, gives the first batch (a transposed or misordered grid would still
  train down, so the decrease above cannot see it)."""
  _, _, losses = stage1
  config = _stage1_config(proxy_dir, 16)
  # The loop's first step: the fresh init and the first train batch (no
  # dropout in TiTok's tiny config, a deterministic VQ).
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  assert exp.config.model.dropout_rate == 0
  state, _ = exp.initial_state()
  exp.checkpointer.close()
  images = next(exp.train_data.batches(0))['image']
  proxy = trained_tokenizer.load(proxy_dir)
  codes = np.asarray(jax.jit(proxy.encode)(proxy.variables, images))
  model = exp.task.model
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])({
      'params': state.params['generator'],
      **state.model_state
  }, images)
  logits = np.asarray(logits, np.float64)
  assert codes.shape == (8, 8, 8) and logits.shape == (8, 8, 8, 32)
  # The grid is not symmetric, so a transposed target would score otherwise.
  assert np.mean(codes != codes.swapaxes(1, 2)) > 0.3
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  a = config.loss.label_smoothing
  nll = -np.take_along_axis(log_p, codes[..., None], -1)[..., 0]
  want = np.mean((1 - a) * nll - a * log_p.mean(-1))
  # Float32 agrees to ~1e-7; a transposed grid is off by ~7e-3, the rows in
  # reverse order by ~2e-3.
  np.testing.assert_allclose(losses[0], want, rtol=1e-5)


def test_stage1_stops_when_its_proxy_run_was_trained_again(
    stage1, proxy_dir, tmp_path, monkeypatch):
  """The loop records the proxy checkpoint a run trains with by its digest:
  the proxy run trained again in its workdir holds other params at that
  step, and the run or its eval stop, naming the key. An eval of a run
  recorded without the digest (older vqlab) neither fails nor writes it."""
  # One load of the proxy run for the test (Orbax's restore is its time).
  monkeypatch.setattr(trained_tokenizer, 'load',
                      functools.cache(trained_tokenizer.load))
  workdir = str(tmp_path / 'run')
  shutil.copytree(stage1[0], workdir)
  path = os.path.join(workdir, run_record.READ_CHECKPOINTS_FILE)
  with open(path) as f:
    recorded = json.load(f)
  os.remove(path)
  config = _stage1_config(proxy_dir, 16)
  exp = experiment.Experiment(config, workdir, _devices())
  exp.checkpointer.close()
  assert not os.path.exists(path)
  assert recorded == {
      'proxy.workdir': {
          'workdir': os.path.abspath(proxy_dir),
          'step': 1,
          'checksum': exp.task.proxy.checksum
      }
  }
  recorded['proxy.workdir']['checksum'] = '0' * 32  # Trained with another.
  with open(path, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(
      ConfigError, match=r'^proxy\.workdir: step 1 of .* is not the '
      r'checkpoint the run in .*run was trained with \(its params differ: was '
      r'that run trained again\?\); .* start a new run in another --workdir$'):
    experiment.Experiment(config, workdir, _devices())


@pytest.mark.parametrize('key, value, message', [
    ('proxy_codebook_size', 64,
     'model.proxy_codebook_size: 64, but the proxy tokenizer .* 32 codes'),
    ('patch_size', 4, r'model.patch_size: 4 gives TiTok a \(4, 4\) grid .* '
     r'\(8, 8\) grid of codes'),
])
def test_a_proxy_vqgan_that_does_not_fit_is_a_config_error(
    proxy_dir, key, value, message):
  config = _stage1_config(proxy_dir, 1)
  config.model[key] = value
  with pytest.raises(ConfigError, match=message):
    proxy_codes.build(experiment_config.validate(config, num_devices=1))


def test_stage1_errors_name_its_keys(tmp_path):
  config = _stage1_config(str(tmp_path / 'no_run'), 1)
  with pytest.raises(CheckpointError, match=r'proxy\.workdir must be the'):
    proxy_codes.build(experiment_config.validate(config, num_devices=1))
  # The released checkpoints' layout decodes through the embedded VQGAN:
  # no pixel head for the adaptive GAN weight.
  config = _shrink(tiny_stage2.get_config())
  config.model.decoder_output = 'proxy_pixels'
  config.model.pixel_decoder.channel_multipliers = (1, 1)  # f = patch_size.
  config.model.pixel_decoder.quantizer.codebook_size = 32
  config.loss.adaptive_weight = True
  with pytest.raises(ConfigError, match=r'^loss\.adaptive_weight: True, but'):
    experiment_config.validate(config, num_devices=1)


def _stage2_config(stage1_dir, proxy_dir, steps):
  config = _shrink(tiny_stage2.get_config())
  config.warm_start.workdir = stage1_dir
  # The proxy VQGAN (the tiny tokenizer run) decodes the pixels.
  config.warm_start.pixel_vqgan = proxy_dir
  config.model.pixel_decoder = ml_collections.ConfigDict({
      k: v for k, v in tiny.tokenizer_config().model.items() if k != 'name'
  })
  # Stage 1 scans its ViT blocks; warm_start unstacks them for this model.
  config.model.scan_layers = False
  config.discriminator.base_features = 8
  config.loss.disc_start = 1
  config.ema.decay = 0.9  # As released; its EMA starts from the copies.
  config.train.num_steps = steps
  return config


@pytest.fixture(scope='module')
def stage2(stage1, proxy_dir, tmp_path_factory):
  stage1_dir, _, _ = stage1
  config = _stage2_config(stage1_dir, proxy_dir, 3)
  workdir = str(tmp_path_factory.mktemp('stage2'))
  exp = experiment.Experiment(config, workdir, _devices())
  state, _ = exp.initial_state()
  exp.record_config(0)  # A tokenizer run for the generator test below.
  start = jax.device_get(state.params['generator'])
  with jax.set_mesh(exp.mesh), retrace.traced_once():
    for _ in range(3):
      state, _ = exp.train_step(
          state, exp.global_batch(next(exp.train_data.batches())))
  exp.checkpointer.save(3, state, force=True)
  exp.checkpointer.wait()
  return workdir, start


def test_stage2_starts_from_stage1_and_keeps_encoder_and_quantizer_fixed(
    stage1, stage2, proxy_dir):
  before, _ = checkpoint_lib.restore_on_host(stage1[0])
  before = before['params']['generator']
  workdir, start = stage2
  for name in ('encoder', 'quantizer', 'decoder', 'to_proxy_logits'):
    jax.tree.map(np.testing.assert_array_equal, start[name],
                 stack.unstack(before[name]))  # Copied in.
  # The pixels come from the proxy VQGAN's own decoder and codebook.
  vqgan, _ = checkpoint_lib.restore_on_host(proxy_dir)
  vqgan = vqgan['params']['generator']
  assert set(start['pixel_vqgan']) <= set(vqgan)
  for name in start['pixel_vqgan']:
    jax.tree.map(np.testing.assert_array_equal, start['pixel_vqgan'][name],
                 vqgan[name])
  # config.json records the proxy run's step it copied (-1 pinned).
  assert run_record.read(workdir)['warm_start']['pixel_vqgan_step'] == 1
  after, step = checkpoint_lib.restore_on_host(workdir)
  after = after['params']['generator']
  assert step == 3
  for name in ('encoder', 'quantizer'):  # Bit for bit.
    jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
  changed = jax.tree.map(lambda a, b: np.any(a != b), after['decoder'],
                         before['decoder'])
  assert all(jax.tree.leaves(changed))
  changed = jax.tree.map(lambda a, b: np.any(a != b),
                         after['pixel_vqgan']['decoder'],
                         start['pixel_vqgan']['decoder'])
  assert all(jax.tree.leaves(changed))  # Fine-tuned too.
  assert 'to_pixels' not in after  # No fresh linear pixel head.


def test_stage2_decodes_with_the_proxy_vqgan_stage1_learned(
    stage1, proxy_dir, tmp_path):
  """The stage-1 head's probabilities are over its proxy VQGAN's codes:
  another run, or another step of it, as warm_start.pixel_vqgan was taken
  without a word (stage2 above is the run and step recorded)."""
  stage1_dir = stage1[0]
  record = run_record.read(stage1_dir,
                           run_record.READ_CHECKPOINTS_FILE)['proxy.workdir']
  step = record['step']
  warm_start.check_stage1_codes(stage1_dir, proxy_dir, step)
  for other, other_step in ((str(tmp_path), step), (proxy_dir, step + 1)):
    with pytest.raises(
        ConfigError, match=rf'^warm_start\.pixel_vqgan: step {other_step} of '
        rf'{other}, but the stage-1 run .* learned the codes of step {step} '):
      warm_start.check_stage1_codes(stage1_dir, other, other_step)
  warm_start.check_stage1_codes(str(tmp_path), str(tmp_path), 7)  # No record.


def test_maskgit_trains_on_titok_tokens_and_samples_decode_to_images(
    stage2, tmp_path):
  config = tiny.generator_config(stage2[0])
  config.tokens.source = 'on_the_fly'
  config.model.token_shape = (8,)  # K latent tokens: a 1D sequence.
  exp = experiment.Experiment(config, str(tmp_path), _devices())
  state, _ = exp.initial_state()
  batch = exp.global_batch(next(exp.train_data.batches()))
  assert batch['image'].shape == (8, 16, 16, 3)
  state, metrics = exp.train_step(state, batch)
  assert np.isfinite(metrics['loss'])
  images = exp.sample_images(state, jax.random.key(0), batch_size=4)
  assert images.shape == (4, 16, 16, 3) and np.all(np.isfinite(images))


def _warm_started_from_another_init(quantizer, tmp_path):
  """(the saved tree, a fresh state, it warm-started with ('encoder',
  'quantizer') from the saved one): two inits of a tiny tokenizer with
  `quantizer`, the first saved in tmp_path."""
  config = tiny.tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  config.model.quantizer = quantizer
  config.warm_start.workdir = str(tmp_path)
  config.warm_start.params = ('encoder', 'quantizer')
  task = tokenizer.TokenizerTask(config, frozen={})
  init = jax.jit(task.init)  # One compile for both states.
  batch = {'image': np.zeros((8, 16, 16, 3), np.float32)}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
  saved = init(jax.random.key(0), batch)
  checkpointer.save(1, saved, force=True)
  checkpointer.wait()
  checkpointer.close()
  # The tree as restore_on_host reads it back (warm_start reads it so).
  source = flax.serialization.to_state_dict(jax.device_get(saved))
  fresh = init(jax.random.key(1), batch)
  return source, fresh, task.warm_start(fresh)


@pytest.mark.parametrize('projection_dim', [0, 2])
def test_warm_start_copies_an_ema_codebook_with_the_quantizer(
    projection_dim, tmp_path, capsys):
  # An EMA codebook and its statistics live in model_state's
  # 'quantizer_stats', not in params (with projection_dim 0 the quantizer has
  # no params at all).
  quantizer = tiny.tokenizer_config().model.quantizer
  quantizer.update(ema=True, projection_dim=projection_dim)
  source, fresh, state = _warm_started_from_another_init(quantizer, tmp_path)
  stats = source['model_state'][quantizers_base.STATS]['quantizer']
  assert set(stats) == {'codebook', 'cluster_size', 'embed_sum'}
  assert not np.array_equal(
      fresh.model_state[quantizers_base.STATS]['quantizer']['codebook'],
      stats['codebook'])
  jax.tree.map(np.testing.assert_array_equal,
               state.model_state[quantizers_base.STATS]['quantizer'], stats)
  generator = source['params']['generator']
  names = ('encoder', 'quantizer') if projection_dim else ('encoder',)
  assert ('quantizer' in generator) == bool(projection_dim)
  for name in names:
    jax.tree.map(np.testing.assert_array_equal, state.params['generator'][name],
                 generator[name])
  # The decoder was not named: this model's own, and the run says so.
  jax.tree.map(np.testing.assert_array_equal,
               state.params['generator']['decoder'],
               fresh.params['generator']['decoder'])
  assert capsys.readouterr().out == (
      'vqlab: warm_start copies encoder, quantizer from '
      f'{tmp_path} (step 1); decoder, post_quant_conv, quant_conv, to_pixels '
      'of that run start from a fresh init (name them in warm_start.params '
      'to copy them too)\n')


def test_warm_start_names_a_quantizer_that_holds_nothing(tmp_path):
  """FSQ keeps no variables: ('encoder', 'quantizer') copies the encoder
  (TiTok's stage 2 names both whatever the quantizer)."""
  quantizer = quantizers.default_config('fsq')
  quantizer.levels = (5, 3, 3)
  source, _, state = _warm_started_from_another_init(quantizer, tmp_path)
  jax.tree.map(np.testing.assert_array_equal,
               state.params['generator']['encoder'],
               source['params']['generator']['encoder'])


@pytest.mark.parametrize('settings, message', [
    ({
        'workdir': '/runs/vqgan'
    }, r"^warm_start.params: empty, but "
     r"warm_start.workdir is '/runs/vqgan': name the param trees"),
    ({
        'step': 100
    }, r'^warm_start.step: 100, but warm_start.workdir is empty'),
    ({
        'pixel_vqgan_step': 5
    }, r'^warm_start.pixel_vqgan_step: 5, but '
     r'warm_start.pixel_vqgan is empty'),
])
def test_a_warm_start_that_would_copy_nothing_is_a_config_error(
    settings, message):
  """warm_start.workdir alone started from a fresh init, said nothing, and
  recorded the step it "keeps reading"."""
  config = tiny.tokenizer_config()
  config.warm_start.update(settings)
  with pytest.raises(ConfigError, match=message):
    experiment_config.validate(config, 1)


def test_paper_configs_take_the_released_proxy():
  """`s128.py:2,released`: the released MaskGIT VQGAN (as its converter
  writes it) is stage 2's pixel decoder; without it, a maskgit_f16 run."""
  released = maskgit_vqgan.released_model_config().to_dict()
  del released['name']
  for stage, proxy, stage1_dir in (('2,released', 'workdirs/maskgit_vqgan',
                                    'stage1_released'),
                                   ('2', 'workdirs/vqgan_maskgit_f16',
                                    'stage1')):
    config = experiment_config.validate(s128.get_config(stage), 8)
    assert config.warm_start.pixel_vqgan == proxy
    assert config.warm_start.workdir == f'workdirs/titok_s128_{stage1_dir}'
  assert s128.get_config('2,released').model.pixel_decoder.to_dict() == (
      released)
  assert s128.get_config('1,released').proxy.workdir == (
      'workdirs/maskgit_vqgan')
  with pytest.raises(ValueError, match="'released' or nothing"):
    _common.paper_config('s128', 'S', 128, '1,converted')
