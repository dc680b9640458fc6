"""Batched real roll-outs: n environments × T steps in one compiled program.

A policy is a pure function `policy_fn(params, obs, key) -> action` for one
unbatched observation (rlax style); the collector lifts it with `jax.vmap`
over environments and runs `lax.scan` over time. ψ, the policy parameters,
the key and the noise scale are traced arguments: a new task, a new policy or
switching exploration off never recompiles.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types
from admrl_jax.envs.base import EnvState, TaskFamily

PolicyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Batched real collection.

  Attributes:
    n_envs: parallel environments.
    n_steps: control steps per environment per call; None for the family's
      horizon. n_envs × n_steps samples per call (the authors' code: 10 000
      per SLBO stage, e.g. 50 × 200).
    ou_theta, ou_sigma: Ornstein–Uhlenbeck exploration noise,
      x ← x − θ·x + σ·N(0, I), reset to 0 at every episode start.
  """
  n_envs: int = 50
  n_steps: Optional[int] = None
  ou_theta: float = 0.15
  ou_sigma: float = 0.3

  def __post_init__(self):
    if self.n_envs < 1:
      raise ValueError(f'n_envs must be >= 1, got {self.n_envs}')
    if self.n_steps is not None and self.n_steps < 1:
      raise ValueError(f'n_steps must be >= 1, got {self.n_steps}')
    if not 0.0 <= self.ou_theta <= 1.0:
      raise ValueError(f'ou_theta must be in [0, 1], got {self.ou_theta}')
    if self.ou_sigma < 0.0:
      raise ValueError(f'ou_sigma must be >= 0, got {self.ou_sigma}')


@struct.dataclass
class Rollout:
  """What one collection returns.

  Attributes:
    transitions: `Transition` with leaves (T, n_envs, ...).
    episode_return_sum: sum over environments of the returns of episodes that
      ended (done or timeout) during the call, scalar.
    episode_count: number of such episodes, scalar int.
    first_return: return of each environment's first episode, (n_envs,); the
      evaluation return of a policy when T equals the horizon.
  """
  transitions: types.Transition
  episode_return_sum: jax.Array
  episode_count: jax.Array
  first_return: jax.Array

  @property
  def mean_return(self) -> jax.Array:
    """Mean return of the episodes that ended (nan when none did)."""
    return self.episode_return_sum / self.episode_count


@struct.dataclass
class _EnvCarry:
  env_state: EnvState
  t: jax.Array          # steps into the current episode
  noise: jax.Array      # OU state, (action_size,)
  ep_return: jax.Array  # running return of the current episode
  first_return: jax.Array
  first_done: jax.Array  # the first episode has ended


def ou_step(noise: jax.Array, key: jax.Array, theta: float,
            sigma: float) -> jax.Array:
  """One Ornstein–Uhlenbeck step x ← x − θx + σ·N(0, I) (authors' code)."""
  return noise - theta * noise + sigma * jax.random.normal(
      key, noise.shape, noise.dtype)


def _env_step(family: TaskFamily, policy_fn: PolicyFn,
              config: RolloutConfig, params, psi, noise_scale,
              carry: _EnvCarry, key):
  """One environment, one step of `make_collect_fn`'s collection: the
  policy's action plus noise_scale × OU noise, clipped, the family's step,
  reward and done rule, and the episode bookkeeping; the reset of ended
  episodes comes after (`_auto_reset`).

  Returns:
    (carry, (transition, the return of an episode ending here else 0,
    whether one ends here)).
  """
  key_policy, key_noise = jax.random.split(key)
  obs = carry.env_state.obs
  noise = ou_step(carry.noise, key_noise, config.ou_theta, config.ou_sigma)
  raw_action = policy_fn(params, obs, key_policy) + noise_scale * noise
  action = family.clip_action(raw_action)
  next_state = family.step(carry.env_state, action)
  next_obs = next_state.obs
  reward = family.reward(psi, obs, action, next_obs)
  done = family.done(next_obs)
  t = carry.t + 1
  timeout = (t >= family.horizon) & ~done
  end = done | timeout

  ep_return = carry.ep_return + reward
  first_end = end & ~carry.first_done
  new_carry = _EnvCarry(
      env_state=next_state,
      t=jnp.where(end, 0, t),
      noise=jnp.where(end, jnp.zeros_like(noise), noise),
      ep_return=jnp.where(end, 0.0, ep_return),
      first_return=jnp.where(first_end, ep_return, carry.first_return),
      first_done=carry.first_done | end)
  transition = types.Transition(
      obs=obs, action=action, raw_action=raw_action, reward=reward,
      next_obs=next_obs, done=done, timeout=timeout)
  return new_carry, (transition, jnp.where(end, ep_return, 0.0), end)


