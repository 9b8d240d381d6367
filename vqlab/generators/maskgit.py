"""MaskGIT: a bidirectional transformer over token grids, trained to predict
masked tokens and decoded in a few parallel, confidence-ordered steps.

Tokens may have any shape: [n] (TiTok), [h, w] (images), [t, h, w] (video);
they are flattened to N positions inside. The [MASK] id is `vocab_size`.
Factorized codes (MAGVIT-v2, e.g. 2^18 LFQ codes as two 2^9 factors):
`factor_vocab_sizes=(512, 512)`; tokens are then [B, *shape, F], factor f has
its own [MASK] id `factor_vocab_sizes[f]`, the input embedding is the sum of
the per-factor embeddings and each factor has its own output head. A position
is masked or revealed in all factors together.

Output heads (`tied_heads`, the default, as MaskGIT and MAGVIT-v2): factor f's
head is Dense(width) -> GELU -> LayerNorm, then logits against factor f's own
input embedding matrix (weight tying) plus a bias; untied, a Dense(V_f).

Logits: [B, *shape, vocab_size] without factors; with factors
[B, *shape, F, max(factor_vocab_sizes)], the entries of factor f at ids >=
factor_vocab_sizes[f] are NEG_INF (never sampled, no probability mass).

Class conditioning (num_classes > 0): a class token is prepended; id
num_classes is the null class (label dropout in training, the unconditional
branch of classifier-free guidance, and `labels=None`).

Blocks (`block_style`): 'pre_ln', vqlab's pre-LN blocks with a final
LayerNorm; 'bert', MaskGIT's and MAGVIT's transformer, a post-LN BERT: a
LayerNorm on the summed token and position embeddings, post-LN blocks, no
final LayerNorm, every LayerNorm's epsilon 1e-12, BERT's inits (truncated
N(0, 0.02) kernels, embeddings and positions); the released MaskGIT
checkpoints load into it (vqlab.convert.maskgit_transformer). `exact_gelu`
puts the erf GELU in the blocks' MLPs (HF BERT's, TiTok's generator; the
output head's stays tanh's, as MaskGIT's MLM layer).
"""

import functools
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.errors import ConfigError
from vqlab.generators import api
from vqlab.generators import mask_schedule
from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn import transformer
from vqlab.nn.transformer import Transformer

NEG_INF = -1e9  # Logit of the padded ids of smaller factors.
BLOCK_STYLES = ('pre_ln', 'bert')
_BERT_LAYER_NORM_EPSILON = 1e-12  # BERT's (TF's) LayerNorm epsilon.


