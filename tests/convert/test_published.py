"""The converters' shared pieces: StateDict, check_params_match, write_run."""

import functools
import json
import os
import shlex
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from tests import compile_options
from tests import paths
from tests import tiny
from vqlab import tokenizers
from vqlab.convert import __main__ as convert_main
from vqlab.convert import maskgit_transformer
from vqlab.convert import published
from vqlab.errors import ConfigError
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.train import checkpoint
from vqlab.train import run_record
from vqlab.train import sampling
from vqlab.train import state as train_state
from vqlab.train import trained_tokenizer


def test_state_dict_converts_torch_layouts_and_tracks_use():
  rng = np.random.default_rng(0)
  conv = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)  # [O, I, kh, kw]
  linear = rng.standard_normal((6, 7)).astype(np.float32)  # [O, I]
  state = published.StateDict(
      {
          'c.weight': conv,
          'c.bias': np.arange(5.0),
          'l.weight': linear.astype(jnp.bfloat16),  # As many releases are.
          'l.bias': np.zeros(6),
          'n.weight': np.ones(3),
          'n.bias': np.zeros(3),
          'extra.step': np.array(3)
      },
      'test.pth')
  out = state.conv('c')
  x = rng.standard_normal((1, 4, 6, 3)).astype(np.float32)
  flax_out = jax.lax.conv_general_dilated(
      x, out['kernel'], (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # The same correlation written out with the torch layout.
  torch_out = np.einsum('bhwi,oihw->bo', x[:, :2, :4], conv)
  np.testing.assert_allclose(flax_out[:, 0, 0], torch_out, rtol=1e-5)
  assert out['bias'].dtype == np.float32
  kernel = state.linear('l')['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel,
      linear.T.astype(jnp.bfloat16).astype(np.float32))
  assert set(state.norm('n')) == {'scale', 'bias'}
  assert state.unused() == ['extra.step']
  with pytest.raises(WeightsError, match='1 tensors were not converted'):
    state.check_all_used()
  state.check_all_used(ignore_prefixes=('extra.',))
  with pytest.raises(WeightsError, match="test.pth: missing tensor 'd.weight'"):
    state.conv('d')
  with pytest.raises(WeightsError, match='not that of a linear'):
    published.StateDict({'c.weight': conv, 'c.bias': 0}, 'f').linear('c')


def test_check_params_match_names_every_problem():
  expected = {
      'a': {
          'kernel': jax.ShapeDtypeStruct((3, 4), jnp.float32)
      },
      'b': jax.ShapeDtypeStruct((2,), jnp.float32)
  }
  published.check_params_match(
      {
          'a': {
              'kernel': np.zeros((3, 4))
          },
          'b': np.zeros(2)
      }, expected, 'f')
  with pytest.raises(WeightsError) as info:
    published.check_params_match(
        {
            'a': {
                'kernel': np.zeros((4, 3))
            },
            'c': np.zeros(2)
        }, expected, 'f')
  message = str(info.value)
  assert 'not filled: b' in message and 'lacks: c' in message
  assert 'a/kernel (4, 3) != (3, 4)' in message


_GOLDENS = paths.GOLDENS
_ROOT = _GOLDENS.parents[1]


def _run(*args):
  result = subprocess.run([sys.executable, *args], cwd=_ROOT, text=True,
                          capture_output=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def test_cli_writes_a_run_that_main_evaluates_and_generators_load(
    tmp_path, capsys, monkeypatch):
  """Also: the converted run's config.py takes overrides of tuple keys."""
  out = str(tmp_path / 'maskgit')
  # In this process (`python -m vqlab.convert` itself runs in
  # tests/colab/test_notebooks.py); main.py below is a true command line.
  assert convert_main.main([
      'maskgit_vqgan',
      str(_GOLDENS / 'maskgit_tiny.msgpack'), out, '--num_groups=4',
      '--image_size=16'
  ]) == 0
  printed = capsys.readouterr().out
  assert f'--config={out}/config.py --workdir={out} --mode=eval' in printed

  # What a generator run loads: the converted weights give the reference
  # tokens of tests/goldens/make_maskgit_goldens.py. Loaded as a generator
  # run's build loads it, and once for the test, the generator run's
  # conversion and its sampling (a restore is about 2 s of CPU): no
  # checkpoint of the run is written after its conversion.
  monkeypatch.setattr(trained_tokenizer, 'load',
                      functools.cache(trained_tokenizer.load))
  loaded = trained_tokenizer.load(out, -1, step_key='tokenizer.step')
  assert loaded.step == 0
  with np.load(_GOLDENS / 'maskgit_goldens.npz') as golden:
    tokens = compile_options.encode(loaded, golden['images'])
    np.testing.assert_array_equal(tokens, golden['tokens'])

  # config.json stores tuples as lists, and config_flags overrides only
  # tuples: fine-tuning a converted run from the command line needs them.
  argv = [
      'main.py', f'--config={out}/config.py', "--config.freeze=('encoder',)",
      "--config.data.eval_photos=('coffee',)"
  ]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.freeze == ('encoder',)
  assert config.data.eval_photos == ('coffee',)
  with open(os.path.join(out, 'config.json')) as f:
    multipliers = json.load(f)['model']['channel_multipliers']
  assert isinstance(multipliers, list) and len(multipliers) > 1
  assert config.model.channel_multipliers == tuple(multipliers)

  printed = _run('main.py', f'--config={out}/config.py', f'--workdir={out}',
                 '--mode=eval', '--config.eval.max_batches=1')
  assert 'vqlab: step=0, psnr=' in printed
  # One batch of the eval split: not the run's own eval of its step.
  with open(os.path.join(out, 'eval_0_changed.json')) as f:
    assert json.load(f)['config_changes'] == {'eval.max_batches': [-1, 1]}

  with pytest.raises(SystemExit, match='already holds checkpoints'):
    convert_main.main(
        ['maskgit_vqgan',
         str(_GOLDENS / 'maskgit_tiny.msgpack'), out])

  # The MaskGIT transformer over that tokenizer: a generator run at step 0
  # that holds the converted params and samples.
  transformer = str(_GOLDENS / 'maskgit_transformer_tiny.msgpack')
  run = str(tmp_path / 'maskgit_transformer')
  convert_main.main([
      'maskgit_transformer', transformer, run, f'--tokenizer={out}',
      '--scan_layers=false'
  ])
  assert f'--workdir={run} --mode=sample' in capsys.readouterr().out
  saved, step = checkpoint.restore_on_host(run)
  converted = maskgit_transformer.convert_file(transformer, tokenizer=out,
                                               scan_layers=False)
  assert step == 0
  jax.tree.map(np.testing.assert_array_equal, saved['params']['model'],
               converted.params)
  config = trained_tokenizer.read_run_config(run)
  config.sample.num_samples = config.sample.batch_size = 2
  assert sampling.sample(config, run,
                         devices=jax.local_devices()[:1])['num_samples'] == 2


def test_init_with_params_sets_one_network_and_its_ema():
  """The state task.init draws, with `params` (in the expected dtypes) as
  params[key] and, where the task keeps an EMA, ema_params[key]."""

  class Task:

    def __init__(self, keeps_ema):
      self.keeps_ema = keeps_ema

    def init(self, rng, batch):
      del batch
      a, b = jax.random.split(rng)
      params = {
          'g': {
              'w': jax.random.normal(a, (3,))
          },
          'd': jax.random.normal(b, (2,))
      }
      return train_state.TrainState(
          step=jnp.zeros((), jnp.int32), params=params,
          opt_state={'d': params['d'] * 2}, model_state={},
          ema_params={'g': params['g']} if self.keeps_ema else {})

  rng = jax.random.key(0)
  for keeps_ema in (True, False):
    task = Task(keeps_ema)
    expected = jax.eval_shape(task.init, rng, None).params['g']
    state = published.init_with_params(task, rng, None, 'g',
                                       {'w': np.arange(3.0)}, expected)
    fresh = task.init(rng, None)
    for tree in [state.params] + [state.ema_params] * keeps_ema:
      assert tree['g']['w'].dtype == jnp.float32
      np.testing.assert_array_equal(tree['g']['w'], [0, 1, 2])
    assert bool(state.ema_params) == keeps_ema
    np.testing.assert_array_equal(state.params['d'], fresh.params['d'])
    np.testing.assert_array_equal(state.opt_state['d'], fresh.opt_state['d'])


def _tiny_tokenizer_params():
  """(model config, zero params) of tests/tiny.py's tokenizer."""
  model_config = tiny.tokenizer_config().model
  model = tokenizers.build(model_config)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 16, 16, 3)))['params']
  return model_config, jax.tree.map(lambda p: np.zeros(p.shape, p.dtype),
                                    params)


