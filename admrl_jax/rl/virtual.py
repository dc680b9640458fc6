"""Virtual roll-outs: the policy acting through a learned model (SLBO).

n roll-outs × T steps (default 50 × 200 = 10 000 samples per TRPO step, as in
the authors' code) start from real start states, score transitions with the
family's r_ψ and end them by its done rule; an ended roll-out restarts from
another real start state, so shapes stay static. `lax.scan` over time, `vmap`
over roll-outs. The model enters as a pure `dynamics_fn(model, obs, action) ->
next_obs` whose parameters are a traced argument: refitting the model or
changing ψ never recompiles.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.rl.rollout import PolicyFn

DynamicsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def make_virtual_rollout(family: TaskFamily, policy_fn: PolicyFn,
                         dynamics_fn: DynamicsFn, n_rollouts: int = 50,
                         n_steps: int | None = None):
  """Builds `rollout(policy_params, model, psi, start_obs, key) -> Transition`.

  Args (of the returned function):
    start_obs: real start states to draw from, (n_start, obs_size).
  Returns:
    transitions with leaves (T, n_rollouts, ...); `raw_action` is the
    policy's sample before clipping, `action` what the model was fed.
  """
  n_steps = family.horizon if n_steps is None else n_steps
  horizon = family.horizon

  def one_step(policy_params, model, psi, start_obs, carry, key):
    obs, t = carry
    key_policy, key_start = jax.random.split(key)
    raw_action = policy_fn(policy_params, obs, key_policy)
    action = family.clip_action(raw_action)
    next_obs = dynamics_fn(model, obs, action)
    reward = family.reward(psi, obs, action, next_obs)
    done = family.done(next_obs)
    t = t + 1
    timeout = (t >= horizon) & ~done
    end = done | timeout
    restart = start_obs[jax.random.randint(key_start, (), 0,
                                           start_obs.shape[0])]
    carry = (jnp.where(end, restart, next_obs), jnp.where(end, 0, t))
    return carry, types.Transition(
        obs=obs, action=action, raw_action=raw_action, reward=reward,
        next_obs=next_obs, done=done, timeout=timeout)

  def rollout(policy_params, model, psi, start_obs, key) -> types.Transition:
    key_start, key_steps = jax.random.split(key)
    index = jax.random.randint(key_start, (n_rollouts,), 0, start_obs.shape[0])
    carry = (start_obs[index], jnp.zeros((n_rollouts,), jnp.int32))
    step = jax.vmap(one_step, in_axes=(None, None, None, None, 0, 0))

    def time_step(carry, key_t):
      return step(policy_params, model, psi, start_obs, carry,
                  jax.random.split(key_t, n_rollouts))

    _, transitions = jax.lax.scan(time_step, carry,
                                  jax.random.split(key_steps, n_steps))
    return transitions

  return rollout
