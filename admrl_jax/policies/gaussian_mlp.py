"""Gaussian MLP policy and value MLP (authors' code): flax modules and
their init/apply functions.

The policy π_θ and value function V_φ that TRPO (Schulman et al. 2015,
arXiv:1502.05477) trains inside SLBO (Luo et al. 2019, arXiv:1807.03858) and
AdMRL (Lin et al. 2020, arXiv:2006.08875, Appendix C).

Policy: mean = MLP[obs, 32, 32, action] with tanh hidden layers, a
state-independent log-std (initialised at 0). Value: MLP[obs, 64, 64, 1] tanh.
Both take observations already normalised by the caller (the state
normaliser is shared with the model, as in
the authors' code, github.com/LinZichuan/AdMRL). Functions act on one
unbatched observation; lift them with `jax.vmap`. `apply` functions take
the config the parameters were initialised with (the modules' sizes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from admrl_jax import types
from admrl_jax.mlp import MLP


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


class GaussianMLPPolicy(nn.Module):
  """π_θ(a|s) = N(μ_θ(s), diag σ²): obs (..., obs_size) ↦ (mean
  (..., action_size), log_std (action_size,)).

  mean = `MLP` [obs, *hidden, action] with tanh hidden layers and a small
  last layer (its LeCun-normal weights times `out_scale`), zero biases;
  log σ is a state-independent parameter initialised at `init_log_std`.
  Parameters: {'params': {'mean': <the MLP's>, 'log_std': (action_size,)}}.
  """
  action_size: int
  hidden: Sequence[int] = (32, 32)
  init_log_std: float = 0.0
  out_scale: float = 0.01

  @nn.compact
  def __call__(self, obs: jax.Array):
    mean = MLP(tuple(self.hidden) + (self.action_size,),
               out_scale=self.out_scale, name='mean')(obs)
    # The default float (f32, or f64 under x64), strongly typed like the
    # trained value will be.
    log_std = self.param('log_std',
                         nn.initializers.constant(self.init_log_std),
                         (self.action_size,), types.float_dtype())
    return mean, log_std


def policy_module(action_size: int,
                  config: PolicyConfig = PolicyConfig()) -> GaussianMLPPolicy:
  """The Gaussian MLP policy module of `config` for `action_size`."""
  return GaussianMLPPolicy(action_size=action_size,
                           hidden=tuple(config.hidden),
                           init_log_std=config.init_log_std)


def log_std_of(params) -> jax.Array:
  """The state-independent log σ of policy parameters, (action_size,)."""
  return params['params']['log_std']


def with_log_std(params, log_std: jax.Array):
  """`params` with log σ replaced by `log_std` (action_size,)."""
  inner = dict(params['params'], log_std=jnp.asarray(
      log_std, log_std_of(params).dtype))
  return dict(params, params=inner)


# ---------------------------------------------------------------- policy
def policy_init(key: jax.Array, obs_size: int, action_size: int,
                config: PolicyConfig = PolicyConfig()):
  """A fresh Gaussian policy π_θ(a|s) = N(μ_θ(s), diag σ²).

  Args:
    key: PRNG key of the mean's weights.
    obs_size, action_size: the family's sizes.
    config: hidden sizes (default (32, 32), tanh) and the initial log-std
      (default 0).
  Returns:
    The `GaussianMLPPolicy`'s parameters: LeCun-normal weights with the
    last layer scaled by 0.01 (near-zero initial means), zero biases,
    log_std (action_size,) = `config.init_log_std`, all in the default
    float dtype.
  """
  return policy_module(action_size, config).init(key, jnp.zeros(obs_size))


def policy_apply(params, obs: jax.Array,
                 config: PolicyConfig = PolicyConfig()):
  """(mean, log_std) of π(·|obs), each (action_size,); `config` is the one
  the parameters were made with (its hidden sizes; the action size is
  log_std's)."""
  module = policy_module(log_std_of(params).shape[-1], config)
  return module.apply(params, obs)


def policy_sample(params, obs: jax.Array, key: jax.Array,
                  config: PolicyConfig = PolicyConfig()) -> jax.Array:
  """a ~ π_θ(·|obs) for one (normalised) observation: (action_size,), not
  clipped (the family clips to its action bound)."""
  mean, log_std = policy_apply(params, obs, config)
  return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape,
                                                     mean.dtype)


def gaussian_log_prob(mean, log_std, action) -> jax.Array:
  """log N(action; mean, diag exp(2 log_std)), summed over the action's
  dimensions: a scalar for (action_size,) arguments."""
  z = (action - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi))


def log_prob(params, obs, action,
             config: PolicyConfig = PolicyConfig()) -> jax.Array:
  """log π(a|s), a scalar."""
  mean, log_std = policy_apply(params, obs, config)
  return gaussian_log_prob(mean, log_std, action)


def entropy(params) -> jax.Array:
  """Entropy of π(·|s) (state-independent for this policy)."""
  return jnp.sum(log_std_of(params) + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e))


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> jax.Array:
  """KL(p ‖ q) of diagonal Gaussians, a scalar."""
  var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
  return jnp.sum(log_std_q - log_std_p
                 + (var_p + (mean_p - mean_q)**2) / (2.0 * var_q) - 0.5)


def kl(params_p, params_q, obs,
       config: PolicyConfig = PolicyConfig()) -> jax.Array:
  """KL(π_p(·|s) ‖ π_q(·|s)) at one observation."""
  return gaussian_kl(*policy_apply(params_p, obs, config),
                     *policy_apply(params_q, obs, config))


# ----------------------------------------------------------------- value
def value_module(config: ValueConfig = ValueConfig()) -> MLP:
  """The value function's module: tanh `MLP` [obs, *config.hidden, 1]."""
  return MLP(tuple(config.hidden) + (1,))


def value_init(key: jax.Array, obs_size: int,
               config: ValueConfig = ValueConfig()):
  """A fresh value function V_φ: the parameters of `value_module(config)`
  (default hidden (64, 64), tanh), LeCun-normal weights, zero biases."""
  return value_module(config).init(key, jnp.zeros(obs_size))


def value_apply(params, obs: jax.Array,
                config: ValueConfig = ValueConfig()) -> jax.Array:
  """V(s), a scalar; `config` is the one the parameters were made with."""
  return value_module(config).apply(params, obs)[0]
