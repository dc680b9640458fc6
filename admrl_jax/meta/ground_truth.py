"""Ground truth for the task gradient on the analytic `lq` families.

The true dynamics are an `envs.lq.LQFamily`; the "learned model" is another
`LQFamily` with other A, B (misspecified). Policies are stationary affine
Gaussians π_θ(a|s) = N(K s + k, σ²I), θ = (K, k). Everything is exact:
η by mean/covariance propagation (`LQFamily.expected_return`), θ̂ and θ* by
Newton on the exact return (`LQFamily.optimal_stationary_policy`), the gap

    L(ψ) = η*(θ*(ψ), ψ) − η*(θ̂(ψ), ψ)     (Lin et al. 2020, arXiv:2006.08875, Eq. 1)

and ∂L/∂ψ by central finite differences of L with full re-optimisation at
ψ ± h (`true_gradient`). Used by the tests and the gradient-fidelity
benchmark (benchmarks/gradient_fidelity.py). Run the finite differences in float64
(`jax.enable_x64`): in float32 they are rounding noise.
"""
from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax.envs.lq import LQFamily
from admrl_jax.meta import estimators
from admrl_jax.policies import gaussian_mlp as gm

Theta = Tuple[jax.Array, jax.Array]  # (K (m, n), k (m,))


def eta(family: LQFamily, theta: Theta, psi: jax.Array,
        action_std: float) -> jax.Array:
  """Exact expected (undiscounted) return of the affine policy θ = (K, k)."""
  return family.expected_return(psi, theta[0], theta[1], action_std)


def argmax(family: LQFamily, psi: jax.Array, action_std: float) -> Theta:
  """argmax_θ η(θ, ψ) over stationary affine policies (θ* on the true
  family, θ̂ on the model family)."""
  return family.optimal_stationary_policy(psi, action_std)


def gap(true: LQFamily, model: LQFamily, psi: jax.Array,
        action_std: float) -> jax.Array:
  """L(ψ) by full re-optimisation under both dynamics, a scalar."""
  return (eta(true, argmax(true, psi, action_std), psi, action_std)
          - eta(true, argmax(model, psi, action_std), psi, action_std))


def true_gradient(true: LQFamily, model: LQFamily, psi: jax.Array,
                  action_std: float, h: float = 1e-5) -> jax.Array:
  """∂L/∂ψ by central differences of `gap`, (k,); jittable and vmappable
  over ψ (2k re-optimisations)."""
  eye = jnp.eye(psi.shape[0], dtype=psi.dtype)
  plus = jax.vmap(lambda e: gap(true, model, psi + h * e, action_std))(eye)
  minus = jax.vmap(lambda e: gap(true, model, psi - h * e, action_std))(eye)
  return (plus - minus) / (2.0 * h)


def log_prob_fn(action_std: float) -> estimators.LogProbFn:
  """(θ, s, a) ↦ log N(a; K s + k, σ²I)."""
  def log_prob(theta, obs, action):
    mean = theta[0] @ obs + theta[1]
    return gm.gaussian_log_prob(
        mean, jnp.full(mean.shape, jnp.log(action_std), mean.dtype), action)
  return log_prob


def reparam_fn(action_std: float):
  """(θ, s, ε) ↦ K s + k + σ ε, the reparameterised action."""
  def reparam(theta, obs, eps):
    return theta[0] @ obs + theta[1] + action_std * eps
  return reparam


def linear_dynamics(matrices, obs, action):
  """s′ = A s + B a for matrices = (A, B): a noise-free model's step."""
  return matrices[0] @ obs + matrices[1] @ action


def model_matrices(model: LQFamily, dtype=None):
  """(A, B) of a model family as arrays, the `linear_dynamics` params."""
  dtype = dtype or jnp.zeros(()).dtype
  return jnp.asarray(model.A, dtype), jnp.asarray(model.B, dtype)


def valued(family: LQFamily, psi: jax.Array, theta: Theta, tr: Any,
           action_std: float) -> estimators.ValuedBatch:
  """A batch with the exact (time-dependent) value function V_t of θ under
  `family`'s dynamics, as the frozen critic."""
  p, q, c = family.policy_value(psi, theta[0], theta[1], action_std)
  t = estimators.time_in_episode(tr)

  def value(s, t):
    return -(jnp.einsum('...i,...ij,...j->...', s, p[t], s)
             + 2.0 * jnp.einsum('...i,...i->...', q[t], s) + c[t])

  return estimators.ValuedBatch(tr, value(tr.obs, t),
                                value(tr.next_obs, t + 1))


