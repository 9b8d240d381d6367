"""Writes the Open-MAGVIT2 converter goldens:

  /work/venv-torch/bin/python tests/goldens/make_open_magvit2_goldens.py

The reference is TencentARC/Open-MAGVIT2 (src/Open_MAGVIT2/modules/
diffusionmodules/improved_model.py: Encoder, Decoder, ResBlock, Upsampler,
depth_to_space, AdaptiveGroupNorm; modules/vqvae/lookup_free_quantize.py: the
LFQ forward in eval), re-implemented below line for line (the package is not
on PyPI).

open_magvit2_tiny.ckpt: a Lightning-style checkpoint of a reduced VQModel
  (ch 32, ch_mult (2, 1), one res block, z 18 bits, factorized 9 + 9,
  32-group norms), every parameter random, under 'state_dict': the raw
  weights (sharing the EMA's storage except for encoder.conv_out.bias and
  decoder.conv_out.weight), an EMA copy (LitEma: 'model_ema.' + name without dots, plus decay
  and num_updates, and EMA copies of the discriminator), some `loss.*`
  tensors. Weights are float16 (values the reference used exactly). The
  reference outputs use the EMA weights, as Open-MAGVIT2's evaluation does.
open_magvit2_tiny.npz: images [B, 32, 32, 3] in [-1, 1] (NHWC), tokens
  [B, 16, 16] (sum_d 2^d [z_d > 0]), factorized tokens [B, 16, 16, 2]
  (pre = bits 0..8, post = bits 9..17), reconstructions and images decoded
  from the tokens, NHWC, computed in float64.
open_magvit2_keys.json: {variant: {key: shape}} of the released ImageNet
  128 and 256 tokenizers (imagenet_lfqgan_{128,256}_L.yaml) with EMA copies.
"""

import collections
import json
import os
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import numpy as np  # pylint: disable=g-bad-import-order
import torch
from torch import nn

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
SEED = 0
TINY = dict(ch=32, ch_mult=(2, 1), num_res_blocks=1, z_channels=18,
            in_channels=3, out_ch=3)
# imagenet_lfqgan_{128,256}_L.yaml ddconfig (both the same network).
RELEASED = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4,
                z_channels=18, in_channels=3, out_ch=3)
FACTOR_BITS = (9, 9)


def swish(x):
  return x * torch.sigmoid(x)


class ResBlock(nn.Module):

  def __init__(self, in_filters, out_filters):
    super().__init__()
    self.in_filters, self.out_filters = in_filters, out_filters
    self.norm1 = nn.GroupNorm(32, in_filters, eps=1e-6)
    self.norm2 = nn.GroupNorm(32, out_filters, eps=1e-6)
    self.conv1 = nn.Conv2d(in_filters, out_filters, 3, padding=1, bias=False)
    self.conv2 = nn.Conv2d(out_filters, out_filters, 3, padding=1, bias=False)
    if in_filters != out_filters:
      self.nin_shortcut = nn.Conv2d(in_filters, out_filters, 1, padding=0,
                                    bias=False)

  def forward(self, x):
    residual = x
    x = self.conv1(swish(self.norm1(x)))
    x = self.conv2(swish(self.norm2(x)))
    if self.in_filters != self.out_filters:
      residual = self.nin_shortcut(residual)
    return x + residual


class Encoder(nn.Module):

  def __init__(self, *, ch, out_ch, in_channels, num_res_blocks, z_channels,
               ch_mult):
    super().__init__()
    del out_ch
    self.num_res_blocks, self.num_blocks = num_res_blocks, len(ch_mult)
    self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
    self.down = nn.ModuleList()
    in_ch_mult = (1,) + tuple(ch_mult)
    for i_level in range(self.num_blocks):
      block = nn.ModuleList()
      block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
      for _ in range(num_res_blocks):
        block.append(ResBlock(block_in, block_out))
        block_in = block_out
      down = nn.Module()
      down.block = block
      if i_level < self.num_blocks - 1:
        down.downsample = nn.Conv2d(block_out, block_out, 3, stride=2,
                                    padding=1)
      self.down.append(down)
    self.mid_block = nn.ModuleList(
        [ResBlock(block_in, block_in) for _ in range(num_res_blocks)])
    self.norm_out = nn.GroupNorm(32, block_out, eps=1e-6)
    self.conv_out = nn.Conv2d(block_out, z_channels, 1)

  def forward(self, x):
    x = self.conv_in(x)
    for i_level in range(self.num_blocks):
      for i_block in range(self.num_res_blocks):
        x = self.down[i_level].block[i_block](x)
      if i_level < self.num_blocks - 1:
        x = self.down[i_level].downsample(x)
    for res in range(self.num_res_blocks):
      x = self.mid_block[res](x)
    return self.conv_out(swish(self.norm_out(x)))


