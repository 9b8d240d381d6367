"""taming-transformers VQGAN checkpoints (CompVis) -> a vqlab 'vqgan'.

The released ImageNet models (vqgan_imagenet_f16_1024, _16384) are
PyTorch-Lightning `last.ckpt` files of `taming.models.vqgan.VQModel`; the
tensors sit under 'state_dict' and are read without unpickling any code.
Key layout (taming/modules/diffusionmodules/model.py, vqvae/quantize.py):

  encoder.conv_in                       3x3 to ch
  encoder.down.{i}.block.{j}            res blocks: norm1 conv1 norm2 conv2
                                        (+ nin_shortcut, 1x1, when widths
                                        differ)
  encoder.down.{i}.attn.{j}             after block j where the level has
                                        attention: norm, q, k, v, proj_out
                                        (1x1 convs)
  encoder.down.{i}.downsample.conv      stride 2, pad (0, 1, 0, 1)
  {en,de}coder.mid.block_1, attn_1, block_2
  encoder.norm_out, conv_out            to z_channels (double_z False)
  quant_conv, post_quant_conv           1x1, z_channels <-> embed_dim
  quantize.embedding.weight             [n_embed, embed_dim]
  decoder.conv_in; decoder.up.{i}.block.{j} (num_res_blocks + 1 per level),
  .attn.{j}, .upsample.conv; decoder.norm_out, conv_out (vqlab: to_pixels)

This is vqlab's VQGAN as it is (GroupNorm with 32 groups and eps 1e-6,
single-head attention scaled by C^-1/2, nearest upsampling, argmin over
||z||^2 + ||e||^2 - 2 z.e, first index on ties). Widths, levels, res blocks,
attention levels and the codebook are read from the shapes, so any VQModel
with these parts converts. `loss.*` (LPIPS and the discriminator) is not part
of the tokenizer and is ignored. A transformer's `last.ckpt` (a
Net2NetTransformer: cin, ffhq, celebahq) converts to its first stage, the
VQGAN under `first_stage_model.`: the only release of the face models' VQGANs,
and the exact codebook the transformer was trained on.
"""

import os
from typing import Any

import ml_collections

from vqlab import quantizers
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.weights import torch_files

OPTIONS = {
    'image_size': (int, 256, 'resolution the checkpoint was trained at '
                   '(the ImageNet releases: 256)'),
}

IGNORED_PREFIXES = ('loss.',)  # LPIPS and discriminator of the GAN loss.
NUM_GROUPS = 32  # taming's Normalize: GroupNorm(32, C, eps=1e-6).


def infer_config(sd: published.StateDict) -> ml_collections.ConfigDict:
  """The vqlab 'vqgan' model config of a taming VQModel state dict."""
  widths = published.taming_encoder_widths(sd, 'a taming VQModel state dict')
  attention = [
      level for level in range(len(widths.channel_multipliers))
      if f'encoder.down.{level}.attn.0.q.weight' in sd
  ]
  z_channels = sd.shape('encoder.conv_out.weight')[0]
  decoder_z = sd.shape('decoder.conv_in.weight')[1]
  if z_channels != decoder_z:
    raise WeightsError(
        f'{sd.source}: encoder.conv_out has {z_channels} outputs but '
        f'decoder.conv_in takes {decoder_z} (double_z models are not VQGANs)')
  out_channels = sd.shape('decoder.conv_out.weight')[0]
  if out_channels != widths.in_channels:
    raise WeightsError(f'{sd.source}: decoder.conv_out has {out_channels} '
                       f'channels, the input {widths.in_channels}; vqlab '
                       'needs them equal')
  codebook_size, embedding_dim = sd.shape('quantize.embedding.weight')

  config = tokenizers.default_config('vqgan')
  config.in_channels = widths.in_channels
  config.channels = widths.channels
  config.channel_multipliers = widths.channel_multipliers
  config.num_res_blocks = widths.num_res_blocks
  config.attention_levels = tuple(attention)
  # From any of its tensors: one missing is then named as missing.
  config.mid_attention = any(
      k.startswith(('encoder.mid.attn_1.', 'decoder.mid.attn_1.'))
      for k in sd.keys())
  config.z_channels = z_channels
  config.num_groups = NUM_GROUPS
  config.dropout_rate = 0.0
  config.quantizer = quantizers.default_config('vq')
  config.quantizer.codebook_size = codebook_size
  config.quantizer.embedding_dim = embedding_dim
  # taming trained with beta on the codebook term: keep it for fine-tuning.
  config.quantizer.beta_on_codebook = True
  return config


def _res_block(sd: published.StateDict, prefix: str) -> dict:
  block = {
      'norm1': sd.norm(f'{prefix}.norm1'),
      'conv1': sd.conv(f'{prefix}.conv1'),
      'norm2': sd.norm(f'{prefix}.norm2'),
      'conv2': sd.conv(f'{prefix}.conv2')
  }
  if f'{prefix}.nin_shortcut.weight' in sd:
    block['shortcut'] = sd.conv(f'{prefix}.nin_shortcut')
  return block


