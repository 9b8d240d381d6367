"""The generator task's shared `loss` / `sample` sections against the model:
a setting the chosen generator would ignore is a ConfigError naming it."""

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs.gpt import imagenet256 as gpt_imagenet
from configs.gpt import tiny_cpu as gpt_tiny
from configs.gpt import tiny_superres_cpu as gpt_superres
from configs.maskgit import tiny_cpu as maskgit_tiny
from configs.maskgit import ucf101_tiny_cpu as maskgit_video
from configs.vq_diffusion import tiny_class as vq_diffusion_class
from configs.vq_diffusion import tiny_text as vq_diffusion_text
from tests import tiny_tokenizer_config
from vqlab import generators
from vqlab.errors import ConfigError
from vqlab.train import experiment_config
from vqlab.train import run_record
from vqlab.train.tasks import generator_config


def _maskgit_class():
  config = maskgit_tiny.get_config()
  config.model.num_classes = 10
  return config


def _gpt_class():
  config = gpt_tiny.get_config()
  config.model.condition = 'class'
  config.model.num_classes = 10
  return config


def _vq_diffusion_none():
  config = vq_diffusion_class.get_config()
  config.model.condition = 'none'
  config.model.num_classes = generators.default_config(
      'vq_diffusion').num_classes  # Read with condition 'class' only.
  config.loss.label_drop = 0.0  # Its off value: accepted.
  return config


def _vq_diffusion_purity():
  config = vq_diffusion_class.get_config()
  config.sample.diffusion_sampler = 'purity'
  return config


def _maskgit_frame_prediction():
  config = maskgit_video.get_config()
  config.loss.observed_frames = 1
  return config


def _gpt_sliding_window():
  config = gpt_tiny.get_config()
  config.sample.grid_shape = (12, 12)
  return config


IGNORED = [
    # The cases: guidance without a condition or with a generator
    # that has no schedule, label dropout / smoothing a GPT cannot use.
    (maskgit_tiny.get_config, 'sample.guidance_scale', 2.0),
    (_vq_diffusion_none, 'sample.guidance_scale', 1.0),
    (vq_diffusion_class.get_config, 'sample.guidance_schedule', 'linear'),
    (_gpt_class, 'sample.guidance_schedule', 'linear'),
    (gpt_tiny.get_config, 'loss.label_drop', 0.2),
    (gpt_superres.get_config, 'loss.label_drop', 0.2),
    (_gpt_class, 'loss.label_smoothing', 0.2),
    (_maskgit_class, 'sample.guidance_schedule', 'linear'),  # w = 0.
    # Another generator's keys.
    (maskgit_tiny.get_config, 'sample.top_k', 100),
    (maskgit_tiny.get_config, 'sample.diffusion_steps', 10),
    (maskgit_tiny.get_config, 'loss.aux_weight', 1e-3),
    (gpt_tiny.get_config, 'sample.num_steps', 12),
    (gpt_tiny.get_config, 'loss.mask_schedule', 'linear'),
    (vq_diffusion_class.get_config, 'sample.choice_temperature', 1.0),
    (vq_diffusion_class.get_config, 'sample.use_cache', False),
    (vq_diffusion_class.get_config, 'sample.prompts', ('a cat',)),
    (maskgit_tiny.get_config, 'sample.grid_shape', (10, 10)),
    # Labels of training examples: for class models only.
    (maskgit_tiny.get_config, 'sample.labels', 'train'),
    (vq_diffusion_text.get_config, 'sample.labels', 'train'),
    (gpt_superres.get_config, 'sample.labels', 'train'),
    (gpt_superres.get_config, 'sample.grid_shape', (10, 10)),
    (_gpt_sliding_window, 'sample.use_cache', False),
    (vq_diffusion_class.get_config, 'sample.purity_weight', 2.0),
    (maskgit_tiny.get_config, 'sample.diffusion_sampler', 'purity'),
    (maskgit_tiny.get_config, 'sample.observed_frames', 1),  # Images.
    (_gpt_sliding_window, 'sample.observed_frames', 1),
    (maskgit_tiny.get_config, 'loss.observed_frames', 1),  # Images.
    (maskgit_video.get_config, 'loss.observed_frames_rate', 1.0),  # k = 0.
    (gpt_tiny.get_config, 'loss.observed_frames', 1),  # Autoregressive.
    # Model keys of another condition (an unconditional model trained on
    # labelled data, without a word).
    (gpt_tiny.get_config, 'model.num_classes', 1000),
    (_gpt_class, 'model.cond_length', 64),
    (gpt_tiny.get_config, 'model.cond_vocab_size', 32),
    (_vq_diffusion_none, 'model.num_classes', 1000),
    (vq_diffusion_class.get_config, 'model.cond_dim', 512),
    (vq_diffusion_text.get_config, 'model.num_classes', 1000),
    (vq_diffusion_class.get_config, 'model.text_encoder', 'bytes'),
    # Frame prediction's clips come without their condition images.
    (gpt_superres.get_config, 'sample.observed_frames', 1),
]


