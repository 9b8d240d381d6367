"""CLIP's text transformer (HF `CLIPTextModel`, e.g. the text tower of
openai/clip-vit-base-patch32 or -large-patch14), in flax, as a frozen text
condition encoder (VQ-Diffusion conditions on CLIP ViT-B/32's token states,
each divided by its norm: text.normalize_states).

The model: token + learned position embeddings; pre-LN blocks (x += Attn(
LN(x)); x += MLP(LN(x))) whose self-attention is causal (and ignores padded
keys); a quick_gelu (or per config `hidden_act`) MLP; a final LayerNorm.
`pooled` is the final state at the first <|endoftext|> of each row (HF:
the first position of config.eos_token_id, or, for old configs whose
eos_token_id is 2, the position of the largest id).

No weights are downloaded. Point `load_clip_text` / `ClipTextEncoder` at a
directory with the HF files of a CLIP (or CLIPTextModel) checkpoint:
config.json, model.safetensors, vocab.json and merges.txt (optionally
tokenizer_config.json / special_tokens_map.json), e.g. from
`huggingface-cli download openai/clip-vit-base-patch32 config.json
model.safetensors vocab.json merges.txt tokenizer_config.json
special_tokens_map.json` on a machine with network access. A full
CLIPModel's safetensors also works (only `text_model.*` is read).

Usage:

  encoder = ClipTextEncoder('/path/to/clip-vit-base-patch32', pad_to=77)
  states, mask, pooled = encoder(['a red car', 'two dogs'])
  # states [B, L, 512] float32, mask [B, L] bool, pooled [B, 512]
"""

from collections.abc import Mapping
import dataclasses
import functools
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlab.errors import WeightsError
from vqlab.nn import attention
from vqlab.nn import norms
from vqlab.text.clip_bpe import ClipTokenizer
from vqlab.text.frozen_encoder import FrozenTextEncoder
from vqlab.weights import files
from vqlab.weights import safetensors_files
from vqlab.weights import state_dicts

REQUIRED_FILES = ('config.json', 'model.safetensors', 'vocab.json',
                  'merges.txt')
ACTIVATIONS = ('quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu')


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
  """The text transformer's hyperparameters (defaults: ViT-B/32's)."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_layers: int = 12
  num_heads: int = 8
  max_positions: int = 77
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> 'ClipTextConfig':
    """From an HF CLIPTextConfig dict, or a CLIPConfig's `text_config`."""
    if 'text_config' in config and 'hidden_size' not in config:
      config = config['text_config'] or {}
    defaults = cls()
    act = config.get('hidden_act', defaults.hidden_act)
    if act not in ACTIVATIONS:
      raise WeightsError(f'unsupported CLIP text config: hidden_act={act!r} '
                         f'(known: {", ".join(ACTIVATIONS)})')
    eos = config.get('eos_token_id', defaults.eos_token_id)
    if isinstance(eos, (list, tuple)):
      eos = eos[0]
    get = lambda key, name: config.get(key, getattr(defaults, name))
    return cls(vocab_size=get('vocab_size', 'vocab_size'), hidden_size=get(
        'hidden_size',
        'hidden_size'), intermediate_size=get('intermediate_size',
                                              'intermediate_size'),
               num_layers=get('num_hidden_layers', 'num_layers'),
               num_heads=get('num_attention_heads', 'num_heads'),
               max_positions=get('max_position_embeddings',
                                 'max_positions'), hidden_act=act,
               layer_norm_eps=float(get('layer_norm_eps', 'layer_norm_eps')),
               eos_token_id=int(eos))


def _activation(name: str, x: jax.Array) -> jax.Array:
  if name == 'quick_gelu':
    return x * jax.nn.sigmoid(1.702 * x)
  if name == 'gelu':
    return nn.gelu(x, approximate=False)
  if name in ('gelu_new', 'gelu_pytorch_tanh'):
    return nn.gelu(x, approximate=True)
  if name == 'relu':
    return nn.relu(x)
  raise ValueError(f'unknown activation {name!r}')


