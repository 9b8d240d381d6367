"""VQ-Diffusion: a transformer predicts p(x_0 | x_t, y) over a token grid
corrupted by mask-and-replace diffusion (math: `discrete_diffusion`).

Network: embeddings of the K + 1 states + positions, `ConditionedBlock`s
(self-attention and MLP after adaptive LayerNorms on the timestep), a final
LayerNorm and a head over the K codes. Conditions (`condition`):
  'none'   nothing more;
  'class'  labels [B] in [0, num_classes] (id num_classes: the null class):
           as the release's ImageNet model (Condition2ImageTransformer,
           attn_type 'selfcondition', class_type 'adalayernorm'), each block's
           MLP LayerNorm is adaptive on the class instead of the timestep,
           through the block's own class embedding table [num_classes + 1,
           width]; no cross-attention;
  'text'   {'states': [B, L, cond_dim] from a frozen text encoder (MiniLM,
           CLIP), 'mask': bool [B, L]} with text_encoder='frozen', or
           {'ids': int [B, L] UTF-8 bytes, 'mask'} with text_encoder='bytes'
           (a small trainable encoder, the fallback without weights): each
           block cross-attends to the text after its self-attention, from
           an AdaLN on the timestep (the release's 'selfcross').
The null condition of classifier-free guidance is learned (the null class's
rows, or a learned context vector for text); training drops the condition per
example with probability `cond_drop`.

Blocks (`block_style`): 'vqlab', vqlab's blocks above; 'release' (condition
'class' only), the released ImageNet network (Condition2ImageTransformer,
vqlab.nn.vq_diffusion_release): token embeddings plus row + column position
tables of `position_grid` cells whose first N the N tokens take in raster
order (the ImageNet model's 32 x 32 tables over 16 x 16 tokens: table rows
0-7), blocks with per-block learned timestep and class AdaLN tables, the
3x3-conv GELU2 MLP, normal(0.02) inits, LayerNorm epsilon 1e-5, and its
output log_softmax clamped to [-70, 0] with a [MASK] entry of -70. Its null
class (`null_class`) is the mean of each class table's rows (the release's
1000-row tables; it checks only the batch's first label, vqlab each
label) or a learned row (its 1001-row tables); the released checkpoints
load into it (vqlab.convert.vq_diffusion). Departures of the 'vqlab' blocks
from the release's:
the timestep enters as one sinusoidal embedding and MLP shared by the blocks
(the release: each AdaLN has its own table of T learned embeddings); the MLP
of 'none' and 'text' blocks is after an AdaLN on the timestep (the release: a
plain LayerNorm); the MLP is dense with tanh GELU (the release: GELU2,
x sigmoid(1.702 x), in every config; its ImageNet model's MLP is 3x3
convolutions); one learned table of positions (the release: row + column
tables); padded text positions are masked in the cross-attention (the
release's CrossAttention ignores its mask: CLIP's padding is attended to);
the text models' null condition is one learned context vector, the only
position the cross-attention sees (the release: a learned [77, 512]
sequence in place of CLIP's output, all of it attended to); the AdaLN
projections start at zero (the release: normal(0.02)). Class
models saved by vqlab up to 2026-12-05, which cross-attended to a class
token, do not restore into this network (the checkpoint error lists their
cross_attention params): retrain them.

Loss (DESIGN §4): L_vlb(t) + lambda w(t) CE(x_0, p(x_0 | x_t)) with
w(t) = 2 - (t-1)/T (the official code's 1 + (1 - t'/T), its t' = t - 1 from
0), t uniform or importance-sampled (p(t) ~ sqrt(E[L_t^2]) from a running
history, each t seen 10 times first; both terms reweighted by 1/(T p(t)): the
official code's 1/p(t) over T, so its loss is T times this one and its
gradient clip of 0.5 is 0.5 / T here).
Sampling walks decreasing times T = t_0 > t_1 > ... > 0 (all of them: the full
chain; every d-th: the fast sampler) from all-[MASK], with guidance
log p_u + s (log p_c - log p_u), temperature and truncation (keep the most
likely codes of p(x_0) up to cumulative probability r). A jump from t to u
draws from the exact q(x_u | x_t, x_0) (the paper's fast sampler). The
release's `sample_fast` does not: it takes the one-step posterior at time
u + 1 (as if x_t were there) and calls the network once more at t = 1, so its
fast samples (infer_speed > 1) are not this sampler's.

The purity sampler (Improved VQ-Diffusion, Tang et al. 2022) walks the same
times but only reveals [MASK] positions, never replacing a revealed token: at
each step, with p = p(x_0 | x_t) and the purity s_i = max_k p_i(k) / max_j
max_k p_j(k), it reveals as many masked positions as the schedule unmasks
(from round(N gbar_t) masked to round(N gbar_u)), drawn without replacement
with probabilities proportional to s_i (purer positions first), each with a
token from softmax((1 + r s_i) log p_i) (r = `purity_weight`, the paper's 1:
purer positions also sample sharper). Its last step, to t = 0, is the
chain's: every position, revealed or not, drawn from p(x_0 | x_t), as the
release's p_sample at its t = 0. (The release reveals counts tabulated for
T in {10, 25, 50, 100} and 1024 tokens, e.g. 11, 11, 10, 10, 11, ... at T =
100; round(N gbar_t) gives about as many, 10 or 11 a step there, for any T
and N.)
"""