class MaskGIT(nn.Module):
  """Masked token transformer (see module docstring).

  Attributes:
    vocab_size: codes per token (with factors: the product of the factors').
    token_shape: shape of one example's tokens, e.g. (16, 16) or (4, 8, 8).
    factor_vocab_sizes: () for plain tokens, else codes per factor.
    num_classes: 0 for unconditional, else classes (+1 null class inside).
    width, num_layers, num_heads, mlp_dim, dropout_rate, mlp_hidden_dropout:
      the transformer.
    dtype: compute dtype of the embeddings and blocks; the logits are
      computed in float32 (untied: a float32 Dense on the blocks' output;
      tied: the float32 embeddings attend to the head's LayerNorm output).
    scan_layers, remat_policy: how the blocks run (vqlab.nn.transformer).
    tied_heads: output heads tied to the input embeddings (module
      docstring); False: one Dense per factor.
    block_style: 'pre_ln' or 'bert' (module docstring).
    exact_gelu: the erf GELU in the blocks' MLPs, not the tanh one.
  """
  vocab_size: int
  token_shape: Sequence[int]
  factor_vocab_sizes: Sequence[int] = ()
  num_classes: int = 0
  width: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.0
  mlp_hidden_dropout: bool = True
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = 'none'
  tied_heads: bool = True
  block_style: str = 'pre_ln'
  exact_gelu: bool = False

  # -- Token layout helpers (no parameters; callable on an unbound module). --

  @property
  def vocab_sizes(self) -> tuple[int, ...]:
    return tuple(self.factor_vocab_sizes) or (self.vocab_size,)

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.token_shape))

  @property
  def mask_ids(self) -> jax.Array:
    """[F] int32: the [MASK] id of each factor (its vocab size)."""
    return jnp.asarray(self.vocab_sizes, jnp.int32)

  @nn.nowrap
  def flatten(self, tokens: jax.Array) -> jax.Array:
    """[B, *shape] (or [B, *shape, F]) -> int32 [B, N, F]; checks shape."""
    factor_axes = (len(self.vocab_sizes),) if self.factor_vocab_sizes else ()
    expected = tuple(self.token_shape) + factor_axes
    if tuple(tokens.shape[1:]) != expected:
      raise ValueError(f'MaskGIT: tokens of shape {tokens.shape}, expected '
                       f'[B, {", ".join(map(str, expected))}]')
    return tokens.reshape(tokens.shape[0], self.num_tokens,
                          len(self.vocab_sizes)).astype(jnp.int32)

  @nn.nowrap
  def unflatten(self, flat: jax.Array) -> jax.Array:
    """[B, N, F, ...] -> [B, *shape, (F,) ...] (F dropped without factors)."""
    rest = flat.shape[3:]
    factor_axes = (flat.shape[2],) if self.factor_vocab_sizes else ()
    return flat.reshape((flat.shape[0], *self.token_shape, *factor_axes, *rest))

  @nn.nowrap
  def check_tokens(self, tokens: jax.Array, allow_mask: bool) -> None:
    """ValueError if a concrete token id is outside [0, V) ([0, V] with MASK).

    tokens: int [B, N, F]. Traced values (under jit) are not checked.
    """
    if isinstance(tokens, jax.core.Tracer):
      return
    values = np.asarray(tokens)
    for f, size in enumerate(self.vocab_sizes):
      top = size if allow_mask else size - 1
      v = values[..., f]
      if v.size and (v.min() < 0 or v.max() > top):
        what = f'factor {f} ' if self.factor_vocab_sizes else ''
        extra = f' or the [MASK] id {size}' if allow_mask else ''
        raise ValueError(
            f'MaskGIT: {what}token ids in [{v.min()}, {v.max()}] but the '
            f'vocab size is {size}: ids must be in [0, {size}){extra}')

  # -- Network. --

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Logits for every position.

    Args:
      tokens: int [B, *shape] ([B, *shape, F] with factors); [MASK] allowed.
      labels: int [B] classes (conditional models; None: the null class).
      train: enables dropout (needs the 'dropout' rng).

    Returns:
      float32 [B, *shape, V] or [B, *shape, F, max V] (module docstring).
    """
    flat = self.flatten(tokens)
    self.check_tokens(flat, allow_mask=True)
    return self.unflatten(self.flat_logits(flat, labels, train=train))

  @nn.compact
  def flat_logits(self, flat: jax.Array, labels: jax.Array | None = None, *,
                  train: bool = False) -> jax.Array:
    """int [B, N, F] -> float32 logits [B, N, F, max V] (for loss/decoding)."""
    batch = flat.shape[0]
    bert = self.block_style == 'bert'
    # BERT's inits (MaskGIT's, MAGVIT's): truncated N(0, 0.02) in 2 stds;
    # else flax's, and N(0, 0.02) positions.
    bert_init = nn.initializers.truncated_normal(0.02)
    embed_init = bert_init if bert else nn.linear.default_embed_init
    kernel_init = bert_init if bert else transformer.DEFAULT_KERNEL_INIT
    pos_init = bert_init if bert else nn.initializers.normal(0.02)
    embeds = [
        nn.Embed(size + 1, self.width, embedding_init=embed_init,
                 name=f'embed_{f}') for f, size in enumerate(self.vocab_sizes)
    ]
    x = sum(embed(flat[..., f]) for f, embed in enumerate(embeds))
    if labels is not None and not self.num_classes:
      raise ValueError('MaskGIT: class labels given to an unconditional model '
                       '(num_classes = 0); pass labels=None')
    if self.num_classes:
      if labels is None:
        labels = jnp.full((batch,), self.num_classes, jnp.int32)
      labels = jnp.asarray(labels)
      api.check_class_ids(labels, batch, self.num_classes, 'MaskGIT')
      cls = nn.Embed(self.num_classes + 1, self.width,
                     embedding_init=embed_init,
                     name='class_embed')(labels.astype(jnp.int32))
      x = jnp.concatenate([cls[:, None], x], axis=1)
    pos = self.param('pos_embedding', pos_init, (x.shape[1], self.width))
    epsilon = _BERT_LAYER_NORM_EPSILON if bert else 1e-6
    x = x + pos
    if bert:
      x = norms.LayerNorm(epsilon, name='embed_norm')(x)
    x = nn.Dropout(self.dropout_rate,
                   deterministic=not train)(x.astype(self.dtype))
    x = Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                    self.dropout_rate, dtype=self.dtype,
                    layer_norm_epsilon=epsilon, exact_gelu=self.exact_gelu,
                    mlp_hidden_dropout=self.mlp_hidden_dropout, post_norm=bert,
                    scan_layers=self.scan_layers,
                    remat_policy=self.remat_policy, kernel_init=kernel_init,
                    name='transformer')(x, None, train=train)
    x = x[:, 1:] if self.num_classes else x
    max_vocab = max(self.vocab_sizes)
    heads = []
    for f, size in enumerate(self.vocab_sizes):
      if self.tied_heads:
        h = linear.Dense(self.width, dtype=self.dtype, kernel_init=kernel_init,
                         name=f'tied_head_{f}')(x)
        h = norms.LayerNorm(epsilon, dtype=self.dtype,
                            name=f'tied_head_norm_{f}')(nn.gelu(h))
        bias = self.param(f'tied_head_bias_{f}', nn.initializers.zeros, (size,))
        # Against the codes' embeddings, without the [MASK] row.
        logits = embeds[f].attend(h)[..., :size] + bias
      else:
        # float32 logits (bfloat16 ones have 8 significant bits, ties in
        # the confidences), as the tied path's float32 attend.
        logits = linear.Dense(
            size, dtype=jnp.float32,
            kernel_init=(kernel_init
                         if bert else nn.linear.default_kernel_init),
            name=f'head_{f}')(x.astype(jnp.float32))
      heads.append(
          jnp.pad(logits.astype(jnp.float32),
                  ((0, 0), (0, 0), (0, max_vocab - size)),
                  constant_values=NEG_INF))
    return jnp.stack(heads, axis=2)

  @nn.nowrap
  def sample(self, params, rng: jax.Array, batch_size: int, cond=None,
             **kwargs) -> jax.Array:
    """The generators API (DESIGN §2): `sample(self, ...)` with labels=cond."""
    return sample(self, params, rng, batch_size, labels=cond, **kwargs)


# ---------------------------------------------------------------- Training.


def masked_loss(model: MaskGIT, params, rng: jax.Array, tokens: jax.Array,
                labels: jax.Array | None = None, label_smoothing: float = 0.1,
                label_drop: float = 0.1, schedule_method: str = 'cosine',
                mask: jax.Array | None = None, train: bool = True,
                example_weights: jax.Array | None = None,
                unmasked_weight: float = 0.0,
                known_mask: jax.Array | None = None,
                mask_rounding: str = 'ceil'):
  """Masked-token cross-entropy on the masked positions (MaskGIT), and on
  the others with weight `unmasked_weight` (1: MAGVIT's default
  'mask+refine+recons' loss, which also reconstructs the given tokens).

  Args:
    model: a MaskGIT. params: its parameters.
    rng: for the mask, label dropout and dropout.
    tokens: int [B, *shape] ([B, *shape, F]) targets, no [MASK] ids.
    labels: int [B] or None.
    label_smoothing: eps; target (1 - eps) one-hot + eps / V_f uniform.
    label_drop: probability of replacing a label by the null class (with
      `train` only, as GPT's and VQ-Diffusion's losses).
    schedule_method: gamma for `mask_schedule.random_mask`.
    mask: bool [B, N] (True = masked) to use instead of a random one.
    train: dropout on.
    example_weights: float [B] weights of the examples (0 for eval padding).
    unmasked_weight: weight of the positions left unmasked.
    known_mask: bool [B, *shape] or [*shape]: given positions (e.g. the
      observed frames of frame prediction, `frame_prediction_mask`), never
      masked; the random mask's schedule counts the others only, as decoding
      from them does. None: none given.
    mask_rounding: how the random mask's count gamma(r) N is made whole
      ('ceil', MaskGIT; 'round', TiTok's release).

  Returns:
    (loss, metrics): loss = weighted mean over positions of the summed
    factor cross-entropies (the code's NLL); metrics: loss, nll (loss
    without the label smoothing, as eval measures it), accuracy (all
    factors right, masked positions), mask_ratio, loss_weight and
    accuracy_weight (the weights the loss and the accuracy are means
    over).
  """
  flat = model.flatten(tokens)
  model.check_tokens(flat, allow_mask=False)
  batch = flat.shape[0]
  mask_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
  if mask is None:
    maskable = (None if known_mask is None else
                ~flat_known_mask(model, known_mask, batch))
    mask = mask_schedule.random_mask(mask_rng, batch, model.num_tokens,
                                     schedule_method, maskable=maskable,
                                     rounding=mask_rounding)
  elif known_mask is not None:
    raise ValueError('MaskGIT: give a mask or known_mask, not both')
  if labels is not None and model.num_classes and label_drop > 0 and train:
    drop = jax.random.bernoulli(drop_rng, label_drop, (batch,))
    labels = jnp.where(drop, model.num_classes, labels)
  inputs = jnp.where(mask[..., None], model.mask_ids, flat)
  logits = model.apply({'params': params}, inputs, labels, train=train,
                       method=MaskGIT.flat_logits,
                       rngs={'dropout': dropout_rng})
  per_position = smoothed_cross_entropy(logits, flat, model.vocab_sizes,
                                        label_smoothing).sum(-1)
  masked = mask.astype(jnp.float32)
  if example_weights is not None:
    masked = masked * example_weights[:, None]
  weight = masked
  if unmasked_weight:
    unmasked = 1.0 - mask.astype(jnp.float32)
    if example_weights is not None:
      unmasked = unmasked * example_weights[:, None]
    weight = masked + unmasked_weight * unmasked
  weighted_mean = lambda x: (x * weight).sum() / jnp.maximum(weight.sum(), 1e-6)
  loss = weighted_mean(per_position)
  # The eval loss's measure (no smoothing): the smoothed loss sits above it
  # by the smoothing's cross-entropy whatever the model learns.
  nll = weighted_mean(
      smoothed_cross_entropy(logits, flat, model.vocab_sizes,
                             0.0).sum(-1)) if label_smoothing else loss
  correct = jnp.all(jnp.argmax(logits, -1) == flat, axis=-1)
  metrics = {
      'loss': loss,
      'nll': nll,
      'accuracy': (correct * masked).sum() / jnp.maximum(masked.sum(), 1.0),
      'mask_ratio': masked.mean(),
      'loss_weight': weight.sum(),
      'accuracy_weight': masked.sum()
  }
  return loss, metrics


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array,
                           vocab_sizes: Sequence[int],
                           label_smoothing: float) -> jax.Array:
  """logits [..., F, Vmax], targets int [..., F] -> CE [..., F].

  The smoothing mass eps is spread over factor f's own V_f ids only.
  """
  valid = jnp.arange(logits.shape[-1]) < jnp.asarray(vocab_sizes)[:, None]
  log_p = jnp.where(valid, jax.nn.log_softmax(logits, axis=-1), 0.0)
  one_hot = jax.nn.one_hot(targets, logits.shape[-1])
  uniform = valid / jnp.asarray(vocab_sizes, jnp.float32)[:, None]
  target = (1 - label_smoothing) * one_hot + label_smoothing * uniform
  return -(target * log_p).sum(-1)


# ---------------------------------------------------------------- Decoding.


@flax.struct.dataclass
class DecodeState:
  """Carry of the decoding loop. tokens: int32 [B, N, F] with [MASK] ids;
  num_unknown: int32 [B], the positions to generate (the schedule's N)."""
  rng: jax.Array
  step: jax.Array
  tokens: jax.Array
  num_unknown: jax.Array


def init_state(model: MaskGIT, rng: jax.Array, batch_size: int,
               known_tokens: jax.Array | None = None,
               known_mask: jax.Array | None = None) -> DecodeState:
  """All positions masked, except the known ones.

  Args:
    model, rng, batch_size: as `sample`.
    known_tokens: int [B, *shape(, F)] ids, read where known_mask is True.
    known_mask: bool [B, *shape] (or [*shape], shared by the batch): the
      positions given (e.g. `frame_prefix_mask`); None: none.
  """
  factors = len(model.vocab_sizes)
  masked = jnp.broadcast_to(model.mask_ids,
                            (batch_size, model.num_tokens, factors))
  if known_mask is None and known_tokens is not None:
    raise ValueError('MaskGIT: known_tokens needs known_mask (which positions '
                     'are given, e.g. frame_prefix_mask)')
  if known_mask is None:
    return DecodeState(
        rng=rng, step=jnp.zeros((), jnp.int32), tokens=masked,
        num_unknown=jnp.full((batch_size,), model.num_tokens, jnp.int32))
  if known_tokens is None:
    raise ValueError('MaskGIT: known_mask needs known_tokens')
  flat_mask = flat_known_mask(model, known_mask, batch_size)
  if jnp.ndim(known_tokens) == 0 or jnp.shape(known_tokens)[0] != batch_size:
    raise ValueError(
        f'MaskGIT: known_tokens of shape {tuple(jnp.shape(known_tokens))}, '
        f'expected [B, {", ".join(map(str, model.token_shape))}(, F)] with '
        f'B = {batch_size}')
  known = model.flatten(jnp.asarray(known_tokens, jnp.int32))
  model.check_tokens(jnp.where(flat_mask[..., None], known, 0),
                     allow_mask=False)
  tokens = jnp.where(flat_mask[..., None], known, masked)
  return DecodeState(
      rng=rng, step=jnp.zeros((), jnp.int32), tokens=tokens,
      num_unknown=model.num_tokens - flat_mask.sum(-1).astype(jnp.int32))


def flat_known_mask(model: MaskGIT, known_mask: jax.Array,
                    batch_size: int) -> jax.Array:
  """known_mask bool [B, *shape] (or [*shape], shared by the batch) of the
  model's token grid -> bool [B, N]; a ValueError names another shape."""
  mask = jnp.asarray(known_mask, bool)
  if mask.ndim == len(model.token_shape):
    mask = mask[None]  # Shared by the batch.
  shape = tuple(model.token_shape)
  if mask.shape[1:] != shape or mask.shape[0] not in (1, batch_size):
    raise ValueError(
        f'MaskGIT: known_mask of shape {tuple(jnp.shape(known_mask))}'
        f', expected [B, {", ".join(map(str, shape))}] or '
        f'[{", ".join(map(str, shape))}] with B = {batch_size}')
  return jnp.broadcast_to(mask.reshape(mask.shape[0], model.num_tokens),
                          (batch_size, model.num_tokens))


def frame_prefix_mask(token_shape: Sequence[int],
                      num_frames: int) -> np.ndarray:
  """bool [T, H, W]: the first num_frames latent frames of a video token grid
  (T, H, W) known, for generation from observed frames (MAGVIT-v2's causal
  tokenizer: those tokens depend on the observed frames only)."""
  if len(token_shape) != 3 or not 0 <= num_frames <= token_shape[0]:
    raise ValueError(f'a frame prefix needs a (T, H, W) token shape and 0 <= '
                     f'num_frames <= T, got {tuple(token_shape)} and '
                     f'{num_frames}')
  mask = np.zeros(tuple(token_shape), bool)
  mask[:num_frames] = True
  return mask


# How a step draws tokens and scores them (`decode_step`).
DECODINGS = ('maskgit', 'titok')


def decode_step(model: MaskGIT, params, state: DecodeState,
                labels: jax.Array | None = None, *, num_steps: int = 8,
                temperature: float = 1.0, choice_temperature: float = 4.5,
                guidance_scale=0.0, guidance_schedule: str = 'constant',
                schedule_method: str = 'cosine',
                decoding: str = 'maskgit') -> DecodeState:
  """One MaskGIT step s = state.step of S = num_steps (DESIGN §4).

  Predicts every masked token, samples it (temperature 0: argmax), scores it
  by log p(sampled) (summed over factors, untempered model probabilities)
  + choice_temperature (1 - (s+1)/S) Gumbel, known tokens +inf, and re-masks
  the clamp(floor(gamma((s+1)/S) N), 1, #unknown - 1) least confident
  (0 at the last step or with nothing unknown), N = state.num_unknown, the
  positions to generate.
  Revealed (and given) tokens never change.

  decoding 'titok' is TiTok's released sampler instead, as its FID script
  runs it (1d-tokenizer sample_imagenet_titok.py: softmax temperature
  annealing on): the guided logits are divided by 0.5 + 0.8 (1 - (s+1)/S),
  tokens are drawn at the annealed temperature t = choice_temperature
  (1 - (s+1)/S) (the argmax of logits + t Gumbel; `temperature` unused) and
  scored by their divided logit, not log p, + t Gumbel.
  """
  rng, sample_rng, gumbel_rng = jax.random.split(state.rng, 3)
  tokens, step = state.tokens, state.step
  batch, n = tokens.shape[:2]
  unknown = tokens[..., 0] == model.mask_ids[0]  # [B, N]
  ratio = (step + 1).astype(jnp.float32) / num_steps
  apply = functools.partial(model.apply, {'params': params},
                            method=MaskGIT.flat_logits)
  use_cfg = (labels is not None and model.num_classes and
             (guidance_schedule != 'constant' or
              not isinstance(guidance_scale, (int, float)) or guidance_scale))
  if use_cfg:
    null = jnp.full_like(labels, model.num_classes)
    both = apply(jnp.concatenate([tokens, tokens]),
                 jnp.concatenate([labels, null]))
    # 'linear': w s / S, from 0 at the first step (TiTok's MUSE-style
    # schedule sets the scale of step s at the end of step s - 1).
    scale = guidance_scale * (step.astype(jnp.float32) / num_steps
                              if guidance_schedule == 'linear' else 1.0)
    logits = api.guided_logits(both[:batch], both[batch:], scale)
  else:
    logits = apply(tokens, labels)  # [B, N, F, V]
  annealed = choice_temperature * (1.0 - ratio)
  if decoding == 'titok':
    logits = logits / (0.5 + 0.8 * (1.0 - ratio))
    sampled = jnp.argmax(
        logits + annealed * jax.random.gumbel(sample_rng, logits.shape), -1)
    scores = logits
  else:
    sampled = api.draw_or_argmax(sample_rng, logits, temperature)
    scores = jax.nn.log_softmax(logits, -1)
  sampled = jnp.where(unknown[..., None], sampled.astype(jnp.int32), tokens)
  score = jnp.take_along_axis(scores, sampled[..., None], -1)[..., 0].sum(-1)
  gumbel = jax.random.gumbel(gumbel_rng, (batch, n))
  confidence = score + annealed * gumbel
  confidence = jnp.where(unknown, confidence, jnp.inf)
  num_unknown = unknown.sum(-1)
  table = mask_schedule.decode_mask_count_table(n, num_steps, schedule_method)
  keep = jnp.asarray(table)[state.num_unknown, step]
  keep = jnp.maximum(1, jnp.minimum(num_unknown - 1, keep))
  # None at the last step, nor where every token is given (the clamp to 1
  # would re-mask a given token: all confidences are +inf).
  keep = jnp.where((step + 1 >= num_steps) | (num_unknown == 0), 0, keep)  # [B]
  ranks = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
  remask = ranks < keep[:, None]
  new_tokens = jnp.where(remask[..., None], model.mask_ids, sampled)
  return DecodeState(rng=rng, step=step + 1, tokens=new_tokens,
                     num_unknown=state.num_unknown)


def sample(model: MaskGIT, params, rng: jax.Array, batch_size: int,
           labels: jax.Array | None = None, num_steps: int = 8,
           temperature: float = 1.0, choice_temperature: float = 4.5,
           guidance_scale=0.0, guidance_schedule: str = 'constant',
           schedule_method: str = 'cosine', return_history: bool = False,
           known_tokens: jax.Array | None = None,
           known_mask: jax.Array | None = None, decoding: str = 'maskgit'):
  """Generates tokens [B, *shape] ([B, *shape, F]) in `num_steps` steps.

  Args:
    model, params: a MaskGIT and its parameters.
    rng: PRNG key. batch_size: B.
    labels: int [B] classes, or None (null class / unconditional).
    num_steps: S. temperature: token sampling (0, a Python number or an
      array: argmax).
    choice_temperature: scale of the Gumbel noise on the confidence, annealed
      linearly to 0 at the last step.
    guidance_scale: CFG w (needs labels); a Python 0 skips the unconditional
      pass, any array runs it. guidance_schedule: 'constant' w, or 'linear'
      w s/S (as TiTok's release: 0 at the first step).
    schedule_method: gamma ('cosine', 'arccos', 'linear').
    return_history: also return int [S, B, *shape(, F)], the tokens after
      each step ([MASK] id where still masked).
    known_tokens, known_mask: tokens given, kept fixed and conditioned on
      (`init_state`); the schedule runs over the others. E.g. video
      prediction from observed frames: `frame_prefix_mask`.
    decoding: 'maskgit', or 'titok' (TiTok's released sampler:
      `decode_step`).

  Returns:
    tokens, or (tokens, history). Jit-able (static ints/strings/Python temps).
  """
  if guidance_schedule not in ('constant', 'linear'):
    raise ValueError(f'unknown guidance_schedule {guidance_schedule!r}')
  if decoding not in DECODINGS:
    raise ValueError(f'unknown decoding {decoding!r}; known: {DECODINGS}')
  api.check_sampling_settings(batch_size=batch_size, temperature=temperature,
                              choice_temperature=choice_temperature,
                              guidance_scale=guidance_scale)
  api.check_guidance_condition(guidance_scale, labels, 'MaskGIT',
                               conditional=bool(model.num_classes))
  if labels is not None and model.num_classes:
    # Here, while concrete: under guidance the steps see them joined with
    # the null labels, traced, and unchecked.
    api.check_class_ids(labels, batch_size, model.num_classes, 'MaskGIT')
    labels = jnp.asarray(labels)  # Python lists too (joined under guidance).
  step_fn = functools.partial(
      decode_step, model, params, labels=labels, num_steps=num_steps,
      temperature=temperature, choice_temperature=choice_temperature,
      guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
      schedule_method=schedule_method, decoding=decoding)
  state = init_state(model, rng, batch_size, known_tokens, known_mask)
  if not return_history:
    state = jax.lax.fori_loop(0, num_steps, lambda _, s: step_fn(s), state)
    return model.unflatten(state.tokens)

  def body(s, _):
    s = step_fn(s)
    return s, s.tokens

  state, history = jax.lax.scan(body, state, None, length=num_steps)
  history = jax.vmap(model.unflatten)(history)
  return model.unflatten(state.tokens), history


# ---------------------------------------------------------------- Config.


def default_config() -> ml_collections.ConfigDict:
  """A tiny MaskGIT for CPU tests; configs/maskgit/ has the paper sizes."""
  config = ml_collections.ConfigDict()
  config.vocab_size = 64  # Codes per token (product of factors).
  config.token_shape = (4, 4)  # Per example: (n,), (h, w) or (t, h, w).
  config.factor_vocab_sizes = ()  # () or codes per factor: (512, 512).
  config.num_classes = 0  # 0: unconditional; else + 1 null class.
  config.width = 32  # Transformer width (paper: 768).
  config.num_layers = 2  # Transformer blocks (paper: 24).
  config.num_heads = 2  # Attention heads (paper: 16).
  config.mlp_dim = 64  # MLP hidden width (paper: 3072).
  config.dropout_rate = 0.0  # Dropout (paper: 0.1).
  # Dropout on the MLP's hidden units too (ViT's); False: only after the
  # MLP, as MaskGIT's and MAGVIT's BERT blocks.
  config.mlp_hidden_dropout = True
  # Output heads tied to the (per-factor) input embeddings, as MaskGIT and
  # MAGVIT-v2; False: a Dense head per factor (vqlab before 2026-12).
  config.tied_heads = True
  # 'pre_ln': vqlab's pre-LN blocks; 'bert': MaskGIT's and MAGVIT's post-LN
  # BERT (what the released MaskGIT checkpoints are).
  config.block_style = 'pre_ln'
  # The erf GELU in the blocks' MLPs (HF BERT's: TiTok's generator); False:
  # the tanh approximation (MaskGIT's, MAGVIT's).
  config.exact_gelu = False
  transformer.add_stack_config(config)
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> MaskGIT:
  """Builds a MaskGIT from a validated config."""
  factors = tuple(config.factor_vocab_sizes)
  if factors and int(np.prod(factors)) != config.vocab_size:
    raise ConfigError(
        f'{prefix}.factor_vocab_sizes',
        f'product of {factors} != vocab_size {config.vocab_size}')
  if config.block_style not in BLOCK_STYLES:
    raise ConfigError(
        f'{prefix}.block_style',
        f'{config.block_style!r} is not one of {", ".join(BLOCK_STYLES)}')
  if config.width % config.num_heads:
    raise ConfigError(
        f'{prefix}.num_heads', f'{config.num_heads} does not divide width '
        f'{config.width}')
  return MaskGIT(vocab_size=config.vocab_size, token_shape=tuple(
      config.token_shape), factor_vocab_sizes=factors,
                 num_classes=config.num_classes, width=config.width,
                 num_layers=config.num_layers, num_heads=config.num_heads,
                 mlp_dim=config.mlp_dim, dropout_rate=config.dropout_rate,
                 mlp_hidden_dropout=config.mlp_hidden_dropout,
                 dtype=jnp.dtype(dtype), tied_heads=config.tied_heads,
                 block_style=config.block_style, exact_gelu=config.exact_gelu,
                 **transformer.stack_options(config, prefix))


# ------------------------------------------------------------ Generator API.


def _condition_spec(config: ml_collections.ConfigDict) -> api.ConditionSpec:
  if config.num_classes:
    return api.ConditionSpec('class', num_classes=config.num_classes)
  return api.ConditionSpec()


def _check_fits(config: ml_collections.ConfigDict, tokenizer: Any,
                token_shape: tuple[int, ...], where: str) -> None:
  api.check_token_grid(config, tokenizer, token_shape, where,
                       factors_key='model.factor_vocab_sizes')


def _init(model: MaskGIT, rng: jax.Array, tokens: jax.Array, cond):
  """Params of `model` for tokens [B, *shape(, F)], labels [B] or None."""
  return model.init(rng, tokens, cond)['params']


def _loss(model: MaskGIT, params, tokens: jax.Array, cond, rng: jax.Array, *,
          settings: ml_collections.ConfigDict, train: bool,
          example_weights: jax.Array | None = None, loss_state=None):
  """`masked_loss` with label smoothing (train only), label dropout and
  frame prediction (`frame_prediction_mask`)."""
  drop_rng, rng = jax.random.split(rng)
  drop = api.drop_mask(drop_rng, settings.label_drop, cond, train)
  if drop is not None:
    cond = jnp.where(drop, model.num_classes, cond)
  known_mask = None
  if (len(model.token_shape) == 3 and settings.observed_frames and
      settings.observed_frames_rate):
    task_rng, rng = jax.random.split(rng)
    known_mask = frame_prediction_mask(task_rng, tokens.shape[0],
                                       model.token_shape,
                                       settings.observed_frames,
                                       settings.observed_frames_rate)
  loss, metrics = masked_loss(
      model, params, rng, tokens, cond,
      label_smoothing=settings.label_smoothing if train else 0.0,
      label_drop=0.0, schedule_method=settings.mask_schedule, train=train,
      example_weights=example_weights, unmasked_weight=settings.unmasked_weight,
      known_mask=known_mask, mask_rounding=settings.mask_rounding)
  return loss, metrics, None


def frame_prediction_mask(rng: jax.Array, batch_size: int,
                          token_shape: Sequence[int], num_frames: int,
                          rate: float) -> jax.Array:
  """bool [B, *token_shape]: the given positions of MAGVIT's frame-prediction
  task.

  Each example, with probability `rate`, is given its first num_frames
  latent frames (`frame_prefix_mask`), which training then never masks;
  the others are trained from scratch (all positions maskable).
  """
  prefix = jnp.asarray(frame_prefix_mask(token_shape, num_frames))
  chosen = jax.random.bernoulli(rng, rate, (batch_size,))
  return chosen.reshape((-1,) + (1,) * prefix.ndim) & prefix


def _sample(model: MaskGIT, params, rng: jax.Array, batch_size: int, cond, *,
            settings: ml_collections.ConfigDict,
            loss_settings: ml_collections.ConfigDict,
            token_shape: tuple[int, ...], known=None) -> jax.Array:
  """`sample` with the settings; decoding follows the training schedule;
  known (tokens, mask): given tokens."""
  del token_shape  # The model's own.
  known_tokens, known_mask = known if known is not None else (None, None)
  return sample(model, params, rng, batch_size, cond,
                num_steps=settings.num_steps, temperature=settings.temperature,
                choice_temperature=settings.choice_temperature,
                guidance_scale=settings.guidance_scale,
                guidance_schedule=settings.guidance_schedule,
                schedule_method=loss_settings.mask_schedule,
                known_tokens=known_tokens, known_mask=known_mask,
                decoding=settings.decoding)


def _settings_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """Guidance and label dropout need classes; the guidance schedule, a
  guidance scale; observed frames, video tokens; the rate of frame
  prediction, observed frames in training."""
  keys = {
      'loss.label_smoothing', 'loss.mask_schedule', 'loss.unmasked_weight',
      'loss.mask_rounding', 'sample.num_steps', 'sample.choice_temperature',
      'sample.decoding'
  }
  if config.sample.decoding != 'titok':  # TiTok's draws anneal their own.
    keys.add('sample.temperature')
  if len(config.model.token_shape) == 3:  # Video tokens: frame prediction.
    keys |= {'sample.observed_frames', 'loss.observed_frames'}
    if config.loss.observed_frames:
      keys.add('loss.observed_frames_rate')
  if config.model.num_classes:
    keys |= {'loss.label_drop', 'sample.guidance_scale'}
    if config.sample.guidance_scale:
      keys.add('sample.guidance_schedule')
  return frozenset(keys)


API = api.GeneratorApi(condition_spec=_condition_spec, check_fits=_check_fits,
                       init=_init, loss=_loss, sample=_sample,
                       settings_read=_settings_read, eval_draws=True)
