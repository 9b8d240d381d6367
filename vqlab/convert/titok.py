"""Released TiTok tokenizers (bytedance/1d-tokenizer) -> a vqlab 'titok'.

TiTok-L-32, B-64 and S-128 (`yucornetto/tokenizer_titok_*_imagenet`:
model.safetensors or pytorch_model.bin) are read without running pickled
code. PyTorch names (modeling/titok.py, modeling/modules/blocks.py,
modeling/quantizer/quantizer.py, modeling/modules/maskgit_vqgan.py):

  latent_tokens [K, D]; quantize.embedding.weight [4096, 12] (cosine VQ)
  encoder.patch_embed, class_embedding, positional_embedding [1 + g*g, D],
    latent_token_positional_embedding, ln_pre, transformer.i.{ln_1,
    attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post,
    conv_out (1x1 to the code dim, after the is_legacy reshape)
  decoder.decoder_embed, class_embedding, positional_embedding, mask_token,
    latent_token_positional_embedding, ln_pre, transformer.i.*, ln_post,
    ffn.0 / ffn.2 (1x1 convs D -> 2D -> 1024 with tanh: proxy-code logits)
  pixel_quantize.embedding.weight [1024, 256]; pixel_decoder.* (the MaskGIT
    VQGAN decoder: conv_in, mid.j, up.i.block.j, up.i.upsample_conv,
    norm_out, conv_out)

The sizes are read from the shapes; attention heads follow the published
table (head width 64) unless given. The class embedding and its position
embedding are summed into vqlab's `class_token`.
"""

import os

import ml_collections
import numpy as np

from vqlab import tokenizers
from vqlab.convert import maskgit_vqgan
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.tokenizers import titok as titok_lib
from vqlab.weights import safetensors_files
from vqlab.weights import torch_files

OPTIONS = {
    'num_heads': (int, 0, 'attention heads of both ViTs (0: width / 64, '
                  'as in the published S/B/L)'),
    'num_groups': (int, 32, 'GroupNorm groups of the pixel decoder'),
    'scan_layers': (bool, False, 'store both ViTs\' blocks stacked for '
                    'model.scan_layers = True (faster compiles)'),
}

_RES_NAMES = {
    'norm1': 'norm1',
    'conv1': 'conv1',
    'norm2': 'norm2',
    'conv2': 'conv2',
    'nin_shortcut': 'shortcut'
}


def read_file(path: str) -> dict[str, np.ndarray]:
  """.safetensors or a torch.save'd state dict -> {name: array}."""
  if path.endswith('.safetensors'):
    return safetensors_files.load_safetensors(path)
  return torch_files.load_state_dict(path)


def _count(sd: published.StateDict, prefix: str) -> int:
  """Number of consecutive `prefix{i}.` entries."""
  found = {
      int(k[len(prefix):].split('.')[0])
      for k in sd.keys()
      if k.startswith(prefix) and k[len(prefix):].split('.')[0].isdigit()
  }
  return max(found) + 1 if found else 0


