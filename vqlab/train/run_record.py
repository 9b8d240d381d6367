"""The run's record of how it was trained: WORKDIR/config.json.

A restarted run must continue the run that is in its workdir, so the config
it is given is compared with the saved one before anything is written. Keys
that steer the run without changing what it computes (how long, how often it
logs, evaluates and saves, evaluation and sampling settings, the device mesh,
where weight files are) may change freely; any other difference stops the run
unless the user allows it (fine-tuning with a new learning rate, say), and
then the old record is kept beside the new one.
"""

import json
import os
from typing import Any, Callable

import ml_collections

from vqlab import config_schema
from vqlab import data as data_lib
from vqlab import fileio
from vqlab import generators
from vqlab.errors import ConfigError
from vqlab.generators import api as generator_api
from vqlab.train import trained_tokenizer
from vqlab.train import workdir_lock

CONFIG_FILE = 'config.json'
# Dotted keys (a trailing '.' is a whole section) that a resumed run may change.
# The memory knobs among them (remat, microbatches) keep the expected update,
# but for the terms made from a whole (micro)batch (tasks/base.py,
# accumulate_gradients); microbatches also changes which random draws the
# later steps make. The scan switches change how params are stored (the
# checkpoint is converted on restore, vqlab.train.checkpoint) and, with
# dropout, which masks the later steps draw.
FREE_TO_CHANGE = ('train.num_steps', 'train.log_every', 'train.eval_every',
                  'train.checkpoint_every', 'train.max_to_keep',
                  'train.preemption_check_every', 'train.microbatches',
                  'model.remat_policy', 'model.scan_blocks',
                  'model.scan_layers', 'eval.', 'sample.', 'mesh.',
                  'weights_dir')

# (step key, run key): the checkpoint of another run that this one reads,
# where step -1 means its newest. A run pins the step it started from, so its
# restarts, evals and samples read the same checkpoint after that run trains
# on (a generator resumed with a newer tokenizer would learn other tokens).
NEWEST_STEP_KEYS = (('tokenizer.step', 'tokenizer.workdir'),
                    ('condition.tokenizer_step', 'condition.tokenizer'),
                    ('proxy.step', 'proxy.workdir'), ('warm_start.step',
                                                      'warm_start.workdir'),
                    ('warm_start.pixel_vqgan_step', 'warm_start.pixel_vqgan'))

# {config key: {'workdir', 'step', 'checksum'}} of the checkpoints named by
# NEWEST_STEP_KEYS that the run reads for its whole life (pins.READ_FOR_LIFE):
# a run trained again in its workdir holds other params at the same step.
READ_CHECKPOINTS_FILE = 'read_checkpoints.json'


def pin_newest_steps(config: ml_collections.ConfigDict, workdir: str,
                     newest_step: Callable[[str],
                                           int | None], announce: bool = True,
                     made_from: dict[str, int] | None = None) -> None:
  """Replaces each step -1 of NEWEST_STEP_KEYS in `config`, in place, by the
  step this run recorded (config.json), or for a new run by the newest step
  of that run (`newest_step(its workdir)`), which config.json then records.

  A run recorded with -1 (vqlab before 2026-12) keeps -1; an explicit step
  is left to the comparison with the record (run_record.check). `announce`:
  print a line for each step pinned or kept (process 0 of a run); every
  process calls `newest_step` alike.
  `made_from`: {step key: step} of outputs the workdir already holds for
  the run (TaskSpec.made_from); a new run pins those steps instead.
  """
  saved = read(workdir) or {}
  for step_key, run_key in NEWEST_STEP_KEYS:
    run = config_schema.lookup(config, run_key)
    if config_schema.lookup(config, step_key) != -1 or not run:
      continue
    section, name = step_key.split('.')
    recorded = config_schema.lookup(saved, step_key)
    if config_schema.lookup(saved, run_key) == run and recorded is not None:
      config[section][name] = recorded
      # On every process: newest_step may be a collective (Orbax's manager
      # syncs the processes when made).
      newest = newest_step(run) if recorded != -1 else None
      if announce and newest is not None and newest != recorded:
        print(
            f'vqlab: {step_key} = -1 reads step {recorded} of {run}, the '
            f'step this run started from (its newest is {newest}; name a '
            'step, with --allow_config_change, to switch)', flush=True)
      continue
    if made_from and step_key in made_from:
      config[section][name] = made_from[step_key]
      if announce:
        print(
            f'vqlab: {step_key} = -1 is step {made_from[step_key]} of {run}, '
            'the step of what this run starts from in its workdir (its '
            'token shards); it keeps reading that step (config.json)',
            flush=True)
      continue
    newest = newest_step(run)
    if newest is not None:  # Else loading it says what is missing.
      config[section][name] = newest
      if announce:
        print(
            f'vqlab: {step_key} = -1 is step {newest} of {run}; this run '
            f'keeps reading that step (config.json){in_training(run)}',
            flush=True)


