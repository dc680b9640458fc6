"""SLBO on a learned model: VirtualTraining (Algorithm 2) and SLBO stages.

Luo et al. 2019 (SLBO, arXiv:1807.03858) as AdMRL runs it (Lin et al. 2020,
arXiv:2006.08875, Algorithms 1 and 2):

    virtual_training(state, ψ, key, n)          (one `lax.scan`)
        n × [fit the model on minibatches of D for nmodel steps;
             npolicy × policy_step: ntrpo virtual samples of π_θ under r_ψ,
                       GAE with V_φ, a TRPO step, a value fit]
    collect_real(state, ψ, key)
        D ← D ∪ {real samples of π_θ + OU noise}; update the normalisers
    stage = collect_real, then virtual_training(ninner)
    phase_scan = virtual_training(nzeroshot), then stages (one `lax.scan`)

The state normaliser of the model is shared with the policy and the value
function (as in the authors' code). Everything is a pure function of a named
state; ψ and all parameters are traced, so a new task never recompiles, and
each phase (zero-shot with nzeroshot, SLBO with ninner) is one compiled
program.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import networks as networks_lib
from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.models import dataset as dataset_lib
from admrl_jax.models import normalizer
from admrl_jax.rl import returns
from admrl_jax.rl import rollout
from admrl_jax.rl import trpo
from admrl_jax.rl import virtual
from admrl_jax.rl.rollout import RolloutConfig


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
  model: networks_lib.ModelConfig = networks_lib.ModelConfig()
  trpo: trpo.TRPOConfig = trpo.TRPOConfig()
  policy: networks_lib.PolicyConfig = networks_lib.PolicyConfig()
  value: networks_lib.ValueConfig = networks_lib.ValueConfig()
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
  """Policy and value function of the current task (re-initialised per task):
  the parameters of the bundle's policy and value networks."""
  policy: Any
  value: Any
  value_opt: Any


@struct.dataclass
class SLBOState:
  """Model (persists across tasks), agent (per task) and real dataset; the
  model's state is the bundle's (`models.dynamics.ModelState` by
  default)."""
  model: Any
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


def default_networks(config: SLBOConfig) -> networks_lib.Networks:
  """The authors' networks at `config.model`, `config.policy` and
  `config.value` (`networks.make_networks`)."""
  return networks_lib.make_networks(config.model, config.policy,
                                    config.value)


def agent_init(key: jax.Array, family: TaskFamily, config: SLBOConfig,
               networks: Optional[networks_lib.Networks] = None
               ) -> AgentState:
  """A fresh policy π_θ, value function V_φ and its Adam state for one task.

  Args:
    key: PRNG key (split into the policy's and the value's).
    family: sets the sizes (obs_size, action_size).
    config: `config.policy` and `config.value` set the networks (policy
      [32, 32] tanh with log-std 0, value [64, 64] tanh, the authors'
      code's), `config.trpo` the value optimiser.
    networks: the bundle whose policy and value are initialised (None:
      `default_networks(config)`).
  """
  networks = default_networks(config) if networks is None else networks
  key_policy, key_value = jax.random.split(key)
  value = networks.value.init(key_value, family.obs_size)
  return AgentState(
      policy=networks.policy.init(key_policy, family.obs_size,
                                  family.action_size),
      value=value, value_opt=trpo.value_optimizer(config.trpo).init(value))


def init(key: jax.Array, family: TaskFamily, config: SLBOConfig,
         networks: Optional[networks_lib.Networks] = None) -> SLBOState:
  """The state SLBO starts from: a fresh dynamics model with its
  normalisers and Adam state (`networks.ModelNetwork.init`), a fresh agent
  (`agent_init`) and an empty real dataset of `config.dataset_capacity`
  transitions (Luo et al. 2019, arXiv:1807.03858, Algorithm 2's D = ∅).

  Args:
    key: PRNG key (split into the model's and the agent's).
    family: sets obs_size and action_size.
    config: the networks' sizes and the dataset's capacity.
    networks: the bundle to initialise (None: `default_networks(config)`).
  Returns:
    An `SLBOState` whose leaves are unbatched; `jax.vmap(init)` over keys
    gives a batch of independent runs.
  """
  networks = default_networks(config) if networks is None else networks
  key_model, key_agent = jax.random.split(key)
  model = networks.model.init(key_model, family.obs_size, family.action_size)
  obs, act = jnp.zeros(family.obs_size), jnp.zeros(family.action_size)
  flag = jnp.zeros((), bool)
  example = types.Transition(obs=obs, action=act, raw_action=act,
                             reward=jnp.zeros(()), next_obs=obs, done=flag,
                             timeout=flag)
  return SLBOState(model=model,
                   agent=agent_init(key_agent, family, config, networks),
                   data=dataset_lib.init(example, config.dataset_capacity))


