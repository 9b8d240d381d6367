"""TiTok's released generators (bytedance/1d-tokenizer) -> a vqlab MaskGIT run.

The class-conditional MaskGIT of TiTok-L-32 and TiTok-B-64
(`yucornetto/generator_titok_{l32,b64}_imagenet`: model.safetensors, or the
first release's generator_titok_*.bin) is modeling/maskgit.py's `ImageBert`:
a HF `transformers.BertModel` (post-LN, erf GELU, LayerNorm epsilon 1e-12,
no pooler) over one vocabulary, and an untied output layer:

  model.embeddings.word_embeddings        [K + C + 2, D]: code k is row k,
                                          [MASK] row K, class c row K + 1 + c,
                                          the dropped label (the null class
                                          of guidance) row K + C + 1
  model.embeddings.position_embeddings    [1 + N, D]: the class token first
  model.embeddings.token_type_embeddings  [2, D]: type 0 is added at every
                                          position
  model.embeddings.LayerNorm              of their sum
  model.encoder.layer.i                   .attention.self.{query,key,value},
                                          .attention.output.{dense,LayerNorm},
                                          .intermediate.dense,
                                          .output.{dense,LayerNorm}
  model.lm_head                           Linear(D, K) on the N token outputs

It becomes a vqlab MaskGIT with `block_style = 'bert'`, `exact_gelu` and an
untied head (the network configs/maskgit/titok.py trains): its code table
the K code rows and [MASK], its class table the C classes and the dropped
label, trained by the release's label dropout, and its positions the
release's plus the type-0 embedding (the same sum at every position). The
run generates the codes of the converted TiTok (`python -m vqlab.convert
titok`), named by `--tokenizer`, and samples as the release does
(`RELEASED_SAMPLING`).
"""

import os
from typing import Any

import numpy as np

from vqlab.convert import maskgit_transformer
from vqlab.convert import published
from vqlab.convert import titok
from vqlab.errors import WeightsError
from vqlab.train import trained_tokenizer

OPTIONS = {
    'tokenizer': (str, '', 'the run of the converted TiTok whose tokens the '
                  'generator generates (python -m vqlab.convert titok ...); '
                  'required'),
    'num_heads': (int, 16, 'attention heads (the released generators have '
                  '16 of width 48; the shapes do not tell)'),
    'scan_layers': (bool, True, 'params of one scanned block stack (as '
                    'configs/maskgit/titok.py trains); false: block_<i>'),
}

# Tokens per image -> the release's sampler (1d-tokenizer
# configs/infer/TiTok/titok_{l32,b64}.yaml): TiTok's decoding at this
# Gumbel temperature, guidance rising linearly from 0 to this scale.
RELEASED_SAMPLING = {
    32: {
        'choice_temperature': 9.5,
        'guidance_scale': 4.5,
        'guidance_schedule': 'linear'
    },
    64: {
        'choice_temperature': 11.0,
        'guidance_scale': 3.0,
        'guidance_schedule': 'linear'
    },
}
# The release's sampling and loss settings of every converted run (8 steps,
# the arccos schedule); gFID and IS as TiTok measured them (ADM's
# evaluator, TF's Inception input).
RUN_SETTINGS = {
    'sample.decoding': 'titok',
    'sample.num_steps': 8,
    'loss.mask_schedule': 'arccos',
    'loss.mask_rounding': 'round',
    'loss.label_smoothing': 0.1,
    'loss.label_drop': 0.1,
    'loss.unmasked_weight': 0.1,
    'eval.inception_input': 'tf',
}
_PREFIX = 'model.'
# A buffer, not a parameter, that transformers before 4.31 saved.
_POSITION_IDS = 'model.embeddings.position_ids'


def _architecture(sd: published.StateDict, codebook_size: int,
                  num_heads: int) -> dict:
  """Sizes of the checkpoint, from its shapes, the tokenizer's K and the
  number of heads."""
  rows, width = sd.shape(f'{_PREFIX}embeddings.word_embeddings.weight')
  if sd.shape(f'{_PREFIX}lm_head.weight') != (codebook_size, width):
    raise WeightsError(
        f'{sd.source}: an output layer of shape '
        f'{sd.shape(f"{_PREFIX}lm_head.weight")} does not predict the '
        f"tokenizer's {codebook_size} codes")
  num_classes = rows - codebook_size - 2
  if num_classes < 1:
    raise WeightsError(f'{sd.source}: a vocabulary of {rows} rows has no '
                       f"class rows after the tokenizer's {codebook_size} "
                       'codes and [MASK]')
  positions = sd.shape(f'{_PREFIX}embeddings.position_embeddings.weight')[0]
  layers = sd.indices(r'model\.encoder\.layer\.(\d+)\.')
  if not layers or layers != list(range(len(layers))):
    raise WeightsError(f'{sd.source}: no model.encoder.layer.<i> tensors; '
                       'not a TiTok generator')
  if num_heads < 1 or width % num_heads:
    raise WeightsError(f'{sd.source}: {num_heads} heads do not divide width '
                       f'{width}; pass --num_heads')
  mlp_dim = sd.shape(f'{_PREFIX}encoder.layer.0.intermediate.dense.weight')[0]
  return dict(codebook_size=codebook_size, num_classes=num_classes,
              token_shape=(positions - 1,), width=width, num_layers=len(layers),
              num_heads=num_heads, mlp_dim=mlp_dim)


