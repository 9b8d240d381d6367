"""The Colab notebooks (colab/*.ipynb) run top to bottom, headless.

Each notebook runs in a fresh Jupyter kernel of this Python (nbclient), with
its `parameters` cell followed by an injected cell of tiny settings (as
papermill does), in one temporary working directory. tokenize_and_reconstruct
trains the small tokenizer that sample_generator then reuses, as in one Colab
runtime; beside them, in a second kernel at a time, train_on_your_images runs
and then tokenize_and_reconstruct on a checkpoint converted with
`python -m vqlab.convert`. A cell error fails the test; so do missing pictures
or losses. About a minute on 2 CPU cores.
"""

import asyncio
import glob
import json
import math
import os
import pathlib
import sys

from nbclient import NotebookClient
import nbformat
import numpy as np
from PIL import Image
import pytest

from tests import paths

ROOT = paths.ROOT
COLAB = os.path.join(ROOT, 'colab')
NOTEBOOKS = ('tokenize_and_reconstruct.ipynb', 'sample_generator.ipynb',
             'train_on_your_images.ipynb')
KERNEL = 'vqlab-test-python'
CELL_TIMEOUT_S = 300

# tests/tiny.py's tokenizer (16x16 images -> 8x8 tokens of 32 codes), cut
# further for compile time, as overrides of configs/quickstart.py.
TINY_MODEL = {
    'model.channels': 8,
    'model.num_res_blocks': 0,
    'model.mid_attention': False,
    'model.channel_multipliers': (1, 2),
    'model.z_channels': 8,
    'model.num_groups': 4,
    'model.quantizer.codebook_size': 32,
    'model.quantizer.embedding_dim': 4,
    'discriminator.base_features': 8,
    'discriminator.num_layers': 1,
    'loss.adaptive_weight': False,  # One gradient fewer to compile.
    'eval.max_batches': 1,
}
TINY_TOKENIZER = {
    **TINY_MODEL, 'data.image_size': 16,
    'data.train_image_size': 0,
    'eval.num_images': 4
}

TINY = {
    'tokenize_and_reconstruct.ipynb': {
        'train_steps': 2,
        'batch_size': 8,
        'config_overrides': TINY_TOKENIZER,
        'builtin_photos': ('chelsea', 'coffee'),
        'image_size': 16,
    },
    'sample_generator.ipynb': {
        'tokenizer_steps': 2,
        'tokenizer_batch_size': 8,
        'tokenizer_overrides': TINY_TOKENIZER,
        'image_size': 16,
        'num_train_examples': 16,
        'generator_steps': 2,
        'batch_size': 8,
        'generator_overrides': {
            'model.width': 32,
            'model.num_layers': 1,
            'model.num_heads': 2,
            'model.mlp_dim': 64,
            'eval.max_batches': 1,
            'eval.num_images': 4
        },
        'num_samples': 4,
        'num_decoding_steps': 2,
    },
    'train_on_your_images.ipynb': {
        'image_size': 16,
        'train_steps': 4,
        'batch_size': 8,
        'log_every': 1,
        'plot_every': 2,
        'config_overrides': TINY_MODEL,
    },
}


def _read(name):
  return nbformat.read(os.path.join(COLAB, name), as_version=4)


def _with_parameters(notebook, values):
  """Inserts `name = value` lines after the cell tagged `parameters`."""
  index, = [
      i for i, cell in enumerate(notebook.cells)
      if 'parameters' in cell.metadata.get('tags', [])
  ]
  source = notebook.cells[index].source
  for name in values:  # A misspelt knob would be silently ignored.
    assert f'\n{name} = ' in '\n' + source, f'no parameter {name!r}'
  lines = ['# Injected by tests/colab/test_notebooks.py: tiny settings.']
  lines += [f'{name} = {value!r}' for name, value in values.items()]
  injected = nbformat.v4.new_code_cell('\n'.join(lines))
  injected.metadata['tags'] = ['injected-parameters']
  notebook.cells.insert(index + 1, injected)
  return notebook


