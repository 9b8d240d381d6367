"""Goldens for vqlab.weights.torch_files, made with real torch.

Run from the repository root, with the torch environment (which also needs
numpy and ml_dtypes, for vqlab's writer):

  /work/venv-torch/bin/python tests/goldens/make_torch_file_goldens.py

Writes
  tests/goldens/torch_zip_sample.pth: a zip-format file from torch.save with
    every dtype the reader supports, a transposed view, an offset slice, two
    tensors sharing one storage and a nested dict with non-tensor leaves;
  tests/goldens/torch_files.npz: what torch.load gives for that file
    ('zip/<name>') and for the packaged LPIPS head file ('lpips/<name>');
    bfloat16 tensors are stored as float32 (exact) and every array's torch
    dtype name is in 'zip_dtypes' / 'lpips_dtypes', aligned with 'zip_names'
    / 'lpips_names'.
  tests/goldens/lightning_sample.ckpt: a PyTorch-Lightning-style training
    checkpoint: 'state_dict' (tensors), 'optimizer_states' (tensors too),
    hyper-parameter objects (argparse.Namespace, pathlib.Path, a class of
    this script) and an object whose unpickling calls
    os.system(f'touch {EVIL_MARKER}'); its 'state_dict' as torch reads it is
    in torch_files.npz ('ckpt/<name>').
It also checks that torch.load(weights_only=True) reads a file written by
vqlab's save_state_dict back to the same tensors.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import pathlib
import sys
import tempfile

# Run as a script, only tests/goldens is on the path; add the repository root.
_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT))

from tests.goldens import torch_env  # pylint: disable=unused-import
import ml_dtypes
import numpy as np
import torch

from vqlab.weights import torch_files

_GOLDENS = _ROOT / 'tests' / 'goldens'
EVIL_MARKER = '/tmp/vqlab_lenient_ckpt_ran_code'


class _Callback:
  """Stands for a Lightning callback pickled into a checkpoint."""

  def __init__(self):
    self.best_score = torch.tensor(0.25)
    self.monitor = 'val/rec_loss'


class _RunsCode:
  """Unpickling this (with plain pickle or torch.load) runs a shell command."""

  def __reduce__(self):
    import os  # pylint: disable=import-outside-toplevel
    return os.system, (f'touch {EVIL_MARKER}',)


def _lightning_checkpoint() -> dict:
  """The object saved to lightning_sample.ckpt."""
  import argparse  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(1)
  state_dict = collections.OrderedDict(
      (name, torch.randn(*shape, generator=g))
      for name, shape in (('encoder.conv_in.weight',
                           (4, 3, 3, 3)), ('encoder.conv_in.bias', (4,)),
                          ('quantize.embedding.weight', (8, 4))))
  return {
      'epoch': 2,
      'global_step': 1000,
      'pytorch-lightning_version': '1.0.8',
      'state_dict': state_dict,
      'optimizer_states': [{
          'state': {
              0: {
                  'exp_avg': torch.ones(4, 3, 3, 3)
              }
          },
          'param_groups': [{
              'lr': 4.5e-6
          }]
      }],
      'lr_schedulers': [],
      'callbacks': {
          _Callback: _Callback()
      },
      'hyper_parameters': {
          'args': argparse.Namespace(base='x.yaml'),
          'logdir': pathlib.PosixPath('/logs/run')
      },
      'evil': _RunsCode(),
  }


_LPIPS = _ROOT / 'vqlab' / 'convert' / 'data' / 'lpips_vgg_v0.1.pth'


def _sample() -> dict:
  """The object saved to torch_zip_sample.pth."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  big = torch.arange(30, dtype=torch.float32).reshape(5, 6)
  return collections.OrderedDict(
      f32=torch.randn(3, 4, generator=g),
      f16=torch.randn(5, generator=g).half(),
      bf16=torch.randn(2, 3, generator=g).bfloat16(),
      f64=torch.randn(2, 2, generator=g).double(),
      i64=torch.arange(-3, 4),
      i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
      i16=torch.tensor([-7, 300], dtype=torch.int16),
      i8=torch.tensor([-128, 127], dtype=torch.int8),
      u8=torch.tensor([0, 255], dtype=torch.uint8),
      flags=torch.rand(7, generator=g) > 0.5,
      scalar=torch.tensor(2.5),
      empty=torch.zeros(0, 3),
      param=torch.nn.Parameter(torch.randn(3, generator=g)),
      # Two tensors on one storage, the second a transposed view.
      base=base,
      base_t=base.t(),
      # A slice with a storage offset and a row stride of 6.
      window=big[1:4, 2:5],
      nested={
          'model': {
              'layer.weight': torch.randn(2, 2, generator=g),
              'step': 7,
              'name': 'not a tensor'
          }
      },
      epoch=3)


