"""Virtual roll-outs: the policy acting through a learned model (SLBO).

n roll-outs × T steps (default 50 × 200 = 10 000 samples per TRPO step, as in
the authors' code) start from real start states, score transitions with the
family's r_ψ and end them by its done rule; an ended roll-out restarts from
another real start state, so shapes stay static. `lax.scan` over time, `vmap`
over roll-outs. The model enters as a pure `dynamics_fn(model, obs, action) ->
next_obs` whose parameters are a traced argument: refitting the model or
changing ψ never recompiles. A stochastic model (e.g. a probabilistic
ensemble with trajectory sampling, Chua et al. 2018, arXiv:1805.12114) takes
two more keys, `dynamics_fn(model, obs, action, key_rollout, key_step)`:
one fixed over each roll-out, one fresh per step (`model_keys=True`).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.rl.rollout import PolicyFn

DynamicsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def make_virtual_rollout(family: TaskFamily, policy_fn: PolicyFn,
                         dynamics_fn: DynamicsFn, n_rollouts: int = 50,
                         n_steps: int | None = None, model_keys: bool = False):
  """Builds `rollout(policy_params, model, psi, start_obs, key) -> Transition`.

  With model_keys, dynamics_fn is called as (model, obs, action,
  key_rollout, key_step); the model's keys are drawn from fold_in(key, 1),
  apart from the policy's and the restarts' (which stay those of a
  deterministic model).

  Args (of the returned function):
    start_obs: real start states to draw from, (n_start, obs_size).
  Returns:
    transitions with leaves (T, n_rollouts, ...); `raw_action` is the
    policy's sample before clipping, `action` what the model was fed.
  """
  n_steps = family.horizon if n_steps is None else n_steps
  horizon = family.horizon

  def one_step(policy_params, model, psi, start_obs, carry, key_policy,
               restart_index, key_step, key_rollout):
    obs, t = carry
    raw_action = policy_fn(policy_params, obs, key_policy)
    action = family.clip_action(raw_action)
    if model_keys:
      next_obs = dynamics_fn(model, obs, action, key_rollout, key_step)
    else:
      next_obs = dynamics_fn(model, obs, action)
    reward = family.reward(psi, obs, action, next_obs)
    done = family.done(next_obs)
    t = t + 1
    timeout = (t >= horizon) & ~done
    end = done | timeout
    restart = start_obs[restart_index]
    carry = (jnp.where(end, restart, next_obs), jnp.where(end, 0, t))
    return carry, types.Transition(
        obs=obs, action=action, raw_action=raw_action, reward=reward,
        next_obs=next_obs, done=done, timeout=timeout)

  def rollout(policy_params, model, psi, start_obs, key) -> types.Transition:
    chex.assert_shape(start_obs, (None, family.obs_size))
    key_start, key_steps = jax.random.split(key)
    n_start = start_obs.shape[0]
    index = jax.random.randint(key_start, (n_rollouts,), 0, n_start)
    carry = (start_obs[index], jnp.zeros((n_rollouts,), jnp.int32))
    # Every step's keys and restart states are drawn here, in one batch,
    # rather than inside the scan: the same draws (step t, roll-out i uses
    # split(split(key_steps, T)[t], n)[i], split into the policy's key and
    # the restart's), but on a CPU each draw in the loop is a small
    # while loop of its own (threefry's rolled rounds), several per step.
    def step_keys(key_t):
      return jax.vmap(jax.random.split)(jax.random.split(key_t, n_rollouts))

    keys = jax.vmap(step_keys)(jax.random.split(key_steps, n_steps))
    key_policy, key_restart = keys[:, :, 0], keys[:, :, 1]
    restart_index = jax.vmap(jax.vmap(
        lambda k: jax.random.randint(k, (), 0, n_start)))(key_restart)
    if model_keys:
      key_rollout, key_model_steps = jax.random.split(
          jax.random.fold_in(key, 1))
      key_rollout = jax.random.split(key_rollout, n_rollouts)
      key_step = jax.vmap(lambda k: jax.random.split(k, n_rollouts))(
          jax.random.split(key_model_steps, n_steps))
    else:  # placeholders, unused
      key_rollout = jnp.zeros((n_rollouts,))
      key_step = jnp.zeros((n_steps, n_rollouts))
    step = jax.vmap(one_step, in_axes=(None, None, None, None, 0, 0, 0, 0, 0))

    def time_step(carry, inputs):
      return step(policy_params, model, psi, start_obs, carry, *inputs,
                  key_rollout)

    _, transitions = jax.lax.scan(time_step, carry,
                                  (key_policy, restart_index, key_step))
    # The (T, n_rollouts, ...) layout the estimators and TRPO sum over.
    chex.assert_shape(transitions.reward, (n_steps, n_rollouts))
    return transitions

  return rollout
