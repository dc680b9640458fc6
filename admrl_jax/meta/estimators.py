"""Sample estimators of the pieces of the task gradient (Eqs. 3, 4, 6, 7).

Every estimator works on a time-major batch of transitions (leaves
(T, n, ...)) such as `rl.rollout` and `rl.virtual` produce, and is generic in
the policy: it takes `log_prob_fn(theta, obs, action) -> log π_θ(a|s)` for one
unbatched sample (raw observations; the caller closes over any normaliser).
Rewards are recomputed from the ψ-independent fields of the transitions with
`family.reward(psi, ...)`, so they are differentiable in ψ (Eq. 3).

Units. η is the expected undiscounted return of an episode (what the gap L
and the evaluation measure), so sums over samples are divided by the number
of episodes the batch holds (`episode_starts`) — the same normalisation for
every term of Eq. 2, which keeps them commensurable. (The authors' code
averages the policy-gradient terms over samples instead, which scales the
implicit term of Eq. 2 by 1/T relative to the others.) A partial episode
cut by the end of the batch counts as one episode.

Advantages are GAE with a frozen value function, as in the authors' code:
Â(ψ) is linear in the rewards, so ∂Â/∂ψ flows through `rl.returns.gae`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.rl import returns

PyTree = Any
LogProbFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
ReparamFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
DynamicsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@struct.dataclass
class ValuedBatch:
  """Transitions of one policy with its frozen value function's estimates.

  Attributes:
    transitions: `Transition`, leaves (T, n, ...); `raw_action` must be the
      policy's own sample (collected without exploration noise).
    value: V(s_t), (T, n).
    next_value: V(s_{t+1}) of the true successor, (T, n).
  """
  transitions: types.Transition
  value: jax.Array
  next_value: jax.Array


# ------------------------------------------------------------ bookkeeping
def _ends(tr: types.Transition) -> jax.Array:
  return tr.done | tr.timeout


def episode_starts(tr: types.Transition) -> jax.Array:
  """Episodes begun in a (T, n) batch: n plus the ends before the last step."""
  n = tr.reward.shape[1]
  return n + jnp.sum(_ends(tr)[:-1].astype(jnp.int32))


def _segment_scan(x_t: jax.Array, end_t: jax.Array, discount: float
                  ) -> jax.Array:
  """y_t = x_t + discount·y_{t−1}, restarted after each episode end; (T, n)."""
  def step(carry, inputs):
    x, end = inputs
    y = x + discount * carry
    return jnp.where(end, jnp.zeros_like(y), y), y

  _, y = jax.lax.scan(step, jnp.zeros_like(x_t[0]), (x_t, end_t))
  return y


def time_in_episode(tr: types.Transition) -> jax.Array:
  """t counted from each episode's first step (0-based), (T, n) int32."""
  ones = jnp.ones(tr.reward.shape, jnp.int32)
  return _segment_scan(ones, _ends(tr), 1) - 1


def rewards(family: TaskFamily, psi: jax.Array,
            tr: types.Transition) -> jax.Array:
  """r_ψ of every transition, (T, n), differentiable in ψ."""
  return jax.vmap(jax.vmap(family.reward, (None, 0, 0, 0)),
                  (None, 0, 0, 0))(psi, tr.obs, tr.action, tr.next_obs)


def log_probs(log_prob_fn: LogProbFn, theta: PyTree,
              tr: types.Transition) -> jax.Array:
  """log π_θ(a_t|s_t) of every transition, (T, n)."""
  return jax.vmap(jax.vmap(log_prob_fn, (None, 0, 0)),
                  (None, 0, 0))(theta, tr.obs, tr.raw_action)


def advantages(family: TaskFamily, psi: jax.Array, batch: ValuedBatch,
               gamma: float, lam: float) -> jax.Array:
  """GAE Â_t(ψ) with the frozen value function, (T, n); linear in r_ψ."""
  tr = batch.transitions
  adv, _ = returns.batched_gae(rewards(family, psi, tr), batch.value,
                               batch.next_value, tr.done, tr.timeout, gamma,
                               lam)
  return adv


# --------------------------------------------------------------- Eq. 3
def episode_return(family: TaskFamily, psi: jax.Array,
                   tr: types.Transition) -> jax.Array:
  """η̂ = Σ_samples r_ψ / episodes; its ψ-gradient is the Eq. 3 estimate."""
  return jnp.sum(rewards(family, psi, tr)) / episode_starts(tr)


def return_psi_grad(family: TaskFamily, psi: jax.Array,
                    tr: types.Transition) -> jax.Array:
  """∂η/∂ψ at the policy that collected `tr` (Eq. 3), shape (k,).

  Differentiates the sampled rewards (no score function: the trajectory
  distribution does not depend on ψ).
  """
  return jax.grad(episode_return, argnums=1)(family, psi, tr)


# ---------------------------------------------------------- Eqs. 4 and 6
def policy_gradient_surrogate(log_prob_fn: LogProbFn, theta: PyTree,
                              tr: types.Transition,
                              adv: jax.Array) -> jax.Array:
  """Σ_t log π_θ(a_t|s_t)·Â_t / episodes; ∇_θ is the Eq. 4 estimate."""
  return jnp.sum(log_probs(log_prob_fn, theta, tr) * adv) / episode_starts(tr)


