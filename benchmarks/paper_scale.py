r"""The train step of every paper-size config, in one command: compile time,
compiled memory and FLOPs (--compile_only, any machine) or, on an
accelerator, also init time, step time, examples/s, peak memory and MFU.

  python benchmarks/paper_scale.py --compile_only --case_timeout=600  # CPU
  python benchmarks/paper_scale.py                         # GPU, < 8 min
  python benchmarks/paper_scale.py --cases=vqgan_taming --steps=20
  python benchmarks/paper_scale.py --cases=magvit2_video --compile_only \
      --per_device_batch_sweep=1,2,4,8 --set=train.microbatches=1

Cases (`CASES`; --cases=a,b selects):
  vqgan_taming        configs/vqgan/taming_f16.py (VQGAN f16, taming recipe)
  vqgan_maskgit       configs/vqgan/maskgit_f16.py (MaskGIT-VQGAN recipe)
  magvit2_video       configs/magvit2/ucf101_17x128.py (17x128x128 clips)
  magvit2_image       configs/magvit2/imagenet_128.py (128x128 images)
  titok_s128_stage1   configs/titok/s128.py:1 (proxy codes of an untrained
                      MaskGIT-VQGAN, configs/vqgan/maskgit_f16.py)
  titok_s128_stage2   configs/titok/s128.py:2 (decoder fine-tuning)
  maskgit, gpt        configs/{maskgit,gpt}/imagenet256.py
  vq_diffusion_class  configs/vq_diffusion/imagenet256_class.py
  vq_diffusion_text   configs/vq_diffusion/coco256_text.py (frozen MiniLM)
  maskgit_sample      8-step MaskGIT sampling (configs/maskgit/imagenet256.py)
  gpt_sample          GPT sampling with the KV cache (configs/gpt/imagenet256.py)

The global batch is each config's own (`train.batch_size`), 64 for the
sampling cases. A train step whose compiled peak estimate per device is over
the memory budget (--memory_budget_gib; by default 90% of what the device's
allocator may use, so on one GPU the papers' global batches run; none on
CPU) runs that batch in more microbatches (`train.microbatches`, the fewest
that fit by estimate, recompiled and checked; the row says how many): the
same FLOPs per step, so MFU stays comparable. --batch overrides the global
batch of every case and --per_device_batch_sweep=1,2,4 runs every case once
per per-device batch (global = per-device x devices). --set KEY=VALUE
(repeatable) overrides a key of every case's config as `--config.KEY=VALUE`
would (the value parsed by the key's type); a case whose config has no such
key is a row saying so. The compute dtype is the config's (bfloat16 for
every paper config), on CPU too.

What is compiled is the loop's train step: the task's `train_step` jitted as
vqlab/train/experiment.py jits it (the same mesh, state, batch and replicated
frozen-network shardings, the step rng folded from (seed, step), the state
donated): the program that is right at every step, which for a tokenizer
computes the GAN terms; --at_step=N compiles the program the loop runs at step
N instead (`task.train_step_options(N)`: a tokenizer's before loss.disc_start
leaves the GAN terms out; its row key says at_step=N). The Experiment itself is
bypassed: it reads the data, the frozen networks' weight files and, for
generators, a trained tokenizer run, none of which a benchmark machine has. The
tasks are built from their constructors instead: tokenizers as
`TokenizerTask(config, frozen=...)` with LPIPS (and VGG19 where the config uses
it) initialized by their flax modules (random weights); TiTok stage 1 as
`ProxyCodeTask` around an untrained VQGAN of the proxy recipe; generators by
benchmarks/generators.py's `_bare_task` (a stand-in tokenizer that is never
applied: the batches carry 'tokens', as the token shards give them, and class
labels or caption ids), the text model with a frozen all-MiniLM-L6-v2 of random
weights (`random_text_encoder`). The sampling cases jit the task's
`sample_tokens` (the config's `sample` settings; MaskGIT 8 steps, GPT with the
KV cache): generated token sequences, decoding them to pixels is the
tokenizer's cost and is not included.

--compile_only lowers and compiles each case on abstract values (state,
batch and frozen networks are `jax.ShapeDtypeStruct`s from `jax.eval_shape`):
nothing big is allocated and no step runs. It reports the compile time
(tracing and lowering included), the compiled program's memory analysis per
device (argument, output, temp and generated-code bytes; peak estimate =
argument + output + temp - alias), the FLOPs per step (matmuls and
convolutions counted from the step's jaxpr, benchmarks/flops.py:
flops_per_step with rematerialized recomputation, model_flops_per_step
without it: the work under JAX's 'rematted_computation' scope left out) and
the time to compile the init program (init_compile_s). Without it, each
case also initializes its state for real (random weights; init s is
compiling and running init), runs 2 warm-up steps and then up to --steps
timed steps (as many as fit the case's time left; step s is their mean),
and reports examples/s, the device's peak memory in use (the host's peak RSS
on CPU), MFU = model FLOPs per step / step s / (devices x peak FLOP/s of the
device kind and compute dtype, benchmarks/train_step.py's PEAK_FLOPS) and
HFU, the same with the recomputation. Sampling cases time one warm-up call
and then up to --steps calls (median).

Each case runs in its own process (this script with --case=NAME), killed
after its time limit: --case_timeout seconds (--case_timeouts=NAME=SECONDS
for single cases), and in full runs at most its fair share of
--total_timeout (default 450 s: the remaining time / the cases left), so the
whole GPU run fits in 8 minutes. A case that times out or fails is a row
saying so, with the last line it printed and whatever it had measured by
then. The persistent compilation cache is off in the cases: compile times are
real compiles.

Rows merge into --json (default
benchmarks/results/paper_scale_<cpu|device kind>.json; --tiny:
paper_scale_tiny_<cpu|device kind>.json), keyed by case (plus batch and
overrides), with the command line, jax version, device and date; a table is
printed. --tiny maps every case to a tiny config (configs/quickstart.py,
configs/*/tiny*.py) for tests and development.
"""

