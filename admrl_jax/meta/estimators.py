"""Sample estimators of the pieces of the task gradient (Eqs. 3, 4, 6, 7).

Every estimator works on a time-major batch of transitions (leaves
(T, n, ...)) such as `rl.rollout` and `rl.virtual` produce, and is generic in
the policy: it takes `log_prob_fn(theta, obs, action) -> log π_θ(a|s)` for one
unbatched sample (raw observations; the caller closes over any normaliser).
Rewards are recomputed from the ψ-independent fields of the transitions with
`family.reward(psi, ...)`, so they are differentiable in ψ (Eq. 3).

Units (`NORMALIZATIONS`). With 'per_episode' (the default) η is the
expected undiscounted return of an episode (what the gap L and the
evaluation measure): sums over samples are divided by the number of
episodes the batch holds (`episode_starts`; a partial episode cut by the end
of the batch counts as one). With 'per_sample' every sum is divided by the
number of samples T·n instead (`reduce_mean` over samples, as the authors'
policy-gradient terms do). 'authors' is the authors' code
(github.com/LinZichuan/AdMRL, slbo/algos/ADVTASK.py with `meanret`, and
slbo/utils/runner.py's `begin_mark`): the policy-gradient and Hessian terms
are means over the T·n samples, and the return whose ψ-gradient is Eq. 3 is
the sum of the γ-discounted returns of the episodes that *completed* in the
batch, each from its first step, divided by the number of samples
(`authors_return`; their discount chain is cut only at terminations, not
at timeouts, which differs from this only when a column holds an episode
after a timeout — not in their set-up, one episode of the horizon's length
per column). 'per_sample' and 'authors' agree only when every episode
completes and γ = 1; on a terminating family (hopper2d) the authors' return
leaves out the partial episode at the end of each column. Every term of
Eq. 2 of 'per_episode' and 'per_sample' gets the same normalisation, so the
two differ by the factor episodes/samples (1/T for whole episodes of length
T) in ∂η/∂ψ and in g = ∂η/∂θ, while A and B scale alike and ∂θ̂/∂ψ = −A⁻¹B
does not change (an undamped solve); the paper's damped normal-equation CG
is not scale-free, so its implicit term shrinks further under 'per_sample'.
The paper's step sizes α were tuned for the authors' units.

Advantages are GAE with a frozen value function, as in the authors' code:
Â(ψ) is linear in the rewards, so ∂Â/∂ψ flows through `rl.returns.gae`.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
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


def check_batch(batch: ValuedBatch) -> None:
  """The (T, n) layout of a batch (time first, environments second), the
  one every estimator sums over: rewards, ends and values all (T, n).
  Raises AssertionError (chex) naming the shapes otherwise."""
  tr = batch.transitions
  chex.assert_rank(tr.reward, 2)
  chex.assert_equal_shape([tr.reward, tr.done, tr.timeout, batch.value,
                           batch.next_value])
  chex.assert_equal_shape_prefix([tr.reward, tr.obs, tr.action,
                                  tr.next_obs], 2)


# ------------------------------------------------------------ bookkeeping
def _ends(tr: types.Transition) -> jax.Array:
  return tr.done | tr.timeout


def episode_starts(tr: types.Transition) -> jax.Array:
  """Episodes begun in a (T, n) batch: n plus the ends before the last step."""
  n = tr.reward.shape[1]
  return n + jnp.sum(_ends(tr)[:-1].astype(jnp.int32))


NORMALIZATIONS = ('per_episode', 'per_sample', 'authors')


def batch_count(tr: types.Transition, normalization: str = 'per_episode'
                ) -> jax.Array:
  """What the sums of a (T, n) batch are divided by: its episodes
  (`episode_starts`, 'per_episode') or its T·n samples ('per_sample' and
  'authors', the authors' means over samples). Raises ValueError for
  another name."""
  if normalization == 'per_episode':
    return episode_starts(tr)
  if normalization in ('per_sample', 'authors'):
    return jnp.asarray(tr.reward.size, jnp.int32)
  raise ValueError(f'unknown normalization {normalization!r}; choose one of '
                   f'{", ".join(NORMALIZATIONS)}')


def _segment_scan(x_t: jax.Array, end_t: jax.Array, discount: float
                  ) -> jax.Array:
  """y_t = x_t + discount·y_{t−1}, restarted after each episode end; (T, n)."""
  def step(carry, inputs):
    x, end = inputs
    y = x + discount * carry
    return jnp.where(end, jnp.zeros_like(y), y), y

  _, y = jax.lax.scan(step, jnp.zeros_like(x_t[0]), (x_t, end_t))
  return y


def completed(tr: types.Transition) -> jax.Array:
  """Which samples belong to an episode that ends (done or timeout) within
  the batch, (T, n) bool: False for the partial episode after the last end
  of each column."""
  ends = _ends(tr).astype(jnp.int32)
  return jnp.cumsum(ends[::-1], axis=0)[::-1] > 0


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
  check_batch(batch)
  adv, _ = returns.batched_gae(rewards(family, psi, tr), batch.value,
                               batch.next_value, tr.done, tr.timeout, gamma,
                               lam)
  return adv


# --------------------------------------------------------------- Eq. 3
def authors_return(r: jax.Array, tr: types.Transition,
                   gamma: float) -> jax.Array:
  """The authors' η̂ (ADVTASK.py, `meanret`): Σ over the episodes that
  completed in the batch of their γ-discounted return from their first
  step, divided by the number of samples T·n. r: rewards, (T, n)."""
  discount = gamma**time_in_episode(tr).astype(r.dtype)
  weights = jnp.where(completed(tr), discount, jnp.zeros_like(discount))
  return jnp.sum(weights * r) / r.size


def episode_return(family: TaskFamily, psi: jax.Array,
                   tr: types.Transition,
                   normalization: str = 'per_episode',
                   gamma: float = 1.0) -> jax.Array:
  """η̂ whose ψ-gradient is the Eq. 3 estimate: Σ_samples r_ψ /
  `batch_count` ('per_episode', 'per_sample'; gamma unused), or
  `authors_return` with discount gamma ('authors')."""
  r = rewards(family, psi, tr)
  if normalization == 'authors':
    return authors_return(r, tr, gamma)
  return jnp.sum(r) / batch_count(tr, normalization)


def return_psi_grad(family: TaskFamily, psi: jax.Array,
                    tr: types.Transition,
                    normalization: str = 'per_episode',
                    gamma: float = 1.0) -> jax.Array:
  """∂η/∂ψ at the policy that collected `tr` (Eq. 3), shape (k,).

  Differentiates the sampled rewards (no score function: the trajectory
  distribution does not depend on ψ). gamma discounts the 'authors' return
  only.
  """
  return jax.grad(episode_return, argnums=1)(family, psi, tr, normalization,
                                             gamma)


# ---------------------------------------------------------- Eqs. 4 and 6
def policy_gradient_surrogate(log_prob_fn: LogProbFn, theta: PyTree,
                              tr: types.Transition, adv: jax.Array,
                              normalization: str = 'per_episode'
                              ) -> jax.Array:
  """Σ_t log π_θ(a_t|s_t)·Â_t / `batch_count`; ∇_θ is the Eq. 4 estimate."""
  return jnp.sum(log_probs(log_prob_fn, theta, tr) * adv) / batch_count(
      tr, normalization)


def policy_gradient(family: TaskFamily, log_prob_fn: LogProbFn,
                    theta: PyTree, psi: jax.Array, batch: ValuedBatch,
                    gamma: float, lam: float,
                    normalization: str = 'per_episode') -> PyTree:
  """∂η/∂θ (Eq. 4) from samples of π_θ; structured like θ."""
  adv = jax.lax.stop_gradient(advantages(family, psi, batch, gamma, lam))
  return jax.grad(policy_gradient_surrogate, argnums=1)(
      log_prob_fn, theta, batch.transitions, adv, normalization)


def mixed_objective(family: TaskFamily, log_prob_fn: LogProbFn,
                    batch: ValuedBatch, gamma: float, lam: float,
                    normalization: str = 'per_episode'):
  """(θ, ψ) ↦ policy-gradient surrogate with Â(ψ); ∂ψ∇θ is B (Eq. 6)."""
  def objective(theta, psi):
    adv = advantages(family, psi, batch, gamma, lam)
    return policy_gradient_surrogate(log_prob_fn, theta, batch.transitions,
                                     adv, normalization)
  return objective


# --------------------------------------------------------------- Eq. 7
def reinforce_hessian_objective(family: TaskFamily, log_prob_fn: LogProbFn,
                                theta_bar: PyTree, psi: jax.Array,
                                tr: types.Transition, gamma: float = 1.0,
                                normalization: str = 'per_episode'):
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
  starts = batch_count(tr, normalization)  # episodes, or samples
  cum_bar = jax.lax.stop_gradient(
      _segment_scan(log_probs(log_prob_fn, theta_bar, tr), ends, 1.0))

  def objective(theta):
    cum = _segment_scan(log_probs(log_prob_fn, theta, tr), ends, 1.0)
    return jnp.sum((0.5 * jnp.square(cum - cum_bar) + cum) * weights) / starts

  return objective


def per_step_hessian_objective(family: TaskFamily, log_prob_fn: LogProbFn,
                               theta_bar: PyTree, batch: ValuedBatch,
                               psi: jax.Array, gamma: float, lam: float,
                               normalization: str = 'per_episode'):
  """θ ↦ S(θ) whose Hessian at θ = θ̄ is the per-step Hessian of the
  authors' code (ADVTASK.py, `policy_loss_warmup_quad`):

      S(θ) = Σ_t [½(l_t(θ) − l_t(θ̄))² + l_t(θ)]·Â_t / `batch_count`
      ∇²S(θ̄) = Σ_t (∇l_t ∇l_tᵀ + ∇²l_t)·Â_t / `batch_count`

  with l_t = log π_θ(a_t|s_t) of one step and Â_t the GAE(γ, λ) advantage
  of r_ψ with the frozen value function — the same advantages as the mixed
  term B (`mixed_objective`), so A and B are derivatives of one surrogate.
  Each step's score is weighted by its own advantage only (no products of
  the scores of earlier steps, unlike the trajectory form of Eq. 7,
  `reinforce_hessian_objective`): biased, with far lower variance at long
  horizons. Never form the Hessian: take `linalg.hvp(S, theta_bar, v)`.
  """
  tr = batch.transitions
  adv = jax.lax.stop_gradient(advantages(family, psi, batch, gamma, lam))
  count = batch_count(tr, normalization)
  l_bar = jax.lax.stop_gradient(log_probs(log_prob_fn, theta_bar, tr))

  def objective(theta):
    l = log_probs(log_prob_fn, theta, tr)
    return jnp.sum((0.5 * jnp.square(l - l_bar) + l) * adv) / count

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