def exact_pieces(true: LQFamily, model: LQFamily, psi: jax.Array,
                 action_std: float) -> dict:
  """θ̂ and every piece of Eq. 2 in closed form: the keyword arguments of
  `task_gradient.assemble` (A and B from the model's exact return)."""
  theta_hat = argmax(model, psi, action_std)
  theta_star = argmax(true, psi, action_std)
  return dict(
      theta_hat=theta_hat,
      policy_grad=jax.grad(lambda t: eta(true, t, psi, action_std))(
          theta_hat),
      return_grad_star=jax.grad(
          lambda p: eta(true, theta_star, p, action_std))(psi),
      return_grad_hat=jax.grad(
          lambda p: eta(true, theta_hat, p, action_std))(psi),
      hessian_objective=lambda t: eta(model, t, psi, action_std),
      mixed_objective=lambda t, p: eta(model, t, p, action_std))


# -------------------------------------------- the operating point, sampled
# The model of the k = 2 ground truth (a misspecified `lq`).
LQ_MODEL_A = ((0.85, 0.25), (-0.05, 0.8))
LQ_MODEL_B = ((0.45, 0.05), (0.1, 0.5))


def analytic_setting(k: int, horizon: int = 100, model_seed: int = 7):
  """(true, model) families of the task-gradient ground truth at Algorithm
  1's operating point: `lq` (k = 2) or `lq_highdim` (other k) at `horizon`,
  and a misspecified, noise-free linear model of it (Algorithm 1's learned
  model is deterministic). k = 2: the model (LQ_MODEL_A, LQ_MODEL_B);
  otherwise A + 0.03·G/√k and B + 0.02·G′ with seeded Gaussian G, G′
  (gaps of 1–8 per episode, a few percent of the return)."""
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  if k == 2:
    true = envs.make('lq', horizon=horizon)
    model = envs.make('lq', horizon=horizon, A=LQ_MODEL_A, B=LQ_MODEL_B,
                      noise_std=0.0)
    return true, model
  true = envs.make('lq_highdim', k=k, horizon=horizon)
  rng = np.random.default_rng(model_seed)
  a = true.A + 0.03 * rng.normal(size=true.A.shape) / np.sqrt(k)
  b = true.B + 0.02 * rng.normal(size=true.B.shape)
  model = envs.make('lq_highdim', k=k, horizon=horizon, A=a, B=b,
                    noise_std=0.0)
  return true, model


def sample_batches(true: LQFamily, model: LQFamily, psi: jax.Array,
                   theta_hat: Theta, theta_star: Theta, key: jax.Array,
                   n_episodes: int, action_std: float) -> dict:
  """The samples Algorithm 1 draws for one task-gradient estimate, with the
  exact value functions as frozen critics: real roll-outs of θ̂ and θ*,
  model roll-outs of θ̂, and start states and noise for the pathwise
  objective; `n_episodes` whole episodes each. Traceable (vmap over ψ)."""
  from admrl_jax.rl.rollout import RolloutConfig  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import rollout  # pylint: disable=g-import-not-at-top
  policy = rollout.linear_gaussian_policy(action_std)
  config = RolloutConfig(n_envs=n_episodes)
  real = rollout.make_collect_fn(true, policy, config)
  virtual = rollout.make_collect_fn(model, policy, config)
  zero = jnp.zeros((), jnp.float32)
  k_hat, k_star, k_virtual, k_start, k_noise = jax.random.split(key, 5)
  real_hat = real(theta_hat, psi, k_hat, zero).transitions
  virtual_hat = virtual(theta_hat, psi, k_virtual, zero).transitions
  dtype = real_hat.obs.dtype
  return dict(
      psi=psi, theta_hat=theta_hat,
      virtual=valued(model, psi, theta_hat, virtual_hat, action_std),
      real_hat=valued(true, psi, theta_hat, real_hat, action_std),
      real_star=real(theta_star, psi, k_star, zero).transitions,
      start=model.init_std * jax.random.normal(
          k_start, (n_episodes, model.obs_size), dtype),
      noise=jax.random.normal(
          k_noise, (model.horizon, n_episodes, model.action_size), dtype))


def estimate(config, true: LQFamily, model: LQFamily, batches: dict,
             action_std: float):
  """`task_gradient.from_samples` on `sample_batches`' output (the
  pathwise objective through the model's exact, noise-free dynamics)."""
  from admrl_jax.meta import task_gradient as tg  # pylint: disable=g-import-not-at-top
  path = estimators.make_pathwise_return(
      model, reparam_fn(action_std), linear_dynamics, config.hessian_gamma)
  matrices = model_matrices(model, batches['start'].dtype)
  return tg.from_samples(
      config, true, log_prob_fn(action_std), psi=batches['psi'],
      theta_hat=batches['theta_hat'], virtual=batches['virtual'],
      real_hat=batches['real_hat'],
      real_star_transitions=batches['real_star'],
      pathwise=lambda t, p: path(t, p, matrices, batches['start'],
                                 batches['noise']))
