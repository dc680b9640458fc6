"""Pytrees shared across layers."""
from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Transition:
  """One real or virtual transition; batched leaves carry leading axes.

  The reward r_ψ is a function of (obs, action, next_obs) alone (see
  `TaskFamily.reward`), so these fields are the ψ-independent quantities from
  which the reward of any other task is recomputed without re-simulating.

  Attributes:
    obs: s_t, (..., obs_size).
    action: the action the simulator executed (policy sample + exploration
      noise, clipped to the family's bound), (..., action_size).
    raw_action: the same before clipping, (..., action_size).
    reward: r_ψ(s_t, a_t, s_{t+1}) for the ψ it was collected under, (...,).
    next_obs: s_{t+1} — the true successor, also at episode ends (the reset
      observation is only the next step's obs), (..., obs_size).
    done: the family's termination rule fired at s_{t+1}, (...,) bool.
    timeout: the episode was cut by the horizon without termination, (...,).
  """
  obs: jax.Array
  action: jax.Array
  raw_action: jax.Array
  reward: jax.Array
  next_obs: jax.Array
  done: jax.Array
  timeout: jax.Array


def finite_transitions(tr: Transition) -> jax.Array:
  """Which transitions of a batch hold only finite numbers, (...,) bool.

  A transition with a NaN or Inf in any float field (obs, actions, reward,
  next_obs) must not enter long-lived state — the dataset, the
  normalisers — where it would poison every later fit; the batch axes are
  those of `reward`.
  """
  batch_ndim = tr.reward.ndim
  finite = jax.numpy.ones(tr.reward.shape, bool)
  for x in (tr.obs, tr.action, tr.raw_action, tr.reward, tr.next_obs):
    if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
      finite &= jax.numpy.all(jax.numpy.isfinite(x),
                              axis=tuple(range(batch_ndim, x.ndim)))
  return finite


def float_dtype():
  """JAX's default float dtype: float32, or float64 when x64 is enabled.

  State and metrics are created in this dtype so the same code runs in
  either mode (float64 is how one checks that two programs differ only by
  rounding, e.g. a vmapped α sweep against single runs).
  """
  return jax.dtypes.canonicalize_dtype(jax.numpy.float64)
