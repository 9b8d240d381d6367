"""Open-MAGVIT2 image tokenizers (TencentARC) -> a vqlab 'magvit2'.

The released ImageNet 128 / 256 tokenizers (configs/Open-MAGVIT2/gpu/
imagenet_lfqgan_{128,256}_L.yaml) are Lightning `.ckpt` files of
`src.Open_MAGVIT2.models.lfqgan.VQModel`, read without unpickling any code.
Under 'state_dict' (src/Open_MAGVIT2/modules/diffusionmodules/
improved_model.py):

  encoder.conv_in                     3x3, no bias
  encoder.down.{i}.block.{j}          ResBlock: norm1 conv1 norm2 conv2
                                      (+ nin_shortcut 1x1), convs without bias
  encoder.down.{i}.downsample         3x3 stride 2, padding 1, bias
  encoder.mid_block.{j}, norm_out, conv_out (1x1 to the 18 LFQ bits)
  decoder.conv_in, decoder.mid_block.{j}
  decoder.adaptive.{i}.gamma / beta   AdaGN Linear(z, C) on z_q's spatial
                                      std / mean, before level i's blocks
  decoder.up.{i}.block.{j}, decoder.up.{i}.upsample.conv1 (3x3 to 4C, then
  depth-to-space with channel order (i, j, C)), norm_out, conv_out
  model_ema.<name without dots>       LitEma copies (use_ema: True), which
                                      their evaluation uses; plus decay and
                                      num_updates
  loss.*                              discriminator (ignored, with its EMA)

The LFQ has no parameters: bit d of a token is z_d > 0 with weight 2^d
(channel 0 least significant); with token_factorization and
`factorized_bits: [f0, f1]` the two sub-tokens are bits 0..f0-1 and the rest,
which is vqlab's lfq with factor_bits (f0, f1). Every released Open-MAGVIT2
generator config has [6, 12], the default here (LFQ's own default is
[9, 9]); `factor_bits='none'` gives the plain 2^18 index instead.
"""

import os

import ml_collections
import numpy as np

from vqlab import quantizers
from vqlab import tokenizers
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.weights import torch_files

OPTIONS = {
    'ema': (bool, True, 'use the EMA weights (model_ema.*) when the file has '
            'them, as Open-MAGVIT2 evaluates its tokenizers (its generators '
            'were trained on the raw weights\' tokens: --ema=false to pair '
            'with them)'),
    'factor_bits': (str, 'auto', 'bits of each sub-token, low bits first, '
                    'as their generator config\'s factorized_bits; auto: 6,12 '
                    'for 18 bits (every released generator), else halves; '
                    'none: one index'),
    'image_size': (int, 256, 'resolution the checkpoint was trained at '
                   '(128 or 256)'),
    'scan_blocks': (bool, False, 'store each stage\'s res blocks stacked for '
                    'model.scan_blocks = True (faster compiles)'),
}

NUM_GROUPS = 32  # improved_model.py: every GroupNorm has 32 groups.
_EMA = 'model_ema.'
_IGNORED = ('loss.', 'model_ema.loss', 'model_ema.decay',
            'model_ema.num_updates')


def _ema_view(tensors, source: str) -> dict[str, np.ndarray]:
  """{encoder./decoder. name: its EMA tensor}; WeightsError if one lacks it."""
  view, missing = {}, []
  for key in tensors:
    if key.startswith(('encoder.', 'decoder.')):
      ema_key = _EMA + key.replace('.', '')
      if ema_key in tensors:
        view[key] = tensors[ema_key]
      else:
        missing.append(ema_key)
  if missing:
    raise WeightsError(f'{source}: no EMA copy of {len(missing)} tensors '
                       f'({", ".join(missing[:4])}); pass --ema=false to use '
                       'the raw weights')
  unknown = sorted(
      set(k for k in tensors
          if k.startswith(_EMA) and not k.startswith(_IGNORED)) -
      {_EMA + k.replace('.', '') for k in view})
  if unknown:
    raise WeightsError(f'{source}: EMA tensors with no model tensor: '
                       f'{", ".join(unknown[:6])}')
  return view


