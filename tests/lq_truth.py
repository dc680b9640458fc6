"""Ground truth for the task gradient on `lq` (shared by the meta tests):
`admrl_jax.meta.ground_truth` at a short horizon (10 steps), with the
process-noise model of the exact-solve tests.

True dynamics: the `lq` family. The "learned model": an `lq` family with
other A, B. Policies: stationary affine Gaussian N(K s + k, σ²I), θ = (K, k).
Everything exact: η by mean/covariance propagation, θ̂ and θ* by Newton on
the exact return, L(ψ) = η*(θ*(ψ), ψ) − η*(θ̂(ψ), ψ).
"""
import functools

import jax

from admrl_jax import envs
from admrl_jax.meta import ground_truth as gt

HORIZON = 10
STD = 0.3
MODEL_A = gt.LQ_MODEL_A
MODEL_B = gt.LQ_MODEL_B
PSI = (0.4, -0.6)


@functools.lru_cache(maxsize=None)  # one family object: compiled once
def families(model_noise_std=None):
  true = envs.make('lq', horizon=HORIZON)
  extra = {} if model_noise_std is None else {'noise_std': model_noise_std}
  model = envs.make('lq', horizon=HORIZON, A=MODEL_A, B=MODEL_B, **extra)
  return true, model


def eta(family, theta, psi):
  """Exact expected return of the affine policy θ = (K, k) on task ψ."""
  return gt.eta(family, theta, psi, STD)


@functools.partial(jax.jit, static_argnums=0)
def argmax(family, psi):
  return gt.argmax(family, psi, STD)


@functools.partial(jax.jit, static_argnums=(0, 1))
def gap(true, model, psi):
  """L(ψ) by full re-optimisation under both dynamics."""
  return gt.gap(true, model, psi, STD)


log_prob = gt.log_prob_fn(STD)
reparam = gt.reparam_fn(STD)


def valued(family, psi, theta, tr):
  """A batch with the exact (time-dependent) value function of θ."""
  return gt.valued(family, psi, theta, tr, STD)


def exact_pieces(true, model, psi):
  """θ̂ and every piece of Eq. 2 in closed form (`assemble`'s arguments)."""
  return gt.exact_pieces(true, model, psi, STD)
