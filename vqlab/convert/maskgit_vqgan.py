"""The MaskGIT VQGAN tokenizer (google-research/maskgit) -> a vqlab 'vqgan'.

The released `tokenizer_imagenet256_checkpoint` is a flax msgpack of
{'params': {'encoder', 'decoder', 'quantizer'}} (maskgit/utils.py reads it
with flax.serialization.from_bytes); it is read here with
`msgpack_restore`, which only decodes data. Parameters keep flax's
automatic names (maskgit/nets/vqgan_tokenizer.py):

  encoder.Conv_0                conv_in (3x3, no bias)
  encoder.ResBlock_k            n res blocks per level, then n in the middle
    .GroupNorm_0/1 .Conv_0/1    (3x3, no bias) .Conv_2 (1x1 shortcut, no bias)
  encoder.GroupNorm_0, Conv_1   norm_out, conv_out (1x1 to the code dim)
  decoder.Conv_0                conv_in (3x3)
  decoder.ResBlock_k            n middle blocks, then n per level
  decoder.Conv_1 .. Conv_{L-1}  the convs after each nearest upsampling
  decoder.GroupNorm_0, Conv_L   norm_out, the conv to pixels
  quantizer.codebook            [K, d], nearest code by squared distance

The widths, levels and res blocks per level are read from the shapes; the
GroupNorm group count (flax's default 32) is an option. The network works
on [0, 1] pixels (`unit_pixels`), and its res blocks project the branch
output in the shortcut (`shortcut_quirk`, on by default: that is how the
checkpoint was trained).
"""

import os
import re

from absl import logging
import flax.serialization
import ml_collections
import numpy as np

from vqlab import tokenizers
from vqlab.convert import published
from vqlab.errors import WeightsError

OPTIONS = {
    'shortcut_quirk': (bool, True, 'reproduce the published res-block '
                       'shortcut (projects the branch output)'),
    'num_groups': (int, 32, 'GroupNorm groups (flax default: 32)'),
    'image_size': (int, 256, 'resolution the checkpoint was trained at'),
}

_RES_BLOCK = re.compile(r'^(encoder|decoder)\.ResBlock_(\d+)\.')
_CONV = re.compile(r'^decoder\.Conv_(\d+)\.kernel$')
_RES_NAMES = {
    'GroupNorm_0': 'norm1',
    'Conv_0': 'conv1',
    'GroupNorm_1': 'norm2',
    'Conv_1': 'conv2',
    'Conv_2': 'shortcut'
}


def read_msgpack(path: str) -> dict[str, np.ndarray]:
  """A flax msgpack checkpoint -> flat {'a.b.c': array} of its 'params'
  (or of the whole tree when there is no 'params' entry). Never runs code.

  Raises:
    WeightsError: missing file or not a flax msgpack of arrays.
  """
  try:
    with open(path, 'rb') as f:
      tree = flax.serialization.msgpack_restore(f.read())
  except FileNotFoundError:
    raise WeightsError(f'{path}: no such file') from None
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f'{path}: not a flax msgpack checkpoint '
                       f'({type(e).__name__}: {e})') from None
  if not isinstance(tree, dict):
    raise WeightsError(f'{path}: expected a dict of parameters, got '
                       f'{type(tree).__name__}')
  if 'params' in tree:
    others = [
        str(key)
        for key, value in tree.items()
        if key != 'params' and _flat_arrays(value)
    ]
    if others:
      logging.warning(
          "%s: converting its 'params'; %s beside them (an EMA copy?) are "
          'not read.', path, others)
  tree = tree.get('params', tree)
  if not isinstance(tree, dict):
    raise WeightsError(f"{path}: expected 'params' to be a dict of "
                       f'parameters, got {type(tree).__name__}')
  return _flat_arrays(tree)


def _flat_arrays(tree) -> dict[str, np.ndarray]:
  """The arrays in nested dicts as {'a.b.c': array}; {} for a non-dict."""
  flat = {}

  def visit(node, prefix):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, dict):
        visit(value, name + '.')
      elif isinstance(value, np.ndarray):
        flat[name] = value

  if isinstance(tree, dict):
    visit(tree, '')
  return flat


def _count(keys, pattern: re.Pattern, part: str) -> int:
  found = {
      int(m.group(2))
      for k in keys
      if (m := pattern.match(k)) and m.group(1) == part
  }
  return max(found) + 1 if found else 0


