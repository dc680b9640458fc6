"""The adversary's step: projected gradient ascent on the task (Eq. 1, Alg. 1).

The step acts on the normalised coordinates u ∈ [−1, 1]^k of the box
(ψ = lo + (u + 1)/2·(hi − lo)): u ← clip(u + α·∂L/∂u, −1, 1), no
normalisation or clipping of the gradient (as the authors do), or with
`normalize=True` u ← clip(u + α·∂L/∂u/‖∂L/∂u‖, −1, 1): a step of length α
in units of the box's half-widths, whatever the scale of the estimate
(which varies by orders of magnitude with the family, the normalisation of
the estimator and the preset, so that the paper's rule either barely moves
or jumps to a corner). A gradient with a NaN or Inf is rejected — u stays
where it was — and the step says so; so is a zero gradient under
`normalize` (it has no direction).
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from admrl_jax.envs.base import TaskFamily


def ascent_step(u: jax.Array, grad_u: jax.Array, alpha,
                normalize: bool = False) -> Tuple[jax.Array, jax.Array]:
  """One projected ascent step in u (Lin et al. 2020, arXiv:2006.08875,
  Algorithm 1, line 12).

  Args:
    u: current task in normalised coordinates, (k,).
    grad_u: ∂L/∂u, (k,).
    alpha: step size α > 0 (traced, so a sweep over α can be vmapped).
    normalize: step along ∂L/∂u/‖∂L/∂u‖ (length α) instead of α·∂L/∂u.

  Returns:
    (u_next, accepted): u_next in [−1, 1]^k; accepted is False when grad_u
    was not finite (or zero, under `normalize`), in which case
    u_next = clip(u, −1, 1).
  """
  accepted = jnp.all(jnp.isfinite(grad_u))
  direction = grad_u
  if normalize:
    norm = jnp.linalg.norm(jnp.where(accepted, grad_u, 0.0))
    accepted = accepted & (norm > 0)
    direction = grad_u / jnp.where(norm > 0, norm, 1.0)
  step = jnp.where(accepted, alpha * direction, jnp.zeros_like(grad_u))
  return jnp.clip(u + step, -1.0, 1.0), accepted


def ascent_step_psi(family: TaskFamily, psi: jax.Array, grad_u: jax.Array,
                    alpha, normalize: bool = False
                    ) -> Tuple[jax.Array, jax.Array]:
  """`ascent_step` for a task given as ψ; returns (ψ_next ∈ Ψ, accepted)."""
  u_next, accepted = ascent_step(family.to_u(psi), grad_u, alpha, normalize)
  return family.from_u(u_next), accepted


def cem_next_task(key: jax.Array, visited_u: jax.Array, gaps: jax.Array,
                  quantile: float, uniform_share: float,
                  min_std: float) -> jax.Array:
  """The next task of a gradient-free adversary: one cross-entropy-method
  step over a task distribution on the box, in the spirit of RoML
  (Greenberg et al., "Train Hard, Fight Easy", NeurIPS 2023,
  arXiv:2301.11147).

  The distribution is a diagonal Gaussian in u, clipped to [−1, 1]^k. It is
  refitted at every task from the tasks visited so far with a measured
  training gap: the elite set is the `quantile` fraction of them with the
  largest gaps (at least one; the tail whose mean is the CVaR of the gap at
  that level), the mean is the elites' mean and the standard deviation
  theirs, floored at `min_std` so that the search does not collapse. With
  probability `uniform_share` (and while fewer than two gaps are
  measured) the task is drawn from the original, uniform distribution
  instead, as RoML mixes in the original task distribution.

  Args:
    key: PRNG key.
    visited_u: tasks visited, (n, k); rows whose gap is NaN are ignored.
    gaps: their training gaps (larger is worse for the learner), (n,).
    quantile: elite fraction in (0, 1].
    uniform_share: probability of a uniform draw, in [0, 1].
    min_std: floor of the Gaussian's standard deviation in u, > 0.

  Returns:
    u_next in [−1, 1]^k, (k,).
  """
  valid = jnp.isfinite(gaps) & jnp.all(jnp.isfinite(visited_u), axis=-1)
  n_valid = jnp.sum(valid)
  n_elite = jnp.maximum(1, jnp.ceil(quantile * n_valid)).astype(jnp.int32)
  score = jnp.where(valid, gaps, -jnp.inf)
  order = jnp.argsort(-score)
  ranks = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  elite = (valid & (ranks < n_elite)).astype(visited_u.dtype)
  weights = elite / jnp.maximum(jnp.sum(elite), 1.0)
  u_safe = jnp.where(valid[:, None], visited_u, 0.0)
  mean = weights @ u_safe
  std = jnp.sqrt(weights @ jnp.square(u_safe - mean))
  std = jnp.maximum(std, min_std)
  key_cem, key_uniform, key_mix = jax.random.split(key, 3)
  k = visited_u.shape[-1]
  from_cem = jnp.clip(mean + std * jax.random.normal(
      key_cem, (k,), visited_u.dtype), -1.0, 1.0)
  uniform = jax.random.uniform(key_uniform, (k,), visited_u.dtype, -1.0, 1.0)
  use_uniform = ((jax.random.uniform(key_mix) < uniform_share)
                 | (n_valid < 2))
  return jnp.where(use_uniform, uniform, from_cem)
