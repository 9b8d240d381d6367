r"""Token generator speed: train steps/s and sampling images/s of MaskGIT
(8 decoding steps), GPT (with and without the KV cache) and VQ-Diffusion
(100, 25 and 10 reverse steps), for the tiny CPU configs and the paper-sized
ImageNet 256 configs (VQ-Diffusion: configs/vq_diffusion/tiny_class.py and
imagenet256_class.py).

  python benchmarks/generators.py --configs=tiny
  python benchmarks/generators.py --configs=paper --max_seconds_per_case=120
  python benchmarks/generators.py --configs=paper --dtype=bfloat16 --batch=64  # GPU

Configs: configs/{maskgit,gpt}/tiny_cpu.py (unconditional, 8x8 tokens of 512
codes) and configs/{maskgit,gpt}/imagenet256.py (class-conditional, 1000
classes; MaskGIT 16x16 tokens of 1024 codes, 24 layers of width 768; GPT 256
tokens of 1024 codes, 24 layers of width 1536), with random parameters.

Cases, per model:
  train: one jitted optimizer step as the generator task runs it
    (`GeneratorTask.train_step`: loss, grads, the config's optax AdamW and
    EMA) on random tokens (and labels), state donated.
  sample: MaskGIT `maskgit.sample` with num_steps=8, guidance_scale=0;
    GPT `gpt.sample` with use_cache=True ('sample_cache') and False
    ('sample_no_cache'); the config's temperature / top-k / top-p, random
    class labels for conditional models. Images/s counts generated token
    sequences: decoding them to pixels is the tokenizer's cost and is not
    included.
  forward (probe): one eval forward pass at the batch's token shape; GPT
    also one cached decode step. They time the probes the budget uses.

Compile time is reported separately. Each case runs one warm-up call, then
up to --steps timed calls (each waited on) that fit in --max_seconds_per_case;
s/call is their median. A case whose warm call the probes predict to exceed
--max_seconds_per_case is not run: it is reported as skipped with an
estimate (MaskGIT sampling: 8 x one forward pass; GPT without cache: N x
one forward pass at length N; GPT with cache: (prefix + N - 1) x one cached
decode step; train: roughly 3 x one forward pass). Estimates are marked as
such in the table and JSON ('skipped': true, 'estimated_call_s') and are not
measurements. They leave out the work around the network calls (sampling,
sorting, the optimizer), so they are low: cases that run record their
estimate too ('predicted_call_s'; the table shows measured / estimate) -- on
the tiny configs on CPU the measured calls took 0.6-2x the estimate. A case
that runs may take about twice the budget (warm-up and one timed call) or
more when its estimate is low, plus compilation.

On CPU, a train step whose state (5-6 x the f32 params) exceeds the host's
available memory is skipped too; --skip=config/model/case skips by hand.

Results merge, per config and model, into benchmarks/results/generators_<device>.json
(<device>: 'cpu' or the accelerator kind; '_bfloat16' appended for bf16).
"""

import os
import re
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import budget as budget_lib
from configs.gpt import imagenet256 as gpt_imagenet256
from configs.gpt import tiny_cpu as gpt_tiny_cpu
from configs.maskgit import imagenet256 as maskgit_imagenet256
from configs.maskgit import tiny_cpu as maskgit_tiny_cpu
from configs.vq_diffusion import imagenet256_class as vqd_imagenet256_class
from configs.vq_diffusion import tiny_class as vqd_tiny_class
from vqlab import generators
from vqlab import tokenizers
from vqlab.generators import gpt
from vqlab.generators import maskgit
from vqlab.generators import vq_diffusion
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState
from vqlab.train.tasks import generator as generator_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'paper'],
                             'Which configs: tiny, paper.')
_MODELS = flags.DEFINE_list('models', ['maskgit', 'gpt', 'vq_diffusion'],
                            'Which generators: maskgit, gpt, vq_diffusion.')
_DIFFUSION_STEPS = flags.DEFINE_list(
    'diffusion_steps', ['100', '25', '10'],
    'VQ-Diffusion reverse steps to time (100: the full chain).')
_BATCH = flags.DEFINE_integer(
    'batch', 0, 'Batch of the train step and of sampling (0: 32 tiny, 8 '
    "paper on CPU; the config's train batch on accelerators).")
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype of the models (params stay f32).')
_STEPS = flags.DEFINE_integer(
    'steps', 5, 'Timed calls per case at most '
    '(after one warm-up call).')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds_per_case', 120.0, 'Time budget of one case: a case whose '
    'warm call is predicted to take longer is skipped (with an estimate); '
    'the timed calls stop when the next would exceed it.')