def _dense_from_1x1(sd: published.StateDict, prefix: str) -> dict:
  conv = sd.conv(prefix)  # kernel [1, 1, I, O]
  return {'kernel': conv['kernel'][0, 0], 'bias': conv['bias']}


def _attention(sd: published.StateDict, prefix: str) -> dict:
  return {
      'norm': sd.norm(f'{prefix}.norm'),
      'query': _dense_from_1x1(sd, f'{prefix}.q'),
      'key': _dense_from_1x1(sd, f'{prefix}.k'),
      'value': _dense_from_1x1(sd, f'{prefix}.v'),
      'out': _dense_from_1x1(sd, f'{prefix}.proj_out')
  }


class _Names:
  """flax's automatic submodule names, numbered per class in call order."""

  def __init__(self):
    self._counts = {}

  def __call__(self, cls: str) -> str:
    n = self._counts.get(cls, 0)
    self._counts[cls] = n + 1
    return f'{cls}_{n}'


def _encoder(sd: published.StateDict, config) -> dict:
  names, tree = _Names(), {'conv_in': sd.conv('encoder.conv_in')}
  last = len(config.channel_multipliers) - 1
  for level in range(last + 1):
    for j in range(config.num_res_blocks):
      prefix = f'encoder.down.{level}'
      tree[names('ResBlock2D')] = _res_block(sd, f'{prefix}.block.{j}')
      if level in config.attention_levels:
        tree[names('SpatialSelfAttention')] = _attention(
            sd, f'{prefix}.attn.{j}')
    if level != last:
      tree[names('Downsample2D')] = {
          'conv': sd.conv(f'encoder.down.{level}.downsample.conv')
      }
  tree.update(_middle(sd, 'encoder.mid', names, config.mid_attention))
  tree['norm_out'] = sd.norm('encoder.norm_out')
  tree['conv_out'] = sd.conv('encoder.conv_out')
  return tree


def _middle(sd: published.StateDict, prefix: str, names: _Names,
            attention: bool) -> dict:
  tree = {names('ResBlock2D'): _res_block(sd, f'{prefix}.block_1')}
  if attention:
    tree[names('SpatialSelfAttention')] = _attention(sd, f'{prefix}.attn_1')
  tree[names('ResBlock2D')] = _res_block(sd, f'{prefix}.block_2')
  return tree


def _decoder(sd: published.StateDict, config) -> dict:
  names, tree = _Names(), {'conv_in': sd.conv('decoder.conv_in')}
  tree.update(_middle(sd, 'decoder.mid', names, config.mid_attention))
  for level in reversed(range(len(config.channel_multipliers))):
    prefix = f'decoder.up.{level}'
    for j in range(config.num_res_blocks + 1):
      tree[names('ResBlock2D')] = _res_block(sd, f'{prefix}.block.{j}')
      if level in config.attention_levels:
        tree[names('SpatialSelfAttention')] = _attention(
            sd, f'{prefix}.attn.{j}')
    if level != 0:
      tree[names('Upsample2D')] = {'conv': sd.conv(f'{prefix}.upsample.conv')}
  tree['norm_out'] = sd.norm('decoder.norm_out')
  return tree


def convert_state_dict(tensors, *, image_size: int = 256,
                       source: str = 'taming VQGAN') -> published.Converted:
  """A flat taming VQModel state dict {key: array} -> Converted.

  Raises:
    WeightsError: a tensor is missing, left over or has the wrong shape.
  """
  sd = published.StateDict(tensors, source)
  config = tokenizers.validate(infer_config(sd), 'model')
  params = {
      'encoder': _encoder(sd, config),
      'quant_conv': sd.conv('quant_conv'),
      'quantizer': {
          'codebook': sd.take('quantize.embedding.weight')
      },
      'post_quant_conv': sd.conv('post_quant_conv'),
      'decoder': _decoder(sd, config),
      'to_pixels': sd.conv('decoder.conv_out'),
  }
  sd.check_all_used(ignore_prefixes=IGNORED_PREFIXES)
  factor = 2**(len(config.channel_multipliers) - 1)
  description = (f'{source} (f{factor}, {config.quantizer.codebook_size} '
                 f'codes of dim {config.quantizer.embedding_dim})')
  published.check_params_match(params,
                               published.expected_tokenizer_params(config),
                               description)
  return published.Converted(model_config=config, params=params,
                             image_size=image_size, source=description)


def first_stage(tensors: dict[str, Any]) -> dict[str, Any]:
  """The VQGAN of a taming transformer's checkpoint (its tensors under
  `first_stage_model.`, the prefix dropped); other state dicts as they are."""
  prefix = 'first_stage_model.'
  if not any(k.startswith(prefix) for k in tensors):
    return tensors
  return {
      k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)
  }


def convert_file(path: str, image_size: int = 256) -> published.Converted:
  """A taming `last.ckpt` of a VQGAN (or a bare VQModel state dict .pth), or
  of a transformer, whose first stage it converts -> Converted."""
  tensors = first_stage(torch_files.load_state_dict(path, lenient=True))
  return convert_state_dict(
      tensors, image_size=image_size,
      source=f'taming VQGAN {os.path.basename(os.path.abspath(path))}')