def _vit_size(sd: published.StateDict, part: str, num_heads: int):
  width = sd.shape(f'{part}.positional_embedding')[1]
  layers = _count(sd, f'{part}.transformer.')
  mlp = sd.shape(f'{part}.transformer.0.mlp.c_fc.weight')[0]
  heads = num_heads or max(width // 64, 1)
  if width % heads:
    raise WeightsError(f'{sd.source}: {heads} heads do not divide width '
                       f'{width}; pass --num_heads')
  return titok_lib.ViTSize(width, layers, heads, mlp)


def _pixel_architecture(sd: published.StateDict) -> dict:
  levels = _count(sd, 'pixel_decoder.up.')
  if not levels:
    raise WeightsError(f'{sd.source}: pixel_decoder.conv_in without '
                       'pixel_decoder.up.<i> blocks: not a TiTok pixel decoder')
  blocks = _count(sd, 'pixel_decoder.up.0.block.')
  widths = [
      sd.shape(f'pixel_decoder.up.{i}.block.0.conv1.weight')[0]
      for i in range(levels)
  ]
  base = widths[0]
  if any(w % base for w in widths):
    raise WeightsError(f'{sd.source}: pixel decoder widths {widths} are not '
                       'multiples of the first')
  codes, dim = sd.shape('pixel_quantize.embedding.weight')
  return dict(filters=base, multipliers=tuple(w // base for w in widths),
              num_res_blocks=blocks, codebook_size=codes, code_dim=dim)


def model_config(sd: published.StateDict, num_heads: int = 0,
                 num_groups: int = 32,
                 scan_layers: bool = False) -> ml_collections.ConfigDict:
  """The vqlab 'titok' config of the checkpoint in `sd`, from its shapes."""
  if 'encoder.patch_embed.weight' not in sd:
    tops = sorted({key.split('.')[0] for key in sd.keys()})
    raise WeightsError(
        f"{sd.source}: no TiTok encoder.patch_embed.weight; the file's "
        f'tensors start with {tops[:8]}: a state dict nested in a training '
        "checkpoint (e.g. under 'model.') must be saved on its own first")
  if 'decoder.conv_out.weight' in sd or 'decoder.ffn.2.weight' not in sd:
    raise WeightsError(f'{sd.source}: only the released (is_legacy) TiTok '
                       'decoder with a proxy-code head is supported')
  encoder = _vit_size(sd, 'encoder', num_heads)
  decoder = _vit_size(sd, 'decoder', num_heads)
  patch = sd.shape('encoder.patch_embed.weight')[-1]
  grid = int(round((sd.shape('encoder.positional_embedding')[0] - 1)**0.5))
  codes, token_size = sd.shape('quantize.embedding.weight')
  config = tokenizers.default_config('titok')
  config.image_size = grid * patch
  config.patch_size = patch
  config.num_latent_tokens = sd.shape('latent_tokens')[0]
  names = {s: n for n, s in titok_lib.PAPER_SIZES.items()}
  if encoder == decoder and encoder in names:
    config.model_size = names[encoder]
  else:
    config.model_size = 'tiny'
  for part, size in (('encoder', encoder), ('decoder', decoder)):
    for key, value in size._asdict().items():
      config[part][key] = value
  config.class_token = True
  config.layer_norm_epsilon = 1e-5
  config.exact_gelu = True
  config.legacy_latent_layout = True
  config.scan_layers = scan_layers
  config.unit_pixels = True
  config.proxy_codebook_size = sd.shape('decoder.ffn.2.weight')[0]
  config.proxy_head_hidden = sd.shape('decoder.ffn.0.weight')[0]
  config.quantizer.codebook_size = codes
  config.quantizer.embedding_dim = token_size
  config.quantizer.l2_normalize = True
  if 'pixel_decoder.conv_in.weight' in sd:
    config.decoder_output = 'proxy_pixels'
    config.pixel_decoder = maskgit_vqgan.model_config(_pixel_architecture(sd),
                                                      num_groups)
    del config.pixel_decoder['name']
  else:
    # A stage-1 checkpoint (finetune_decoder=False): its decoder predicts a
    # VQGAN's codes, and a run of it needs that VQGAN (task 'titok_proxy').
    raise WeightsError(
        f'{sd.source}: a TiTok without the MaskGIT pixel decoder '
        "(pixel_decoder.*): a stage-1 checkpoint, whose decoder predicts a "
        'VQGAN\'s codes; only the released stage-2 tokenizers convert')
  return config


def _attention(sd: published.StateDict, prefix: str, heads: int) -> dict:
  weight = sd.take(f'{prefix}.in_proj_weight')
  bias = sd.take(f'{prefix}.in_proj_bias')
  width = weight.shape[-1]
  if weight.shape != (3 * width, width) or bias.shape != (3 * width,):
    raise WeightsError(
        f'{sd.source}: {prefix}.in_proj_weight has shape {weight.shape} and '
        f'in_proj_bias {bias.shape}; an attention needs [3D, D] and [3D]')
  out = {}
  for i, name in enumerate(('query', 'key', 'value')):
    rows = slice(i * width, (i + 1) * width)
    out[name] = published.split_heads(
        {
            'kernel': weight[rows].T,
            'bias': bias[rows]
        }, heads, output=False, source=sd.source,
        name=f'{prefix}.in_proj_weight[{name}]')
  out['out'] = published.split_heads(sd.linear(f'{prefix}.out_proj'), heads,
                                     output=True, source=sd.source,
                                     name=f'{prefix}.out_proj')
  return out


def _vit(sd: published.StateDict, part: str, size, scan_layers: bool) -> dict:
  pos = sd.take(f'{part}.positional_embedding')
  cls = sd.take(f'{part}.class_embedding')
  blocks = {}
  for i in range(size.num_layers):
    src = f'{part}.transformer.{i}'
    blocks[f'block_{i}'] = {
        'norm1': sd.norm(f'{src}.ln_1'),
        'attention': _attention(sd, f'{src}.attn', size.num_heads),
        'norm2': sd.norm(f'{src}.ln_2'),
        'mlp': {
            'fc1': sd.linear(f'{src}.mlp.c_fc'),
            'fc2': sd.linear(f'{src}.mlp.c_proj')
        }
    }
  blocks['final_norm'] = sd.norm(f'{part}.ln_post')
  if scan_layers:
    blocks = stack.stack_layers(blocks)
  return {
      'class_token': cls[0] + pos[0],
      'grid_position': {
          'embedding': pos[1:]
      },
      'latent_position': {
          'embedding': sd.take(f'{part}.latent_token_positional_embedding')
      },
      'norm_pre': sd.norm(f'{part}.ln_pre'),
      'transformer': blocks
  }


def _dense_from_1x1(sd: published.StateDict, prefix: str) -> dict:
  conv = sd.conv(prefix)
  return {'kernel': conv['kernel'][0, 0], 'bias': conv['bias']}


def _pixel_decoder(sd: published.StateDict, arch: dict) -> dict:
  n, levels = arch['num_res_blocks'], len(arch['multipliers'])

  def block(src):
    out = {}
    for theirs, ours in _RES_NAMES.items():
      if theirs.startswith('norm'):
        out[ours] = sd.norm(f'{src}.{theirs}')
      elif f'{src}.{theirs}.weight' in sd:
        out[ours] = sd.conv(f'{src}.{theirs}', bias=False)
    return out

  decoder = {
      'conv_in': sd.conv('pixel_decoder.conv_in'),
      'norm_out': sd.norm('pixel_decoder.norm_out')
  }
  for j in range(n):
    decoder[f'ResBlock2D_{j}'] = block(f'pixel_decoder.mid.{j}')
  for i in range(levels):  # Run from the last level to the first.
    for j in range(n):
      decoder[f'ResBlock2D_{n + (levels - 1 - i) * n + j}'] = block(
          f'pixel_decoder.up.{i}.block.{j}')
    if i:
      decoder[f'Upsample2D_{levels - 1 - i}'] = {
          'conv': sd.conv(f'pixel_decoder.up.{i}.upsample_conv')
      }
  return {
      'decoder': decoder,
      'to_pixels': sd.conv('pixel_decoder.conv_out'),
      'quantizer': {
          'codebook': sd.take('pixel_quantize.embedding.weight')
      }
  }


def convert_params(sd: published.StateDict,
                   config: ml_collections.ConfigDict) -> dict:
  """The vqlab TiTok param tree of the checkpoint in `sd`."""
  model = tokenizers.build(config)
  encoder = _vit(sd, 'encoder', model.encoder_size, config.scan_layers)
  encoder['patch_embed'] = {'proj': sd.conv('encoder.patch_embed')}
  encoder['latent_tokens'] = sd.take('latent_tokens')
  encoder['to_code'] = _dense_from_1x1(sd, 'encoder.conv_out')
  decoder = _vit(sd, 'decoder', model.decoder_size, config.scan_layers)
  decoder['from_code'] = sd.linear('decoder.decoder_embed')
  decoder['mask_token'] = sd.take('decoder.mask_token').reshape(-1)
  params = {
      'encoder': encoder,
      'decoder': decoder,
      'quantizer': {
          'codebook': sd.take('quantize.embedding.weight')
      },
      'proxy_hidden': _dense_from_1x1(sd, 'decoder.ffn.0'),
      'to_proxy_logits': _dense_from_1x1(sd, 'decoder.ffn.2')
  }
  if config.decoder_output == 'proxy_pixels':
    pixel = config.pixel_decoder
    params['pixel_vqgan'] = _pixel_decoder(
        sd,
        dict(num_res_blocks=pixel.num_res_blocks,
             multipliers=tuple(pixel.channel_multipliers)))
  return params


def convert_state_dict(tensors: dict[str, np.ndarray], source: str, *,
                       num_heads: int = 0, num_groups: int = 32,
                       scan_layers: bool = False) -> published.Converted:
  """PyTorch names -> Converted (every tensor used, every param filled)."""
  sd = published.StateDict(tensors, source)
  config = model_config(sd, num_heads, num_groups, scan_layers)
  params = convert_params(sd, config)
  # clustering_vq's usage statistics are a training buffer.
  sd.check_all_used(ignore_prefixes=('quantize.embed_prob',))
  published.check_params_match(params,
                               published.expected_tokenizer_params(config),
                               source)
  return published.Converted(model_config=config, params=params,
                             image_size=config.image_size, source=source)


def convert_file(path: str, *, num_heads: int = 0, num_groups: int = 32,
                 scan_layers: bool = False) -> published.Converted:
  """A released TiTok file (.safetensors, .bin, .pth) -> Converted."""
  source = f'TiTok {os.path.basename(path)} (bytedance/1d-tokenizer)'
  return convert_state_dict(read_file(path), source, num_heads=num_heads,
                            num_groups=num_groups, scan_layers=scan_layers)