@pytest.mark.parametrize('make_config, key, value', IGNORED)
def test_an_ignored_setting_is_refused_by_name(make_config, key, value):
  config = make_config()
  experiment_config.validate(config, 1)
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=rf'^{key}: .*ignores it'):
    experiment_config.validate(config, 1)


def _bytes_text():
  config = vq_diffusion_text.get_config()
  config.model.text_encoder = 'bytes'
  return config


@pytest.mark.parametrize('make_config, key, value, message', [
    (gpt_superres.get_config, 'condition.image', 'grayscale', None),
    (gpt_tiny.get_config, 'condition.tokenizer_step', 3,
     'condition.tokenizer is empty'),
    (_bytes_text, 'text.encoder', 'clip', "model.text_encoder is 'bytes'"),
    (_bytes_text, 'text.encoder_dir', '/weights/clip',
     "model.text_encoder is 'bytes'"),
])
def test_a_section_key_this_config_never_reads_is_refused(
    make_config, key, value, message):
  """Accepted and ignored before: a condition factor without downsampling,
  a condition tokenizer step without its run, a frozen text encoder's keys
  for a byte-level one, EMA warm-up without an EMA."""
  config = make_config()
  experiment_config.validate(config, 1)
  if key == 'condition.image':  # Then the factor is not read.
    config.condition.image, config.condition.factor = value, 2
    key, message = 'condition.factor', "condition.image is not 'downsampled'"
  else:
    section, name = key.split('.')
    config[section][name] = value
  with pytest.raises(
      ConfigError, match=rf'^{key}: .*, but {message}, so this '
      'run ignores it; leave it at'):
    experiment_config.validate(config, 1)


@pytest.mark.parametrize(
    'make_config', [maskgit_tiny.get_config, tiny_tokenizer_config.get_config])
def test_ema_warmup_without_an_ema_is_refused(make_config):
  config = make_config()
  config.ema.warmup = True
  with pytest.raises(
      ConfigError, match=r'^ema.warmup: True, but ema.decay is '
      r'0 \(no EMA\), so this run ignores it'):
    experiment_config.validate(config, 1)


def test_a_text_run_recorded_with_the_class_configs_num_classes_resumes(
    tmp_path):
  """Text configs inherited the class config's model.num_classes (6) until
  it became an error to set it on a text model: their runs' records keep it,
  which is no difference (neither reads it); on a class model it is one."""
  workdir = str(tmp_path)
  recorded = experiment_config.validate(vq_diffusion_text.get_config(), 1)
  recorded_json = run_record.as_json_tree(recorded)
  recorded_json['model']['num_classes'] = 6
  run_record.write(workdir, ml_collections.ConfigDict(recorded_json))
  for trains in (True, False):
    assert run_record.check(recorded, workdir, False, checkpointed=True,
                            trains=trains) == {}
  classes = experiment_config.validate(vq_diffusion_class.get_config(), 1)
  run_record.write(workdir, classes)
  classes.model.num_classes = 5
  with pytest.raises(ConfigError, match='^model.num_classes: differs'):
    run_record.check(classes, workdir, False, checkpointed=True)


def test_a_generator_run_asked_for_lpips_is_refused():
  config = maskgit_tiny.get_config()
  config.eval.lpips = 'on'
  with pytest.raises(ConfigError, match=r"^eval.lpips: 'on', but a generator"):
    experiment_config.validate(config, 1)


READ = [
    (_maskgit_class, 'sample.guidance_scale', 2.0),
    (_maskgit_class, 'loss.label_drop', 0.2),
    (_gpt_class, 'sample.guidance_scale', 2.0),
    (_gpt_class, 'sample.top_p', 0.9),
    (_gpt_class, 'sample.grid_shape', (10, 10)),
    (vq_diffusion_class.get_config, 'sample.truncation', 0.86),
    (_vq_diffusion_purity, 'sample.purity_weight', 2.0),
    (maskgit_video.get_config, 'sample.observed_frames', 1),
    (gpt_tiny.get_config, 'sample.observed_frames', 1),  # Build: video?
    (maskgit_video.get_config, 'loss.observed_frames', 1),
    (_maskgit_frame_prediction, 'loss.observed_frames_rate', 1.0),
    (vq_diffusion_text.get_config, 'sample.prompts', ('a cat',)),
    (vq_diffusion_text.get_config, 'loss.label_drop', 0.2),
    (_gpt_class, 'sample.labels', 'train'),
    (vq_diffusion_class.get_config, 'sample.labels', 'train'),
]