import dataclasses
import datetime
import functools
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path
import numpy as np

from benchmarks import budget as budget_lib
from benchmarks import flops as flops_lib
from benchmarks import results_json
from vqlab import data as data_lib
from vqlab import tokenizers
from vqlab.losses import perceptual
from vqlab.losses import vgg_features
from vqlab.nn import attention
from vqlab.text import minilm
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import partitioning
from vqlab.train import trained_tokenizer
from vqlab.train.tasks import proxy_codes
from vqlab.train.tasks import text_conditions
from vqlab.train.tasks import tokenizer as tokenizer_task


def _import_without_flags(name: str):
  """Imports the module `name` and takes the absl flags it defines out of
  flags.FLAGS: benchmarks/train_step.py and generators.py both define --steps
  and --json (as this script does), and absl refuses a flag defined twice.
  Only their functions are used here."""
  before = set(flags.FLAGS)
  module = importlib.import_module(name)
  for flag in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, flag)
  return module


train_step_benchmark = _import_without_flags('benchmarks.train_step')
generators_benchmark = _import_without_flags('benchmarks.generators')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_BATCH = 64  # Default batch of the sampling cases.
DEFAULT_TOTAL_TIMEOUT = 450.0  # Full runs: 8 minutes with the overheads.
WARMUP_STEPS = 2


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark case.

  Attributes:
    kind: 'train' (one train step) or 'sample' (one sampling call).
    config: the paper config, 'path/to/config.py' or 'path.py:arg'.
    tiny: its tiny stand-in (--tiny).
    what: a description for the table.
    proxy: TiTok stage 1: the proxy VQGAN's config (paper, tiny).
    tiny_images: the tiny config's data become images of its size (the
      paper config trains a video model on images).
  """
  kind: str
  config: str
  tiny: str
  what: str
  proxy: tuple[str, str] | None = None
  tiny_images: bool = False


CASES = {
    'vqgan_taming':
        Case('train', 'configs/vqgan/taming_f16.py', 'configs/quickstart.py',
             'VQGAN f16, taming recipe'),
    'vqgan_maskgit':
        Case('train', 'configs/vqgan/maskgit_f16.py', 'configs/quickstart.py',
             'VQGAN f16, MaskGIT-VQGAN recipe'),
    'magvit2_video':
        Case('train', 'configs/magvit2/ucf101_17x128.py',
             'configs/magvit2/tiny_cpu.py', 'MAGVIT-v2, 17x128x128 video'),
    'magvit2_image':
        Case('train', 'configs/magvit2/imagenet_128.py',
             'configs/magvit2/tiny_cpu.py', 'MAGVIT-v2, 128x128 images',
             tiny_images=True),
    'titok_s128_stage1':
        Case('train', 'configs/titok/s128.py:1', 'configs/titok/tiny_stage1.py',
             'TiTok-S-128 stage 1 (proxy codes)',
             proxy=('configs/vqgan/maskgit_f16.py', 'configs/quickstart.py')),
    'titok_s128_stage2':
        Case('train', 'configs/titok/s128.py:2', 'configs/titok/tiny_stage2.py',
             'TiTok-S-128 stage 2 (decoder)'),
    'maskgit':
        Case('train', 'configs/maskgit/imagenet256.py',
             'configs/maskgit/tiny_cpu.py', 'MaskGIT ImageNet 256'),
    'gpt':
        Case('train', 'configs/gpt/imagenet256.py', 'configs/gpt/tiny_cpu.py',
             'GPT ImageNet 256'),
    'vq_diffusion_class':
        Case('train', 'configs/vq_diffusion/imagenet256_class.py',
             'configs/vq_diffusion/tiny_class.py', 'VQ-Diffusion-B, class'),
    'vq_diffusion_text':
        Case('train', 'configs/vq_diffusion/coco256_text.py',
             'configs/vq_diffusion/tiny_text.py', 'VQ-Diffusion-B, text'),
    'maskgit_sample':
        Case('sample', 'configs/maskgit/imagenet256.py',
             'configs/maskgit/tiny_cpu.py', 'MaskGIT sampling, 8 steps'),
    'gpt_sample':
        Case('sample', 'configs/gpt/imagenet256.py', 'configs/gpt/tiny_cpu.py',
             'GPT sampling, KV cache'),
}

# The default order: cheapest first, since each case's share is of the time
# left (the tokenizers, dearest to compile, get what the others leave);
# MAGVIT-v2 video last (its batch of 256 on one GPU may not finish; README).
DEFAULT_ORDER = ('maskgit_sample', 'gpt_sample', 'gpt', 'maskgit',
                 'vq_diffusion_class', 'vq_diffusion_text', 'titok_s128_stage1',
                 'vqgan_taming', 'vqgan_maskgit', 'titok_s128_stage2',
                 'magvit2_image', 'magvit2_video')
assert sorted(DEFAULT_ORDER) == sorted(CASES)
_CASES = flags.DEFINE_list('cases', list(DEFAULT_ORDER),
                           'Cases to run, in order.')
_COMPILE_ONLY = flags.DEFINE_bool(
    'compile_only', False, 'Only lower and compile each case on abstract '
    'values: compile time, compiled memory and FLOPs; no init, no step.')
_CASE_TIMEOUT = flags.DEFINE_float(
    'case_timeout', 120.0, 'Seconds one case may take (its process is '
    'killed then and the case is a timed-out row).')
_CASE_TIMEOUTS = flags.DEFINE_list(
    'case_timeouts', [], 'NAME=SECONDS: '
    '--case_timeout of single cases.')
_TOTAL_TIMEOUT = flags.DEFINE_float(
    'total_timeout', None, 'Seconds for all cases together (each gets at '
    'most the time left / the cases left); default '
    f'{DEFAULT_TOTAL_TIMEOUT:g} in full runs, none with --compile_only; '
    '0: none.')
_STEPS = flags.DEFINE_integer(
    'steps', 10, f'Timed train steps (after {WARMUP_STEPS} warm-up) or '
    'sampling calls (after 1) per case, at most: as many as fit the time '
    'left.')
_BATCH = flags.DEFINE_integer(
    'batch', 0, "Global batch of every case (0: the config's own; "
    f'{SAMPLE_BATCH} for sampling).')
_SWEEP = flags.DEFINE_list(
    'per_device_batch_sweep', [], 'Run each case at each of these '
    'per-device batches (global = per-device x devices).')
_MEMORY_BUDGET = flags.DEFINE_float(
    'memory_budget_gib', None, 'Per-device GiB a train step may take: a '
    'case whose compiled peak estimate is over it runs its global batch in '
    'more microbatches (train.microbatches, the fewest that fit by '
    "estimate; recompiled and checked). Default: 90% of the device's "
    'allocator limit (on a GPU, of the 75% of memory JAX takes); none on '
    'CPU. 0: never.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'KEY=VALUE: override a key of every case '
    'config, as --config.KEY=VALUE would (repeatable).')
_JSON = flags.DEFINE_string(
    'json', None, 'Merge the rows into this JSON file (default: '
    "benchmarks/results/paper_scale_<cpu|device kind>.json; '' writes "
    'none).')
_AT_STEP = flags.DEFINE_integer(
    'at_step', -1, 'Compile the program the loop runs on a state at this '
    "step (metrics.jsonl logs that step as N + 1; the task's "
    "train_step_options: a tokenizer's before loss.disc_start leaves out "
    'the GAN terms); -1: the one right at every step.')
_TINY = flags.DEFINE_bool(
    'tiny', False, 'Tiny configs instead of the paper ones (tests, '
    'development).')
# Set by the launcher for the process of one case.
_CASE = flags.DEFINE_string('case', None, 'Internal: run this one case.')
_ROW_JSON = flags.DEFINE_string('row_json', None, 'Internal: its row file.')
_DEADLINE = flags.DEFINE_float('deadline', 0.0,
                               'Internal: when it is killed (epoch seconds).')
_PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', 0,
                                         'Internal: per-device batch.')


class UnknownKeyError(Exception):
  """A --set key the case's config does not have."""


