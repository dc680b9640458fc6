"""SLBO on a learned model: VirtualTraining (Algorithm 2) and one SLBO stage.

    virtual_training(state, ψ, key), n times (one `lax.scan`):
        fit the model on minibatches of D for nmodel steps
        npolicy times: collect ntrpo virtual samples with π_θ and r_ψ,
                       GAE with the value function, TRPO step, value fit
    slbo_stage(state, ψ, key):
        D ← D ∪ {real samples of π_θ + OU noise}; update the normalisers;
        virtual_training(ninner)

The state normaliser of the model is shared with the policy and the value
function (as in the authors' code). Everything is a pure function of a named
state; ψ and all parameters are traced, so a new task never recompiles, and each
phase (zero-shot with nzeroshot, SLBO with ninner) is one compiled program.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types
from admrl_jax.config import RolloutConfig
from admrl_jax.envs.base import TaskFamily
from admrl_jax.models import dynamics
from admrl_jax.models import normalizer
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import dataset as dataset_lib
from admrl_jax.rl import returns
from admrl_jax.rl import rollout
from admrl_jax.rl import trpo
from admrl_jax.rl import virtual


@dataclasses.dataclass(frozen=True)
class SLBOConfig:
  """Hyperparameters of SLBO inside AdMRL (Appendix C, authors' code).

  Attributes:
    n_inner: VirtualTraining iterations per SLBO stage (ninner).
    n_zeroshot: VirtualTraining iterations of the zero-shot phase.
    n_policy: TRPO steps per VirtualTraining iteration (npolicy).
    n_rollouts, rollout_steps: virtual roll-outs per TRPO step and their
      length (None: the horizon); ntrpo = n_rollouts × rollout_steps.
    virtual_start: where virtual roll-outs start: 'reset' (real reset
      states, SLBO) or 'data' (states drawn from the real dataset, as
      in MBPO's branched roll-outs — what makes short, wide layouts such as
      1000 × 10 meaningful; see benchmarks/virtual_training.py).
    gamma, lam: GAE.
    dataset_capacity: real transitions kept (all tasks).
    model, trpo, policy, value, real: the parts' configs; `model.n_steps`
      is nmodel, `real` sizes the real collection of a stage (ncollect =
      n_envs × n_steps).
  """
  n_inner: int = 20
  n_zeroshot: int = 40
  n_policy: int = 20
  n_rollouts: int = 50
  rollout_steps: Optional[int] = None
  virtual_start: str = 'reset'
  gamma: float = 0.99
  lam: float = 0.95
  dataset_capacity: int = 1_000_000
  model: dynamics.ModelConfig = dynamics.ModelConfig()
  trpo: trpo.TRPOConfig = trpo.TRPOConfig()
  policy: gm.PolicyConfig = gm.PolicyConfig()
  value: gm.ValueConfig = gm.ValueConfig()
  real: RolloutConfig = RolloutConfig(n_envs=50)

  def __post_init__(self):
    for name in ('n_inner', 'n_zeroshot', 'n_policy', 'n_rollouts',
                 'dataset_capacity'):
      if getattr(self, name) < 1:
        raise ValueError(f'SLBOConfig.{name} must be >= 1, got '
                         f'{getattr(self, name)}')
    if self.rollout_steps is not None and (
        not isinstance(self.rollout_steps, int) or self.rollout_steps < 1):
      raise ValueError('SLBOConfig.rollout_steps must be None or an int >= '
                       f'1, got {self.rollout_steps!r}')
    if self.virtual_start not in ('reset', 'data'):
      raise ValueError("SLBOConfig.virtual_start must be 'reset' or 'data', "
                       f'got {self.virtual_start!r}')
    if not (0.0 < self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
      raise ValueError(f'need 0 < gamma <= 1 and 0 <= lam <= 1, got '
                       f'{self.gamma}, {self.lam}')


@struct.dataclass
class AgentState:
  """Policy and value function of the current task (re-initialised per task)."""
  policy: gm.PolicyParams
  value: Any
  value_opt: Any


@struct.dataclass
class SLBOState:
  """Model (persists across tasks), agent (per task) and real dataset."""
  model: dynamics.ModelState
  agent: AgentState
  data: dataset_lib.Dataset


@struct.dataclass
class VirtualMetrics:
  """Per VirtualTraining iteration, (n,) arrays: mean model loss of the last
  10 fit steps and the number of fit steps skipped for a non-finite loss or
  gradient, and of the iteration's TRPO steps the last virtual return
  (mean return per episode of the virtual batch, partial episodes
  included: `returns.mean_episode_return`), KL and value loss and the
  fraction of accepted steps."""
  model_loss: jax.Array
  model_rejected: jax.Array
  virtual_return: jax.Array
  trpo_accepted: jax.Array
  trpo_kl: jax.Array
  value_loss: jax.Array


def agent_init(key, family: TaskFamily, config: SLBOConfig) -> AgentState:
  key_policy, key_value = jax.random.split(key)
  value = gm.value_init(key_value, family.obs_size, config.value)
  return AgentState(
      policy=gm.policy_init(key_policy, family.obs_size, family.action_size,
                            config.policy),
      value=value, value_opt=trpo.value_optimizer(config.trpo).init(value))


def init(key, family: TaskFamily, config: SLBOConfig) -> SLBOState:
  key_model, key_agent = jax.random.split(key)
  model = dynamics.fit_init(key_model, family.obs_size, family.action_size,
                            config.model)
  obs, act = jnp.zeros(family.obs_size), jnp.zeros(family.action_size)
  flag = jnp.zeros((), bool)
  example = types.Transition(obs=obs, action=act, raw_action=act,
                             reward=jnp.zeros(()), next_obs=obs, done=flag,
                             timeout=flag)
  return SLBOState(model=model, agent=agent_init(key_agent, family, config),
                   data=dataset_lib.init(example, config.dataset_capacity))


def skipped_metrics(fn, *args):
  """Placeholders for the metrics `fn(*args)[1]` of a skipped branch: NaN
  for floats, zeros otherwise, same shapes (nothing is computed)."""
  shapes = jax.eval_shape(fn, *args)[1]
  return jax.tree.map(
      lambda x: jnp.full(x.shape, jnp.nan, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating)
      else jnp.zeros(x.shape, x.dtype), shapes)


def policy_fn(params, obs, key):
  """π acting on raw observations; params = (PolicyParams, state Normalizer)."""
  policy, norm = params
  return gm.policy_sample(policy, normalizer.normalize(norm, obs), key)


def mean_policy_fn(params, obs, key):
  """The policy's mean action (deterministic evaluation)."""
  del key
  policy, norm = params
  return gm.policy_apply(policy, normalizer.normalize(norm, obs))[0]


class SLBO:
  """The compiled phases of SLBO for one family and config.

  Attributes (all jitted, pure):
    virtual_training(state, psi, key) -> (state, VirtualMetrics): n_inner
      iterations; `zero_shot` the same with n_zeroshot.
    stage(state, psi, key) -> (state, VirtualMetrics): one SLBO stage.
    evaluate(state, psi, key) -> Rollout: real roll-outs of the mean policy
      (no exploration), `config.real.n_envs` episodes.
  """

  def __init__(self, family: TaskFamily, config: SLBOConfig = SLBOConfig()):
    self.family = family
    self.config = config
    self._dynamics_fn = dynamics.make_dynamics_fn(config.model)
    self._fit = dynamics.make_fit(config.model, stride=config.real.n_envs)
    self._virtual_rollout = virtual.make_virtual_rollout(
        family, policy_fn, self._dynamics_fn, config.n_rollouts,
        config.rollout_steps)
    self._collect = rollout.make_collector(family, policy_fn, config.real)
    self._evaluate = rollout.make_collector(
        family, mean_policy_fn,
        dataclasses.replace(config.real, n_steps=family.horizon))
    self.virtual_training = jax.jit(
        lambda s, psi, key: self._virtual_training(s, psi, key,
                                                   config.n_inner))
    self.zero_shot = jax.jit(
        lambda s, psi, key: self._virtual_training(s, psi, key,
                                                   config.n_zeroshot))
    self.stage = jax.jit(self._stage)

  # ---------------------------------------------------------- pieces
  def _policy_step(self, state: SLBOState, psi, key):
    """Virtual samples → GAE → TRPO step → value fit."""
    config, family = self.config, self.family
    key_start, key_roll, key_value = jax.random.split(key, 3)
    norm = state.model.norms.state
    if config.virtual_start == 'reset':
      start_obs = jax.vmap(family.reset)(
          jax.random.split(key_start, config.n_rollouts)).obs
    else:
      start_obs = dataset_lib.sample(state.data, key_start,
                                     config.n_rollouts).obs
    agent = state.agent
    tr = self._virtual_rollout((agent.policy, norm), state.model, psi,
                               start_obs, key_roll)
    value = jax.vmap(jax.vmap(gm.value_apply, (None, 0)), (None, 0))
    obs_n = normalizer.normalize(norm, tr.obs)
    next_n = normalizer.normalize(norm, tr.next_obs)
    adv, ret = returns.batched_gae(
        tr.reward, value(agent.value, obs_n), value(agent.value, next_n),
        tr.done, tr.timeout, config.gamma, config.lam)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    batch = trpo.TRPOBatch(obs=flat(obs_n), actions=flat(tr.raw_action),
                           advantages=flat(adv))
    policy, info = trpo.trpo_step(agent.policy, batch, config.trpo)
    value_params, value_opt, value_loss = trpo.value_fit(
        agent.value, agent.value_opt, flat(obs_n), flat(ret), key_value,
        config.trpo)
    agent = AgentState(policy=policy, value=value_params, value_opt=value_opt)
    virtual_return = returns.mean_episode_return(tr.reward, tr.done,
                                                 tr.timeout)
    return state.replace(agent=agent), (virtual_return, info.accepted,
                                        info.kl, value_loss)

  def _virtual_training(self, state: SLBOState, psi, key, n: int,
                        n_active=None):
    """Algorithm 2: n × [nmodel model steps; npolicy TRPO steps].

    With `n_active` (a traced int ≤ n) only the first n_active iterations
    run and the rest are skipped (their metrics are NaN): one compiled
    program then serves phases of different lengths.
    """
    def iteration(state, key):
      key_fit, key_policy = jax.random.split(key)
      model, fit_metrics = self._fit(state.model, state.data, key_fit)
      state = state.replace(model=model)
      state, (v_ret, accepted, kl, v_loss) = jax.lax.scan(
          lambda s, k: self._policy_step(s, psi, k), state,
          jax.random.split(key_policy, self.config.n_policy))
      return state, VirtualMetrics(
          model_loss=jnp.mean(fit_metrics['loss'][-10:]),
          model_rejected=fit_metrics['rejected'],
          virtual_return=v_ret[-1], trpo_accepted=jnp.mean(accepted),
          trpo_kl=kl[-1], value_loss=v_loss[-1])

    if n_active is None:
      return jax.lax.scan(iteration, state, jax.random.split(key, n))

    def masked(state, inputs):
      index, key_i = inputs

      def skip(state):
        return state, skipped_metrics(iteration, state, key_i)

      return jax.lax.cond(index < n_active,
                          lambda s: iteration(s, key_i), skip, state)

    return jax.lax.scan(masked, state,
                        (jnp.arange(n), jax.random.split(key, n)))

  def _collect_real(self, state: SLBOState, psi, key) -> SLBOState:
    """Real samples of π_θ with exploration noise into the dataset, and
    the normalisers updated from them (the first half of a stage)."""
    params = (state.agent.policy, state.model.norms.state)
    real = self._collect(params, psi, key)
    return state.replace(
        data=dataset_lib.add(state.data, real.transitions),
        model=dynamics.update_normalizers(state.model, real.transitions))

  def _stage(self, state: SLBOState, psi, key):
    """Collect real samples with exploration, then VirtualTraining(ninner)."""
    key_collect, key_train = jax.random.split(key)
    state = self._collect_real(state, psi, key_collect)
    return self._virtual_training(state, psi, key_train, self.config.n_inner)

  def evaluate(self, state: SLBOState, psi, key) -> rollout.Rollout:
    params = (state.agent.policy, state.model.norms.state)
    return self._evaluate(params, psi, key, 0.0)

  def new_task(self, state: SLBOState, key) -> SLBOState:
    """Fresh policy and value for a new task; model and data persist."""
    return state.replace(agent=agent_init(key, self.family, self.config))


def real_samples_per_stage(family: TaskFamily, config: SLBOConfig) -> int:
  steps = family.horizon if config.real.n_steps is None else config.real.n_steps
  return config.real.n_envs * steps
