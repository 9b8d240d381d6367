"""GPT (taming transformers): an autoregressive transformer over image tokens.

The model reads `[condition tokens] + image tokens` and predicts every image
token from the condition and the image tokens before it (row-major order):

- condition 'none': one learned start embedding is the prefix;
- condition 'class': one class embedding; class id `num_classes` is the
  learned null class (unconditional use, classifier-free guidance);
- condition 'tokens': the `cond_length` indices of a second tokenizer on a
  condition image (spatial conditioning), with their own embedding table.

With prefix length P and N image tokens the transformer sees P + N - 1
positions, `prefix + tokens[:, :-1]`, and logits[:, i] (position P - 1 + i)
predicts tokens[:, i]. Sampling runs one position per step through the
flax key/value cache (`use_cache=True`) or recomputes the whole prefix each
step; `sample_sliding_window` samples grids larger than the training window.
Both take classifier-free guidance for condition 'class' (`guidance_scale`).

Blocks (`block_style`): 'pre_ln', vqlab's pre-LN blocks (LayerNorm epsilon
1e-6, tanh GELU, ViT's MLP dropout, a head with a bias); 'taming', minGPT's
as taming-transformers trains them (epsilon 1e-5, erf GELU, one dropout
after the MLP, a head without bias, N(0, 0.02) kernels and positions from
0), which the released taming transformers load into
(vqlab.convert.taming_transformer).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.errors import ConfigError
from vqlab.generators import api
from vqlab.nn import linear
from vqlab.nn import transformer
from vqlab.nn.transformer import Transformer

CONDITIONS = ('none', 'class', 'tokens')
BLOCK_STYLES = ('pre_ln', 'taming')


class GPT(nn.Module):
  """Decoder-only transformer over `[cond] + image tokens`.

  Attributes:
    vocab_size: codebook size of the modeled tokens.
    length: number of image tokens N (h * w of the latent grid, row-major).
    width, num_layers, num_heads, mlp_dim, dropout_rate: transformer sizes;
      dropout also applies to the input embeddings (taming's embd_pdrop).
    condition: 'none' | 'class' | 'tokens' (see module docstring).
    num_classes: 'class': number of classes; id num_classes is the null class.
    cond_vocab_size: 'tokens': codebook size of the condition tokenizer.
    cond_length: 'tokens': number of condition tokens.
    decode: one position per call with a key/value cache (`decode_step`).
    dtype: compute dtype of the embeddings and blocks; the head computes
      the logits in float32 from the blocks' output.
    scan_layers, remat_policy: how the blocks run (vqlab.nn.transformer).
    block_style: 'pre_ln' or 'taming' (module docstring).
  """
  vocab_size: int
  length: int
  width: int = 64
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 256
  dropout_rate: float = 0.0
  condition: str = 'none'
  num_classes: int = 10
  cond_vocab_size: int = 64
  cond_length: int = 16
  decode: bool = False
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = 'none'
  block_style: str = 'pre_ln'

  @property
  def prefix_length(self) -> int:
    """P: condition positions before the image tokens."""
    return self.cond_length if self.condition == 'tokens' else 1

  @property
  def null_class(self) -> int:
    return self.num_classes

  def setup(self):
    if self.condition not in CONDITIONS:
      raise ValueError(f'condition must be one of {CONDITIONS}, '
                       f'got {self.condition!r}')
    init = nn.initializers.normal(0.02)
    # The tables look up in float32 (then cast): a bfloat16 table would sum
    # the gradient of a code's many occurrences in bfloat16.
    self.token_embed = nn.Embed(self.vocab_size, self.width,
                                embedding_init=init)
    if self.condition == 'none':
      self.start_embedding = self.param('start_embedding', init, (self.width,))
    elif self.condition == 'class':
      self.class_embed = nn.Embed(self.num_classes + 1, self.width,
                                  embedding_init=init)
    else:
      self.cond_embed = nn.Embed(self.cond_vocab_size, self.width,
                                 embedding_init=init)
    taming = self.block_style == 'taming'
    # minGPT's inits: positions from 0, every Linear's weight N(0, 0.02).
    self.pos_embedding = self.param(
        'pos_embedding', nn.initializers.zeros if taming else init,
        (self.prefix_length + self.length - 1, self.width))
    self.embed_dropout = nn.Dropout(self.dropout_rate)
    self.transformer = Transformer(
        self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate,
        self.decode, self.dtype, layer_norm_epsilon=1e-5 if taming else 1e-6,
        exact_gelu=taming, causal=True, mlp_hidden_dropout=not taming,
        kernel_init=init if taming else transformer.DEFAULT_KERNEL_INIT,
        scan_layers=self.scan_layers, remat_policy=self.remat_policy)
    # Logits in float32 (as MaxText's logits_dot_in_fp32): a bfloat16 head
    # rounds them to 8 significant bits, ties that top-k/top-p then break
    # arbitrarily.
    self.head = linear.Dense(self.vocab_size, dtype=jnp.float32,
                             kernel_init=init, use_bias=not taming)

  def embed_prefix(self, cond: Any, batch_size: int) -> jax.Array:
    """Condition embeddings [B, P, width] (no position embedding).

    Args:
      cond: 'none': None; 'class': int [B] class ids in [0, num_classes]
        (num_classes = null class) or None for the null class; 'tokens':
        int [B, cond_length] (or [B, h, w], flattened row-major).
      batch_size: B.
    """
    if self.condition == 'none':
      if cond is not None:
        raise ValueError("condition 'none' takes cond=None")
      return linear.broadcast_param(self.start_embedding,
                                    (batch_size, 1, self.width), self.dtype)
    if self.condition == 'class':
      if cond is None:
        cond = jnp.full((batch_size,), self.null_class, jnp.int32)
      api.check_class_ids(cond, batch_size, self.num_classes, 'GPT')
      return self.class_embed(jnp.asarray(cond))[:, None].astype(self.dtype)
    if cond is None:
      raise ValueError("condition 'tokens' needs cond [B, cond_length]")
    cond = jnp.reshape(cond, (jnp.shape(cond)[0],
                              -1)) if (jnp.ndim(cond) == 3) else cond
    if jnp.shape(cond) != (batch_size, self.cond_length):
      raise ValueError(f'token cond must have shape [B, cond_length]='
                       f'({batch_size}, {self.cond_length}), got '
                       f'{jnp.shape(cond)}')
    api.check_ids(
        cond, self.cond_vocab_size,
        f'condition token ids (cond_vocab_size={self.cond_vocab_size})')
    return self.cond_embed(cond).astype(self.dtype)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """Image token ids [B, n] -> embeddings [B, n, width]."""
    api.check_ids(tokens, self.vocab_size,
                  f'token ids (vocab_size={self.vocab_size})')
    return self.token_embed(tokens).astype(self.dtype)

  def _logits(self, h: jax.Array, train: bool) -> jax.Array:
    """Causal transformer (cached when decoding) and head: float32 logits."""
    h = self.embed_dropout(h, deterministic=not train)
    h = self.transformer(h, train=train)
    return self.head(h.astype(jnp.float32))

  def __call__(self, tokens: jax.Array, cond: Any = None, *,
               train: bool = False) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: int [B, n], 1 <= n <= length, ids in [0, vocab_size).
      cond: see `embed_prefix`.
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      float32 [B, n, vocab_size]; [:, i] predicts tokens[:, i] from cond and
      tokens[:, :i]. Ids are checked on concrete inputs only (not under jit).
    """
    if jnp.ndim(tokens) != 2 or not 1 <= jnp.shape(tokens)[1] <= self.length:
      raise ValueError(f'tokens must have shape [B, n] with 1 <= n <= '
                       f'length={self.length}, got {jnp.shape(tokens)}')
    api.check_ids(tokens, self.vocab_size,
                  f'token ids (vocab_size={self.vocab_size})')
    prefix = self.embed_prefix(cond, jnp.shape(tokens)[0])
    # Ids checked above (the last too, a target only): not again.
    embedded = self.token_embed(tokens[:, :-1]).astype(self.dtype)
    h = jnp.concatenate([prefix, embedded], axis=1)
    h = linear.add_bias(h, self.pos_embedding[:h.shape[1]])
    return self._logits(h, train)[:, self.prefix_length - 1:]

  def decode_step(self, x: jax.Array, position: jax.Array) -> jax.Array:
    """One cached position (decode=True): x [B, 1, width] embedded input at
    `position` (int scalar) -> float32 logits [B, vocab_size]."""
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding, position, 1)
    return self._logits(x + pos[None].astype(x.dtype), False)[:, 0]

  @nn.nowrap
  def sample(self, params, rng, batch_size, cond=None, **kwargs):
    """`sample(self, params, ...)`: see the module-level `sample`."""
    return sample(self, params, rng, batch_size, cond, **kwargs)