def check_read_checkpoints(workdir: str, loaded: dict[str, Any],
                           checkpointed: bool) -> None:
  """Checks that the checkpoints of other runs that the run in `workdir`
  reads for its whole life (`loaded`, Task.read_for_life: {config key:
  TrainedTokenizer}) hold the params it was trained with
  (READ_CHECKPOINTS_FILE); writes nothing. A run without checkpoints
  trained nothing with them, and one without a record (vqlab up to
  2026-12-06) is not checked.

  Raises:
    ConfigError: naming the key of a run trained again since at that step.
  """
  if not checkpointed:
    return
  recorded = read(workdir, READ_CHECKPOINTS_FILE) or {}
  for key, tok in loaded.items():
    if key in recorded and not trained_tokenizer.is_record(recorded[key]):
      raise ConfigError(
          '--workdir', f'{os.path.join(workdir, READ_CHECKPOINTS_FILE)}: '
          f'{key!r} is {recorded[key]!r}, not a record of the checkpoint '
          'the run was trained with ({"workdir", "step", "checksum"}): '
          'repair it, or remove that entry to train on without this check')
    trained_tokenizer.check_same_params(
        recorded.get(key), tok, key, f'the run in {workdir} was trained with',
        'Use the tokenizer run it was trained with, or start a new run in '
        'another --workdir')


def record_read_checkpoints(workdir: str, loaded: dict[str, Any]) -> None:
  """Writes READ_CHECKPOINTS_FILE of `loaded` ({config key:
  TrainedTokenizer}, replacing the record of a run or step read before an
  allowed config change); only the training run's process 0 writes it."""
  if not loaded:
    return
  record = {
      key: {
          'workdir': fileio.absolute(tok.workdir),
          'step': tok.step,
          'checksum': tok.checksum
      } for key, tok in loaded.items()
  }
  data = json.dumps(record, indent=2)
  fileio.write_atomically(os.path.join(workdir, READ_CHECKPOINTS_FILE),
                          lambda f: f.write(data.encode()))


def in_training(run: str) -> str:
  """'' unless a process is training `run` now: then the warning that its
  later steps are not the one read, to end a line with."""
  holder = workdir_lock.trainer(run)
  return (f'. WARNING: that run is still training ({holder}): the steps it '
          'saves later are not used' if holder else '')


