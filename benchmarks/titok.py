r"""TiTok (1D tokens) against the 2D VQGAN at the same image size: tokens per
image, encode+decode images/s, tokens/s and train step time, for the tiny CPU
configs (32x32) and the paper-sized ones (256x256).

  python benchmarks/titok.py --configs=tiny
  python benchmarks/titok.py --configs=paper --max_seconds_per_case=90
  python benchmarks/titok.py --configs=paper --batch=32 --steps=10   # GPU

Models, per size:
  tiny:  titok = configs/titok/tiny_stage{1,2}.py (TiTok-tiny, K=16 tokens,
         patch 4); vqgan = configs/quickstart.py at 32x32 (f = 4: 8x8 tokens).
  paper: titok = configs/titok/b64.py:{1,2} (TiTok-B-64); vqgan =
         configs/vqgan/maskgit_f16.py at 256x256 (f = 16: 16x16 tokens).

Cases, per model:
  encode_decode: the jitted `encode` (images -> indices) then the jitted
    `decode_indices` (indices -> images) on random images with random params;
    one warm-up call, then up to --steps timed calls that fit in
    --max_seconds_per_case, median. images/s = batch / s per call; tokens/s =
    images/s x tokens per image. It is always run: it is also the probe the
    train-step estimates rest on.
  train_stage2 (titok) / train (vqgan): one step of the config's tokenizer
    task (TiTok stage 2: encoder and quantizer frozen, decoder trained with
    the MaskGIT-VQGAN losses), timed by benchmarks/train_step.py's
    `run_benchmark` (`exp.jitted_train_step()` with `exp.frozen`; 2 warm-up steps,
    s/step = mean of the timed steps, data swapped for the built-in photos at
    the same image size). No warm start: random params time the same.
  train_stage1 (titok): one step of task 'titok_proxy' (TiTok predicts a
    frozen VQGAN's codes), the proxy being an untrained run of the baseline
    VQGAN config written to --workdir (initial checkpoint only).

On CPU the compute dtype is float32 and perceptual loss, LPIPS and FID are
off (no weight files). A train case is run only if its estimate fits
--max_seconds_per_case: estimate = train-step FLOPs (matmuls + convolutions
counted from the jaxpr, benchmarks/flops.py) / the FLOP rate the encode+decode
probe reached. Estimates leave out elementwise work and the optimizer, so
they are low; skipped cases are marked 'skipped' with 'estimated_step_s' in
the JSON and 'est.' in the table -- estimates, NOT measurements. Cases that
run record their estimate too ('predicted_step_s'). On CPU a train state
(6 x f32 params) that does not fit in the host's available memory is skipped.
--skip=size/model/case skips by hand. 'params' of encode_decode counts the
tokenizer's; of a train case, the whole trained state's (generator and
discriminator).

Timed steps run as many as fit (at most --steps). Results merge, per size and
model, into benchmarks/results/titok_<device>.json ('cpu' or the accelerator
kind).
"""

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import budget as budget_lib
from benchmarks import flops as flops_lib
from benchmarks import train_step as train_step_benchmark
from configs import quickstart
from configs.titok import b64
from configs.titok import tiny_stage1
from configs.titok import tiny_stage2
from configs.vqgan import maskgit_f16
from vqlab import data
from vqlab import tokenizers
from vqlab.train import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'paper'],
                             'Which sizes: tiny, paper.')
_MODELS = flags.DEFINE_list('models', ['titok', 'vqgan'],
                            'Which tokenizers: titok, vqgan.')
_BATCH = flags.DEFINE_integer(
    'batch', 0, "Batch of every case (0: 8 tiny, 2 paper on CPU; the "
    "config's train batch on accelerators).")
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds_per_case', 120.0, 'Time budget of one case (compilation '
    'not counted): a train case estimated to take longer per step is '
    'skipped; timed calls stop when the next would exceed it.')
_SKIP = flags.DEFINE_list(
    'skip', [], 'Cases not to run, as size/model/case, e.g. '
    'paper/titok/train_stage1.')
