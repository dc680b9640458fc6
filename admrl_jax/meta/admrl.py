"""Algorithm 1 (AdMRL) and its baselines as one pure task iteration.

    task_iteration(state, first) -> (state, IterationMetrics):
        θ ← fresh policy/value;  ψ = ψ(u)
        θ̂ ← VirtualTraining(nzeroshot)                 (skipped on the first task)
        nslbo × [collect real samples; VirtualTraining(ninner)]  → θ*
        next task:  first task           u ← U[−1, 1]^k
                    admrl                u ← clip(u + α ∂L/∂u, −1, 1)
                                         (or α ∂L/∂u/‖∂L/∂u‖, step_rule)
                    mb_unif              u ← U[−1, 1]^k
                    mb_gauss             u ← clip(N(0, I), −1, 1)
                    mb_vertices          u ← uniform over {−1, 1}^k
                    mb_cem               u ← a cross-entropy-method draw
                                         toward the largest measured gaps
                    slbo                 u unchanged

The state (`AdMRLState`: model and normalisers, dataset, agent, u, α, key,
iteration counter, visited tasks and gaps) is a pytree and `first` a traced
boolean, so every task iteration — the first included — runs the same
compiled program; a batch of states (seeds, or α for a sweep) runs under
`jax.vmap(task_iteration, in_axes=(0, None))` without turning the branches
into selects (`first` is shared, not batched).

The first task has no zero-shot policy θ̂, so there is no task gradient
(Algorithm 1, line 8) and it runs the longer first-task nslbo (Appendix C).
For admrl the task gradient uses fresh real roll-outs of θ̂ and θ* without
exploration noise (counted in `real_samples`, not added to the dataset) and
model roll-outs of θ̂ (as the authors' code does); the logged training gap is
return(θ*) − return(θ̂) on those real roll-outs. A non-finite task gradient
is rejected (u stays) and flagged in the metrics; with
`task_gradient.max_residual` set, so is (or shortened, by
`task_gradient.residual_action`) the step of a linear solve that did not
converge (`IterationMetrics.step_scale`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from admrl_jax import networks as networks_lib
from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.meta import adversary
from admrl_jax.meta import estimators
from admrl_jax.meta import task_gradient as tg
from admrl_jax.models import normalizer
from admrl_jax.rl import rollout
from admrl_jax.rl import slbo as slbo_lib
from admrl_jax.rl.rollout import RolloutConfig

ALGOS = ('admrl', 'mb_unif', 'mb_gauss', 'mb_vertices', 'mb_cem', 'slbo')
# Algorithms that measure the training gap of every task after the first
# (real roll-outs of θ̂ and θ*, counted in `real_samples`).
MEASURE_GAP = ('admrl', 'mb_cem')
STEP_RULES = ('paper', 'normalized')


@dataclasses.dataclass(frozen=True)
class AdMRLConfig:
  """Algorithm 1's settings (Appendix C and the authors' code's defaults).

  Attributes:
    algo: how the next task is chosen: 'admrl', 'mb_unif', 'mb_gauss'
      (`TaskFamily.sample_gaussian`), 'mb_vertices' (a vertex of the box,
      the control for training on the boundary), 'mb_cem' (a gradient-free
      adversary: `adversary.cem_next_task` on the measured gaps) or 'slbo'
      (one fixed task).
    n_tasks: task iterations of a run (ntasks).
    n_slbo: SLBO stages per task (nslbo).
    n_slbo_first: SLBO stages of the first task (10 for Hopper2D/Walker2D,
      20 for the Ant and Cheetah families).
    first_u: the first task, u = first_u in every coordinate.
    gradient_envs: real roll-outs (of the horizon's length) of θ̂ and of θ*
      each, and model roll-outs of θ̂, for the task gradient: 50 × 200 =
      10 000 samples each (the authors' code).
    slbo: the SLBO engine's config (nzeroshot, ninner, nmodel, ...).
    task_gradient: estimator and solver of ∂L/∂ψ.
    step_rule: the adversary's ascent step (`adversary.ascent_step`):
      'paper' u ← clip(u + α·∂L/∂u, −1, 1) (Algorithm 1, line 12), or
      'normalized' u ← clip(u + α·∂L/∂u/‖∂L/∂u‖, −1, 1), a step of length
      α in units of the box's half-widths whatever the gradient's scale.
    cem_quantile, cem_uniform_share, cem_min_std: mb_cem's elite fraction
      (the CVaR level of the gap it chases), share of uniform draws and
      floor of the standard deviation in u (`adversary.cem_next_task`).
    gradient_noise_check: admrl also computes a second, independent estimate
      of ∂L/∂u at the same state (fresh real and model roll-outs of θ̂ and
      θ*, 2·gradient_envs·horizon more real steps, not counted in
      `real_samples` and not added to the dataset), reported as
      `grad_u_repeat`; the step uses the first. A diagnostic of the
      estimate's noise: the cosine between the two.
  """
  algo: str = 'admrl'
  n_tasks: int = 20
  n_slbo: int = 3
  n_slbo_first: int = 20
  first_u: float = 0.3
  gradient_envs: int = 50
  slbo: slbo_lib.SLBOConfig = slbo_lib.SLBOConfig()
  task_gradient: tg.TaskGradientConfig = tg.TaskGradientConfig()
  step_rule: str = 'paper'
  cem_quantile: float = 0.3
  cem_uniform_share: float = 0.2
  cem_min_std: float = 0.2
  gradient_noise_check: bool = False

  def __post_init__(self):
    if self.algo not in ALGOS:
      raise ValueError(f'unknown algo {self.algo!r}; choose one of '
                       f'{", ".join(ALGOS)}')
    for name in ('n_tasks', 'n_slbo', 'n_slbo_first', 'gradient_envs'):
      if getattr(self, name) < 1:
        raise ValueError(f'AdMRLConfig.{name} must be >= 1, got '
                         f'{getattr(self, name)}')
    if not -1.0 <= self.first_u <= 1.0:
      raise ValueError(f'first_u must be in [-1, 1], got {self.first_u}')
    if not 0.0 < self.cem_quantile <= 1.0:
      raise ValueError(f'cem_quantile must be in (0, 1], got '
                       f'{self.cem_quantile}')
    if not 0.0 <= self.cem_uniform_share <= 1.0:
      raise ValueError(f'cem_uniform_share must be in [0, 1], got '
                       f'{self.cem_uniform_share}')
    if not self.cem_min_std > 0.0:
      raise ValueError(f'cem_min_std must be > 0, got {self.cem_min_std}')
    if self.step_rule not in STEP_RULES:
      raise ValueError(f'unknown step_rule {self.step_rule!r}; choose one of '
                       f'{", ".join(STEP_RULES)}')


@struct.dataclass
class AdMRLState:
  """Everything a run carries from one task iteration to the next.

  Attributes:
    slbo: model and normalisers (persist), dataset (all tasks), agent.
    u: the current task in normalised coordinates, (k,).
    alpha: the task step size α (a traced scalar, so α can be vmapped).
    key: PRNG key of the run.
    iteration: task iterations completed, int32.
    real_samples: real environment steps taken so far, int32.
    visited_u: the task of each completed iteration, (n_tasks, k); NaN for
      iterations not run yet.
    gaps: training gap return(θ*) − return(θ̂) of each iteration, (n_tasks,);
      NaN where none was measured (first task, baselines).
  """
  slbo: slbo_lib.SLBOState
  u: jax.Array
  alpha: jax.Array
  key: jax.Array
  iteration: jax.Array
  real_samples: jax.Array
  visited_u: jax.Array
  gaps: jax.Array


@struct.dataclass
class IterationMetrics:
  """What one task iteration reports (scalars unless noted).

  Attributes:
    task_index: the iteration's index (0-based).
    u, psi: the task trained on, (k,).
    u_next: the next task, (k,).
    return_hat, return_star: real returns of θ̂ and θ* (NaN if not measured).
    gap: return_star − return_hat.
    grad_u: ∂L/∂u, (k,) (zeros when not computed).
    grad_u_repeat: a second, independent estimate of ∂L/∂u at the same
      state, (k,) (`AdMRLConfig.gradient_noise_check`; NaN when not
      computed).
    grad_norm: ‖∂L/∂u‖ of the task gradient.
    residual: ‖A x − b‖/‖b‖ of the task gradient's linear solve on the
      undamped system (solver 'per_dimension': the worst of the k solves).
    solver_iterations: matrix–vector products A·v (Hessian-vector products)
      that solve spent (`linalg.SolveInfo.iterations`) — not iterations:
      `linalg.NormalCG` (the paper's) takes two per CG iteration
      (Aᵀ(A v)), so up to 2 × its `iters`; `linalg.MINRES` (the default)
      one per iteration; `linalg.GMRES` restart × its cycles; summed over
      the k solves with solver 'per_dimension'; 0 when no gradient was
      computed.
    grad_accepted: the ascent step was taken (False when the gradient was
      non-finite, or its solve's residual was above
      `task_gradient.max_residual` with residual_action 'reject', or for
      non-gradient choices of the next task).
    step_scale: the fraction of the ascent step α·∂L/∂u taken
      (`task_gradient.step_scale`: 1 full, 0 rejected or no gradient, in
      between when shortened for a large solve residual).
    model_loss, virtual_return, trpo_accepted: of the last VirtualTraining
      iteration of the last SLBO stage.
    real_samples: real steps taken so far (after this iteration).
    nonfinite_model: the last model fit's recent loss was not finite.
    model_rejected: model fit steps skipped in the last VirtualTraining
      iteration because the loss or gradient was not finite.
    dropped_transitions: real transitions with a NaN or Inf that this
      iteration's SLBO stages kept out of the dataset and the normalisers
      (`models.dataset.add`), summed over the stages.
  """
  task_index: jax.Array
  u: jax.Array
  psi: jax.Array
  u_next: jax.Array
  return_hat: jax.Array
  return_star: jax.Array
  gap: jax.Array
  grad_u: jax.Array
  grad_u_repeat: jax.Array
  grad_norm: jax.Array
  residual: jax.Array
  solver_iterations: jax.Array
  grad_accepted: jax.Array
  step_scale: jax.Array
  model_loss: jax.Array
  virtual_return: jax.Array
  trpo_accepted: jax.Array
  real_samples: jax.Array
  nonfinite_model: jax.Array
  model_rejected: jax.Array
  dropped_transitions: jax.Array


@struct.dataclass
class TaskCarry:
  """A task iteration between its phases (`AdMRL.begin`, `AdMRL.phase`,
  `AdMRL.end`).

  Attributes:
    state: the run's state, its `slbo` the task's working SLBO state (fresh
      policy and value from `begin`, then each phase's result).
    first: whether this is the run's first task (bool).
    n_stages: SLBO stages of this task iteration (int32).
    keys: (4,) `iteration_keys(state)` of the state `begin` received.
    hat: θ̂ = (policy params, value params, state normaliser) after the
      zero-shot phase (the fresh agent until it has run).
    last: VirtualMetrics of the last VirtualTraining iteration of the last
      SLBO stage run so far (NaN before the first).
    dropped_before: `state.slbo.data.dropped` when the iteration began.
  """
  state: AdMRLState
  first: jax.Array
  n_stages: jax.Array
  keys: jax.Array
  hat: Any
  last: Any
  dropped_before: jax.Array


@struct.dataclass
class PhaseReport:
  """A phase's last VirtualTraining iteration (`AdMRL.phase`): its
  virtual return and model loss (scalars)."""
  virtual_return: jax.Array
  model_loss: jax.Array


class PhaseEvent(NamedTuple):
  """What `on_phase` receives as a phase of a task iteration ends.

  Attributes:
    task_index: the task iteration (0-based) the phase belongs to.
    phase: 'zero_shot', 'stage' or 'task_update'.
    stage: 1-based SLBO stage for 'stage', else 0.
    n_stages: SLBO stages of this task iteration.
    first: whether this is the run's first task (no zero-shot, no gradient).
    virtual_return: the last virtual return of the phase's VirtualTraining
      (NaN for 'task_update').
    model_loss: its last model loss (NaN for 'task_update').
    gap: return(θ*) − return(θ̂) for 'task_update' of admrl, else NaN.
  """
  task_index: int
  phase: str
  stage: int
  n_stages: int
  first: bool
  virtual_return: float
  model_loss: float
  gap: float


class AdMRL:
  """The compiled task iteration of one family and config.

  Attributes:
    init(key, alpha) -> AdMRLState.
    task_iteration(state, first) -> (AdMRLState, IterationMetrics): pure;
      `jitted` is its jax.jit (one program for every iteration).
    next_task(s, hat, psi, u, alpha, key, first, history) -> (u_next,
      metrics): the iteration's choice of the next task, pure.
  """

  def __init__(self, family: TaskFamily, config: AdMRLConfig = AdMRLConfig(),
               on_phase: Optional[Callable[[PhaseEvent], None]] = None,
               networks: Optional[networks_lib.Networks] = None):
    """Args:
      family, config: the task family and the run's configuration.
      on_phase: optional host function called (through
        `jax.debug.callback`) as each phase of a task iteration ends —
        zero-shot, every SLBO stage, the task update — with a `PhaseEvent`.
        Under `vmap` it is called once per lane, under `lax.map` once per
        member, in no guaranteed order between lanes. It does not change
        the computation; leave it None when embedding the pure functions.
      networks: the model, policy and value networks
        (`networks.Networks`; None: the authors', from `config.slbo`).
    """
    self.family = family
    self.config = config
    self._on_phase = on_phase
    self.engine = slbo_lib.SLBO(family, config.slbo, networks)
    self.networks = self.engine.networks
    self._collect = rollout.make_collect_fn(
        family, self.engine.policy_fn,
        RolloutConfig(n_envs=config.gradient_envs))
    self._virtual = self.engine.make_virtual_rollout(config.gradient_envs)
    self.jitted = jax.jit(self.task_iteration)

  # ------------------------------------------------------------ state
  def init(self, key: jax.Array, alpha=1.0) -> AdMRLState:
    """The state of a run before its first task iteration.

    Args:
      key: PRNG key of the run (split into SLBO's initialisation, `slbo.init`,
        and the run's key).
      alpha: the task step size α of the ascent step (Lin et al. 2020,
        arXiv:2006.08875, Algorithm 1, line 12), a scalar > 0 that may be
        traced, so `jax.vmap(init)(keys, alphas)` sweeps α. The default 1.0
        is not the paper's: Appendix C chooses α per family (2 for
        Hopper2D, 8 for Walker2D, 4 for the Ant families, 16 for
        Cheetah-Highdim): `meta.paper.paper_config(family)` gives it
        with the rest of Appendix C.
    Returns:
      An `AdMRLState` at iteration 0: u = `config.first_u` in each of the k
      coordinates, no real samples, `visited_u` (n_tasks, k) and `gaps`
      (n_tasks,) all NaN, in the default float dtype (float64 under x64).
    """
    k, n = self.family.task_dim, self.config.n_tasks
    key_slbo, key_run = jax.random.split(key)
    return AdMRLState(
        slbo=slbo_lib.init(key_slbo, self.family, self.config.slbo,
                           self.networks),
        u=jnp.full((k,), self.config.first_u, types.float_dtype()),
        alpha=jnp.asarray(alpha, types.float_dtype()), key=key_run,
        iteration=jnp.zeros((), jnp.int32),
        real_samples=jnp.zeros((), jnp.int32),
        visited_u=jnp.full((n, k), jnp.nan, types.float_dtype()),
        gaps=jnp.full((n,), jnp.nan, types.float_dtype()))

  def samples_per_stage(self) -> int:
    """Real environment steps of one SLBO stage (n_envs × n_steps)."""
    return slbo_lib.real_samples_per_stage(self.family, self.config.slbo)

  def gradient_samples(self) -> int:
    """Real steps the task gradient (admrl) or the gap measurement
    (mb_cem) spends on θ̂ and θ* roll-outs."""
    if self.config.algo not in MEASURE_GAP:
      return 0
    return 2 * self.config.gradient_envs * self.family.horizon

  # ------------------------------------------------------------ pieces
  @property
  def n_phases(self) -> int:
    """Phases of the longest task iteration: the zero-shot phase (index 0)
    and the SLBO stages 1 … max(n_slbo, n_slbo_first)."""
    return 1 + max(self.config.n_slbo, self.config.n_slbo_first)

  def phase_indices(self, first: bool) -> list:
    """The phases a task iteration runs, in order (Algorithm 1, lines
    4-7): no zero-shot phase and n_slbo_first stages for the first task,
    the zero-shot phase and n_slbo stages for the others."""
    config = self.config
    if first:
      return list(range(1, config.n_slbo_first + 1))
    return list(range(0, config.n_slbo + 1))

  def begin(self, state: AdMRLState, first) -> TaskCarry:
    """Starts a task iteration: a fresh policy and value for the task
    state.u (model and data persist).

    Args:
      state: the run's state.
      first: whether this is the run's first task (bool, may be traced).
    """
    first = jnp.asarray(first, bool)
    keys = iteration_keys(state)
    s = self.engine.new_task(state.slbo, keys[1])
    psi = self.family.from_u(state.u)
    hat = (s.agent.policy, s.agent.value, s.model.norms.state)
    last = slbo_lib.skipped_metrics(
        lambda s: self._run_phase(s, psi, jnp.ones((), jnp.int32), keys[2]),
        s)
    last = jax.tree.map(lambda x: x[-1], last)
    return TaskCarry(
        state=state.replace(slbo=s), first=first,
        n_stages=jnp.where(first, self.config.n_slbo_first,
                           self.config.n_slbo).astype(jnp.int32),
        keys=keys, hat=hat, last=last,
        dropped_before=state.slbo.data.dropped)

  def _run_phase(self, s, psi, index, key_phases):
    key_phase = jax.random.split(key_phases, self.n_phases)[index]
    return self.engine.phase(s, psi, index, key_phase)

  def phase(self, carry: TaskCarry, index) -> tuple[TaskCarry, PhaseReport]:
    """Runs phase `index` of the task iteration: 0 the zero-shot phase
    (VirtualTraining(n_zeroshot) of the fresh policy: θ̂; Algorithm 1,
    line 4), i ≥ 1 SLBO stage i (real samples, then VirtualTraining(n_inner);
    lines 5-7). `index` may be traced: one program serves every phase. A
    caller runs `phase_indices(first)` in order; phase i uses
    split(keys[2], n_phases)[i], whatever ran before it.
    """
    index = jnp.asarray(index, jnp.int32)
    psi = self.family.from_u(carry.state.u)
    s, metrics = self._run_phase(carry.state.slbo, psi, index,
                                 carry.keys[2])
    n_active = jnp.where(index > 0, self.config.slbo.n_inner,
                         self.config.slbo.n_zeroshot)
    final = jax.tree.map(lambda x: x[n_active - 1], metrics)
    hat = jax.tree.map(
        lambda new, old: jnp.where(index == 0, new, old),
        (s.agent.policy, s.agent.value, s.model.norms.state), carry.hat)
    last = jax.tree.map(lambda new, old: jnp.where(index > 0, new, old),
                        final, carry.last)
    carry = carry.replace(state=carry.state.replace(slbo=s), hat=hat,
                          last=last)
    return carry, PhaseReport(virtual_return=final.virtual_return,
                              model_loss=final.model_loss)

  def _report(self, iteration, index, active, n_stages, first,
              virtual_return, model_loss, gap):
    """Calls `on_phase` from inside the program (phase index −1: the task
    update); inactive phases are not reported."""
    def host(iteration, index, active, n_stages, first, virtual_return,
             model_loss, gap):
      if not bool(active):
        return
      index = int(index)
      phase = ('task_update' if index < 0 else
               'zero_shot' if index == 0 else 'stage')
      self._on_phase(PhaseEvent(
          task_index=int(iteration), phase=phase, stage=max(index, 0),
          n_stages=int(n_stages), first=bool(first),
          virtual_return=float(np.asarray(virtual_return)),
          model_loss=float(np.asarray(model_loss)),
          gap=float(np.asarray(gap))))

    jax.debug.callback(host, iteration, index, active, n_stages, first,
                       virtual_return, model_loss, gap)

  def _real_returns(self, s, hat, psi, key_hat, key_star):
    """Real roll-outs of θ̂ and θ* (no exploration noise), in one vmapped
    collection: (real_hat, real_star) `Rollout`s."""
    policy_hat, _, norm_hat = hat
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]),
                        (policy_hat, norm_hat), slbo_lib.acting_params(s))
    rollouts = jax.vmap(self._collect, in_axes=(0, None, 0, None))(
        both, psi, jnp.stack([key_hat, key_star]),
        jnp.zeros((), types.float_dtype()))
    return (jax.tree.map(lambda x: x[0], rollouts),
            jax.tree.map(lambda x: x[1], rollouts))

  def _estimate(self, s, hat, psi, key):
    """Real roll-outs of θ̂ and θ*, model roll-outs of θ̂, and Eq. 2 from
    them: (TaskGradient, real_hat, real_star)."""
    policy_hat, value_hat, norm_hat = hat
    key_hat, key_star, key_virtual, key_start = jax.random.split(key, 4)
    # θ̂ and θ* in one vmapped collection: one copy of the simulator step.
    real_hat, real_star = self._real_returns(s, hat, psi, key_hat, key_star)
    start_obs = jax.vmap(self.family.reset)(
        jax.random.split(key_start, self.config.gradient_envs)).obs
    virtual_hat = self._virtual((policy_hat, norm_hat), s.model, psi,
                                start_obs, key_virtual)

    value_net, policy_net = self.networks.value, self.networks.policy

    def valued(tr):
      return estimators.ValuedBatch(
          tr, slbo_lib.batch_value(value_hat, norm_hat, tr.obs, value_net),
          slbo_lib.batch_value(value_hat, norm_hat, tr.next_obs, value_net))

    def log_prob(theta, obs, action):
      return policy_net.log_prob(theta, normalizer.normalize(norm_hat, obs),
                                 action)

    pathwise = None
    if self.config.task_gradient.hessian == 'pathwise':
      pathwise = self._pathwise_objective(s.model, norm_hat, start_obs,
                                          key_virtual)
    grad = tg.from_samples(
        self.config.task_gradient, self.family, log_prob, psi=psi,
        theta_hat=policy_hat, virtual=valued(virtual_hat),
        real_hat=valued(real_hat.transitions),
        real_star_transitions=real_star.transitions, pathwise=pathwise)
    return grad, real_hat, real_star

  def _pathwise_objective(self, model, norm_hat, start_obs, key):
    """(θ, ψ) ↦ η̂_path: the return of reparameterised roll-outs of π_θ
    through the learned model's mean prediction from `start_obs`, one
    fixed draw of the policy noise (`estimators.make_pathwise_return`),
    whose Hessian in θ is A and mixed derivative B for the pathwise
    task gradient."""
    policy_net, model_net = self.networks.policy, self.networks.model
    family = self.family

    def reparam(theta, obs, eps):
      dist = policy_net.apply(theta, normalizer.normalize(norm_hat, obs))
      return policy_net.distribution.reparam(dist, eps)

    path = estimators.make_pathwise_return(
        family, reparam, model_net.predict,
        self.config.task_gradient.hessian_gamma)
    n_steps = self.config.slbo.rollout_steps or family.horizon
    noise = jax.random.normal(
        jax.random.fold_in(key, 1),
        (n_steps, start_obs.shape[0], family.action_size), start_obs.dtype)
    return lambda theta, psi: path(theta, psi, model, start_obs, noise)

  def _task_gradient(self, s, hat, psi, u, alpha, key):
    """Eq. 2 from fresh roll-outs, then the ascent step."""
    key_estimate, key_repeat = jax.random.split(key)
    grad, real_hat, real_star = self._estimate(s, hat, psi, key_estimate)
    if self.config.gradient_noise_check:
      repeat = self._estimate(s, hat, psi, key_repeat)[0]
      grad_u_repeat = jnp.where(repeat.finite, repeat.grad_u, jnp.nan)
    else:
      grad_u_repeat = jnp.full_like(grad.grad_u, jnp.nan)
    # 0 for a non-finite gradient or a rejected solve, < 1 when shortened.
    scale = tg.step_scale(self.config.task_gradient, grad)
    u_next, accepted = adversary.ascent_step(
        u, grad.grad_u, alpha * scale,
        normalize=self.config.step_rule == 'normalized')
    accepted = accepted & (scale > 0)
    u_next = jnp.where(accepted, u_next, u)
    return_hat = jnp.mean(real_hat.first_return)
    return_star = jnp.mean(real_star.first_return)
    return u_next, dict(
        return_hat=return_hat, return_star=return_star,
        gap=return_star - return_hat,
        grad_u=jnp.where(grad.finite, grad.grad_u, 0.0),
        grad_u_repeat=grad_u_repeat,
        grad_norm=jnp.linalg.norm(grad.grad_u), residual=grad.residual,
        solver_iterations=grad.iterations.astype(jnp.int32),
        grad_accepted=accepted, step_scale=scale)

  def _no_gradient(self, u_next):
    k = self.family.task_dim
    nan = jnp.full((), jnp.nan, types.float_dtype())
    return u_next, dict(
        return_hat=nan, return_star=nan, gap=nan,
        grad_u=jnp.zeros((k,), types.float_dtype()),
        grad_u_repeat=jnp.full((k,), jnp.nan, types.float_dtype()),
        grad_norm=nan, residual=nan,
        solver_iterations=jnp.zeros((), jnp.int32),
        grad_accepted=jnp.zeros((), bool),
        step_scale=jnp.zeros((), types.float_dtype()))

  def _cem_task(self, s, hat, psi, u, key, history):
    """mb_cem: the gap of this task from real roll-outs of θ̂ and θ*, then
    `adversary.cem_next_task` on every measured gap so far."""
    visited_u, gaps, index = history
    key_hat, key_star, key_cem = jax.random.split(key, 3)
    real_hat, real_star = self._real_returns(s, hat, psi, key_hat, key_star)
    return_hat = jnp.mean(real_hat.first_return)
    return_star = jnp.mean(real_star.first_return)
    gap = return_star - return_hat
    config = self.config
    u_next = adversary.cem_next_task(
        key_cem, visited_u.at[index].set(u), gaps.at[index].set(gap),
        config.cem_quantile, config.cem_uniform_share, config.cem_min_std)
    u_next, metrics = self._no_gradient(u_next.astype(u.dtype))
    return u_next, dict(metrics, return_hat=return_hat,
                        return_star=return_star, gap=gap)

  def next_task(self, s, hat, psi, u, alpha, key, first, history=None):
    """The next task by `config.algo`, after a task's phases (Lin et al.
    2020, arXiv:2006.08875, Algorithm 1, lines 8-12; the module docstring
    lists each algo's rule). Pure; the task iteration's last step.

    Args:
      s: the task's SLBO state after its stages: θ* (`s.agent`), the model
        and its normalisers, the dataset.
      hat: θ̂ = (policy params, value params, state normaliser) after the
        zero-shot phase (unused by mb_unif, mb_gauss, mb_vertices, slbo).
      psi, u: the task trained on, in the family's and in normalised
        coordinates, (k,) each.
      alpha: the task step size α (scalar; admrl only).
      key: PRNG key (the task iteration passes `iteration_keys(state)[3]`).
      first: whether this was the run's first task (bool, may be traced):
        then admrl and mb_cem draw u ~ U[−1, 1]^k, without a gradient.
      history: (visited_u (n_tasks, k), gaps (n_tasks,), iteration index)
        of the run's state, for mb_cem; None for the other algos.
    Returns:
      (u_next (k,), metrics): a dict of the `IterationMetrics` fields
      return_hat, return_star, gap, grad_u, grad_u_repeat, grad_norm,
      residual, solver_iterations, grad_accepted and step_scale (NaN,
      zeros or False where not computed). admrl rejects a non-finite
      gradient (u_next = u, grad_u zeros, grad_accepted False).
    """
    family, algo = self.family, self.config.algo
    key_random, key_grad = jax.random.split(key)
    uniform = lambda: jax.random.uniform(key_random, u.shape, minval=-1.0,
                                         maxval=1.0)
    if algo == 'admrl':
      return jax.lax.cond(
          first, lambda: self._no_gradient(uniform()),
          lambda: self._task_gradient(s, hat, psi, u, alpha, key_grad))
    if algo == 'mb_unif':
      return self._no_gradient(uniform())
    if algo == 'mb_cem':
      return jax.lax.cond(
          first, lambda: self._no_gradient(uniform()),
          lambda: self._cem_task(s, hat, psi, u, key_grad, history))
    if algo in ('mb_gauss', 'mb_vertices'):
      sample = (family.sample_gaussian if algo == 'mb_gauss'
                else family.sample_vertex)
      # Clip again: ψ → u rounding can land a hair outside [−1, 1].
      return self._no_gradient(jnp.clip(
          family.to_u(sample(key_random)), -1.0, 1.0).astype(u.dtype))
    return self._no_gradient(u)  # slbo: one fixed task

  def zero_shot(self, state: AdMRLState, u: jax.Array,
                key: Optional[jax.Array] = None):
    """θ̂(u): the zero-shot phase of the task iteration `state` runs next
    (Lin et al. 2020, arXiv:2006.08875, Algorithm 1, line 4: VirtualTraining
    of a fresh policy on r_ψ with the model and data of `state`), at the
    task u instead of `state.u`.

    The gap L(ψ) = η(θ*, ψ) − η(θ̂(ψ), ψ) whose gradient the adversary
    estimates depends on ψ through this θ̂; finite differences of it in u
    are the ground truth for an ascent step of a run on a learned model.

    Args:
      state: a run's state before a task iteration that is not its first.
      u: the task in normalised coordinates, (k,).
      key: the phase's PRNG key; None uses the key `task_iteration(state,
        first=False)` uses, so that at u = state.u it returns that
        iteration's θ̂ (to rounding under a different batch). Pure;
        vmappable over u and key.
    Returns:
      (policy params, value params, state normaliser) after the zero-shot
      phase.
    """
    carry = self.begin(state.replace(u=jnp.asarray(u, state.u.dtype)),
                       False)
    if key is not None:
      carry = carry.replace(keys=carry.keys.at[2].set(key))
    return self.phase(carry, 0)[0].hat

  # --------------------------------------------------- task iteration
  def end(self, carry: TaskCarry) -> tuple[AdMRLState, IterationMetrics]:
    """Ends a task iteration after its phases: the next task by
    `config.algo` (Algorithm 1, lines 8-12: for admrl, ψ ← Π_Ψ(ψ + α ∂L/∂ψ)
    from θ̂ and θ*), and the run's next state and this iteration's
    metrics."""
    state, first = carry.state, carry.first
    s, u, index = state.slbo, state.u, state.iteration
    psi = self.family.from_u(u)
    u_next, grad_metrics = self.next_task(
        s, carry.hat, psi, u, state.alpha, carry.keys[3], first,
        (state.visited_u, state.gaps, index))
    real_samples = (state.real_samples
                    + carry.n_stages * self.samples_per_stage()
                    + jnp.where(first, 0, self.gradient_samples()))
    new_state = AdMRLState(
        slbo=s, u=u_next, alpha=state.alpha, key=carry.keys[0],
        iteration=index + 1, real_samples=real_samples.astype(jnp.int32),
        visited_u=state.visited_u.at[index].set(u),
        gaps=state.gaps.at[index].set(grad_metrics['gap']))
    last = carry.last
    metrics = IterationMetrics(
        task_index=index, u=u, psi=psi, u_next=u_next,
        model_loss=last.model_loss, virtual_return=last.virtual_return,
        trpo_accepted=last.trpo_accepted, real_samples=new_state.real_samples,
        nonfinite_model=~jnp.isfinite(last.model_loss),
        model_rejected=last.model_rejected,
        dropped_transitions=s.data.dropped - carry.dropped_before,
        **grad_metrics)
    return new_state, metrics

  def task_iteration(self, state: AdMRLState, first
                     ) -> tuple[AdMRLState, IterationMetrics]:
    """One task iteration of Algorithm 1 (see the module docstring) as one
    program: `begin`, the phases of `phase_indices(first)` (a `lax.scan`
    over every phase index, inactive ones skipped by a branch on `first`),
    `end`.

    Args:
      state: the run's state.
      first: whether this is the run's first task (a traced bool; keep it
        unbatched under vmap).
    """
    carry = self.begin(state, first)
    first = carry.first

    def step(carry, index):
      active = jnp.where(index == 0, ~first, index <= carry.n_stages)
      carry, report = jax.lax.cond(
          active, self.phase,
          lambda c, i: (c, jax.tree.map(
              lambda x: jnp.full_like(x, jnp.nan),
              jax.eval_shape(self.phase, c, i)[1])), carry, index)
      if self._on_phase is not None:
        self._report(state.iteration, index, active, carry.n_stages, first,
                     report.virtual_return, report.model_loss,
                     jnp.full((), jnp.nan))
      return carry, None

    carry, _ = jax.lax.scan(step, carry,
                            jnp.arange(self.n_phases, dtype=jnp.int32))
    new_state, metrics = self.end(carry)
    if self._on_phase is not None:
      nan = jnp.full((), jnp.nan)
      self._report(state.iteration, -1, jnp.ones((), bool), carry.n_stages,
                   first, nan, nan, metrics.gap)
    return new_state, metrics


def iteration_keys(state: AdMRLState) -> jax.Array:
  """The keys `AdMRL.task_iteration(state, ...)` splits `state.key` into,
  (4,): the next state's key, the fresh agent's, the phases' (zero-shot
  and SLBO stages) and the next task's."""
  return jax.random.split(state.key, 4)


def run(algorithm: AdMRL, state: AdMRLState):
  """All remaining task iterations, one jitted call each (a convenience;
  the driver adds checkpoints and logging between them)."""
  history = []
  while int(state.iteration) < algorithm.config.n_tasks:
    state, metrics = algorithm.jitted(state, int(state.iteration) == 0)
    history.append(metrics)
  return state, history

