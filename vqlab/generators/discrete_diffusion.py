"""Mask-and-replace discrete diffusion (VQ-Diffusion, Gu et al. 2022), in log
space and in O(K) per token: no (K+1) x (K+1) matrix is ever formed.

States 0..K-1 are codes, state K is [MASK] (absorbing). One forward step from
a code: stay with alpha_t + beta_t, become any other code with beta_t, become
[MASK] with gamma_t (alpha + K beta + gamma = 1). From time s to t > s the
chain has the same form with

    alpha_{s->t} = abar_t / abar_s,  1 - gamma_{s->t} = (1 - gbar_t) / (1 - gbar_s),
    beta_{s->t} = (1 - alpha_{s->t} - gamma_{s->t}) / K,

abar_t = prod alpha, gbar_t = 1 - prod (1 - gamma) (s = 0: the cumulative
q(x_t | x_0); s = t - 1: one step). Applying such a transition to any
(unnormalized) vector p over the K + 1 states:

    out[code j] = alpha p[j] + beta sum_codes(p)
    out[MASK]   = gamma sum_codes(p) + p[MASK]

The reverse step from x_t = s to time u < t sums the posterior over the
predicted x_0 ~ p(x_0 | x_t):

    p(x_u = j | x_t) = q(x_t | x_u = j) sum_k p(k) q(x_u = j | k) / q(x_t | k)
                     = q(x_t | x_u = j) [Qbar_u (p / q(x_t | .))](j),

which with p = one-hot(x_0) is exactly the posterior q(x_u | x_t, x_0).
Arrays of log-probabilities over states have K + 1 entries on the last axis.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

LOG_ZERO = -1e4  # log of a probability that is exactly zero (finite: no NaNs).


@flax.struct.dataclass
class Schedule:
  """The chain from every time s to every time t >= s, t in 0..T.

  Every entry is computed in float64 on the host and stored as a float32 log:
  with the official schedules abar_t + gbar_t is within 1e-6 of 1, so the
  replace probability 1 - alpha - gamma is below float32 resolution and must
  never be recomputed on the device from alpha and gamma.

  Attributes:
    log_alpha, log_beta, log_gamma: float32 [T + 1, T + 1]; entry [s, t] is
      log alpha_{s->t}, log beta_{s->t}, log gamma_{s->t} (LOG_ZERO where the
      term vanishes, e.g. beta and gamma at s = t, and everywhere s > t).
      Row 0 holds the cumulative abar_t, bbar_t, gbar_t; entry [t - 1, t]
      the per-step alpha_t, beta_t, gamma_t.
    num_codes: K (static).
  """
  log_alpha: jax.Array
  log_beta: jax.Array
  log_gamma: jax.Array
  num_codes: int = flax.struct.field(pytree_node=False)

  @property
  def num_timesteps(self) -> int:
    return self.log_alpha.shape[0] - 1


def _transition_tables(abar: np.ndarray, gbar: np.ndarray):
  """float64 alpha, K * beta, gamma [T + 1, T + 1] of the chain s -> t.

  Written so that no entry is a difference of nearly equal numbers: with
  c = 1 - abar - gbar (the cumulative replace mass, K bbar),
    alpha_{s->t} = abar_t / abar_s,
    gamma_{s->t} = (gbar_t - gbar_s) / (1 - gbar_s),
    K beta_{s->t} = (c_t abar_s - abar_t c_s) / (abar_s (1 - gbar_s)),
  the last from 1 - alpha - gamma over a common denominator.
  """
  replace = 1.0 - abar - gbar
  s, t = abar[:, None], abar[None, :]
  alpha = t / s
  gamma = (gbar[None, :] - gbar[:, None]) / (1.0 - gbar[:, None])
  k_beta = (replace[None, :] * s -
            t * replace[:, None]) / (s * (1.0 - gbar[:, None]))
  later = np.triu(np.ones_like(alpha, dtype=bool))  # t >= s only.
  return (np.where(later, alpha,
                   0.0), np.where(later, k_beta,
                                  0.0), np.where(later, gamma, 0.0))


def cumulative_schedules(num_timesteps: int, abar_1: float, abar_T: float,
                         gbar_1: float,
                         gbar_T: float) -> tuple[np.ndarray, np.ndarray]:
  """float64 abar_t and gbar_t [T + 1] (t = 0: 1 and 0), linear in t from
  their t = 1 values to their t = T values (host values, usable while
  tracing)."""
  frac = np.arange(num_timesteps, dtype=np.float64) / max(num_timesteps - 1, 1)
  abar = np.concatenate([[1.0], abar_1 + frac * (abar_T - abar_1)])
  gbar = np.concatenate([[0.0], gbar_1 + frac * (gbar_T - gbar_1)])
  return abar, gbar


def make_schedule(num_codes: int, num_timesteps: int = 100,
                  abar_1: float = 0.99999, abar_T: float = 0.000009,
                  gbar_1: float = 0.000009,
                  gbar_T: float = 0.99999) -> Schedule:
  """The official VQ-Diffusion schedule: abar_t and gbar_t linear in t from
  their t = 1 values to their t = T values (the paper's text uses gbar_T =
  0.9); every transition computed in float64 (see Schedule)."""
  if num_timesteps < 1 or num_codes < 1:
    raise ValueError(f'need num_timesteps >= 1 and num_codes >= 1, got '
                     f'{num_timesteps}, {num_codes}')
  abar, gbar = cumulative_schedules(num_timesteps, abar_1, abar_T, gbar_1,
                                    gbar_T)
  if np.any(np.diff(abar) > 0) or np.any(np.diff(gbar) < 0) or \
      np.any(abar + gbar > 1 + 1e-12) or abar[-1] <= 0 or gbar[-1] >= 1:
    raise ValueError('schedule: need abar decreasing in (0, 1], gbar '
                     'increasing in [0, 1) and abar + gbar <= 1')
  alpha, k_beta, gamma = _transition_tables(abar, gbar)
  # A step's K beta_t = 1 - alpha_t - gamma_t is negative where the replace
  # mass 1 - abar - gbar falls faster than abar: no Markov chain has those
  # marginals (the one-step matrices would not match q(x_t | x_0)).
  one_step = k_beta[np.arange(num_timesteps), np.arange(1, num_timesteps + 1)]
  if np.any(one_step < -1e-9):
    t = int(np.argmin(one_step)) + 1
    raise ValueError(
        'schedule: no Markov chain has these marginals: the replace mass 1 - '
        f'abar - gbar falls faster than abar from t = {t - 1} to {t} (K beta '
        f'= {one_step[t - 1]:.3g} < 0); lower abar_T or gbar_T')
  # Rounding can leave K beta at -1e-22 where it is exactly 0 in the math.
  k_beta = np.maximum(k_beta, 0.0)

  def log(v):
    safe = np.log(np.where(v > 0, v, 1.0))
    return jnp.asarray(np.where(v > 0, np.maximum(safe, LOG_ZERO), LOG_ZERO),
                       jnp.float32)

  return Schedule(log_alpha=log(alpha), log_beta=log(k_beta / num_codes),
                  log_gamma=log(gamma), num_codes=num_codes)


def transition(schedule: Schedule, s, t):
  """log (alpha, beta, gamma) of the chain from time s to time t >= s.

  s, t: int arrays broadcastable to a batch shape; returns three float32
  arrays of that shape (log 0 = LOG_ZERO where a term vanishes, e.g. s = t),
  looked up in the float64-made tables of the schedule.
  """
  return (schedule.log_alpha[s, t], schedule.log_beta[s,
                                                      t], schedule.log_gamma[s,
                                                                             t])


def _expand(x, like):
  return jnp.reshape(x, jnp.shape(x) + (1,) * (like.ndim - jnp.ndim(x)))


def apply_transition(log_p: jax.Array, schedule: Schedule, s, t) -> jax.Array:
  """log of Q_{s->t} applied to the (unnormalized) vectors exp(log_p).

  log_p: [..., N, K + 1]; s, t: int, scalar or [...] (per example).
  Returns [..., N, K + 1] (see the module docstring).
  """
  log_alpha, log_beta, log_gamma = transition(schedule, s, t)
  log_alpha, log_beta, log_gamma = (
      _expand(v, log_p[..., 0]) for v in (log_alpha, log_beta, log_gamma))
  codes, mask = log_p[..., :-1], log_p[..., -1]
  log_total = jax.nn.logsumexp(codes, axis=-1)
  out_codes = jnp.logaddexp(codes + log_alpha[..., None],
                            (log_beta + log_total)[..., None])
  out_mask = jnp.logaddexp(log_gamma + log_total, mask)
  return jnp.concatenate([out_codes, out_mask[..., None]], axis=-1)


def one_hot_log(x: jax.Array, num_states: int) -> jax.Array:
  """int states [...] -> log one-hot [..., num_states] (LOG_ZERO elsewhere)."""
  return jnp.where(jax.nn.one_hot(x, num_states, dtype=bool), 0.0, LOG_ZERO)


def q_xt_given_x0(log_x0: jax.Array, schedule: Schedule, t) -> jax.Array:
  """log q(x_t | x_0) for log-distributions over x_0 [..., N, K + 1]."""
  return apply_transition(log_x0, schedule, jnp.zeros_like(t), t)


def likelihood_of_observed(x_t: jax.Array, schedule: Schedule, s,
                           t) -> jax.Array:
  """log q(x_t = observed | x_s = j) for every state j: [..., N, K + 1].

  The code block of the transition is symmetric, so this is the transition
  applied to one-hot(x_t) on codes; from [MASK] only [MASK] is reachable and
  every code reaches [MASK] with gamma.
  """
  num_codes = schedule.num_codes
  log_alpha, log_beta, log_gamma = transition(schedule, s, t)
  log_alpha, log_beta, log_gamma = (
      _expand(v, x_t) for v in (log_alpha, log_beta, log_gamma))
  is_mask = (x_t == num_codes)[..., None]
  same = jax.nn.one_hot(x_t, num_codes + 1, dtype=bool)
  from_code = jnp.where(same,
                        jnp.logaddexp(log_alpha, log_beta)[..., None],
                        log_beta[..., None])
  from_code = from_code.at[..., -1].set(LOG_ZERO)  # MASK never leaves.
  to_mask = jnp.broadcast_to(log_gamma[..., None], from_code.shape)
  to_mask = to_mask.at[..., -1].set(0.0)
  return jnp.where(is_mask, to_mask, from_code)


def reverse_step_log_probs(log_p_x0: jax.Array, x_t: jax.Array,
                           schedule: Schedule, t, u) -> jax.Array:
  """log p(x_u | x_t) = sum_x0 q(x_u | x_t, x_0) p(x_0 | x_t), for u < t.

  Args:
    log_p_x0: [..., N, K + 1] log p(x_0 | x_t) (the [MASK] entry LOG_ZERO;
      one-hot(x_0) gives the exact posterior q(x_u | x_t, x_0)).
    x_t: int [..., N] observed states at time t.
    schedule: the cumulative schedules.
    t, u: int times, scalars or [...], 0 <= u < t.

  Returns:
    [..., N, K + 1] normalized log-probabilities over x_u.
  """
  log_q_t_given_x0 = likelihood_of_observed(x_t, schedule, jnp.zeros_like(t), t)
  # p(x0) / q(x_t | x0), and no weight where x_t cannot come from x0 (a code
  # other than x_t's without replacement): there LOG_ZERO - LOG_ZERO would
  # give p / q a finite value that cancels the zero of q(x_t | x_u) below.
  weights = jnp.where(log_q_t_given_x0 < 0.5 * LOG_ZERO, LOG_ZERO,
                      log_p_x0 - log_q_t_given_x0)
  weights = weights.at[..., -1].set(LOG_ZERO)  # x_0 is never [MASK].
  at_u = apply_transition(weights, schedule, jnp.zeros_like(u), u)
  log_probs = at_u + likelihood_of_observed(x_t, schedule, u, t)
  return jax.nn.log_softmax(jnp.maximum(log_probs, LOG_ZERO), axis=-1)


def sample_states(rng: jax.Array, log_probs: jax.Array) -> jax.Array:
  """Draws int32 states [..., N] from log-probabilities [..., N, S]."""
  return jax.random.categorical(rng, log_probs, axis=-1).astype(jnp.int32)


def categorical_kl(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
  """KL(q || p) over the last axis, terms with q = 0 dropped: [...]."""
  q = jnp.exp(log_q)
  return jnp.sum(jnp.where(q > 0, q * (log_q - log_p), 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class LossTerms:
  """Per-example terms of the VQ-Diffusion loss (float32 [B] each)."""
  vlb: jax.Array  # KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), -log p(x_0|x_1) at t=1.
  x0_ce: jax.Array  # -log p(x_0 | x_t), the auxiliary term.


def loss_terms(log_p_x0: jax.Array, x0: jax.Array, x_t: jax.Array,
               schedule: Schedule, t: jax.Array) -> LossTerms:
  """The VLB term of time t and the x_0 cross-entropy, per example, in nats
  averaged over the N tokens.

  Args:
    log_p_x0: [B, N, K + 1] the network's log p(x_0 | x_t).
    x0: int [B, N] data tokens. x_t: int [B, N] their corruption at time t.
    t: int [B] in [1, T].
  """
  num_states = schedule.num_codes + 1
  log_x0 = one_hot_log(x0, num_states)
  log_q = reverse_step_log_probs(log_x0, x_t, schedule, t, t - 1)
  log_p = reverse_step_log_probs(log_p_x0, x_t, schedule, t, t - 1)
  kl = categorical_kl(log_q, log_p)
  nll = -jnp.take_along_axis(log_p, x0[..., None], axis=-1)[..., 0]
  vlb = jnp.where((t == 1)[:, None], nll, kl).mean(-1)
  ce = -jnp.take_along_axis(log_p_x0, x0[..., None], axis=-1)[..., 0].mean(-1)
  return LossTerms(vlb=vlb, x0_ce=ce)