def parse_factor_bits(text: str, bits: int) -> tuple[int, ...]:
  """'6,12' -> (6, 12); 'none' or '' -> () (plain indices); 'auto' -> (6, 12)
  for 18 bits (Open-MAGVIT2's released generators), else the two halves.

  Raises:
    WeightsError: not integers >= 1 summing to the checkpoint's `bits`.
  """
  if text.strip().lower() in ('', 'none'):
    return ()
  if text.strip().lower() == 'auto':
    return (6, 12) if bits == 18 else ((bits - bits // 2,
                                        bits // 2) if bits > 1 else ())
  try:
    factors = tuple(int(f) for f in text.split(','))
  except ValueError:
    factors = ()
  if not factors or min(factors) < 1 or sum(factors) != bits:
    raise WeightsError(f'--factor_bits={text}: need bits per sub-token that '
                       f'sum to the checkpoint\'s {bits} LFQ bits, e.g. '
                       f'{bits - bits // 2},{bits // 2}, or none')
  return factors


def infer_config(sd: published.StateDict,
                 factor_bits: str) -> ml_collections.ConfigDict:
  """The vqlab 'magvit2' model config of an Open-MAGVIT2 state dict."""
  widths = published.taming_encoder_widths(sd, 'an Open-MAGVIT2 state dict')
  bits = sd.shape('encoder.conv_out.weight')[0]
  if not 1 <= bits <= 30:
    raise WeightsError(f'{sd.source}: encoder.conv_out has {bits} channels; '
                       'LFQ needs 1..30 bits')
  config = tokenizers.default_config('magvit2')
  config.in_channels = widths.in_channels
  config.channels = widths.channels
  config.channel_multipliers = widths.channel_multipliers
  config.num_res_blocks = widths.num_res_blocks
  config.num_temporal_downsamples = 0
  config.temporal_kernel = 1
  config.num_groups = NUM_GROUPS
  config.conv_bias = False
  config.downsample_padding = 'symmetric'
  config.adaptive_norm = 'pooled'
  config.quantizer = quantizers.default_config('lfq')
  config.quantizer.codebook_size = 2**bits
  config.quantizer.factor_bits = parse_factor_bits(factor_bits, bits)
  return config


def _conv(sd: published.StateDict, prefix: str, bias: bool = True) -> dict:
  """A Conv2d as a CausalConv3D with k_t = 1."""
  conv = sd.conv(prefix, bias=bias)
  conv['kernel'] = conv['kernel'][None]
  return conv


def _res_block(sd: published.StateDict, prefix: str) -> dict:
  block = {
      'norm1': sd.norm(f'{prefix}.norm1'),
      'conv1': _conv(sd, f'{prefix}.conv1', bias=False),
      'norm2': sd.norm(f'{prefix}.norm2'),
      'conv2': _conv(sd, f'{prefix}.conv2', bias=False)
  }
  if f'{prefix}.nin_shortcut.weight' in sd:
    block['shortcut'] = _conv(sd, f'{prefix}.nin_shortcut', bias=False)
  return block


def _encoder(sd: published.StateDict, config) -> dict:
  tree = {'conv_in': _conv(sd, 'encoder.conv_in', bias=False)}
  n, last = 0, len(config.channel_multipliers) - 1
  for level in range(last + 1):
    for j in range(config.num_res_blocks):
      tree[f'ResBlock3D_{n}'] = _res_block(sd,
                                           f'encoder.down.{level}.block.{j}')
      n += 1
    if level != last:
      tree[f'downsample_{level}'] = _conv(sd,
                                          f'encoder.down.{level}.downsample')
  for j in range(config.num_res_blocks):
    tree[f'ResBlock3D_{n}'] = _res_block(sd, f'encoder.mid_block.{j}')
    n += 1
  tree['norm_out'] = sd.norm('encoder.norm_out')
  tree['conv_out'] = _conv(sd, 'encoder.conv_out')
  return tree


def _decoder(sd: published.StateDict, config) -> dict:
  tree = {'conv_in': _conv(sd, 'decoder.conv_in')}
  n = 0
  for j in range(config.num_res_blocks):
    tree[f'ResBlock3D_{n}'] = _res_block(sd, f'decoder.mid_block.{j}')
    n += 1
  levels = len(config.channel_multipliers)
  for k, level in enumerate(reversed(range(levels))):
    tree[f'AdaptiveGroupNorm_{k}'] = {
        'scale': sd.linear(f'decoder.adaptive.{level}.gamma'),
        'shift': sd.linear(f'decoder.adaptive.{level}.beta')
    }
    for j in range(config.num_res_blocks):
      tree[f'ResBlock3D_{n}'] = _res_block(sd, f'decoder.up.{level}.block.{j}')
      n += 1
    if level > 0:
      tree[f'CausalUpsample3D_{k}'] = {
          'conv': _conv(sd, f'decoder.up.{level}.upsample.conv1')
      }
  tree['norm_out'] = sd.norm('decoder.norm_out')
  return tree


def convert_state_dict(tensors, *, ema: bool = True, factor_bits: str = 'auto',
                       image_size: int = 256, scan_blocks: bool = False,
                       source: str = 'Open-MAGVIT2') -> published.Converted:
  """A flat Open-MAGVIT2 VQModel state dict {key: array} -> Converted.

  Raises:
    WeightsError: a tensor is missing, left over or has the wrong shape.
  """
  has_ema = any(
      k.startswith(_EMA) and not k.startswith(_IGNORED) for k in tensors)
  weights = 'EMA' if ema and has_ema else 'raw'
  if weights == 'EMA':
    view = _ema_view(tensors, source)
    leftover = {
        k: v
        for k, v in tensors.items()
        if not k.startswith(('encoder.', 'decoder.', _EMA))
    }
    sd = published.StateDict({**view, **leftover}, source)
  else:
    sd = published.StateDict(tensors, source)
  config = tokenizers.validate(infer_config(sd, factor_bits), 'model')
  params = {
      'encoder': _encoder(sd, config),
      'decoder': _decoder(sd, config),
      'to_pixels': _conv(sd, 'decoder.conv_out')
  }
  sd.check_all_used(ignore_prefixes=_IGNORED + (_EMA,))
  factor = 2**(len(config.channel_multipliers) - 1)
  bits = int(config.quantizer.codebook_size).bit_length() - 1
  description = (f'{source} (f{factor}, 2^{bits} LFQ, '
                 f'{weights} weights)')
  config.scan_blocks = bool(scan_blocks)
  expected = published.expected_tokenizer_params(config)
  if scan_blocks:
    params = stack.stack_like(params, expected)
  published.check_params_match(params, expected, description)
  return published.Converted(model_config=config, params=params,
                             image_size=image_size, source=description)


def convert_file(path: str, ema: bool = True, factor_bits: str = 'auto',
                 image_size: int = 256,
                 scan_blocks: bool = False) -> published.Converted:
  """An Open-MAGVIT2 `.ckpt` -> Converted."""
  tensors = torch_files.load_state_dict(path, lenient=True)
  return convert_state_dict(
      tensors, ema=ema, factor_bits=factor_bits, image_size=image_size,
      scan_blocks=scan_blocks,
      source=f'Open-MAGVIT2 {os.path.basename(os.path.abspath(path))}')
