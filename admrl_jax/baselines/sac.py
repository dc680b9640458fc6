"""Soft actor-critic pieces for PEARL: a tanh-squashed Gaussian policy, twin
Q networks with target networks, and the losses, as pure functions.

The SAC of Haarnoja et al. 2018 (arXiv:1812.05905, "SAC v2"): twin Q
functions Q₁, Q₂ with Polyak-averaged targets Q̄₁, Q̄₂ and the soft Bellman
target

    y = c·r + γ (1 − d) (min_i Q̄_i(s′, a′) − α log π(a′|s′)),  a′ ~ π(·|s′)

with c the reward scale (PEARL's `reward_scale`), an optional automatic
temperature (loss −log α · (log π + H̄), target entropy H̄ = −|A|, their
Section 5) and the reparameterised policy loss
E[α log π(ã|s) − min_i Q_i(s, ã)]
(their Section 4). PEARL's reference code (katerakelly/oyster,
rlkit/torch/sac/sac.py; garage's torch PEARL likewise) uses SAC v1
(Haarnoja et al. 2018, arXiv:1801.01290): a state-value network V with a
target V̄ and y = c·r + γ(1 − d)V̄(s′), α fixed at 1. Here the twin-Q
targets replace V and V̄ (one network fewer; see docs/pearl.md).

Networks are flax.linen modules on an input x: for PEARL x = [s, z], the
observation and the task latent. Functions act on batches with any
leading axes. Initialisation as rlkit's: the output layers are uniform in
±3·10⁻³ (Q) and ±10⁻³ (policy mean and log-std); the hidden layers use
flax's default LeCun-normal weights and zero biases.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any

# rlkit's TanhGaussianPolicy clamps the log-std to this range.
LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0


def symmetric_uniform(scale: float):
  """Initialiser drawing U(−scale, scale) (rlkit's `init_w` output layers)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class MLP(nn.Module):
  """ReLU MLP: Dense layers `hidden_i` then a linear `out` layer whose
  weights and biases are U(±out_scale)."""
  hidden: Sequence[int]
  out_size: int
  out_scale: float = 3e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, size in enumerate(self.hidden):
      x = nn.relu(nn.Dense(size, name=f'hidden_{i}')(x))
    init = symmetric_uniform(self.out_scale)
    return nn.Dense(self.out_size, kernel_init=init, bias_init=init,
                    name='out')(x)


class TanhGaussianPolicy(nn.Module):
  """π(a|x): a = tanh(u), u ~ N(μ(x), diag σ(x)²); __call__ returns
  (μ, log σ), each (..., action_size), log σ clipped to
  [LOG_STD_MIN, LOG_STD_MAX] (rlkit)."""
  hidden: Sequence[int]
  action_size: int
  out_scale: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    for i, size in enumerate(self.hidden):
      x = nn.relu(nn.Dense(size, name=f'hidden_{i}')(x))
    init = symmetric_uniform(self.out_scale)
    mean = nn.Dense(self.action_size, kernel_init=init, bias_init=init,
                    name='mean')(x)
    log_std = nn.Dense(self.action_size, kernel_init=init, bias_init=init,
                       name='log_std')(x)
    return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class TwinQ(nn.Module):
  """Two independent Q networks `q1`, `q2` on [x, a]; __call__(x, a)
  returns (2, ...) — Q₁ and Q₂ stacked on a leading axis."""
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, action: jax.Array) -> jax.Array:
    xa = jnp.concatenate([x, action], axis=-1)
    q1 = MLP(self.hidden, 1, name='q1')(xa)[..., 0]
    q2 = MLP(self.hidden, 1, name='q2')(xa)[..., 0]
    return jnp.stack([q1, q2])


@dataclasses.dataclass(frozen=True)
class SACNetworks:
  """The actor and the twin critic (brax-style bundle of modules)."""
  policy: TanhGaussianPolicy
  q: TwinQ


def make_networks(hidden: Sequence[int], action_size: int) -> SACNetworks:
  """Policy and twin Q with the same hidden sizes (oyster: 3 × net_size)."""
  hidden = tuple(hidden)
  return SACNetworks(policy=TanhGaussianPolicy(hidden, action_size),
                     q=TwinQ(hidden))


