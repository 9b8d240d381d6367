"""`main.py --mode=tokenize`: a trained tokenizer turns a dataset into shards.

For a generator config, the tokenizer of `tokenizer.workdir` encodes the
train and eval splits of `data` (the train split with its augmentation, one
draw per example, `tokens.num_train_examples` of them; the eval split in
order) into `tokens.dir` (format: `vqlab.data.token_shards`).

The write is resumable: shard i holds global batches [i k, (i + 1) k) of the
split's deterministic stream, so a rerun skips the shards on disk and
regenerates only the missing ones, bit-identically. A shard appears under its
final name only once complete; the split is marked complete in the metadata
only after its last shard. Rerunning into a directory made with another
tokenizer, data or condition config is refused; a split whose files changed
since (the source's `fingerprint`: image_folder's) is written again.

Spatial GPTs (model.condition 'tokens'): each example's condition image
(`condition.image`) is encoded into 'cond_tokens' by the same tokenizer, or
by the run of `condition.tokenizer`.
"""

import json
import math
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vqlab import data as data_lib
from vqlab import fileio
from vqlab.data import token_shards
from vqlab.errors import ConfigError
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment_config
from vqlab.train import partitioning
from vqlab.train import pins
from vqlab.train import progress as progress_lib
from vqlab.train import run_record
from vqlab.train import trained_tokenizer
from vqlab.train import workdir_lock
from vqlab.train.tasks import generator
from vqlab.train.tasks import generator_checks
from vqlab.train.tasks import spatial_conditions

IMAGE_KEYS = ('image', 'video', 'mask')


def _num_examples(config, source, split: str) -> int:
  if split == 'eval':
    return source.num_examples
  wanted = config.tokens.num_train_examples
  if wanted > 0:
    return wanted
  if source.num_examples is None:
    raise ConfigError(
        'tokens.num_train_examples', f'the {config.data.name} '
        'train set is drawn on the fly (random crops) and has '
        'no size: set how many examples to tokenize')
  return source.num_examples


def _tokenizer_step(config, directory: str) -> int:
  """tokenizer.step, with -1 (the newest) read as the step of the shards
  already in `directory` when they are of the same tokenizer run (a rerun
  after that run trained on continues them), else as that run's newest
  step, process 0's on every process (the run may save a newer step while
  the processes look, and every shard must be of one step)."""
  step = config.tokenizer.step
  made = generator_checks.shards_tokenizer_step(config, directory)
  if step < 0 and made is not None:
    step = made
    if jax.process_index() == 0:
      print(
          f'vqlab: tokenizer.step = -1 reads step {step}, the step of the '
          f'tokens in {directory}', flush=True)
  elif step < 0:
    newest = checkpoint_lib.newest_step(config.tokenizer.workdir)
    step = -1 if newest is None else newest  # -1: loading says what is missing.
    if newest is not None and jax.process_index() == 0:
      training = run_record.in_training(config.tokenizer.workdir)
      if training:
        print(
            f'vqlab: tokenizer.step = -1 is step {newest} of '
            f'{config.tokenizer.workdir}{training}', flush=True)
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int64(step)))
  return step


def _check_resume(old: dict[str, Any], new: dict[str, Any],
                  directory: str) -> None:
  """ConfigError unless the shards on disk were made like the new ones."""

  def describe(metadata, key):
    if key == 'tokenizer':
      return f'{metadata[key]["workdir"]} at step {metadata[key]["step"]}'
    return repr(metadata[key])

  old = {'condition': {'image': 'none'}, **old}  # Shards made before it.
  # Shards of an older vqlab lack data keys added since: read as they ran.
  old_data, new_data = data_lib.as_recorded(old.get('data', {})), new['data']
  if old_data != new_data:
    differ = sorted(k for k in old_data.keys() | new_data.keys()
                    if old_data.get(k) != new_data.get(k))
    changes = ', '.join(f'data.{k} {old_data.get(k)!r} there, '
                        f'{new_data.get(k)!r} here' for k in differ)
    raise ConfigError(
        'tokens.dir', f'{directory} holds tokens made from other data '
        f'({changes}): use the config they were made with, or another '
        'tokens.dir')
  for key in ('tokenizer', 'condition', 'token_shape', 'batch_size',
              'batches_per_shard', 'process_count'):
    before, now = describe(old, key), describe(new, key)
    if before != now:
      raise ConfigError(
          'tokens.dir', f'{directory} holds tokens made with '
          f'{key} {before}, this config has {now}: use the config '
          'they were made with, or another tokens.dir')


