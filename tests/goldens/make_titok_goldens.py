"""Writes the TiTok goldens (PyTorch reference):

  /work/venv-torch/bin/python tests/goldens/make_titok_goldens.py

The reference is the released TiTok of bytedance/1d-tokenizer, re-implemented
below with its module and parameter names: modeling/titok.py (TiTok with
finetune_decoder: latent_tokens, quantize, pixel_quantize, pixel_decoder),
modeling/modules/blocks.py (ResidualAttentionBlock with nn.MultiheadAttention,
TiTokEncoder, TiTokDecoder with is_legacy=True, the default of the released
configs), modeling/quantizer/quantizer.py (VectorQuantizer, l2-normalized)
and modeling/modules/maskgit_vqgan.py (the MaskGIT VQGAN Decoder and
VectorQuantizer). The widths are parameters here (the published code reads
them from a size table and hard-codes the 1024 x 256 pixel codebook and 32
GroupNorm groups).

Files:
  titok_tiny.bin        torch.save'd state dict of a reduced model (32x32
                        images, patch 8, width 32, 2 layers, 2 heads, 8
                        latent tokens of 4 dims, 16 codes; pixel decoder 8
                        channels x (1, 2, 2, 2), 1 res block, 4 groups, 16
                        codes of 8 dims), every tensor random
                        (tests/goldens/seeded_weights.py).
  titok_goldens.npz     images [2, 32, 32, 3] in [-1, 1] (the reference gets
                        (x + 1) / 2), the tokens [2, 8] and the decoded
                        tokens (decode_tokens) mapped back to [-1, 1].
  titok_keys.json       {variant: {name: shape}} of the released TiTok-L-32,
                        B-64 and S-128 (configs/infer/TiTok/*.yaml).
"""

import collections
import json
import math
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
import torch.nn.functional as F

from tests.goldens import seeded_weights

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
SIZES = {'small': (512, 8, 8), 'base': (768, 12, 12), 'large': (1024, 24, 16)}


class ResidualAttentionBlock(nn.Module):

  def __init__(self, width, heads):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width)
    self.attn = nn.MultiheadAttention(width, heads)
    self.ln_2 = nn.LayerNorm(width)
    self.mlp = nn.Sequential(
        collections.OrderedDict([('c_fc', nn.Linear(width, 4 * width)),
                                 ('gelu', nn.GELU()),
                                 ('c_proj', nn.Linear(4 * width, width))]))

  def forward(self, x):
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class TiTokEncoder(nn.Module):

  def __init__(self, image_size, patch, width, layers, heads, k, token_size):
    super().__init__()
    self.grid, self.width, self.k = image_size // patch, width, k
    self.token_size = token_size
    scale = width**-0.5
    self.patch_embed = nn.Conv2d(3, width, patch, stride=patch, bias=True)
    self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
    self.positional_embedding = nn.Parameter(
        scale * torch.randn(self.grid**2 + 1, width))
    self.latent_token_positional_embedding = nn.Parameter(scale *
                                                          torch.randn(k, width))
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = nn.ModuleList(
        [ResidualAttentionBlock(width, heads) for _ in range(layers)])
    self.ln_post = nn.LayerNorm(width)
    self.conv_out = nn.Conv2d(width, token_size, kernel_size=1, bias=True)

  def forward(self, pixel_values, latent_tokens):
    b = pixel_values.shape[0]
    x = self.patch_embed(pixel_values)
    x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([self.class_embedding.expand(b, -1, -1), x], dim=1)
    x = x + self.positional_embedding
    latents = latent_tokens.expand(b, -1, -1)
    latents = latents + self.latent_token_positional_embedding
    x = self.ln_pre(torch.cat([x, latents], dim=1)).permute(1, 0, 2)
    for block in self.transformer:
      x = block(x)
    x = x.permute(1, 0, 2)
    latents = self.ln_post(x[:, 1 + self.grid**2:])
    latents = latents.reshape(b, self.width, self.k, 1)  # is_legacy
    latents = self.conv_out(latents)
    return latents.reshape(b, self.token_size, 1, self.k)


