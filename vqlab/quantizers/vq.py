"""Vector quantization with a learned codebook (VQ-VAE / VQGAN).

k* = argmin_k ||z - e_k||^2,  z_q = z + sg(e_k* - z),
loss = ||sg(z) - e_k*||^2 + beta ||z - sg(e_k*)||^2.

beta weighs the commitment term. taming's VectorQuantizer (and its
`legacy=True` default) puts beta on the codebook term instead,
    loss = beta ||sg(z) - e_k*||^2 + ||z - sg(e_k*)||^2,
and its released VQGANs were trained so; `beta_on_codebook` reproduces that
placement (the taming converter sets it, so fine-tuning a converted model
follows its own recipe). The default is the paper's placement.

Options:
  `l2_normalize` (ViT-VQGAN) looks up unit vectors (cosine similarity; losses
    on the normalized vectors).
  `projection_dim` (ViT-VQGAN) projects z to a low dimension before the lookup
    and back after it. Both raise codebook usage.
  `ema` (VQ-VAE appendix, sonnet's VectorQuantizerEMA) learns the codebook as
    exponential moving averages instead of by gradient: per train step, with
    n_k the batch count of code k and s_k the sum of the z assigned to it,
        N_k <- decay N_k + (1 - decay) n_k,   S_k <- decay S_k + (1 - decay) s_k,
        e_k  = S_k / N~_k,  N~_k = (N_k + eps) / (sum N + K eps) * sum N
    (Laplace smoothing). N, S and the codebook live in the `quantizer_stats`
    collection, not in the params, so the optimizer never touches them; the
    loss is then beta * commitment only. The counts and sums are over the
    global batch: under jit with a sharded batch the scatter-adds already
    reduce over all devices, which is the cross-device average of the paper.
    N starts at 1 and S at the initial codebook, so the first codebook is the
    initial one (no zero-debiasing needed).
  `restart_threshold` > 0 (needs ema) replaces dead codes, those with
    N_k < restart_threshold after the update, by encoder outputs drawn
    uniformly from the current batch (rng stream 'quantizer'), and resets
    N_k = max(1, restart_threshold), S_k = e_k N~_k so that e_k = S_k / N~_k
    still holds (a reset to 1 below a threshold over 1 would leave a fresh
    code dead unless it got about threshold / (1 - decay) hits in its next
    step: the whole codebook re-drawn every step).

The EMA statistics change only when `train=True` and `quantizer_stats` is
mutable. A train step that applies the model several times (microbatches,
joint image-video batches) makes one EMA step from its whole batch, as one
call would: each call adds its counts, sums and restart candidates to the
step's pending statistics and the step applies them after its last call
(base.with_pending / base.apply_pending). An EMA step per call would count
each code about k times too few against `restart_threshold` (restarting
codes that are alive) and decay k times per step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqlab.nn import linear
from vqlab.quantizers import base


# ------------------------------------------------------------ pure functions ---
def pairwise_sq_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z_i - e_k||^2 for z: [N, d], codebook: [K, d] -> [N, K].

  Uses ||z||^2 - 2 z.e + ||e||^2 so memory is O(N K), never O(N K d). The
  matmul is float32-exact on every backend: at the default precision (one
  bfloat16 pass on TPU, TF32 on recent GPUs), 0.4-2.4% (bfloat16) and
  0.02-0.2% (TF32) of Gaussian tokens got a code that is not their nearest
  among 1024-16384 Gaussian codes (simulated rounding, d = 8-256).
  """
  dots = jnp.matmul(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
  return (jnp.sum(z**2, axis=-1, keepdims=True) - 2.0 * dots +
          jnp.sum(codebook**2, axis=-1)[None, :])


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| along the last axis."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, -1, keepdims=True), eps))


CODEBOOK_INITS = ('auto', 'uniform', 'normal')


def symmetric_uniform(limit: float):
  """Initializer drawing from U(-limit, limit) (taming's codebook init)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def laplace_smooth(cluster_size: jax.Array, eps: float) -> jax.Array:
  """(N_k + eps) / (sum N + K eps) * sum N for cluster_size N: [K] -> [K]."""
  total = jnp.sum(cluster_size)
  return (cluster_size + eps) / (total + cluster_size.shape[0] * eps) * total


def ema_update(cluster_size: jax.Array, embed_sum: jax.Array, counts: jax.Array,
               sums: jax.Array, decay: float, eps: float):
  """One EMA step of the codebook statistics.

  Args:
    cluster_size: N [K], EMA of the per-code counts.
    embed_sum: S [K, d], EMA of the per-code sums of assigned vectors.
    counts: n [K], this batch's counts.
    sums: s [K, d], this batch's sums of the vectors assigned to each code.
    decay: EMA decay in [0, 1).
    eps: Laplace smoothing constant.

  Returns:
    (N', S', codebook [K, d] = S' / laplace_smooth(N', eps)).
  """
  cluster_size = decay * cluster_size + (1.0 - decay) * counts
  embed_sum = decay * embed_sum + (1.0 - decay) * sums
  codebook = embed_sum / laplace_smooth(cluster_size, eps)[:, None]
  return cluster_size, embed_sum, codebook


def draw_rows(key: jax.Array, flat: jax.Array, num: int) -> jax.Array:
  """`num` rows of flat: [M, d] drawn uniformly, with replacement -> [num, d]
  (a dead code's replacement candidates)."""
  rows = jax.random.randint(key, (num,), 0, flat.shape[0])
  return jnp.take(flat, rows, axis=0)


def restart_dead_codes(cluster_size: jax.Array, embed_sum: jax.Array,
                       fresh: jax.Array, threshold: float, eps: float):
  """Replaces codes with N_k < threshold by their row of `fresh`.

  Args:
    cluster_size: N [K]; embed_sum: S [K, d].
    fresh: [K, d] each code's candidate, an encoder output of the batch
      (draw_rows; in lookup space).
    threshold: codes with N_k below it are dead.
    eps: Laplace smoothing constant (keeps codebook = S / N~ exact).

  Returns:
    (N', S', codebook', dead [K] bool). Dead codes get N_k = max(1,
    threshold), e_k = fresh_k, S_k = e_k * laplace_smooth(N')_k; live codes
    keep N_k and S_k, and every e_k = S_k / laplace_smooth(N')_k.
  """
  dead = cluster_size < threshold
  cluster_size = jnp.where(dead, max(1.0, threshold), cluster_size)
  smoothed = laplace_smooth(cluster_size, eps)[:, None]
  embed_sum = jnp.where(dead[:, None], fresh * smoothed, embed_sum)
  # Live codes are re-derived too: the reset counts change the smoothing.
  codebook = jnp.where(dead[:, None], fresh, embed_sum / smoothed)
  return cluster_size, embed_sum, codebook, dead


# ------------------------------------------------------------------- module ---
class VectorQuantizer(nn.Module):
  """Nearest-neighbour codebook lookup with straight-through gradients.

  Attributes:
    codebook_size: K, the number of codes.
    embedding_dim: d, the dimension of z (and of each code unless projected).
    beta: weight of the commitment term ||z - sg(e)||^2.
    beta_on_codebook: taming's legacy placement: beta weighs the codebook
      term ||sg(z) - e||^2 and the commitment term has weight 1.
    loss_weight: weight of the whole quantizer loss.
    l2_normalize: look up unit vectors (cosine similarity).
    projection_dim: >0: look up in this many dims, project back after.
    ema: learn the codebook by EMA (no codebook loss term).
    decay: EMA decay.
    epsilon: Laplace smoothing of the EMA cluster sizes.
    restart_threshold: >0: restart codes whose EMA count falls below it
      (requires ema).
    codebook_init: 'uniform': U(-1/K, 1/K) (taming's and TiTok's); 'normal':
      N(0, 1); 'auto': normal with l2_normalize, else uniform. With
      l2_normalize, Adam turns a code by about lr / ||e|| per step: TiTok's
      U(-1/K, 1/K) codes (||e|| about 5e-4 at K = 4096, d = 12) move about
      7,000 times faster than N(0, 1) codes (||e|| about 3.4).
  """
  codebook_size: int
  embedding_dim: int
  beta: float = 0.25
  beta_on_codebook: bool = False
  loss_weight: float = 1.0
  l2_normalize: bool = False
  projection_dim: int = 0
  ema: bool = False
  decay: float = 0.99
  epsilon: float = 1e-5
  restart_threshold: float = 0.0
  codebook_init: str = 'auto'

  def __post_init__(self):
    super().__post_init__()
    who = 'VectorQuantizer'
    base.check_positive(self.codebook_size, 'codebook_size', who)
    base.check_positive(self.embedding_dim, 'embedding_dim', who)
    if self.projection_dim < 0:
      raise base.FieldError(who, 'projection_dim',
                            f'must be >= 0, got {self.projection_dim}')
    if not 0.0 <= self.decay < 1.0:
      raise base.FieldError(who, 'decay',
                            f'must be in [0, 1), got {self.decay}')
    base.check_positive(self.epsilon, 'epsilon', who)
    if self.restart_threshold < 0:
      raise base.FieldError(who, 'restart_threshold',
                            f'must be >= 0, got {self.restart_threshold}')
    if self.codebook_init not in CODEBOOK_INITS:
      raise base.FieldError(
          who, 'codebook_init',
          f'{self.codebook_init!r} is not one of {CODEBOOK_INITS}')
    if self.restart_threshold > 0 and not self.ema:
      raise base.FieldError(
          who, 'restart_threshold',
          f'{self.restart_threshold} > 0 needs ema=True (a restart rewrites '
          'the codebook, which must then live in the quantizer_stats '
          'collection, not in the optimizer-owned params)')
    if not self.ema:
      for name in ('decay', 'epsilon'):
        base.check_unread(self, name, 'ema=True', who)
    if self.beta_on_codebook and self.ema:
      raise base.FieldError(
          who, 'beta_on_codebook',
          'True needs ema=False: an EMA codebook has no codebook term to '
          'weigh')

  @property
  def code_dim(self) -> int:
    """Channels of z and of `quantized` (embedding_dim)."""
    return self.embedding_dim

  @property
  def lookup_dim(self) -> int:
    """Dimension of the codebook: projection_dim if set, else embedding_dim."""
    return self.projection_dim or self.embedding_dim

  def setup(self):
    kind = self.codebook_init
    if kind == 'auto':
      kind = 'normal' if self.l2_normalize else 'uniform'
    init = (nn.initializers.normal(1.0) if kind == 'normal' else
            symmetric_uniform(1.0 / self.codebook_size))
    shape = (self.codebook_size, self.lookup_dim)
    if self.ema:
      self._codebook = self.variable(
          base.STATS, 'codebook', lambda: init(self.make_rng('params'), shape))
      self.cluster_size = self.variable(
          base.STATS, 'cluster_size', lambda: jnp.ones(
              (self.codebook_size,), jnp.float32))
      self.embed_sum = self.variable(base.STATS, 'embed_sum',
                                     lambda: self._codebook.value)
    else:
      self.codebook = self.param('codebook', init, shape)
    if self.projection_dim:
      self.project_in = linear.Dense(self.projection_dim)
      self.project_out = linear.Dense(self.embedding_dim)

  def _raw_codebook(self) -> jax.Array:
    return self._codebook.value if self.ema else self.codebook

  def _normalized_codebook(self) -> jax.Array:
    codebook = self._raw_codebook()
    return l2_normalize(codebook) if self.l2_normalize else codebook

  def __call__(self, z: jax.Array, *,
               train: bool = False) -> base.QuantizerOutput:
    """Quantizes z: [..., d] (d = embedding_dim); see QuantizerOutput.

    With ema and `train=True` (and `quantizer_stats` mutable) the EMA
    statistics are updated after the lookup (which uses the codebook before
    the update); restarts draw from the 'quantizer' rng stream.
    """
    base.check_latents(z, self.embedding_dim, 'VectorQuantizer')
    h = z.astype(jnp.float32)
    if self.projection_dim:
      h = self.project_in(h)
    if self.l2_normalize:
      h = l2_normalize(h)
    codebook = self._normalized_codebook()
    flat = h.reshape(-1, self.lookup_dim)
    indices = jnp.argmin(pairwise_sq_distances(flat, codebook), axis=-1)
    codes = jnp.take(codebook, indices, axis=0).reshape(h.shape)
    codebook_loss = jnp.mean((jax.lax.stop_gradient(h) - codes)**2)
    commitment = jnp.mean((h - jax.lax.stop_gradient(codes))**2)
    quantized = base.straight_through(h, codes)
    if self.projection_dim:
      quantized = self.project_out(quantized)
    counts = base.code_histogram(indices, self.codebook_size)
    metrics = {
        'codebook_loss': codebook_loss,
        'commitment_loss': commitment,
        **base.code_metrics({'': counts})
    }
    if self.ema:
      loss = self.loss_weight * self.beta * commitment
      if train:
        metrics.update(
            self._record_batch(jax.lax.stop_gradient(flat), indices, counts))
    elif self.beta_on_codebook:
      loss = self.loss_weight * (self.beta * codebook_loss + commitment)
    else:
      loss = self.loss_weight * (codebook_loss + self.beta * commitment)
    return base.QuantizerOutput(
        quantized=quantized.astype(z.dtype),
        indices=indices.reshape(z.shape[:-1]).astype(jnp.int32), loss=loss,
        metrics=metrics, extras={base.CODE_COUNTS: {
            '': counts
        }})

  def _record_batch(self, flat: jax.Array, indices: jax.Array,
                    counts: jax.Array) -> dict[str, jax.Array]:
    """The EMA step of a training call: into the step's pending statistics
    when the caller keeps them (base.PENDING), else at once when
    `quantizer_stats` is mutable. Returns {'restarted': fraction} when it
    updated."""
    batch = {
        'counts':
            counts,
        'sums':
            jnp.zeros((self.codebook_size, self.lookup_dim),
                      jnp.float32).at[indices].add(flat),
        'rows':
            jnp.float32(flat.shape[0])
    }
    if (self.is_mutable_collection(base.PENDING) and
        self.has_variable(base.PENDING, 'rows')):
      pending = {name: self.get_variable(base.PENDING, name) for name in batch}
      new = jax.tree.map(jnp.add, pending, batch)
      if self.restart_threshold > 0:
        # Each code's candidate stays a uniform draw from all rows seen in
        # the step: this call's replaces it with probability rows / seen.
        take = (jax.random.uniform(self.make_rng('quantizer'),
                                   (self.codebook_size,)) * new['rows']
                < batch['rows'])
        new['fresh'] = jnp.where(
            take[:, None],
            draw_rows(self.make_rng('quantizer'), flat, self.codebook_size),
            self.get_variable(base.PENDING, 'fresh'))
      for name, value in new.items():
        self.put_variable(base.PENDING, name, value)
      return {}
    if not self.is_mutable_collection(base.STATS):
      return {}
    if self.restart_threshold > 0:
      batch['fresh'] = draw_rows(self.make_rng('quantizer'), flat,
                                 self.codebook_size)
    return {'restarted': self._update_ema(batch)}

  def start_pending(self) -> None:
    """Creates the step's pending statistics (base.PENDING), zero: counts
    [K], sums [K, d], rows seen, and with restarts each code's candidate
    `fresh` [K, d]."""
    shape = (self.codebook_size, self.lookup_dim)
    zeros = {
        'counts': jnp.zeros(shape[:1], jnp.float32),
        'sums': jnp.zeros(shape, jnp.float32),
        'rows': jnp.zeros((), jnp.float32)
    }
    if self.restart_threshold > 0:
      zeros['fresh'] = jnp.zeros(shape, jnp.float32)
    for name, value in zeros.items():
      self.put_variable(base.PENDING, name, value)

  def apply_pending(self) -> jax.Array:
    """One EMA (and restart) step from the pending statistics; returns the
    fraction of codes restarted."""
    names = ('counts', 'sums', 'rows') + (
        ('fresh',) if self.restart_threshold > 0 else ())
    return self._update_ema(
        {name: self.get_variable(base.PENDING, name) for name in names})

  def _update_ema(self, batch: dict[str, jax.Array]) -> jax.Array:
    """EMA (and restart) step from a batch's counts, sums (and each code's
    candidate 'fresh'); returns the fraction of codes restarted."""
    cluster_size, embed_sum, codebook = ema_update(self.cluster_size.value,
                                                   self.embed_sum.value,
                                                   batch['counts'],
                                                   batch['sums'], self.decay,
                                                   self.epsilon)
    restarted = jnp.zeros((), jnp.float32)
    if self.restart_threshold > 0:
      cluster_size, embed_sum, codebook, dead = restart_dead_codes(
          cluster_size, embed_sum, batch['fresh'], self.restart_threshold,
          self.epsilon)
      restarted = jnp.mean(dead.astype(jnp.float32))
    self.cluster_size.value = cluster_size
    self.embed_sum.value = embed_sum
    self._codebook.value = codebook
    return restarted

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes for int indices [...] -> [..., d] (what `quantized` holds)."""
    base.check_indices(indices, self.codebook_size, 'VectorQuantizer')
    codes = jnp.take(self._normalized_codebook(), indices, axis=0)
    return self.project_out(codes) if self.projection_dim else codes


def default_config() -> ml_collections.ConfigDict:
  """VQ as in VQGAN (taming): K codes of dimension d, commitment beta."""
  config = ml_collections.ConfigDict()
  config.codebook_size = 512  # K: number of codes.
  config.embedding_dim = 16  # d: dimension of each code (and of z).
  config.beta = 0.25  # Weight of the commitment term.
  # taming's legacy placement (its released models): beta on the codebook term.
  config.beta_on_codebook = False
  config.loss_weight = 1.0  # Weight of the whole quantizer loss.
  config.l2_normalize = False  # Cosine lookup on unit vectors (ViT-VQGAN).
  config.projection_dim = 0  # >0: look up in this many dims (8-32), project back.
  config.ema = False  # EMA codebook (no codebook loss; quantizer_stats).
  config.decay = 0.99  # EMA decay (ema only).
  config.epsilon = 1e-5  # Laplace smoothing of EMA counts (ema only).
  config.restart_threshold = 0.0  # >0 (ema): restart codes with EMA count below.
  # 'uniform' U(+-1/K) (taming, TiTok), 'normal' N(0, 1), 'auto': normal
  # with l2_normalize, else uniform.
  config.codebook_init = 'auto'
  return config


def build(config: ml_collections.ConfigDict, *,
          prefix: str = 'quantizer') -> VectorQuantizer:
  """Builds a VectorQuantizer from a validated config at `prefix`."""
  return base.build_module(
      VectorQuantizer, prefix, codebook_size=config.codebook_size,
      embedding_dim=config.embedding_dim, beta=config.beta,
      beta_on_codebook=config.beta_on_codebook, loss_weight=config.loss_weight,
      l2_normalize=config.l2_normalize, projection_dim=config.projection_dim,
      ema=config.ema, decay=config.decay, epsilon=config.epsilon,
      restart_threshold=config.restart_threshold,
      codebook_init=config.codebook_init)