# ------------------------------------------------------------- configs ---


def load_config(spec: str):
  """The config of 'path/to/config.py' or 'path/to/config.py:arg'."""
  path, _, arg = spec.partition(':')
  module = importlib.import_module(path[:-len('.py')].replace('/', '.'))
  return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config, overrides: list[str]) -> None:
  """Sets each 'KEY=VALUE' of `overrides` in `config`, the value parsed by
  the key's type as ml_collections' config flags do; UnknownKeyError when
  the config has no such key."""
  for item in overrides:
    key, _, text = item.partition('=')
    try:
      field_type = config_path.get_type(key, config)
    except (AttributeError, KeyError, IndexError) as e:
      raise UnknownKeyError(f'--set {item}: the config has no key {key!r}') \
          from e
    parsers = config_flags._FIELD_TYPE_TO_PARSER  # pylint: disable=protected-access
    parser = parsers.get(field_type, parsers[object])
    config_path.set_value(key, config, parser.parse(text))


def case_config(name: str, tiny: bool, batch: int, overrides: list[str]):
  """The validated config of case `name` at global `batch` (0: its own)."""
  case = CASES[name]
  config = load_config(case.tiny if tiny else case.config)
  config.unlock()
  if tiny and case.tiny_images:
    image_size = config.data.image_size
    config.data = data_lib.default_config('photos')
    config.data.image_size = image_size
  num_devices = jax.device_count()
  config = experiment_config.validate(config, num_devices)
  # On the filled config (keys the config file leaves at their defaults),
  # validated together: --batch=2 --set=train.microbatches=1 of a config
  # whose own microbatches do not divide 2.
  if batch and case.kind == 'train':
    config.train.batch_size = config.eval.batch_size = batch
  apply_overrides(config, overrides)
  return experiment_config.validate(config, num_devices)


# --------------------------------------------------------------- tasks ---


def _variables(module, abstract: bool, *args, **kwargs):
  """module.init(*args, **kwargs): random, or its shapes when `abstract`."""
  init = functools.partial(module.init, **kwargs)
  if abstract:
    return jax.eval_shape(init, *args)
  return jax.jit(init)(*args)


def frozen_networks(config, abstract: bool) -> dict[str, Any]:
  """The frozen networks the tokenizer losses use, with random weights
  (the weight files are not needed: the step costs the same)."""
  images = jnp.zeros((1, 32, 32, 3), jnp.float32)
  rng = jax.random.key(1)
  frozen = {}
  if config.loss.perceptual_weight > 0:
    frozen['lpips'] = _variables(perceptual.LPIPS(), abstract, rng, images,
                                 images)['params']
  if config.loss.get('pcl_weight', 0) > 0:
    frozen['vgg19'] = _variables(vgg_features.VGG19Features(), abstract, rng,
                                 images)['params']
  return frozen