def model_config(arch: dict, scan_layers: bool):
  """The vqlab MaskGIT config of a TiTok generator with `arch`'s sizes."""
  config = maskgit_transformer.model_config(arch, scan_layers)
  config.update(tied_heads=False, exact_gelu=True)
  return config


def _attention(sd: published.StateDict, prefix: str, heads: int) -> dict:
  """BERT's query/key/value/output Linears -> vqlab's per-head kernels."""
  out = {}
  for theirs, ours in (('self.query', 'query'), ('self.key', 'key'),
                       ('self.value', 'value'), ('output.dense', 'out')):
    out[ours] = published.split_heads(sd.linear(f'{prefix}.{theirs}'), heads,
                                      output=ours == 'out', source=sd.source,
                                      name=f'{prefix}.{theirs}')
  return out


def _block(sd: published.StateDict, i: int, heads: int) -> dict:
  layer = f'{_PREFIX}encoder.layer.{i}'
  return {
      'attention': _attention(sd, f'{layer}.attention', heads),
      'norm1': sd.norm(f'{layer}.attention.output.LayerNorm'),
      'mlp': {
          'fc1': sd.linear(f'{layer}.intermediate.dense'),
          'fc2': sd.linear(f'{layer}.output.dense')
      },
      'norm2': sd.norm(f'{layer}.output.LayerNorm')
  }


def convert_params(sd: published.StateDict, arch: dict) -> dict:
  """The vqlab MaskGIT param tree (unrolled blocks) of a TiTok generator
  checkpoint (`sd`: its PyTorch state dict)."""
  codes, classes = arch['codebook_size'], arch['num_classes']
  embeddings = f'{_PREFIX}embeddings'
  words = sd.take(f'{embeddings}.word_embeddings.weight')
  token_type = sd.take(f'{embeddings}.token_type_embeddings.weight')
  # Type 0 is added at every position: the same sum.
  positions = (sd.take(f'{embeddings}.position_embeddings.weight') +
               token_type[0])
  return {
      'embed_0': {
          'embedding': words[:codes + 1]
      },
      'class_embed': {
          'embedding': words[codes + 1:codes + classes + 2]
      },
      'pos_embedding': positions,
      'embed_norm': sd.norm(f'{embeddings}.LayerNorm'),
      'transformer': {
          f'block_{i}': _block(sd, i, arch['num_heads'])
          for i in range(arch['num_layers'])
      },
      'head_0': sd.linear(f'{_PREFIX}lm_head'),
  }


def convert_state_dict(tensors: dict[str, np.ndarray], source: str, *,
                       codebook_size: int, image_size: int, num_heads: int = 16,
                       scan_layers: bool = True,
                       tokenizer_workdir: str = '') -> published.Converted:
  """A TiTok generator's state dict -> Converted (every tensor used, every
  param filled), for a tokenizer of `codebook_size` codes at `image_size`.

  Raises:
    WeightsError: not a TiTok generator, or not one for this tokenizer.
  """
  sd = published.StateDict(tensors, source)
  arch = _architecture(sd, codebook_size, num_heads)
  config = model_config(arch, scan_layers)
  params = convert_params(sd, arch)
  sd.check_all_used(ignore_prefixes=(_POSITION_IDS,))
  return published.converted_generator(
      config, params, maskgit_transformer.expected_params(config),
      source=source, image_size=image_size, tokenizer_workdir=tokenizer_workdir)


def convert_file(path: str, *, tokenizer: str, num_heads: int = 16,
                 scan_layers: bool = True) -> published.Converted:
  """A TiTok generator file and the run of its converted tokenizer ->
  Converted.

  Raises:
    WeightsError: not a TiTok generator, or not one for this tokenizer.
    CheckpointError: `tokenizer` is not a readable tokenizer run.
  """
  if not tokenizer:
    raise WeightsError('titok_generator needs --tokenizer=<the run of the '
                       'converted TiTok>: the generator generates that '
                       "tokenizer's tokens")
  tokenizer_config = trained_tokenizer.read_run_config(tokenizer,
                                                       key='--tokenizer')
  source = (f'TiTok generator {os.path.basename(path)} '
            '(bytedance/1d-tokenizer)')
  return convert_state_dict(
      titok.read_file(path), source,
      codebook_size=int(tokenizer_config.model.quantizer.codebook_size),
      image_size=int(tokenizer_config.data.image_size), num_heads=num_heads,
      scan_layers=scan_layers, tokenizer_workdir=tokenizer)


def run_settings(converted: published.Converted) -> dict[str, Any]:
  """The release's settings of the run of `converted` (`RUN_SETTINGS` and
  the sampler of its token count, where the release published one)."""
  tokens = int(np.prod(converted.model_config.token_shape))
  sampling = RELEASED_SAMPLING.get(tokens, {})
  return {**RUN_SETTINGS, **{f'sample.{k}': v for k, v in sampling.items()}}


def write_run(out_dir: str, converted: published.Converted) -> dict[str, Any]:
  """Writes `converted` as a generator run at step 0 in `out_dir`, with the
  release's settings (`run_settings`; published.write_generator_run)."""
  return published.write_generator_run(out_dir, converted,
                                       run_settings(converted))