def as_json_tree(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json stores it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def read(workdir: str, name: str = CONFIG_FILE) -> dict[str, Any] | None:
  """The saved config of the run in `workdir` (or its record `name`), or
  None when there is none.

  Raises:
    ConfigError: the file exists but is not a JSON object.
  """
  path = os.path.join(workdir, name)
  if not fileio.exists(path):
    return None
  try:
    with fileio.open(path) as f:
      saved = json.load(f)
  except ValueError as e:
    raise ConfigError(
        '--workdir', f'{path} is not valid JSON ({e}); it is '
        'the record of how the run was trained: repair it or '
        'use another --workdir') from e
  if not isinstance(saved, dict):
    raise ConfigError(
        '--workdir', f'{path} holds a JSON {type(saved).__name__}, not a '
        f'{"config" if name == CONFIG_FILE else "record"}; it is the record of '
        'how the run was trained: repair it or use another --workdir')
  return saved


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _free(key: str) -> bool:
  return any(key == k or (k.endswith('.') and key.startswith(k))
             for k in FREE_TO_CHANGE)


def _decays_over_the_run(flat: dict[str, Any]) -> bool:
  """Whether a learning rate of the run follows a schedule that ends at
  train.num_steps (an `optimizer[.<network>].schedule` not 'constant')."""
  return any(
      k.startswith('optimizer.') and k.endswith('schedule') and v != 'constant'
      for k, v in flat.items())


def differences(saved: dict[str, Any], config: ml_collections.ConfigDict,
                trains: bool = True) -> dict[str, tuple]:
  """{dotted key: (saved value, new value)} for every key that differs and is
  not free to change (for a run that `trains` on, train.num_steps is not
  where its learning rate decays to it: another length moves the rate of
  every step left). Keys only one side has (added or removed by another
  vqlab version) are not differences."""
  old, new = _flatten(_as_recorded(saved)), _flatten(as_json_tree(config))
  fixed = ({'train.num_steps'}
           if trains and _decays_over_the_run(old) else set())
  unread = _unread_by_both(saved, config)
  return {
      k: (old[k], new[k])
      for k in sorted(old.keys() & new.keys())
      if old[k] != new[k] and (k in fixed or not _free(k)) and k not in unread
  }


# Eval keys that change neither what eval measures nor on what (but see
# `_eval_keys_of_no_numbers`).
_EVAL_KEYS_OF_NO_NUMBERS = ('eval.step', 'eval.num_images', 'eval.batch_size')


def _eval_keys_of_no_numbers(config: ml_collections.ConfigDict) -> set[str]:
  """`_EVAL_KEYS_OF_NO_NUMBERS`, less eval.batch_size for a generator whose
  eval loss draws masks or timesteps per batch (`GeneratorApi.eval_draws`)."""
  keys = set(_EVAL_KEYS_OF_NO_NUMBERS)
  if (config.get('task') == 'generator' and
      generators.get_api(config.model.name).eval_draws):
    keys.discard('eval.batch_size')
  return keys


def eval_differences(workdir: str,
                     config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{eval key: (recorded value, new value)} of the eval settings (free to
  change) that make an eval's numbers other than the run's own evals: the
  number of batches, the networks, the references, Inception's input."""
  saved = read(workdir)
  if saved is None:
    return {}
  old, new = _flatten(saved), _flatten(as_json_tree(config))
  free = _eval_keys_of_no_numbers(config)
  return {
      k: (old[k], new[k])
      for k in sorted(old.keys() & new.keys())
      if k.startswith('eval.') and k not in free and old[k] != new[k]
  }


# Keys added after runs were recorded without them, with the value those
# runs ran with: model keys by generator, loss keys by task, and every
# optimizer section's.
_ADDED_MODEL_KEYS = {
    'maskgit': {
        'block_style': 'pre_ln',
        'exact_gelu': False
    },
    'gpt': {
        'block_style': 'pre_ln'
    },
    'vq_diffusion': {
        'block_style': 'vqlab',
        'position_grid': [],
        'null_class': 'mean'
    }
}
_ADDED_OPTIMIZER_KEYS = {'eps': 1e-8}
_ADDED_LOSS_KEYS = {
    'generator': {
        'observed_frames': 0,
        'observed_frames_rate': 0.5,
        'mask_rounding': 'ceil'
    }
}


def _as_recorded(saved: dict[str, Any]) -> dict[str, Any]:
  """A run's record with the keys added since it was written filled in as
  that vqlab behaved, so that it is compared with a config as what it ran
  (a resume that would switch them is then a difference)."""
  saved = dict(saved)
  if 'data' in saved:
    saved['data'] = data_lib.as_recorded(saved['data'])
  loss = saved.get('loss')
  if isinstance(loss, dict):
    saved['loss'] = {**_ADDED_LOSS_KEYS.get(saved.get('task'), {}), **loss}
  model = saved.get('model')
  if isinstance(model, dict):
    saved['model'] = {**_ADDED_MODEL_KEYS.get(model.get('name'), {}), **model}

  def optimizer(section):
    if not isinstance(section, dict):
      return section
    section = {k: optimizer(v) for k, v in section.items()}
    if 'learning_rate' in section:
      section = {**_ADDED_OPTIMIZER_KEYS, **section}
    return section

  if 'optimizer' in saved:
    saved['optimizer'] = optimizer(saved['optimizer'])
  return saved


def _unread_by_both(saved: dict[str, Any],
                    config: ml_collections.ConfigDict) -> set[str]:
  """The generator model keys that neither the record's condition nor the
  config's reads: no difference (text runs recorded the class config's
  model.num_classes, which their configs inherited before 2026-12-06)."""
  if config.get('task') != 'generator' or not isinstance(
      saved.get('model'), dict):
    return set()
  keys = generators.get_api(config.model.name).condition_keys
  both = (generator_api.unread_condition_keys(saved['model'], keys) &
          generator_api.unread_condition_keys(config.model, keys))
  return {f'model.{k}' for k in both}


def describe(changed: dict[str, tuple], limit: int = 4) -> str:
  """'model.channels 8 -> 16, ...' (at most `limit` keys, then a count)."""
  shown = [
      f'{k} {json.dumps(a)} -> {json.dumps(b)}'
      for k, (a, b) in list(changed.items())[:limit]
  ]
  if len(changed) > limit:
    shown.append(f'and {len(changed) - limit} more')
  return ', '.join(shown)


def check(config: ml_collections.ConfigDict, workdir: str, allow_change: bool,
          checkpointed: bool | None = None,
          trains: bool = True) -> dict[str, tuple]:
  """Compares `config` with the run's saved config; writes nothing.

  Args:
    config: the config to run with.
    workdir: the run's directory.
    allow_change: let differences through.
    checkpointed: whether the run in `workdir` has saved a checkpoint (None:
      not known). A run without one has kept nothing: its record may change
      freely. One with checkpoints but no record is refused unless
      allow_change.
    trains: the config trains the run on (False: eval, sampling, tokenizing,
      where the run's length does not matter).

  Returns:
    The differences let through ({} when none).

  Raises:
    ConfigError: naming the differing keys (or the missing record of a
      checkpointed run), unless allow_change.
  """
  saved = read(workdir)
  if saved is None:
    if checkpointed and not allow_change:
      raise ConfigError(
          '--workdir', f'{workdir} holds checkpoints but no {CONFIG_FILE}, '
          'the record of how they were trained. Pass --allow_config_change to '
          'continue them with this config (recorded from then on), or use '
          'another --workdir')
    return {}
  changed = differences(saved, config, trains)
  if changed and checkpointed is False:
    print(
        f'vqlab: the run in {workdir} saved no checkpoint, so its config may '
        f'change ({describe(changed)})', flush=True)
    return changed
  if changed and not allow_change:
    schedule = (' Its learning rate decays to 0 at train.num_steps: another '
                'length reshapes the schedule, and the rate jumps at the step '
                'it resumes from.' if 'train.num_steps' in changed else '')
    raise ConfigError(
        ', '.join(changed), f'differs from the run in {workdir} '
        f'({describe(changed)}; its config.json records how it was trained).'
        f'{schedule} Pass --allow_config_change (in Python: '
        'allow_config_change=True) to ' +
        ('continue that run with the new values, or use another --workdir'
         if trains else 'use the new values here (the run and its record '
         'stay as they are)'))
  return changed


def unused_name(workdir: str, stem: str) -> str:
  """`stem`.json, or `stem`.<n>.json when that exists: a record is never
  overwritten (e.g. two allowed changes at the same step)."""
  name, n = f'{stem}.json', 1
  while fileio.exists(os.path.join(workdir, name)):
    name, n = f'{stem}.{n}.json', n + 1
  return name


def write(workdir: str, config: ml_collections.ConfigDict,
          keep_previous_as: str | None = None) -> None:
  """Writes config.json atomically; `keep_previous_as` first renames the old
  record (a run continued with a changed config keeps both)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if keep_previous_as and fileio.exists(path):
    fileio.replace(path, os.path.join(workdir, keep_previous_as))
  data = json.dumps(as_json_tree(config), indent=2)
  fileio.write_atomically(path, lambda f: f.write(data.encode()))
