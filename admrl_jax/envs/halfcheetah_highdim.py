"""Cheetah-Highdim: ψ ∈ [−1, 1]^18 weights the normalised next state (Sec. 5).

    r_ψ(s, a, s′) = ψᵀ (s′ − μ)/σ − 0.05‖a‖²

s = qpos (9, root x included) ⊕ qvel (9). μ, σ are per-coordinate statistics
of the states a uniformly random policy visits in the real environment:
`calibrate(key)` measures them once per run; the run stores the result (and
passes it back through `make(..., state_mean=..., state_std=...)` to resume).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax.envs import brax_family

STATE_SIZE = 18
EVAL_SEED = 2020


@dataclasses.dataclass(frozen=True, eq=False)
class CheetahHighDimFamily(brax_family.BraxTaskFamily):
  """Attributes:
    ctrl_cost: weight of ‖a‖².
    state_mean, state_std: μ, σ, shape (18,); None until `calibrate`.
    n_eval: number of evaluation tasks, uniform on the boundary of Ψ.
    calibration_envs, calibration_steps: size of the random-policy roll-out
      that measures μ, σ.
  """
  ctrl_cost: float = 0.05
  state_mean: Optional[np.ndarray] = None
  state_std: Optional[np.ndarray] = None
  n_eval: int = 20
  calibration_envs: int = 16
  calibration_steps: int = 200

  def __post_init__(self):
    super().__post_init__()
    for field in ('state_mean', 'state_std'):
      value = getattr(self, field)
      if value is not None:
        value = np.asarray(value, np.float32)
        if value.shape != (STATE_SIZE,) or not np.all(np.isfinite(value)):
          raise ValueError(f'{self.name}: {field} must be {STATE_SIZE} finite '
                           f'numbers, got {value}')
        object.__setattr__(self, field, value)
    if self.state_std is not None and np.any(self.state_std <= 0):
      raise ValueError(f'{self.name}: state_std must be positive, got '
                       f'{self.state_std}')

  @property
  def calibrated(self) -> bool:
    return self.state_mean is not None and self.state_std is not None

  def reward(self, psi, obs, action, next_obs):
    del obs
    if not self.calibrated:
      raise ValueError(
          f'{self.name}: the reward needs the random-policy state statistics; '
          'call family.calibrate(key) once per run (or pass state_mean and '
          'state_std to admrl_jax.envs.make)')
    normalised = (next_obs - self.state_mean) / self.state_std
    return jnp.dot(psi, normalised) - self.ctrl_cost * jnp.sum(
        jnp.square(action))

  def done(self, next_obs):
    return ~jnp.all(jnp.isfinite(next_obs))

  def eval_tasks(self) -> np.ndarray:
    """20 tasks uniform on the boundary of the box: a random face, then uniform on it."""
    rng = np.random.default_rng(EVAL_SEED)
    k = self.task_dim
    u = rng.uniform(-1.0, 1.0, size=(self.n_eval, k))
    face = rng.integers(0, k, size=self.n_eval)
    sign = rng.choice(np.array([-1.0, 1.0]), size=self.n_eval)
    u[np.arange(self.n_eval), face] = sign
    return np.asarray(self.from_u(u), np.float32)

  def calibrate(self, key: jax.Array) -> 'CheetahHighDimFamily':
    """Returns the family with μ, σ measured under a uniformly random policy."""
    mean, std = random_policy_state_stats(self, key)
    return dataclasses.replace(self, state_mean=mean, state_std=std,
                               brax_env=self.brax_env)


def random_policy_state_stats(family: brax_family.BraxTaskFamily,
                              key: jax.Array):
  """Mean and std (floored at 1e-6) of observations under uniform actions."""
  n, steps = family.calibration_envs, family.calibration_steps

  @jax.jit
  def rollout(key):
    key_reset, key_act = jax.random.split(key)
    state = jax.vmap(family.reset)(jax.random.split(key_reset, n))

    def body(state, key_t):
      action = jax.random.uniform(key_t, (n, family.action_size),
                                  minval=-1.0, maxval=1.0)
      state = jax.vmap(family.step)(state, action)
      return state, state.obs

    _, obs = jax.lax.scan(body, state, jax.random.split(key_act, steps))
    obs = obs.reshape(-1, obs.shape[-1])
    return jnp.mean(obs, axis=0), jnp.std(obs, axis=0)

  mean, std = rollout(key)
  return np.asarray(mean, np.float32), np.maximum(np.asarray(std, np.float32),
                                                  1e-6)


def halfcheetah_highdim(**overrides) -> CheetahHighDimFamily:
  """Cheetah-Highdim (Lin et al. 2020, arXiv:2006.08875, Section 5): r_ψ =
  ψᵀ (s′ − μ)/σ − 0.05‖a‖² on the 18-dimensional state, Ψ = [−1, 1]¹⁸;
  `overrides` replace any other field (state_mean/state_std: μ, σ of a
  calibration; None until `calibrate`)."""
  kwargs = dict(name='halfcheetah_highdim', brax_name='halfcheetah',
                task_low=-np.ones(STATE_SIZE), task_high=np.ones(STATE_SIZE))
  kwargs.update(overrides)
  return CheetahHighDimFamily(**kwargs)