from collections.abc import Mapping
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab import config_schema
from vqlab.errors import ConfigError
from vqlab.generators import api
from vqlab.generators import discrete_diffusion as dd
from vqlab.nn import linear
from vqlab.nn import norms
from vqlab.nn import transformer
from vqlab.nn import vq_diffusion_release as release
from vqlab.nn.conditioned_transformer import ConditionedBlock
from vqlab.nn.conditioned_transformer import timestep_embedding
from vqlab.nn.transformer import Transformer

CONDITIONS = ('none', 'class', 'text')
BLOCK_STYLES = ('vqlab', 'release')
NULL_CLASSES = ('mean', 'row')
TEXT_ENCODERS = ('frozen', 'bytes')
SAMPLERS = ('chain', 'purity')
BYTE_VOCAB = 257  # UTF-8 bytes + padding id 256.


class VQDiffusion(nn.Module):
  """The denoiser (module docstring).

  Attributes:
    vocab_size: K codes. token_shape: one example's tokens, e.g. (16, 16).
    num_timesteps: T. width, num_layers, num_heads, mlp_dim, dropout_rate.
    condition: 'none' | 'class' | 'text'. num_classes: for 'class'.
    text_encoder: 'frozen' | 'bytes'. cond_dim: width of frozen text states.
    schedule: (abar_1, abar_T, gbar_1, gbar_T).
    dtype: compute dtype of the embeddings and blocks; the final norm, the
      head and the log-probabilities are float32.
    scan_layers, remat_policy: how the blocks run (vqlab.nn.transformer).
    block_style: 'vqlab' or 'release' (module docstring).
    position_grid: 'release': (rows, cols) of the position tables; ():
      token_shape.
    null_class: 'release': the null class's embedding in each class table,
      'mean' of the class rows or a learned 'row'.
  """
  vocab_size: int
  token_shape: Sequence[int]
  num_timesteps: int = 100
  width: int = 64
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 128
  dropout_rate: float = 0.0
  condition: str = 'none'
  num_classes: int = 10
  text_encoder: str = 'frozen'
  cond_dim: int = 384
  schedule_values: Sequence[float] = (0.99999, 0.000009, 0.000009, 0.99999)
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = 'none'
  block_style: str = 'vqlab'
  position_grid: Sequence[int] = ()
  null_class: str = 'mean'

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.token_shape))

  @nn.nowrap
  def schedule(self) -> dd.Schedule:
    return dd.make_schedule(self.vocab_size, self.num_timesteps,
                            *self.schedule_values)

  @nn.nowrap
  def check_states(self, x_t: jax.Array) -> None:
    """ValueError for a wrong shape or (concrete) ids outside [0, K]."""
    if tuple(x_t.shape[1:]) != tuple(self.token_shape):
      raise ValueError(f'VQDiffusion: tokens of shape {tuple(x_t.shape)}, '
                       f'expected [B, {", ".join(map(str, self.token_shape))}]')
    if isinstance(x_t, jax.core.Tracer):
      return
    values = np.asarray(x_t)
    if values.size and (values.min() < 0 or values.max() > self.vocab_size):
      raise ValueError(f'VQDiffusion: token ids in [{values.min()}, '
                       f'{values.max()}], but the vocab size is '
                       f'{self.vocab_size}: ids must be in [0, '
                       f'{self.vocab_size}) (or the [MASK] id '
                       f'{self.vocab_size})')

  def _labels(self, cond, drop, batch: int) -> jax.Array:
    """Class ids int [B]; the null class num_classes for cond None and
    where drop."""
    if cond is not None:
      api.check_class_ids(cond, batch, self.num_classes, 'VQDiffusion')
      cond = jnp.asarray(cond)
    labels = (jnp.full((batch,), self.num_classes, jnp.int32)
              if cond is None else cond.astype(jnp.int32))
    if drop is not None:
      labels = jnp.where(drop, self.num_classes, labels)
    return labels

  @nn.nowrap
  def _check_text(self, cond, batch: int) -> None:
    """ValueError unless cond is {'states' [B, L, cond_dim] ('frozen') or
    'ids' [B, L] ('bytes'), 'mask' [B, L]}."""
    key = 'states' if self.text_encoder == 'frozen' else 'ids'
    width = f', {self.cond_dim}' if key == 'states' else ''
    want = f"{{'{key}': [B, L{width}], 'mask': [B, L]}}"
    if not isinstance(cond, Mapping) or {key, 'mask'} - set(cond):
      got = (f'a dict with keys {sorted(cond)}'
             if isinstance(cond, Mapping) else type(cond).__name__)
      raise ValueError(f'VQDiffusion: a text condition ({self.text_encoder} '
                       f'encoder) is {want} (prompts encoded by vqlab.text), '
                       f'got {got}')
    shape, mask_shape = jnp.shape(cond[key]), jnp.shape(cond['mask'])
    rank = 3 if key == 'states' else 2
    if (len(shape) != rank or shape[0] != batch or mask_shape != shape[:2] or
        (key == 'states' and shape[-1] != self.cond_dim)):
      raise ValueError(f'VQDiffusion: a text condition for B = {batch} is '
                       f'{want}, got {key} {shape} and mask {mask_shape}')

  def _context(self, cond, drop, batch: int):
    """Text: (context [B, L, width], mask [B, L]); else (None, None)."""
    if self.condition != 'text':
      return None, None
    null = self.param('null_context', nn.initializers.normal(0.02),
                      (self.width,))
    if cond is None:
      return (jnp.broadcast_to(null, (batch, 1, self.width)).astype(self.dtype),
              jnp.ones((batch, 1), bool))
    self._check_text(cond, batch)
    mask = cond['mask'].astype(bool)
    if self.text_encoder == 'frozen':
      states = linear.Dense(self.width, dtype=self.dtype,
                            name='text_proj')(cond['states'].astype(self.dtype))
    else:
      ids = cond['ids'].astype(jnp.int32)
      states = nn.Embed(BYTE_VOCAB, self.width, name='byte_embed')(ids)
      pos = self.param('byte_pos', nn.initializers.normal(0.02),
                       (ids.shape[1], self.width))
      attn_mask = mask[:, None, None, :]
      states = Transformer(2, self.num_heads, 2 * self.width, dtype=self.dtype,
                           name='text_encoder')(
                               (states + pos).astype(self.dtype), attn_mask)
    if drop is not None:
      null_states = linear.broadcast_param(null, states.shape, states.dtype)
      states = jnp.where(drop[:, None, None], null_states, states)
      first = jnp.arange(mask.shape[1]) == 0
      mask = jnp.where(drop[:, None], first[None], mask)
    return states, mask

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, cond: Any = None,
               drop: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """log p(x_0 | x_t, y).

    Args:
      x_t: int [B, *token_shape] states (K = [MASK]).
      t: int [B] times in [1, T].
      cond: see the module docstring (None: the null condition).
      drop: bool [B], replace the condition by the null one (CFG training).
      train: dropout on.

    Returns:
      float32 [B, N, K + 1], N = prod(token_shape); the [MASK] entry is
      log 0 (dd.LOG_ZERO).
    """
    self.check_states(x_t)
    if self.condition == 'none' and cond is not None:
      raise ValueError("VQDiffusion: condition 'none' takes cond=None")
    batch = x_t.shape[0]
    flat = x_t.reshape(batch, -1).astype(jnp.int32)
    if self.block_style == 'release':
      return self._release_log_probs(flat, t, self._labels(cond, drop, batch),
                                     train)
    x = nn.Embed(self.vocab_size + 1, self.width, name='token_embed')(flat)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02),
                     (self.num_tokens, self.width))
    x = (x + pos).astype(self.dtype)
    emb = timestep_embedding(t, self.width)
    emb = linear.Dense(self.width, dtype=self.dtype, name='time_mlp_0')(emb)
    emb = linear.Dense(self.width, dtype=self.dtype,
                       name='time_mlp_1')(nn.silu(emb))
    context, context_mask = self._context(cond, drop, batch)
    classes, labels = 0, None
    if self.condition == 'class':  # The blocks' class AdaLN (+ null row).
      classes, labels = self.num_classes + 1, self._labels(cond, drop, batch)
    fields = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  dropout_rate=self.dropout_rate, dtype=self.dtype,
                  num_classes=classes)
    x = transformer.apply_layers(ConditionedBlock, fields, self.num_layers, x,
                                 emb, context, context_mask, labels, train,
                                 scan=self.scan_layers,
                                 remat_policy=self.remat_policy)
    x = norms.LayerNorm(dtype=jnp.float32, name='final_norm')(x)
    # float32 logits: bfloat16 ones have 8 significant bits (ties in
    # truncation and the purity sampler's maxima).
    logits = linear.Dense(self.vocab_size, dtype=jnp.float32, name='head')(x)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.concatenate(
        [log_p, jnp.full(log_p.shape[:-1] + (1,), dd.LOG_ZERO)], axis=-1)

  def _release_log_probs(self, flat: jax.Array, t: jax.Array, labels: jax.Array,
                         train: bool) -> jax.Array:
    """The release's network (vqlab.nn.vq_diffusion_release): flat int
    [B, N] states, t int [B], labels int [B] -> float32 [B, N, K + 1]
    log p(x_0 | x_t) clamped to [-70, 0], the [MASK] entry -70."""
    init = nn.initializers.normal(0.02)
    x = nn.Embed(self.vocab_size + 1, self.width, embedding_init=init,
                 name='token_embed')(flat)
    rows, cols = self.position_grid or self.token_shape
    positions = release.grid_positions(
        self.param('row_embedding', init, (rows, self.width)),
        self.param('col_embedding', init, (cols, self.width)), self.num_tokens)
    x = (x + positions).astype(self.dtype)
    class_rows = self.num_classes + (self.null_class == 'row')
    fields = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  num_timesteps=self.num_timesteps, class_rows=class_rows,
                  grid=tuple(self.token_shape), dropout_rate=self.dropout_rate,
                  dtype=self.dtype)
    x = transformer.apply_layers(release.ReleaseBlock, fields, self.num_layers,
                                 x, t.astype(jnp.int32), labels, train,
                                 scan=self.scan_layers,
                                 remat_policy=self.remat_policy)
    x = norms.LayerNorm(release.LAYER_NORM_EPSILON, dtype=jnp.float32,
                        name='final_norm')(x)
    logits = linear.Dense(self.vocab_size, dtype=jnp.float32, kernel_init=init,
                          name='head')(x)
    log_p = jnp.maximum(jax.nn.log_softmax(logits, axis=-1),
                        release.LOG_PROB_FLOOR)
    return jnp.concatenate(
        [log_p,
         jnp.full(log_p.shape[:-1] + (1,), release.LOG_PROB_FLOOR)], axis=-1)

  @nn.nowrap
  def sample(self, params, rng: jax.Array, batch_size: int, cond=None,
             **kwargs) -> jax.Array:
    """The generators API: see the module-level `sample`."""
    return sample(self, params, rng, batch_size, cond, **kwargs)


