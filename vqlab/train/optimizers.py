"""Optax optimizers built from config."""

from typing import Any

import jax
import ml_collections
import optax

from vqlab.errors import ConfigError

SCHEDULES = ('constant', 'cosine', 'linear')
DECAYED = ('all', 'kernels')


def default_config(learning_rate: float, b1: float,
                   b2: float) -> ml_collections.ConfigDict:
  """Adam(W) with linear warmup, optional decay and global-norm clipping."""
  config = ml_collections.ConfigDict()
  config.learning_rate = learning_rate  # Peak learning rate.
  config.b1 = b1  # Adam beta1.
  config.b2 = b2  # Adam beta2.
  # Adam epsilon (added to sqrt(v)); not scale-free: a loss c times another's
  # takes c times its epsilon for the same updates.
  config.eps = 1e-8
  config.weight_decay = 0.0  # Decoupled weight decay (AdamW).
  # Which params decay: 'all', or 'kernels' (dense and conv weights only;
  # no biases, norms, embeddings or codebooks: taming's GPT, TiTok).
  config.weight_decay_on = 'all'
  config.warmup_steps = 0  # Linear warmup from 0 to the peak.
  config.schedule = 'constant'  # After warmup: 'constant', or 'cosine' or
  # 'linear' decay to 0 at the last step.
  config.grad_clip_norm = 0.0  # Clip by global norm; 0 disables.
  return config


def validate(config: ml_collections.ConfigDict, key: str) -> None:
  """ConfigError naming the key unless `schedule` is one of SCHEDULES and
  `weight_decay_on` one of DECAYED."""
  if config.schedule not in SCHEDULES:
    raise ConfigError(f'{key}.schedule',
                      f'must be one of {SCHEDULES}, got {config.schedule!r}')
  if config.weight_decay_on not in DECAYED:
    raise ConfigError(
        f'{key}.weight_decay_on',
        f'must be one of {DECAYED}, got {config.weight_decay_on!r}')


def _kernels(params: Any) -> Any:
  """True at the leaves named 'kernel' (flax Dense and Conv weights)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps` (none when 0: the first step
  has the peak rate), then `schedule` until step `num_steps`."""
  validate(config, 'optimizer')
  peak, warmup = config.learning_rate, max(config.warmup_steps, 0)
  decay_steps = max(num_steps - warmup, 1)
  after = {
      'constant': lambda: optax.constant_schedule(peak),
      'cosine': lambda: optax.cosine_decay_schedule(peak, decay_steps),
      'linear': lambda: optax.linear_schedule(peak, 0.0, decay_steps),
  }[config.schedule]()
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after],
                              [warmup])


def build(config: ml_collections.ConfigDict,
          num_steps: int) -> optax.GradientTransformation:
  """An optax transformation for `num_steps` total train steps."""
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(
      optax.adamw(
          learning_rate_schedule(config, num_steps), b1=config.b1, b2=config.b2,
          eps=config.eps, weight_decay=config.weight_decay,
          mask=_kernels if config.weight_decay_on == 'kernels' else None))
  return optax.chain(*parts)


def learning_rate(opt_state: Any, config: ml_collections.ConfigDict,
                  num_steps: int) -> jax.Array:
  """The learning rate the next update of `build(config, num_steps)` uses:
  its schedule at the count its state keeps (which stays put while the
  network is held, e.g. a discriminator before loss.disc_start)."""
  is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [
      s.count
      for s in jax.tree.leaves(opt_state, is_leaf=is_schedule_state)
      if is_schedule_state(s)
  ]
  if len(counts) != 1:
    raise ValueError(f'expected one schedule state in the optimizer state, '
                     f'found {len(counts)}')
  return learning_rate_schedule(config, num_steps)(counts[0])
