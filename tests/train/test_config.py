"""Config errors stop a run before anything compiles, naming the key."""

import copy
import functools
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from tests import compile_options
from tests import paths
from tests import tiny
from vqlab import data as data_lib
from vqlab import generators
from vqlab import quantizers
from vqlab import registry as registry_lib
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.losses import discriminators
from vqlab.train import domains
from vqlab.train import experiment_config
from vqlab.train import tasks
from vqlab.train.tasks import tokenizer as tokenizer_task
from vqlab.train.tasks import tokenizer_config

ROOT = paths.ROOT


def _error(config, num_devices=8) -> str:
  with pytest.raises(ConfigError) as info:
    experiment_config.validate(config, num_devices)
  return str(info.value)


def test_valid_config_is_filled_in():
  config = tiny.tokenizer_config()
  del config.loss.adaptive_max  # Omitted keys take their defaults.
  filled = experiment_config.validate(config, num_devices=8)
  assert filled.loss.adaptive_max == 1e4
  assert filled.model.quantizer.name == 'vq'


def _titok_with_pcl(config):
  config.model = tokenizers.default_config('titok')
  config.model.image_size = config.data.image_size = 32
  config.model.quantizer = quantizers.default_config('regularized')
  config.model.quantizer.embedding_dim = 12
  config.loss.pcl_weight = 1.0


def _regularized_with_pcl(config):
  config.model.quantizer = quantizers.default_config('regularized')
  config.model.quantizer.codebook_size = 32
  config.model.quantizer.embedding_dim = 4
  config.loss.pcl_weight = 1.0
  config.data.image_size = 36  # f = 2: 18x18 tokens; VGG: 36, 18, 9, 4, 2.


@pytest.mark.parametrize(
    'mutate, message',
    [
        (lambda c: setattr(c, 'data', data_lib.default_config('moving_shapes')),
         r"^data\.name: 'moving_shapes' gives video batches, but model\.name "
         r"'vqgan' tokenizes images only \(videos: magvit2\)$"),
        (lambda c: setattr(c.train, 'batchsize', 8),
         r'^train\.batchsize: unknown key'),
        (lambda c: c.model.quantizer.update({'codebook_sise': 8}),
         r'^model\.quantizer\.codebook_sise: unknown key'),
        (lambda c: setattr(
            c, 'train',
            ml_collections.ConfigDict({
                **c.train.to_dict(), 'num_steps': 'ten'
            })), r"^train\.num_steps: expected int, got str \('ten'\)"),
        (lambda c: c.train.update({'batch_size': 12}),
         r'^train\.batch_size: 12 is not divisible by the 8 devices'),
        (lambda c: c.data.update({'image_size': 17}),
         r'^data\.image_size: 17 is not divisible by the model.s downsampling '
         r'factor 2'),
        (lambda c: c.model.quantizer.update({'name': 'nope'}),
         r"^model\.quantizer\.name: unknown quantizer 'nope'"),
        (lambda c: c.model.update({'name': 'nope'}),
         r"^model\.name: unknown tokenizer 'nope'; known: magvit2, titok, vqgan"
        ),
        (lambda c: c.data.update({'name': 'nope'}),
         r"^data\.name: unknown dataset 'nope'"),
        (lambda c: c.update({'task': 'nope'}), r"^task: unknown task 'nope'"),
        (lambda c: c.update({'compute_dtype': 'float16'}),
         r'^compute_dtype: must be'),
        (lambda c: c.loss.update({'gan_loss': 'wgan'}),
         r"^loss\.gan_loss: unknown GAN loss 'wgan'"),
        (lambda c: c.loss.update({'lecam_form': 'mean'}),
         r"^loss\.lecam_form: unknown LeCam form 'mean'; known: per_logit"),
        (lambda c: c.eval.update({'inception_input': 'adm'}),
         r"^eval\.inception_input: must be one of \('pytorch_fid', 'tf'\)"),
        (lambda c: c.train.update({'num_steps': 0}),
         r'^train\.num_steps: must be >= 1, got 0$'),
        (lambda c: c.optimizer.generator.update({'learning_rate': -1e-4}),
         r'^optimizer\.generator\.learning_rate: must be > 0, got -0\.0001$'),
        (lambda c: c.model.update({'channel_multipliers': (1, 1.5)}),
         r'^model\.channel_multipliers: expected tuple of int, got tuple of '
         r'float/int \(\(1, 1\.5\)\)$'),
        # --config.model.channel_multipliers=(1,2,x) arrives as its text.
        (lambda c: c.model.update({'channel_multipliers': ('(1,2,x)',)}),
         r"^model\.channel_multipliers: expected tuple of int, got '\(1,2,x\)', "
         r'which does not parse as one$'),
        (lambda c: c.model.update({'channel_multipliers':
            ()}), r'^model\.channel_multipliers: needs at least 1 level$'),
        (lambda c: c.model.update({'channel_multipliers': (1, 0)}),
         r'^model\.channel_multipliers: every entry must be >= 1, got \(1, 0\)$'
        ),
        (lambda c: c.train.update({'num_stpes': 8}),
         r'^train\.num_stpes: unknown key; did you mean train\.num_steps\?$'),
        (lambda c: c.loss.update({'r1_weight': 10.0}),
         r'^loss\.r1_weight: 10\.0, but the PatchGAN normalizes by its batch '
         r'statistics'),
        # Regularized VQ's contrastive loss weighs a 2D grid of tokens.
        (_titok_with_pcl, r'^loss\.pcl_weight: 1\.0, but the probabilistic '
         r'contrastive loss needs a 2D grid of tokens and TiTok gives 8 1D'),
    ])
