"""The MaskGIT transformer (google-research/maskgit) -> a vqlab MaskGIT run.

The released `maskgit_imagenet256_checkpoint` (and 512) is a flax msgpack of
{'params': ...} of maskgit/nets/maskgit_transformer.py's `Transformer`, a
post-LN BERT over one vocabulary of K codes, C class tokens and [MASK]:

  Embed_0.word_embeddings       [K + C + 1, D]: code k is row k, class c row
                                K + c, [MASK] (id -1) the last row
  Embed_0.position_embeddings   [1 + N, D]: the class token first
  Embed_0.embeddings_ln         LayerNorm of their sum
  TransformerLayer_i            .Attention_0.self_attention.{query,key,value,
                                out}, .Attention_0.attention_output_ln,
                                .Mlp_0.{intermediate_output, layer_output,
                                layer_output_ln}
  MlmLayer_0                    .mlm_dense, .mlm_ln, then logits against
                                word_embeddings plus .mlm_bias [K + C + 1],
                                of which inference keeps the first K

It becomes a vqlab MaskGIT with `block_style = 'bert'` (the same network):
its code table is the K code rows and the [MASK] row, its class table the C
class rows and the null class, which the release never trained (MaskGIT has
no classifier-free guidance; the row is zeros and the run's
`loss.label_drop` 0, which keeps `sample.guidance_scale` at 0), its tied
head the MLM layer with the first K biases. The run generates the codes of
the converted MaskGIT VQGAN (`python -m vqlab.convert maskgit_vqgan`),
named by `--tokenizer`: K is its codebook size, the token grid (N
positions) its grid at its image size.
"""

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import generators
from vqlab.convert import maskgit_vqgan
from vqlab.convert import published
from vqlab.errors import WeightsError
from vqlab.train import trained_tokenizer

OPTIONS = {
    'tokenizer': (str, '', 'the run of the converted MaskGIT VQGAN whose '
                  'codes the transformer generates (python -m vqlab.convert '
                  'maskgit_vqgan ...); required'),
    'scan_layers': (bool, True, 'params of one scanned block stack (as '
                    'configs/maskgit/imagenet256.py trains); false: '
                    'block_<i>'),
}

# The release's settings of a run: no null class was trained; gFID and IS
# as MaskGIT measured them (ADM's reference batch, through TF's input).
RUN_SETTINGS = {'loss.label_drop': 0.0, 'eval.inception_input': 'tf'}


def _layer(sd: published.StateDict, prefix: str) -> dict[str, np.ndarray]:
  return {
      'kernel': sd.take(f'{prefix}.kernel'),
      'bias': sd.take(f'{prefix}.bias')
  }


def _norm(sd: published.StateDict, prefix: str) -> dict[str, np.ndarray]:
  return {
      'scale': sd.take(f'{prefix}.scale'),
      'bias': sd.take(f'{prefix}.bias')
  }


def _architecture(sd: published.StateDict, codebook_size: int) -> dict:
  """Sizes of the checkpoint, from its shapes and the tokenizer's K."""
  rows, width = sd.shape('Embed_0.word_embeddings.embedding')
  positions = sd.shape('Embed_0.position_embeddings.embedding')[0]
  num_classes = rows - codebook_size - 1
  if num_classes < 0 or sd.shape('MlmLayer_0.mlm_bias.bias') != (rows,):
    raise WeightsError(
        f'{sd.source}: a vocabulary of {rows} rows (MLM bias '
        f'{sd.shape("MlmLayer_0.mlm_bias.bias")}) does not hold the '
        f"tokenizer's {codebook_size} codes and [MASK]")
  num_tokens = positions - (1 if num_classes else 0)
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise WeightsError(f'{sd.source}: {num_tokens} token positions are not a '
                       'square grid')
  layers = sd.indices(r'TransformerLayer_(\d+)\.')
  if not layers or layers != list(range(len(layers))):
    raise WeightsError(f'{sd.source}: no TransformerLayer_<i> tensors; not a '
                       'MaskGIT transformer')
  query = 'TransformerLayer_0.Attention_0.self_attention.query.kernel'
  return dict(
      codebook_size=codebook_size, num_classes=num_classes,
      token_shape=(side, side), width=width, num_layers=len(layers),
      num_heads=sd.shape(query)[1], mlp_dim=sd.shape(
          'TransformerLayer_0.Mlp_0.intermediate_output.kernel')[1])


def model_config(arch: dict, scan_layers: bool) -> ml_collections.ConfigDict:
  """The vqlab MaskGIT config of a MaskGIT transformer with `arch`'s sizes."""
  config = generators.default_config('maskgit')
  config.update(
      vocab_size=arch['codebook_size'], **{
          k: arch[k] for k in ('token_shape', 'num_classes', 'width',
                              'num_layers', 'num_heads', 'mlp_dim')
      })
  # The release's dropout (maskgit_class_cond_config), BERT's placement.
  config.update(dropout_rate=0.1, mlp_hidden_dropout=False, tied_heads=True,
                block_style='bert', scan_layers=scan_layers)
  return config


