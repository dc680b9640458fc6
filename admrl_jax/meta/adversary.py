"""The adversary's step: projected gradient ascent on the task (Eq. 1, Alg. 1).

The step acts on the normalised coordinates u ∈ [−1, 1]^k of the box
(ψ = lo + (u + 1)/2·(hi − lo)): u ← clip(u + α·∂L/∂u, −1, 1), no
normalisation or clipping of the gradient (as the authors do). A gradient
with a NaN or Inf is rejected — u stays where it was — and the step says so.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from admrl_jax.envs.base import TaskFamily


def ascent_step(u: jax.Array, grad_u: jax.Array, alpha
                ) -> Tuple[jax.Array, jax.Array]:
  """One projected ascent step in u.

  Args:
    u: current task in normalised coordinates, (k,).
    grad_u: ∂L/∂u, (k,).
    alpha: step size α > 0 (traced, so a sweep over α can be vmapped).

  Returns:
    (u_next, accepted): u_next in [−1, 1]^k; accepted is False when grad_u
    was not finite, in which case u_next = clip(u, −1, 1).
  """
  finite = jnp.all(jnp.isfinite(grad_u))
  step = jnp.where(finite, alpha * grad_u, jnp.zeros_like(grad_u))
  return jnp.clip(u + step, -1.0, 1.0), finite


def ascent_step_psi(family: TaskFamily, psi: jax.Array, grad_u: jax.Array,
                    alpha) -> Tuple[jax.Array, jax.Array]:
  """`ascent_step` for a task given as ψ; returns (ψ_next ∈ Ψ, accepted)."""
  u_next, accepted = ascent_step(family.to_u(psi), grad_u, alpha)
  return family.from_u(u_next), accepted
