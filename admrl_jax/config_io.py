"""Run records to objects: the config (`AdMRLConfig`, or a baseline's
`MAMLConfig` / `PEARLConfig`) and the task family of a run's config.json
(written by `experiments.run` and `admrl_jax.train`)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict

from admrl_jax import linalg
from admrl_jax.meta import admrl
from admrl_jax.meta import task_gradient


def config_from_dict(values: Dict[str, Any],
                     like=admrl.AdMRLConfig(), strict: bool = False,
                     _where: str = ''):
  """Rebuilds a config from `dataclasses.asdict`-style values (as stored in
  a run's config.json): nested sections recurse, lists become tuples, and a
  function-valued field (an activation) must name the default's function.
  Fields absent from `values` keep `like`'s values. A linear solver
  (`linalg.Solver`) is rebuilt from its record by `linalg.from_dict` (its
  `kind` picks the class); a task-gradient section written before solvers
  were values (flat linear_solver='cg_normal', iters, tol, damping, ...)
  is upgraded first (`task_gradient.upgrade_record`).

  Raises:
    ValueError: a function other than the default's; a solver record that
      does not rebuild (named with its dotted path); with `strict`, a key
      that is not a field (named with its dotted path), or a section that
      is not a mapping.
  """
  if not isinstance(values, dict):
    raise ValueError(f'{_where or "config"}: expected a mapping of fields, '
                     f'got {type(values).__name__}')
  if isinstance(like, task_gradient.TaskGradientConfig):
    values = task_gradient.upgrade_record(values)
  if strict:
    names = {f.name for f in dataclasses.fields(like)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(
          'unknown field(s) ' + ', '.join(f'{_where}{k}' for k in unknown)
          + f' of {type(like).__name__}; valid: {", ".join(sorted(names))}')
  kwargs = {}
  for field in dataclasses.fields(like):
    if field.name not in values:
      continue
    default, value = getattr(like, field.name), values[field.name]
    if isinstance(default, linalg.Solver):
      try:
        kwargs[field.name] = linalg.from_dict(value)
      except (ValueError, TypeError) as e:
        raise ValueError(f'{_where}{field.name}: {e}') from None
    elif dataclasses.is_dataclass(default):
      kwargs[field.name] = config_from_dict(value, default, strict,
                                            f'{_where}{field.name}.')
    elif callable(default):
      name = getattr(default, '__name__', None)
      if value != name:
        raise ValueError(f'{field.name}: cannot rebuild function {value!r}')
    elif isinstance(value, list):
      kwargs[field.name] = tuple(value)
    else:
      kwargs[field.name] = value
  return dataclasses.replace(like, **kwargs)


# The meta-RL baselines the driver runs besides Algorithm 1 and its
# model-based baselines (`admrl.ALGOS`): their runs record `algo` at the top
# of config.json and their own config in its `config` section.
BASELINE_ALGOS = ('maml', 'pearl')


def algo_of(record) -> str:
  """The algorithm of a run record: its top-level `algo` (a baseline's run),
  else its config's (`AdMRLConfig.algo`)."""
  return record.get('algo') or record['config'].get('algo', 'admrl')


def default_config(algo: str):
  """The default config of `algo`: `MAMLConfig()`, `PEARLConfig()`, or
  `AdMRLConfig(algo=algo)` for the model-based algorithms.

  Raises:
    ValueError: an unknown algorithm.
  """
  if algo == 'maml':
    from admrl_jax.baselines import maml  # pylint: disable=g-import-not-at-top
    return maml.MAMLConfig()
  if algo == 'pearl':
    from admrl_jax.baselines import pearl  # pylint: disable=g-import-not-at-top
    return pearl.PEARLConfig()
  if algo not in admrl.ALGOS:
    raise ValueError(f'unknown algorithm {algo!r}; valid: '
                     f'{", ".join(admrl.ALGOS + BASELINE_ALGOS)}')
  return admrl.AdMRLConfig(algo=algo)


def family_from_record(record, env=None):
  """The task family of a run record (config.json): `envs.make` of its
  family with its horizon, physics (pipeline, frame skip), --family_set
  fields and, for the run's own family, its calibration (Cheetah-Highdim's
  μ, σ); records written before a key existed simply lack it.

  Args:
    record: the run record (a dict, as `training.resolve` writes it).
    env: another registered family to build with the run's horizon and
      physics (an evaluation family such as ant2d_ood); None: the run's.
  Raises:
    ValueError, TypeError: `envs.make` refuses the name or a field.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  overrides = {name: record[name] for name in ('pipeline', 'frame_skip')
               if record.get(name) is not None}
  overrides.update({name: tuples_from_json(value) for name, value in
                    record.get('family_set', {}).items()})
  calibration = record.get('calibration') if env is None else None
  if calibration:
    overrides['state_mean'] = np.asarray(calibration['state_mean'],
                                         np.float32)
    overrides['state_std'] = np.asarray(calibration['state_std'], np.float32)
  return envs.make(record['env'] if env is None else env,
                   horizon=record['horizon'], **overrides)


def tuples_from_json(value):
  """JSON lists back to (nested) tuples: family fields are hashable."""
  if isinstance(value, list):
    return tuple(tuples_from_json(v) for v in value)
  return value


def read_run(workdir: str, baselines: bool = False):
  """(record, config) of the run directory `workdir` (its config.json):
  the `AdMRLConfig`, or with `baselines` a baseline run's `MAMLConfig` or
  `PEARLConfig` (rebuilt strictly: every field must be one of its own).
  Turns float64 on when the run computed in it.

  Raises:
    FileNotFoundError: no config.json there.
    ValueError: a baseline's run without `baselines` (the Python API's
      `admrl_jax.load` reads AdMRL runs), or a baseline's config that does
      not rebuild.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no run (no config.json)')
  with open(path) as f:
    record = json.load(f)
  if record.get('x64'):
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_enable_x64', True)  # the run's dtypes
  algo = algo_of(record)
  if algo in BASELINE_ALGOS:
    if not baselines:
      raise ValueError(
          f'{workdir} holds a {algo} run (admrl_jax.baselines), not an AdMRL '
          'one: experiments.evaluate reads it, and '
          'experiments.workdir.load_config / load_state rebuild it')
    return record, config_from_dict(record['config'], default_config(algo),
                                    strict=True)
  return record, config_from_dict(record['config'])


def members(record):
  """The (seed, α) pairs of a run, in batch order (seeds outer)."""
  return [(seed, alpha) for seed in record['seeds']
          for alpha in record['alphas']]