def _auto_reset(family: TaskFamily, n_envs: int, env_state: EnvState,
                end: jax.Array, key: jax.Array) -> EnvState:
  """Replaces ended environments (end (n_envs,)) by fresh ones.

  The resets are computed only on steps where some episode ended (a scalar
  `lax.cond`, not a per-environment select that would always pay for them).
  """
  def with_resets(env_state):
    fresh = jax.vmap(family.reset)(jax.random.split(key, n_envs))
    return jax.tree.map(
        lambda r, s: jnp.where(
            end.reshape(end.shape + (1,) * (s.ndim - 1)), r, s),
        fresh, env_state)
  return jax.lax.cond(jnp.any(end), with_resets, lambda s: s, env_state)


def _initial_carry(env_state: EnvState, action_size: int) -> _EnvCarry:
  """Fresh episodes of the reset environments `env_state` (n_envs, ...)."""
  n = env_state.obs.shape[0]
  dtype = env_state.obs.dtype  # float32, or float64 under x64 for `lq`
  return _EnvCarry(
      env_state=env_state, t=jnp.zeros((n,), jnp.int32),
      noise=jnp.zeros((n, action_size), dtype),
      ep_return=jnp.zeros((n,), dtype),
      first_return=jnp.zeros((n,), dtype),
      first_done=jnp.zeros((n,), bool))


def make_collect_fn(family: TaskFamily, policy_fn: PolicyFn,
                    config: RolloutConfig = RolloutConfig()):
  """Builds the pure, jitted `collect(params, psi, key, noise_scale) ->
  Rollout`, for use inside a caller's own jit or vmap.

  Each call starts every environment (`config.n_envs`) from a fresh reset
  and runs `config.n_steps` (default: the horizon) control steps; episodes
  that end by the done rule or the horizon are reset automatically.
  Exploration adds `noise_scale` (a traced scalar) × Ornstein–Uhlenbeck
  noise to the policy's action (0 switches it off). Arguments keep their
  dtypes (ψ (k,) in float64 under x64, for instance); `make_collector`
  wraps this function for host calls.
  """
  n_steps = family.horizon if config.n_steps is None else config.n_steps
  n = config.n_envs
  batched_step = jax.vmap(
      functools.partial(_env_step, family, policy_fn, config),
      in_axes=(None, None, None, 0, 0))

  @jax.jit
  def collect_jit(params, psi, key, noise_scale) -> Rollout:
    key_reset, key_steps = jax.random.split(key)
    env_state = jax.vmap(family.reset)(jax.random.split(key_reset, n))
    carry = _initial_carry(env_state, family.action_size)

    def time_step(carry, key_t):
      key_envs, key_reset = jax.random.split(key_t)
      carry, (transition, ended_return, end) = batched_step(
          params, psi, noise_scale, carry, jax.random.split(key_envs, n))
      carry = carry.replace(env_state=_auto_reset(
          family, n, carry.env_state, end, key_reset))
      return carry, (transition, ended_return, end)

    carry, (transitions, ended_returns, ended) = jax.lax.scan(
        time_step, carry, jax.random.split(key_steps, n_steps))
    # An episode still running at the end counts with its partial return.
    first_return = jnp.where(carry.first_done, carry.first_return,
                             carry.ep_return)
    return Rollout(transitions=transitions,
                   episode_return_sum=jnp.sum(ended_returns),
                   episode_count=jnp.sum(ended.astype(jnp.int32)),
                   first_return=first_return)

  return collect_jit