def _token_weights(tokens: jax.Array,
                   example_weights: jax.Array | None) -> jax.Array:
  """float [B, N]: each token's weight, its example's (default 1)."""
  weights = (jnp.ones(tokens.shape[:1])
             if example_weights is None else example_weights)
  return weights[:, None] * jnp.ones(tokens.shape, jnp.float32)


def next_token_loss(logits: jax.Array, tokens: jax.Array,
                    example_weights: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy, weighted by example.

  Args:
    logits: [B, N, V] (from `GPT`).
    tokens: int [B, N] targets.
    example_weights: float [B] (0 for eval padding); None: all 1.

  Returns:
    float32 scalar: the weighted mean over tokens of -log p(token).
  """
  per_token = -jnp.take_along_axis(
      jax.nn.log_softmax(logits.astype(jnp.float32)), tokens[..., None],
      -1)[..., 0]
  weights = _token_weights(tokens, example_weights)
  return (per_token * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def next_token_accuracy(logits: jax.Array, tokens: jax.Array,
                        example_weights: jax.Array | None = None) -> jax.Array:
  """Weighted fraction of tokens [B, N] that are the argmax of their logits
  [B, N, V]; example_weights float [B] or None (all 1). A scalar."""
  weights = _token_weights(tokens, example_weights)
  correct = (jnp.argmax(logits, -1) == tokens) * weights
  return correct.sum() / jnp.maximum(weights.sum(), 1.0)


def filter_logits(logits: jax.Array, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k / top-p (nucleus) set to -inf.

  top_k > 0 keeps exactly k entries (ties broken by lower index); top_p < 1
  then keeps the smallest prefix of the probabilities (of the kept logits,
  renormalized), sorted descending, whose sum reaches top_p. At least one
  entry always survives. logits: [..., V] -> [..., V].
  """
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f'need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, '
                     f'top_p={top_p}')
  order = jnp.argsort(-logits, axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1)
  keep = jnp.ones(logits.shape, bool)
  if top_k:
    keep = ranks < top_k
  if top_p < 1.0:
    probs = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep &= jnp.take_along_axis(before < top_p, ranks, axis=-1)
  return jnp.where(keep, logits, -jnp.inf)