_SKIP = flags.DEFINE_list(
    'skip', [], 'Cases not to run, as config/model/case, e.g. '
    'paper/gpt/train (reported as skipped, with the estimate).')
_SAMPLE_STEPS = flags.DEFINE_integer('maskgit_steps', 8,
                                     'MaskGIT decoding steps.')
_JSON = flags.DEFINE_string(
    'json', None, 'Merge the results into this JSON file (default: '
    "benchmarks/results/generators_<device>.json; '' writes none).")

CONFIGS = {
    'tiny': {
        'maskgit': maskgit_tiny_cpu.get_config,
        'gpt': gpt_tiny_cpu.get_config,
        'vq_diffusion': vqd_tiny_class.get_config
    },
    'paper': {
        'maskgit': maskgit_imagenet256.get_config,
        'gpt': gpt_imagenet256.get_config,
        'vq_diffusion': vqd_imagenet256_class.get_config
    },
}

# ------------------------------------------------------------- helpers ---


def _default_json() -> str:
  suffix = '' if _DTYPE.value == 'float32' else f'_{_DTYPE.value}'
  return os.path.join(ROOT, 'benchmarks', 'results',
                      f'generators_{budget_lib.device_name()}{suffix}.json')


def _batch_size(name: str, config) -> int:
  """--batch, or the default for the config size and the device."""
  if _BATCH.value:
    return _BATCH.value
  if budget_lib.on_cpu():
    return 32 if name == 'tiny' else 8
  return config.train.batch_size


def _compile(fn: Callable[..., Any], *args, **jit_kwargs):
  """(compiled fn, seconds to lower and compile)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _skip_reason(name: str, kind: str, case: str,
                 predicted_s: float) -> str | None:
  """Why a case is not run (None: run it)."""
  if f'{name}/{kind}/{case}' in _SKIP.value:
    return '--skip'
  if predicted_s > _MAX_SECONDS.value:
    return f'over --max_seconds_per_case={_MAX_SECONDS.value:g}'
  return None


def _random_tokens(model, rng: jax.Array, batch: int) -> jax.Array:
  """Token ids [B, *token shape(, F)] (GPT: [B, length])."""
  if isinstance(model, gpt.GPT):
    return jax.random.randint(rng, (batch, model.length), 0, model.vocab_size)
  shape = (batch, *model.token_shape)
  if getattr(model, 'factor_vocab_sizes', ()):
    rngs = jax.random.split(rng, len(model.factor_vocab_sizes))
    return jnp.stack([
        jax.random.randint(r, shape, 0, v)
        for r, v in zip(rngs, model.factor_vocab_sizes)
    ], axis=-1)
  return jax.random.randint(rng, shape, 0, model.vocab_size)


def _token_shape(model) -> tuple[int, ...]:
  """One example's token grid (GPT: its sequence)."""
  return (model.length,) if isinstance(model, gpt.GPT) else model.token_shape


def _bare_task(config, model) -> generator_task.GeneratorTask:
  """The generator task without a trained tokenizer run: the batches carry
  'tokens', so the stand-in tokenizer (its untrained module, no variables)
  is never applied."""
  tokenizer_config = tokenizers.default_config('vqgan')
  tokenizer_config.quantizer.codebook_size = config.model.vocab_size
  tokenizer = trained_tokenizer.TrainedTokenizer(
      model=tokenizers.build(tokenizer_config), variables={},
      config=tokenizer_config, workdir='', step=0)
  return generator_task.GeneratorTask(config, tokenizer=tokenizer,
                                      token_shape=_token_shape(model))


# --------------------------------------------------------------- cases ---