CONVERTED = 'tokenize_and_reconstruct.ipynb with converted_dir'


async def _convert(out_dir):
  """A published-format checkpoint (tests/goldens' tiny Open-MAGVIT2: f = 2,
  2^18 codes as 2^6 x 2^12 factors, pooled adaptive norm) through `python -m
  vqlab.convert`, as a user would convert one."""
  process = await asyncio.create_subprocess_exec(
      sys.executable, '-m', 'vqlab.convert', 'open_magvit2',
      os.path.join(ROOT, 'tests', 'goldens',
                   'open_magvit2_tiny.ckpt'), out_dir, cwd=ROOT,
      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
  output, _ = await process.communicate()
  assert process.returncode == 0, output.decode()


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
  """{run: (executed notebook, its working directory)}."""
  home = tmp_path_factory.mktemp('notebooks')
  spec_dir = home / 'jupyter' / 'kernels' / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(
      json.dumps({
          'argv': [
              sys.executable, '-m', 'ipykernel_launcher', '-f',
              '{connection_file}'
          ],
          'display_name': 'vqlab test',
          'language': 'python'
      }))
  cwd = home / 'work'
  cwd.mkdir()
  env = {
      'JUPYTER_PATH':
          str(home / 'jupyter'),
      'PYTHONPATH':
          os.pathsep.join([ROOT] +
                          [p for p in [os.environ.get('PYTHONPATH')] if p]),
      'JAX_PLATFORMS':
          'cpu',
      # One device, as on a Colab CPU runtime (not conftest's 8), and cheap
      # compiles. The notebooks share a compilation cache, as a user's
      # reruns in one runtime share jax's in-memory one.
      'XLA_FLAGS': ('--xla_backend_optimization_level=0'
                    ' --xla_llvm_disable_expensive_passes=true'
                    ' --xla_cpu_use_fusion_emitters=false'),
      'JAX_COMPILATION_CACHE_DIR':
          str(home / 'jax_cache'),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS':
          '0',
      'JAX_THREEFRY_PARTITIONABLE':
          'false',
      'TF_CPP_MIN_LOG_LEVEL':
          '3',
      'MPLBACKEND':
          'module://matplotlib_inline.backend_inline',
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  results = {}
  converted_dir = str(home / 'converted')

  async def run(run_name, name, values):
    notebook = _with_parameters(_read(name), values)
    await NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                         resources={
                             'metadata': {
                                 'path': str(cwd)
                             }
                         }).async_execute()
    results[run_name] = notebook, cwd

  async def trained_tokenizer_then_generator():
    for name in NOTEBOOKS[:2]:
      await run(name, name, TINY[name])

  async def your_images_then_converted():
    await run(NOTEBOOKS[2], NOTEBOOKS[2], TINY[NOTEBOOKS[2]])
    await _convert(converted_dir)
    await run(
        CONVERTED, NOTEBOOKS[0], {
            'converted_dir': converted_dir,
            'image_size': 16,
            'builtin_photos': ('chelsea',),
            'output_png': 'converted.png'
        })

  async def run_all():
    # XLA compiles on one core: two kernels at once use both.
    await asyncio.gather(trained_tokenizer_then_generator(),
                         your_images_then_converted())

  try:
    asyncio.run(run_all())
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return results


def _pngs(cell):
  return [
      o for o in cell.get('outputs', []) if 'image/png' in o.get('data', {})
  ]


def _cell(notebook, text):
  """The code cell whose source contains `text`."""
  cell, = [
      c for c in notebook.cells if c.cell_type == 'code' and text in c.source
  ]
  return cell


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_is_stripped_and_parameterized(name):
  notebook = _read(name)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert 'pip' in code[0].source and 'find_spec' in code[0].source
  assert 'parameters' in code[1].metadata.get('tags', [])
  for cell in code:
    assert not cell.outputs and cell.execution_count is None, cell.source[:80]


def test_every_cell_runs(executed):
  assert sorted(executed) == sorted(NOTEBOOKS + (CONVERTED,))
  for name, (notebook, _) in executed.items():
    for cell in notebook.cells:
      if cell.cell_type == 'code':
        assert cell.execution_count is not None, (name, cell.source[:80])
        errors = [o for o in cell.outputs if o.output_type == 'error']
        assert not errors, (name, errors)


def test_reconstruction_grid_is_shown_and_saved(executed):
  notebook, cwd = executed['tokenize_and_reconstruct.ipynb']
  assert _pngs(_cell(notebook, 'writers.image_grid([x, x_rec])'))
  assert _pngs(_cell(notebook, 'plt.subplots'))  # Token maps.
  grid = np.asarray(Image.open(cwd / 'reconstruction.png'))
  # 2 rows (images, reconstructions) of 2 16x16 images, 2 px padding.
  assert grid.shape == (38, 38, 3) and grid.std() > 0


def test_a_converted_checkpoint_reconstructs(executed):
  notebook, cwd = executed[CONVERTED]
  printed = ''.join(
      o.get('text', '')
      for o in _cell(notebook, 'trained_tokenizer.load(').outputs)
  # It loaded the conversion (step 0) and trained nothing.
  assert f'from {cwd.parent / "converted"} (step 0)' in printed, printed
  assert 'PSNR' not in printed
  # 8x8 tokens of 2^18 codes, each given as two factors.
  printed = ''.join(
      o.get('text', '') for o in _cell(notebook, 'tok.whole_codes').outputs)
  assert 'tokens (1, 8, 8, 2) int32' in printed, printed
  assert 'of 262144, 64 per image (12 input values per token)' in printed
  assert _pngs(_cell(notebook, 'writers.image_grid([x, x_rec])'))
  grid = np.asarray(Image.open(cwd / 'converted.png'))
  assert grid.shape == (38, 20, 3) and grid.std() > 0  # 1 image, 2 rows.


def test_generator_samples_are_shown(executed):
  notebook, cwd = executed['sample_generator.ipynb']
  grids = glob.glob(str(cwd / 'workdirs/colab_generator/samples/step_2/*.png'))
  assert len(grids) == 1
  assert np.asarray(Image.open(grids[0])).shape == (38, 38, 3)  # 2 x 2.
  assert _pngs(_cell(notebook, 'sampling.sample(config, run_dir)'))
  # It trained on the tokenizer that tokenize_and_reconstruct left behind.
  with open(cwd / 'workdirs/colab_generator/tokens/metadata.json') as f:
    tokenizer = json.load(f)['tokenizer']
  assert tokenizer['workdir'] == str(cwd / 'workdirs/colab_tokenizer')
  assert tokenizer['step'] == 2


def test_training_records_finite_losses_and_plots_them(executed):
  notebook, cwd = executed['train_on_your_images.ipynb']
  # The run of these images: a folder of `workdir` named after them.
  run, = glob.glob(str(cwd / 'workdirs/colab_your_images/*'))
  workdir = pathlib.Path(run)
  with open(workdir / 'metrics.jsonl') as f:
    records = [r for r in map(json.loads, f) if 'loss' in r]  # Not eval's.
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert all(math.isfinite(r['loss']) for r in records)
  train_cell = _cell(notebook, 'step_callback=redraw')
  assert _pngs(train_cell)  # The last redraw (clear_output keeps only it).
  assert 'PSNR' in ''.join(o.get('text', '') for o in train_cell.outputs)
  with open(workdir / 'final_metrics.json') as f:
    assert math.isfinite(json.load(f)['psnr'])
  # The image_folder layout it trained on: 16 built-in photos, 3 held out
  # and shown above their reconstructions.
  assert len(glob.glob(str(cwd / 'your_images/train/images/*'))) == 13
  assert len(glob.glob(str(cwd / 'your_images/val/images/*'))) == 3
  assert _pngs(_cell(notebook, "'eval_reconstructions_*.png'"))
  grid, = glob.glob(str(workdir / 'images/eval_reconstructions_*.png'))
  assert np.asarray(Image.open(grid)).shape == (38, 56, 3)  # 2 rows of 3.