# ---------------------------------------------------------------- Training.


def sample_times(rng: jax.Array, batch_size: int, num_timesteps: int,
                 loss_state: dict[str, jax.Array] | None = None,
                 method: str = 'uniform', num_tokens: int = 1):
  """t [B] in [1, T] and its weight 1 / (T p(t)) [B].

  'importance' (the official code's): p(t) ~ sqrt(E[L_t^2] + 1e-10) + 1e-4,
  with t = 1 (the decoder term, which training drives towards 0) given
  t = 2's weight, once every t has more than 10 recorded losses in
  loss_state {'lt_sq', 'lt_count'} ([T + 1] each); uniform before. The
  official L_t is an example's sum over its `num_tokens` tokens, this
  history's their mean: its floors are 1e-10 / n^2 and 1e-4 / n here.
  """
  if method not in ('uniform', 'importance'):
    raise ValueError(f"time sampling must be 'uniform' or 'importance', got "
                     f'{method!r}')
  if method == 'importance' and loss_state is None:
    raise ValueError("time sampling 'importance' needs the loss_state "
                     '(init_loss_state(num_timesteps))')
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps)
  if method == 'importance':
    lt_sq, count = loss_state['lt_sq'][1:], loss_state['lt_count'][1:]
    weights = jnp.sqrt(lt_sq + 1e-10 / num_tokens**2) + 1e-4 / num_tokens
    if num_timesteps > 1:
      weights = weights.at[0].set(weights[1])
    probs = jnp.where(jnp.all(count > 10), weights / weights.sum(), uniform)
  else:
    probs = uniform
  index = jax.random.choice(rng, num_timesteps, (batch_size,), p=probs)
  return index + 1, 1.0 / (num_timesteps * probs[index])