def skipped_metrics(fn, *args):
  """Placeholders for the metrics `fn(*args)[1]` of a skipped branch: NaN
  for floats, zeros otherwise, same shapes (nothing is computed)."""
  shapes = jax.eval_shape(fn, *args)[1]
  return jax.tree.map(
      lambda x: jnp.full(x.shape, jnp.nan, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating)
      else jnp.zeros(x.shape, x.dtype), shapes)


def make_policy_fn(policy: networks_lib.PolicyNetwork, mean: bool = False):
  """`policy_fn(params, obs, key) -> action` (`rl.rollout.PolicyFn`) of a
  policy network acting on raw observations; params = (policy params,
  state Normalizer). mean=True acts with the mean action (the key is
  unused)."""
  def policy_fn(params, obs, key):
    theta, norm = params
    obs = normalizer.normalize(norm, obs)
    if mean:
      return policy.mode(theta, obs)
    return policy.sample(theta, obs, key)
  return policy_fn


def acting_params(state: SLBOState):
  """(policy params, state normaliser): what `make_policy_fn`'s policies
  act with — the agent's policy seeing observations through the model's
  state normaliser (as in the authors' code)."""
  return (state.agent.policy, state.model.norms.state)


def batch_value(value_params, norm: normalizer.Normalizer,
                obs: jax.Array, value: networks_lib.ValueNetwork
                ) -> jax.Array:
  """V_φ of raw observations with two leading axes, (T, n, obs_size) →
  (T, n): the value function sees observations normalised by the model's
  state normaliser `norm`, like the policy (`policy_fn`)."""
  batched = jax.vmap(jax.vmap(value.apply, (None, 0)), (None, 0))
  return batched(value_params, normalizer.normalize(norm, obs))


def make_evaluator(family: TaskFamily, episodes: int,
                   policy: networks_lib.PolicyNetwork):
  """Real roll-outs of the mean policy, without exploration noise.

  Returns `evaluate(state, psi, key) -> Rollout`: `episodes` fresh real
  episodes of the horizon's length of the mean action of π_θ
  (`make_policy_fn(policy, mean=True)`) on task ψ (k,), from
  `acting_params(state)`; `Rollout.first_return` (episodes,) holds
  their returns. Pure and jitted (it may be traced inside a caller's jit);
  ψ is taken as float32.
  """
  collect = rollout.make_collector(
      family, make_policy_fn(policy, mean=True),
      RolloutConfig(n_envs=episodes, n_steps=family.horizon))

  def evaluate(state: SLBOState, psi, key) -> rollout.Rollout:
    return collect(acting_params(state), psi, key, 0.0)

  return evaluate


@struct.dataclass
class PhaseInfo:
  """What `SLBO.phase_scan`'s `observe` receives about the phase just run.

  Attributes:
    index: 0 for the zero-shot phase, i ≥ 1 for SLBO stage i (int32).
    active: whether the phase ran (bool; a skipped phase left the state
      unchanged and has NaN metrics).
    n_active: VirtualTraining iterations the phase ran (if active).
    key: a PRNG key of the phase for the observer's own use.
  """
  index: jax.Array
  active: jax.Array
  n_active: jax.Array
  key: jax.Array


