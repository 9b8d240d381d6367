"""The tokenizer x generator pairs not covered elsewhere, end to end: a
tokenizer run (untrained), a generator trained a few steps on its tokens
(encoded on the fly), and --mode=sample decoding samples to images.

  MAGVIT-v2 on images (factorized LFQ codes, 2 x 32) -> MaskGIT
  TiTok (8 latent tokens of 32 codes)                 -> GPT
  VQGAN with FSQ (levels 4, 4, 3: 48 codes)           -> VQ-Diffusion

(VQGAN -> MaskGIT / GPT / VQ-Diffusion: test_generator_pipeline.py; TiTok ->
MaskGIT: test_titok_training.py; MaskGIT on MAGVIT-v2 video tokens:
test_video_generation.py.)
"""

import functools
import glob
import os

import jax
import numpy as np
from PIL import Image
import pytest

from configs.magvit2 import tiny_cpu as magvit2_tiny
from configs.titok import tiny_stage2
from tests import tiny
from vqlab import data as data_lib
from vqlab import quantizers
from vqlab.errors import ConfigError
from vqlab.train import experiment
from vqlab.train import sampling
from vqlab.train import trained_tokenizer


def _devices():
  return jax.devices()[:2]


def _magvit2_images():
  config = magvit2_tiny.get_config()
  config.data = data_lib.default_config('photos')
  config.data.image_size = 16
  config.data.train_image_size = 0
  config.model.num_res_blocks = 0
  config.model.quantizer.factor_bits = (5, 5)
  return config


def _titok():
  config = tiny_stage2.get_config()
  config.warm_start.workdir, config.warm_start.params = '', ()
  # The linear pixel head (stage 2's alternative to the proxy VQGAN's
  # decoder, tests/train/tasks/test_titok_training.py) trains here.
  config.model.decoder_output = 'pixels'
  config.warm_start.pixel_vqgan = ''
  model = config.model
  model.image_size, model.patch_size, model.num_latent_tokens = 16, 4, 8
  model.quantizer.codebook_size = 32
  for vit in (model.encoder, model.decoder):
    vit.width, vit.num_layers, vit.num_heads, vit.mlp_dim = 32, 1, 2, 64
  config.data.image_size = 16
  return config


def _fsq_vqgan():
  config = tiny.tokenizer_config()
  config.model.quantizer = quantizers.default_config('fsq')
  config.model.quantizer.levels = (4, 4, 3)
  return config


# tokenizer config, generator, model overrides, tokens per image, vocab.
PAIRS = {
    'magvit2_images-maskgit': (_magvit2_images, 'maskgit', {
        'token_shape': (8, 8),
        'vocab_size': 1024,
        'factor_vocab_sizes': (32, 32)
    }),
    'titok-gpt': (_titok, 'gpt', {
        'length': 8,
        'vocab_size': 32
    }),
    'fsq_vqgan-vq_diffusion': (_fsq_vqgan, 'vq_diffusion', {
        'token_shape': (8, 8),
        'vocab_size': 48
    }),
}


@pytest.mark.parametrize('pair', sorted(PAIRS))
def test_generator_trains_on_the_tokens_and_samples_decode(
    pair, tmp_path, monkeypatch):
  # One load of the tokenizer run for the test's generator builds (Orbax's
  # restore is their time).
  monkeypatch.setattr(trained_tokenizer, 'load',
                      functools.cache(trained_tokenizer.load))
  make_tokenizer, name, model = PAIRS[pair]
  tokenizer_config = make_tokenizer()
  tokenizer_config.eval.lpips = tokenizer_config.eval.fid = 'off'
  tokenizer_dir = tiny.initial_run(tokenizer_config, str(tmp_path / 'tok'),
                                   _devices())
  if pair == 'titok-gpt':
    # TiTok encodes 32x32 images into its 8 tokens too, but decodes them to
    # 16x16: a generator would train and sample at the wrong size.
    wrong = tiny.generator_config(tokenizer_dir, name, steps=3)
    wrong.tokens.source = 'on_the_fly'
    wrong.model.update(model)
    wrong.data.image_size = 32
    with pytest.raises(
        ConfigError, match=r'^data\.image_size: .* decodes its '
        r'tokens to \(16, 16, 3\), but the data gives '
        r'\(32, 32, 3\)'):
      experiment.Experiment(wrong, str(tmp_path / 'wrong'), _devices())

  config = tiny.generator_config(tokenizer_dir, name, steps=3)
  config.tokens.source = 'on_the_fly'
  config.model.update(model)
  config.sample.num_samples = config.sample.batch_size = 4
  workdir = str(tmp_path / 'generator')
  exp = experiment.Experiment(config, workdir, _devices())
  assert exp.task.tokenizer.vocab_size == model['vocab_size']
  state, _ = exp.initial_state()
  exp.record_config(0)
  start = jax.device_get(state.params)
  with jax.set_mesh(exp.mesh):
    for _ in range(3):
      batch = exp.global_batch(next(exp.train_data.batches()))
      state, metrics = exp.train_step(state, batch)
      assert np.isfinite(float(metrics['loss']))
  exp.checkpointer.save(3, state, force=True)
  exp.checkpointer.wait()
  exp.checkpointer.close()
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                         jax.device_get(state.params), start)
  assert all(jax.tree.leaves(changed))

  sampled = sampling.sample(config, workdir, devices=_devices())
  grid, = glob.glob(os.path.join(sampled['samples_dir'], '*.png'))
  image = np.asarray(Image.open(grid))
  assert image.shape == (38, 38, 3) and image.std() > 0  # 2 x 2 16x16.