def update_loss_history(loss_state, t: jax.Array, vlb: jax.Array):
  """EMA (0.9) of L_t^2 and counts per t, for importance sampling.

  loss_state {'lt_sq', 'lt_count'} [T + 1] each, t [B], vlb [B]. Each t
  drawn moves once, by its last example's vlb, as the official scatter_
  does on CPU: a scatter of one value per example keeps whichever of a t's
  duplicates the backend writes last, which the GPU need not keep the same
  from run to run.
  """
  lt_sq, count = loss_state['lt_sq'], loss_state['lt_count']
  # The last example of each t (-1: not drawn); a max is order-free.
  examples = jnp.arange(t.shape[0], dtype=jnp.int32)
  last = jnp.full(lt_sq.shape, -1, jnp.int32).at[t].max(examples)
  new = 0.9 * lt_sq + 0.1 * vlb[jnp.maximum(last, 0)]**2
  return {
      'lt_sq': jnp.where(last >= 0, new, lt_sq),
      'lt_count': count.at[t].add(1)
  }


def init_loss_state(num_timesteps: int) -> dict[str, jax.Array]:
  """Zero moving averages of L_t^2 and zero counts of the draws of each t,
  [T + 1] each, from which importance sampling draws t."""
  return {
      'lt_sq': jnp.zeros((num_timesteps + 1,), jnp.float32),
      'lt_count': jnp.zeros((num_timesteps + 1,), jnp.int32)
  }