def _architecture(sd: published.StateDict) -> dict:
  """Widths and depths of the checkpoint, from its shapes."""
  keys = sd.keys()
  filters = sd.shape('encoder.Conv_0.kernel')[-1]
  codebook_size, code_dim = sd.shape('quantizer.codebook')
  decoder_convs = [int(m.group(1)) for k in keys if (m := _CONV.match(k))]
  levels = max(decoder_convs, default=0)  # Conv_0 .. Conv_L: L + 1 convs.
  encoder_blocks = _count(keys, _RES_BLOCK, 'encoder')
  if levels < 1 or encoder_blocks % (levels + 1):
    raise WeightsError(
        f'{sd.source}: {encoder_blocks} encoder res blocks and {levels + 1} '
        'decoder convs do not fit the MaskGIT VQGAN layout')
  num_res_blocks = encoder_blocks // (levels + 1)
  multipliers = []
  for level in range(levels):
    width = sd.shape(f'encoder.ResBlock_{level * num_res_blocks}.Conv_1.'
                     'kernel')[-1]
    if width % filters:
      raise WeightsError(f'{sd.source}: level {level} width {width} is not a '
                         f'multiple of the base width {filters}')
    multipliers.append(width // filters)
  return dict(filters=filters, multipliers=tuple(multipliers),
              num_res_blocks=num_res_blocks, codebook_size=codebook_size,
              code_dim=code_dim)


# The released ImageNet 256x256 tokenizer (tokenizer_imagenet256_checkpoint,
# maskgit/configs/vqgan_config.py), as _architecture reads its shapes.
RELEASED_ARCHITECTURE = dict(filters=128, multipliers=(1, 1, 2, 2, 4),
                             num_res_blocks=2, codebook_size=1024, code_dim=256)


def released_model_config() -> ml_collections.ConfigDict:
  """The vqlab config of the released MaskGIT VQGAN: what converting its
  checkpoint (with the default options) writes."""
  return model_config(RELEASED_ARCHITECTURE)


def model_config(arch: dict, num_groups: int = 32,
                 shortcut_quirk: bool = True) -> ml_collections.ConfigDict:
  """The vqlab 'vqgan' config of a MaskGIT VQGAN with `arch`'s sizes."""
  config = tokenizers.default_config('vqgan')
  config.channels = arch['filters']
  config.channel_multipliers = arch['multipliers']
  config.num_res_blocks = arch['num_res_blocks']
  config.attention_levels = ()
  config.mid_attention = False
  config.z_channels = arch['code_dim']
  config.num_groups = num_groups
  config.mid_res_blocks = arch['num_res_blocks']
  config.decoder_extra_block = False
  config.downsample = 'avg_pool'
  config.res_conv_bias = False
  config.conv_in_bias = False
  config.conv_out_kernel = 1
  config.quant_convs = False
  config.shortcut_quirk = shortcut_quirk
  config.unit_pixels = True
  config.quantizer.codebook_size = arch['codebook_size']
  config.quantizer.embedding_dim = arch['code_dim']
  config.quantizer.l2_normalize = False
  return config


def _layer(sd: published.StateDict, prefix: str, bias: bool) -> dict:
  out = {'kernel': sd.take(f'{prefix}.kernel')}
  if bias:
    out['bias'] = sd.take(f'{prefix}.bias')
  return out


def _norm(sd: published.StateDict, prefix: str) -> dict:
  return {
      'scale': sd.take(f'{prefix}.scale'),
      'bias': sd.take(f'{prefix}.bias')
  }


def _res_blocks(sd: published.StateDict, part: str, count: int) -> dict:
  blocks = {}
  for k in range(count):
    src, block = f'{part}.ResBlock_{k}', {}
    for theirs, ours in _RES_NAMES.items():
      if theirs.startswith('GroupNorm'):
        block[ours] = _norm(sd, f'{src}.{theirs}')
      elif f'{src}.{theirs}.kernel' in sd:
        block[ours] = _layer(sd, f'{src}.{theirs}', bias=False)
    blocks[f'ResBlock2D_{k}'] = block
  return blocks


def convert_params(sd: published.StateDict, arch: dict) -> dict:
  """The vqlab VQGAN param tree of a MaskGIT checkpoint (`sd`: flat flax
  names as `read_msgpack` gives them)."""
  levels = len(arch['multipliers'])
  blocks = arch['num_res_blocks'] * (levels + 1)
  encoder = {
      'conv_in':
          _layer(sd, 'encoder.Conv_0', bias=False),
      **_res_blocks(sd, 'encoder', blocks), 'norm_out':
          _norm(sd, 'encoder.GroupNorm_0'),
      'conv_out':
          _layer(sd, 'encoder.Conv_1', bias=True)
  }
  decoder = {
      'conv_in':
          _layer(sd, 'decoder.Conv_0', bias=True),
      **_res_blocks(sd, 'decoder', blocks), 'norm_out':
          _norm(sd, 'decoder.GroupNorm_0')
  }
  for j in range(1, levels):
    decoder[f'Upsample2D_{j - 1}'] = {
        'conv': _layer(sd, f'decoder.Conv_{j}', bias=True)
    }
  return {
      'encoder': encoder,
      'decoder': decoder,
      'to_pixels': _layer(sd, f'decoder.Conv_{levels}', bias=True),
      'quantizer': {
          'codebook': sd.take('quantizer.codebook')
      }
  }


def convert_state_dict(tensors: dict[str, np.ndarray], source: str, *,
                       shortcut_quirk: bool = True, num_groups: int = 32,
                       image_size: int = 256) -> published.Converted:
  """Flat flax names -> Converted (every tensor used, every param filled)."""
  sd = published.StateDict(tensors, source)
  arch = _architecture(sd)
  shortcuts = [sd.shape(k) for k in sd.keys() if k.endswith('.Conv_2.kernel')]
  if not shortcut_quirk and shortcuts and shortcuts[0][-2] == shortcuts[0][-1]:
    raise WeightsError(
        f'{source}: its shortcut kernels {shortcuts[0]} take the res-block '
        'output, not its input: they only fit shortcut_quirk=True')
  config = model_config(arch, num_groups, shortcut_quirk)
  params = convert_params(sd, arch)
  sd.check_all_used()
  published.check_params_match(params,
                               published.expected_tokenizer_params(config),
                               source)
  return published.Converted(model_config=config, params=params,
                             image_size=image_size, source=source)


def convert_file(path: str, *, shortcut_quirk: bool = True,
                 num_groups: int = 32,
                 image_size: int = 256) -> published.Converted:
  """A MaskGIT tokenizer checkpoint file -> Converted."""
  source = f'MaskGIT VQGAN {os.path.basename(path)} (google-research/maskgit)'
  return convert_state_dict(read_msgpack(path), source,
                            shortcut_quirk=shortcut_quirk,
                            num_groups=num_groups, image_size=image_size)
