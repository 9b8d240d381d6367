"""What every converter of a published checkpoint shares.

A converter reads the released file into a flat {name: array} dict, takes its
tensors through a `StateDict` (which records what was consumed), builds a
vqlab `config.model` and param tree, and returns them as a `Converted`.
`write_run` turns a tokenizer's into a run directory that `main.py
--mode=eval`, `vqlab.train.trained_tokenizer.load` and generator configs
accept; `write_generator_run` a generator's into a run over a converted
tokenizer run that `main.py --mode=sample` samples.
"""

import dataclasses
import os
import re
import shlex
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np

from vqlab import fileio
from vqlab import tokenizers
from vqlab.errors import ConfigError
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.train import checkpoint
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import run_record
from vqlab.train.tasks import generator
from vqlab.train.tasks import generator_config
from vqlab.train.tasks import tokenizer
from vqlab.train.tasks import tokenizer_config


class StateDict:
  """A checkpoint's tensors by name; remembers which ones were taken.

  Layout conversions follow PyTorch: Conv{1,2,3}d weights [O, I, *k] become
  flax kernels [*k, I, O], Linear weights [O, I] become [I, O].
  """

  def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
    self._tensors = dict(tensors)
    self._used: set[str] = set()
    self.source = source

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def keys(self) -> list[str]:
    return list(self._tensors)

  def shape(self, key: str) -> tuple[int, ...]:
    """The shape of `key` without consuming it."""
    return tuple(self._get(key).shape)

  def _get(self, key: str) -> np.ndarray:
    if key not in self._tensors:
      raise WeightsError(f'{self.source}: missing tensor {key!r}; is this the '
                         'right kind of checkpoint?')
    return self._tensors[key]

  def take(self, key: str) -> np.ndarray:
    """The tensor `key` as float32 (integers keep their dtype); marks it used."""
    value = np.asarray(self._get(key))
    self._used.add(key)
    # jnp's test also knows bfloat16 and float8, which numpy's does not.
    if jax.numpy.issubdtype(value.dtype, jax.numpy.floating):
      value = value.astype(np.float32, copy=False)
    return value

  def conv(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    """`prefix.weight` [O, I, *k] (+ `prefix.bias`) -> {'kernel': [*k, I, O], 'bias'}."""
    weight = self.take(f'{prefix}.weight')
    if weight.ndim < 3:
      raise WeightsError(f'{self.source}: {prefix}.weight has shape '
                         f'{weight.shape}, not that of a convolution')
    perm = tuple(range(2, weight.ndim)) + (1, 0)
    out = {'kernel': np.ascontiguousarray(weight.transpose(perm))}
    if bias:
      out['bias'] = self.take(f'{prefix}.bias')
    return out

  def linear(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    """`prefix.weight` [O, I] (+ `prefix.bias`) -> {'kernel': [I, O], 'bias'}."""
    weight = self.take(f'{prefix}.weight')
    if weight.ndim != 2:
      raise WeightsError(f'{self.source}: {prefix}.weight has shape '
                         f'{weight.shape}, not that of a linear layer')
    out = {'kernel': np.ascontiguousarray(weight.T)}
    if bias:
      out['bias'] = self.take(f'{prefix}.bias')
    return out

  def norm(self, prefix: str) -> dict[str, np.ndarray]:
    """GroupNorm/LayerNorm `prefix.weight`, `prefix.bias` -> {'scale', 'bias'}."""
    return {
        'scale': self.take(f'{prefix}.weight'),
        'bias': self.take(f'{prefix}.bias')
    }

  def indices(self, pattern: str) -> list[int]:
    r"""Sorted distinct integers that `pattern`'s group captures in the keys
    (e.g. r'encoder\.down\.(\d+)\.' -> the encoder's levels)."""
    return sorted(
        {int(m.group(1)) for k in self._tensors if (m := re.match(pattern, k))})

  def unused(self, ignore_prefixes: Iterable[str] = ()) -> list[str]:
    """Keys not taken, except those starting with one of `ignore_prefixes`."""
    ignore = tuple(ignore_prefixes)
    return sorted(k for k in self._tensors
                  if k not in self._used and not k.startswith(ignore))

  def check_all_used(self, ignore_prefixes: Iterable[str] = ()) -> None:
    """Raises WeightsError listing the tensors no converter rule consumed."""
    unused = self.unused(ignore_prefixes)
    if unused:
      shown = ', '.join(unused[:8]) + (', ...' if len(unused) > 8 else '')
      raise WeightsError(f'{self.source}: {len(unused)} tensors were not '
                         f'converted ({shown}); the checkpoint has parts this '
                         'converter does not know')


def split_heads(layer: dict[str, np.ndarray], heads: int, *, output: bool,
                source: str, name: str) -> dict[str, np.ndarray]:
  """An attention projection {'kernel' [D, D], 'bias' [D]} (`StateDict.linear`'s)
  in flax MultiHeadDotProductAttention's per-head layout: query, key and value
  kernel [D, heads, D / heads] and bias [heads, D / heads]; the output
  projection (`output`) kernel [heads, D / heads, D], bias [D].

  Raises:
    WeightsError: naming `name` of `source`, when the kernel is not [D, D]
      with D divisible by `heads` or the bias not [D].
  """
  kernel = layer['kernel']
  width = kernel.shape[0]
  bias_shape = tuple(np.shape(layer['bias'])) if 'bias' in layer else (width,)
  if kernel.shape != (width, width) or width % heads or bias_shape != (width,):
    raise WeightsError(
        f'{source}: {name} has a weight of shape {kernel.T.shape} and a bias '
        f'of shape {bias_shape}; an attention projection of {heads} heads '
        f'needs [D, D] and [D] with D divisible by {heads}: is this the right '
        'checkpoint, with its own number of heads?')
  head_dim = width // heads
  out = dict(layer)
  if output:
    out['kernel'] = kernel.reshape(heads, head_dim, width)
  else:
    out['kernel'] = kernel.reshape(width, heads, head_dim)
    if 'bias' in layer:
      out['bias'] = layer['bias'].reshape(heads, head_dim)
  return out


@dataclasses.dataclass(frozen=True)
class EncoderWidths:
  """The widths of an encoder laid out as taming's."""
  in_channels: int
  channels: int
  channel_multipliers: tuple[int, ...]
  num_res_blocks: int


def taming_encoder_widths(sd: StateDict, what: str) -> EncoderWidths:
  """Reads the widths of an `encoder.conv_in`, `encoder.down.<level>.block.
  <n>.conv2` encoder (taming, and the models that kept its names) from the
  shapes; `what` names the expected kind of checkpoint in errors."""
  channels, in_channels = sd.shape('encoder.conv_in.weight')[:2]
  levels = sd.indices(r'encoder\.down\.(\d+)\.')
  blocks = sd.indices(r'encoder\.down\.0\.block\.(\d+)\.')
  if not levels or levels != list(range(len(levels))) or not blocks:
    raise WeightsError(f'{sd.source}: no encoder.down.<level>.block.<n> '
                       f'tensors; not {what}')
  multipliers = []
  for level in levels:
    width = sd.shape(f'encoder.down.{level}.block.0.conv2.weight')[0]
    if width % channels:
      raise WeightsError(f'{sd.source}: encoder.down.{level} is {width} wide, '
                         f'not a multiple of ch={channels}')
    multipliers.append(width // channels)
  return EncoderWidths(in_channels, channels, tuple(multipliers), len(blocks))


def _flatten(tree: Any) -> dict[str, Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat['/'.join(str(getattr(k, 'key', k)) for k in path)] = leaf
  return flat


def check_params_match(params: Any, expected: Any, what: str) -> None:
  """Raises WeightsError unless `params` has exactly `expected`'s leaves.

  Args:
    params: the converted tree of arrays.
    expected: the model's tree of arrays or ShapeDtypeStructs (e.g.
      `jax.eval_shape(model.init, ...)['params']`).
    what: the checkpoint, for the message.
  """
  got, want = _flatten(params), _flatten(expected)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want)
                 if tuple(np.shape(got[k])) != tuple(want[k].shape))
  problems = []
  if missing:
    problems.append(f'params not filled: {", ".join(missing[:6])}')
  if extra:
    problems.append(f'params the model lacks: {", ".join(extra[:6])}')
  if wrong:
    problems.append('wrong shapes: ' + ', '.join(
        f'{k} {tuple(np.shape(got[k]))} != {tuple(want[k].shape)}'
        for k in wrong[:6]))
  if problems:
    raise WeightsError(f'{what}: the converted params do not fit the model: ' +
                       '; '.join(problems))


def expected_tokenizer_params(config: ml_collections.ConfigDict) -> Any:
  """ShapeDtypeStructs of the params of the tokenizer `config` builds (traced
  on `tokenizers.example_image`: the params do not depend on the image size)."""
  model = tokenizers.build(config)
  return jax.eval_shape(model.init, jax.random.key(0),
                        tokenizers.example_image(model))['params']


@dataclasses.dataclass
class Converted:
  """A published checkpoint in vqlab's terms.

  Attributes:
    model_config: a complete `config.model` for `vqlab.tokenizers.build`.
    params: the model's param tree (nested dicts of np.ndarray), exactly the
      structure of `model.init(...)['params']`.
    image_size: the resolution the checkpoint was trained at.
    source: a one-line description of the checkpoint.
    tokenizer_workdir: a generator's: the tokenizer run whose codes it
      generates.
  """
  model_config: ml_collections.ConfigDict
  params: dict[str, Any]
  image_size: int
  source: str
  tokenizer_workdir: str = ''


_CONFIG_PY = '''"""Config of a converted checkpoint: {source}.

Written by `python -m vqlab.convert`; the settings are in config.json next to
this file. {what} with
  {command}
"""

import os

from vqlab.train import trained_tokenizer


def get_config():
  return trained_tokenizer.read_run_config(os.path.dirname(__file__))
'''


def run_config(converted: Converted) -> ml_collections.ConfigDict:
  """The experiment config of a converted tokenizer: the tokenizer task with
  its defaults, `converted.model_config`, and the built-in photos at the
  checkpoint's resolution as data (override `data` for another dataset)."""
  config = experiment_config.base_config()
  config.update(tokenizer_config.default_config())
  config.model = ml_collections.ConfigDict(converted.model_config.to_dict())
  config.data.image_size = converted.image_size
  config.data.train_image_size = converted.image_size
  config.train.batch_size = 8
  config.eval.batch_size = 8
  if config.model.get('decoder_output') == 'proxy_pixels':
    # TiTok's released layout has no pixel head for the adaptive weight.
    config.loss.adaptive_weight = False
  return experiment_config.validate(config, num_devices=1)


def check_new_run_dir(out_dir: str) -> None:
  """Raises FileExistsError when `out_dir` already holds checkpoints (which
  a conversion must never overwrite or mix with); local or a URL. The
  temporary folder of a save that never finished (a killed conversion) is
  none."""
  checkpoints = os.path.join(out_dir, 'checkpoints')
  if fileio.isdir(checkpoints) and any('.orbax-checkpoint-tmp' not in name
                                       for name in fileio.listdir(checkpoints)):
    raise FileExistsError(f'{out_dir} already holds checkpoints; convert into '
                          'a new directory')


def check_same_run_config(config: ml_collections.ConfigDict,
                          out_dir: str) -> None:
  """ConfigError naming out_dir when it holds the config.json of another run
  (the train loop's check, whose remedy, --allow_config_change, is not the
  converter's: a conversion goes into a new directory)."""
  try:
    run_record.check(config, out_dir, allow_change=False)
  except ConfigError as e:
    raise ConfigError(
        'out_dir', f'{out_dir} holds the config.json of another run '
        f'({e.key} differs): convert into a new directory') from e


def write_run(out_dir: str, converted: Converted) -> dict[str, Any]:
  """Writes `converted` as a tokenizer run at step 0 in `out_dir`.

  Writes config.json, config.py and an Orbax checkpoint whose generator
  params (and EMA params, if the config keeps them) are the converted ones;
  the discriminator and optimizer state are a fresh init (the train loop's,
  from the same seed), for fine-tuning. Checks the params against the model
  first. Builds the state on one local device, without the train loop's data,
  mesh or frozen networks.

  Returns:
    {'out_dir', 'num_params', 'source', 'command'} (command: the run's
    evaluation).

  Raises:
    WeightsError: the params do not fit the model the config builds.
    FileExistsError: `out_dir` already holds checkpoints.
    ConfigError: `out_dir` holds the config.json of a different run.
  """
  check_new_run_dir(out_dir)
  config = run_config(converted)
  check_same_run_config(config, out_dir)
  task = tokenizer.TokenizerTask(config)
  size = config.data.train_image_size
  batch = {
      'image': np.zeros((1, size, size, task.model.in_channels), np.float32)
  }
  rng = loop_init_rng(config)
  expected = jax.eval_shape(task.init, rng, batch).params['generator']
  check_params_match(converted.params, expected, converted.source)
  state = init_with_params(task, rng, batch, 'generator', converted.params,
                           expected)
  return save_run(out_dir, config, state, converted, 'eval')


def loop_init_rng(config: ml_collections.ConfigDict) -> jax.Array:
  """The key the train loop (experiment.Experiment) draws a fresh state from."""
  return experiment.init_key(jax.random.split(jax.random.key(config.seed))[0])


def count_params(params: Any) -> int:
  """The number of entries of a param tree."""
  return sum(np.size(v) for v in _flatten(params).values())


def init_with_params(task: Any, rng: jax.Array, batch: Any, key: str,
                     params: Any, expected: Any) -> Any:
  """The task's fresh TrainState on one local device with `params` (numpy,
  in the layout and dtypes of `expected`) as its `params[key]`, and as its
  EMA params[key] when it keeps an EMA; the rest (other networks, optimizer
  state) as the train loop's init draws it from `rng`."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  params = jax.tree.map(
      lambda value, like: jax.device_put(np.asarray(value, like.dtype), device),
      params, expected)

  # Replaced in the program: XLA drops the random init of `params[key]`,
  # most of what it compiles (a small tokenizer's: 3 s of CPU -> 1 s).
  def init(rng, batch, params):
    state = task.init(rng, batch)
    replace = {'params': dict(state.params, **{key: params})}
    if state.ema_params:
      replace['ema_params'] = dict(state.ema_params, **{key: params})
    return state.replace(**replace)

  return jax.jit(init, out_shardings=device)(jax.device_put(rng, device),
                                             jax.device_put(batch, device),
                                             params)


def save_run(out_dir: str, config: ml_collections.ConfigDict, state: Any,
             converted: Converted, mode: str) -> dict[str, Any]:
  """Writes a run at step 0: config.json (`config`), `state` as its Orbax
  checkpoint and a config.py that reads config.json back.

  Returns:
    {'out_dir', 'source', 'num_params', 'command'}: the command is the
    run's next step, main.py in `mode` ('eval' or 'sample').
  """
  fileio.makedirs(out_dir)
  run_record.write(out_dir, config)
  checkpointer = checkpoint.Checkpointer(out_dir,
                                         max_to_keep=config.train.max_to_keep)
  try:
    checkpointer.save(0, state, force=True)
    checkpointer.wait()
  finally:
    checkpointer.close()
  command = next_command(out_dir, mode)
  what = {'eval': 'Evaluate', 'sample': 'Sample (and measure gFID, IS)'}[mode]
  config_py = _CONFIG_PY.format(source=converted.source, what=what,
                                command=command)
  fileio.write_atomically(os.path.join(out_dir, 'config.py'),
                          lambda f: f.write(config_py.encode()))
  return {
      'out_dir': out_dir,
      'source': converted.source,
      'num_params': count_params(converted.params),
      'command': command
  }


def next_command(out_dir: str, mode: str) -> str:
  """The shell command that runs main.py in `mode` on the run in `out_dir`.

  config_flags loads --config from a local file only, so for a URL run the
  command first copies config.py and config.json (which config.py reads from
  beside itself) into a local folder named after the run.
  """
  q = shlex.quote
  if not fileio.is_url(out_dir):
    return (f'python main.py --config={q(out_dir + "/config.py")} '
            f'--workdir={q(out_dir)} --mode={mode}')
  local = os.path.basename(out_dir.rstrip('/')) + '_config'
  return (f'mkdir -p {q(local)} && gcloud storage cp '
          f'{q(out_dir + "/config.py")} {q(out_dir + "/config.json")} '
          f'{q(local + "/")} && python main.py '
          f'--config={q(local + "/config.py")} --workdir={q(out_dir)} '
          f'--mode={mode}')


def converted_generator(config: ml_collections.ConfigDict, params: dict,
                        expected: Any, *, source: str, image_size: int,
                        tokenizer_workdir: str) -> Converted:
  """A converted generator: `params` (its blocks unrolled under
  'transformer') in the layout of `expected` (its model's param shapes:
  stacked when `config.scan_layers`), checked against them.

  Raises:
    WeightsError: the params do not fit the model.
  """
  if config.scan_layers:
    try:
      stacked = stack.stack_like(params['transformer'], expected['transformer'])
    except ValueError as e:  # np.stack of layers whose tensors differ.
      raise WeightsError(
          f'{source}: the transformer layers do not all have the same tensor '
          f'shapes ({e}); a checkpoint of one model has them alike') from e
    params = dict(params, transformer=stacked)
  check_params_match(params, expected, source)
  return Converted(model_config=config, params=params, image_size=image_size,
                   source=source, tokenizer_workdir=tokenizer_workdir)


def generator_run_config(
    converted: Converted, settings: Mapping[str,
                                            Any]) -> ml_collections.ConfigDict:
  """The experiment config of a converted generator: the generator task with
  its defaults, `converted.model_config`, its tokenizer run, tokens encoded
  on the fly from the built-in photos at the tokenizer's resolution
  (override `data` for ImageNet), and `settings` ({dotted key: value}, the
  release's, e.g. its sampling)."""
  config = experiment_config.base_config()
  config.update(generator_config.default_config())
  config.model = ml_collections.ConfigDict(converted.model_config.to_dict())
  config.tokenizer.workdir = converted.tokenizer_workdir
  config.tokens.source = 'on_the_fly'
  config.data.image_size = converted.image_size
  config.data.train_image_size = converted.image_size
  config.train.batch_size = 8
  config.eval.batch_size = 8
  config.sample.batch_size = 8
  config.update_from_flattened_dict(dict(settings))
  return experiment_config.validate(config, num_devices=1)


def write_generator_run(out_dir: str, converted: Converted,
                        settings: Mapping[str, Any]) -> dict[str, Any]:
  """Writes `converted` as a generator run at step 0 in `out_dir` (config:
  `generator_run_config`): config.json, config.py and an Orbax checkpoint
  whose model params (and EMA params) are the converted ones, with a fresh
  optimizer state for fine-tuning. Checks the model against the tokenizer
  run (its codes and token grid) first.

  Returns:
    {'out_dir', 'num_params', 'source', 'command'} (command: sampling).

  Raises:
    WeightsError: the params do not fit the model the config builds.
    ConfigError: the model does not fit the tokenizer's codes or grid, or
      `out_dir` holds the config.json of a different run.
    CheckpointError: the tokenizer run is unreadable.
    FileExistsError: `out_dir` already holds checkpoints.
  """
  check_new_run_dir(out_dir)
  config = generator_run_config(converted, settings)
  check_same_run_config(config, out_dir)
  # The task without the frozen evaluation networks, which init does not use.
  build_config = ml_collections.ConfigDict(config.to_dict())
  build_config.eval.fid = build_config.eval.fvd = 'off'
  task = generator.build(build_config)
  rng = loop_init_rng(config)
  expected = jax.eval_shape(task.init, rng, None).params['model']
  check_params_match(converted.params, expected, converted.source)
  state = init_with_params(task, rng, None, 'model', converted.params, expected)
  return save_run(out_dir, config, state, converted, 'sample')