def diffusion_loss(model: VQDiffusion, params, rng: jax.Array,
                   tokens: jax.Array, cond: Any = None, *,
                   aux_weight: float = 5e-4, cond_drop: float = 0.0,
                   time_sampling: str = 'uniform', loss_state=None,
                   train: bool = True, example_weights=None):
  """VLB + lambda w(t) CE(x_0) on tokens [B, *shape], t drawn from
  `loss_state` (`sample_times`); returns (loss, metrics, draws). Metrics:
  loss, vlb, x0_ce, x0_accuracy; draws {'t': int [B], 'vlb': [B]}, from which
  `update_loss_history` moves the history."""
  schedule = model.schedule()
  batch = tokens.shape[0]
  x0 = tokens.reshape(batch, -1).astype(jnp.int32)
  t_rng, q_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
  t, weight = sample_times(t_rng, batch, model.num_timesteps, loss_state,
                           time_sampling, num_tokens=x0.shape[1])
  log_qt = dd.q_xt_given_x0(dd.one_hot_log(x0, model.vocab_size + 1), schedule,
                            t)
  x_t = dd.sample_states(q_rng, log_qt)
  drop = (jax.random.bernoulli(drop_rng, cond_drop, (batch,))
          if cond is not None and cond_drop > 0 else None)
  log_p_x0 = model.apply({'params': params}, x_t.reshape(tokens.shape), t, cond,
                         drop, train=train, rngs={'dropout': dropout_rng})
  terms = dd.loss_terms(log_p_x0, x0, x_t, schedule, t)
  # The official code's weights: w(t) = 1 + (1 - t'/T) with its t' = t - 1
  # (from 0), and both terms over the probability t was sampled with.
  w_t = 2.0 - (t - 1) / model.num_timesteps
  per_example = weight * (terms.vlb + aux_weight * w_t * terms.x0_ce)
  ew = jnp.ones((batch,)) if example_weights is None else example_weights
  count = jnp.maximum(ew.sum(), 1.0)
  mean = lambda v: (v * ew).sum() / count
  correct = (jnp.argmax(log_p_x0, -1) == x0).mean(-1)
  metrics = {
      'loss': mean(per_example),
      'vlb': mean(terms.vlb),
      'x0_ce': mean(terms.x0_ce),
      'x0_accuracy': mean(correct)
  }
  return metrics['loss'], metrics, {'t': t, 'vlb': terms.vlb}


# ---------------------------------------------------------------- Sampling.


def time_points(num_timesteps: int, num_steps: int | None = None) -> np.ndarray:
  """Decreasing ints T = t_0 > ... > t_S = 0; S = num_steps (None: T, the
  full chain; else evenly spaced skips)."""
  steps = num_timesteps if num_steps is None else num_steps
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f'num_steps must be in [1, {num_timesteps}], got {steps}')
  points = np.round(np.linspace(num_timesteps, 0, steps + 1)).astype(np.int32)
  return np.unique(points)[::-1]


def truncate(log_p: jax.Array, rate: float,
             renormalize: bool = True) -> jax.Array:
  """Keeps the most likely codes up to cumulative probability `rate` (at
  least one), renormalized unless `renormalize` is False (the release's
  purity sampler scores the kept codes' own probabilities); log_p [..., V]
  (rate > 0; rate >= 1: unchanged)."""
  api.check_sampling_settings(truncation=rate)
  if rate >= 1.0:
    return log_p
  order = jnp.argsort(-log_p, axis=-1, stable=True)
  sorted_p = jnp.take_along_axis(jnp.exp(log_p), order, axis=-1)
  before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
  keep_sorted = before < rate
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), -1)
  kept = jnp.where(keep, log_p, dd.LOG_ZERO)
  return jax.nn.log_softmax(kept, axis=-1) if renormalize else kept


def predict_x0(model: VQDiffusion, params, x_t, t, cond,
               guidance_scale: float = 0.0, temperature: float = 1.0,
               truncation: float = 1.0, renormalize: bool = True) -> jax.Array:
  """log p(x_0 | x_t) for sampling: guidance, temperature, truncation
  (`truncate`, with `renormalize`).

  Guidance (needs a condition), with w = guidance_scale as MaskGIT's and
  GPT's (0 is plain conditional sampling): log p_u + s (log p_c - log p_u)
  over the codes, renormalized, where VQ-Diffusion's s = 1 + w.
  """
  batch = x_t.shape[0]
  apply = functools.partial(model.apply, {'params': params})
  times = jnp.full((batch,), t, jnp.int32)
  if cond is not None and guidance_scale != 0.0:
    both = jax.tree.map(lambda a: jnp.concatenate([a, a]), cond)
    drop = jnp.concatenate([jnp.zeros(batch, bool), jnp.ones(batch, bool)])
    log_p = apply(jnp.concatenate([x_t, x_t]), jnp.concatenate([times, times]),
                  both, drop)
    cond_p, uncond_p = log_p[:batch, ..., :-1], log_p[batch:, ..., :-1]
    codes = uncond_p + (1.0 + guidance_scale) * (cond_p - uncond_p)
  else:
    codes = apply(x_t, times, cond)[..., :-1]
  if temperature == 0:  # All of p(x_0) on the most likely code, as GPT's 0.
    top = jax.nn.one_hot(jnp.argmax(codes, -1), codes.shape[-1], dtype=bool)
    codes = jnp.where(top, 0.0, dd.LOG_ZERO)
  else:
    codes = jax.nn.log_softmax(codes / temperature, axis=-1)
  codes = truncate(codes, truncation, renormalize)
  return jnp.concatenate(
      [codes, jnp.full(codes.shape[:-1] + (1,), dd.LOG_ZERO)], axis=-1)


def purity_reveal_counts(gbar: np.ndarray, points: np.ndarray,
                         num_tokens: int) -> np.ndarray:
  """int [S]: positions the purity sampler reveals at each step t_i ->
  t_{i+1}, taking the masked count from N (all [MASK]) down to
  round(N gbar_t) at each time point, 0 at the end; gbar: the cumulative
  mask probabilities [T + 1] (`dd.cumulative_schedules`)."""
  masked = np.round(num_tokens * gbar[points[1:]]).astype(np.int32)
  masked[-1] = 0  # t = 0: nothing is masked.
  return np.diff(np.concatenate([[num_tokens], masked])) * -1