def policy_gradient(family: TaskFamily, log_prob_fn: LogProbFn,
                    theta: PyTree, psi: jax.Array, batch: ValuedBatch,
                    gamma: float, lam: float) -> PyTree:
  """∂η/∂θ (Eq. 4) from samples of π_θ; structured like θ."""
  adv = jax.lax.stop_gradient(advantages(family, psi, batch, gamma, lam))
  return jax.grad(policy_gradient_surrogate, argnums=1)(
      log_prob_fn, theta, batch.transitions, adv)


def mixed_objective(family: TaskFamily, log_prob_fn: LogProbFn,
                    batch: ValuedBatch, gamma: float, lam: float):
  """(θ, ψ) ↦ policy-gradient surrogate with Â(ψ); ∂ψ∇θ is B (Eq. 6)."""
  def objective(theta, psi):
    adv = advantages(family, psi, batch, gamma, lam)
    return policy_gradient_surrogate(log_prob_fn, theta, batch.transitions,
                                     adv)
  return objective


# --------------------------------------------------------------- Eq. 7
def reinforce_hessian_objective(family: TaskFamily, log_prob_fn: LogProbFn,
                                theta_bar: PyTree, psi: jax.Array,
                                tr: types.Transition, gamma: float = 1.0):
  """θ ↦ S(θ) whose Hessian at θ = θ̄ is the REINFORCE Hessian (Eq. 7).

      S(θ) = Σ_t γ^{t} [½(L_t(θ) − L_t(θ̄))² + L_t(θ)]·(r_t − b) / episodes

  with L_t = Σ_{t' ≤ t} log π_θ(a_t'|s_t') over the steps of t's episode so
  far (t counted within the episode). ∇²S(θ̄) = Σ_t γ^t (∇L_t∇L_tᵀ + ∇²L_t)
  (r_t − b) / episodes: Eq. 7 with each reward weighted only by the
  log-probabilities of the actions before it (the causal form, the same in
  expectation and exact for episodes cut by the batch end). b is the batch's
  mean reward, a constant baseline, which leaves the expectation unchanged
  because E[∇L∇Lᵀ + ∇²L] = ∇²E[1] = 0. Never form the Hessian: take
  `linalg.hvp(S, theta_bar, v)`.
  """
  r = rewards(family, psi, tr)
  weights = jax.lax.stop_gradient(
      (r - jnp.mean(r)) * gamma**time_in_episode(tr).astype(r.dtype))
  ends = _ends(tr)
  starts = episode_starts(tr)
  cum_bar = jax.lax.stop_gradient(
      _segment_scan(log_probs(log_prob_fn, theta_bar, tr), ends, 1.0))

  def objective(theta):
    cum = _segment_scan(log_probs(log_prob_fn, theta, tr), ends, 1.0)
    return jnp.sum((0.5 * jnp.square(cum - cum_bar) + cum) * weights) / starts

  return objective


# ------------------------------------------------------------ pathwise
def make_pathwise_return(family: TaskFamily, reparam_fn: ReparamFn,
                         dynamics_fn: DynamicsFn, gamma: float = 1.0):
  """Builds η̂_path(θ, ψ, model, start_obs, noise): the virtual return as a
  differentiable function of θ and ψ (a pathwise alternative to Eq. 7).

  Roll-outs act with a = clip(reparam_fn(θ, s, ε)) for fixed noise ε and step
  the differentiable model; a roll-out that meets the done rule stops
  earning reward (the alive mask carries no gradient) and does not restart.
  Returns Σ_t γ^t alive_t r_ψ(s_t, a_t, s_{t+1}) averaged over roll-outs.
  Its Hessian in θ and mixed derivative in (θ, ψ) are exact for this sample
  of start states and noise — a lower-variance alternative to Eq. 7.

  Args (of the returned function):
    start_obs: (n, obs_size) start states, one per roll-out.
    noise: (T, n, action_size) standard normal draws; T is the length.
  """
  def pathwise_return(theta, psi, model, start_obs, noise):
    def step(carry, eps_t):
      obs, alive, discount = carry
      action = family.clip_action(reparam_fn(theta, obs, eps_t))
      next_obs = dynamics_fn(model, obs, action)
      reward = family.reward(psi, obs, action, next_obs)
      earned = discount * alive * reward
      alive = alive * (1.0 - family.done(next_obs).astype(reward.dtype))
      alive = jax.lax.stop_gradient(alive)
      # A finished roll-out holds its state, so nothing after it can blow up.
      next_obs = jnp.where(alive > 0, next_obs, obs)
      return (next_obs, alive, discount * gamma), earned

    def one(obs0, eps):
      one_ = jnp.ones((), obs0.dtype)
      _, earned = jax.lax.scan(step, (obs0, one_, one_), eps)
      return jnp.sum(earned)

    return jnp.mean(jax.vmap(one, (0, 1))(start_obs, noise))

  return pathwise_return
