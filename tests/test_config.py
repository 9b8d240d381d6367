"""Config errors stop a run before anything compiles, naming the key."""

import os
import re
import subprocess
import sys

import ml_collections
import pytest

from vqlab.errors import ConfigError
from vqlab.train import experiment
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error(config, num_devices=8) -> str:
  with pytest.raises(ConfigError) as info:
    experiment.validate(config, num_devices)
  return str(info.value)


def test_valid_config_is_filled_in():
  config = tiny.tokenizer_config()
  del config.loss.adaptive_max  # Omitted keys take their defaults.
  filled = experiment.validate(config, num_devices=8)
  assert filled.loss.adaptive_max == 1e4
  assert filled.model.quantizer.name == 'vq'


@pytest.mark.parametrize('mutate, message', [
    (lambda c: setattr(c.train, 'batchsize', 8),
     r'^train\.batchsize: unknown key'),
    (lambda c: c.model.quantizer.update({'codebook_sise': 8}),
     r'^model\.quantizer\.codebook_sise: unknown key'),
    (lambda c: setattr(c, 'train', ml_collections.ConfigDict(
        {**c.train.to_dict(), 'num_steps': 'ten'})),
     r"^train\.num_steps: expected int, got str \('ten'\)"),
    (lambda c: c.train.update({'batch_size': 12}),
     r'^train\.batch_size: 12 is not divisible by the 8 devices'),
    (lambda c: c.data.update({'image_size': 17}),
     r'^data\.image_size: 17 is not divisible by the model.s downsampling '
     r'factor 2'),
    (lambda c: c.model.quantizer.update({'name': 'nope'}),
     r"^model\.quantizer\.name: unknown quantizer 'nope'"),
    (lambda c: c.model.update({'name': 'nope'}),
     r"^model\.name: unknown tokenizer 'nope'; known: magvit2, titok, vqgan"),
    (lambda c: c.data.update({'name': 'nope'}),
     r"^data\.name: unknown dataset 'nope'"),
    (lambda c: c.update({'task': 'nope'}), r"^task: unknown task 'nope'"),
    (lambda c: c.update({'compute_dtype': 'float16'}), r'^compute_dtype: must be'),
    (lambda c: c.loss.update({'gan_loss': 'wgan'}),
     r"^loss\.gan_loss: unknown GAN loss 'wgan'"),
    (lambda c: c.train.update({'num_steps': 0}), r'^train\.num_steps: must be > 0'),
])
def test_bad_configs_name_the_key(mutate, message):
  config = tiny.tokenizer_config()
  config.unlock()
  mutate(config)
  assert re.search(message, _error(config)), _error(config)


def _main_error_line(workdir, *overrides: str) -> str:
  """Runs the quickstart with overrides on 8 CPU devices; it must fail
  cleanly. Returns the last stderr line."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       '--config=' + os.path.join(ROOT, 'configs', 'quickstart.py'),
       f'--workdir={workdir}', *overrides],
      capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  return proc.stderr.strip().splitlines()[-1]


def test_main_reports_one_line_before_compiling(tmp_path):
  last = _main_error_line(tmp_path, '--config.train.batch_size=12')
  assert last == ('config error: train.batch_size: 12 is not divisible by the '
                  '8 devices')
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_main_reports_bad_data_values_in_one_line(tmp_path):
  last = _main_error_line(tmp_path, '--config.data.crop_min_fraction=1.5')
  assert last.startswith('data error: data.crop_min_fraction: must be in'), last


def test_main_reports_missing_weight_file_in_one_line(tmp_path):
  last = _main_error_line(tmp_path / 'run', '--config.eval.fid=on',
                          f'--config.weights_dir={tmp_path}/weights')
  assert last.startswith('weights error: missing the FID InceptionV3 weights'
                         ), last
  assert f'{tmp_path}/weights/pt_inception-2015-12-05-6726825d.pth' in last


def _shipped_configs():
  root = os.path.join(ROOT, 'configs')
  for folder, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith('.py') and not name.startswith('_'):
        yield os.path.relpath(os.path.join(folder, name), ROOT)


def _shipped_config_calls():
  for path in _shipped_configs():
    yield path, ()
    if path.startswith(os.path.join('configs', 'titok', '')) and \
        'tiny' not in path:
      yield path, ('2',)  # TiTok's stage 2 (stage 1 is the default).


@pytest.mark.parametrize('path, args', list(_shipped_config_calls()))
def test_every_shipped_config_validates(path, args):
  module = path[:-3].replace(os.sep, '.')
  config = __import__(module, fromlist=['get_config']).get_config(*args)
  experiment.validate(config, num_devices=1)


def test_discriminator_keys_follow_the_named_discriminator():
  config = tiny.tokenizer_config()
  config.discriminator.name = 'stylegan'  # Still has PatchGAN's keys.
  assert re.search(r'^discriminator\.num_layers: unknown key', _error(config))
  config.discriminator = ml_collections.ConfigDict({'name': 'stylegan'})
  filled = experiment.validate(config, num_devices=8)
  assert filled.discriminator.channel_multipliers == (2, 4, 4, 4, 4)
