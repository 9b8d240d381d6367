"""Writes the taming VQGAN converter goldens with the reference package
(PyPI taming-transformers 0.0.1, whose Encoder/Decoder source equals
CompVis/taming-transformers HEAD):

  /work/venv-torch/bin/python tests/goldens/make_taming_goldens.py

taming_tiny.ckpt: a PyTorch-Lightning style checkpoint of a reduced VQModel
  (ch 32, ch_mult (2, 1), one res block, attention at 16 of 32, 64 codes of
  dim 8; taming's 32-group norms) with every parameter random: the state dict
  under 'state_dict' with the real key names, some `loss.*` discriminator
  tensors, an optimizer state (more tensors the converter must not see) and a
  non-tensor object the safe reader must skip. Weights are stored as float16
  (values the reference used exactly) to keep the file small.
taming_tiny.npz: images [B, 32, 32, 3] in [-1, 1] (NHWC), the reference
  tokens [B, 16, 16], reconstructions (VQModel.forward) and images decoded
  from the tokens (decode_code), NHWC.
taming_keys.json: {variant: {key: shape}} of the released ImageNet f16-1024
  and f16-16384 `last.ckpt` state dicts (model.yaml configs), loss.* included.
"""

import argparse
import collections
import json
import os
import sys
import types

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import numpy as np  # pylint: disable=g-bad-import-order
import torch
import torchvision

# taming.util imports requests (for downloads this script never does).
sys.modules.setdefault('requests', types.ModuleType('requests'))
# pylint: disable=g-import-not-at-top
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator
from taming.modules.losses import lpips as taming_lpips
from taming.modules.losses.vqperceptual import VQLPIPSWithDiscriminator
from taming.modules.vqvae.quantize import VectorQuantizer

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
SEED = 0
TINY = dict(double_z=False, z_channels=32, resolution=32, in_channels=3,
            out_ch=3, ch=32, ch_mult=(2, 1), num_res_blocks=1,
            attn_resolutions=[16], dropout=0.0)
TINY_CODES, TINY_DIM = 64, 8
# configs of vqgan_imagenet_f16_{1024,16384}/configs/model.yaml.
RELEASED = dict(double_z=False, z_channels=256, resolution=256, in_channels=3,
                out_ch=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                attn_resolutions=[16], dropout=0.0)
RELEASED_DIM = 256


class TinyVQModel(torch.nn.Module):
  """taming.models.vqgan.VQModel's modules and forward, without Lightning."""

  def __init__(self, ddconfig, n_embed, embed_dim):
    super().__init__()
    self.encoder = Encoder(**ddconfig)
    self.decoder = Decoder(**ddconfig)
    self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
    self.quant_conv = torch.nn.Conv2d(ddconfig['z_channels'], embed_dim, 1)
    self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig['z_channels'], 1)

  def encode(self, x):
    return self.quantize(self.quant_conv(self.encoder(x)))

  def decode(self, quant):
    return self.decoder(self.post_quant_conv(quant))


def _randomize(model, gen):
  """Random values for every parameter: norms' scales near 1, biases small."""
  for name, p in model.named_parameters():
    if 'norm' in name and name.endswith('weight'):
      value = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
    elif name.endswith('bias'):
      value = 0.2 * torch.randn(p.shape, generator=gen)
    else:
      fan_in = int(np.prod(p.shape[1:]))
      value = torch.randn(p.shape, generator=gen) * np.sqrt(1.0 / fan_in)
    # float16-representable, so the float16 file holds exactly these.
    p.data.copy_(value.half().float())


def _min_margin(z, codebook):
  """Smallest gap between the best and second best squared distance."""
  d = torch.cdist(z, codebook)**2
  top2 = torch.topk(d, 2, largest=False).values
  return float((top2[:, 1] - top2[:, 0]).min())