def proxy_tokenizer(spec: str, image_size: int,
                    abstract: bool) -> trained_tokenizer.TrainedTokenizer:
  """An untrained tokenizer of the config `spec` as TiTok's stage-1 proxy,
  built as trained_tokenizer.load builds a trained one."""
  config = load_config(spec)
  config.model = tokenizers.validate(config.model, 'tokenizer.model')
  model = tokenizers.build_validated(config.model, prefix='tokenizer.model')
  images = jnp.zeros((1, image_size, image_size, config.model.in_channels),
                     jnp.float32)
  variables = _variables(model, abstract, {
      'params': jax.random.key(2),
      'quantizer': jax.random.key(3)
  }, images, train=False)
  return trained_tokenizer.TrainedTokenizer(model=model, variables=variables,
                                            config=config, workdir=spec, step=0)


def build_task(name: str, config, tiny: bool, abstract: bool):
  """The case's task, its frozen networks random (or abstract)."""
  case = CASES[name]
  if config.task == 'tokenizer':
    return tokenizer_task.TokenizerTask(
        config, frozen=frozen_networks(config, abstract))
  if config.task == 'titok_proxy':
    proxy_spec = case.proxy[1] if tiny else case.proxy[0]
    proxy = proxy_tokenizer(proxy_spec, config.data.image_size, abstract)
    return proxy_codes.ProxyCodeTask(config, proxy=proxy)
  # A generator: the stand-in tokenizer of benchmarks/generators.py.
  model = generators_benchmark.generators.build_validated(config.model)
  task = generators_benchmark._bare_task(config, model)  # pylint: disable=protected-access
  if task.cond_spec.kind == 'text':
    text = text_conditions.TextConditioner(
        config, encoder=random_text_encoder(config.text.max_length, abstract))
    task = type(task)(config, tokenizer=task.tokenizer,
                      token_shape=task.token_shape, text=text)
  return task


class _StartEndTokens:
  """A tokenizer stand-in: every caption is [CLS] [SEP] (ids 101, 102)."""

  def encode(self, texts, max_length: int, pad_to: int | None = None):
    del max_length
    ids = np.zeros((len(texts), pad_to), np.int32)
    ids[:, :2] = (101, 102)
    return ids, ids > 0


def random_text_encoder(max_length: int, abstract: bool):
  """all-MiniLM-L6-v2 (its architecture) with random params: the frozen
  encoder's cost without its 88 MB weight file, which cannot reach a
  benchmark machine."""
  if max_length < 2:  # Its captions hold the start and end tokens.
    raise ValueError(f'text.max_length: {max_length}, but a frozen '
                     "encoder's captions need >= 2")
  module = minilm.MiniLM(minilm.MiniLMConfig())
  ids = jnp.zeros((1, max_length), jnp.int32)
  init = functools.partial(module.init, jax.random.key(4), ids, ids > 0)
  params = jax.eval_shape(init) if abstract else jax.jit(init)()
  return minilm.TextEncoder(pad_to=max_length,
                            loaded=(module, params, _StartEndTokens()))


def batch_shapes(config, task, batch: int) -> dict[str, tuple[tuple, Any]]:
  """{key: (global shape, dtype)} of one train batch of the case."""
  if config.task == 'generator':
    factors = task.tokenizer.factor_vocab_sizes
    shapes = {
        'tokens': (
            (batch,) + task.token_shape + ((len(factors),) if factors else
                                           ()), jnp.int32)
    }
    if task.text is not None:
      length = config.text.max_length
      shapes['text_ids'] = ((batch, length), jnp.int32)
      shapes['text_mask'] = ((batch, length), jnp.bool_)
    elif task.num_classes:
      shapes['label'] = ((batch,), jnp.int32)
    return shapes
  data = config.data
  size = data.get('train_image_size', 0) or data.image_size
  channels = getattr(task.model, 'in_channels', 3)
  if data_lib.kind(data.name) == 'video':
    return {
        'video': ((batch, data.num_frames, size, size, channels), jnp.float32)
    }
  return {'image': ((batch, size, size, channels), jnp.float32)}


def random_batch(shapes: dict[str, tuple[tuple, Any]], task,
                 rng: jax.Array) -> dict[str, jax.Array]:
  """A batch of random values of `shapes` (images in [-1, 1], valid ids)."""
  batch = {}
  for i, (key, (shape, dtype)) in enumerate(sorted(shapes.items())):
    r = jax.random.fold_in(rng, i)
    if key == 'tokens':
      batch[key] = jax.random.randint(r, shape, 0, task.model.vocab_size)
    elif key == 'label':
      batch[key] = jax.random.randint(r, shape, 0, task.num_classes)
    elif key == 'text_ids':  # Valid for byte and MiniLM vocabularies.
      batch[key] = jax.random.randint(r, shape, 0, 256)
    elif key == 'text_mask':
      batch[key] = jnp.ones(shape, dtype)
    else:
      batch[key] = jax.random.uniform(r, shape, dtype, -1.0, 1.0)
  return batch


# ---------------------------------------------------------- measuring ---