def _choose(rng, logits, temperature, top_k, top_p) -> jax.Array:
  """logits [B, V] -> int32 [B]; temperature 0 is argmax."""
  return api.draw_or_argmax(
      rng, logits, temperature,
      lambda tempered: filter_logits(tempered, top_k, top_p)).astype(jnp.int32)


def _guidance(model: GPT, cond: Any, batch_size: int, guidance_scale):
  """The doubled condition [cond; null] and how to use it, or no guidance.

  Returns:
    (cond, rows, double, combine): the condition to run (class ids [2B]
    with guidance) and its batch size R (2B); `double` maps a per-sample
    array [B, ...] to the rows run, [R, ...]; `combine` maps logits of the
    rows run [R, ...] to the logits to sample from [B, ...]. Without
    guidance (a Python 0) cond is unchanged, R = B and both are the
    identity, so sampling runs exactly as without the argument.
  """
  if isinstance(guidance_scale, (int, float)) and guidance_scale == 0:
    return cond, batch_size, (lambda x: x), (lambda logits: logits)
  if model.condition != 'class':
    raise ValueError(
        "classifier-free guidance (guidance_scale != 0) needs condition "
        f"'class' (a learned null class); this GPT has condition "
        f"{model.condition!r}")
  if cond is None:
    cond = jnp.full((batch_size,), model.null_class, jnp.int32)
  cond = jnp.asarray(cond)
  if cond.shape != (batch_size,):
    raise ValueError(f'class cond must have shape [B]=({batch_size},), '
                     f'got {cond.shape}')
  double = lambda x: jnp.concatenate([x, x])
  combine = lambda logits: api.guided_logits(logits[:batch_size], logits[
      batch_size:], guidance_scale)
  return (jnp.concatenate([cond, jnp.full_like(cond, model.null_class)]),
          2 * batch_size, double, combine)