class ClipLayer(nn.Module):
  """Pre-LN block: x += Attn(LN1(x)) (causal); x += MLP(LN2(x))."""
  config: ClipTextConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
    """x: [B, L, D]; allowed: [B, 1, L, L] bool (query may see key)."""
    c = self.config
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              precision=self.precision)
    layer_norm = functools.partial(norms.LayerNorm, epsilon=c.layer_norm_eps,
                                   dtype=self.dtype)
    batch, length, width = x.shape
    head_dim = width // c.num_heads
    h = layer_norm(name='layer_norm1')(x)

    def heads(name):
      return dense(width, name=name)(h).reshape(batch, length, c.num_heads,
                                                head_dim)

    q, k, v = heads('q_proj'), heads('k_proj'), heads('v_proj')
    h = attention.masked_attention(q, k, v, allowed, precision=self.precision,
                                   dtype=self.dtype)
    x = x + dense(width, name='out_proj')(h.reshape(batch, length, width))
    h = layer_norm(name='layer_norm2')(x)
    h = _activation(c.hidden_act, dense(c.intermediate_size, name='fc1')(h))
    return x + dense(width, name='fc2')(h)


class ClipText(nn.Module):
  """CLIP text transformer: (ids [B, L], mask [B, L]) -> final-LN token
  states [B, L, D].

  Position i attends to the positions j <= i whose mask is True (HF's
  causal mask combined with the attention mask). Padded positions get
  states too; use the mask to ignore them.

  Attributes:
    config: the hyperparameters.
    dtype: compute dtype (softmax in float32).
    precision: matmul precision (None: the backend default; pass
      jax.lax.Precision.HIGHEST for float32-exact results on TPU/GPU).
  """
  config: ClipTextConfig = ClipTextConfig()
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, ids: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    c = self.config
    length = ids.shape[1]
    if length > c.max_positions:
      raise ValueError(f'{length} tokens exceed the {c.max_positions} '
                       'position embeddings')
    if mask is None:
      mask = jnp.ones(ids.shape, jnp.bool_)
    embed = functools.partial(nn.Embed, features=c.hidden_size,
                              dtype=self.dtype)
    x = embed(c.vocab_size, name='token_embedding')(ids)
    x = x + embed(c.max_positions, name='position_embedding')(
        jnp.arange(length))[None]
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    allowed = causal[None, None] & mask.astype(jnp.bool_)[:, None, None, :]
    for i in range(c.num_layers):
      x = ClipLayer(c, self.dtype, self.precision, name=f'layer_{i}')(x,
                                                                      allowed)
    return norms.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                           name='final_layer_norm')(x)


def pool(states: jax.Array, ids: jax.Array, eos_token_id: int) -> jax.Array:
  """HF CLIPTextModel's pooler_output: the state at the first
  `eos_token_id` of each row, or, when eos_token_id == 2 (configs from
  before transformers PR #24773), at the (first) largest id."""
  if eos_token_id == 2:
    index = jnp.argmax(ids, axis=-1)
  else:
    index = jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)
  return jnp.take_along_axis(states, index[:, None, None], axis=1)[:, 0]


# ------------------------------------------------------------ converter ---


def convert_clip_text(
    state: Mapping[str, np.ndarray], config: ClipTextConfig = ClipTextConfig()
) -> dict:
  """HF CLIPTextModel (or CLIPModel) state dict -> ClipText params (numpy
  float32).

  Names are `text_model.embeddings.token_embedding.weight`,
  `text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.*`,
  `...layer_norm{1,2}.*`, `...mlp.fc{1,2}.*`,
  `text_model.final_layer_norm.*` (the `text_model.` prefix may be absent).
  torch Linear weights [out, in] become Dense kernels [in, out]. WeightsError
  names a missing or wrong-shape tensor.
  """
  prefix = 'text_model.'
  if not any(k.startswith(prefix) for k in state):
    state = {prefix + k: v for k, v in state.items()}
  c = config
  d = c.hidden_size
  what = 'CLIP text weights'
  state_dicts.check_layer_count(state, f'{prefix}encoder.layers.', c.num_layers,
                                what=what)
  take = functools.partial(state_dicts.take, state, what=what)
  dense = functools.partial(state_dicts.linear, state, what=what)
  norm = functools.partial(state_dicts.layer_norm, state, size=d, what=what)
  e = f'{prefix}embeddings'
  params = {
      'token_embedding': {
          'embedding': take(f'{e}.token_embedding.weight', (c.vocab_size, d))
      },
      'position_embedding': {
          'embedding':
              take(f'{e}.position_embedding.weight', (c.max_positions, d))
      },
      'final_layer_norm': norm(f'{prefix}final_layer_norm'),
  }
  for i in range(c.num_layers):
    p = f'{prefix}encoder.layers.{i}'
    params[f'layer_{i}'] = {
        'layer_norm1': norm(f'{p}.layer_norm1'),
        'q_proj': dense(f'{p}.self_attn.q_proj', d, d),
        'k_proj': dense(f'{p}.self_attn.k_proj', d, d),
        'v_proj': dense(f'{p}.self_attn.v_proj', d, d),
        'out_proj': dense(f'{p}.self_attn.out_proj', d, d),
        'layer_norm2': norm(f'{p}.layer_norm2'),
        'fc1': dense(f'{p}.mlp.fc1', d, c.intermediate_size),
        'fc2': dense(f'{p}.mlp.fc2', c.intermediate_size, d),
    }
  return params


