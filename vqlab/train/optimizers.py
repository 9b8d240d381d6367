"""Optax optimizers built from config."""

from typing import Any

import jax
import ml_collections
import optax


def default_config(learning_rate: float, b1: float,
                   b2: float) -> ml_collections.ConfigDict:
  """Adam(W) with linear warmup, optional decay and global-norm clipping."""
  config = ml_collections.ConfigDict()
  config.learning_rate = learning_rate  # Peak learning rate.
  config.b1 = b1  # Adam beta1.
  config.b2 = b2  # Adam beta2.
  config.weight_decay = 0.0  # Decoupled weight decay (AdamW).
  config.warmup_steps = 0  # Linear warmup from 0 to the peak.
  config.schedule = 'constant'  # 'constant' or 'cosine' after warmup.
  config.grad_clip_norm = 0.0  # Clip by global norm; 0 disables.
  return config


def build(config: ml_collections.ConfigDict,
          num_steps: int) -> optax.GradientTransformation:
  """An optax transformation for `num_steps` total train steps."""
  warmup = max(config.warmup_steps, 0)
  if config.schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                  max(warmup, 1),
                                                  max(num_steps, warmup + 1))
  else:
    schedule = optax.join_schedules([
        optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
        optax.constant_schedule(config.learning_rate)], [warmup]) \
        if warmup else optax.constant_schedule(config.learning_rate)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(
      optax.adamw(schedule, b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay))
  return optax.chain(*parts)


def global_norm(tree: Any) -> jax.Array:
  """sqrt of the sum of squares of every leaf (float32 scalar)."""
  return optax.tree.norm(tree)
