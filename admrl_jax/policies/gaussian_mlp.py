"""Gaussian MLP policy and value MLP (authors' code), as init/apply pairs.

The policy π_θ and value function V_φ that TRPO (Schulman et al. 2015,
arXiv:1502.05477) trains inside SLBO (Luo et al. 2019, arXiv:1807.03858) and
AdMRL (Lin et al. 2020, arXiv:2006.08875, Appendix C).

Policy: mean = MLP[obs, 32, 32, action] with tanh hidden layers, a
state-independent log-std (initialised at 0). Value: MLP[obs, 64, 64, 1] tanh.
Both take observations already normalised by the caller (the state
normaliser is shared with the model, as in
the authors' code, github.com/LinZichuan/AdMRL). Functions act on one
unbatched observation; lift them with `jax.vmap`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax.mlp import mlp_apply, mlp_init


def _check_hidden(owner: str, hidden: Tuple[int, ...]) -> None:
  if any(size < 1 for size in hidden):
    raise ValueError(f'{owner}.hidden sizes must be >= 1, got {hidden}')


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """The Gaussian policy's network (the authors' code's defaults).

  Attributes:
    hidden: hidden layer sizes of the mean's tanh MLP, each >= 1.
    init_log_std: the initial state-independent log-std (finite; 0: σ = 1).
  """
  hidden: Tuple[int, ...] = (32, 32)
  init_log_std: float = 0.0

  def __post_init__(self):
    _check_hidden('PolicyConfig', self.hidden)
    if not math.isfinite(self.init_log_std):
      raise ValueError('PolicyConfig.init_log_std must be finite, got '
                       f'{self.init_log_std}')


@dataclasses.dataclass(frozen=True)
class ValueConfig:
  """The value function's network: hidden sizes of its tanh MLP (>= 1)."""
  hidden: Tuple[int, ...] = (64, 64)

  def __post_init__(self):
    _check_hidden('ValueConfig', self.hidden)


@struct.dataclass
class PolicyParams:
  """Parameters θ of the Gaussian policy: the mean's MLP layers
  (`mlp_init`) and the state-independent log-std, (action_size,)."""
  mlp: Tuple[dict, ...]
  log_std: jax.Array  # (action_size,)


# ---------------------------------------------------------------- policy
def policy_init(key: jax.Array, obs_size: int, action_size: int,
                config: PolicyConfig = PolicyConfig()) -> PolicyParams:
  """A fresh Gaussian policy π_θ(a|s) = N(μ_θ(s), diag σ²).

  Args:
    key: PRNG key of the mean's weights.
    obs_size, action_size: the family's sizes.
    config: hidden sizes (default (32, 32), tanh) and the initial log-std
      (default 0).
  Returns:
    `PolicyParams`: LeCun-normal weights with the last layer scaled by
    0.01 (near-zero initial means), zero biases, log_std (action_size,) =
    `config.init_log_std` in the default float dtype.
  """
  sizes = (obs_size,) + tuple(config.hidden) + (action_size,)
  return PolicyParams(mlp=mlp_init(key, sizes, out_scale=0.01),
                      # dtype=float: the default float (f32, or f64 under
                      # x64), strongly typed like the trained value will be.
                      log_std=jnp.full((action_size,), config.init_log_std,
                                       dtype=float))


def policy_apply(params: PolicyParams, obs: jax.Array):
  """(mean, log_std) of π(·|obs), each (action_size,)."""
  return mlp_apply(params.mlp, obs), params.log_std


def policy_sample(params: PolicyParams, obs: jax.Array,
                  key: jax.Array) -> jax.Array:
  """a ~ π_θ(·|obs) for one (normalised) observation: (action_size,), not
  clipped (the family clips to its action bound)."""
  mean, log_std = policy_apply(params, obs)
  return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape,
                                                     mean.dtype)


def gaussian_log_prob(mean, log_std, action) -> jax.Array:
  """log N(action; mean, diag exp(2 log_std)), summed over the action's
  dimensions: a scalar for (action_size,) arguments."""
  z = (action - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi))


def log_prob(params: PolicyParams, obs, action) -> jax.Array:
  """log π(a|s), a scalar."""
  mean, log_std = policy_apply(params, obs)
  return gaussian_log_prob(mean, log_std, action)


def entropy(params: PolicyParams) -> jax.Array:
  """Entropy of π(·|s) (state-independent for this policy)."""
  return jnp.sum(params.log_std + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e))


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> jax.Array:
  """KL(p ‖ q) of diagonal Gaussians, a scalar."""
  var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
  return jnp.sum(log_std_q - log_std_p
                 + (var_p + (mean_p - mean_q)**2) / (2.0 * var_q) - 0.5)


def kl(params_p: PolicyParams, params_q: PolicyParams, obs) -> jax.Array:
  """KL(π_p(·|s) ‖ π_q(·|s)) at one observation."""
  return gaussian_kl(*policy_apply(params_p, obs), *policy_apply(params_q, obs))


# ----------------------------------------------------------------- value
def value_init(key: jax.Array, obs_size: int,
               config: ValueConfig = ValueConfig()):
  """A fresh value function V_φ: MLP layers [obs_size, *config.hidden, 1]
  (default hidden (64, 64), tanh), LeCun-normal weights, zero biases."""
  return mlp_init(key, (obs_size,) + tuple(config.hidden) + (1,))


def value_apply(params, obs: jax.Array) -> jax.Array:
  """V(s), a scalar."""
  return mlp_apply(params, obs)[0]