def memory_analysis(compiled) -> dict[str, int]:
  """The compiled program's memory per device, with the peak estimate."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  row = {
      'argument_bytes': int(stats.argument_size_in_bytes),
      'output_bytes': int(stats.output_size_in_bytes),
      'temp_bytes': int(stats.temp_size_in_bytes),
      'alias_bytes': int(stats.alias_size_in_bytes),
      'generated_code_bytes': int(stats.generated_code_size_in_bytes),
  }
  row['peak_estimate_bytes'] = (row['argument_bytes'] + row['output_bytes'] +
                                row['temp_bytes'] - row['alias_bytes'])
  return row


def compile_figures(jitted, *args) -> tuple[Any, dict]:
  """(compiled, figures): trace, lower and compile `jitted` on `args`
  (abstract or real), with compile time, memory analysis and FLOPs."""
  t0 = time.perf_counter()
  traced = jitted.trace(*args)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  # Tracing and lowering run in Python and cost the same on any backend;
  # XLA's compile is the backend's own.
  figures = {
      'compile_s': t3 - t0,
      'trace_s': t1 - t0,
      'lower_s': t2 - t1,
      'xla_compile_s': t3 - t2
  }
  figures['memory'] = memory_analysis(compiled)
  # FLOPs from the jaxpr: XLA's cost analysis misses GPU convolutions.
  figures['flops_per_step'] = flops_lib.jaxpr_flops(traced.jaxpr.jaxpr)
  figures['model_flops_per_step'] = flops_lib.jaxpr_flops(
      traced.jaxpr.jaxpr, recomputation=False)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  figures['xla_cost_analysis_flops'] = float(cost.get('flops', 0.0)) \
      if cost else 0.0
  return compiled, figures


def timed_init(jitted_init, rng: jax.Array, compile_only: bool, report):
  """Compiles the jitted init (reports init_compile_s) and, unless
  `compile_only`, runs it: init_s is compile and run together. Returns the
  state (None when compile_only)."""
  t0 = time.perf_counter()
  compiled = jitted_init.lower(rng).compile()
  report({'init_compile_s': time.perf_counter() - t0})
  if compile_only:
    return None
  state = jax.block_until_ready(compiled(rng))
  report({'init_s': time.perf_counter() - t0})
  return state


def memory_budget() -> int | None:
  """Bytes a train step may take per device (--memory_budget_gib), by
  default 90% of what the device's allocator may hand out (a GPU's
  bytes_limit: JAX takes 75% of its memory); None: no limit (CPU)."""
  if _MEMORY_BUDGET.value is not None:
    return int(_MEMORY_BUDGET.value * 2**30) or None
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  return int(0.9 * limit) if limit else None


def time_left(deadline: float) -> float:
  """Seconds to spend on timed calls: until the deadline, less a margin."""
  if not deadline:
    return float('inf')
  return deadline - time.time() - 2.0


def throughput(figures: dict, batch: int, seconds: float,
               compute_dtype: str) -> dict:
  """examples/s, peak memory in use and MFU of calls of `seconds`."""
  device = jax.devices()[0]
  peak = train_step_benchmark.peak_flops(device, compute_dtype)
  flops = figures['flops_per_step']
  model_flops = figures['model_flops_per_step']
  utilization = lambda f: f / seconds / (peak * jax.device_count()
                                        ) if peak else None
  return {
      'examples_per_s': batch / seconds,
      'peak_memory_bytes': train_step_benchmark.peak_memory_bytes(),
      'achieved_tflops': flops / seconds / 1e12,
      # Model FLOPs utilization: the step's work without recomputation.
      'mfu': utilization(model_flops),
      # Hardware FLOPs utilization: rematerialized work included.
      'hfu': utilization(flops),
  }


def train_case(name: str, config, tiny: bool, compile_only: bool,
               report) -> None:
  """Compiles (and unless `compile_only` times) the case's train step;
  `report(dict)` adds figures to the row as they come."""
  task = build_task(name, config, tiny, abstract=compile_only)
  batch = config.train.batch_size
  mesh = partitioning.make_mesh(config.mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  replicated = partitioning.replicated(mesh)
  shapes = batch_shapes(config, task, batch)
  abstract_batch = {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
      for k, (shape, dtype) in shapes.items()
  }
  # As vqlab/train/experiment.py builds its train step.
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_rng = experiment.init_key(init_rng)
  with jax.set_mesh(mesh):
    abstract_state = jax.eval_shape(task.init, init_rng, abstract_batch)
  state_shardings = partitioning.state_shardings(abstract_state, mesh,
                                                 config.mesh.rules)
  abstract_state = experiment._with_shardings(abstract_state, state_shardings)  # pylint: disable=protected-access

  report({
      'params':
          int(sum(x.size for x in jax.tree.leaves(abstract_state.params))),
      'inputs': {
          k: [list(s), jnp.dtype(d).name] for k, (s, d) in shapes.items()
      },
  })
  abstract_frozen = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      task.frozen)

  options = (task.train_step_options(_AT_STEP.value)
             if _AT_STEP.value >= 0 else {})
  report({'train_step_options': options})

  def compile_step():
    # A new function each time: jax would reuse the trace of the same one,
    # and the task reads train.microbatches when it is traced.
    def train_step(state, batch, frozen):
      rng = jax.random.fold_in(step_rng, state.step)
      return task.train_step(state, batch, rng, frozen, **options)

    jitted = jax.jit(train_step,
                     in_shardings=(state_shardings, batch_sharding, replicated),
                     out_shardings=(state_shardings, replicated),
                     donate_argnums=(0,))
    with jax.set_mesh(mesh):
      return compile_figures(jitted, abstract_state, abstract_batch,
                             abstract_frozen)

  compiled, figures = compile_step()
  budget = memory_budget()
  tried = []
  while budget and figures['memory']['peak_estimate_bytes'] > budget:
    tried.append({
        'microbatches': config.train.microbatches,
        'peak_estimate_bytes': figures['memory']['peak_estimate_bytes'],
        'compile_s': figures['compile_s'],
    })
    more = budget_lib.more_microbatches(figures['memory'],
                                        config.train.microbatches,
                                        batch // jax.device_count(), budget)
    if more is None:
      break
    print(
        f'peak estimate {_gib(tried[-1]["peak_estimate_bytes"])} GiB > '
        f'budget {_gib(budget)} GiB: {more} microbatches', flush=True)
    config.train.microbatches = more
    compiled, figures = compile_step()
  report({
      **figures, 'microbatches': config.train.microbatches,
      'memory_budget_bytes': budget,
      'fits_budget': (
          figures['memory']['peak_estimate_bytes'] <= budget if budget else None
      ),
      'microbatches_tried': tried
  })
  print(
      f'compiled in {figures["compile_s"]:.1f} s (trace '
      f'{figures["trace_s"]:.1f}, lower {figures["lower_s"]:.1f}, XLA '
      f'{figures["xla_compile_s"]:.1f})', flush=True)
  init = experiment.jitted_init(task, abstract_batch, state_shardings)
  with jax.set_mesh(mesh):
    state = timed_init(init, init_rng, compile_only, report)
  if compile_only:
    return
  with jax.set_mesh(mesh):
    frozen = jax.device_put(task.frozen, replicated)
    batch_arrays = jax.device_put(random_batch(shapes, task, jax.random.key(4)),
                                  batch_sharding)
    t0 = time.perf_counter()
    for _ in range(WARMUP_STEPS):
      state, metrics = compiled(state, batch_arrays, frozen)
    jax.block_until_ready((state, metrics))
    warmup_s = (time.perf_counter() - t0) / WARMUP_STEPS
    steps = max(1, int(min(_STEPS.value,
                           time_left(_DEADLINE.value) // warmup_s)))
    print(f'warm-up {warmup_s:.3g} s/step; timing {steps} steps', flush=True)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch_arrays, frozen)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
  report({
      'warmup_step_s': warmup_s,
      'timed_steps': steps,
      'step_s': step_s,
      **throughput(figures, batch, step_s, config.compute_dtype)
  })


def sample_case(name: str, config, tiny: bool, batch: int, compile_only: bool,
                report) -> None:
  """Compiles (and unless `compile_only` times) the task's sample_tokens."""
  task = build_task(name, config, tiny, abstract=True)
  mesh = partitioning.make_mesh(config.mesh)
  replicated = partitioning.replicated(mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  init_rng = experiment.init_key(jax.random.key(config.seed))
  abstract_state = jax.eval_shape(task.init, init_rng, {})
  shardings = partitioning.state_shardings(abstract_state, mesh,
                                           config.mesh.rules)
  params = experiment._with_shardings(  # pylint: disable=protected-access
      abstract_state.params['model'], shardings.params['model'])
  cond = None
  if task.num_classes:
    cond = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding)
  report({
      'params': int(sum(x.size for x in jax.tree.leaves(params))),
      'tokens_per_example': int(np.prod(task.token_shape)),
      'sample_settings': {
          k: config.sample[k] for k in ('num_steps', 'use_cache', 'temperature',
                                       'top_k', 'guidance_scale')
      },
  })
  sample = jax.jit(lambda p, r, c: task.sample_tokens(p, r, batch, c),
                   out_shardings=replicated)
  rng = jax.random.key(5)
  with jax.set_mesh(mesh):
    compiled, figures = compile_figures(sample, params, rng, cond)
  report(figures)
  print(
      f'compiled in {figures["compile_s"]:.1f} s (trace '
      f'{figures["trace_s"]:.1f}, lower {figures["lower_s"]:.1f}, XLA '
      f'{figures["xla_compile_s"]:.1f})', flush=True)
  init = jax.jit(lambda r: task.init(r, {}).params['model'],
                 out_shardings=shardings.params['model'])
  with jax.set_mesh(mesh):
    params = timed_init(init, init_rng, compile_only, report)
  if compile_only:
    return
  with jax.set_mesh(mesh):
    if cond is not None:
      cond = jax.device_put(
          jax.random.randint(jax.random.key(6), (batch,), 0, task.num_classes),
          batch_sharding)
    timing = budget_lib.measure(
        lambda: jax.block_until_ready(compiled(params, rng, cond)),
        _STEPS.value, time_left(_DEADLINE.value))
  report({
      'warmup_call_s': timing['warmup_s'],
      'timed_steps': timing['timed_calls'],
      'step_s': timing['call_s'],
      **throughput(figures, batch, timing['call_s'], config.compute_dtype)
  })


