"""Task families on Brax physics: reset, stepping and torso centre of mass.

The Brax environment supplies the MJCF system and the physics pipeline
(generalized, positional, spring or mjx); reset, observation, reward and done
rule are the family's own (as in the authors' code,
github.com/LinZichuan/AdMRL), not Brax's gym-style ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from typing import Any, ClassVar, Optional, Tuple

import jax
import jax.numpy as jnp

from admrl_jax.envs import base

PIPELINES = ('generalized', 'positional', 'spring', 'mjx')
# The one pipeline whose observation (qpos ⊕ qvel) is a Markov state of the
# simulator (`markov_error`, benchmarks/markov_state.py): a learned dynamics
# model sees the observation only. See README ("Physics pipeline").
DEFAULT_PIPELINE = 'generalized'


@functools.lru_cache(maxsize=None)
def _brax_env(brax_name: str, pipeline: str, frame_skip: Optional[int]):
  """Builds (once per process) the Brax environment that carries the system."""
  if pipeline not in PIPELINES:
    raise ValueError(f'unknown physics pipeline {pipeline!r}; valid: '
                     f'{", ".join(PIPELINES)}')
  import warnings  # pylint: disable=g-import-not-at-top
  from brax import envs as brax_envs  # pylint: disable=g-import-not-at-top
  kwargs = {'backend': pipeline}
  if frame_skip is not None:
    kwargs['n_frames'] = int(frame_skip)
  # Brax warns on every load that its own pipelines are unmaintained.
  with warnings.catch_warnings(), _without_settotalmass():
    warnings.simplefilter('ignore', UserWarning)
    return brax_envs.get_environment(brax_name, **kwargs)


_TOTAL_MASS = re.compile(r'\s+settotalmass="([^"]+)"')


@contextlib.contextmanager
def _without_settotalmass():
  """Brax's models load without MuJoCo's deprecated compiler attribute
  `settotalmass` (half_cheetah.xml has settotalmass="14"; MuJoCo prints a
  deprecation warning on every compile): the attribute is removed and
  `mj_setTotalmass` applied to the compiled model, the replacement MuJoCo's
  warning names (with `mj_setConst`, which recomputes the constants that
  depend on the masses). Both scale every body's mass and inertia by the
  same factor: the System equals brax's own load (tests/test_envs.py)."""
  import brax  # pylint: disable=g-import-not-at-top
  import mujoco  # pylint: disable=g-import-not-at-top
  from brax.io import mjcf  # pylint: disable=g-import-not-at-top
  original = mjcf.load_mjmodel
  assets = os.path.join(os.path.dirname(brax.__file__), 'envs', 'assets')

  def load_mjmodel(path):
    text = open(path).read()  # pylint: disable=unspecified-encoding
    match = _TOTAL_MASS.search(text)
    if match is None or os.path.realpath(os.path.dirname(str(path))) != os.path.realpath(assets):
      return original(path)
    model = mujoco.MjModel.from_xml_string(_TOTAL_MASS.sub('', text))
    factor = float(match.group(1)) / float(model.body_mass.sum())
    mujoco.mj_setTotalmass(model, float(match.group(1)))
    mujoco.mj_setConst(model, mujoco.MjData(model))  # masses' constants
    # The compiler's statistics of the masses (the solver's scale): mean
    # body mass, and the mean diagonal of the inertia matrix at qpos0.
    model.stat.meanmass *= factor
    model.stat.meaninertia = float(model.dof_M0.mean())
    return model

  mjcf.load_mjmodel = load_mjmodel
  try:
    yield
  finally:
    mjcf.load_mjmodel = original


def torso_com(pipeline_state, sys) -> tuple[jax.Array, jax.Array]:
  """World position and velocity of the torso's (link 0) centre of mass."""
  from brax import math  # pylint: disable=g-import-not-at-top
  offset = math.rotate(sys.link.inertia.transform.pos[0],
                       pipeline_state.x.rot[0])
  pos = pipeline_state.x.pos[0] + offset
  vel = pipeline_state.xd.vel[0] + jnp.cross(pipeline_state.xd.ang[0], offset)
  return pos, vel