def make_tiny():
  torch.manual_seed(SEED)
  gen = torch.Generator().manual_seed(SEED)
  model = TinyVQModel(TINY, TINY_CODES, TINY_DIM).eval()
  _randomize(model, gen)
  rng = np.random.default_rng(SEED)
  images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    # Codes near encoder outputs, so that many of them are used.
    z = model.quant_conv(model.encoder(x)).permute(0, 2, 3,
                                                   1).reshape(-1, TINY_DIM)
    # Redrawn until no position is near a tie (float rounding could flip it);
    # max ||z||^2 is about 15.
    margin = 0.0
    while margin < 2e-3:
      rows = torch.randperm(z.shape[0], generator=gen)[:TINY_CODES]
      codebook = z[rows] + 0.3 * z.std() * torch.randn(TINY_CODES, TINY_DIM,
                                                       generator=gen)
      model.quantize.embedding.weight.copy_(codebook.half().float())
      margin = _min_margin(z, model.quantize.embedding.weight)
    quant, _, (_, _, indices) = model.encode(x)
    recon = model.decode(quant)
    tokens = indices.reshape(2, 16, 16)
    decoded = model.decode(
        model.quantize.get_codebook_entry(indices[:, 0], (2, 16, 16, TINY_DIM)))
  print(f'tiny: {len(set(tokens.flatten().tolist()))} codes used, '
        f'margin {margin:.4f}')

  state = collections.OrderedDict(
      (k, v.half()) for k, v in model.state_dict().items())
  disc = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=1)
  for k, v in disc.state_dict().items():
    state[f'loss.discriminator.{k}'] = v.half() if v.is_floating_point() else v
  adam = torch.optim.Adam([model.quant_conv.bias], lr=1e-3)
  model.quant_conv.bias.grad = torch.ones_like(model.quant_conv.bias)
  adam.step()
  ckpt = {
      'epoch': 3,
      'global_step': 1234,
      'pytorch-lightning_version': '1.0.8',
      'state_dict': state,
      'optimizer_states': [adam.state_dict()],
      'lr_schedulers': [],
      'hparams_name': 'kwargs',
      'hyper_parameters': argparse.Namespace(n_embed=TINY_CODES)
  }
  torch.save(ckpt, os.path.join(GOLDEN_DIR, 'taming_tiny.ckpt'))
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy().astype(np.float32)
  np.savez_compressed(os.path.join(GOLDEN_DIR, 'taming_tiny.npz'),
                      images=images, tokens=tokens.numpy().astype(np.int32),
                      reconstructions=nhwc(recon), decoded=nhwc(decoded))


def released_keys(n_embed):
  """{key: shape} of a released VQModel checkpoint, built on the meta device."""
  # LPIPS would download its VGG16 and heads; only the key names matter here.
  taming_lpips.LPIPS.load_from_pretrained = lambda self, name=None: None
  vgg16 = torchvision.models.vgg16
  taming_lpips.models = types.SimpleNamespace(
      vgg16=lambda pretrained=False: vgg16(weights=None))
  with torch.device('meta'):
    model = TinyVQModel(RELEASED, n_embed, RELEASED_DIM)
    # imagenet_vqgan.yaml lossconfig.
    model.loss = VQLPIPSWithDiscriminator(disc_conditional=False,
                                          disc_in_channels=3, disc_start=250001,
                                          disc_weight=0.8, codebook_weight=1.0)
  return {k: list(v.shape) for k, v in model.state_dict().items()}


def _one_key_a_line(keys):
  variants = []
  for variant, shapes in keys.items():
    lines = ',\n'.join(
        f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in shapes.items())
    variants.append(f'{json.dumps(variant)}: {{\n{lines}\n}}')
  return '{\n' + ',\n'.join(variants) + '\n}\n'


def main():
  make_tiny()
  keys = {f'vqgan_imagenet_f16_{n}': released_keys(n) for n in (1024, 16384)}
  with open(os.path.join(GOLDEN_DIR, 'taming_keys.json'), 'w') as f:
    f.write(_one_key_a_line(keys))
  print({k: len(v) for k, v in keys.items()})


if __name__ == '__main__':
  main()
