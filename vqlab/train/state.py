"""The train state every task uses."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds; a pytree.

  Attributes:
    step: int32 scalar, the number of train steps taken.
    params: dict of parameter trees, one per optimized network (e.g.
      {'generator': ..., 'discriminator': ...}).
    opt_state: dict of optax states with the same top-level keys as params.
    model_state: non-parameter variable collections of the model (e.g. EMA
      codebook statistics), updated by the train step.
    ema_params: exponential moving average of some of `params` (e.g. the
      generator's, used for eval); empty when the task keeps none.
    loss_state: running statistics of the losses (e.g. LeCam's EMAs of the
      discriminator outputs); empty when none.
  """
  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  model_state: dict[str, Any]
  ema_params: dict[str, Any] = flax.struct.field(default_factory=dict)
  loss_state: dict[str, Any] = flax.struct.field(default_factory=dict)
