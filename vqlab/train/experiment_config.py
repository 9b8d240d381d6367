"""The experiment config: common sections, and validation of a whole config.

An experiment config has the common sections below plus its task's sections
(`vqlab.train.tasks`), its model (a registered tokenizer or generator) and its
data (a registered dataset). `validate` checks all of it before anything is
built or compiled and returns the config with every default filled in.
"""

import ml_collections

from vqlab import config_schema
from vqlab import data as data_lib
from vqlab.data import joint
from vqlab.errors import ConfigError
from vqlab.nn import inception
from vqlab.train import domains
from vqlab.train import optimizers
from vqlab.train import partitioning
from vqlab.train import tasks

COMPUTE_DTYPES = ('float32', 'bfloat16')
NETWORK_MODES = ('auto', 'on', 'off')


def base_config() -> ml_collections.ConfigDict:
  """Sections every experiment has, with their defaults."""
  config = ml_collections.ConfigDict()
  config.task = 'tokenizer'  # A name in vqlab.train.tasks.names().
  config.seed = 0  # Seeds init and the per-step rng stream.
  config.compute_dtype = 'float32'  # 'float32' or 'bfloat16'; params stay f32.
  # Directory of pretrained metric-network files (VGG16/19, Inception); empty:
  # $VQLAB_WEIGHTS_DIR or ~/.cache/vqlab/weights (see vqlab/weights/files.py).
  config.weights_dir = ''

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 1000  # Total optimizer steps.
  train.batch_size = 16  # Global batch (all hosts and devices).
  # Gradient accumulation: each step's batch runs as this many microbatches
  # (example i in microbatch i % k), their gradients averaged: the same
  # global batch in 1 / k of the activation memory (terms made from a whole
  # batch are each microbatch's: vqlab/train/tasks/base.py,
  # accumulate_gradients).
  train.microbatches = 1
  train.log_every = 50  # Steps between scalar summaries.
  train.eval_every = 500  # Steps between evals (0: only at the end).
  train.checkpoint_every = 500  # Steps between async checkpoint saves.
  train.max_to_keep = 3  # Checkpoints kept on disk.
  train.preemption_check_every = 10  # Steps between hosts' preemption syncs.

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 16  # Global eval batch.
  ev.max_batches = -1  # Eval batches per eval; -1: the whole split.
  # The checkpoint --mode=eval and --mode=sample read; -1: the newest.
  ev.step = -1
  ev.num_images = 8  # Examples shown in the PNG/TensorBoard grid.
  # 'auto': computed when the network's weight file is present; 'on': a
  # missing file is an error; 'off': skipped.
  ev.lpips = 'auto'  # LPIPS-VGG16 (needs the VGG16 file).
  ev.fid = 'auto'  # rFID / FID (needs the Inception file).
  # .npz of reference statistics (mu, sigma): also report FID against them.
  ev.fid_reference = ''
  # What Inception sees (FID, IS): 'pytorch_fid' (pytorch-fid's input) or
  # 'tf' (the TF graph's: the published Inception Scores and the ADM
  # reference batches); vqlab.nn.inception.network_input.
  ev.inception_input = 'pytorch_fid'
  # rFVD / FVD of video data (needs the I3D file and clips of >= 9 frames),
  # on the first fvd_frames frames of each clip (16: the standard protocol).
  ev.fvd = 'auto'
  ev.fvd_frames = 16
  # .npz of reference I3D statistics (mu, sigma) for the FVD of samples.
  ev.fvd_reference = ''

  config.mesh = partitioning.default_config()
  config.data = data_lib.default_config('photos')
  return config


