"""VQ-Diffusion's released class-conditional ImageNet network
(microsoft/VQ-Diffusion `imagenet_pretrained.pth`, `imagenet_learnable.pth`)
-> vqlab VQ-Diffusion params with `block_style = 'release'` (the same
network, vqlab.nn.vq_diffusion_release).

The release's solver saves {'model': C_DALLE's state dict, 'ema': the EMA
DiffusionTransformer's, ...}, read without unpickling any code; the network
(Condition2ImageTransformer of configs/imagenet.yaml) is under
'ema.transformer.' (taken when present, as the release's inference does) or
'model.transformer.transformer.':

  content_emb.emb.weight            [K + 1, D]: codes and [MASK]
  content_emb.{height,width}_emb.weight   [R, D], [C, D] position tables
  blocks.{i}.ln1.emb.weight         [T, D] timestep table; ln1.linear
                                    Linear D -> 2D (scale, shift)
  blocks.{i}.ln2.emb.weight         [classes, D] class table; ln2.linear
  blocks.{i}.attn.{query,key,value,proj}   Linear D -> D
  blocks.{i}.mlp.conv{1,2}          Conv2d 3x3, D -> M -> D
  to_logits.0, to_logits.1          LayerNorm, Linear D -> K

The head count and the token grid, which no tensor holds, are the ImageNet
config's (16 heads, 16 x 16 tokens) unless given. A class table of 1000
rows takes the null class as the mean of its rows (`model.null_class =
'mean'`); with `--num_classes=1000` a table of 1001 rows (the release's
imagenet_learnable, class_number 1001) takes its last row. The diffusion
buffers (log_at, Lt_history, ...) and the codec ('content_codec.') are not
converted; the schedule is vqlab's (the release's 'alpha1' defaults).

Not converted: the tokenizer. The release's codes are 974 of the taming
VQGAN f16-16384's, picked by help_folder/statistics/taming_vqvae_974.pt,
(encoded by the full codebook's nearest code, then mapped), and vqlab has
no tokenizer that maps its codes so: there is no `python -m vqlab.convert`
kind for it, and no run is written. `convert_file` gives the model config
and params, checked against the network (to train from, or to compare
with).
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vqlab import generators
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.nn import stack
from vqlab.weights import torch_files

OPTIONS = {
    'num_heads': (int, 16, "attention heads (the config's n_head, which no "
                  'tensor holds; the ImageNet model: 16)'),
    'grid_size': (int, 16, 'tokens per side of the square content grid (the '
                  'config\'s content_spatial_size; ImageNet: 16)'),
    'num_classes': (int, -1, 'classes; -1: the rows of the class tables, '
                    'the null class the mean of them; one fewer than the '
                    'rows: the last row is the null class (imagenet_'
                    'learnable)'),
    'scan_layers': (bool, False, 'params of one scanned block stack; false: '
                    'block_<i>'),
}

# The network's prefixes, in the order they are looked for.
PREFIXES = ('ema.transformer.', 'model.transformer.transformer.')


def _network_prefix(sd: published.StateDict) -> str:
  for prefix in PREFIXES:
    if prefix + 'content_emb.emb.weight' in sd:
      return prefix
  raise WeightsError(f'{sd.source}: no {PREFIXES[-1]}content_emb.emb.weight '
                     "(nor under 'ema.transformer.'): not a VQ-Diffusion "
                     'checkpoint')


def _architecture(sd: published.StateDict, prefix: str, num_heads: int,
                  grid_size: int, num_classes: int) -> dict[str, Any]:
  states, width = sd.shape(prefix + 'content_emb.emb.weight')
  layers = sd.indices(re.escape(prefix) + r'blocks\.(\d+)\.')
  if (not layers or layers != list(range(len(layers))) or
      prefix + 'blocks.0.ln2.emb.weight' not in sd or
      prefix + 'blocks.0.mlp.conv1.weight' not in sd):
    raise WeightsError(
        f'{sd.source}: not the release\'s class-conditional network '
        '(Condition2ImageTransformer with class AdaLN norms and conv MLPs); '
        'only that one converts')
  class_rows = sd.shape(prefix + 'blocks.0.ln2.emb.weight')[0]
  if num_classes not in (-1, class_rows, class_rows - 1):
    raise WeightsError(f'{sd.source}: class tables of {class_rows} rows do '
                       f'not hold {num_classes} classes (+ a null row)')
  if num_heads < 1 or width % num_heads:
    raise WeightsError(f'{sd.source}: {num_heads} heads do not divide the '
                       f'width {width}')
  grid = (sd.shape(prefix + 'content_emb.height_emb.weight')[0],
          sd.shape(prefix + 'content_emb.width_emb.weight')[0])
  if grid[0] * grid[1] < grid_size**2:
    raise WeightsError(f'{sd.source}: position tables of {grid} cells are '
                       f'fewer than {grid_size} x {grid_size} tokens')
  return dict(vocab_size=states - 1, width=width, num_layers=len(layers),
              num_heads=num_heads, token_shape=(grid_size,
                                                grid_size), position_grid=grid,
              num_timesteps=sd.shape(prefix + 'blocks.0.ln1.emb.weight')[0],
              mlp_dim=sd.shape(prefix + 'blocks.0.mlp.conv1.weight')[0],
              num_classes=class_rows if num_classes < 0 else num_classes,
              null_class='row' if num_classes == class_rows - 1 else 'mean')


def model_config(arch: dict[str, Any],
                 scan_layers: bool) -> ml_collections.ConfigDict:
  """The vqlab VQ-Diffusion config of the release's network of `arch`."""
  config = generators.default_config('vq_diffusion')
  config.update(arch)
  config.update(condition='class', block_style='release', dropout_rate=0.0,
                scan_layers=scan_layers)
  return config


