"""Velocity/height tracking: Hopper2D, Walker2D, Ant2D, Ant3D (Table 1).

    r_ψ = b − c_a‖a‖² − Σ_j c_j |f_j(s, s′) − ψ_j|

with features f ∈ {vx, vy, hz}: vx, vy the finite difference of the torso
centre of mass over one control step, hz the torso (centre-of-mass) height
at s′. Observation = qpos (root position included) ⊕ qvel ⊕ torso centre of
mass (3) ⊕ its velocity (3), so the reward and done rule are functions of
observations alone and apply unchanged to virtual (model) transitions.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax.envs import base
from admrl_jax.envs import brax_family

FEATURES = ('vx', 'vy', 'hz')


@dataclasses.dataclass(frozen=True, eq=False)
class VelocityFamily(brax_family.BraxTaskFamily):
  """Tracking of torso velocity and/or height.

  Attributes:
    features: which feature each component of ψ targets, e.g. ('vx', 'hz').
    coefs: (c_j) per component of ψ.
    alive_bonus: b.
    ctrl_cost: c_a.
    done_rule: 'hopper', 'walker' or 'ant' (the authors' code's rules).
    grid_counts: points per axis of the evaluation grid over the box.
    eval_box: (low, high) of the evaluation grid when it differs from Ψ
      (ant2d_ood); None to use Ψ.
    eval_boundary_only: keep only grid points on the boundary of eval_box.
  """
  features: Tuple[str, ...] = ()
  coefs: Tuple[float, ...] = ()
  alive_bonus: float = 0.0
  ctrl_cost: float = 0.0
  done_rule: str = 'ant'
  grid_counts: Tuple[int, ...] = ()
  eval_box: Tuple[Tuple[float, ...], Tuple[float, ...]] | None = None
  eval_boundary_only: bool = False

  def __post_init__(self):
    super().__post_init__()
    k = self.task_dim
    if len(self.features) != k or len(self.coefs) != k:
      raise ValueError(f'{self.name}: need one feature and one coefficient per '
                       f'task dimension ({k}), got {self.features}, '
                       f'{self.coefs}')
    unknown = set(self.features) - set(FEATURES)
    if unknown:
      raise ValueError(f'{self.name}: unknown features {sorted(unknown)}; '
                       f'valid: {FEATURES}')
    if self.done_rule not in ('hopper', 'walker', 'ant'):
      raise ValueError(f'{self.name}: unknown done rule {self.done_rule!r}')

  # Observation layout: [qpos (nq), qvel (nv), com (3), com_vel (3)].
  @property
  def com_index(self) -> int:
    return self.nq + self.nv

  def observe(self, pipeline_state) -> jax.Array:
    com, com_vel = brax_family.torso_com(pipeline_state, self.sys)
    return jnp.concatenate(
        [pipeline_state.q, pipeline_state.qd, com, com_vel])

  def task_features(self, obs: jax.Array, next_obs: jax.Array) -> jax.Array:
    """(vx, vy, hz) of a transition: ψ-independent, shape (3,)."""
    c = self.com_index
    vel = (next_obs[c:c + 2] - obs[c:c + 2]) / self.dt
    return jnp.concatenate([vel, next_obs[c + 2:c + 3]])

  def reward(self, psi, obs, action, next_obs):
    feats = self.task_features(obs, next_obs)
    selected = jnp.stack([feats[FEATURES.index(f)] for f in self.features])
    tracking = jnp.sum(jnp.asarray(self.coefs) * jnp.abs(selected - psi))
    return (self.alive_bonus - self.ctrl_cost * jnp.sum(jnp.square(action))
            - tracking)

  def done(self, next_obs):
    c = self.com_index
    height = next_obs[c + 2]
    finite = jnp.all(jnp.isfinite(next_obs))
    if self.done_rule == 'ant':
      healthy = (height >= 0.2) & (height <= 1.0)
    else:
      angle = next_obs[2]  # rooty of the planar walkers
      if self.done_rule == 'hopper':
        state_vector = next_obs[:self.nq + self.nv]
        healthy = (jnp.all(jnp.abs(state_vector[2:]) < 100.0)
                   & (height > 0.7) & (jnp.abs(angle) < 0.2))
      else:  # walker
        healthy = ((height > 0.8) & (height < 2.0) & (angle > -1.0)
                   & (angle < 1.0))
    return ~(finite & healthy)

  def eval_tasks(self) -> np.ndarray:
    low, high = ((self.task_low, self.task_high) if self.eval_box is None
                 else (np.asarray(self.eval_box[0], np.float32),
                       np.asarray(self.eval_box[1], np.float32)))
    tasks = base.grid(low, high, self.grid_counts)
    if self.eval_boundary_only:
      on_edge = np.any(np.isclose(tasks, low) | np.isclose(tasks, high),
                       axis=-1)
      tasks = tasks[on_edge]
    return tasks


def hopper2d(**overrides) -> VelocityFamily:
  """Hopper2D: ψ = (vx, hz) ∈ [−2, 2] × [1.2, 2.0]."""
  kwargs = dict(name='hopper2d', brax_name='hopper',
                task_low=(-2.0, 1.2), task_high=(2.0, 2.0),
                features=('vx', 'hz'), coefs=(1.0, 5.0), alive_bonus=10.0,
                ctrl_cost=0.001, done_rule='hopper', grid_counts=(6, 6))
  kwargs.update(overrides)
  return VelocityFamily(**kwargs)


def walker2d(**overrides) -> VelocityFamily:
  """Walker2D: ψ = (vx, hz) ∈ [−2, 2] × [1.0, 1.8]."""
  kwargs = dict(name='walker2d', brax_name='walker2d',
                task_low=(-2.0, 1.0), task_high=(2.0, 1.8),
                features=('vx', 'hz'), coefs=(1.0, 5.0), alive_bonus=10.0,
                ctrl_cost=0.001, done_rule='walker', grid_counts=(6, 6))
  kwargs.update(overrides)
  return VelocityFamily(**kwargs)


# The Ant families default to the authors' control step (frame skip 1,
# dt 0.01 s): at Brax's own (frame skip 5, dt 0.05 s) SLBO at a reduced
# budget does not learn on Ant2D (README, "SLBO learning curves").
ANT_FRAME_SKIP = 1


def ant2d(**overrides) -> VelocityFamily:
  """Ant2D: ψ = (vx, vy) ∈ [−3, 3]²; frame skip 1 by default."""
  kwargs = dict(name='ant2d', brax_name='ant',
                task_low=(-3.0, -3.0), task_high=(3.0, 3.0),
                features=('vx', 'vy'), coefs=(1.0, 1.0), alive_bonus=5.05,
                ctrl_cost=0.005, done_rule='ant', grid_counts=(6, 6),
                frame_skip=ANT_FRAME_SKIP)
  kwargs.update(overrides)
  return VelocityFamily(**kwargs)


def ant3d(**overrides) -> VelocityFamily:
  """Ant3D: ψ = (vx, vy, hz) ∈ [−3, 3]² × [0.4, 0.6]; frame skip 1 by
  default."""
  kwargs = dict(name='ant3d', brax_name='ant',
                task_low=(-3.0, -3.0, 0.4), task_high=(3.0, 3.0, 0.6),
                features=('vx', 'vy', 'hz'), coefs=(1.0, 1.0, 30.0),
                alive_bonus=3.05, ctrl_cost=0.005, done_rule='ant',
                grid_counts=(4, 4, 3), frame_skip=ANT_FRAME_SKIP)
  kwargs.update(overrides)
  return VelocityFamily(**kwargs)


def ant2d_ood(**overrides) -> VelocityFamily:
  """Ant2D trained on [−3, 3]², evaluated on the boundary of a 6×6 grid over [−5, 5]²."""
  kwargs = dict(name='ant2d_ood', eval_box=((-5.0, -5.0), (5.0, 5.0)),
                eval_boundary_only=True)
  kwargs.update(overrides)
  return ant2d(**kwargs)
