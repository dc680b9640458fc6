"""Named sizes of a run and the `--set` parser: the driver's side of the
configuration (the library takes configs as frozen dataclasses and knows no
names).

`preset(env, name)` returns the `AdMRLConfig` of `paper` (Lin et al. 2020,
arXiv:2006.08875, Appendix C, and the authors' code: the library's
`admrl_jax.meta.paper.paper_config`), `quick` or `smoke`,
the family overrides (e.g. a shorter horizon) and the task step size α the
paper chose for the family; `baseline_preset(env, name, algo)` the
`MAMLConfig` or `PEARLConfig` of the same names, with their iteration
counts. `apply_overrides` sets dotted config fields from
`--set=field=value` texts; `config_from_dict` rebuilds a config from a run's
config.json.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Tuple

from admrl_jax import envs
from admrl_jax import linalg
from admrl_jax.baselines import maml
from admrl_jax.baselines import pearl
from admrl_jax.config_io import config_from_dict  # pylint: disable=unused-import (re-exported)
from admrl_jax.meta import admrl
from admrl_jax.meta import paper
from admrl_jax.meta import task_gradient as tg
from admrl_jax.models.dynamics import ModelConfig
from admrl_jax.policies.gaussian_mlp import PolicyConfig
from admrl_jax.rl.rollout import RolloutConfig
from admrl_jax.rl.slbo import SLBOConfig
from experiments.common import UsageError, parse_value

NAMES = ('smoke', 'quick', 'paper')

# Appendix C's α per family and first-task nslbo, and the normalised step's
# α: the library's (`admrl_jax.meta.paper`), named here too.
PAPER_ALPHA = paper.PAPER_ALPHA
PAPER_FIRST_NSLBO = paper.PAPER_FIRST_NSLBO
NORMALIZED_ALPHA = paper.NORMALIZED_ALPHA


def default_alpha(env: str, config: admrl.AdMRLConfig) -> float:
  """The task step size α of a run that gives none
  (`admrl_jax.meta.paper.default_alpha` for the config's step rule): the
  paper's α for the family (Appendix C) under the paper's step rule,
  NORMALIZED_ALPHA under the normalised one."""
  return paper.default_alpha(env, config.step_rule)


def preset(env, name: str) -> Tuple[admrl.AdMRLConfig, Dict[str, Any],
                                     float]:
  """(config, family overrides, α) of preset `name` for family `env`, a
  registered name or a `TaskFamily`.

  Family-specific settings come from the family's properties, so a family
  registered from outside the package (`envs.register`) gets fitting
  defaults: the model clips actions to the family's `action_bound` (None:
  unbounded, as on lq), and the smoke preset runs `family.smoke_horizon`
  steps per episode. The first task's nslbo is the paper's for its
  families (Appendix C), else 20; α is `default_alpha`.
  """
  if name not in NAMES:
    raise ValueError(f'unknown preset {name!r}; choose one of '
                     f'{", ".join(NAMES)}')
  family = envs.make(env) if isinstance(env, str) else env
  env = family.name
  action_clip = family.action_bound
  if name == 'paper':
    config, alpha = paper.paper_config(family)  # Appendix C, in the library
    return config, {}, alpha
  if name == 'quick':
    # Minutes on a 2-core CPU for any family (compilation included): every
    # phase of the paper at reduced budgets.
    config = admrl.AdMRLConfig(
        n_tasks=4, n_slbo=2, n_slbo_first=3, gradient_envs=10,
        slbo=SLBOConfig(
            n_inner=5, n_zeroshot=5, n_policy=10, n_rollouts=20,
            dataset_capacity=50_000,
            model=ModelConfig(hidden=(200, 200), n_steps=100,
                              action_clip=action_clip),
            real=RolloutConfig(n_envs=10)),
        task_gradient=tg.TaskGradientConfig(
            linear_solver=linalg.MINRES(iters=50)),
        step_rule='normalized')
    return config, {'horizon': 100}, default_alpha(env, config)
  # smoke: every code path once, in about a minute on lq.
  config = admrl.AdMRLConfig(
      n_tasks=3, n_slbo=1, n_slbo_first=1, gradient_envs=4,
      slbo=SLBOConfig(
          n_inner=2, n_zeroshot=2, n_policy=3, n_rollouts=8,
          dataset_capacity=5_000,
          model=ModelConfig(hidden=(32, 32), n_steps=20,
                            action_clip=action_clip),
          real=RolloutConfig(n_envs=4)),
      task_gradient=tg.TaskGradientConfig(
          linear_solver=linalg.MINRES(iters=20)),
      step_rule='normalized')
  return (config, {'horizon': family.smoke_horizon},
          default_alpha(env, config))


# ------------------------------------------------------------ baselines
# Meta-iterations (MAML) and training iterations (PEARL) of the presets.
# Paper: oyster's num_iterations (configs/default.py), and as many for MAML
# (Lin et al. 2020 do not give their baselines' budgets).
BASELINE_ITERATIONS = {'smoke': 3, 'quick': 20, 'paper': 500}


def baseline_preset(env, name: str, algo: str):
  """(config, family overrides, n_iterations) of preset `name` of the
  meta-RL baseline `algo` ('maml': `MAMLConfig`, 'pearl': `PEARLConfig`)
  for family `env` (a registered name or a `TaskFamily`).

  The family overrides (the horizon) are those of the AdMRL preset of the
  same name, so that a study's methods share their evaluation tasks and
  budgets. 'paper' is the baseline's own defaults (docs/maml.md,
  docs/pearl.md: the authors' codes) with BASELINE_ITERATIONS['paper']
  iterations; 'quick' and 'smoke' shrink the batches and networks.
  """
  if name not in NAMES:
    raise ValueError(f'unknown preset {name!r}; choose one of '
                     f'{", ".join(NAMES)}')
  family = envs.make(env) if isinstance(env, str) else env
  _, overrides, _ = preset(family, name)
  horizon = overrides.get('horizon', family.horizon)
  n_iterations = BASELINE_ITERATIONS[name]
  if algo == 'maml':
    if name == 'paper':
      return maml.MAMLConfig(), overrides, n_iterations
    if name == 'quick':
      config = maml.MAMLConfig(meta_batch_size=10, rollouts_per_task=10)
    else:
      config = maml.MAMLConfig(meta_batch_size=2, rollouts_per_task=2,
                               policy=PolicyConfig(hidden=(16, 16)))
    return config, overrides, n_iterations
  if algo == 'pearl':
    if name == 'paper':
      return pearl.PEARLConfig(), overrides, n_iterations
    if name == 'quick':
      # oyster's proportions (400 prior + 600 extra steps at horizon 200)
      # at two and three episodes.
      config = pearl.PEARLConfig(
          num_train_tasks=20, hidden=(64, 64), encoder_hidden=(64, 64),
          num_initial_steps=2 * horizon, num_steps_prior=2 * horizon,
          num_extra_rl_steps_posterior=3 * horizon,
          replay_capacity=50 * horizon, num_train_steps_per_itr=200,
          meta_batch=8, batch_size=128, embedding_batch_size=64)
    else:
      config = pearl.PEARLConfig(
          num_train_tasks=4, latent_size=2, hidden=(16, 16),
          encoder_hidden=(16,), num_initial_steps=2 * horizon,
          num_tasks_sample=2, num_steps_prior=horizon,
          num_steps_posterior=2 * horizon,
          num_extra_rl_steps_posterior=horizon,
          replay_capacity=20 * horizon, num_train_steps_per_itr=5,
          meta_batch=3, batch_size=16, embedding_batch_size=10)
    return config, overrides, n_iterations
  raise ValueError(f'unknown baseline {algo!r}; choose maml or pearl')


def apply_overrides(config, overrides: Dict[str, str]):
  """Sets dotted fields of a nested frozen dataclass from strings.

  `{'slbo.trpo.max_kl': '0.02', 'task_gradient.solver': 'per_dimension'}`;
  'task_gradient.preset' (`task_gradient.preset`: 'paper', 'authors')
  replaces the whole task-gradient section before the other fields are set;
  values are parsed as the field's declared type (int, float, bool, str,
  tuple of ints such as '256,256'; 'none' only for an Optional field);
  floats must be finite. 'task_gradient.linear_solver' takes a solver
  value as `linalg.parse` reads it: a kind ('cg_normal', the paper's
  damped CG; 'minres', 'gmres', 'cg', 'dense') or a kind with keyword
  fields ('cg_normal(iters=50)'); the solver's own fields are set as
  'task_gradient.linear_solver.iters' etc., after the value itself
  whatever their order (a field is set after any field whose dotted name
  is a prefix of its own). Raises ValueError naming the dotted field on an
  unknown name, a value of the wrong type, or one its config refuses (each
  config checks its ranges in `__post_init__`), so a bad value never
  reaches a compiled program.
  """
  overrides = dict(overrides)
  # A named estimator replaces the whole section first, so that other
  # task_gradient.* values refine it whatever their order.
  if 'task_gradient.preset' in overrides and hasattr(config,
                                                     'task_gradient'):
    name = overrides.pop('task_gradient.preset').strip()
    try:
      config = dataclasses.replace(config, task_gradient=tg.preset(name))
    except ValueError as e:
      raise ValueError(f'task_gradient.preset: {e}') from None
  # A value (e.g. task_gradient.linear_solver=gmres) before its own fields
  # (task_gradient.linear_solver.iters=50), whatever the order given.
  def enclosing_first(item):
    return not any(other.startswith(item[0] + '.') for other in overrides)
  for dotted, text in sorted(overrides.items(), key=enclosing_first):
    config = _set(config, dotted.split('.'), text, dotted)
  return config


def apply_sets(config, sets):
  """`apply_overrides(config, sets)` for a script's --set flags: its
  ValueError becomes a UsageError naming --set."""
  try:
    return apply_overrides(config, sets)
  except (ValueError, TypeError) as e:
    raise UsageError(f'--set: {e}') from None


def _set(obj, path, text, dotted):
  if not dataclasses.is_dataclass(obj):
    raise ValueError(f'{dotted}: {path[0]!r} is not a config section')
  names = {f.name for f in dataclasses.fields(obj)}
  if path[0] not in names:
    hint = ''
    if (isinstance(obj, tg.TaskGradientConfig)
        and path[0] in tg.LEGACY_SOLVER_FIELDS):
      hint = (' (the solver\'s fields moved into its value: set '
              f'task_gradient.linear_solver.'
              f'{tg.LEGACY_SOLVER_FIELDS[path[0]]}, after choosing the solver '
              'with e.g. task_gradient.linear_solver=cg_normal)')
    elif isinstance(obj, linalg.Solver):
      hint = (f' of the {type(obj).__name__} solver (choose another with '
              'task_gradient.linear_solver=KIND, KIND one of '
              f'{", ".join(linalg.METHODS)})')
    raise ValueError(f'{dotted}: unknown field {path[0]!r}{hint}; valid: '
                     f'{", ".join(sorted(n for n in names if n != "kind"))}')
  if isinstance(obj, linalg.Solver) and path[0] == 'kind':
    raise ValueError(f'{dotted}: a solver\'s kind is not a field; choose '
                     'the solver itself, e.g. '
                     'task_gradient.linear_solver=gmres')
  current = getattr(obj, path[0])
  if len(path) > 1:
    value = _set(current, path[1:], text, dotted)
  else:
    value = _parse(typing.get_type_hints(type(obj))[path[0]], text, dotted)
  try:
    return dataclasses.replace(obj, **{path[0]: value})
  except (ValueError, TypeError) as e:
    if str(e).startswith(dotted):
      raise
    raise ValueError(f'{dotted}: {e}') from None


def field_type(hint) -> Tuple[Any, bool]:
  """(base type, optional) of a config field's annotation, e.g.
  Optional[int] → (int, True), Tuple[int, ...] → (tuple, False)."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  optional = typing.get_origin(hint) is typing.Union and len(args) == 1
  if optional:
    hint = args[0]
  return typing.get_origin(hint) or hint, optional


def _parse(hint, text, dotted):
  """`text` as a value of the field annotated `hint` (`common.parse_value`;
  'none' for an Optional field); ValueError naming `dotted`."""
  base, optional = field_type(hint)
  text = text.strip()
  name = getattr(base, '__name__', str(base))
  if isinstance(base, type) and issubclass(base, linalg.Solver):
    try:
      return linalg.parse(text)
    except ValueError as e:
      raise ValueError(f'{dotted}: {e}') from None
  try:
    if text.lower() == 'none':
      if optional:
        return None
      raise ValueError(text)
    return parse_value(base, text)
  except ValueError:
    raise ValueError(f'{dotted}: cannot parse {text!r} as '
                     f'{"optional " if optional else ""}{name}'
                     f'{" (finite)" if base is float else ""}') from None
  except TypeError:
    raise ValueError(f'{dotted}: a {name} cannot be set from a '
                     'flag') from None