class SLBO:
  """SLBO (Luo et al. 2019, arXiv:1807.03858) for one family and config,
  as pure functions of an `SLBOState` and a task ψ.

  Pure methods (trace them inside your own `jax.jit`/`vmap`):
    collect_real(state, psi, key) -> state: real samples into D.
    virtual_training(state, psi, key, n_iterations, n_active=None) ->
      (state, VirtualMetrics): Algorithm 2 of Lin et al. 2020.
    policy_step(state, psi, key): one TRPO step on virtual samples.
    virtual_start_states(state, key): where its model roll-outs start.
    phase_scan(state, psi, key, n_phases, ...): zero-shot then SLBO stages.
    phase(state, psi, index, key_phase): one of them, a program of its own.
    evaluate(state, psi, key) -> Rollout: the mean policy on the real env.
    new_task(state, key) -> state: a fresh agent.
  Jitted conveniences:
    zero_shot(state, psi, key) -> (state, VirtualMetrics):
      VirtualTraining(n_zeroshot).
    stage(state, psi, key) -> (state, VirtualMetrics): one SLBO stage,
      collect_real then VirtualTraining(n_inner).
  Attributes:
    family, config: as given.
    networks: the `networks.Networks` bundle (model, policy, value).
    policy_fn: the policy acting on raw observations (`make_policy_fn`).
    dynamics_fn: the learned model's deterministic step,
      `networks.model.predict` (what `rl.virtual.make_virtual_rollout`
      takes).
  """

  def __init__(self, family: TaskFamily, config: SLBOConfig = SLBOConfig(),
               networks: Optional[networks_lib.Networks] = None):
    """Args:
      family, config: the task family and SLBO's settings.
      networks: the networks to train (None: `default_networks(config)`,
        the authors'); see `networks.Networks`.
    """
    self.family = family
    self.config = config
    self.networks = (default_networks(config) if networks is None
                     else networks)
    self.policy_fn = make_policy_fn(self.networks.policy)
    self.dynamics_fn = self.networks.model.predict
    self._fit = self.networks.model.make_fit(config.real.n_envs)
    self._virtual_rollout = self.make_virtual_rollout(
        config.n_rollouts, config.rollout_steps)
    self._collect = rollout.make_collector(family, self.policy_fn,
                                           config.real)
    self._evaluate = make_evaluator(family, config.real.n_envs,
                                    self.networks.policy)
    self.zero_shot = jax.jit(
        lambda s, psi, key: self.virtual_training(s, psi, key,
                                                  config.n_zeroshot))
    self.stage = jax.jit(self._stage)
    # `phase` traced once per process: the placeholders of a skipped phase
    # (`AdMRL.begin`, `phase_scan`) take its output shapes from jit's trace
    # cache instead of tracing the phase again (seconds per program).
    self._phase_once = jax.jit(self._phase, static_argnums=4)

  def make_virtual_rollout(self, n_rollouts: int,
                           n_steps: Optional[int] = None):
    """`rl.virtual.make_virtual_rollout` of this policy through this model
    (its stochastic `sample` step when it has one)."""
    model = self.networks.model
    if model.sample is None:
      return virtual.make_virtual_rollout(
          self.family, self.policy_fn, model.predict, n_rollouts, n_steps)
    return virtual.make_virtual_rollout(
        self.family, self.policy_fn, model.sample, n_rollouts, n_steps,
        model_keys=True)

  # ---------------------------------------------------------- pieces
  def virtual_start_states(self, state: SLBOState, key) -> jax.Array:
    """Where `policy_step`'s model roll-outs start, (n_rollouts,
    obs_size): real reset states (`config.virtual_start='reset'`, SLBO) or
    observations drawn uniformly from the dataset D ('data', MBPO-style
    branched roll-outs). Pure; `policy_step(state, psi, key)` draws them
    with the first of `jax.random.split(key, 3)`."""
    config = self.config
    if config.virtual_start == 'reset':
      return jax.vmap(self.family.reset)(
          jax.random.split(key, config.n_rollouts)).obs
    return dataset_lib.sample(state.data, key, config.n_rollouts).obs

  def policy_step(self, state: SLBOState, psi, key):
    """Virtual samples → GAE → TRPO step → value fit (one of the npolicy
    steps of a VirtualTraining iteration; Lin et al. 2020, Algorithm 2).

    `config.n_rollouts` model roll-outs of π_θ under r_ψ (from real reset
    states, or states of D with `virtual_start='data'`), GAE(γ, λ)
    (Schulman et al. 2016, arXiv:1506.02438) with V_φ, one TRPO step
    (Schulman et al. 2015, arXiv:1502.05477) and the value fit.

    Returns:
      (state with the new agent, (virtual_return, accepted, kl,
      value_loss)), scalars: the virtual batch's mean episode return, the
      TRPO step's acceptance, its KL and the value loss.
    """
    config = self.config
    key_start, key_roll, key_value = jax.random.split(key, 3)
    norm = state.model.norms.state
    start_obs = self.virtual_start_states(state, key_start)
    agent = state.agent
    value_net = self.networks.value
    tr = self._virtual_rollout((agent.policy, norm), state.model, psi,
                               start_obs, key_roll)
    obs_n = normalizer.normalize(norm, tr.obs)
    adv, ret = returns.batched_gae(
        tr.reward, batch_value(agent.value, norm, tr.obs, value_net),
        batch_value(agent.value, norm, tr.next_obs, value_net),
        tr.done, tr.timeout, config.gamma, config.lam)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    batch = trpo.TRPOBatch(obs=flat(obs_n), actions=flat(tr.raw_action),
                           advantages=flat(adv))
    policy, info = trpo.trpo_step(agent.policy, batch, config.trpo,
                                  policy=self.networks.policy)
    value_params, value_opt, value_loss = trpo.value_fit(
        agent.value, agent.value_opt, flat(obs_n), flat(ret), key_value,
        config.trpo, value=value_net)
    agent = AgentState(policy=policy, value=value_params, value_opt=value_opt)
    virtual_return = returns.mean_episode_return(tr.reward, tr.done,
                                                 tr.timeout)
    return state.replace(agent=agent), (virtual_return, info.accepted,
                                        info.kl, value_loss)

  def virtual_training(self, state: SLBOState, psi, key, n_iterations: int,
                       n_active=None):
    """VirtualTraining (Lin et al. 2020, arXiv:2006.08875, Algorithm 2):
    n_iterations × [nmodel model fit steps on D; npolicy `policy_step`s],
    one `lax.scan`.

    Args:
      state, psi, key: the SLBO state, the task ψ (k,), a PRNG key.
      n_iterations: iterations (static; sets the compiled program).
      n_active: optional traced int ≤ n_iterations: only the first
        n_active iterations run and the rest are skipped (their metrics
        NaN), so that one compiled program serves phases of different
        lengths (`phase_scan`). None runs all n_iterations.
    Returns:
      (state, VirtualMetrics with leaves (n_iterations,)).
    """
    def iteration(state, key):
      key_fit, key_policy = jax.random.split(key)
      model, fit_metrics = self._fit(state.model, state.data, key_fit)
      state = state.replace(model=model)
      state, (v_ret, accepted, kl, v_loss) = jax.lax.scan(
          lambda s, k: self.policy_step(s, psi, k), state,
          jax.random.split(key_policy, self.config.n_policy))
      return state, VirtualMetrics(
          model_loss=jnp.mean(fit_metrics['loss'][-10:]),
          model_rejected=fit_metrics['rejected'],
          virtual_return=v_ret[-1], trpo_accepted=jnp.mean(accepted),
          trpo_kl=kl[-1], value_loss=v_loss[-1])

    if n_active is None:
      return jax.lax.scan(iteration, state,
                          jax.random.split(key, n_iterations))

    # jit: the skipped branch's placeholders take the shapes of the traced
    # iteration from jit's trace cache instead of tracing it a second time.
    iteration_once = jax.jit(iteration)

    def masked(state, inputs):
      index, key_i = inputs

      def skip(state):
        return state, skipped_metrics(iteration_once, state, key_i)

      return jax.lax.cond(index < n_active,
                          lambda s: iteration_once(s, key_i), skip, state)

    return jax.lax.scan(masked, state, (jnp.arange(n_iterations),
                                        jax.random.split(key, n_iterations)))

  def collect_real(self, state: SLBOState, psi, key) -> SLBOState:
    """The first half of an SLBO stage: real samples of π_θ with
    Ornstein–Uhlenbeck exploration noise (`config.real`: n_envs × n_steps,
    default the horizon) on task ψ, added to the dataset D (non-finite
    transitions are dropped, `models.dataset.add`), and the model's
    normalisers updated from them."""
    real = self._collect(acting_params(state), psi, key)
    return state.replace(
        data=dataset_lib.add(state.data, real.transitions),
        model=self.networks.model.update_normalizers(state.model,
                                                     real.transitions))

  def _stage(self, state: SLBOState, psi, key):
    """Collect real samples with exploration, then VirtualTraining(ninner)."""
    key_collect, key_train = jax.random.split(key)
    state = self.collect_real(state, psi, key_collect)
    return self.virtual_training(state, psi, key_train, self.config.n_inner)

  def phase_scan(self, state: SLBOState, psi, key, n_phases: int, *,
                 n_zeroshot: Optional[int] = None, run_zero_shot=None,
                 n_stages=None, observe=None):
    """The zero-shot phase, then SLBO stages, as one `lax.scan` over phases.

    Phase 0 is VirtualTraining(n_zeroshot) on r_ψ with the data already in
    D (the zero-shot θ̂ of Lin et al. 2020, Algorithm 1, line 4); phase
    i ≥ 1 is SLBO stage i: `collect_real`, then VirtualTraining(n_inner)
    (Algorithm 1, lines 5-7). Every phase is the same code with a masked
    iteration count, so the compiled program holds one copy of
    VirtualTraining. Algorithm 1's task iteration (`meta.admrl`) and the
    test-time adaptation (`evaluation.adaptation`) both run it.

    Args:
      state: the SLBO state (usually after `new_task`).
      psi: the task, (k,).
      key: PRNG key; phase i uses split(key, n_phases)[i], itself split
        into the collection's, VirtualTraining's and `observe`'s keys.
      n_phases: 1 + the most stages (static).
      n_zeroshot: VirtualTraining iterations of phase 0 (static, ≥ 0;
        None: `config.n_zeroshot`).
      run_zero_shot: optional traced bool; False skips phase 0.
      n_stages: optional traced int ≤ n_phases − 1: stages after it are
        skipped. With run_zero_shot and n_stages both None every phase
        runs, and no branch is compiled around them.
      observe: optional `observe(state, metrics, PhaseInfo) -> pytree`,
        called after every phase (skipped ones included); its outputs are
        stacked over phases.
    Returns:
      (state, metrics, observed): the state after the last phase,
      VirtualMetrics with leaves (n_phases, max(n_zeroshot, n_inner)),
      and the stacked outputs of `observe` (None without it).
    """
    config = self.config
    n_zeroshot = config.n_zeroshot if n_zeroshot is None else n_zeroshot
    masked = run_zero_shot is not None or n_stages is not None

    def phase(s, inputs):
      index, key_phase = inputs
      key_observe = jax.random.split(key_phase, 3)[2]
      n_active = jnp.where(index > 0, config.n_inner, n_zeroshot)

      def run(s):
        return self.phase(s, psi, index, key_phase, n_zeroshot)

      if masked:
        zero_shot_on = True if run_zero_shot is None else run_zero_shot
        stage_on = True if n_stages is None else index <= n_stages
        active = jnp.where(index == 0, zero_shot_on, stage_on)
        s, metrics = jax.lax.cond(
            active, run, lambda s: (s, skipped_metrics(run, s)), s)
      else:
        active = jnp.ones((), bool)
        s, metrics = run(s)
      observed = None if observe is None else observe(
          s, metrics, PhaseInfo(index=index, active=active,
                                n_active=n_active, key=key_observe))
      return s, (metrics, observed)

    state, (metrics, observed) = jax.lax.scan(
        phase, state, (jnp.arange(n_phases),
                       jax.random.split(key, n_phases)))
    return state, metrics, observed

  def phase(self, state: SLBOState, psi, index, key_phase,
            n_zeroshot: Optional[int] = None):
    """One phase of `phase_scan`, always run: the zero-shot phase
    (VirtualTraining(n_zeroshot)) when `index` is 0, else an SLBO stage
    (`collect_real`, then VirtualTraining(n_inner)).

    Args:
      state, psi: as `phase_scan`.
      index: the phase (int32, may be traced: one program for every phase).
      key_phase: the phase's key, split(key, n_phases)[index] in
        `phase_scan`'s convention.
      n_zeroshot: as `phase_scan`.
    Returns:
      (state, VirtualMetrics with leaves (max(n_zeroshot, n_inner),)); the
      entries after the phase's own iteration count are NaN.
    """
    if n_zeroshot is None:
      n_zeroshot = self.config.n_zeroshot
    return self._phase_once(state, psi, index, key_phase, n_zeroshot)

  def _phase(self, state, psi, index, key_phase, n_zeroshot: int):
    config = self.config
    # The first two keys equal split(key_phase, 2) (threefry, partitionable).
    key_collect, key_train, _ = jax.random.split(key_phase, 3)
    n_active = jnp.where(index > 0, config.n_inner, n_zeroshot)
    state = jax.lax.cond(index > 0,
                         lambda s: self.collect_real(s, psi, key_collect),
                         lambda s: s, state)
    return self.virtual_training(state, psi, key_train,
                                 max(n_zeroshot, config.n_inner), n_active)

  def evaluate(self, state: SLBOState, psi, key) -> rollout.Rollout:
    """Real roll-outs of the mean policy (no exploration noise) on task ψ
    (k,): `config.real.n_envs` episodes of the horizon's length
    (`make_evaluator`); `first_return` (n_envs,) holds their returns."""
    return self._evaluate(state, psi, key)

  def new_task(self, state: SLBOState, key) -> SLBOState:
    """Fresh policy and value for a new task; model and data persist."""
    return state.replace(agent=agent_init(key, self.family, self.config,
                                          self.networks))


def real_samples_per_stage(family: TaskFamily, config: SLBOConfig) -> int:
  """Real environment steps one SLBO stage collects: n_envs × n_steps (the
  horizon when n_steps is None)."""
  steps = family.horizon if config.real.n_steps is None else config.real.n_steps
  return config.real.n_envs * steps
