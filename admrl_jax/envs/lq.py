"""`lq`: a linear-quadratic task family with a closed-form optimum.

    s′ = A s + B a + w,            w ~ N(0, noise_std² I),  s₀ ~ N(0, init_std² I)
    r_ψ(s, a, s′) = −(s′ − ψ)ᵀ Q (s′ − ψ) − aᵀ R a
    π(a|s) = N(K_t s + k_t, action_std² I)        (linear-Gaussian policies)

ψ is the target state. The return is the undiscounted sum over the horizon.
With the action noise fixed, the best policy over all policies is affine and
given by a backward Riccati recursion (certainty equivalence), and the exact
expected return of any affine policy follows from propagating the state mean
and covariance — both in closed form, the ground truth for the gradient tests.
No clipping, no termination (a non-finite state ends the episode).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from admrl_jax.envs import base

_A = ((0.9, 0.2), (-0.1, 0.8))
_B = ((0.5, 0.0), (0.1, 0.4))


@struct.dataclass
class LQState:
  """The lq environment's state: s (obs_size,) and a PRNG key."""
  s: jax.Array
  key: jax.Array  # for the process noise


@dataclasses.dataclass(frozen=True, eq=False)
class LQFamily(base.TaskFamily):
  """Attributes:
    A, B: dynamics, shapes (n, n), (n, m).
    q_weight, r_weight: Q = q·I, R = r·I.
    noise_std, init_std: process noise and initial-state spread.
    grid_counts: evaluation grid over the box.
    eval_set: fixed evaluation tasks (m, k) in place of the grid, or None.
  """
  A: np.ndarray = _A
  B: np.ndarray = _B
  q_weight: float = 1.0
  r_weight: float = 0.1
  noise_std: float = 0.05
  init_std: float = 0.1
  grid_counts: tuple = (6, 6)
  eval_set: Optional[np.ndarray] = None
  smoke_horizon: ClassVar[int] = 25

  def __post_init__(self):
    super().__post_init__()
    a = np.asarray(self.A, np.float64)
    b = np.asarray(self.B, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or b.ndim != 2 or (
        b.shape[0] != a.shape[0]):
      raise ValueError(f'{self.name}: A must be (n, n) and B (n, m), got '
                       f'{a.shape} and {b.shape}')
    if a.shape[0] != self.task_dim:
      raise ValueError(f'{self.name}: ψ is the target state, so the box must '
                       f'have {a.shape[0]} dimensions, got {self.task_dim}')
    if self.q_weight <= 0 or self.r_weight <= 0:
      raise ValueError(f'{self.name}: q_weight and r_weight must be positive')
    object.__setattr__(self, 'A', a)
    object.__setattr__(self, 'B', b)
    if self.eval_set is not None:
      tasks = np.asarray(self.eval_set, np.float64)
      if tasks.ndim != 2 or tasks.shape[1] != self.task_dim:
        raise ValueError(f'{self.name}: eval_set must be (m, {self.task_dim}),'
                         f' got {tasks.shape}')
      object.__setattr__(self, 'eval_set', tasks)
    object.__setattr__(self, 'frame_skip', 1)

  @property
  def obs_size(self) -> int:
    return int(self.A.shape[0])

  @property
  def action_size(self) -> int:
    return int(self.B.shape[1])

  @property
  def dt(self) -> float:
    return 1.0

  def _matrices(self, dtype):
    n, m = self.obs_size, self.action_size
    return (jnp.asarray(self.A, dtype), jnp.asarray(self.B, dtype),
            self.q_weight * jnp.eye(n, dtype=dtype),
            self.r_weight * jnp.eye(m, dtype=dtype))

  # ------------------------------------------------------------ dynamics
  def reset(self, key):
    key_s, key_noise = jax.random.split(key)
    s = self.init_std * jax.random.normal(key_s, (self.obs_size,))
    return base.EnvState(pipeline_state=LQState(s=s, key=key_noise), obs=s)

  def step(self, state, action):
    key, key_w = jax.random.split(state.pipeline_state.key)
    a_mat, b_mat, _, _ = self._matrices(action.dtype)
    s = state.pipeline_state.s
    s_next = a_mat @ s + b_mat @ action + self.noise_std * jax.random.normal(
        key_w, s.shape, s.dtype)
    return base.EnvState(pipeline_state=LQState(s=s_next, key=key),
                         obs=s_next)

  def reward(self, psi, obs, action, next_obs):
    del obs
    err = next_obs - psi
    return -self.q_weight * jnp.dot(err, err) - self.r_weight * jnp.dot(
        action, action)

  def done(self, next_obs):
    return ~jnp.all(jnp.isfinite(next_obs))

  def eval_tasks(self) -> np.ndarray:
    if self.eval_set is not None:
      return np.asarray(self.eval_set, np.float32)
    return base.grid(self.task_low, self.task_high, self.grid_counts)

  # ------------------------------------------------------- closed forms
  def optimal_policy(self, psi, action_std: float = 0.0,
                     horizon: Optional[int] = None):
    """Backward Riccati recursion for the optimal affine policy.

    Cost-to-go J_t(s) = sᵀP_t s + 2q_tᵀs + c_t (the negative value), J_H = 0.

    Returns:
      (K, k, value_terms): K (H, m, n), k (H, m) the mean action K_t s + k_t;
      value_terms = (P_0, q_0, c_0) of the cost-to-go at t = 0.
    """
    horizon = self.horizon if horizon is None else horizon
    psi = jnp.asarray(psi)
    dtype = psi.dtype
    a_mat, b_mat, q_mat, r_mat = self._matrices(dtype)
    n = self.obs_size
    noise_cov = (action_std**2) * b_mat @ b_mat.T + (
        self.noise_std**2) * jnp.eye(n, dtype=dtype)
    act_var_cost = (action_std**2) * jnp.trace(r_mat)

    def backward(carry, _):
      p_next, q_next, c_next = carry
      m_mat = q_mat + p_next
      m_vec = q_next - q_mat @ psi
      g = r_mat + b_mat.T @ m_mat @ b_mat
      gain = -jnp.linalg.solve(g, b_mat.T @ m_mat @ a_mat)   # K_t
      offset = -jnp.linalg.solve(g, b_mat.T @ m_vec)          # k_t
      p = a_mat.T @ m_mat @ a_mat + a_mat.T @ m_mat @ b_mat @ gain
      q = a_mat.T @ m_vec + a_mat.T @ m_mat @ b_mat @ offset
      c = (c_next + psi @ q_mat @ psi + jnp.trace(m_mat @ noise_cov)
           + act_var_cost + m_vec @ b_mat @ offset)
      return (p, q, c), (gain, offset)

    init = (jnp.zeros((n, n), dtype), jnp.zeros((n,), dtype),
            jnp.zeros((), dtype))
    (p0, q0, c0), (gains, offsets) = jax.lax.scan(
        backward, init, None, length=horizon)
    return gains[::-1], offsets[::-1], (p0, q0, c0)

  def optimal_return(self, psi, action_std: float = 0.0,
                     horizon: Optional[int] = None) -> jax.Array:
    """Best expected return on task ψ over all policies with that action noise."""
    _, _, (p0, _, c0) = self.optimal_policy(psi, action_std, horizon)
    # E[s₀ᵀP s₀ + 2qᵀs₀ + c] with s₀ ~ N(0, init_std² I).
    return -(self.init_std**2 * jnp.trace(p0) + c0)

  def optimal_stationary_policy(self, psi, action_std: float = 0.0,
                                horizon: Optional[int] = None,
                                newton_steps: int = 30):
    """argmax over stationary affine policies N(K s + k, σ²I) of the exact
    expected return, by Newton's method from the Riccati gains of t = 0.

    The stationary class is what a state-only policy can represent (the
    time-varying Riccati policy needs t), so this is θ* (true dynamics) or
    θ̂ (a model family) for the task-gradient ground truth. Pure and
    differentiable; converges to machine precision in a few steps near the
    Riccati start (check the gradient if you change the family).

    Returns:
      (K, k) of shapes (m, n), (m,).
    """
    gains, offsets, _ = self.optimal_policy(psi, action_std, horizon)
    m, n = self.action_size, self.obs_size

    def objective(x):
      return self.expected_return(psi, x[:m * n].reshape(m, n), x[m * n:],
                                  action_std, horizon)

    def newton(x, _):
      step = jnp.linalg.solve(jax.hessian(objective)(x),
                              jax.grad(objective)(x))
      return x - step, None

    x0 = jnp.concatenate([gains[0].reshape(-1), offsets[0]])
    x, _ = jax.lax.scan(newton, x0, None, length=newton_steps)
    return x[:m * n].reshape(m, n), x[m * n:]

  def policy_value(self, psi, gain, offset, action_std: float = 0.0,
                   horizon: Optional[int] = None):
    """Exact value function of the stationary affine policy N(K s + k, σ²I).

    V_t(s) = −(sᵀP_t s + 2q_tᵀs + c_t), the expected return of the remaining
    H − t steps from s at time t, by the backward recursion of policy
    evaluation (the Riccati recursion with the gains held fixed).

    Returns:
      (P, q, c) of shapes (H + 1, n, n), (H + 1, n), (H + 1,); index H is
      the zero terminal value.
    """
    horizon = self.horizon if horizon is None else horizon
    psi = jnp.asarray(psi)
    dtype = psi.dtype
    a_mat, b_mat, q_mat, r_mat = self._matrices(dtype)
    n = self.obs_size
    gain, offset = jnp.asarray(gain, dtype), jnp.asarray(offset, dtype)
    closed = a_mat + b_mat @ gain        # s′ = M s + m + ξ
    drift = b_mat @ offset
    noise_cov = (action_std**2) * b_mat @ b_mat.T + (
        self.noise_std**2) * jnp.eye(n, dtype=dtype)

    def backward(carry, _):
      p_next, q_next, c_next = carry
      w_mat = q_mat + p_next
      w_vec = q_next - q_mat @ psi
      p = closed.T @ w_mat @ closed + gain.T @ r_mat @ gain
      q = closed.T @ (w_mat @ drift + w_vec) + gain.T @ r_mat @ offset
      c = (drift @ w_mat @ drift + jnp.trace(w_mat @ noise_cov)
           + 2.0 * w_vec @ drift + c_next + psi @ q_mat @ psi
           + offset @ r_mat @ offset + action_std**2 * jnp.trace(r_mat))
      return (p, q, c), (p, q, c)

    zero = (jnp.zeros((n, n), dtype), jnp.zeros((n,), dtype),
            jnp.zeros((), dtype))
    _, (p, q, c) = jax.lax.scan(backward, zero, None, length=horizon)
    return tuple(jnp.concatenate([x[::-1], z[None]])
                 for x, z in zip((p, q, c), zero))

  def expected_return(self, psi, gains, offsets, action_std: float = 0.0,
                      horizon: Optional[int] = None) -> jax.Array:
    """Exact expected return of the affine policy a ~ N(K_t s + k_t, σ²I).

    gains: (m, n) for a stationary policy or (H, m, n); offsets: (m,) or (H, m).
    """
    horizon = self.horizon if horizon is None else horizon
    psi = jnp.asarray(psi)
    dtype = psi.dtype
    a_mat, b_mat, q_mat, r_mat = self._matrices(dtype)
    n = self.obs_size
    gains = jnp.broadcast_to(gains, (horizon,) + self.B.T.shape).astype(dtype)
    offsets = jnp.broadcast_to(offsets, (horizon, self.action_size)).astype(
        dtype)
    noise_cov = (action_std**2) * b_mat @ b_mat.T + (
        self.noise_std**2) * jnp.eye(n, dtype=dtype)

    def forward(carry, policy_t):
      mean, cov = carry
      gain, offset = policy_t
      act_mean = gain @ mean + offset
      closed = a_mat + b_mat @ gain
      mean_next = closed @ mean + b_mat @ offset
      cov_next = closed @ cov @ closed.T + noise_cov
      err = mean_next - psi
      reward = -(err @ q_mat @ err + jnp.trace(q_mat @ cov_next)
                 + act_mean @ r_mat @ act_mean
                 + jnp.trace(r_mat @ gain @ cov @ gain.T)
                 + action_std**2 * jnp.trace(r_mat))
      return (mean_next, cov_next), reward

    init = (jnp.zeros((n,), dtype), self.init_std**2 * jnp.eye(n, dtype=dtype))
    _, rewards = jax.lax.scan(forward, init, (gains, offsets))
    return jnp.sum(rewards)


def lq(**overrides) -> LQFamily:
  """The linear-quadratic family: ψ ∈ [−1, 1]², unbounded actions;
  `overrides` replace any other field (ValueError from the field checks)."""
  kwargs = dict(name='lq', task_low=(-1.0, -1.0), task_high=(1.0, 1.0),
                action_bound=None)
  kwargs.update(overrides)
  return LQFamily(**kwargs)


def highdim_matrices(k: int, seed: int):
  """(A, B) of `lq_highdim`: A = 0.9·Q with Q a random orthogonal matrix
  (QR of a seeded Gaussian matrix, signs fixed), so every eigenvalue of A
  has modulus 0.9; B = 0.5·I."""
  rng = np.random.default_rng(seed)
  q, r = np.linalg.qr(rng.normal(size=(k, k)))
  q = q * np.sign(np.diag(r))
  return 0.9 * q, 0.5 * np.eye(k)


def highdim_eval_set(k: int, seed: int, n_vertices: int = 16,
                     n_interior: int = 8) -> np.ndarray:
  """Evaluation tasks of `lq_highdim`: `n_vertices` distinct random
  vertices of [−1, 1]^k, then `n_interior` points uniform in [−0.5, 0.5]^k,
  from a seeded generator (the seed is recorded in the family)."""
  rng = np.random.default_rng(seed + 1)
  vertices, seen = [], set()
  while len(vertices) < min(n_vertices, 2**k):
    v = tuple(rng.choice([-1.0, 1.0], size=k))
    if v not in seen:
      seen.add(v)
      vertices.append(v)
  interior = rng.uniform(-0.5, 0.5, size=(n_interior, k))
  return np.concatenate([np.asarray(vertices), interior])


def lq_highdim(k: int = 8, seed: int = 0, **overrides) -> LQFamily:
  """`lq` with a k-dimensional target ψ ∈ [−1, 1]^k (default k = 8): the
  high-dimensional analytic family (in the spirit of the paper's
  Cheetah-Highdim, Lin et al. 2020, arXiv:2006.08875, Fig. 4b, but with a
  closed-form optimum). A = 0.9·(random orthogonal), B = 0.5·I, Q = I,
  R = 0.1·I (`highdim_matrices`), evaluated on 16 random vertices of the
  box and 8 interior points (`highdim_eval_set`); `seed` fixes A and the
  evaluation set. Raises ValueError for k < 1."""
  if int(k) != k or k < 1:
    raise ValueError(f'lq_highdim: k must be an integer >= 1, got {k}')
  k = int(k)
  a, b = highdim_matrices(k, seed)
  kwargs = dict(name='lq_highdim', task_low=(-1.0,) * k,
                task_high=(1.0,) * k, action_bound=None, A=a, B=b,
                eval_set=highdim_eval_set(k, seed))
  kwargs.update(overrides)
  return LQFamily(**kwargs)
