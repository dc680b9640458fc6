"""A*(ψ), the best return reachable on task ψ (Lin et al. 2020,
arXiv:2006.08875, Section 5; the paper does not say how it is estimated).

Two estimates:

- closed form, for families that have one (`lq`: `optimal_return(ψ, 0.0)`,
  the Riccati optimum over all policies with noise-free actions — the
  evaluated mean policies act without noise, so it bounds every A_n in
  expectation);
- a long single-task SLBO run from a fresh model, policy and empty dataset
  on the real environment with a given real-sample budget; A* is the best
  real return of the mean policy evaluated after each of its stages.

Each is a pure function of one task, lifted over an evaluation set with
`lax.map` under one `jax.jit`. Callers cache the values per (family, ψ,
budget) so that every method compared uses the same A* (experiments/).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax.envs.base import TaskFamily
from admrl_jax.evaluation import adaptation
from admrl_jax.rl import slbo as slbo_lib

METHODS = ('closed_form', 'slbo')


def has_closed_form(family: TaskFamily) -> bool:
  """Whether the family knows its optimal return (the `lq` family)."""
  return callable(getattr(family, 'optimal_return', None))


def default_method(family: TaskFamily) -> str:
  """'closed_form' where the family has one (`has_closed_form`), else
  'slbo'."""
  return 'closed_form' if has_closed_form(family) else 'slbo'


def closed_form_astar(family: TaskFamily, psis) -> jax.Array:
  """A*(ψ) of every task, (n_tasks,), from the family's closed form.

  Args:
    family: a family with `optimal_return(psi, action_std)`.
    psis: tasks, (n_tasks, k).
  """
  if not has_closed_form(family):
    raise ValueError(f'{family.name} has no closed-form optimal return; '
                     "use method 'slbo'")
  return _closed_form(family, jnp.asarray(psis, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _closed_form(family, psis):
  # Families hash by identity: one compile per family and set size.
  return jax.vmap(lambda psi: family.optimal_return(psi, 0.0))(psis)


@dataclasses.dataclass(frozen=True)
class OptimumConfig:
  """The long single-task SLBO run that estimates A*.

  Attributes:
    budget: real samples of the run (a multiple of stage_samples).
    stage_samples: real samples per stage (a multiple of the horizon).
    n_inner: VirtualTraining iterations per stage; None keeps the given
      SLBO config's.
    eval_episodes: episodes per evaluation; None: stage_samples // horizon.
  """
  budget: int = 100_000
  stage_samples: int = 2000
  n_inner: Optional[int] = None
  eval_episodes: Optional[int] = None

  def __post_init__(self):
    if self.stage_samples < 1 or self.budget < self.stage_samples or (
        self.budget % self.stage_samples):
      raise ValueError(f'the A* budget ({self.budget}) must be a positive '
                       f'multiple of stage_samples ({self.stage_samples})')
    adaptation.check_optional_counts(self, ('n_inner', 'eval_episodes'))

  @property
  def n_stages(self) -> int:
    """SLBO stages of the run: budget // stage_samples."""
    return self.budget // self.stage_samples


@struct.dataclass
class OptimumResult:
  """Attributes (leading task axis for several tasks):
    astar: best evaluated return, (n_tasks,).
    stage_returns: the mean-policy return after each stage,
      (n_tasks, n_stages).
  """
  astar: jax.Array
  stage_returns: jax.Array


class SLBOOptimum:
  """A* by a long SLBO run per task, from scratch (compiled once).

  The run is `Adaptation` without a zero-shot phase, started from a fresh
  model, agent and empty dataset (`slbo.init`, one per task).

  Attributes:
    estimate_tasks: jitted `(psis (n_tasks, k), keys (n_tasks,)) ->
      OptimumResult`; a key per task, so a task's estimate does not depend
      on which other tasks are estimated with it.
  """

  def __init__(self, family: TaskFamily, slbo_config: slbo_lib.SLBOConfig,
               config: OptimumConfig = OptimumConfig()):
    self.family = family
    self.config = config
    # A single-task run keeps all its data: the dataset holds the budget.
    self.adaptation = adaptation.Adaptation(
        family, dataclasses.replace(slbo_config,
                                    dataset_capacity=config.budget),
        adaptation.AdaptationConfig(
            stage_samples=config.stage_samples,
            stages=tuple(range(1, config.n_stages + 1)), n_zeroshot=0,
            n_inner=config.n_inner, eval_episodes=config.eval_episodes))
    self.slbo_config = self.adaptation.slbo_config
    self.estimate_tasks = jax.jit(self.estimate_many)

  def estimate(self, psi, key) -> OptimumResult:
    """One task ψ (k,): fresh model, policy and data, then n_stages stages."""
    key_init, key_run = jax.random.split(key)
    state = slbo_lib.init(key_init, self.family, self.slbo_config)
    returns = self.adaptation.adapt(state, psi, key_run).stage_returns
    # A diverged stage (NaN) must not hide the others.
    best = jnp.max(jnp.where(jnp.isfinite(returns), returns, -jnp.inf))
    best = jnp.where(jnp.isfinite(best), best, jnp.nan)
    return OptimumResult(astar=best, stage_returns=returns)

  def estimate_many(self, psis, keys) -> OptimumResult:
    """Every task of `psis` (n_tasks, k), one after the other (`lax.map`)."""
    psis = jnp.asarray(psis, jnp.float32)
    return jax.lax.map(lambda x: self.estimate(x[0], x[1]), (psis, keys))