def make_collector(family: TaskFamily, policy_fn: PolicyFn,
                   config: RolloutConfig = RolloutConfig()):
  """Builds `collect(params, psi, key, noise_scale=1.0) -> Rollout`.

  `make_collect_fn`'s jitted collection with canonical arguments: ψ (k,)
  and the noise scale are cast to float32, so that lists, NumPy arrays and
  Python floats all reuse one compiled program. Traceable too (the
  real collection of an SLBO stage calls it inside its jit).
  """
  collect_jit = make_collect_fn(family, policy_fn, config)

  def collect(params, psi, key, noise_scale=1.0) -> Rollout:
    return collect_jit(params, jnp.asarray(psi, jnp.float32), key,
                       jnp.asarray(noise_scale, jnp.float32))

  return collect


def random_policy(action_size: int) -> PolicyFn:
  """Uniform actions in [−1, 1]; params are ignored."""
  def policy_fn(params, obs, key):
    del params, obs
    return jax.random.uniform(key, (action_size,), minval=-1.0, maxval=1.0)
  return policy_fn


def linear_gaussian_policy(action_std: float) -> PolicyFn:
  """a ~ N(K s + k, σ²I) with params (K, k) — the `lq` policy class."""
  def policy_fn(params, obs, key):
    gain, offset = params
    mean = gain @ obs + offset
    return mean + action_std * jax.random.normal(key, mean.shape, mean.dtype)
  return policy_fn


@struct.dataclass
class Episode:
  """One real episode, with the simulator's states (to render it).

  Attributes:
    env_states: the `EnvState` before every step, leaves (n_steps, ...)
      (Brax families: `pipeline_state` for `brax.io.html.render`).
    obs, action, reward, next_obs, done: per step, (n_steps, ...).
    length: steps up to and including the first termination (n_steps if
      none); the steps after it continue the simulation and are not part
      of the episode.
    episode_return: the sum of the rewards of the first `length` steps.
  """
  env_states: EnvState
  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  next_obs: jax.Array
  done: jax.Array
  length: jax.Array
  episode_return: jax.Array


def episode(family: TaskFamily, policy: Callable[[jax.Array, jax.Array],
                                                 jax.Array],
            psi, key: jax.Array, n_steps=None) -> Episode:
  """One episode of `policy(obs, key) -> action` (e.g. from
  `admrl_jax.agents.make_policy_factory`) on task ψ (k,), no exploration
  noise, actions clipped as in collection (`make_collect_fn`). Pure; one
  `lax.scan` of `n_steps` (default: the horizon) steps."""
  n_steps = family.horizon if n_steps is None else n_steps
  key_reset, key_steps = jax.random.split(key)

  def step(env_state, key):
    obs = env_state.obs
    action = family.clip_action(policy(obs, key))
    next_state = family.step(env_state, action)
    reward = family.reward(psi, obs, action, next_state.obs)
    done = family.done(next_state.obs)
    return next_state, (env_state, obs, action, reward, next_state.obs, done)

  _, (states, obs, action, reward, next_obs, done) = jax.lax.scan(
      step, family.reset(key_reset), jax.random.split(key_steps, n_steps))
  # Steps up to and including the first done: no done before them.
  dones = done.astype(jnp.int32)
  inside = jnp.cumsum(dones) - dones == 0
  length = jnp.sum(inside.astype(jnp.int32))
  return Episode(env_states=states, obs=obs, action=action, reward=reward,
                 next_obs=next_obs, done=done, length=length,
                 episode_return=jnp.sum(jnp.where(inside, reward, 0.0)))