_STAGE1 = flags.DEFINE_bool(
    'stage1', True, 'Also time the TiTok stage-1 '
    'step (builds an untrained proxy VQGAN run).')
# --steps, --json and --workdir are benchmarks/train_step.py's flags.
_STEPS = train_step_benchmark._STEPS  # pylint: disable=protected-access
_JSON = train_step_benchmark._JSON  # pylint: disable=protected-access
_WORKDIR = train_step_benchmark._WORKDIR  # pylint: disable=protected-access
flags.FLAGS.set_default('steps', 5)


def _vqgan_tiny():
  config = quickstart.get_config()
  config.data.image_size = 32
  config.data.train_image_size = 0
  return config


def _vqgan_paper():
  config = maskgit_f16.get_config()
  config.data.image_size = 256
  return config


# size -> model -> case -> config factory. The stage-1 TiTok configs name
# their proxy: the baseline VQGAN of the same size.
CONFIGS = {
    'tiny': {
        'titok': {
            'train_stage2': tiny_stage2.get_config,
            'train_stage1': tiny_stage1.get_config
        },
        'vqgan': {
            'train': _vqgan_tiny
        }
    },
    'paper': {
        'titok': {
            'train_stage2': lambda: b64.get_config('2'),
            'train_stage1': lambda: b64.get_config('1')
        },
        'vqgan': {
            'train': _vqgan_paper
        }
    },
}
PROXY = {'tiny': quickstart.get_config, 'paper': _vqgan_paper}


def _batch_size(name: str, config) -> int:
  if _BATCH.value:
    return _BATCH.value
  if budget_lib.on_cpu():
    return 8 if name == 'tiny' else 2
  return config.train.batch_size


def _prepare(config, batch: int):
  """The config as benchmarked: batch, no weight files on CPU, photos."""
  config.unlock()
  config.train.batch_size = config.eval.batch_size = batch
  if 'eval' in config and 'lpips' in config.eval:
    config.eval.lpips = config.eval.fid = 'off'
  if 'perceptual_weight' in config.loss:
    config.loss.perceptual_weight = 0.0
  if 'warm_start' in config:  # Random params time the same.
    config.warm_start.workdir, config.warm_start.params = '', ()
    config.warm_start.pixel_vqgan = ''
  if budget_lib.on_cpu():
    config.compute_dtype = 'float32'
  if config.data.name != 'photos':  # As train_step.run_benchmark swaps.
    image_size = config.data.image_size
    config.data = data.default_config('photos')
    config.data.image_size = image_size
  return config


# --------------------------------------------------------------- cases ---


def encode_decode(config, batch: int, budget: float) -> dict:
  """images/s of jitted encode then jitted decode_indices."""
  model = tokenizers.build(config.model, dtype=jnp.dtype(config.compute_dtype))
  size = config.data.image_size
  shape = (batch, size, size, config.model.in_channels)
  images = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), images[:1])
  params = int(
      sum(x.size for x in jax.tree.leaves(variables.get('params', variables))))
  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode)[0])
  decode = jax.jit(lambda v, i: model.apply(v, i, method=model.decode_indices))
  t0 = time.perf_counter()
  encode = encode.lower(variables, images).compile()
  indices = jax.block_until_ready(encode(variables, images))
  decode = decode.lower(variables, indices).compile()
  compile_s = time.perf_counter() - t0
  flops = (flops_lib.count_flops(
      lambda v, x: model.apply(v, x, method=model.encode)[0], variables, images)
           + flops_lib.count_flops(
               lambda v, i: model.apply(v, i, method=model.decode_indices),
               variables, indices))

  def call():
    jax.block_until_ready(decode(variables, encode(variables, images)))

  result = budget_lib.measure(call, _STEPS.value, budget)
  # Tokens: TiTok [B, K], VQGAN [B, h, w] (a trailing factor axis, if any,
  # is one token's several indices).
  spatial = 1 if config.model.name == 'titok' else 2
  token_shape = list(indices.shape[1:])
  tokens = math.prod(token_shape[:spatial])
  images_per_s = batch / result['call_s']
  return {
      'image_shape': list(shape[1:]),
      'token_shape': token_shape,
      'tokens_per_image': tokens,
      'params': params,
      'batch': batch,
      'compile_s': compile_s,
      **result, 'flops_per_call': flops,
      'achieved_tflops': flops / result['call_s'] / 1e12,
      'images_per_s': images_per_s,
      'tokens_per_s': images_per_s * tokens
  }


