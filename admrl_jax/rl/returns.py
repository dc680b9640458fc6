"""Generalised advantage estimation (GAE) with timeouts and terminations.

Written for one environment's time series (rlax style) and lifted with vmap:

    δ_t = r_t + γ (1 − done_t) V(s_{t+1}) − V(s_t)
    A_t = δ_t + γ λ (1 − end_t) A_{t+1},       end_t = done_t ∨ timeout_t

A termination cuts the trace and bootstraps nothing; a timeout cuts the trace
but bootstraps from V(s_{t+1}) of the true successor (Transition.next_obs),
since the episode was only truncated. Defaults γ 0.99, λ 0.95 (authors' code).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def gae(r_t: jax.Array, v_t: jax.Array, v_tp1: jax.Array, done_t: jax.Array,
        timeout_t: jax.Array, gamma: float = 0.99, lam: float = 0.95):
  """Advantages and value targets of one trajectory segment.

  Args:
    r_t: rewards, (T,).
    v_t: V(s_t), (T,).
    v_tp1: V(s_{t+1}) of the true successor, (T,).
    done_t, timeout_t: episode ended at s_{t+1} by termination / by the
      horizon, (T,) bool.
    gamma, lam: discount and GAE λ.

  Returns:
    (advantages, returns), each (T,); returns = advantages + v_t.
    A segment cut mid-episode at T bootstraps from v_tp1 like a timeout.
  """
  # One trajectory segment: a (T, n) batch goes through `batched_gae`.
  chex.assert_rank(r_t, 1)
  chex.assert_equal_shape([r_t, v_t, v_tp1, done_t, timeout_t])
  not_done = 1.0 - done_t.astype(r_t.dtype)
  not_end = 1.0 - (done_t | timeout_t).astype(r_t.dtype)
  delta = r_t + gamma * not_done * v_tp1 - v_t

  def backward(next_adv, inputs):
    delta_t, not_end_t = inputs
    adv = delta_t + gamma * lam * not_end_t * next_adv
    return adv, adv

  _, adv = jax.lax.scan(backward, jnp.zeros((), r_t.dtype),
                        (delta, not_end), reverse=True)
  return adv, adv + v_t


def episode_count(done: jax.Array, timeout: jax.Array) -> jax.Array:
  """Episodes begun in a time-major (T, n) batch, int32 scalar.

  Each of the n columns starts one, and every end (done or timeout) before
  the last step starts another; a partial episode cut by the end of the
  batch counts as one (as `meta.estimators.episode_starts` counts them).
  """
  ends = (done | timeout)[:-1]
  return done.shape[1] + jnp.sum(ends, dtype=jnp.int32)


def mean_episode_return(r: jax.Array, done: jax.Array,
                        timeout: jax.Array) -> jax.Array:
  """Σ rewards / `episode_count`: the mean return per episode of a (T, n)
  batch, partial episodes included (for roll-outs shorter than the
  horizon, their partial return)."""
  return jnp.sum(r) / episode_count(done, timeout).astype(r.dtype)


def batched_gae(r, v, v_next, done, timeout, gamma: float = 0.99,
                lam: float = 0.95):
  """`gae` over time-major batches: every argument (T, n_envs)."""
  return jax.vmap(gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)(
      r, v, v_next, done, timeout, gamma, lam)