def test_bad_configs_name_the_key(mutate, message):
  config = tiny.tokenizer_config()
  config.unlock()
  mutate(config)
  assert re.search(message, _error(config)), _error(config)


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.discriminator.update({'num_layers': 3}),
     r'^data\.image_size: 16: PatchGAN leaves no logits on it after its 3 '
     r'stride-2 convs \(discriminator\.num_layers\): use fewer layers or '
     r'images of 24 pixels or more$'),
    (lambda c:
     (c.data.update({'image_size': 8}), c.discriminator.update(
         {'num_layers': 1}), c.loss.update({'perceptual_weight': 0.1})),
     r'^data\.image_size: 8: LPIPS \(loss\.perceptual_weight\) needs images '
     r'of 16 pixels or more'),
    (_regularized_with_pcl,
     r"^data\.image_size: 36: VGG-19's 4x4 features after 3 2x2 pools do "
     r'not tile the 18x18 token grid'),
])
def test_train_sizes_the_loss_networks_cannot_take(mutate, message):
  """They trained on NaN (or failed at the first step). Such a config
  still validates: evaluating a small converted checkpoint with it runs
  none of those networks."""
  config = tiny.tokenizer_config()
  config.unlock()
  mutate(config)
  config = experiment_config.validate(config, num_devices=1)
  with pytest.raises(ConfigError, match=message):
    tokenizer_config.check_train_sizes(config, tokenizers.build(config.model))


@pytest.mark.parametrize(
    'mutate, message',
    [
        # MAGVIT-v1's UCF clips are 16 frames; MAGVIT-v2's time factor 4 (2
        # in the tiny config) takes 1 + 4k.
        (lambda c: c.data.update({'num_frames': 4}),
         r'^data\.num_frames: 4, but the model downsamples time by 2: clips '
         r'need 1 \+ 2k frames \(e\.g\. 3 or 5\)$'),
        # conv_in's width: channels, normalized by the first res block.
        (lambda c: c.model.update({
            'channels': 6,
            'channel_multipliers': (2, 4)
        }), r'^model\.num_groups: 4 does not divide the width 6 = channels '
         r'\* 1$'),
        (lambda c: c.model.update({'temporal_kernel': 1}),
         r'^model\.temporal_kernel: 1, but with num_temporal_downsamples = 1 '
         r'the encoder never sees the frames between its time strides'),
    ])
