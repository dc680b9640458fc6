"""Ground truth for the task gradient on `lq` (shared by the meta tests).

True dynamics: the `lq` family. The "learned model": an `lq` family with
other A, B. Policies: stationary affine Gaussian N(K s + k, σ²I), θ = (K, k).
Everything exact: η by mean/covariance propagation, θ̂ and θ* by Newton on
the exact return, L(ψ) = η*(θ*(ψ), ψ) − η*(θ̂(ψ), ψ).
"""
import functools

import jax
import jax.numpy as jnp

from admrl_jax import envs
from admrl_jax.meta import estimators
from admrl_jax.policies import gaussian_mlp as gm

HORIZON = 10
STD = 0.3
MODEL_A = ((0.85, 0.25), (-0.05, 0.8))
MODEL_B = ((0.45, 0.05), (0.1, 0.5))
PSI = (0.4, -0.6)


@functools.lru_cache(maxsize=None)  # one family object: compiled once
def families(model_noise_std=None):
  true = envs.make('lq', horizon=HORIZON)
  extra = {} if model_noise_std is None else {'noise_std': model_noise_std}
  model = envs.make('lq', horizon=HORIZON, A=MODEL_A, B=MODEL_B, **extra)
  return true, model


def eta(family, theta, psi):
  """Exact expected return of the affine policy θ = (K, k) on task ψ."""
  return family.expected_return(psi, theta[0], theta[1], STD)


@functools.partial(jax.jit, static_argnums=0)
def argmax(family, psi):
  return family.optimal_stationary_policy(psi, STD)


@functools.partial(jax.jit, static_argnums=(0, 1))
def gap(true, model, psi):
  """L(ψ) by full re-optimisation under both dynamics."""
  return eta(true, argmax(true, psi), psi) - eta(true, argmax(model, psi), psi)


def log_prob(theta, obs, action):
  mean = theta[0] @ obs + theta[1]
  return gm.gaussian_log_prob(mean, jnp.full(mean.shape, jnp.log(STD)),
                              action)


def reparam(theta, obs, eps):
  return theta[0] @ obs + theta[1] + STD * eps


def valued(family, psi, theta, tr):
  """A batch with the exact (time-dependent) value function of θ."""
  p, q, c = family.policy_value(psi, theta[0], theta[1], STD)
  t = estimators.time_in_episode(tr)

  def value(s, t):
    return -(jnp.einsum('...i,...ij,...j->...', s, p[t], s)
             + 2.0 * jnp.einsum('...i,...i->...', q[t], s) + c[t])

  return estimators.ValuedBatch(tr, value(tr.obs, t),
                                value(tr.next_obs, t + 1))


def exact_pieces(true, model, psi):
  """θ̂ and every piece of Eq. 2 in closed form (`assemble`'s arguments)."""
  theta_hat, theta_star = argmax(model, psi), argmax(true, psi)
  return dict(
      theta_hat=theta_hat,
      policy_grad=jax.grad(lambda t: eta(true, t, psi))(theta_hat),
      return_grad_star=jax.grad(lambda p: eta(true, theta_star, p))(psi),
      return_grad_hat=jax.grad(lambda p: eta(true, theta_hat, p))(psi),
      hessian_objective=lambda t: eta(model, t, psi),
      mixed_objective=lambda t, p: eta(model, t, p))
