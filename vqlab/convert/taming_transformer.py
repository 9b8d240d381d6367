"""taming-transformers' GPT (CompVis) -> a vqlab GPT run.

The released transformers (`2021-04-03T19-39-50_cin_transformer`, the
class-conditional ImageNet one; the unconditional ffhq / celebahq ones) are
PyTorch-Lightning `last.ckpt` files of `taming.models.cond_transformer.
Net2NetTransformer`, read without unpickling any code. Its GPT
(taming/modules/transformer/mingpt.py) is under 'transformer.':

  tok_emb.weight            [V, D]: the code table; the condition is a
                            token index into it too (the class, taming's
                            Labelator; the start token, SOSProvider)
  pos_emb                   [1, 1 + N - 1, D]
  blocks.{i}.ln1, ln2       LayerNorm (eps 1e-5)
  blocks.{i}.attn.{query,key,value,proj}   Linear D -> D
  blocks.{i}.attn.mask      the causal mask (a buffer, not converted)
  blocks.{i}.mlp.0, mlp.2   Linear D -> 4D -> D, erf GELU between
  ln_f, head                LayerNorm, Linear D -> V without bias

It becomes a vqlab GPT with `block_style = 'taming'` (the same network): its
class table is the class rows of tok_emb and the null class, which the
release never trained (the row is zeros and the run's `loss.label_drop` 0,
which keeps `sample.guidance_scale` at 0); an unconditional model's start
embedding is tok_emb's start-token row. The first stage (`first_stage_model.`:
the VQGAN) is converted on its own (`python -m vqlab.convert taming_vqgan`
of this same file, or of the VQGAN's own checkpoint) and named by
`--tokenizer`, whose codebook must be the first stage's. Transformers with a
spatial condition stage (depth, segmentation: a second VQGAN) or a
non-identity permuter are refused.
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import generators
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.train import trained_tokenizer
from vqlab.weights import torch_files

OPTIONS = {
    'tokenizer': (str, '', 'the run of the converted taming VQGAN whose codes '
                  'the transformer generates (python -m vqlab.convert '
                  'taming_vqgan ...); required'),
    'num_heads': (int, 0, "attention heads (the config's n_head, which no "
                  'tensor holds); 0: read from the release\'s '
                  'configs/*-project.yaml next to checkpoints/'),
    'num_classes': (int, -1, 'classes of a class-conditional transformer '
                    '(cin: 1000), 0 for an unconditional one (ffhq, '
                    'celebahq); -1: read from the project yaml'),
    'sos_token': (int, -1, 'the start token of an unconditional transformer '
                  '(SOSProvider); -1: read from the project yaml, else 0 (the '
                  "releases')"),
    'scan_layers': (bool, True, 'params of one scanned block stack (as '
                    'configs/gpt/imagenet256.py trains); false: block_<i>'),
}

_PREFIX = 'transformer.'
# Converted apart (the VQGAN) or holding nothing (Labelator, SOSProvider).
IGNORED_PREFIXES = ('first_stage_model.', 'cond_stage_model.')

# taming's README samples: `sample_fast.py -k 600 -t 1.0 -p 0.92` (cin),
# `-k 250 -t 1.0 -p 1.0` (ffhq, celebahq); no null class was trained.
RUN_SETTINGS = {
    'class': {
        'loss.label_drop': 0.0,
        'sample.top_k': 600,
        'sample.top_p': 0.92,
        'eval.inception_input': 'tf'
    },
    'none': {
        'sample.top_k': 250,
        'eval.inception_input': 'tf'  # torch-fidelity's FID (PROTOCOLS.md).
    },
}


def _linear(sd: published.StateDict, prefix: str) -> dict[str, np.ndarray]:
  return sd.linear(_PREFIX + prefix)


def _attention(sd: published.StateDict, prefix: str, heads: int) -> dict:
  """minGPT's q, k, v, proj Linears -> flax MultiHeadDotProductAttention's
  DenseGeneral kernels [D, H, D/H] (out: [H, D/H, D]) and biases."""
  out = {}
  for theirs, ours in (('query', 'query'), ('key', 'key'), ('value', 'value'),
                       ('proj', 'out')):
    out[ours] = published.split_heads(_linear(sd, f'{prefix}.{theirs}'), heads,
                                      output=ours == 'out', source=sd.source,
                                      name=_PREFIX + f'{prefix}.{theirs}')
  return out


def _architecture(sd: published.StateDict, codebook_size: int, num_classes: int,
                  num_heads: int) -> dict:
  vocab, width = sd.shape(_PREFIX + 'tok_emb.weight')
  if vocab != codebook_size:
    raise WeightsError(f"{sd.source}: a token table of {vocab} rows, but the "
                       f"tokenizer's codebook has {codebook_size} codes")
  if num_classes > vocab:
    raise WeightsError(f'{sd.source}: {num_classes} classes do not fit the '
                       f'token table of {vocab} rows (taming embeds the class '
                       'as a token)')
  positions = sd.shape(_PREFIX + 'pos_emb')
  layers = sd.indices(r'transformer\.blocks\.(\d+)\.')
  if not layers or layers != list(range(len(layers))):
    raise WeightsError(f'{sd.source}: no transformer.blocks.<i> tensors; not '
                       'a taming transformer')
  return dict(vocab_size=vocab, width=width, length=positions[1],
              num_layers=len(layers), num_heads=num_heads,
              mlp_dim=sd.shape(_PREFIX + 'blocks.0.mlp.0.weight')[0],
              num_classes=num_classes)


def model_config(arch: dict, scan_layers: bool) -> ml_collections.ConfigDict:
  """The vqlab GPT config of a taming transformer with `arch`'s sizes."""
  config = generators.default_config('gpt')
  config.update({
      k: arch[k] for k in ('vocab_size', 'length', 'width', 'num_layers',
                          'num_heads', 'mlp_dim')
  })
  config.update(dropout_rate=0.0, block_style='taming', scan_layers=scan_layers)
  config.condition = 'class' if arch['num_classes'] else 'none'
  if arch['num_classes']:
    config.num_classes = arch['num_classes']
  return config


