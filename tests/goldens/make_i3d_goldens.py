"""Writes tests/goldens/i3d.npz from piergiaj/pytorch-i3d's InceptionI3d (run
under the torch venv, from the repo root, with a checkout of
https://github.com/piergiaj/pytorch-i3d -- commit 05783d1 -- on the path):

  PYTHONPATH=/path/to/pytorch-i3d /work/venv-torch/bin/python \
      tests/goldens/make_i3d_goldens.py

The reference is that port of DeepMind's I3D (TF SAME padding computed per
input size, BatchNorm eps 1e-3), loaded with seeded random weights
(tests/goldens/seeded_weights.py) for its own names and shapes. Saved:
  clips_small [2, 19, 28, 28, 3] uint8: the inputs are these repeated 8x
    along height and width (224 x 224), mapped to u8 / 127.5 - 1;
  logits_per_time [2, 400, 2]: the port's forward output (Kinetics logits at
    each of the 2 output time steps); logits [2, 400]: their mean over time,
    the FVD feature (TF's `RGB/inception_i3d/Mean`);
  unit_names_torch / unit_names_tf: each Unit3D's state-dict prefix and the
    TF scope the port names it with (its `name` attribute);
  seed, weight_names / weight_shapes (seeded_weights.pack_shapes).
"""

import os
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import pytorch_i3d  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

from tests.goldens import seeded_weights  # pylint: disable=g-import-not-at-top

SEED = 0
OUTPUT = os.path.join(ROOT, 'tests', 'goldens', 'i3d.npz')


def main():
  torch.set_num_threads(2)
  model = pytorch_i3d.InceptionI3d(400, in_channels=3).eval()
  state = model.state_dict()
  drawn = seeded_weights.draw_state_dict(
      list(state), [tuple(t.shape) for t in state.values()], SEED)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in drawn.items()})
  rng = np.random.default_rng(SEED)
  small = rng.integers(0, 256, (2, 19, 28, 28, 3), dtype=np.uint8)
  clips = np.repeat(np.repeat(small, 8, axis=2), 8, axis=3)
  x = torch.from_numpy(clips.astype(np.float32) / 127.5 - 1)
  with torch.no_grad():
    per_time = model(x.permute(0, 4, 1, 2, 3)).numpy()
  units = [(name, module.name)
           for name, module in model.named_modules()
           if isinstance(module, pytorch_i3d.Unit3D)]
  out = {
      'seed': np.int64(SEED),
      'clips_small': small,
      'logits_per_time': per_time,
      'logits': per_time.mean(axis=2),
      'unit_names_torch': np.array([u[0] for u in units]),
      'unit_names_tf': np.array([u[1] for u in units]),
  }
  out.update(seeded_weights.pack_shapes(state))
  np.savez_compressed(OUTPUT, **out)
  print(f'wrote {OUTPUT} ({os.path.getsize(OUTPUT)} bytes); logits shape '
        f'{per_time.shape}, |max| {np.abs(per_time).max():.4g}')


if __name__ == '__main__':
  main()