def tokenize(config: ml_collections.ConfigDict, workdir: str, *,
             devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Writes the token shards of both splits; returns a summary.

  Args:
    config: a generator experiment config.
    workdir: the generator run's directory (default home of the shards).
    devices: devices of the mesh (default: all).

  Returns:
    {'tokens_dir', 'train_examples', 'eval_examples', 'shards_written'}.
  """
  with workdir_lock.held(workdir):
    return _tokenize(config, workdir, devices)


def _tokenize(config: ml_collections.ConfigDict, workdir: str,
              devices: list[jax.Device] | None) -> dict[str, Any]:
  """`tokenize` with its workdir's lock held."""
  devices = list(jax.devices() if devices is None else devices)
  config = experiment_config.validate(config, len(devices))
  if config.task != 'generator':
    raise ConfigError(
        'task', f'--mode=tokenize needs a generator config '
        f'(task = generator), got {config.task!r}')
  recorded = (run_record.read(workdir) or {}).get('task', 'generator')
  if recorded != 'generator':
    raise ConfigError(
        '--workdir', f'{workdir} holds a {recorded!r} run (its config.json): '
        "token shards go into a generator run's workdir; use another "
        '--workdir')
  batch_size = config.tokens.batch_size
  if batch_size % len(devices):
    raise ConfigError(
        'tokens.batch_size', f'{batch_size} is not divisible by '
        f'the {len(devices)} devices')
  directory = generator_checks.tokens_dir(config, workdir)
  tok = trained_tokenizer.load(config.tokenizer.workdir,
                               _tokenizer_step(config, directory))
  generator_checks.check_shards_tokenizer(directory, tok)
  mesh = partitioning.make_mesh(config.mesh, devices)
  batch_sharding = partitioning.batch_sharding(mesh)
  replicated = partitioning.replicated(mesh)
  variables = jax.device_put(tok.variables, replicated)
  encode = jax.jit(tok.encode, in_shardings=(replicated, batch_sharding),
                   out_shardings=batch_sharding)
  cond_tok = generator.condition_tokenizer(config)
  condition = generator_checks.condition_metadata(config, cond_tok)
  encode_cond = None
  if condition['image'] != 'none':
    encoder = cond_tok or tok
    cond_variables = jax.device_put(encoder.variables, replicated)
    encode_cond = jax.jit(
        lambda v, x: encoder.encode(
            v, spatial_conditions.condition_images(x, config.condition)),
        in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
  process, num_processes = jax.process_index(), jax.process_count()

  sources = {}
  for split in ('train', 'eval'):
    sources[split] = data_lib.build_for_run(config.data, split=split,
                                            global_batch_size=batch_size,
                                            process_index=process,
                                            process_count=num_processes)
  if getattr(sources['train'], 'several_captions', False):
    raise ConfigError(
        'tokens.source', f'token shards keep one caption per image, but the '
        f'images of data {config.data.get("tfds_name", config.data.name)!r} '
        'hold several, of which training draws one anew each epoch: set '
        "tokens.source = 'on_the_fly' (the tokenizer encodes each batch)")
  first = next(iter(sources['eval'].batches()))
  key = [k for k in ('image', 'video') if k in first][0]
  input_shape = tuple(first[key].shape[1:])
  generator_checks.check_model_fits(config.model, tok, input_shape, cond_tok)
  for split, source in sources.items():
    generator_checks.check_data_classes(config.model, source, split)
  metadata = {
      'format': token_shards.FORMAT_VERSION,
      'tokenizer': tok.metadata(),
      'data': json.loads(config.data.to_json_best_effort()),
      'condition': condition,
      'input_key': key,
      'input_shape': list(input_shape),
      'token_shape': list(tok.token_shape(input_shape)),
      'vocab_size': tok.vocab_size,
      'factor_vocab_sizes': list(tok.factor_vocab_sizes),
      'num_classes': sources['eval'].num_classes,
      'batch_size': batch_size,
      'batches_per_shard': config.tokens.batches_per_shard,
      'process_count': num_processes,
      'splits': {},
  }
  # Config, data and tokenizer errors above stop the run before the workdir
  # is made; from here on it is read and written under the lock.
  workdir_lock.acquire(workdir, 'tokenize')
  # The shards decode with these steps only. Pinned under the lock: a
  # tokenize refused by it (the generator training there) could move the
  # training run's pin to another step.
  if process == 0:
    pins.pin_or_warn(tok.workdir, tok.step, workdir, 'tokenizer.step')
    if cond_tok is not None:
      pins.pin_or_warn(cond_tok.workdir, cond_tok.step, workdir,
                       'condition.tokenizer_step')
  old = token_shards.read_metadata(directory)
  if old is not None:
    _check_resume(old, metadata, directory)
    metadata['splits'] = old['splits']
  if process == 0:
    for split in ('train', 'eval'):
      fileio.makedirs(os.path.join(directory, split))
  multihost_utils.sync_global_devices('vqlab_tokenize_dirs')

  written = 0
  summary = {'tokens_dir': directory}
  b = batch_size // num_processes
  for split, source in sources.items():
    num_examples = _num_examples(config, source, split)
    if split == 'train':
      quotas = train_quotas(num_examples, batch_size, num_processes,
                            _host_shard_sizes(source))
      quota, num_batches = quotas[process], math.ceil(max(quotas) / b)
    else:  # Hosts' shards may differ in size: every host pads to the same count.
      num_batches = len(source)
    per_shard = config.tokens.batches_per_shard
    num_shards = math.ceil(num_batches / per_shard)
    info = {
        'num_examples': num_examples,
        'num_batches': num_batches,
        'num_files': num_shards * num_processes,
        'complete': False
    }
    if getattr(source, 'fingerprint', None) is not None:
      info['fingerprint'] = source.fingerprint
    done = metadata['splits'].get(split)
    # Shard files that do not continue this split are renamed `.stale` and
    # the split is written again.
    resumed = _continues(done, info, split, directory)
    if resumed and done.get('complete') and _all_shards_exist(
        directory, split, done['num_files']):
      summary[f'{split}_examples'] = num_examples
      continue
    if not resumed and process == 0:
      for stale in fileio.glob(
          os.path.join(directory, split, token_shards.SHARD_GLOB)):
        fileio.replace(stale, stale + '.stale')
    metadata['splits'][split] = info
    if process == 0:
      token_shards.write_metadata(directory, metadata)
    multihost_utils.sync_global_devices(f'vqlab_tokenize_{split}_start')
    progress = progress_lib.Progress(0, num_batches, batch_size,
                                     enabled=process == 0)
    # One stream across consecutive shards to write: a tf.data source
    # reaches a start step by reading every record before it.
    batches, next_step = None, None
    with jax.set_mesh(mesh):
      for shard in range(num_shards):
        path = token_shards.shard_path(directory, split, shard, process)
        exists = multihost_utils.process_allgather(
            np.asarray(fileio.exists(path)))
        if np.all(exists):
          continue
        start = shard * per_shard
        stop = min(start + per_shard, num_batches)
        parts: dict[str, list[np.ndarray]] = {}
        if next_step != start:
          batches = source.batches(start)
        next_step = stop
        for step in range(start, stop):
          local = next(batches)
          keep = (np.asarray(local['mask'], bool)
                  if split == 'eval' else step * b + np.arange(b) < quota)
          # Where the rows stand in the split's global stream, by which a
          # reader puts the shards of several processes back in order.
          parts.setdefault(token_shards.POSITION, []).append(
              (step * batch_size + process * b + np.arange(b))[keep])
          images = partitioning.global_batch({key: local[key]},
                                             batch_sharding)[key]
          tokens = multihost_utils.global_array_to_host_local_array(
              encode(variables, images), mesh, jax.P(partitioning.BATCH_AXES))
          parts.setdefault(token_shards.TOKENS,
                           []).append(np.asarray(tokens)[keep])
          if encode_cond is not None:
            cond = multihost_utils.global_array_to_host_local_array(
                encode_cond(cond_variables, images), mesh,
                jax.P(partitioning.BATCH_AXES))
            parts.setdefault(token_shards.COND_TOKENS,
                             []).append(np.asarray(cond)[keep])
          for name, value in local.items():
            if name not in IMAGE_KEYS:
              parts.setdefault(name, []).append(np.asarray(value)[keep])
          progress.update(step + 1, {})
        token_shards.write_shard(path, {
            k: np.concatenate(v) for k, v in parts.items()
        })
        written += 1
    progress.close()
    multihost_utils.sync_global_devices(f'vqlab_tokenize_{split}')
    info['complete'] = True
    if process == 0:
      token_shards.write_metadata(directory, metadata)
    summary[f'{split}_examples'] = num_examples
  summary['shards_written'] = written
  return summary


def _continues(done: dict[str, Any] | None, info: dict[str, Any], split: str,
               directory: str) -> bool:
  """Whether the shard files of `split` that the metadata `done` describes
  (None: none) continue the split `info` describes: written for as many
  examples (an interrupted run, or a finished one that lost a shard) of the
  same files (`DataSource` fingerprint). Shards that record no fingerprint
  where the source has one (an older vqlab) do not: adding one image to a
  folder can change which images are held out for eval at the same count,
  and shards made from the old files would be trained on the new eval
  images (a rewrite costs a tokenize; a silent overlap spoils every eval)."""
  if not done or done['num_examples'] != info['num_examples']:
    return False
  before, now = done.get('fingerprint'), info.get('fingerprint')
  if before == now:
    return True
  if jax.process_index() == 0:
    why = ('do not record which files they were made from (an older vqlab)'
           if before is None else 'were made from other files: the data\'s '
           'files were added, removed or changed since')
    print(
        f'vqlab: tokenizing the {split} split again: its tokens in '
        f'{directory} {why}', flush=True)
  return False


def _all_shards_exist(directory: str, split: str, num_files: int) -> bool:
  """Whether the `num_files` shard files of a split marked complete are all
  there (one deleted as corrupt is written again), the same on every
  process."""
  listed = len(
      fileio.glob(os.path.join(directory, split, token_shards.SHARD_GLOB)))
  return bool(
      np.all(multihost_utils.process_allgather(
          np.asarray(listed == num_files))))


def _host_shard_sizes(source) -> list[int] | None:
  """[P] train examples in each host's shard of the files when the source
  reads one per host (tf.data); None when every host reads one global
  stream (the in-memory sources) or a shard's size is unknown."""
  size = getattr(source, 'host_num_examples', None)
  if jax.process_count() == 1:
    return None
  sizes = multihost_utils.process_allgather(
      np.asarray(-1 if size is None else size))
  if (sizes < 0).any():
    if hasattr(source, 'host_num_examples'):  # A tf.data source.
      logging.warning(
          'a host does not know the size of its train shard: tokenizing '
          'positions of one global stream, which may repeat or skip '
          'examples of the per-host shards')
    return None
  return [int(n) for n in sizes]


def train_quotas(num_examples: int, batch_size: int, num_processes: int,
                 host_shard_sizes: list[int] | None = None) -> list[int]:
  """[P] train examples each host tokenizes: a prefix of its own stream.

  Every host reads `ceil(max(quotas) / b)` batches of b = B / P rows and
  keeps its first `quotas[p]` rows; the quotas sum to N.

  Args:
    num_examples: N, examples to tokenize in all.
    batch_size: B, the global batch.
    num_processes: P.
    host_shard_sizes: [P] for sources that read a shard of the files per
      host: each shard's size. Each host draws its share of N from its own
      shard in proportion to the shard's size, so N = the split's size is
      one epoch of every shard: each example once. None: the hosts' rows
      are slices of one global stream (host p's rows of batch s are
      positions s B + p b + [0, b)), whose first N positions are kept.
  """
  b = batch_size // num_processes
  if host_shard_sizes is None:
    full, rest = divmod(num_examples, batch_size)
    return [
        full * b + min(max(rest - p * b, 0), b) for p in range(num_processes)
    ]
  bounds = np.concatenate([[0], np.cumsum(host_shard_sizes)])
  cut = num_examples * bounds // bounds[-1]
  return [int(n) for n in np.diff(cut)]