class TiTokDecoder(nn.Module):

  def __init__(self, image_size, patch, width, layers, heads, k, token_size,
               proxy_codes):
    super().__init__()
    self.grid, self.width = image_size // patch, width
    scale = width**-0.5
    self.decoder_embed = nn.Linear(token_size, width, bias=True)
    self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
    self.positional_embedding = nn.Parameter(
        scale * torch.randn(self.grid**2 + 1, width))
    self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
    self.latent_token_positional_embedding = nn.Parameter(scale *
                                                          torch.randn(k, width))
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = nn.ModuleList(
        [ResidualAttentionBlock(width, heads) for _ in range(layers)])
    self.ln_post = nn.LayerNorm(width)
    self.ffn = nn.Sequential(  # is_legacy
        nn.Conv2d(width, 2 * width, 1, padding=0, bias=True), nn.Tanh(),
        nn.Conv2d(2 * width, proxy_codes, 1, padding=0, bias=True))
    self.conv_out = nn.Identity()

  def forward(self, z):
    n, c, h, w = z.shape
    x = self.decoder_embed(z.reshape(n, c * h, w).permute(0, 2, 1))
    mask = self.mask_token.repeat(n, self.grid**2, 1)
    mask = torch.cat([self.class_embedding.expand(n, -1, -1), mask], dim=1)
    mask = mask + self.positional_embedding
    x = x + self.latent_token_positional_embedding[:x.shape[1]]
    x = self.ln_pre(torch.cat([mask, x], dim=1)).permute(1, 0, 2)
    for block in self.transformer:
      x = block(x)
    x = self.ln_post(x.permute(1, 0, 2)[:, 1:1 + self.grid**2])
    x = x.permute(0, 2, 1).reshape(n, self.width, self.grid, self.grid)
    return self.conv_out(self.ffn(x.contiguous()))


class VectorQuantizer(nn.Module):
  """modeling/quantizer/quantizer.py with use_l2_norm=True (eval path)."""

  def __init__(self, codebook_size, token_size):
    super().__init__()
    self.embedding = nn.Embedding(codebook_size, token_size)

  def forward(self, z):
    z = z.permute(0, 2, 3, 1).contiguous()
    flat = F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)
    emb = F.normalize(self.embedding.weight, dim=-1)
    d = (torch.sum(flat**2, dim=1, keepdim=True) + torch.sum(emb**2, dim=1) -
         2 * torch.einsum('bd,dn->bn', flat, emb.T))
    return torch.argmin(d, dim=1).view(z.shape[0], -1)

  def get_codebook_entry(self, indices):
    return F.normalize(self.embedding(indices), dim=-1)


class Conv2dSame(nn.Conv2d):

  def forward(self, x):
    ih, iw = x.shape[-2:]
    pad = lambda i, k, s: max((math.ceil(i / s) - 1) * s + k - i, 0)
    ph = pad(ih, self.kernel_size[0], self.stride[0])
    pw = pad(iw, self.kernel_size[1], self.stride[1])
    if ph > 0 or pw > 0:
      x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return super().forward(x)


class ResnetBlock(nn.Module):

  def __init__(self, cin, cout, groups):
    super().__init__()
    self.cin, self.cout = cin, cout
    self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6, affine=True)
    self.conv1 = Conv2dSame(cin, cout, kernel_size=3, bias=False)
    self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6, affine=True)
    self.dropout = nn.Dropout(0.0)
    self.conv2 = Conv2dSame(cout, cout, kernel_size=3, bias=False)
    if cin != cout:
      self.nin_shortcut = Conv2dSame(cout, cout, kernel_size=1, bias=False)

  def forward(self, x):
    residual = x
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    if self.cin != self.cout:
      residual = self.nin_shortcut(h)  # The published shortcut quirk.
    return h + residual


class UpsamplingBlock(nn.Module):

  def __init__(self, hidden, mult, idx, num_res_blocks, groups):
    super().__init__()
    cin = hidden * (mult[-1] if idx == len(mult) - 1 else mult[idx + 1])
    cout = hidden * mult[idx]
    blocks = []
    for _ in range(num_res_blocks):
      blocks.append(ResnetBlock(cin, cout, groups))
      cin = cout
    self.block = nn.ModuleList(blocks)
    self.add_upsample = idx != 0
    if self.add_upsample:
      self.upsample_conv = Conv2dSame(cout, cout, kernel_size=3)

  def forward(self, x):
    for block in self.block:
      x = block(x)
    if self.add_upsample:
      x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))
    return x


