"""Test-time adaptation of a trained model to evaluation tasks (Section 5).

For one trained model + dataset (the `SLBOState` of one run member) and an
evaluation task ψ:

    θ ← fresh policy/value                                  (`SLBO.new_task`)
    θ ← VirtualTraining(nzeroshot) on r_ψ  → A0(ψ)           zero real samples
    for stage 1 … max(stages):
        collect `stage_samples` real samples (π_θ + OU noise) → D
        VirtualTraining(ninner)             → A_n(ψ), n = stage × stage_samples

A0 and A_n are mean real returns of the mean policy (no exploration noise)
over `eval_episodes` fresh episodes. The model and data each task adapts are
the trained ones: tasks do not see each other's samples.

All tasks of an evaluation set run in one compiled program, a `lax.map` over
tasks (a `vmap` would copy the large dataset once per task). Inside it the
zero-shot phase and the stages are one `lax.scan` over phases sharing one
VirtualTraining iteration (`SLBO.phase_scan`, which Algorithm 1's task
iteration runs too: phase 0 skips the collection and runs nzeroshot
iterations, the others ninner), so the program holds one copy of the model
fit, the virtual roll-out and TRPO instead of two — about half the compile.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax.envs.base import TaskFamily
from admrl_jax.rl import slbo as slbo_lib


def check_optional_counts(config, names) -> None:
  """ValueError naming the first field of `names` that is neither None nor
  an integer >= 1 (the optional overrides of the evaluation configs)."""
  for name in names:
    value = getattr(config, name)
    if value is not None and value < 1:
      raise ValueError(f'{name} must be >= 1 or None, got {value}')


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
  """How an evaluation task is adapted to.

  Attributes:
    stage_samples: real samples collected per SLBO stage (a multiple of the
      horizon: stage_samples // horizon environments × one episode each).
    stages: A_n is measured after each of these numbers of stages, i.e. at
      n = stages × stage_samples real samples (default 2000, 4000, 6000).
    n_zeroshot, n_inner: VirtualTraining iterations of the zero-shot phase
      (0 skips it: A0 is then the fresh policy's return) and of each stage;
      None keeps the trained run's values.
    eval_episodes: fresh real episodes of the mean policy per measured
      return; None uses stage_samples // horizon (what `SLBO.evaluate` of
      the stage config would run).
  """
  stage_samples: int = 2000
  stages: Tuple[int, ...] = (1, 2, 3)
  n_zeroshot: Optional[int] = None
  n_inner: Optional[int] = None
  eval_episodes: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, 'stages', tuple(int(s) for s in self.stages))
    if self.stage_samples < 1:
      raise ValueError(f'stage_samples must be >= 1, got {self.stage_samples}')
    if not self.stages or any(s < 1 for s in self.stages):
      raise ValueError(f'stages must be a non-empty tuple of ints >= 1, got '
                       f'{self.stages}')
    if list(self.stages) != sorted(set(self.stages)):
      raise ValueError(f'stages must be strictly increasing, got {self.stages}')
    if self.n_zeroshot is not None and self.n_zeroshot < 0:
      raise ValueError(f'n_zeroshot must be >= 0 or None, got '
                       f'{self.n_zeroshot}')
    check_optional_counts(self, ('n_inner', 'eval_episodes'))

  @property
  def budgets(self) -> Tuple[int, ...]:
    """The real-sample counts n of the A_n, (n_budgets,)."""
    return tuple(s * self.stage_samples for s in self.stages)

  @property
  def n_stages(self) -> int:
    """SLBO stages an adaptation runs (the last of `stages`)."""
    return self.stages[-1]

  @classmethod
  def from_budgets(cls, budgets, stage_samples: int = 2000,
                   **kwargs) -> 'AdaptationConfig':
    """The config measuring A_n at the sample counts `budgets`, each a
    positive multiple of `stage_samples`; ValueError otherwise."""
    budgets = tuple(budgets)
    if stage_samples < 1:
      raise ValueError(f'stage_samples must be >= 1, got {stage_samples}')
    bad = [b for b in budgets if b < 1 or b % stage_samples]
    if bad:
      raise ValueError(f'budgets must be positive multiples of stage_samples='
                       f'{stage_samples}, got {list(budgets)}')
    return cls(stage_samples=stage_samples,
               stages=tuple(b // stage_samples for b in budgets), **kwargs)


def stage_slbo_config(family: TaskFamily, config: slbo_lib.SLBOConfig,
                      stage_samples: int, n_inner: Optional[int] = None,
                      n_zeroshot: Optional[int] = None,
                      dataset_capacity: Optional[int] = None
                      ) -> slbo_lib.SLBOConfig:
  """A copy of `config` whose SLBO stage collects exactly `stage_samples`
  real samples: stage_samples // horizon environments, one episode each.

  Raises:
    ValueError: stage_samples is not a positive multiple of the horizon.
  """
  if stage_samples < 1 or stage_samples % family.horizon:
    raise ValueError(
        f'stage_samples={stage_samples} must be a positive multiple of the '
        f'{family.name} horizon {family.horizon} (each stage collects whole '
        'episodes)')
  real = dataclasses.replace(config.real,
                             n_envs=stage_samples // family.horizon,
                             n_steps=None)
  changes = dict(real=real)
  if n_inner is not None:
    changes['n_inner'] = n_inner
  if n_zeroshot:  # 0 (no zero-shot phase) is not an SLBOConfig value
    changes['n_zeroshot'] = n_zeroshot
  if dataset_capacity is not None:
    changes['dataset_capacity'] = dataset_capacity
  return dataclasses.replace(config, **changes)


@struct.dataclass
class AdaptationResult:
  """Real returns of the mean policy while adapting.

  Attributes (leading task axis when several tasks are evaluated):
    a0: zero-shot return A0(ψ), (n_tasks,).
    an: A_n(ψ) at the config's budgets, (n_tasks, n_budgets).
    stage_returns: the return after every stage, (n_tasks, n_stages).
    a0_se, an_se: the standard errors of a0 and an over the evaluation
      episodes (sample s.d. / √eval_episodes; the noise of the measurement
      alone, not of the adaptation), shapes of a0 and an.
    virtual_returns: the model's return of the policy after each phase
      (zero-shot, then every stage: the virtual return of the phase's last
      TRPO step, `VirtualMetrics.virtual_return`), (n_tasks, 1 +
      n_stages); NaN for a zero-shot phase of no iterations. Beside the
      real returns it shows how much the policy exploits the model's
      errors.
  """
  a0: jax.Array
  an: jax.Array
  stage_returns: jax.Array
  a0_se: jax.Array
  an_se: jax.Array
  virtual_returns: jax.Array


class Adaptation:
  """The compiled adaptation of one family, trained config and eval config.

  Attributes:
    engine: the SLBO engine whose stages collect `stage_samples`.
    n_zeroshot, n_inner: VirtualTraining iterations of phase 0 and stages.
    eval_episodes: real episodes per measured return.
    evaluate_tasks: jitted `(state, psis (n_tasks, k), key) ->
      AdaptationResult`; one program for every member and evaluation set of
      the same size.
  """

  def __init__(self, family: TaskFamily, slbo_config: slbo_lib.SLBOConfig,
               config: AdaptationConfig = AdaptationConfig(),
               networks=None):
    """`networks`: the run's `networks.Networks` (None: the authors')."""
    self.family = family
    self.config = config
    self.slbo_config = stage_slbo_config(
        family, slbo_config, config.stage_samples, config.n_inner,
        config.n_zeroshot)
    self.engine = slbo_lib.SLBO(family, self.slbo_config, networks)
    self.n_zeroshot = (self.slbo_config.n_zeroshot
                       if config.n_zeroshot is None else config.n_zeroshot)
    self.n_inner = self.slbo_config.n_inner
    self.eval_episodes = (self.slbo_config.real.n_envs
                          if config.eval_episodes is None
                          else config.eval_episodes)
    self._evaluate = slbo_lib.make_evaluator(family, self.eval_episodes,
                                             self.engine.networks.policy)
    self.evaluate_tasks = jax.jit(self.adapt_tasks)

  @property
  def budgets(self) -> Tuple[int, ...]:
    """The real-sample counts n of the A_n (`AdaptationConfig.budgets`)."""
    return self.config.budgets

  def adapt(self, state: slbo_lib.SLBOState, psi, key) -> AdaptationResult:
    """One task ψ (k,): fresh agent, zero-shot, then the SLBO stages
    (`SLBO.phase_scan`), the mean policy's real return measured after each
    phase with that phase's observer key."""
    psi = jnp.asarray(psi, jnp.float32)
    key_agent, key_phases = jax.random.split(key)
    s = self.engine.new_task(state, key_agent)

    def mean_return(s, metrics, phase):
      del metrics
      r = self._evaluate(s, psi, phase.key).first_return
      se = (jnp.std(r, ddof=1) / jnp.sqrt(r.shape[0]) if r.shape[0] > 1
            else jnp.full((), jnp.nan, r.dtype))
      return jnp.mean(r), se

    _, metrics, (returns, se) = self.engine.phase_scan(
        s, psi, key_phases, 1 + self.config.n_stages,
        n_zeroshot=self.n_zeroshot, observe=mean_return)
    stages = jnp.asarray(self.config.stages)
    # The last iteration each phase ran (phase 0: n_zeroshot, else n_inner).
    last = jnp.asarray([self.n_zeroshot - 1]
                       + [self.n_inner - 1] * self.config.n_stages)
    virtual = metrics.virtual_return[jnp.arange(last.shape[0]),
                                     jnp.maximum(last, 0)]
    virtual = jnp.where(last >= 0, virtual, jnp.nan)
    return AdaptationResult(a0=returns[0], an=returns[stages],
                            stage_returns=returns[1:], a0_se=se[0],
                            an_se=se[stages], virtual_returns=virtual)

  def adapt_tasks(self, state: slbo_lib.SLBOState, psis,
                  key) -> AdaptationResult:
    """Every task of `psis` (n_tasks, k) from the same trained state, one
    after the other (`lax.map`); task i uses fold_in(key, i)."""
    psis = jnp.asarray(psis, jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(psis.shape[0]))
    return jax.lax.map(lambda x: self.adapt(state, x[0], x[1]), (psis, keys))