def purity_step(rng: jax.Array, log_p_x0: jax.Array, x: jax.Array, num_reveal,
                purity_weight: float) -> jax.Array:
  """One purity-sampler step over flat tokens.

  Args:
    rng: PRNG key.
    log_p_x0: [B, N, K + 1] log p(x_0 | x_t) (the [MASK] column unused).
    x: int [B, N] current tokens, K = [MASK].
    num_reveal: int scalar: masked positions to reveal (all of them when
      fewer are masked).
    purity_weight: r of softmax((1 + r s_i) log p_i).

  Returns:
    int32 [B, N]: x with num_reveal masked positions, drawn without
    replacement with probabilities proportional to their purity s_i, set to
    tokens drawn from the purity-sharpened p_i.
  """
  mask_id = log_p_x0.shape[-1] - 1
  log_p = log_p_x0[..., :-1]
  purity = jnp.exp(jnp.max(log_p, axis=-1))  # [B, N]
  score = purity / (jnp.max(purity, axis=-1, keepdims=True) + 1e-10)
  token_rng, order_rng = jax.random.split(rng)
  sharpened = (1.0 + purity_weight * score)[..., None] * log_p
  tokens = jax.random.categorical(token_rng, sharpened, axis=-1)
  # Gumbel top-k: the first num_reveal of a draw without replacement with
  # probabilities proportional to score (a Plackett-Luce order).
  masked = x == mask_id
  keys = jnp.log(score + 1e-30) + jax.random.gumbel(order_rng, score.shape)
  keys = jnp.where(masked, keys, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-keys, axis=-1), axis=-1)
  reveal = masked & (rank < num_reveal)
  return jnp.where(reveal, tokens, x).astype(jnp.int32)


def sample(model: VQDiffusion, params, rng: jax.Array, batch_size: int,
           cond: Any = None, num_steps: int | None = None,
           guidance_scale: float = 0.0, temperature: float = 1.0,
           truncation: float = 1.0, sampler: str = 'chain',
           purity_weight: float = 1.0) -> jax.Array:
  """Generates tokens [B, *token_shape] from all-[MASK] at t = T.

  sampler: 'chain' draws x_u from the reverse step p(x_u | x_t) at every
  time point; 'purity' reveals masked positions by purity (`purity_step`,
  weight purity_weight). Step i (from t_i to t_{i+1}) draws with
  fold_in(rng, i), so the fast chain with num_steps = T is the full chain.
  guidance_scale is w, as MaskGIT's and GPT's (`predict_x0`: 0 is off);
  temperature 0 puts p(x_0 | x_t) on its most likely code. Jit-able with
  num_steps, guidance_scale, temperature, truncation, sampler and
  purity_weight static.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}')
  api.check_sampling_settings(batch_size=batch_size, temperature=temperature,
                              guidance_scale=guidance_scale,
                              truncation=truncation,
                              purity_weight=purity_weight)
  api.check_guidance_condition(guidance_scale, cond, 'VQDiffusion',
                               conditional=model.condition != 'none')
  if model.condition == 'class' and cond is not None:
    # Here, while concrete: under guidance the steps see them joined and
    # traced, and unchecked.
    api.check_class_ids(cond, batch_size, model.num_classes, 'VQDiffusion')
    cond = jnp.asarray(cond)  # A list would be a tree of scalars below.
  params = params.get('params', params)
  schedule = model.schedule()
  points = time_points(model.num_timesteps, num_steps)
  x = jnp.full((batch_size, model.num_tokens), model.vocab_size, jnp.int32)
  pairs = jnp.asarray(np.stack([points[:-1], points[1:]], axis=1))
  _, gbar = dd.cumulative_schedules(model.num_timesteps, *model.schedule_values)
  reveals = jnp.asarray(purity_reveal_counts(gbar, points, model.num_tokens))

  def body(x, step):
    i, (t, u), num_reveal = step
    # The purity sampler scores each position by its top code's own
    # probability, as the release's p_sample: truncated, not renormalized.
    log_p_x0 = predict_x0(model, params,
                          x.reshape((batch_size,) + tuple(model.token_shape)),
                          t, cond, guidance_scale, temperature, truncation,
                          renormalize=sampler != 'purity')
    log_p_x0 = log_p_x0.reshape(x.shape + log_p_x0.shape[-1:])
    step_rng = jax.random.fold_in(rng, i)
    chain = dd.sample_states(
        step_rng, dd.reverse_step_log_probs(log_p_x0, x, schedule, t, u))
    if sampler == 'purity':
      revealed = purity_step(step_rng, log_p_x0, x, num_reveal, purity_weight)
      return jnp.where(u == 0, chain, revealed), None
    return chain, None

  x, _ = jax.lax.scan(body, x, (jnp.arange(len(pairs)), pairs, reveals))
  return x.reshape((batch_size,) + tuple(model.token_shape))


# ---------------------------------------------------------------- Config.


def default_config() -> ml_collections.ConfigDict:
  """A tiny VQ-Diffusion for CPU tests; configs/vq_diffusion/ has the paper's."""
  config = ml_collections.ConfigDict()
  config.vocab_size = 64  # K codes of the tokenizer.
  config.token_shape = (4, 4)  # Tokens per example (paper: (32, 32)).
  config.num_timesteps = 100  # T (paper: 100).
  config.abar_1 = 0.99999  # Cumulative stay probability at t = 1 ...
  config.abar_T = 0.000009  # ... and at t = T (linear in between).
  config.gbar_1 = 0.000009  # Cumulative mask probability at t = 1 ...
  config.gbar_T = 0.99999  # ... and at t = T (paper text: 0.9).
  config.width = 32  # Transformer width (paper: 1024).
  config.num_layers = 2  # Blocks (paper: 19).
  config.num_heads = 2  # Heads (paper: 16).
  config.mlp_dim = 64  # MLP width (paper: 4096).
  config.dropout_rate = 0.0
  config.condition = 'none'  # 'none' | 'class' | 'text'.
  config.num_classes = 10  # 'class': classes (+1 null class).
  config.text_encoder = 'frozen'  # 'frozen' (MiniLM states) | 'bytes'.
  config.cond_dim = 384  # Width of the frozen text states.
  # 'vqlab': vqlab's blocks (module docstring); 'release': the released
  # ImageNet network (Condition2ImageTransformer), condition 'class' only.
  config.block_style = 'vqlab'
  # 'release': (rows, cols) of the row and column position tables, whose
  # first N grid cells the N tokens take (the ImageNet model: (32, 32) over
  # 16 x 16 tokens); (): token_shape.
  config.position_grid = ()
  # 'release': the null class is the 'mean' of each block's class rows
  # (the release's class_number 1000) or a learned 'row' (class_number 1001).
  config.null_class = 'mean'
  transformer.add_stack_config(config)
  return config