# --------------------------------------------------------------- loading ---


def find_model_dir(path: str | os.PathLike) -> pathlib.Path:
  """`path`, checked to hold config.json, model.safetensors, vocab.json and
  merges.txt.

  Raises:
    WeightsError: a file is missing; the message names it.
  """
  if path is None or not os.fspath(path):
    raise WeightsError(
        'the CLIP text encoder needs a directory with the HF files '
        f'({", ".join(REQUIRED_FILES)}); none was given')
  directory = files.local_dir(path, 'the CLIP text encoder directory')
  missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
  if missing:
    raise WeightsError(
        f'missing the CLIP text encoder files: {directory} lacks '
        f'{", ".join(missing)}; point it at a directory with an HF CLIP '
        f'checkpoint\'s {", ".join(REQUIRED_FILES)} (e.g. '
        'openai/clip-vit-base-patch32)')
  return directory


def load_clip_text(
    path: str | os.PathLike, *, dtype: Any = jnp.float32,
    precision: Any = None) -> tuple[ClipText, dict, ClipTokenizer]:
  """(module, params, tokenizer) of an HF CLIP text transformer.

  Args:
    path: a directory with config.json, model.safetensors, vocab.json and
      merges.txt (tokenizer_config.json / special_tokens_map.json optional).
    dtype, precision: passed to the module.

  Returns:
    The flax module, its params ({'params': ...}, jax float32 arrays) and
    the tokenizer.

  Raises:
    WeightsError: files missing (named), corrupt, or not matching the
      architecture.
  """
  directory = find_model_dir(path)
  hf_config = files.read_json(directory / 'config.json')
  config = ClipTextConfig.from_hf(hf_config)
  state = safetensors_files.load_safetensors(directory / 'model.safetensors')
  if any(k.startswith('text_model.') for k in state):  # CLIPModel: skip
    state = {
        k: v
        for k, v in state.items()  # the vision tower.
        if k.startswith('text_model.')
    }
  params = jax.device_put(convert_clip_text(state, config))
  try:
    tokenizer = ClipTokenizer.from_dir(directory)
  except (OSError, ValueError) as e:
    raise WeightsError(
        f'{directory}: unusable CLIP tokenizer files ({e})') from None
  if len(tokenizer.vocab) > config.vocab_size:
    raise WeightsError(f'{directory}/vocab.json has {len(tokenizer.vocab)} '
                       f'tokens, the model {config.vocab_size}')
  tokenizer.model_max_length = min(tokenizer.model_max_length,
                                   config.max_positions)
  text_config = hf_config.get('text_config') or hf_config
  if 'eos_token_id' not in text_config:  # Pool at the tokenizer's end token.
    config = dataclasses.replace(config, eos_token_id=tokenizer.eos_id)
  module = ClipText(config, dtype=dtype, precision=precision)
  return module, {'params': params}, tokenizer


class ClipTextEncoder(FrozenTextEncoder):
  """A frozen CLIP text condition encoder: texts -> (token states [B, L, D],
  mask, pooled [B, D]); see `FrozenTextEncoder`. `path`: an HF CLIP
  checkpoint directory (`load_clip_text`); captions are capped at the
  tokenizer's model_max_length (77)."""

  def _load(self, path: str | os.PathLike | None, *, dtype: Any,
            precision: Any) -> tuple[ClipText, dict, ClipTokenizer]:
    return load_clip_text(path, dtype=dtype, precision=precision)

  @property
  def max_length(self) -> int:
    return self.tokenizer.model_max_length

  def pool_states(self, states: jax.Array, ids: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """The state at each row's first <|endoftext|> [B, D] float32."""
    del mask
    return pool(states, ids, self.module.config.eos_token_id)