def run_case(name: str, row_path: str) -> None:
  """Runs one case in this process, writing its row to `row_path` as the
  figures come (the launcher reads what is there if it kills us)."""
  row = {'case': name, 'status': 'running'}

  def report(figures: dict) -> None:
    row.update(figures)
    # Whole or not at all: the launcher may kill this process at any time.
    with open(row_path + '.tmp', 'w') as f:
      json.dump(row, f, indent=2)
    os.replace(row_path + '.tmp', row_path)

  # Compile times are to be real compiles, not persistent-cache hits.
  jax.config.update('jax_enable_compilation_cache', False)
  case = CASES[name]
  report({
      'what': case.what,
      'config': case.tiny if _TINY.value else case.config,
      'overrides': _SET.value,
      'compile_only': _COMPILE_ONLY.value,
      'device': budget_lib.device_info(),
      'jax': jax.__version__,
  })
  try:
    per_device = _PER_DEVICE_BATCH.value
    batch = per_device * jax.device_count() if per_device else _BATCH.value
    config = case_config(name, _TINY.value, batch, _SET.value)
    if case.kind == 'sample':
      batch = batch or SAMPLE_BATCH
    else:
      batch = config.train.batch_size
    report({
        'global_batch': batch,
        'per_device_batch': batch // jax.device_count(),
        'compute_dtype': config.compute_dtype,
    })
    if case.kind == 'train':
      train_case(name, config, _TINY.value, _COMPILE_ONLY.value, report)
    else:
      sample_case(name, config, _TINY.value, batch, _COMPILE_ONLY.value, report)
    if budget_lib.on_cpu():
      report({'host_peak_rss_bytes': budget_lib.peak_host_rss_bytes()})
    report({'status': 'ok'})
  except UnknownKeyError as e:
    report({'status': 'unknown_key', 'error': str(e)})
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    report({'status': 'failed', 'error': _one_line(f'{type(e).__name__}: {e}')})