def _block(sd: published.StateDict, i: int) -> dict:
  attention = f'TransformerLayer_{i}.Attention_0'
  mlp = f'TransformerLayer_{i}.Mlp_0'
  return {
      'attention': {
          name: _layer(sd, f'{attention}.self_attention.{name}')
          for name in ('query', 'key', 'value', 'out')
      },
      'norm1': _norm(sd, f'{attention}.attention_output_ln'),
      'mlp': {
          'fc1': _layer(sd, f'{mlp}.intermediate_output'),
          'fc2': _layer(sd, f'{mlp}.layer_output')
      },
      'norm2': _norm(sd, f'{mlp}.layer_output_ln')
  }


def convert_params(sd: published.StateDict, arch: dict) -> dict:
  """The vqlab MaskGIT param tree (unrolled blocks) of a MaskGIT transformer
  checkpoint (`sd`: flat flax names as `maskgit_vqgan.read_msgpack` gives)."""
  codes, classes = arch['codebook_size'], arch['num_classes']
  words = sd.take('Embed_0.word_embeddings.embedding')
  params = {
      'embed_0': {
          'embedding': np.concatenate([words[:codes], words[-1:]])
      },
      'pos_embedding': sd.take('Embed_0.position_embeddings.embedding'),
      'embed_norm': _norm(sd, 'Embed_0.embeddings_ln'),
      'transformer': {
          f'block_{i}': _block(sd, i) for i in range(arch['num_layers'])
      },
      'tied_head_0': _layer(sd, 'MlmLayer_0.mlm_dense'),
      'tied_head_norm_0': _norm(sd, 'MlmLayer_0.mlm_ln'),
      'tied_head_bias_0': sd.take('MlmLayer_0.mlm_bias.bias')[:codes],
  }
  if classes:
    null_class = np.zeros((1, words.shape[1]), words.dtype)
    params['class_embed'] = {
        'embedding': np.concatenate([words[codes:codes + classes], null_class])
    }
  return params


def expected_params(config: ml_collections.ConfigDict) -> Any:
  """ShapeDtypeStructs of the params a vqlab MaskGIT of `config` has."""
  model = generators.build(config)
  tokens = jax.ShapeDtypeStruct((1, *config.token_shape), jnp.int32)
  labels = (jax.ShapeDtypeStruct(
      (1,), jnp.int32) if config.num_classes else None)
  return jax.eval_shape(
      lambda t, c: model.init(jax.random.key(0), t, c)['params'], tokens,
      labels)


def convert_state_dict(tensors: dict[str, np.ndarray], source: str, *,
                       codebook_size: int, image_size: int,
                       scan_layers: bool = True,
                       tokenizer_workdir: str = '') -> published.Converted:
  """Flat flax names -> Converted (every tensor used, every param filled),
  for a tokenizer of `codebook_size` codes at `image_size`."""
  sd = published.StateDict(tensors, source)
  arch = _architecture(sd, codebook_size)
  config = model_config(arch, scan_layers)
  params = convert_params(sd, arch)
  sd.check_all_used()
  return published.converted_generator(config, params, expected_params(config),
                                       source=source, image_size=image_size,
                                       tokenizer_workdir=tokenizer_workdir)


def convert_file(path: str, *, tokenizer: str,
                 scan_layers: bool = True) -> published.Converted:
  """A MaskGIT transformer checkpoint file and the run of its converted
  tokenizer -> Converted.

  Raises:
    WeightsError: not a MaskGIT transformer, or not one for this tokenizer.
    CheckpointError: `tokenizer` is not a readable tokenizer run.
  """
  if not tokenizer:
    raise WeightsError('maskgit_transformer needs --tokenizer=<the run of '
                       'the converted MaskGIT VQGAN>: the transformer '
                       "generates that tokenizer's codes")
  tokenizer_config = trained_tokenizer.read_run_config(tokenizer,
                                                       key='--tokenizer')
  source = (f'MaskGIT transformer {os.path.basename(path)} '
            '(google-research/maskgit)')
  return convert_state_dict(
      maskgit_vqgan.read_msgpack(path), source,
      codebook_size=int(tokenizer_config.model.quantizer.codebook_size),
      image_size=int(tokenizer_config.data.image_size), scan_layers=scan_layers,
      tokenizer_workdir=tokenizer)


def write_run(out_dir: str, converted: published.Converted) -> dict[str, Any]:
  """Writes `converted` as a generator run at step 0 in `out_dir`, with the
  release's `RUN_SETTINGS` (published.write_generator_run)."""
  return published.write_generator_run(out_dir, converted, RUN_SETTINGS)
