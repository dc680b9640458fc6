"""The paper's configuration of AdMRL for a task family (Lin et al. 2020,
arXiv:2006.08875, Appendix C), so that the library alone, without the
driver's presets, can run the paper's algorithm at the paper's sizes.

    config, alpha = paper.paper_config(envs.make('hopper2d'))
    config, alpha = paper.paper_config(family, as_written=True)

`AdMRLConfig()` holds the paper's SLBO sizes (`SLBOConfig()`: Appendix C
and the authors' code) but not what Appendix C chooses per family — the
task step size α and the first task's nslbo — nor the model's action clip
(the family's bound). `paper_config` adds those. By default it keeps this
library's task gradient (the estimator validated against ground truth,
docs/gradient_fidelity.md) with the normalised ascent step
clip(u + α g/‖g‖, −1, 1) and α = `NORMALIZED_ALPHA`; `as_written=True`
gives the paper's estimator (`task_gradient.preset('paper')`: Eq. 7's
REINFORCE Hessian, Section 4.3's damped normal-equation CG) and its step
clip(u + α g, −1, 1) with Appendix C's α.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

from admrl_jax.envs.base import TaskFamily
from admrl_jax.meta import admrl
from admrl_jax.meta import task_gradient as tg
from admrl_jax.models.dynamics import ModelConfig
from admrl_jax.rl.slbo import SLBOConfig

# Appendix C: α per family under the paper's step rule (per-sample sums,
# `task_gradient.preset('paper')`), and the first task's nslbo (others 20).
PAPER_ALPHA = {'hopper2d': 2.0, 'walker2d': 8.0, 'ant2d': 4.0, 'ant3d': 4.0,
               'ant2d_ood': 4.0, 'halfcheetah_highdim': 16.0, 'lq': 1.0,
               'lq_highdim': 1.0}
PAPER_FIRST_NSLBO = {'hopper2d': 10, 'walker2d': 10}
# α of the normalised ascent step (step_rule='normalized'): a step of half a
# box half-width per task, so that a run crosses the box in about four tasks
# instead of jumping to a corner (the paper's rule saturated 96% of the
# first study's steps, docs/STUDY.md).
NORMALIZED_ALPHA = 0.5


def default_alpha(family_name: str, step_rule: str) -> float:
  """The task step size α for `step_rule`: Appendix C's α for the family
  (1.0 for a family the paper does not have) under the paper's rule,
  `NORMALIZED_ALPHA` under the normalised one. The paper's α values assume
  per-sample sums (`TaskGradientConfig.normalization` 'per_sample' or
  'authors'); with 'per_episode' sums the gradient is T times larger."""
  if step_rule == 'paper':
    return PAPER_ALPHA.get(family_name, 1.0)
  return NORMALIZED_ALPHA


def paper_config(family: TaskFamily, as_written: bool = False
                 ) -> Tuple[admrl.AdMRLConfig, float]:
  """(config, α): AdMRL at the paper's sizes for `family` (Appendix C).

  20 task iterations of nslbo = 3 SLBO stages (the first task's nslbo 10 on
  Hopper2D and Walker2D, else 20), SLBO at `SLBOConfig()`'s sizes with the
  model clipping actions to `family.action_bound` (None: unbounded).

  Args:
    family: the task family (its `name` picks Appendix C's values).
    as_written: False (default): this library's validated task gradient and
      the normalised step, α = NORMALIZED_ALPHA. True: the paper's
      estimator (`task_gradient.preset('paper')`) and step rule with
      Appendix C's α for the family.
  Returns:
    The `AdMRLConfig` and the task step size α (an argument of
    `AdMRL.init`, not a config field, so that a sweep can vmap it).
  Raises:
    TypeError: `family` is not a `TaskFamily`.
  """
  if not isinstance(family, TaskFamily):
    raise TypeError(f'paper_config needs a TaskFamily (envs.make(name)), '
                    f'got {type(family).__name__}')
  config = admrl.AdMRLConfig(
      n_tasks=20, n_slbo=3,
      n_slbo_first=PAPER_FIRST_NSLBO.get(family.name, 20),
      slbo=SLBOConfig(model=ModelConfig(action_clip=family.action_bound)),
      step_rule='normalized')
  if as_written:
    config = dataclasses.replace(config, task_gradient=tg.preset('paper'),
                                 step_rule='paper')
  return config, default_alpha(family.name, config.step_rule)