def _expected(tensors: dict, prefix: str) -> dict[str, np.ndarray]:
  """npz entries for a flat {name: tensor} dict."""
  out = {}
  for name, tensor in tensors.items():
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()
    out[f'{prefix}/{name}'] = tensor.numpy().copy()
  out[f'{prefix}_names'] = np.array(list(tensors))
  out[f'{prefix}_dtypes'] = np.array(
      [str(t.dtype).removeprefix('torch.') for t in tensors.values()])
  return out


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, torch.Tensor):
      out[prefix + key] = value
    elif isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
  return out


def _check_writer() -> None:
  """torch reads back exactly what vqlab's save_state_dict wrote."""
  rng = np.random.default_rng(0)
  arrays = {
      'f32': rng.standard_normal((3, 4)).astype(np.float32),
      'f16': rng.standard_normal(5).astype(np.float16),
      'bf16': rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
      'f64': rng.standard_normal(2),
      'c64': (rng.standard_normal(2) + 1j).astype(np.complex64),
      'i64': np.arange(-3, 4),
      'i32': np.arange(6, dtype=np.int32).reshape(2, 3),
      'i16': np.array([-7, 300], np.int16),
      'i8': np.array([-128, 127], np.int8),
      'u8': np.array([0, 255], np.uint8),
      'flags': rng.random(7) > 0.5,
      'scalar': np.array(2.5, np.float32),
      'empty': np.zeros((0, 3), np.float32),
      'transposed': np.arange(12, dtype=np.float32).reshape(3, 4).T,
      'big.endian': np.arange(3, dtype='>i4'),
  }
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'vqlab.pth'
    torch_files.save_state_dict(path, arrays)
    for mmap in (False, True):
      loaded = torch.load(path, weights_only=True, mmap=mmap)
      assert list(loaded) == list(arrays), (list(loaded), list(arrays))
      for name, array in arrays.items():
        tensor = loaded[name]
        if array.dtype == ml_dtypes.bfloat16:
          assert tensor.dtype == torch.bfloat16, name
          tensor, array = tensor.float(), array.astype(np.float32)
        got = tensor.numpy()
        assert got.dtype == array.dtype.newbyteorder('='), (name, got.dtype)
        assert got.shape == array.shape, (name, got.shape)
        np.testing.assert_array_equal(got, array, err_msg=name)
  print('OK: torch.load(weights_only=True) reads save_state_dict files back')


def main() -> None:
  sample_path = _GOLDENS / 'torch_zip_sample.pth'
  torch.save(_sample(), sample_path)
  # The expected values are what torch itself reads back from both files.
  sample = torch.load(sample_path, weights_only=True)
  lpips = torch.load(_LPIPS, weights_only=True, map_location='cpu')
  expected = _expected(_flatten(sample), 'zip')
  expected.update(_expected(_flatten(lpips), 'lpips'))
  checkpoint = _lightning_checkpoint()
  torch.save(checkpoint, _GOLDENS / 'lightning_sample.ckpt')
  expected.update(_expected(checkpoint['state_dict'], 'ckpt'))
  np.savez(_GOLDENS / 'torch_files.npz', **expected)
  for path in (sample_path, _GOLDENS / 'lightning_sample.ckpt',
               _GOLDENS / 'torch_files.npz'):
    print(f'wrote {path.relative_to(_ROOT)} ({path.stat().st_size} bytes)')
  _check_writer()


if __name__ == '__main__':
  main()