# ------------------------------------------------------- tanh-Gaussian
def log1m_tanh_sq(pre_tanh: jax.Array) -> jax.Array:
  """log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), exact and stable
  for large |u| (rlkit adds ε = 10⁻⁶ inside the log instead)."""
  return 2.0 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array,
                           pre_tanh: jax.Array) -> jax.Array:
  """log π(a) of a = tanh(u) with u ~ N(mean, diag exp(2 log_std)), from u:
  the change of variables log N(u) − Σ_j log(1 − tanh(u_j)²), summed over
  the last (action) axis. Shapes (..., A) → (...)."""
  z = (pre_tanh - mean) * jnp.exp(-log_std)
  gauss = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
  return jnp.sum(gauss - log1m_tanh_sq(pre_tanh), axis=-1)


def tanh_gaussian_sample(mean: jax.Array, log_std: jax.Array,
                         eps: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Reparameterised a = tanh(mean + σ ε) for a given ε ~ N(0, I) (shape of
  mean) and its log-probability: (action (..., A), log π (...))."""
  pre_tanh = mean + jnp.exp(log_std) * eps
  return jnp.tanh(pre_tanh), tanh_gaussian_log_prob(mean, log_std, pre_tanh)


# ---------------------------------------------------------------- losses
def soft_bellman_target(reward: jax.Array, done: jax.Array,
                        next_q: jax.Array, next_log_prob: jax.Array,
                        alpha, discount: float,
                        reward_scale: float) -> jax.Array:
  """y = c·r + γ (1 − d)(min_i Q̄_i(s′, a′) − α log π(a′|s′)).

  Args:
    reward, done, next_log_prob: (...); done is 1 at a termination (a
      timeout is not one: it bootstraps).
    next_q: (2, ...), the target networks at (s′, a′).
    alpha, discount (γ), reward_scale (c): scalars.
  """
  soft_value = jnp.min(next_q, axis=0) - alpha * next_log_prob
  return (reward_scale * reward
          + discount * (1.0 - done.astype(soft_value.dtype)) * soft_value)


def critic_target(networks: SACNetworks, policy_params: PyTree,
                  target_q_params: PyTree, next_x: jax.Array,
                  reward: jax.Array, done: jax.Array, eps: jax.Array,
                  alpha, discount: float, reward_scale: float) -> jax.Array:
  """The soft Bellman target y (`soft_bellman_target`) with a′ =
  tanh(μ(x′) + σ(x′) ε) drawn from the current policy at the next inputs
  x′ (..., input) and ε (..., A) given; no gradient flows through it.
  Returns (...)."""
  mean, log_std = networks.policy.apply(policy_params, next_x)
  next_action, next_log_prob = tanh_gaussian_sample(mean, log_std, eps)
  next_q = networks.q.apply(target_q_params, next_x, next_action)
  return jax.lax.stop_gradient(soft_bellman_target(
      reward, done, next_q, next_log_prob, alpha, discount, reward_scale))


def critic_loss(q_pred: jax.Array, target: jax.Array) -> jax.Array:
  """Σ_i mean((Q_i − y)²) over the batch: q_pred (2, ...), target (...)
  (oyster's qf_loss, without a ½)."""
  return jnp.sum(jnp.mean((q_pred - target[None])**2,
                          axis=tuple(range(1, q_pred.ndim))))


def actor_loss(log_prob: jax.Array, q_min: jax.Array, alpha,
               mean: jax.Array, log_std: jax.Array, mean_reg: float,
               std_reg: float) -> jax.Array:
  """mean(α log π(ã|x) − min_i Q_i(x, ã)) + mean_reg·mean(μ²) +
  std_reg·mean(log σ²) (rlkit's policy regularisers, 10⁻³ each)."""
  return (jnp.mean(alpha * log_prob - q_min) + mean_reg * jnp.mean(mean**2)
          + std_reg * jnp.mean(log_std**2))


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array,
                     target_entropy: float) -> jax.Array:
  """−mean(log α · (log π + H̄)) with log π held fixed (rlkit's SAC v2);
  its gradient in log α is −mean(log π + H̄): α grows while the policy's
  entropy −E log π is below H̄."""
  return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob
                                                       + target_entropy))


def temperature_update(log_alpha: jax.Array, opt_state: optax.OptState,
                       log_prob: jax.Array, target_entropy: float,
                       optimizer: optax.GradientTransformation):
  """One optimiser step on log α: (log_alpha, opt_state, loss)."""
  loss, grad = jax.value_and_grad(temperature_loss)(log_alpha, log_prob,
                                                    target_entropy)
  updates, opt_state = optimizer.update(grad, opt_state, log_alpha)
  return optax.apply_updates(log_alpha, updates), opt_state, loss


def polyak(target: PyTree, online: PyTree, tau: float) -> PyTree:
  """θ̄ ← (1 − τ) θ̄ + τ θ, leaf by leaf."""
  return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)