def convert_params(sd: published.StateDict, arch: dict, sos_token: int) -> dict:
  """The vqlab GPT param tree (unrolled blocks) of a taming transformer."""
  words = sd.take(_PREFIX + 'tok_emb.weight')
  blocks = {}
  for i in range(arch['num_layers']):
    block = f'blocks.{i}'
    blocks[f'block_{i}'] = {
        'norm1': sd.norm(f'{_PREFIX}{block}.ln1'),
        'attention': _attention(sd, f'{block}.attn', arch['num_heads']),
        'norm2': sd.norm(f'{_PREFIX}{block}.ln2'),
        'mlp': {
            'fc1': _linear(sd, f'{block}.mlp.0'),
            'fc2': _linear(sd, f'{block}.mlp.2')
        },
    }
    if f'{_PREFIX}{block}.attn.mask' in sd:
      sd.take(f'{_PREFIX}{block}.attn.mask')  # The causal mask: a buffer.
  params = {
      'token_embed': {
          'embedding': words
      },
      'pos_embedding': sd.take(_PREFIX + 'pos_emb')[0],
      'transformer': {
          **blocks, 'final_norm': sd.norm(_PREFIX + 'ln_f')
      },
      'head': sd.linear(_PREFIX + 'head', bias=False),
  }
  if arch['num_classes']:
    null_class = np.zeros((1, words.shape[1]), words.dtype)
    params['class_embed'] = {
        'embedding': np.concatenate([words[:arch['num_classes']], null_class])
    }
  else:
    params['start_embedding'] = words[sos_token]
  return params


def expected_params(config: ml_collections.ConfigDict) -> Any:
  """ShapeDtypeStructs of the params a vqlab GPT of `config` has."""
  model = generators.build(config)
  tokens = jax.ShapeDtypeStruct((1, config.length), jnp.int32)
  cond = (jax.ShapeDtypeStruct(
      (1,), jnp.int32) if config.condition == 'class' else None)
  return jax.eval_shape(
      lambda t, c: model.init(jax.random.key(0), t, c)['params'], tokens, cond)


def convert_state_dict(tensors: dict[str, np.ndarray], source: str, *,
                       codebook_size: int, image_size: int, num_heads: int,
                       num_classes: int, sos_token: int = 0,
                       scan_layers: bool = True,
                       tokenizer_workdir: str = '') -> published.Converted:
  """A flat Net2NetTransformer state dict -> Converted (every transformer
  tensor used, every param filled), for a tokenizer of `codebook_size`
  codes at `image_size`, with the release config's `num_heads`,
  `num_classes` (0: unconditional) and `sos_token`."""
  sd = published.StateDict(tensors, source)
  if any(k.startswith('permuter.') for k in sd.keys()):
    raise WeightsError(f'{source}: its permuter reorders the tokens; only '
                       'the identity permuter (row-major tokens) converts')
  if any(k.startswith('cond_stage_model.') for k in sd.keys()):
    raise WeightsError(f'{source}: a spatially conditioned transformer (its '
                       'condition stage has weights); only class-conditional '
                       'and unconditional ones convert')
  width = sd.shape(_PREFIX + 'tok_emb.weight')[1]
  if num_heads < 1 or width % num_heads:
    raise WeightsError(f'{source}: {num_heads} heads do not divide the width '
                       f'{width}')
  arch = _architecture(sd, codebook_size, num_classes, num_heads)
  if not num_classes and not 0 <= sos_token < arch['vocab_size']:
    raise WeightsError(f'{source}: sos_token {sos_token} is not a row of the '
                       f'token table of {arch["vocab_size"]}')
  config = model_config(arch, scan_layers)
  params = convert_params(sd, arch, sos_token)
  sd.check_all_used(ignore_prefixes=IGNORED_PREFIXES)
  return published.converted_generator(config, params, expected_params(config),
                                       source=source, image_size=image_size,
                                       tokenizer_workdir=tokenizer_workdir)