def forward_probe(model, params, tokens, labels, budget: float) -> dict:
  """One eval forward pass over all positions (logits of every token)."""
  if isinstance(model, vq_diffusion.VQDiffusion):
    times = jnp.full((tokens.shape[0],), model.num_timesteps // 2)
    apply = lambda p, t, cond: model.apply({'params': p}, t, times, cond)
  else:
    apply = lambda p, t, cond: model.apply({'params': p}, t, cond)
  fn, compile_s = _compile(apply, params, tokens, labels)
  result = budget_lib.measure(
      lambda: jax.block_until_ready(fn(params, tokens, labels)), _STEPS.value,
      budget)
  return {'compile_s': compile_s, **result}


def decode_step_probe(model: gpt.GPT, params, batch: int, labels,
                      budget: float) -> dict:
  """One cached GPT decode step (one position, cache of length N)."""
  decoder = model.clone(decode=True)
  variables = {'params': params}
  cache = gpt._init_cache(decoder, variables, batch, labels)  # pylint: disable=protected-access
  x = jnp.zeros((batch, 1, model.width), model.dtype)
  position = jnp.asarray(model.prefix_length, jnp.int32)
  fn, compile_s = _compile(
      lambda p, c, x, i: decoder.apply({
          'params': p,
          'cache': c
      }, x, i, method=gpt.GPT.decode_step, mutable=['cache']), params, cache, x,
      position)
  result = budget_lib.measure(
      lambda: jax.block_until_ready(fn(params, cache, x, position)),
      _STEPS.value, budget)
  return {'compile_s': compile_s, **result}


def train_case(config, model, params, batch_size: int, rng: jax.Array,
               budget: float) -> dict:
  """steps/s of the generator task's jitted train step (state donated)."""
  task = _bare_task(config, model)
  batch = {'tokens': _random_tokens(model, rng, batch_size)}
  if task.num_classes:
    batch['label'] = jax.random.randint(jax.random.fold_in(rng, 1),
                                        (batch_size,), 0, task.num_classes)
  ema = {'model': params} if config.ema.decay > 0 else {}
  loss_state = task.api.init_loss_state(model)
  state = jax.jit(lambda p: TrainState(
      step=jnp.zeros((), jnp.int32), params=
      {'model': p}, opt_state={'model': task.tx['model'].init(p)}, model_state={
      }, ema_params=jax.tree.map(jnp.copy, ema), loss_state=loss_state))(params)
  step_rng = jax.random.key(config.seed)

  def step(state, batch):
    return task.train_step(state, batch,
                           jax.random.fold_in(step_rng, state.step), {})

  fn, compile_s = _compile(step, state, batch, donate_argnums=(0,))
  holder = [state]

  def call():
    holder[0], metrics = fn(holder[0], batch)
    jax.block_until_ready((holder[0], metrics))

  result = budget_lib.measure(call, _STEPS.value, budget)
  holder.clear()
  return {'compile_s': compile_s, 'ema_decay': config.ema.decay, **result}


def sample_case(sample_fn, params, rng, labels, budget: float) -> dict:
  fn, compile_s = _compile(sample_fn, params, rng, labels)
  result = budget_lib.measure(
      lambda: jax.block_until_ready(fn(params, rng, labels)), _STEPS.value,
      budget)
  return {'compile_s': compile_s, **result}


def run_model(name: str, kind: str) -> dict:
  """All cases of one generator at one config size."""
  budget = _MAX_SECONDS.value
  config = CONFIGS[name][kind]()
  batch = _batch_size(name, config)
  model = generators.build(config.model, dtype=jnp.dtype(_DTYPE.value))
  rng = jax.random.key(0)
  tokens = _random_tokens(model, jax.random.fold_in(rng, 1), batch)
  api = generators.get_api(config.model.name)
  conditional = api.condition_spec(config.model).kind == 'class'
  if kind == 'vq_diffusion' and model.condition == 'text':
    raise app.UsageError('benchmark the class-conditional VQ-Diffusion')
  labels = (jax.random.randint(jax.random.fold_in(rng, 2), (batch,), 0,
                               model.num_classes) if conditional else None)
  init_tokens = tokens[:1]
  t0 = time.perf_counter()
  params = jax.jit(lambda r, t, c: api.init(model, r, t, c))(jax.random.fold_in(
      rng, 3), init_tokens, None if labels is None else labels[:1])
  params = jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  num_tokens = tokens[0].size if kind == 'gpt' else model.num_tokens
  entry = {
      'batch': batch,
      'params': int(sum(x.size for x in jax.tree.leaves(params))),
      'tokens_per_example': int(num_tokens),
      'vocab_size': model.vocab_size,
      'num_classes': model.num_classes if conditional else 0,
      'width': model.width,
      'num_layers': model.num_layers,
      'init_s': init_s,
  }
  budget_lib.progress(
      name, kind, f'{entry["params"] / 1e6:.1f}M params, init '
      f'{init_s:.1f} s')

  # Probes: what the budget's predictions rest on.
  entry['forward'] = forward_probe(model, params, tokens, labels, budget / 4)
  forward_s = entry['forward']['call_s']
  budget_lib.progress(name, kind, f'forward {forward_s:.3g} s/call')
  if kind == 'gpt':
    entry['decode_step'] = decode_step_probe(model, params, batch, labels,
                                             budget / 4)
    budget_lib.progress(
        name, kind,
        f'cached decode step {entry["decode_step"]["call_s"]:.3g} s')

  # Train. On CPU, a state that cannot fit in host memory is not tried:
  # params, AdamW's two moments, grads and updates (5 x the f32 params, + 1
  # with EMA), activations not counted.
  predicted = 3 * forward_s
  how = 'rough: 3 x one forward pass'
  reason = _skip_reason(name, kind, 'train', predicted)
  param_bytes = 4 * entry['params']
  train_bytes = param_bytes * (5 + (config.ema.decay > 0))
  available = budget_lib.available_host_bytes() if budget_lib.on_cpu() else None
  if reason is None and available is not None and train_bytes > available:
    reason = (f'host memory: the train state needs > '
              f'{train_bytes / 2**30:.1f} GiB, {available / 2**30:.1f} GiB '
              'available')
  if reason:
    entry['train'] = budget_lib.skipped(predicted, how, reason)
  else:
    entry['train'] = train_case(config, model, params, batch,
                                jax.random.fold_in(rng, 4), budget)
    entry['train']['predicted_call_s'] = predicted
  budget_lib.progress(name, kind, _describe('train', entry['train']))

  # Sampling.
  s = config.sample
  sample_rng = jax.random.fold_in(rng, 5)
  if kind == 'maskgit':
    steps = _SAMPLE_STEPS.value
    cases = {
        'sample': (lambda p, r, cond: maskgit.sample(
            model, p, r, batch, cond, num_steps=steps, temperature=s.
            temperature, choice_temperature=s.choice_temperature, guidance_scale
            =0.0, schedule_method=config.loss.mask_schedule), steps * forward_s,
                   f'{steps} x one forward pass')
    }
    entry['sample_settings'] = {
        'num_steps': steps,
        'guidance_scale': 0.0,
        'temperature': s.temperature,
        'choice_temperature': s.choice_temperature
    }
  elif kind == 'vq_diffusion':
    cases = {}
    for steps in _DIFFUSION_STEPS.value:
      steps = min(int(steps), model.num_timesteps)
      cases[f'sample_{steps}_steps'] = (
          (lambda n: lambda p, r, cond: vq_diffusion.sample(
              model, p, r, batch, cond, num_steps=n, truncation=s.truncation)
          )(steps), steps * forward_s, f'{steps} x one forward pass')
    entry['sample_settings'] = {
        'truncation': s.truncation,
        'guidance_scale': 'off (s = 1)'
    }
  else:
    n = model.prefix_length + model.length - 1
    cases = {}
    for use_cache in (True, False):
      fn = (lambda c: lambda p, r, cond: gpt.
            sample(model, p, r, batch, cond, temperature=s.temperature, top_k=s.
                   top_k, top_p=s.top_p, use_cache=c))(use_cache)
      if use_cache:
        cases['sample_cache'] = (fn, n * entry['decode_step']['call_s'],
                                 f'{n} x one cached decode step')
      else:
        cases['sample_no_cache'] = (fn, model.length * forward_s,
                                    f'{model.length} x one forward pass')
    entry['sample_settings'] = {
        'temperature': s.temperature,
        'top_k': s.top_k,
        'top_p': s.top_p
    }
  for case, (fn, predicted, how) in cases.items():
    reason = _skip_reason(name, kind, case, predicted)
    if reason:
      entry[case] = budget_lib.skipped(predicted, how, reason)
    else:
      entry[case] = sample_case(fn, params, sample_rng, labels, budget)
      entry[case]['predicted_call_s'] = predicted
    budget_lib.progress(name, kind, _describe(case, entry[case]))
  return entry


# -------------------------------------------------------------- output ---


def _describe(case: str, row: dict) -> str:
  if row.get('skipped'):
    return (f'{case}: skipped ({row["reason"]}), estimated '
            f'{row["estimated_call_s"]:.3g} s/call ({row["estimate"]})')
  return (f'{case}: {row["call_s"]:.3g} s/call (median of '
          f'{row["timed_calls"]}), compile {row["compile_s"]:.3g} s')


def _add_rates(entry: dict) -> None:
  """steps/s, images/s and tokens/s of every case (estimated_*: of an
  estimate)."""
  batch, tokens = entry['batch'], entry['tokens_per_example']
  for case, row in entry.items():
    if not isinstance(row, dict) or not ('call_s' in row or
                                         'estimated_call_s' in row):
      continue
    seconds = row.get('call_s', row.get('estimated_call_s'))
    prefix = 'estimated_' if row.get('skipped') else ''
    if case == 'train':
      row[prefix + 'steps_per_s'] = 1.0 / seconds
    elif case.startswith('sample'):
      row[prefix + 'images_per_s'] = batch / seconds
    positions = 1 if case == 'decode_step' else tokens
    row[prefix + 'tokens_per_s'] = batch * positions / seconds


def print_table(results: dict, names: list[str]) -> None:
  print('\nimages/s = generated token sequences/s (decoding them to pixels '
        "is the tokenizer's cost, not included); forward / decode_step are "
        'probes. est. = NOT measured: estimated from the probes.')
  header = (f'{"config":<6} {"model":<12} {"case":<16} {"batch":>5} '
            f'{"compile s":>9} {"s/call":>9} {"steps|img/s":>11} '
            f'{"tokens/s":>10}  note')
  print(header)
  print('-' * len(header))
  for name in names:
    for kind in ('maskgit', 'gpt', 'vq_diffusion'):
      entry = results.get(name, {}).get(kind)
      if not entry:
        continue
      batch = entry['batch']
      cases = [
          'forward', 'decode_step', 'train', 'sample', 'sample_cache',
          'sample_no_cache'
      ] + sorted((c for c in entry if re.fullmatch(r'sample_\d+_steps', c)),
                 key=lambda c: -int(c.split('_')[1]))
      for case in cases:
        row = entry.get(case)
        if row is None:
          continue
        rate = row.get('steps_per_s', row.get('images_per_s'))
        if row.get('skipped'):
          est = row['estimated_call_s']
          est_rate = row.get('estimated_steps_per_s',
                             row.get('estimated_images_per_s'))
          print(f'{name:<6} {kind:<12} {case:<16} {batch:>5} {"-":>9} '
                f'{"skipped":>9} {"-":>11} {"-":>10}  est. {est:.3g} s/call '
                f'= {est_rate:.3g} /s ({row["estimate"]}); skipped: '
                f'{row["reason"]}')
          continue
        rate_text = f'{rate:>11.3g}' if rate is not None else f'{"":>11}'
        tokens = row.get('tokens_per_s')
        tokens_text = f'{tokens:>10.0f}' if tokens is not None else \
            f'{"":>10}'
        note = f'median of {row["timed_calls"]}'
        if 'predicted_call_s' in row:
          note += (f'; {row["call_s"] / row["predicted_call_s"]:.2g} x the '
                   'estimate')
        if case == 'train' and row.get('ema_decay'):
          note += f', EMA {row["ema_decay"]}'
        print(f'{name:<6} {kind:<12} {case:<16} {batch:>5} '
              f'{row["compile_s"]:>9.3g} {row["call_s"]:>9.3g} {rate_text} '
              f'{tokens_text}  {note}')
  sys.stdout.flush()


def main(argv):
  del argv
  path = _default_json() if _JSON.value is None else _JSON.value
  results = budget_lib.load_results(path)
  for name in _CONFIGS.value:
    if name not in CONFIGS:
      raise app.UsageError(f'unknown config {name!r}; known: {list(CONFIGS)}')
    entry = results.get(name, {})
    for kind in _MODELS.value:
      entry[kind] = run_model(name, kind)
      entry[kind].update({
          'dtype': _DTYPE.value,
          'steps': _STEPS.value,
          'max_seconds_per_case': _MAX_SECONDS.value,
          'command': ' '.join(['python'] + sys.argv)
      })
      _add_rates(entry[kind])
      results[name] = entry
      if path:
        budget_lib.save_results(path, results)
  print_table(results, _CONFIGS.value)
  if path:
    print(f'\nwrote {path}')


if __name__ == '__main__':
  app.run(main)