def proxy_run(name: str, workdir: str) -> str:
  """An untrained run of the baseline VQGAN (an initial checkpoint), as
  tests/tiny.py's `tokenizer_run` makes: the stage-1 proxy."""
  config = _prepare(PROXY[name](), 2)
  exp = experiment.Experiment(config, workdir)
  if exp.checkpointer.restore(exp.abstract_state) is None:
    state, _ = exp.initial_state()
    exp.checkpointer.save(1, state, force=True)
    exp.checkpointer.wait()
  exp.checkpointer.close()
  return workdir


def train_estimate(config, workdir: str, flop_rate: float) -> dict:
  """Train-step FLOPs (from the jaxpr, on abstract values) / `flop_rate`."""
  exp = experiment.Experiment(config, workdir)
  with jax.set_mesh(exp.mesh):
    flops = flops_lib.count_flops(exp.jitted_train_step(), exp.abstract_state,
                                  exp.abstract_batch, exp.frozen)
  params = sum(x.size for x in jax.tree.leaves(exp.abstract_state.params))
  exp.checkpointer.close()
  return {
      'flops_per_step': flops,
      'estimated_step_s': flops / flop_rate,
      'params': int(params),
      'estimate': 'train-step FLOPs / the encode+decode FLOP rate'
  }


def train_case(name: str, kind: str, case: str, config, flop_rate: float,
               budget: float) -> dict:
  workdir = os.path.join(_WORKDIR.value, f'titok_{name}_{kind}_{case}')
  if case == 'train_stage1':
    config.proxy.workdir = proxy_run(
        name, os.path.join(_WORKDIR.value, f'titok_{name}_proxy_vqgan'))
  estimate = train_estimate(config, workdir, flop_rate)
  predicted = estimate['estimated_step_s']
  reason = None
  if f'{name}/{kind}/{case}' in _SKIP.value:
    reason = '--skip'
  elif predicted > budget:
    reason = f'over --max_seconds_per_case={budget:g}'
  available = budget_lib.available_host_bytes() if budget_lib.on_cpu() else None
  state_bytes = 4 * estimate['params'] * 6  # Params, 2 moments, grads, ...
  if reason is None and available is not None and state_bytes > available:
    reason = (f'host memory: the train state needs > '
              f'{state_bytes / 2**30:.1f} GiB, {available / 2**30:.1f} GiB '
              'available')
  if reason:
    return {
        'skipped': True,
        'reason': reason,
        **estimate, 'estimated_steps_per_s': 1.0 / predicted
    }
  # 2 warm-up steps + the timed ones within the budget.
  steps = max(1, min(_STEPS.value, int(budget // max(predicted, 1e-9)) - 2))
  budget_lib.progress(
      name, kind, f'{case}: est. {predicted:.3g} s/step; compiling, '
      f'then 2 warm-up + {steps} timed steps')
  result = train_step_benchmark.run_benchmark(config, workdir, steps)
  result.update(timed_steps=steps, predicted_step_s=predicted,
                params=estimate['params'])
  return result


def run_model(name: str, kind: str) -> dict:
  budget = _MAX_SECONDS.value
  cases = CONFIGS[name][kind]
  first = next(iter(cases))
  base = cases[first]()
  batch = _batch_size(name, base)
  base = _prepare(base, batch)
  entry = {
      'batch': batch,
      'image_size': base.data.image_size,
      'compute_dtype': base.compute_dtype
  }
  entry['encode_decode'] = ed = encode_decode(base, batch, budget)
  flop_rate = ed['flops_per_call'] / ed['call_s']
  budget_lib.progress(
      name, kind, f'{ed["params"] / 1e6:.3g}M params, '
      f'{ed["tokens_per_image"]} tokens/image; encode+decode '
      f'{ed["call_s"]:.3g} s/call = {ed["images_per_s"]:.3g} images/s '
      f'(compile {ed["compile_s"]:.3g} s)')
  for case, get_config in cases.items():
    if case == 'train_stage1' and not _STAGE1.value:
      continue
    config = _prepare(get_config(), batch)
    try:
      row = train_case(name, kind, case, config, flop_rate, budget)
    except Exception as e:  # pylint: disable=broad-except
      row = {'skipped': True, 'reason': f'error: {type(e).__name__}: {e}'}
    entry[case] = row
    if row.get('skipped'):
      est = row.get('estimated_step_s')
      budget_lib.progress(
          name, kind, f'{case}: skipped ({row["reason"]})' +
          (f', est. {est:.3g} s/step (NOT measured)' if est else ''))
    else:
      budget_lib.progress(
          name, kind, f'{case}: {row["step_s"]:.3g} s/step (mean of '
          f'{row["timed_steps"]}; est. {row["predicted_step_s"]:.3g}),'
          f' compile {row["compile_s"]:.3g} s')
  return entry


# -------------------------------------------------------------- output ---


def print_table(results: dict, names: list[str]) -> None:
  print('\nest. = NOT measured (train-step FLOPs / encode+decode FLOP rate).'
        ' enc+dec: median s/call; train: mean s/step.')
  header = (f'{"size":<6} {"model":<6} {"img":>4} {"batch":>5} '
            f'{"tokens":>6} {"enc+dec s":>10} {"images/s":>9} '
            f'{"tokens/s":>9}  {"stage2|train s/step":>20} '
            f'{"stage1 s/step":>20}')
  print(header)
  print('-' * len(header))

  def step_text(row):
    if row is None:
      return '-'
    if row.get('skipped'):
      est = row.get('estimated_step_s')
      return f'est. {est:.3g} (skipped)' if est else 'skipped'
    return f'{row["step_s"]:.3g}'

  for name in names:
    for kind in ('titok', 'vqgan'):
      entry = results.get(name, {}).get(kind)
      if not entry:
        continue
      ed = entry['encode_decode']
      train = entry.get('train_stage2', entry.get('train'))
      print(
          f'{name:<6} {kind:<6} {entry["image_size"]:>4} '
          f'{entry["batch"]:>5} {ed["tokens_per_image"]:>6} '
          f'{ed["call_s"]:>10.3g} {ed["images_per_s"]:>9.3g} '
          f'{ed["tokens_per_s"]:>9.4g}  {step_text(train):>20} '
          f'{step_text(entry.get("train_stage1")) if kind == "titok" else "":>20}'
      )
  for name in names:
    for kind in ('titok', 'vqgan'):
      for case, row in results.get(name, {}).get(kind, {}).items():
        if isinstance(row, dict) and row.get('skipped'):
          print(f'  {name}/{kind}/{case}: skipped -- {row["reason"]}')
  sys.stdout.flush()


def main(argv):
  del argv
  path = _JSON.value
  if path is None:
    path = os.path.join(ROOT, 'benchmarks', 'results',
                        f'titok_{budget_lib.device_name()}.json')
  results = budget_lib.load_results(path)
  for name in _CONFIGS.value:
    if name not in CONFIGS:
      raise app.UsageError(f'unknown size {name!r}; known: {list(CONFIGS)}')
    entry = results.get(name, {})
    for kind in _MODELS.value:
      t0 = time.perf_counter()
      entry[kind] = run_model(name, kind)
      entry[kind].update({
          'steps': _STEPS.value,
          'max_seconds_per_case': _MAX_SECONDS.value,
          'wall_s': time.perf_counter() - t0,
          'command': ' '.join(['python'] + sys.argv)
      })
      results[name] = entry
      if path:
        budget_lib.save_results(path, results)
  print_table(results, _CONFIGS.value)
  if path:
    print(f'\nwrote {path}')


if __name__ == '__main__':
  app.run(main)