@dataclasses.dataclass(frozen=True, eq=False)
class BraxTaskFamily(base.TaskFamily):
  """A task family whose real environment is a Brax system.

  Attributes:
    brax_name: the Brax environment carrying the MJCF system.
    pipeline: physics pipeline.
    reset_noise: qpos = init + U(−r, r), qvel = r·N(0, 1) (authors' code: 0.1).
  """
  brax_name: str = ''
  pipeline: str = DEFAULT_PIPELINE
  reset_noise: float = 0.1
  brax_env: Any = None
  simulator_fields: ClassVar[Tuple[str, ...]] = ('frame_skip', 'pipeline')

  def __post_init__(self):
    super().__post_init__()
    if self.brax_env is None:
      object.__setattr__(self, 'brax_env',
                         _brax_env(self.brax_name, self.pipeline,
                                   self.frame_skip))
    # Brax's public dt is the physics timestep × the frames per step.
    object.__setattr__(self, 'frame_skip', int(round(
        float(self.brax_env.dt) / float(self.brax_env.sys.opt.timestep))))
    # A Python float, fixed at construction (the system's arrays get traced).
    object.__setattr__(self, '_dt', float(self.brax_env.dt))

  @property
  def sys(self):
    return self.brax_env.sys

  @property
  def nq(self) -> int:
    return int(self.sys.q_size())

  @property
  def nv(self) -> int:
    return int(self.sys.qd_size())

  @property
  def action_size(self) -> int:
    return int(self.brax_env.action_size)

  @property
  def dt(self) -> float:
    return self._dt

  @functools.cached_property
  def obs_size(self) -> int:
    # Traced once per family (a reset's shape), then cached.
    return int(jax.eval_shape(self.reset, jax.random.key(0)).obs.shape[0])

  def observe(self, pipeline_state) -> jax.Array:
    """Observation of a pipeline state; families extend qpos ⊕ qvel."""
    return jnp.concatenate([pipeline_state.q, pipeline_state.qd])

  def reset(self, key: jax.Array) -> base.EnvState:
    key_q, key_qd = jax.random.split(key)
    r = self.reset_noise
    q = self.sys.init_q + jax.random.uniform(key_q, (self.nq,), minval=-r,
                                             maxval=r)
    qd = r * jax.random.normal(key_qd, (self.nv,))
    pipeline_state = self.brax_env.pipeline_init(q, qd)
    return base.EnvState(pipeline_state=pipeline_state,
                         obs=self.observe(pipeline_state))

  def step(self, state: base.EnvState, action: jax.Array) -> base.EnvState:
    pipeline_state = self.brax_env.pipeline_step(state.pipeline_state, action)
    return base.EnvState(pipeline_state=pipeline_state,
                         obs=self.observe(pipeline_state))


def markov_error(family: BraxTaskFamily, key: jax.Array, n_envs: int = 8,
                 n_steps: int = 100) -> jax.Array:
  """How far the observation is from a Markov state of the simulator.

  Runs `n_envs` environments for `n_steps` uniform random actions. At every
  step it also rebuilds the simulator from the observation's (qpos, qvel)
  alone (`pipeline_init`) and steps that copy with the same action. Returns,
  per observation dimension, the RMS difference of the two next
  observations divided by the standard deviation of the state change
  s′ − s: 0 when (qpos, qvel) determines the next observation (the
  `generalized` pipeline); otherwise the size of the unpredictable part, a
  rough floor under the normalised error of any model that sees
  observations only (the maximal-coordinate `spring` and `positional`
  pipelines keep state that qpos, qvel omit). Every Brax family's
  observation starts with qpos ⊕ qvel.
  """
  nq, nv = family.nq, family.nv

  def run(key):
    key_reset, key_steps = jax.random.split(key)

    def body(state, key):
      action = jax.random.uniform(key, (family.action_size,), minval=-1.0,
                                  maxval=1.0)
      nxt = family.step(state, action)
      rebuilt = family.brax_env.pipeline_init(state.obs[:nq],
                                              state.obs[nq:nq + nv])
      copy = family.step(base.EnvState(pipeline_state=rebuilt,
                                       obs=state.obs), action)
      return nxt, (nxt.obs - state.obs, copy.obs - nxt.obs)

    return jax.lax.scan(body, family.reset(key_reset),
                        jax.random.split(key_steps, n_steps))[1]

  delta, gap = jax.jit(jax.vmap(run))(jax.random.split(key, n_envs))
  delta = delta.reshape(-1, delta.shape[-1])
  gap = gap.reshape(-1, gap.shape[-1])
  rms = jnp.sqrt(jnp.mean(jnp.square(gap), axis=0))
  return rms / jnp.maximum(jnp.std(delta, axis=0), 1e-6)


def all_finite(x: jax.Array) -> jax.Array:
  """Whether every entry of x is finite, a scalar bool."""
  return jnp.all(jnp.isfinite(x))