def build(config: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
          prefix: str = 'model') -> VQDiffusion:
  """Builds a VQDiffusion from a validated config."""
  if config.condition not in CONDITIONS:
    raise ConfigError(f'{prefix}.condition',
                      f'{config.condition!r} not in {CONDITIONS}')
  if config.text_encoder not in TEXT_ENCODERS:
    raise ConfigError(f'{prefix}.text_encoder',
                      f'{config.text_encoder!r} not in {TEXT_ENCODERS}')
  if config.width % config.num_heads:
    raise ConfigError(
        f'{prefix}.num_heads', f'{config.num_heads} does not '
        f'divide width {config.width}')
  _check_block_style(config, prefix)
  values = (config.abar_1, config.abar_T, config.gbar_1, config.gbar_T)
  try:
    dd.make_schedule(config.vocab_size, config.num_timesteps, *values)
  except ValueError as e:
    raise ConfigError(f'{prefix}.abar_1', str(e)) from e
  return VQDiffusion(vocab_size=config.vocab_size,
                     token_shape=tuple(config.token_shape),
                     num_timesteps=config.num_timesteps, width=config.width,
                     num_layers=config.num_layers, num_heads=config.num_heads,
                     mlp_dim=config.mlp_dim, dropout_rate=config.dropout_rate,
                     condition=config.condition, num_classes=config.num_classes,
                     text_encoder=config.text_encoder, cond_dim=config.cond_dim,
                     schedule_values=values, dtype=jnp.dtype(dtype),
                     block_style=config.block_style, position_grid=tuple(
                         config.position_grid), null_class=config.null_class,
                     **transformer.stack_options(config, prefix))


# Model keys only the 'release' blocks read.
RELEASE_KEYS = ('position_grid', 'null_class')


def _check_block_style(config: ml_collections.ConfigDict, prefix: str) -> None:
  """ConfigError for an unknown block_style, 'release' blocks with a
  condition other than 'class' or a grid they cannot take, or a 'release'
  key set off its default for 'vqlab' blocks."""
  style, key = config.block_style, f'{prefix}.block_style'
  if style not in BLOCK_STYLES:
    raise ConfigError(key, f'{style!r} is not one of {", ".join(BLOCK_STYLES)}')
  if style == 'vqlab':
    defaults = default_config()
    for name in RELEASE_KEYS:
      if config[name] != defaults[name]:
        raise ConfigError(
            f'{prefix}.{name}', f'{config[name]!r}, but only '
            f"{prefix}.block_style 'release' reads it; leave it at "
            f'{defaults[name]!r}')
    return
  if config.condition != 'class':
    raise ConfigError(
        key, f"'release' is the release's class-conditional network; "
        f'condition {config.condition!r} needs block_style \'vqlab\'')
  if len(config.token_shape) != 2:
    raise ConfigError(
        key, f"'release' convolves a 2D token grid; token_shape is "
        f'{tuple(config.token_shape)}')
  if config.null_class not in NULL_CLASSES:
    raise ConfigError(
        f'{prefix}.null_class',
        f'{config.null_class!r} is not one of {", ".join(NULL_CLASSES)}')
  grid = tuple(config.position_grid) or tuple(config.token_shape)
  if len(grid) != 2 or grid[0] * grid[1] < int(np.prod(config.token_shape)):
    raise ConfigError(
        f'{prefix}.position_grid', f'{grid} must be (rows, cols) with at '
        f'least the {int(np.prod(config.token_shape))} tokens of token_shape')