@pytest.mark.parametrize('make_config, key, value', READ)
def test_a_read_setting_is_accepted(make_config, key, value):
  config = make_config()
  section, name = key.split('.')
  config[section][name] = value
  experiment_config.validate(config, 1)


def test_maskgit_guidance_schedule_is_read_with_guidance():
  config = _maskgit_class()
  config.sample.guidance_scale = 2.0
  config.sample.guidance_schedule = 'linear'
  experiment_config.validate(config, 1)


# Guidance against a null condition that label dropout never trained: the
# ImageNet GPT (taming trains no null class) and each conditional generator.
@pytest.mark.parametrize('make_config, label_drop', [
    (gpt_imagenet.get_config, None),
    (_gpt_class, 0.0),
    (_maskgit_class, 0.0),
    (vq_diffusion_class.get_config, 0.0),
    (vq_diffusion_text.get_config, 0.0),
])
def test_guidance_without_label_dropout_is_refused(make_config, label_drop):
  config = make_config()
  config.sample.guidance_scale = 2.0
  if label_drop is None:  # The config's own 0.
    assert config.loss.label_drop == 0.0
  else:
    experiment_config.validate(config, 1)  # Its label dropout: accepted.
    config.loss.label_drop = label_drop
  with pytest.raises(ConfigError,
                     match=r'^sample.guidance_scale: 2.0 .*label_drop = 0'):
    experiment_config.validate(config, 1)


class _Recorder:
  """A settings section that records the dotted keys read from it."""

  def __init__(self, section: ml_collections.ConfigDict, name: str,
               log: set[str]):
    self._section, self._name, self._log = section, name, log

  def __getattr__(self, key):
    self._log.add(f'{self._name}.{key}')
    return self._section[key]


def _abstract_cond(config, spec, batch):
  if spec.kind == 'class':
    return jax.ShapeDtypeStruct((batch,), jnp.int32)
  if spec.kind == 'text':
    length = config.text.max_length
    return {
        'states':
            jax.ShapeDtypeStruct((batch, length, config.model.cond_dim),
                                 jnp.float32),
        'mask':
            jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    }
  return None


# Conditional configs with guidance on, where every key the functions read
# changes what they compute.
@pytest.mark.parametrize('make_config', [
    _maskgit_class, _gpt_class, vq_diffusion_class.get_config,
    vq_diffusion_text.get_config, _vq_diffusion_purity,
    _maskgit_frame_prediction
])
def test_settings_read_lists_every_key_loss_and_sample_read(make_config):
  """Traced abstractly (no compile): a key the generator's loss or sampler
  reads but does not declare would be refused whenever a user set it."""
  config = experiment_config.validate(make_config(), 1)
  config.sample.guidance_scale = 1.0
  api = generators.get_api(config.model.name)
  model = generators.build(config.model)
  spec = api.condition_spec(config.model)
  shape = tuple(
      config.model.get('token_shape', (config.model.get('length', 0),)))
  tokens = jax.ShapeDtypeStruct((2, *shape), jnp.int32)
  cond = _abstract_cond(config, spec, 2)
  rng = jax.random.key(0)
  params = jax.eval_shape(lambda t, c: api.init(model, rng, t, c), tokens, cond)
  log = set()
  loss_settings = _Recorder(config.loss, 'loss', log)
  sample_settings = _Recorder(config.sample, 'sample', log)
  jax.eval_shape(
      lambda p, t, c: api.loss(model, p, t, c, rng, settings=loss_settings,
                               train=True), params, tokens, cond)
  jax.eval_shape(
      lambda p, c: api.sample(model, p, rng, 2, c, settings=sample_settings,
                              loss_settings=loss_settings, token_shape=shape),
      params, cond)
  assert log and log <= generator_config.settings_read(config), (
      log - generator_config.settings_read(config))


@pytest.mark.parametrize('generator, tokenizer', [
    ('gpt.imagenet256', 'vqgan.taming_f16'),
    ('maskgit.titok:l32', 'titok.l32:2'),
    ('maskgit.titok:b64', 'titok.b64:2'),
])
def test_paper_generators_tokenize_images_as_their_tokenizers_saw_them(
    generator, tokenizer):
  """Where the releases share one image transform, the generator's tokens
  come from images resized as the tokenizer's training images were."""

  def data_of(name):
    module, _, argument = name.partition(':')
    get_config = importlib.import_module(f'configs.{module}').get_config
    return (get_config(argument) if argument else get_config()).data

  made, seen = data_of(generator), data_of(tokenizer)
  assert (made.resize_method, made.image_size) == (seen.resize_method,
                                                   seen.image_size)