def depth_to_space(x, block_size):
  c, h, w = x.shape[-3:]
  s = block_size**2
  outer_dims = x.shape[:-3]
  x = x.view(-1, block_size, block_size, c // s, h, w)
  x = x.permute(0, 3, 4, 1, 5, 2)
  return x.contiguous().view(*outer_dims, c // s, h * block_size,
                             w * block_size)


class Upsampler(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.conv1 = nn.Conv2d(dim, dim * 4, 3, padding=1)

  def forward(self, x):
    return depth_to_space(self.conv1(x), block_size=2)


class AdaptiveGroupNorm(nn.Module):

  def __init__(self, z_channel, in_filters, eps=1e-6):
    super().__init__()
    self.gn = nn.GroupNorm(num_groups=32, num_channels=in_filters, eps=eps,
                           affine=False)
    self.gamma = nn.Linear(z_channel, in_filters)
    self.beta = nn.Linear(z_channel, in_filters)
    self.eps = eps

  def forward(self, x, quantizer):
    b, c = x.shape[:2]
    flat = quantizer.reshape(quantizer.shape[0], quantizer.shape[1], -1)
    scale = (flat.var(dim=-1) + self.eps).sqrt()  # torch's var: unbiased.
    scale = self.gamma(scale).view(b, c, 1, 1)
    bias = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
    return scale * self.gn(x) + bias


class Decoder(nn.Module):

  def __init__(self, *, ch, out_ch, in_channels, num_res_blocks, z_channels,
               ch_mult):
    super().__init__()
    del in_channels
    self.num_blocks, self.num_res_blocks = len(ch_mult), num_res_blocks
    block_in = ch * ch_mult[self.num_blocks - 1]
    self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1, bias=True)
    self.mid_block = nn.ModuleList(
        [ResBlock(block_in, block_in) for _ in range(num_res_blocks)])
    self.up = nn.ModuleList()
    self.adaptive = nn.ModuleList()
    for i_level in reversed(range(self.num_blocks)):
      block = nn.ModuleList()
      block_out = ch * ch_mult[i_level]
      self.adaptive.insert(0, AdaptiveGroupNorm(z_channels, block_in))
      for _ in range(num_res_blocks):
        block.append(ResBlock(block_in, block_out))
        block_in = block_out
      up = nn.Module()
      up.block = block
      if i_level > 0:
        up.upsample = Upsampler(block_in)
      self.up.insert(0, up)
    self.norm_out = nn.GroupNorm(32, block_in, eps=1e-6)
    self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

  def forward(self, z):
    style = z.clone()
    z = self.conv_in(z)
    for res in range(self.num_res_blocks):
      z = self.mid_block[res](z)
    for i_level in reversed(range(self.num_blocks)):
      z = self.adaptive[i_level](z, style)
      for i_block in range(self.num_res_blocks):
        z = self.up[i_level].block[i_block](z)
      if i_level > 0:
        z = self.up[i_level].upsample(z)
    return self.conv_out(swish(self.norm_out(z)))


def lfq(x):
  """LFQ.forward in eval with token_factorization: (quantized, indices,
  (pre, post)); x: [B, D, H, W]."""
  x = x.permute(0, 2, 3, 1)
  quantized = torch.where(x > 0, 1.0, -1.0)
  bits = (quantized > 0).long()
  weights = 2**torch.arange(x.shape[-1])
  pre = (bits[..., :FACTOR_BITS[0]] * weights[:FACTOR_BITS[0]]).sum(-1)
  post = (bits[..., FACTOR_BITS[0]:] * weights[:FACTOR_BITS[1]]).sum(-1)
  indices = (bits * weights).sum(-1)
  quantized = x + (quantized - x).detach()
  return quantized.permute(0, 3, 1, 2), indices, (pre, post)


def codes_of(indices, bits):
  """LFQ.get_codebook_entry / decode: indices [B, H, W] -> [B, bits, H, W]."""
  mask = 2**torch.arange(bits)
  return (((indices.unsqueeze(-1) & mask) != 0) * 2.0 - 1.0).permute(0, 3, 1, 2)


class VQModel(nn.Module):

  def __init__(self, ddconfig):
    super().__init__()
    self.encoder = Encoder(**ddconfig)
    self.decoder = Decoder(**ddconfig)


def _randomize(model, gen):
  for name, p in model.named_parameters():
    if 'norm' in name and name.endswith('weight'):
      value = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
    elif name.endswith('bias'):
      value = 0.2 * torch.randn(p.shape, generator=gen)
    else:
      fan_in = int(np.prod(p.shape[1:]))
      value = torch.randn(p.shape, generator=gen) * np.sqrt(1.0 / fan_in)
    p.data.copy_(value.half().float())


def _ema_name(key):
  return 'model_ema.' + key.replace('.', '')


def make_tiny():
  gen = torch.Generator().manual_seed(SEED)
  raw = VQModel(TINY).eval()
  _randomize(raw, gen)
  ema = VQModel(TINY).eval()
  _randomize(ema, gen)
  rng = np.random.default_rng(SEED)
  images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  # References in float64: at float32 this random decoder's own rounding
  # noise is about 1.5e-3 (torch float32 vs float64).
  ema = ema.double()
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).double()
  with torch.no_grad():
    # Redraw the last bias until no latent is near 0 (rounding could flip it).
    margin = 0.0
    while margin < 2e-4:
      bias = ema.encoder.conv_out.bias
      bias.copy_((0.2 * torch.randn(bias.shape, generator=gen)).half().float())
      z = ema.encoder(x)
      margin = float(z.abs().min())
    quant, indices, (pre, post) = lfq(z)
    recon = ema.decoder(quant)
    decoded = ema.decoder(codes_of(indices, 18).double())
  print(f'tiny: {len(set(indices.flatten().tolist()))} codes, min |z| '
        f'{margin:.5f}')
  # The raw weights share the EMA's storage (a smaller file) except for two
  # tensors, which tell whether a converter took the EMA or the raw ones.
  ema_half = {k: v.half() for k, v in ema.float().state_dict().items()}
  state = collections.OrderedDict()
  for k, v in raw.state_dict().items():
    differs = k in ('encoder.conv_out.bias', 'decoder.conv_out.weight')
    state[k] = v.half() if differs else ema_half[k]
  state['loss.discriminator.main.0.weight'] = torch.randn(8, 3, 4, 4).half()
  state['loss.discriminator.main.0.bias'] = torch.randn(8).half()
  state['model_ema.decay'] = torch.tensor(0.999)
  state['model_ema.num_updates'] = torch.tensor(-1, dtype=torch.int)
  for k, v in ema_half.items():
    state[_ema_name(k)] = v
  state['model_ema.lossdiscriminatormain0weight'] = torch.randn(8, 3, 4, 4)
  ckpt = {
      'epoch': 1,
      'global_step': 10,
      'pytorch-lightning_version': '2.2.1',
      'state_dict': state,
      'loops': {
          'fit_loop': {
              'epoch_progress': 1
          }
      },
      'optimizer_states': [],
      'lr_schedulers': []
  }
  torch.save(ckpt, os.path.join(GOLDEN_DIR, 'open_magvit2_tiny.ckpt'))
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy().astype(np.float32)
  np.savez_compressed(
      os.path.join(GOLDEN_DIR, 'open_magvit2_tiny.npz'), images=images,
      tokens=indices.numpy().astype(np.int32),
      factorized=torch.stack([pre, post], -1).numpy().astype(np.int32),
      reconstructions=nhwc(recon), decoded=nhwc(decoded))


def released_keys():
  with torch.device('meta'):
    model = VQModel(RELEASED)
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  shapes.update({_ema_name(k): v for k, v in list(shapes.items())})
  shapes['model_ema.decay'] = []
  shapes['model_ema.num_updates'] = []
  return shapes


def _one_key_a_line(keys):
  variants = []
  for variant, shapes in keys.items():
    lines = ',\n'.join(
        f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in shapes.items())
    variants.append(f'{json.dumps(variant)}: {{\n{lines}\n}}')
  return '{\n' + ',\n'.join(variants) + '\n}\n'


def main():
  make_tiny()
  keys = {'imagenet_256_L': released_keys()}
  with open(os.path.join(GOLDEN_DIR, 'open_magvit2_keys.json'), 'w') as f:
    f.write(_one_key_a_line(keys))
  print({k: len(v) for k, v in keys.items()})


if __name__ == '__main__':
  main()