def reference_config(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete default config for the components `config` names.

  Raises:
    ConfigError: when the task, model, quantizer or dataset name is unknown.
  """
  task_name = config.get('task', 'tokenizer')
  reference = base_config()
  task = tasks.get(task_name)
  reference.update(task.default_config())
  # Sections whose keys depend on the component they name (the tokenizer
  # task's discriminator) are checked against that component's defaults.
  for key, registry in task.subcomponents.items():
    if key in config:
      reference[key] = registry.validate(config[key], key)
  if 'model' in config:
    # The model's registry checks it, sub-components (its quantizer) included.
    reference.model = task.model_registry.validate(config.model, 'model')
  if 'data' in config and 'name' in config.data:
    data_lib.REGISTRY.check_name(config.data.name)
    reference.data = data_lib.reference_config(config.data)
    foreign = sorted(set(config.data.keys()) - set(reference.data.keys()))
    if foreign:  # Typically another dataset's keys under a switched name.
      raise ConfigError(
          'data.name',
          (f'{config.data.name!r} does not take data.{", data.".join(foreign)}'
           ', which this config sets for its own dataset: use a config made '
           'for it (your images: --config=configs/image_folder.py:PATH)'))
  return reference


def _optimizer_sections(optimizer, key: str = 'optimizer'):
  """(dotted key, section) of every optimizer config under `optimizer` (one,
  or one per network: optimizer.generator, optimizer.discriminator)."""
  if not isinstance(optimizer, ml_collections.ConfigDict):
    return []
  if 'schedule' in optimizer:
    return [(key, optimizer)]
  return [(f'{key}.{name}', section)
          for name, section in optimizer.items()
          if isinstance(section, ml_collections.ConfigDict)]


def validate(config: ml_collections.ConfigDict,
             num_devices: int) -> ml_collections.ConfigDict:
  """Checks keys, types and values; returns the filled-in config.

  Every number is checked against its domain (`domains.DOMAINS`) first, then
  the relations between keys (here and in the task's `validate`).

  Raises:
    ConfigError: naming the first offending key.
  """
  task = tasks.get(config.get('task', 'tokenizer'))
  reference = reference_config(config)
  config_schema.check_against(config, reference)
  config = config_schema.filled(config, reference)

  config_schema.check_domains(config, domains.DOMAINS)

  require = config_schema.require
  require(config.compute_dtype in COMPUTE_DTYPES, 'compute_dtype',
          f'must be one of {COMPUTE_DTYPES}, got {config.compute_dtype!r}')
  for section in ('train', 'eval'):
    batch = config[section].batch_size
    require(batch % num_devices == 0, f'{section}.batch_size',
            f'{batch} is not divisible by the {num_devices} devices')
  micro = config.train.microbatches
  require(
      config.train.batch_size % (num_devices * micro) == 0,
      'train.microbatches', f'{micro}: train.batch_size '
      f'{config.train.batch_size} must divide into {micro} microbatches of a '
      f'multiple of the {num_devices} devices')
  if config.data.get('name') == 'joint':
    try:
      joint.split_batch(
          config.data, config.train.batch_size, num_devices * micro,
          f'{num_devices * micro} ({num_devices} devices x '
          f'{micro} microbatches)')
    except ValueError as e:
      raise ConfigError('data.image_batch_fraction',
                        str(e).split(': ', 1)[1]) from None
  partitioning.compiled_rules(config.mesh.rules)
  for key, section in _optimizer_sections(config.get('optimizer')):
    optimizers.validate(section, key)
  require(
      not config.ema.warmup or config.ema.decay > 0, 'ema.warmup',
      'True, but ema.decay is 0 (no EMA), so this run ignores it; leave '
      'it at False')
  for key in ('lpips', 'fid', 'fvd'):
    require(config.eval[key] in NETWORK_MODES, f'eval.{key}',
            f'must be one of {NETWORK_MODES}, got {config.eval[key]!r}')
  require(
      config.eval.inception_input in inception.PROTOCOLS,
      'eval.inception_input', f'must be one of {inception.PROTOCOLS}, '
      f'got {config.eval.inception_input!r}')
  task.validate(config)
  return config