def _ada_norm(sd: published.StateDict, prefix: str) -> dict[str, Any]:
  return {
      'embedding': sd.take(f'{prefix}.emb.weight'),
      'modulation': sd.linear(f'{prefix}.linear')
  }


def _attention(sd: published.StateDict, prefix: str, heads: int) -> dict:
  """The release's query, key, value, proj Linears -> flax
  MultiHeadDotProductAttention's kernels [D, H, D/H] (out [H, D/H, D])."""
  out = {}
  for theirs, ours in (('query', 'query'), ('key', 'key'), ('value', 'value'),
                       ('proj', 'out')):
    out[ours] = published.split_heads(sd.linear(f'{prefix}.{theirs}'), heads,
                                      output=ours == 'out', source=sd.source,
                                      name=f'{prefix}.{theirs}')
  return out


def convert_params(sd: published.StateDict, prefix: str,
                   arch: dict[str, Any]) -> dict[str, Any]:
  """The vqlab param tree (unrolled blocks) of the release's network."""
  params = {
      'token_embed': {
          'embedding': sd.take(prefix + 'content_emb.emb.weight')
      },
      'row_embedding': sd.take(prefix + 'content_emb.height_emb.weight'),
      'col_embedding': sd.take(prefix + 'content_emb.width_emb.weight'),
      'final_norm': sd.norm(prefix + 'to_logits.0'),
      'head': sd.linear(prefix + 'to_logits.1'),
  }
  for i in range(arch['num_layers']):
    block = f'{prefix}blocks.{i}'
    params[f'block_{i}'] = {
        'norm_time': _ada_norm(sd, f'{block}.ln1'),
        'self_attention': _attention(sd, f'{block}.attn', arch['num_heads']),
        'norm_class': _ada_norm(sd, f'{block}.ln2'),
        'mlp': {
            'conv1': sd.conv(f'{block}.mlp.conv1'),
            'conv2': sd.conv(f'{block}.mlp.conv2')
        },
    }
  return params


def expected_params(config: ml_collections.ConfigDict) -> Any:
  """ShapeDtypeStructs of the params a vqlab VQ-Diffusion of `config` has."""
  model = generators.build(config)
  tokens = jax.ShapeDtypeStruct((1, *config.token_shape), jnp.int32)
  ids = jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(
      lambda x, t, y: model.init(jax.random.key(0), x, t, y)['params'], tokens,
      ids, ids)


def convert_state_dict(tensors: dict[str,
                                     Any], source: str, *, num_heads: int = 16,
                       grid_size: int = 16, num_classes: int = -1,
                       scan_layers: bool = False) -> published.Converted:
  """A flat release checkpoint (torch_files.load_state_dict names) ->
  Converted (every network tensor used, every param filled; image_size
  16 x grid_size, the f16 codec's).

  Raises:
    WeightsError: not the release's class-conditional network, or settings
      that do not fit it; the message names `source`.
  """
  sd = published.StateDict(tensors, source)
  prefix = _network_prefix(sd)
  arch = _architecture(sd, prefix, num_heads, grid_size, num_classes)
  config = model_config(arch, scan_layers)
  params = convert_params(sd, prefix, arch)
  others = tuple(p for p in ('ema.', 'model.') if not prefix.startswith(p))
  # The DiffusionTransformer's buffers (log_at, Lt_history, ...), beside
  # its network: 'model.transformer.' or the EMA's 'ema.'.
  diffusion = prefix[:-len('transformer.')]
  network_buffers = tuple(diffusion + name for name in ('log_', 'Lt_'))
  sd.check_all_used(ignore_prefixes=others + network_buffers +
                    ('model.content_codec.',))
  expected = expected_params(config)
  if scan_layers:
    params = stack.stack_like(params, expected)
  published.check_params_match(params, expected, source)
  return published.Converted(model_config=config, params=params,
                             image_size=16 * grid_size, source=source)


def convert_file(path: str, *, num_heads: int = 16, grid_size: int = 16,
                 num_classes: int = -1,
                 scan_layers: bool = False) -> published.Converted:
  """A release checkpoint file -> Converted (`convert_state_dict`).

  Raises:
    WeightsError: unreadable, or not the release's class-conditional
      network; the message names the file.
  """
  tensors = torch_files.load_state_dict(path, lenient=True)
  return convert_state_dict(
      tensors, f'VQ-Diffusion {os.path.basename(os.path.abspath(path))}',
      num_heads=num_heads, grid_size=grid_size, num_classes=num_classes,
      scan_layers=scan_layers)