def test_bad_video_tokenizer_configs_name_the_key(mutate, message):
  """Each used to fail at init with a traceback naming no key, or (the
  kernel) to train an encoder blind to 3 frames in 4."""
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  mutate(config)
  assert re.search(message, _error(config, 1)), _error(config, 1)


def test_maskgit_decoding_is_named():
  from configs.maskgit import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  config.sample.decoding = 'muse'
  assert re.fullmatch(
      r"sample\.decoding: must be one of \('maskgit', 'titok'\), got 'muse'",
      _error(config, 1))


def test_eval_frame_size_of_video_folders():
  """Divisible by the tokenizer's downsampling; a run recorded before the key
  existed evaluated centred squares, as () does."""
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top
  from configs.maskgit import ucf101_tiny_cpu as maskgit_video  # pylint: disable=g-import-not-at-top
  from vqlab.train import run_record  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config('video_folder')
  config.data.path = '/videos'
  config.data.eval_frame_size = (32, 47)
  assert re.fullmatch(
      r"data\.eval_frame_size: \(32, 47\) is not divisible by the model's "
      r'downsampling factor 2', _error(config, 1))
  generator = maskgit_video.get_config()
  generator.data = config.data.copy_and_resolve_references()
  generator.data.eval_frame_size = (32, 48)
  assert re.fullmatch(
      r'data\.eval_frame_size: \(32, 48\), but a generator models one token '
      r'grid, made of its train and eval frames alike: set it to \(\)',
      _error(generator, 1))
  joint = tiny_cpu.get_config()
  joint.data = data_lib.default_config('joint')
  joint.data.video = config.data.copy_and_resolve_references()
  joint.data.video.eval_frame_size = (32, 48)
  assert re.fullmatch(
      r'data\.video\.eval_frame_size: \(32, 48\), but joint data evaluates '
      r'its images and videos at data\.image_size: set it to \(\)',
      _error(joint, 1))
  config.data.eval_frame_size = ()
  old = run_record.as_json_tree(config)
  del old['data']['eval_frame_size']
  assert not run_record.differences(old, config)
  config.data.eval_frame_size = (32, 48)
  assert run_record.differences(old, config) == {
      'data.eval_frame_size': ([], [32, 48])
  }


def test_stylegan_discriminator_needs_train_sizes_it_halves_evenly():
  """Checked before training only: an eval at another size than the
  training's never runs the discriminator."""
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  config.data.image_size = 18
  config = experiment_config.validate(config, num_devices=1)
  with pytest.raises(
      ConfigError, match=r'^data\.image_size: 18 is not divisible by 2\^2: '
      r'the StyleGAN discriminator halves it in each of its 2 blocks'):
    tokenizer_config.check_train_sizes(config, tokenizers.build(config.model))


def test_joint_batches_divide_into_the_devices_and_microbatches():
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  config.data = data_lib.default_config('joint')
  config.data.image_batch_fraction = 0.25
  config.train.batch_size = 8  # 2 images, 6 videos.
  experiment_config.validate(config, num_devices=2)
  config.train.microbatches = 2
  assert re.fullmatch(
      r'data\.image_batch_fraction: 0\.25 of the global batch 8 gives 2 '
      r'images and 6 videos; need at least one of each, both divisible by 4 '
      r'\(2 devices x 2 microbatches\)\.', _error(config, 2))
  config.train.microbatches = 1
  assert 'divisible by 4 (4 devices x 1 microbatches)' in _error(config, 4)