def _given_tokens(model: GPT, prefix: jax.Array | None,
                  batch_size: int) -> jax.Array | None:
  """The prefix padded to int32 [B, N] (None without one); ValueError for a
  wrong shape or (concrete) ids out of range."""
  if prefix is None:
    return None
  if jnp.ndim(prefix) != 2 or prefix.shape[0] != batch_size or not (
      0 < prefix.shape[1] < model.length):
    raise ValueError(f'GPT: prefix must be int [B, P] with B={batch_size} and '
                     f'0 < P < length={model.length}, got shape '
                     f'{jnp.shape(prefix)}')
  api.check_ids(prefix, model.vocab_size,
                f'prefix token ids (vocab_size={model.vocab_size})')
  return jnp.pad(jnp.asarray(prefix, jnp.int32),
                 ((0, 0), (0, model.length - prefix.shape[1])))


def _init_cache(decoder: GPT, params, batch_size: int, cond: Any):
  shapes = jax.eval_shape(lambda: decoder.apply(
      params, jnp.zeros((batch_size, decoder.length), jnp.int32), cond, mutable=
      ['cache'])[1]['cache'])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample(model: GPT, params, rng: jax.Array, batch_size: int,
           cond: Any = None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, use_cache: bool = True,
           return_logits: bool = False, guidance_scale: float = 0.0,
           prefix: jax.Array | None = None):
  """Samples image tokens autoregressively.

  Args:
    model: a GPT (its `decode` attribute is ignored).
    params: {'params': ...} variables of `model` (or the bare params).
    rng: key; step i draws with the i-th split, so cached and uncached
      sampling agree for the same rng.
    batch_size: B.
    cond: see `GPT.embed_prefix`.
    temperature: divides the logits; 0 takes the argmax.
    top_k, top_p: see `filter_logits` (0 / 1.0: off).
    use_cache: one position per step through the key/value cache; otherwise
      the full sequence is recomputed each step (O(N^2) positions).
    return_logits: also return the per-step (unfiltered; guided with
      guidance) logits.
    guidance_scale: classifier-free guidance w (condition 'class' only):
      tokens are drawn from l_u + (1 + w)(l_c - l_u) of the raw logits of
      cond (l_c) and of the null class (l_u), before temperature and
      filtering. Both sequences run as one batch [cond; null] of 2B rows
      that share the drawn tokens. A Python 0 (default) runs B rows
      exactly as without guidance; any other value, arrays included, runs
      2B.
    prefix: int [B, P] (P < N) tokens given: positions < P take them
      instead of a draw (the draws still consume their rng splits), later
      ones are sampled conditioned on them (e.g. the first latent frames
      of a video, row-major).

  Returns:
    int32 [B, N] tokens (and float32 [B, N, V] logits with return_logits).
    Jit-able with model, batch_size, temperature, top_k, top_p, use_cache
    and return_logits static (and guidance_scale, to skip the null rows
    at 0).
  """
  api.check_sampling_settings(batch_size=batch_size, temperature=temperature,
                              guidance_scale=guidance_scale)
  if model.condition == 'class':  # _guidance names the others.
    api.check_guidance_condition(guidance_scale, cond, 'GPT', conditional=True)
  params = {'params': params.get('params', params)}
  n = model.length
  given = _given_tokens(model, prefix, batch_size)
  num_given = 0 if prefix is None else prefix.shape[1]

  def choose(r, logits, i):
    token = _choose(r, logits, temperature, top_k, top_p)
    return token if given is None else jnp.where(i < num_given, given[:,
                                                                      i], token)

  cond, rows, double, combine = _guidance(model, cond, batch_size,
                                          guidance_scale)
  if use_cache:
    decoder = model.clone(decode=True)
    step = lambda c, x, p: decoder.apply({
        **params, 'cache': c
    }, x, p, method=GPT.decode_step, mutable=['cache'])[::-1]
    embed = lambda t: decoder.apply(params, t, method=GPT.embed_tokens)
    prefix = decoder.apply(params, cond, rows, method=GPT.embed_prefix)

    def prefix_body(p, carry):
      cache, _ = carry
      cache, logits = step(cache,
                           jax.lax.dynamic_slice_in_dim(prefix, p, 1, axis=1),
                           p)
      return cache['cache'], logits

    cache = _init_cache(decoder, params, rows, cond)
    logits = jnp.zeros((rows, model.vocab_size), jnp.float32)
    cache, logits = jax.lax.fori_loop(0, model.prefix_length, prefix_body,
                                      (cache, logits))

    def body(carry, i):
      cache, logits, rng = carry
      rng, sub = jax.random.split(rng)
      logits = combine(logits)
      token = choose(sub, logits, i)
      cache, next_logits = step(cache, embed(double(token)[:, None]),
                                model.prefix_length + i)
      return (cache['cache'], next_logits, rng), (token, logits)

    (_, logits, rng), (tokens,
                       all_logits) = jax.lax.scan(body, (cache, logits, rng),
                                                  jnp.arange(n - 1))
    logits = combine(logits)
    last = choose(jax.random.split(rng)[1], logits, n - 1)
    tokens = jnp.concatenate([tokens, last[None]], axis=0).T
    all_logits = jnp.concatenate([all_logits, logits[None]], axis=0)
  else:
    model = model.clone(decode=False)

    def body(carry, i):
      buffer, rng = carry
      rng, sub = jax.random.split(rng)
      logits = combine(model.apply(params, double(buffer), cond)[:, i])
      return (buffer.at[:, i].set(choose(sub, logits, i)), rng), logits

    (tokens, _), all_logits = jax.lax.scan(body, (jnp.zeros(
        (batch_size, n), jnp.int32), rng), jnp.arange(n))
  if return_logits:
    return tokens, jnp.moveaxis(all_logits, 0, 1)
  return tokens


