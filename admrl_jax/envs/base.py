"""Task families: a real environment plus a reward r_ψ parameterised by ψ ∈ Ψ.

A task family (Lin et al. 2020, Sections 4.1 and 5, Appendix C) is one value
holding the environment, the task box Ψ = [task_low, task_high] ⊂ R^k, the
conversion ψ ↔ u ∈ [−1, 1]^k in which the adversary steps (as in the authors'
code, github.com/LinZichuan/AdMRL), task samplers, the evaluation set, the done
rule and the reward. Families know nothing of models, policies or training.

The reward is a pure function of observations, `reward(psi, obs, action,
next_obs)`: the same function scores real transitions, virtual (model)
transitions, and re-scores stored transitions for any other ψ without
re-simulating — which is what the task gradient (Eq. 3) needs.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class EnvState:
  """State of one real environment.

  Attributes:
    pipeline_state: the simulator's state (a Brax pipeline state, or the raw
      state vector for analytic families).
    obs: observation, shape (obs_size,).
  """
  pipeline_state: Any
  obs: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class TaskFamily(abc.ABC):
  """A family of tasks sharing dynamics and differing in the reward r_ψ.

  Frozen and compared by identity, so a family can be closed over by (or
  passed statically to) jitted functions; ψ is always a traced argument, so
  changing the task never recompiles.

  Attributes:
    name: registry name.
    task_low, task_high: the box Ψ, shape (k,).
    horizon: episode length in control steps (timeout).
    frame_skip: simulator steps per control step; None for the
      environment's own (gym-standard) control step.
    action_bound: actions are clipped to [−bound, bound] before the
      simulator sees them; None for no clipping.
    smoke_horizon: (class attribute) the episode length of the `smoke`
      preset, a run of every code path in about a minute on a CPU.
    simulator_fields: (class attribute) the settings of a physics
      simulator the family takes (the Brax families: frame_skip, pipeline;
      none for the analytic `lq` families).
  """
  name: str
  task_low: np.ndarray
  task_high: np.ndarray
  horizon: int = 200
  frame_skip: Optional[int] = None
  action_bound: Optional[float] = 1.0
  smoke_horizon: ClassVar[int] = 50
  simulator_fields: ClassVar[Tuple[str, ...]] = ()

  def __post_init__(self):
    low = np.asarray(self.task_low, np.float32)
    high = np.asarray(self.task_high, np.float32)
    if low.ndim != 1 or low.shape != high.shape:
      raise ValueError(f'{self.name}: task_low and task_high must be vectors '
                       f'of one shape, got {low.shape} and {high.shape}')
    if not np.all(high > low):
      raise ValueError(f'{self.name}: task box needs task_high > task_low, got '
                       f'{low} and {high}')
    if self.horizon < 1:
      raise ValueError(f'{self.name}: horizon must be >= 1, got {self.horizon}')
    if self.frame_skip is not None and self.frame_skip < 1:
      raise ValueError(f'{self.name}: frame_skip must be >= 1, got '
                       f'{self.frame_skip}')
    object.__setattr__(self, 'task_low', low)
    object.__setattr__(self, 'task_high', high)

  # ---------------------------------------------------------------- sizes
  @property
  def task_dim(self) -> int:
    """k, the dimension of ψ."""
    return int(self.task_low.shape[0])

  @property
  @abc.abstractmethod
  def obs_size(self) -> int:
    """Size of the observation vector."""

  @property
  @abc.abstractmethod
  def action_size(self) -> int:
    """Size of the action vector."""

  @property
  @abc.abstractmethod
  def dt(self) -> float:
    """Seconds per control step (simulator timestep × frame_skip)."""

  # ---------------------------------------------------------- dynamics
  @abc.abstractmethod
  def reset(self, key: jax.Array) -> EnvState:
    """Initial state of one environment."""

  @abc.abstractmethod
  def step(self, state: EnvState, action: jax.Array) -> EnvState:
    """One control step with an action already clipped to the bound."""

  def clip_action(self, action: jax.Array) -> jax.Array:
    """The action (action_size,) clipped to [−action_bound, action_bound]
    in every coordinate; unchanged when action_bound is None."""
    if self.action_bound is None:
      return action
    return jnp.clip(action, -self.action_bound, self.action_bound)

  # ------------------------------------------------------------ reward
  @abc.abstractmethod
  def reward(self, psi: jax.Array, obs: jax.Array, action: jax.Array,
             next_obs: jax.Array) -> jax.Array:
    """r_ψ(s, a, s′) for one transition; a scalar, differentiable in ψ."""

  @abc.abstractmethod
  def done(self, next_obs: jax.Array) -> jax.Array:
    """The termination rule on the observation reached; a boolean scalar."""

  # ------------------------------------------------------- task space
  def to_u(self, psi: jax.Array) -> jax.Array:
    """ψ → u ∈ [−1, 1]^k, the authors' code's ψ = lo + (u + 1)/2·(hi − lo)."""
    return 2.0 * (psi - self.task_low) / (self.task_high - self.task_low) - 1.0

  def from_u(self, u: jax.Array) -> jax.Array:
    """u → ψ."""
    return self.task_low + (u + 1.0) * 0.5 * (self.task_high - self.task_low)

  def project(self, psi: jax.Array) -> jax.Array:
    """Π_Ψ: clip in u, i.e. to the box."""
    return self.from_u(jnp.clip(self.to_u(psi), -1.0, 1.0))

  def sample_uniform(self, key: jax.Array, shape=()) -> jax.Array:
    """ψ uniform in Ψ (MB-Unif), shape `shape + (k,)`."""
    u = jax.random.uniform(key, tuple(shape) + (self.task_dim,),
                           minval=-1.0, maxval=1.0)
    return self.from_u(u)

  def sample_gaussian(self, key: jax.Array, shape=()) -> jax.Array:
    """MB-Gauss (Lin et al. 2020, arXiv:2006.08875, Section 5), as the
    authors' code draws it (rllab/envs/mujoco/task_param.py,
    `random_sample('normal')`): u ~ N(0, I) in the normalised coordinates,
    clipped to [−1, 1], mapped to Ψ — whatever the box's widths (a draw in
    ψ's own units would put most of a narrow side on its boundary and
    keep a wide side near the centre). About 32% of each coordinate lands
    on the boundary (P(|u| > 1) for a standard normal). Shape
    `shape + (k,)`."""
    u = jax.random.normal(key, tuple(shape) + (self.task_dim,))
    return self.from_u(jnp.clip(u, -1.0, 1.0))

  def sample_vertex(self, key: jax.Array, shape=()) -> jax.Array:
    """ψ uniform over the 2^k vertices of Ψ (MB-Vertices: the control for
    "train on the boundary"), shape `shape + (k,)`."""
    u = jax.random.rademacher(key, tuple(shape) + (self.task_dim,),
                              dtype=jnp.float32)
    return self.from_u(u)

  @abc.abstractmethod
  def eval_tasks(self) -> np.ndarray:
    """The evaluation set, shape (n_eval, k)."""

  def check_psi(self, psi) -> np.ndarray:
    """Validates a concrete ψ (shape, finiteness); returns it as float32."""
    psi = np.asarray(psi, np.float32)
    if psi.shape != (self.task_dim,):
      raise ValueError(f'{self.name}: psi must have shape ({self.task_dim},), '
                       f'got {psi.shape}')
    if not np.all(np.isfinite(psi)):
      raise ValueError(f'{self.name}: psi must be finite, got {psi}')
    return psi

  def calibrate(self, key: jax.Array) -> 'TaskFamily':
    """Per-run statistics a family needs before its reward is defined.

    Most families need none and return themselves; halfcheetah_highdim
    measures μ, σ of the states a uniformly random policy visits.
    """
    del key
    return self


def grid(low: np.ndarray, high: np.ndarray, counts) -> np.ndarray:
  """Regular grid over a box including its corners, shape (Π counts, k)."""
  axes = [np.linspace(lo, hi, n, dtype=np.float32)
          for lo, hi, n in zip(low, high, counts)]
  mesh = np.meshgrid(*axes, indexing='ij')
  return np.stack([m.reshape(-1) for m in mesh], axis=-1)