def _main_error_line(workdir, *overrides: str) -> str:
  """Runs the quickstart with overrides on 8 CPU devices; it must fail
  cleanly. Returns the last stderr line."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=compile_options.subprocess_xla_flags(8))
  proc = subprocess.run([
      sys.executable,
      os.path.join(ROOT, 'main.py'),
      '--config=' + os.path.join(ROOT, 'configs', 'quickstart.py'),
      f'--workdir={workdir}', *overrides
  ], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  return proc.stderr.strip().splitlines()[-1]


def test_main_reports_one_line_before_compiling(tmp_path):
  last = _main_error_line(tmp_path, '--config.train.batch_size=12')
  assert last == ('config error: train.batch_size: 12 is not divisible by the '
                  '8 devices')
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_main_reports_bad_data_values_in_one_line(tmp_path):
  last = _main_error_line(tmp_path, '--config.data.eval_photos=("nope",)')
  assert last.startswith("data error: data.eval_photos: unknown photos "
                         "['nope']"), last


def test_main_reports_missing_weight_file_in_one_line(tmp_path):
  last = _main_error_line(tmp_path / 'run', '--config.eval.fid=on',
                          f'--config.weights_dir={tmp_path}/weights')
  assert last.startswith(
      'weights error: missing the FID InceptionV3 weights'), last
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
    if path == os.path.join('configs', 'magvit2', 'tiny_cpu.py'):
      yield path, ('video_clips',)  # Real videos.
      yield path, ('video_folder',)  # Your videos (data.path unset).


@pytest.mark.parametrize('path, args', list(_shipped_config_calls()))
def test_every_shipped_config_validates(path, args):
  module = path[:-3].replace(os.sep, '.')
  config = __import__(module, fromlist=['get_config']).get_config(*args)
  experiment_config.validate(config, num_devices=1)


def test_discriminator_keys_follow_the_named_discriminator():
  config = tiny.tokenizer_config()
  config.discriminator.name = 'stylegan'  # Still has PatchGAN's keys.
  assert _error(config).startswith(
      "discriminator.name: 'stylegan' does not take discriminator.num_layers, "
      "discriminator.use_norm, which this config sets for discriminator "
      "'patchgan': a switched discriminator needs its own section")
  switched = tiny.tokenizer_config()
  switched.model.quantizer.name = 'lfq'  # The same one level down.
  assert _error(switched).startswith(
      "model.quantizer.name: 'lfq' does not take model.quantizer.beta, ")
  config.discriminator = ml_collections.ConfigDict({'name': 'stylegan'})
  config.data.image_size = 32  # Its five blocks halve it 5 times.
  filled = experiment_config.validate(config, num_devices=8)
  assert filled.discriminator.channel_multipliers == (2, 4, 4, 4, 4)


# ------------------------------------------------------------------ domains ---
# Numeric keys that legitimately take any value, each with the reason. Every
# other numeric key of every default config needs an entry in
# vqlab/train/domains.py. (None so far: seeds are numpy seeds, >= 0; a
# guidance scale w < 0 would guide away from the condition.)
ANY_VALUE = {}


def _every_component():
  """Valid experiment configs that together hold every default config: each
  task, tokenizer, quantizer, discriminator, generator and dataset."""

  def tokenizer_experiment():
    config = experiment_config.base_config()
    config.update(tasks.get('tokenizer').default_config())
    return config

  for model in tokenizers.names():
    for quantizer in quantizers.names():
      config = tokenizer_experiment()
      config.model = tokenizers.default_config(model)
      config.model.quantizer = quantizers.default_config(quantizer)
      yield config
  config = tokenizer_experiment()
  config.discriminator = discriminators.default_config('stylegan')
  yield config
  for dataset in data_lib.names():
    config = tokenizer_experiment()
    config.data = data_lib.default_config(dataset)
    if data_lib.kind(dataset) != 'image':
      config.model = tokenizers.default_config('magvit2')
    yield config
  for generator in generators.names():
    config = experiment_config.base_config()
    config.update(tasks.get('generator').default_config())
    config.model = generators.default_config(generator)
    yield config
  config = experiment_config.base_config()
  config.update(tasks.get('titok_proxy').default_config())
  yield config


def _leaves(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _is_numeric(value) -> bool:
  if isinstance(value, (tuple, list)):
    return bool(value) and all(_is_numeric(v) for v in value)
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.lru_cache(maxsize=1)
def _numeric_keys() -> dict[str, ml_collections.ConfigDict]:
  """Every numeric key (and every key with a domain) of every default
  config -> a valid experiment config that has it."""
  keys = {}
  for config in _every_component():
    for path, value in _leaves(experiment_config.validate(
        config, num_devices=1)):
      if _is_numeric(value) or path in domains.DOMAINS:
        keys.setdefault(path, config)
  return keys


def test_every_numeric_key_has_a_domain():
  keys = _numeric_keys()
  assert len(keys) > 150  # The sweep sees every component.
  missing = sorted(set(keys) - set(domains.DOMAINS) - set(ANY_VALUE))
  assert not missing, f'add these keys to vqlab/train/domains.py: {missing}'


def _set(config, path, value):
  *sections, key = path.split('.')
  for section in sections:
    config = config[section]
  config[key] = value


def _outside(value, domain):
  """Values of the type of `value` (a default) outside `domain`: one below,
  and one above when the domain is bounded."""
  one = float if isinstance(value, float) or (isinstance(
      value, (tuple, list)) and value and isinstance(value[0], float)) else int
  probes = [one(-2)]
  if domain.high < float('inf'):
    probes.append(one(domain.high) + (0.5 if one is float else 1))
  if isinstance(value, (tuple, list)):
    return [(p, *value[1:]) for p in probes]
  return probes


def test_values_outside_their_domain_name_the_full_key():
  wrong = []
  for path, config in _numeric_keys().items():
    if path in ANY_VALUE:
      continue
    default = dict(_leaves(config)).get(path)
    for value in _outside(default, domains.DOMAINS[path]):
      broken = copy.deepcopy(config)
      _set(broken, path, value)
      try:
        experiment_config.validate(broken, num_devices=1)
        wrong.append(f'{path}={value!r}: accepted')
      except ConfigError as e:
        if not re.match(rf'{re.escape(path)}: (every entry )?must be ', str(e)):
          wrong.append(f'{path}={value!r}: {e}')
  assert not wrong, '\n'.join(wrong)


def test_vq_diffusion_steps_fit_the_chain():
  config = experiment_config.base_config()
  config.update(tasks.get('generator').default_config())
  config.model = generators.default_config('vq_diffusion')
  config.sample.diffusion_steps = config.model.num_timesteps + 1
  assert _error(config, num_devices=1) == (
      'sample.diffusion_steps: 101 is more than the model.num_timesteps 100 '
      'of the chain')


def test_a_generator_refuses_joint_data():
  """Joint images and videos failed in --mode=tokenize with an IndexError
  (after writing tokens/metadata.json) and on the fly with a wrong token
  shape."""
  config = experiment_config.base_config()
  config.update(tasks.get('generator').default_config())
  config.data = data_lib.default_config('joint')
  assert _error(
      config,
      num_devices=1).startswith("data.name: 'joint' mixes images and videos")


@pytest.mark.parametrize('section, quantizer, overrides, message', [
    ('quantizer', 'lfq', {
        'codebook_size': 1000
    }, r'^model\.quantizer\.codebook_size: must be a power of 2'),
    ('quantizer', 'vq', {
        'restart_threshold': 1.0
    }, r'^model\.quantizer\.restart_threshold: 1\.0 > 0 needs ema=True'),
    ('pixel_decoder', 'vq', {
        'restart_threshold': 1.0
    }, r'^model\.pixel_decoder\.quantizer\.restart_threshold: 1\.0 > 0 needs'),
])
def test_quantizer_build_errors_name_the_full_key(section, quantizer, overrides,
                                                  message):
  """Relations the domains cannot express are checked when the model is
  built; the message still starts with the full key."""
  model = tokenizers.default_config('titok')
  model.decoder_output = 'proxy_pixels'
  model.proxy_codebook_size = model.pixel_decoder.quantizer.codebook_size
  model.pixel_decoder.channel_multipliers = (1, 1, 1, 1)  # f = patch_size.
  target = model if section == 'quantizer' else model.pixel_decoder
  target.quantizer = quantizers.default_config(quantizer)
  target.quantizer.update(overrides)
  with pytest.raises(ConfigError, match=message):
    tokenizers.build(model)


def test_switching_the_dataset_name_alone_names_the_foreign_keys():
  config = tiny.tokenizer_config()
  config.data.name = 'image_folder'  # The photos' keys stay behind.
  with pytest.raises(
      ConfigError, match=r"^data\.name: 'image_folder' does "
      r'not take data\.crop_min_fraction, .*image_folder\.py'):
    experiment_config.validate(config, 1)


def test_the_model_config_is_checked_once_per_run(monkeypatch):
  """The experiment's validation checks the model (with its quantizer) and
  the discriminator; building the task then trusts them instead of checking
  them again."""
  calls = []
  validate = registry_lib.Registry.validate
  monkeypatch.setattr(
      registry_lib.Registry, 'validate',
      lambda self, *args, **kwargs: calls.append(self.kind) or validate(
          self, *args, **kwargs))
  # Their aliases, bound at import.
  for package in (tokenizers, quantizers):
    monkeypatch.setattr(package, 'validate', package.REGISTRY.validate)
  config = experiment_config.validate(tiny.tokenizer_config(), num_devices=8)
  tokenizer_task.TokenizerTask(config)
  assert sorted(calls) == ['discriminator', 'tokenizer'], calls


def test_titok_stage_1_checks_its_train_crops():
  """A train_image_size the patches do not tile failed at init, unnamed."""
  from configs.titok import tiny_stage1  # pylint: disable=g-import-not-at-top
  config = tiny_stage1.get_config()
  config.data.train_image_size = config.model.patch_size + 1
  assert re.match(
      r'^data\.train_image_size: \d+ is not divisible by '
      r'model\.patch_size', _error(config, 1))


def test_training_refuses_sizes_that_evaluating_takes(tmp_path):
  from vqlab.train import experiment  # pylint: disable=g-import-not-at-top
  config = tiny.tokenizer_config()
  config.discriminator.num_layers = 3  # No logits on 16x16 images.
  config.eval.lpips = config.eval.fid = 'off'
  experiment.Experiment(config, str(tmp_path / 'eval'))  # --mode=eval.
  with pytest.raises(ConfigError, match=r'^data\.image_size: 16: PatchGAN'):
    experiment.Experiment(config, str(tmp_path / 'train'), lock='train')
  assert not os.path.exists(tmp_path / 'train')  # Nothing written.


def test_configs_written_before_the_task_split_still_build():
  """A user's config copied from configs/ before 2026-12-07 calls
  generator.default_config() / tokenizer.default_config()."""
  from vqlab.train.tasks import generator  # pylint: disable=g-import-not-at-top
  from vqlab.train.tasks import generator_config  # pylint: disable=g-import-not-at-top
  from vqlab.train.tasks import tokenizer  # pylint: disable=g-import-not-at-top
  from vqlab.train.tasks import tokenizer_config  # pylint: disable=g-import-not-at-top
  assert (generator.default_config().to_dict() ==
          generator_config.default_config().to_dict())
  assert (tokenizer.default_config().to_dict() ==
          tokenizer_config.default_config().to_dict())
  assert generator.validate is generator_config.validate
  assert tokenizer.validate is tokenizer_config.validate
