"""Writes tests/goldens/inception.npz from pytorch-fid (run under the torch
venv, from the repo root):

  /work/venv-torch/bin/python tests/goldens/make_inception_goldens.py

pytorch-fid's InceptionV3([3], resize_input=True, normalize_input=True) is
built without downloading: its weight loader is replaced by one returning
seeded random weights (tests/goldens/seeded_weights.py) for the names and
shapes of the model being built, which the test redraws. Saved:
  inputs_small [3, 64, 64, 3], inputs_large [2, 320, 320, 3]: uint8 images
    (the model sees u8 / 255 in [0, 1]; ours 2 * that - 1);
  pool_small / pool_large [B, 2048], logits_small / logits_large [B, 1008]
    (pool @ fc.weight.T, no bias);
  resize_small_rows / _cols, resize_large_rows / _cols: torch's bilinear
    resize to 299x299 of the first image (u8 / 255, NHWC) at rows / columns
    RESIZE_LINES; with all columns / rows kept, they pin down every
    interpolation weight of both axes;
  fd_{a,b,c}_{mu,sigma}, fd_ab, fd_ac, fd_bc: three D = 64 statistics sets
    (c nearly singular) and pytorch-fid's calculate_frechet_distance;
  seed, weight_names / weight_shapes (seeded_weights.pack_shapes).
"""

import os
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import numpy as np  # pylint: disable=g-bad-import-order
from pytorch_fid import fid_score
from pytorch_fid import inception as fid_inception
import torch
import torch.nn.functional as F
import torchvision

from tests.goldens import seeded_weights

SEED = 0
RESIZE_LINES = [0, 1, 150, 297, 298]
OUTPUT = os.path.join(ROOT, 'tests', 'goldens', 'inception.npz')


def build_reference():
  """pytorch-fid's InceptionV3 with seeded weights, and its Inception3."""
  built = []
  make_inception3 = torchvision.models.inception_v3

  def capture(*args, **kwargs):
    built.append(make_inception3(*args, **kwargs))
    return built[-1]

  def seeded_state_dict(url, **kwargs):
    del url, kwargs
    state = built[-1].state_dict()  # The FID blocks are already swapped in.
    drawn = seeded_weights.draw_state_dict(
        list(state), [tuple(t.shape) for t in state.values()], SEED)
    return {name: torch.from_numpy(value) for name, value in drawn.items()}

  torchvision.models.inception_v3 = capture
  fid_inception.load_state_dict_from_url = seeded_state_dict
  model = fid_inception.InceptionV3([3], resize_input=True,
                                    normalize_input=True).eval()
  return model, built[-1].eval()


def run_model(model, inception3, images_u8):
  x = torch.from_numpy(images_u8.astype(np.float32) / 255.0)
  with torch.no_grad():
    pool = model(x.permute(0, 3, 1, 2))[0][:, :, 0, 0]
    logits = pool @ inception3.fc.weight.T
  return pool.numpy(), logits.numpy()


def resized_lines(images_u8):
  x = torch.from_numpy(images_u8[:1].astype(np.float32) / 255.0)
  out = F.interpolate(x.permute(0, 3, 1, 2), size=(299, 299), mode='bilinear',
                      align_corners=False).permute(0, 2, 3, 1).numpy()[0]
  return out[RESIZE_LINES], out[:, RESIZE_LINES]


def statistics(features):
  return features.mean(0), np.cov(features, rowvar=False)


def frechet_sets(rng, dim=64):
  """Three statistics sets; c's covariance has rank 8 plus 1e-6 noise."""
  mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
  a = rng.standard_normal((500, dim)) @ mix
  b = 0.3 + 1.2 * rng.standard_normal((400, dim)) @ (mix + 0.1)
  low_rank = rng.standard_normal((8, dim))
  c = (rng.standard_normal(
      (300, 8)) @ low_rank + 0.5 + 1e-6 * rng.standard_normal((300, dim)))
  return {'a': statistics(a), 'b': statistics(b), 'c': statistics(c)}


def main():
  torch.manual_seed(SEED)
  torch.set_num_threads(2)
  rng = np.random.default_rng(SEED)
  small = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  large = rng.integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
  model, inception3 = build_reference()
  out = {
      'seed': np.int64(SEED),
      'inputs_small': small,
      'inputs_large': large,
      'resize_lines': np.array(RESIZE_LINES)
  }
  for name, images in (('small', small), ('large', large)):
    out[f'pool_{name}'], out[f'logits_{name}'] = run_model(
        model, inception3, images)
    out[f'resize_{name}_rows'], out[f'resize_{name}_cols'] = resized_lines(
        images)
  sets = frechet_sets(rng)
  for name, (mu, sigma) in sets.items():
    out[f'fd_{name}_mu'], out[f'fd_{name}_sigma'] = mu, sigma
  for pair in ('ab', 'ac', 'bc'):
    out[f'fd_{pair}'] = np.float64(
        fid_score.calculate_frechet_distance(*sets[pair[0]], *sets[pair[1]]))
  out.update(seeded_weights.pack_shapes(inception3.state_dict()))
  np.savez_compressed(OUTPUT, **out)
  print(f'wrote {OUTPUT} ({os.path.getsize(OUTPUT)} bytes); pool |max| '
        f'{np.abs(out["pool_large"]).max():.3g}, FD ab/ac/bc '
        f'{out["fd_ab"]:.6g} / {out["fd_ac"]:.6g} / {out["fd_bc"]:.6g}')


if __name__ == '__main__':
  main()