def test_write_run_refuses_params_that_do_not_fit(tmp_path):
  model_config, params = _tiny_tokenizer_params()
  del params['to_pixels']
  bad = published.Converted(model_config, params, 16, 'bad file')
  with pytest.raises(WeightsError, match='bad file: .*not filled: to_pixels'):
    published.write_run(str(tmp_path / 'bad'), bad)
  # Another run's config.json: the train loop's remedy was named
  # (--allow_config_change, which the converter does not take).
  good = published.Converted(*_tiny_tokenizer_params(), 16, 'good file')
  other = published.run_config(good)
  other.seed += 1
  os.makedirs(tmp_path / 'other')
  run_record.write(str(tmp_path / 'other'), other)
  with pytest.raises(
      ConfigError, match=r'^out_dir: .* holds the config.json of another run '
      r'\(seed differs\): convert into a new directory$'):
    published.write_run(str(tmp_path / 'other'), good)


def test_a_run_that_switched_its_stacking_layout_still_loads(tmp_path):
  # Step 0 written unrolled, then the run's record says scan_blocks (as after
  # a resume that switched it): the tokenizer loads in the record's layout.
  model_config = tokenizers.default_config('magvit2')
  model_config.channels, model_config.num_groups = 4, 2
  model_config.num_res_blocks = 2
  model_config.channel_multipliers = (1,)  # One level: f = 1, no time axis.
  model_config.num_temporal_downsamples = 0
  model_config.quantizer.codebook_size = 2**6
  model_config.quantizer.factor_bits = (3, 3)
  # As Open-MAGVIT2 conversions: it needs latents of 2x2 or more.
  model_config.adaptive_norm = 'pooled'
  model = tokenizers.build(model_config)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  params = jax.tree.map(
      lambda p: rng.standard_normal(p.shape).astype(p.dtype),
      jax.eval_shape(model.init, jax.random.key(0), images)['params'])
  out = str(tmp_path / 'run')
  published.write_run(out, published.Converted(model_config, params, 4,
                                               'a test'))
  with open(os.path.join(out, 'config.json')) as f:
    record = json.load(f)
  record['model']['scan_blocks'] = True
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(record, f)
  loaded = trained_tokenizer.load(out)
  scanned = jax.eval_shape(loaded.model.init, jax.random.key(0),
                           images)['params']
  assert 'ResBlock3D_0_to_1' in scanned['encoder']
  jax.tree.map(np.testing.assert_array_equal, loaded.variables['params'],
               stack.stack_like(params, scanned))
  # Its factorized codes, and each as one code of 2^6 (factor 0 low bits).
  tokens = np.asarray(compile_options.encode(loaded, images))
  assert tokens.shape == (2, 4, 4, 2) and loaded.factor_vocab_sizes == (8, 8)
  np.testing.assert_array_equal(loaded.whole_codes(tokens),
                                tokens[..., 0] + 8 * tokens[..., 1])


def test_the_next_command_quotes_a_run_dir_with_spaces():
  """It is printed and written into config.py: it split at the space."""
  assert shlex.split(published.next_command('/tmp/my runs/vq', 'eval')) == [
      'python', 'main.py', '--config=/tmp/my runs/vq/config.py',
      '--workdir=/tmp/my runs/vq', '--mode=eval'
  ]
  words = shlex.split(published.next_command('gs://b/my runs/vq', 'eval'))
  assert words[words.index('python'):] == [
      'python', 'main.py', '--config=vq_config/config.py',
      '--workdir=gs://b/my runs/vq', '--mode=eval'
  ]


def test_a_killed_conversions_temporary_save_is_no_checkpoint(tmp_path):
  """What a conversion killed in its save leaves blocked its rerun."""
  (tmp_path / 'checkpoints' / '0.orbax-checkpoint-tmp-1765150000' /
   'default').mkdir(parents=True)
  published.check_new_run_dir(str(tmp_path))
  (tmp_path / 'checkpoints' / '0').mkdir()
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    published.check_new_run_dir(str(tmp_path))