# ------------------------------------------------------------ Generator API.

# Model keys only some conditions read: {key: the conditions that do}.
CONDITION_KEYS = {
    'num_classes': ('class',),
    'text_encoder': ('text',),
    'cond_dim': ('text',)
}


def _condition_spec(config: ml_collections.ConfigDict) -> api.ConditionSpec:
  if config.condition not in CONDITIONS:
    raise ConfigError('model.condition',
                      f'{config.condition!r} not in {CONDITIONS}')
  api.check_condition_keys(config, default_config(), CONDITION_KEYS)
  if config.condition == 'class':
    return api.ConditionSpec('class', num_classes=config.num_classes)
  return api.ConditionSpec(config.condition)


def _check_fits(config: ml_collections.ConfigDict, tokenizer: Any,
                token_shape: tuple[int, ...], where: str) -> None:
  if tokenizer.factor_vocab_sizes:
    raise ConfigError(
        'model.name', 'vq_diffusion models plain indices; '
        f'{where} gives factorized codes: use maskgit')
  api.check_token_grid(config, tokenizer, token_shape, where,
                       factors_key='model.factor_vocab_sizes')


def _check_settings(config: ml_collections.ConfigDict) -> None:
  model = config.model
  config_schema.require(
      not (model.block_style == 'release' and model.null_class == 'mean' and
           config.loss.label_drop > 0), 'model.null_class',
      "'mean' (the mean of the class rows, which is not learned), but "
      'loss.label_drop drops labels to it: the dropped examples would train '
      "every class row. Set model.null_class = 'row' (a learned null row, as "
      "the release's imagenet_learnable) or loss.label_drop = 0")
  config_schema.require(
      config.sample.diffusion_sampler in SAMPLERS, 'sample.diffusion_sampler',
      f'must be one of {SAMPLERS}, got {config.sample.diffusion_sampler!r}')
  steps = config.model.num_timesteps
  config_schema.require(
      config.sample.diffusion_steps <= steps, 'sample.diffusion_steps',
      f'{config.sample.diffusion_steps} is more than the model.num_timesteps '
      f'{steps} of the chain')


def _settings_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """Condition dropout and guidance need a condition."""
  keys = {
      'loss.aux_weight', 'loss.time_sampling', 'sample.diffusion_steps',
      'sample.temperature', 'sample.truncation', 'sample.diffusion_sampler'
  }
  if config.sample.diffusion_sampler == 'purity':
    keys.add('sample.purity_weight')
  if config.model.condition != 'none':
    keys |= {'loss.label_drop', 'sample.guidance_scale'}
  return frozenset(keys)


def _init(model: VQDiffusion, rng: jax.Array, tokens: jax.Array, cond):
  """Params of `model` for tokens [B, *token_shape] and cond."""
  t = jnp.ones((tokens.shape[0],), jnp.int32)
  return model.init(rng, tokens, t, cond)['params']


def _init_loss_state(model: VQDiffusion) -> dict[str, jax.Array]:
  return init_loss_state(model.num_timesteps)


def _loss(model: VQDiffusion, params, tokens: jax.Array, cond, rng: jax.Array,
          *, settings: ml_collections.ConfigDict, train: bool,
          example_weights: jax.Array | None = None, loss_state=None):
  """`diffusion_loss`; eval: no condition dropout and uniform times.
  metrics['accuracy'] is the x_0 accuracy."""
  loss, metrics, draws = diffusion_loss(
      model, params, rng, tokens, cond, aux_weight=settings.aux_weight,
      cond_drop=settings.label_drop if train else 0.0,
      time_sampling=settings.time_sampling if train else 'uniform',
      loss_state=loss_state, train=train, example_weights=example_weights)
  metrics['accuracy'] = metrics['x0_accuracy']
  return loss, metrics, draws


def _update_loss_state(loss_state: dict[str, jax.Array],
                       draws: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The loss history after a step whose batch drew `draws` (`diffusion_loss`),
  moved once however many microbatches drew them."""
  return update_loss_history(loss_state, draws['t'], draws['vlb'])


def _sample(model: VQDiffusion, params, rng: jax.Array, batch_size: int, cond,
            *, settings: ml_collections.ConfigDict,
            loss_settings: ml_collections.ConfigDict,
            token_shape: tuple[int, ...], known=None) -> jax.Array:
  """`sample` with the settings; diffusion_steps 0 walks the full chain."""
  del loss_settings, token_shape, known  # Never given one (settings_read).
  purity = ({
      'purity_weight': settings.purity_weight
  } if settings.diffusion_sampler == 'purity' else {})
  return sample(model, params, rng, batch_size, cond,
                num_steps=settings.diffusion_steps or None,
                guidance_scale=settings.guidance_scale,
                temperature=settings.temperature,
                truncation=settings.truncation,
                sampler=settings.diffusion_sampler, **purity)


API = api.GeneratorApi(condition_spec=_condition_spec, check_fits=_check_fits,
                       init=_init, loss=_loss, sample=_sample,
                       init_loss_state=_init_loss_state,
                       update_loss_state=_update_loss_state,
                       check_settings=_check_settings,
                       settings_read=_settings_read,
                       condition_keys=CONDITION_KEYS, eval_draws=True)