def check_first_stage(tensors: dict[str, Any], tokenizer_params: Any, path: str,
                      tokenizer: str) -> None:
  """WeightsError unless the tokenizer's codebook is the one of the
  checkpoint's first stage (the VQGAN the transformer was trained on), when
  the checkpoint holds it: another VQGAN of as many codes would decode the
  transformer's tokens into other pictures, silently."""
  key = 'first_stage_model.quantize.embedding.weight'
  codebook = tokenizer_params.get('quantizer', {}).get('codebook')
  if key not in tensors:
    return
  if codebook is None or np.shape(codebook) != np.shape(
      tensors[key]) or not np.allclose(codebook, tensors[key], atol=1e-6):
    raise WeightsError(
        f'{path} was trained on the codes of its own first stage, not on '
        f"{tokenizer}'s codebook: convert that VQGAN from this file "
        f'(python -m vqlab.convert taming_vqgan {path} <out_dir>) and pass '
        'it as --tokenizer')


def project_settings(path: str) -> dict[str, Any]:
  """What the release's project yaml (`<run>/configs/*-project.yaml` for
  `<run>/checkpoints/last.ckpt`, or one beside the file) says that no tensor
  holds: {'num_heads', 'num_classes' (0 for SOSProvider), 'sos_token'}, the
  keys it has; {} without one. Read by pattern, not as YAML (no code, no
  new dependency)."""
  directory = os.path.dirname(os.path.abspath(path))
  candidates = [os.path.join(os.path.dirname(directory), 'configs'), directory]
  for folder in candidates:
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
      if name.endswith('-project.yaml'):
        yaml = os.path.join(folder, name)
        try:
          with open(yaml) as f:
            return _settings_of(f.read())
        except (OSError, UnicodeDecodeError) as e:
          raise WeightsError(f'could not read {yaml}: {e}') from None
  return {}


def _settings_of(text: str) -> dict[str, Any]:
  settings = {}
  for key, pattern in (('num_heads', r'\bn_head:\s*(\d+)'),
                       ('num_classes', r'\bn_classes:\s*(\d+)'),
                       ('sos_token', r'\bsos_token:\s*(\d+)')):
    if match := re.search(pattern, text):
      settings[key] = int(match.group(1))
  if 'SOSProvider' in text:
    settings['num_classes'] = 0
  return settings


def convert_file(path: str, *, tokenizer: str, num_heads: int = 0,
                 num_classes: int = -1, sos_token: int = -1,
                 scan_layers: bool = True) -> published.Converted:
  """A taming transformer `last.ckpt` and the run of its converted VQGAN ->
  Converted; the settings no tensor holds come from the options, else from
  the release's project yaml (`project_settings`).

  Raises:
    WeightsError: not a convertible taming transformer, not one for this
      tokenizer, or a setting neither given nor in a project yaml.
    CheckpointError: `tokenizer` is not a readable tokenizer run.
  """
  if not tokenizer:
    raise WeightsError('taming_transformer needs --tokenizer=<the run of the '
                       'converted taming VQGAN>: the transformer generates '
                       "that tokenizer's codes")
  found = project_settings(path)
  num_heads = num_heads or found.get('num_heads', 0)
  if num_classes < 0:
    num_classes = found.get('num_classes', -1)
  if sos_token < 0:
    sos_token = found.get('sos_token', 0)
  missing = ([('num_heads', 'n_head')] if num_heads <= 0 else []) + ([
      ('num_classes', 'n_classes (0: unconditional)')
  ] if num_classes < 0 else [])
  if missing:
    flag, key = missing[0]
    raise WeightsError(
        f'{path}: no --{flag} given and no configs/*-project.yaml of the '
        f"release beside it to read it from: pass the release config's {key}")
  tensors = torch_files.load_state_dict(path, lenient=True)
  trained = trained_tokenizer.load(tokenizer, key='--tokenizer')
  check_first_stage(tensors, trained.variables['params'], path, tokenizer)
  tokenizer_config = trained.config
  return convert_state_dict(
      tensors, f'taming transformer {os.path.basename(os.path.abspath(path))}',
      codebook_size=int(tokenizer_config.model.quantizer.codebook_size),
      image_size=int(tokenizer_config.data.image_size), num_heads=num_heads,
      num_classes=num_classes, sos_token=sos_token, scan_layers=scan_layers,
      tokenizer_workdir=tokenizer)


def write_run(out_dir: str, converted: published.Converted) -> dict[str, Any]:
  """Writes `converted` as a generator run at step 0 in `out_dir`, with the
  release's sampling (`RUN_SETTINGS`; published.write_generator_run)."""
  return published.write_generator_run(
      out_dir, converted, RUN_SETTINGS[converted.model_config.condition])