def sample_sliding_window(model: GPT, params, rng: jax.Array, batch_size: int,
                          grid_shape: tuple[int, int], window: tuple[int, int],
                          cond: Any = None, temperature: float = 1.0,
                          top_k: int = 0, top_p: float = 1.0,
                          guidance_scale: float = 0.0) -> jax.Array:
  """Samples an H x W token grid with a model trained on h x w windows.

  Taming's scheme: position (i, j) is predicted from the h x w crop of the
  partly sampled grid starting at (clip(i - h // 2, 0, H - h),
  clip(j - w // 2, 0, W - w)), i.e. centred on (i, j) and clamped inside
  the grid; the logits are those at (i, j)'s row-major index inside the
  crop. Crop positions before it (row-major) are all sampled already and the
  causal model ignores the rest. The full crop is recomputed each step.

  Args:
    model, params, rng, batch_size, temperature, top_k, top_p,
      guidance_scale: as `sample`; step k (row-major) draws with the k-th
      split of rng, so with window == grid_shape this equals `sample` for
      the same rng.
    grid_shape: (H, W), the latent grid to sample.
    window: (h, w) with h * w == model.length, h <= H, w <= W.
    cond: 'none' / 'class': as `sample`; 'tokens': int [B, H, W] condition
      grid, cropped with the same window (h * w == cond_length).

  Returns:
    int32 [B, H, W].
  """
  (big_h, big_w), (h, w) = grid_shape, window
  if h * w != model.length or not (0 < h <= big_h and 0 < w <= big_w):
    raise ValueError(f'window {window} must fit inside grid {grid_shape} and '
                     f'hold length={model.length} tokens')
  if model.condition == 'tokens' and (jnp.shape(cond)
                                      != (batch_size, big_h, big_w) or
                                      h * w != model.cond_length):
    raise ValueError(f'token cond must be a [B, H, W]=({batch_size}, '
                     f'{big_h}, {big_w}) grid and the window hold '
                     f'cond_length={model.cond_length}; got '
                     f'{jnp.shape(cond)}')
  api.check_sampling_settings(batch_size=batch_size, temperature=temperature,
                              guidance_scale=guidance_scale)
  if model.condition == 'class':  # _guidance names the others.
    api.check_guidance_condition(guidance_scale, cond, 'GPT', conditional=True)
  params = {'params': params.get('params', params)}
  model = model.clone(decode=False)
  crop = lambda g, si, sj: jax.lax.dynamic_slice(g, (0, si, sj),
                                                 (batch_size, h, w)).reshape(
                                                     batch_size, h * w)
  if model.condition == 'tokens':
    api.check_ids(
        cond, model.cond_vocab_size, 'condition token ids '
        f'(cond_vocab_size={model.cond_vocab_size})')
  cond, _, double, combine = _guidance(model, cond, batch_size, guidance_scale)

  def body(carry, k):
    grid, rng = carry
    i, j = k // big_w, k % big_w
    si = jnp.clip(i - h // 2, 0, big_h - h)
    sj = jnp.clip(j - w // 2, 0, big_w - w)
    c = crop(cond, si, sj) if model.condition == 'tokens' else cond
    logits = model.apply(params, double(crop(grid, si, sj)), c)
    logits = combine(jnp.take(logits, (i - si) * w + (j - sj), axis=1))
    rng, sub = jax.random.split(rng)
    token = _choose(sub, logits, temperature, top_k, top_p)
    return (grid.at[:, i, j].set(token), rng), None

  grid = jnp.zeros((batch_size, big_h, big_w), jnp.int32)
  (grid, _), _ = jax.lax.scan(body, (grid, rng), jnp.arange(big_h * big_w))
  return grid


def default_config() -> ml_collections.ConfigDict:
  """A tiny GPT that runs on CPU; configs/ hold the paper sizes."""
  config = ml_collections.ConfigDict()
  config.vocab_size = 64  # Codebook size of the modeled tokenizer.
  config.length = 16  # Image tokens N = h * w of the latent grid.
  config.width = 64  # Embedding / residual width.
  config.num_layers = 2  # Transformer blocks.
  config.num_heads = 2  # Attention heads (divide width).
  config.mlp_dim = 256  # Hidden width of each block's MLP.
  config.dropout_rate = 0.0  # Embedding, attention and residual dropout.
  config.condition = 'none'  # 'none' | 'class' | 'tokens' (spatial).
  config.num_classes = 10  # 'class': classes; id num_classes = null.
  config.cond_vocab_size = 64  # 'tokens': condition tokenizer codebook size.
  config.cond_length = 16  # 'tokens': condition tokens prepended.
  # 'pre_ln': vqlab's blocks; 'taming': minGPT's as taming-transformers
  # trains them (what its released transformers are).
  config.block_style = 'pre_ln'
  transformer.add_stack_config(config)
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> GPT:
  """Builds a GPT from a validated config."""
  if config.condition not in CONDITIONS:
    raise ConfigError(f'{prefix}.condition',
                      f'{config.condition!r} not in {CONDITIONS}')
  for key in ('vocab_size', 'length', 'width', 'num_layers', 'num_heads',
              'mlp_dim', 'num_classes', 'cond_vocab_size', 'cond_length'):
    if config[key] < 1:
      raise ConfigError(f'{prefix}.{key}', f'must be >= 1, got {config[key]}')
  if config.width % config.num_heads:
    raise ConfigError(
        f'{prefix}.num_heads', f'{config.num_heads} does not '
        f'divide width={config.width}')
  if config.block_style not in BLOCK_STYLES:
    raise ConfigError(
        f'{prefix}.block_style',
        f'{config.block_style!r} is not one of {", ".join(BLOCK_STYLES)}')
  return GPT(vocab_size=config.vocab_size, length=config.length,
             width=config.width, num_layers=config.num_layers,
             num_heads=config.num_heads, mlp_dim=config.mlp_dim,
             dropout_rate=config.dropout_rate, condition=config.condition,
             num_classes=config.num_classes,
             cond_vocab_size=config.cond_vocab_size,
             cond_length=config.cond_length, dtype=jnp.dtype(dtype),
             block_style=config.block_style,
             **transformer.stack_options(config, prefix))


# ------------------------------------------------------------ Generator API.

# Model keys only some conditions read: {key: the conditions that do}.
CONDITION_KEYS = {
    'num_classes': ('class',),
    'cond_vocab_size': ('tokens',),
    'cond_length': ('tokens',)
}


def _condition_spec(config: ml_collections.ConfigDict) -> api.ConditionSpec:
  if config.condition not in CONDITIONS:
    raise ConfigError('model.condition',
                      f'{config.condition!r} not in {CONDITIONS}')
  api.check_condition_keys(config, default_config(), CONDITION_KEYS)
  if config.condition == 'class':
    return api.ConditionSpec('class', num_classes=config.num_classes)
  if config.condition == 'tokens':
    return api.ConditionSpec('tokens', length=config.cond_length,
                             vocab_size=config.cond_vocab_size)
  return api.ConditionSpec(config.condition)


def _check_fits(config: ml_collections.ConfigDict, tokenizer: Any,
                token_shape: tuple[int, ...], where: str) -> None:
  """The row-major token sequence (the task checks spatial condition
  tokens against their tokenizer: generator.check_model_fits)."""
  if tokenizer.factor_vocab_sizes:
    raise ConfigError(
        'model.name', 'gpt models plain indices; '
        f'{where} gives factorized codes: use maskgit')
  length = int(np.prod(token_shape))
  if config.length != length:
    raise ConfigError(
        'model.length', f'{config.length}, but {where} turns '
        f'the data into {length} tokens ({token_shape})')


def _settings_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """Guidance (constant) and label dropout need model.condition 'class';
  the sliding window (sample.grid_shape) a condition other than 'tokens';
  frame prediction (a prefix of given tokens) no sliding window and no
  'tokens' condition (its clips come from the eval split without their
  condition images)."""
  keys = {'sample.temperature', 'sample.top_k', 'sample.top_p'}
  # The sliding window recomputes every crop (no cache); its condition
  # tokens would need condition images of the larger grid.
  if config.model.condition != 'tokens':
    keys.add('sample.grid_shape')
  if not config.sample.grid_shape:
    keys.add('sample.use_cache')
    if config.model.condition != 'tokens':
      keys.add('sample.observed_frames')
  if config.model.condition == 'class':
    keys |= {'loss.label_drop', 'sample.guidance_scale'}
  return frozenset(keys)


def _init(model: GPT, rng: jax.Array, tokens: jax.Array, cond):
  """Params of `model` for tokens [B, *shape] (flattened row-major)."""
  return model.init(rng, tokens.reshape(tokens.shape[0], -1), cond)['params']


def _loss(model: GPT, params, tokens: jax.Array, cond, rng: jax.Array, *,
          settings: ml_collections.ConfigDict, train: bool,
          example_weights: jax.Array | None = None, loss_state=None):
  """`next_token_loss` over tokens [B, *shape] (row-major); class labels
  drop to the null class (spatial conditions have none)."""
  drop_rng, rng = jax.random.split(rng)
  if model.condition == 'class':
    drop = api.drop_mask(drop_rng, settings.label_drop, cond, train)
    if drop is not None:
      cond = jnp.where(drop, model.null_class, cond)
  flat = tokens.reshape(tokens.shape[0], -1)
  logits = model.apply({'params': params}, flat, cond, train=train,
                       rngs={'dropout': rng})
  loss = next_token_loss(logits, flat, example_weights)
  accuracy = next_token_accuracy(logits, flat, example_weights)
  return loss, {'loss': loss, 'accuracy': accuracy}, None


def _sample(model: GPT, params, rng: jax.Array, batch_size: int, cond, *,
            settings: ml_collections.ConfigDict,
            loss_settings: ml_collections.ConfigDict,
            token_shape: tuple[int, ...], known=None) -> jax.Array:
  """`sample` with the settings: int32 [B, length]; with
  settings.grid_shape (H, W), `sample_sliding_window` over that grid with
  the training grid token_shape as the window: int32 [B, H, W]. Known
  tokens (frame prediction) must be a row-major prefix: they become
  `sample(prefix=...)`."""
  del loss_settings
  options = dict(temperature=settings.temperature, top_k=settings.top_k,
                 top_p=settings.top_p, guidance_scale=settings.guidance_scale)
  if settings.grid_shape:
    return sample_sliding_window(model, params, rng, batch_size,
                                 tuple(settings.grid_shape), token_shape, cond,
                                 **options)
  prefix = None
  if known is not None:
    tokens, mask = known
    flat_mask = np.asarray(mask, bool).reshape(-1)  # Static, not traced.
    length = int(flat_mask.sum())
    if not flat_mask[:length].all():
      raise ValueError('GPT: the known tokens must be a row-major prefix '
                       '(the first latent frames), got another mask')
    if tuple(jnp.shape(tokens)) != (batch_size, *token_shape):
      raise ValueError(
          f'GPT: known tokens of shape {tuple(jnp.shape(tokens))}, expected '
          f'[B, {", ".join(map(str, token_shape))}] with B = {batch_size}')
    prefix = jnp.reshape(tokens, (batch_size, -1))[:, :length]
  return sample(model, params, rng, batch_size, cond,
                use_cache=settings.use_cache, prefix=prefix, **options)


API = api.GeneratorApi(condition_spec=_condition_spec, check_fits=_check_fits,
                       init=_init, loss=_loss, sample=_sample,
                       settings_read=_settings_read,
                       condition_keys=CONDITION_KEYS)
