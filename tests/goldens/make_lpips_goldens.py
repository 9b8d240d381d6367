"""Writes tests/goldens/lpips.npz and tests/goldens/vgg19.npz with the
reference packages (lpips 0.1.4, torchvision):

  /work/venv-torch/bin/python tests/goldens/make_lpips_goldens.py

The trunks get seeded random weights (seeded_weights.py, redrawn by the
tests), the LPIPS heads are the shipped v0.1 ones (packaged with vqlab too).
Images are NHWC float32 in [-1, 1]; lpips gets them as NCHW.
"""

import os
import re
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import lpips  # pylint: disable=g-bad-import-order
import numpy as np
import torch
from torchvision.models import vgg as tv_vgg

from tests.goldens import seeded_weights

SEED = 0
LAYERS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')
# torchvision `features` index of each named ReLU in VGG19.
VGG19_RELUS = {
    'relu1_2': 3,
    'relu2_2': 8,
    'relu3_3': 15,
    'relu4_3': 24,
    'relu5_3': 33
}
VGG19_MAP_CHANNELS = 4  # Full maps are stored for the first channels only.
GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))


def _images(rng, shape):
  return rng.uniform(-1.0, 1.0, shape).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def make_lpips():
  model = lpips.LPIPS(net='vgg', version='0.1', lpips=True, spatial=False,
                      pretrained=True, pnet_rand=True, verbose=False)
  # The trunk is lpips' `net.slice{s}.{i}` with torchvision's indices i.
  trunk = {}
  for key, value in model.state_dict().items():
    match = re.fullmatch(r'net\.slice\d\.(\d+\.(weight|bias))', key)
    if match:
      trunk[f'features.{match.group(1)}'] = (key, tuple(value.shape))
  names = list(trunk)
  state = seeded_weights.draw_state_dict(names, [trunk[n][1] for n in names],
                                         SEED)
  model.load_state_dict(
      {
          trunk[n][0]: torch.from_numpy(v) for n, v in state.items()
      }, strict=False)
  rng = np.random.default_rng(SEED)
  out = {'seed': np.array(SEED), **seeded_weights.pack_shapes(state)}
  for tag, shape in (('square', (4, 64, 64, 3)), ('wide', (2, 48, 80, 3))):
    x, y = _images(rng, shape), _images(rng, shape)
    if tag == 'square':  # Half the pairs are near each other.
      noise = 0.2 * rng.standard_normal(y[2:].shape).astype(np.float32)
      y[2:] = np.clip(x[2:] + noise, -1.0, 1.0)
    with torch.no_grad():
      total, per_layer = model(_nchw(x), _nchw(y), retPerLayer=True)
    out[f'{tag}_x'], out[f'{tag}_y'] = x, y
    out[f'{tag}_lpips'] = total.numpy().reshape(-1)
    out[f'{tag}_per_layer'] = np.stack(
        [r.numpy().reshape(-1) for r in per_layer], axis=1)  # [B, 5]
  np.savez_compressed(os.path.join(GOLDEN_DIR, 'lpips.npz'), **out)
  print('lpips:', out['square_lpips'], out['wide_lpips'])


def make_vgg19():
  features = tv_vgg.make_layers(tv_vgg.cfgs['E'], batch_norm=False).eval()
  shapes = {
      f'features.{k}': tuple(v.shape) for k, v in features.state_dict().items()
  }
  names = list(shapes)
  state = seeded_weights.draw_state_dict(names, [shapes[n] for n in names],
                                         SEED)
  features.load_state_dict({
      n[len('features.'):]: torch.from_numpy(v) for n, v in state.items()
  })
  rng = np.random.default_rng(SEED + 1)
  x = _images(rng, (2, 48, 48, 3))
  mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
  h = (((_nchw(x) + 1.0) / 2.0) - mean) / std
  out = {'seed': np.array(SEED), 'x': x, **seeded_weights.pack_shapes(state)}
  with torch.no_grad():
    for index, layer in enumerate(features):
      h = layer(h)
      for name, relu in VGG19_RELUS.items():
        if relu == index:
          nhwc = h.numpy().transpose(0, 2, 3, 1)
          out[f'{name}_channel_mean'] = nhwc.mean(axis=(1, 2))  # [B, C]
          out[f'{name}_maps'] = nhwc[..., :VGG19_MAP_CHANNELS]
      if index == max(VGG19_RELUS.values()):
        break
  np.savez_compressed(os.path.join(GOLDEN_DIR, 'vgg19.npz'), **out)
  print('vgg19 relu5_3 channel means:', out['relu5_3_channel_mean'][:, :4])


if __name__ == '__main__':
  torch.set_num_threads(2)
  make_lpips()
  make_vgg19()