# ------------------------------------------------------------ launcher ---


def _one_line(text: str, limit: int = 300) -> str:
  line = ' '.join(text.split())
  return line if len(line) <= limit else line[:limit - 3] + '...'


def _last_line(path: str) -> str:
  """The last non-empty line of a log file ('' if none)."""
  try:
    with open(path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return _one_line(lines[-1]) if lines else ''


@dataclasses.dataclass
class Job:
  """One case process: a case at one batch."""
  name: str
  per_device_batch: int = 0

  def key(self) -> str:
    """The case's row key in the JSON."""
    key = ('tiny/' if _TINY.value else '') + self.name
    if self.per_device_batch:
      key += f' per_device_batch={self.per_device_batch}'
    elif _BATCH.value:
      key += f' batch={_BATCH.value}'
    if _MEMORY_BUDGET.value is not None:
      key += f' memory_budget_gib={_MEMORY_BUDGET.value:g}'
    if _AT_STEP.value >= 0:
      key += f' at_step={_AT_STEP.value}'
    return ' '.join([key] + _SET.value)

  def argv(self, row_path: str, deadline: float) -> list[str]:
    """This script's command line for the case."""
    argv = [
        sys.executable,
        os.path.abspath(__file__), f'--case={self.name}',
        f'--row_json={row_path}', f'--deadline={deadline:.3f}',
        f'--steps={_STEPS.value}', f'--batch={_BATCH.value}',
        f'--per_device_batch={self.per_device_batch}'
    ]
    argv += ['--compile_only'] if _COMPILE_ONLY.value else []
    argv += ['--tiny'] if _TINY.value else []
    argv.append(f'--at_step={_AT_STEP.value}')
    if _MEMORY_BUDGET.value is not None:
      argv.append(f'--memory_budget_gib={_MEMORY_BUDGET.value!r}')
    return argv + [f'--set={item}' for item in _SET.value]


def run_job(job: Job, limit: float, logdir: str) -> dict:
  """Runs `job` in its own process, killed after `limit` seconds."""
  stem = job.key().replace(' ', '_').replace('/', '_')
  row_path = os.path.join(logdir, stem + '.json')
  log_path = os.path.join(logdir, stem + '.log')
  t0 = time.time()
  with open(log_path, 'w') as log:
    # Its own session: on timeout the whole process group is killed.
    process = subprocess.Popen(job.argv(row_path, t0 + limit), stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT,
                               start_new_session=True)
    timed_out = False
    try:
      process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      timed_out = True
    finally:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
  row = {}
  if os.path.exists(row_path):
    with open(row_path) as f:
      row = json.load(f)
  row.update(case=job.name, wall_s=time.time() - t0, limit_s=limit)
  if timed_out:
    row.update(status='timed_out', error=_last_line(log_path))
  elif row.get('status') not in ('ok', 'failed', 'unknown_key'):
    row.update(
        status='failed', error=_last_line(log_path) or
        f'exit status {process.returncode}')
  return row


def _limits() -> dict[str, float]:
  """--case_timeout per case, with the --case_timeouts exceptions."""
  limits = {name: _CASE_TIMEOUT.value for name in CASES}
  for item in _CASE_TIMEOUTS.value:
    name, _, seconds = item.partition('=')
    if name not in CASES:
      raise app.UsageError(f'--case_timeouts: unknown case {name!r}')
    limits[name] = float(seconds)
  return limits


def _default_json(device: dict) -> str:
  """benchmarks/results/paper_scale_[tiny_]<cpu or the accelerator kind,
  e.g. nvidia_h100_80gb_hbm3>.json: an H100's rows never replace an
  H200's."""
  tiny = 'tiny_' if _TINY.value else ''
  name = ('cpu' if device['platform'] == 'cpu' else re.sub(
      r'[^a-z0-9]+', '_', device['kind'].lower()).strip('_'))
  return os.path.join(ROOT, 'benchmarks', 'results',
                      f'paper_scale_{tiny}{name}.json')


def write_json(path: str, rows: dict[str, dict], device: dict | None,
               run: dict[str, str]) -> None:
  """Merges `rows` into the JSON file at `path`, with `run` (the command
  line and date) at the top and in each row (rows of earlier runs stay)."""
  results = results_json.load(path)
  results.update(jax=jax.__version__, device=device, **run)
  results.setdefault('rows', {}).update({
      key: {
          **row,
          **run
      } for key, row in rows.items()
  })
  results_json.write(path, results)


def _si(value: float | None, unit: str = '') -> str:
  if value is None:
    return '-'
  for scale, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M')):
    if abs(value) >= scale:
      return f'{value / scale:.3g}{prefix}{unit}'
  return f'{value:.3g}{unit}'


def _gib(value: int | None) -> str:
  return '-' if value is None else f'{value / 2**30:.2f}'


def print_table(rows: dict[str, dict], compile_only: bool) -> None:
  """The table of this run's rows."""
  memory = ('peak memory GiB: compiled estimate per device (argument + '
            'output + temp - alias)' if compile_only else
            "peak memory GiB: the device's peak bytes in use (on CPU: the "
            "host's peak RSS)")
  init = ('init s: compiling the init program'
          if compile_only else 'init s: compiling and running init')
  print(f'\n{memory}; {init}; FLOPs per step: matmuls + convolutions of '
        'the jaxpr, whole global batch, without rematerialized recomputation '
        '(the JSON\'s flops_per_step and hfu include it); sampling: per call.')
  width = max([len('case')] + [len(key) for key in rows])
  header = (f'{"case":<{width}} {"batch":>5} {"compile s":>9} {"init s":>7} '
            f'{"step s":>8} {"examples/s":>10} {"peak GiB":>8} '
            f'{"FLOPs/step":>10} {"MFU":>6}  status')
  print(header)
  print('-' * len(header))
  fmt = lambda v, spec: '-' if v is None else format(v, spec)
  for key, row in rows.items():
    memory = (row.get('memory', {}).get('peak_estimate_bytes')
              if compile_only else row.get('peak_memory_bytes'))
    mfu = row.get('mfu')
    status = row['status']
    if status == 'timed_out':
      status += f' ({row["limit_s"]:g} s)'
    if row['status'] != 'ok':
      status += f': {row.get("error", "")}'
    if row.get('microbatches_tried'):  # Refitted to the memory budget.
      fits = 'fits' if row.get('fits_budget') else 'still over'
      status += (f' ({row["microbatches"]} microbatches: {fits} '
                 f'{_gib(row["memory_budget_bytes"])} GiB)')
    print(
        f'{key:<{width}} {fmt(row.get("global_batch"), "d"):>5} '
        f'{fmt(row.get("compile_s"), ".1f"):>9} '
        f'{fmt(row.get("init_s", row.get("init_compile_s")), ".1f"):>7} '
        f'{fmt(row.get("step_s"), ".3g"):>8} '
        f'{fmt(row.get("examples_per_s"), ".4g"):>10} '
        f'{_gib(memory):>8} '
        f'{_si(row.get("model_flops_per_step", row.get("flops_per_step"))):>10} '
        f'{"-" if mfu is None else f"{100 * mfu:.1f}%":>6}  {status}')
  sys.stdout.flush()


def launch() -> None:
  """Runs every selected case in its own process; merges the rows."""
  unknown = [name for name in _CASES.value if name not in CASES]
  if unknown:
    raise app.UsageError(f'unknown cases {unknown}; known: {list(CASES)}')
  for item in _SET.value:
    if '=' not in item:
      raise app.UsageError(f'--set {item!r}: expected KEY=VALUE')
  if _SWEEP.value and _BATCH.value:
    raise app.UsageError('--batch and --per_device_batch_sweep exclude each '
                         'other')
  sweep = [int(b) for b in _SWEEP.value] or [0]
  jobs = [Job(name, b) for name in _CASES.value for b in sweep]
  limits = _limits()
  total = _TOTAL_TIMEOUT.value
  if total is None:
    total = 0.0 if _COMPILE_ONLY.value else DEFAULT_TOTAL_TIMEOUT
  logdir = tempfile.mkdtemp(prefix='paper_scale_')
  print(f'{len(jobs)} cases; logs in {logdir}', flush=True)
  start, rows, device, path = time.time(), {}, None, _JSON.value
  # The attention switch is part of what made the rows (its own JSON file
  # is a convention only).
  variable = attention.IMPLEMENTATION_VARIABLE
  prefix = ([f'{variable}={os.environ[variable]}']
            if variable in os.environ else [])
  run = {
      'command': ' '.join(prefix + ['python'] + sys.argv),
      'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  }
  for i, job in enumerate(jobs):
    limit, share = limits[job.name], float('inf')
    if total:  # A fair share of the time left.
      share = (total - (time.time() - start)) / (len(jobs) - i)
    if share < 1.0:
      row = {
          'case': job.name,
          'status': 'skipped',
          'limit_s': share,
          'error': f'no time left of --total_timeout={total:g}'
      }
    else:
      row = run_job(job, min(limit, share), logdir)
    rows[job.key()] = row
    print(
        f'[{i + 1}/{len(jobs)}] {job.key()}: {row["status"]} in '
        f'{row.get("wall_s", 0):.0f} s' +
        (f' -- {row["error"]}' if row.get('error') else ''), flush=True)
    # The cases tell which device they ran on: the backend is not started
    # here, where it could hold accelerator memory the cases need.
    device = device or row.get('device')
    if path is None and device:
      path = _default_json(device)
    if path:  # After each case: a long run keeps what it has.
      write_json(path, rows, device, run)
  if path is None:  # No case got as far as starting the backend.
    device = budget_lib.device_info()
    path = _default_json(device)
    write_json(path, rows, device, run)
  print_table(rows, _COMPILE_ONLY.value)
  if path:
    print(f'\nwrote {path}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _CASE.value:
    run_case(_CASE.value, _ROW_JSON.value)
  else:
    launch()


if __name__ == '__main__':
  app.run(main)