class PixelDecoder(nn.Module):
  """modeling/modules/maskgit_vqgan.py Decoder."""

  def __init__(self, hidden, mult, num_res_blocks, z_channels, groups):
    super().__init__()
    block_in = hidden * mult[-1]
    self.conv_in = Conv2dSame(z_channels, block_in, kernel_size=3)
    self.mid = nn.ModuleList([
        ResnetBlock(block_in, block_in, groups) for _ in range(num_res_blocks)
    ])
    self.up = nn.ModuleList([
        UpsamplingBlock(hidden, mult, i, num_res_blocks, groups)
        for i in range(len(mult))
    ])
    self.norm_out = nn.GroupNorm(groups, hidden * mult[0], eps=1e-6,
                                 affine=True)
    self.conv_out = Conv2dSame(hidden * mult[0], 3, kernel_size=3)

  def forward(self, x):
    x = self.conv_in(x)
    for block in self.mid:
      x = block(x)
    for block in reversed(self.up):
      x = block(x)
    return self.conv_out(F.silu(self.norm_out(x)))


class PixelQuantizer(nn.Module):

  def __init__(self, codes, dim):
    super().__init__()
    self.embedding = nn.Embedding(codes, dim)


class TiTok(nn.Module):
  """modeling/titok.py TiTok, VQ, finetune_decoder=True (eval path)."""

  def __init__(self, image_size=256, patch=16, width=1024, layers=24, heads=16,
               k=32, token_size=12, codebook_size=4096, proxy_codes=1024,
               pixel_dim=256, hidden=128, mult=(1, 1, 2, 2, 4),
               num_res_blocks=2, groups=32):
    super().__init__()
    args = (image_size, patch, width, layers, heads, k, token_size)
    self.encoder = TiTokEncoder(*args)
    self.decoder = TiTokDecoder(*args, proxy_codes)
    self.latent_tokens = nn.Parameter(width**-0.5 * torch.randn(k, width))
    self.quantize = VectorQuantizer(codebook_size, token_size)
    self.pixel_quantize = PixelQuantizer(proxy_codes, pixel_dim)
    self.pixel_decoder = PixelDecoder(hidden, mult, num_res_blocks, pixel_dim,
                                      groups)

  def encode(self, x):
    return self.quantize(self.encoder(x, self.latent_tokens))

  def decode_tokens(self, tokens):
    b, k = tokens.shape
    z = self.quantize.get_codebook_entry(tokens.reshape(-1))
    z = z.reshape(b, 1, k, -1).permute(0, 3, 1, 2).contiguous()
    logits = self.decoder(z)
    z = torch.einsum('nchw,cd->ndhw', logits.softmax(1),
                     self.pixel_quantize.embedding.weight)
    return self.pixel_decoder(z)


def main():
  keys = {}
  for name, (model_size, k) in {
      'titok_l32': ('large', 32),
      'titok_b64': ('base', 64),
      'titok_s128': ('small', 128)
  }.items():
    width, layers, heads = SIZES[model_size]
    with torch.device('meta'):
      model = TiTok(width=width, layers=layers, heads=heads, k=k)
    keys[name] = {n: list(t.shape) for n, t in model.state_dict().items()}
  with open(os.path.join(GOLDEN_DIR, 'titok_keys.json'), 'w') as f:
    json.dump(keys, f, sort_keys=True)

  tiny = TiTok(image_size=32, patch=8, width=32, layers=2, heads=2, k=8,
               token_size=4, codebook_size=16, proxy_codes=16, pixel_dim=8,
               hidden=8, mult=(1, 2, 2, 2), num_res_blocks=1, groups=4)
  state = {
      n: torch.from_numpy(seeded_weights.draw_tensor(n, t.shape, seed=3))
      for n, t in tiny.state_dict().items()
  }
  tiny.load_state_dict(state)
  tiny.eval()
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3))
  x = x.astype(np.float32)
  x01 = (torch.from_numpy(x) + 1.0) * 0.5
  with torch.no_grad():
    tokens = tiny.encode(x01.permute(0, 3, 1, 2).contiguous())
    decoded = tiny.decode_tokens(tokens).permute(0, 2, 3, 1)
  torch.save(tiny.state_dict(), os.path.join(GOLDEN_DIR, 'titok_tiny.bin'))
  np.savez(os.path.join(GOLDEN_DIR, 'titok_goldens.npz'), images=x,
           tokens=tokens.numpy().astype(np.int32),
           decoded=(decoded * 2.0 - 1.0).numpy().astype(np.float32),
           num_groups=4, num_heads=2)
  print('tokens', tokens.numpy(), 'decoded std', float(decoded.std()))


if __name__ == '__main__':
  main()
