"""Is the observation a Markov state of the simulator? Per family and pipeline.

A learned dynamics model sees observations only, so its one-step error is
bounded below by how much the next observation depends on simulator state
the observation omits. For each (family, pipeline) row this runs
`admrl_jax.envs.brax_family.markov_error`: random actions, and at every step
a copy of the simulator rebuilt from the observation's (qpos, qvel) alone,
stepped with the same action. It reports the per-dimension RMS gap between
the two next observations over the standard deviation of the state change
(the units of the model's normalised loss): its mean and max over
dimensions. 0 means Markov.

Usage:
  PYTHONPATH=. python benchmarks/markov_state.py            # hopper2d, ant2d × 4 pipelines
  PYTHONPATH=. python benchmarks/markov_state.py --quick    # hopper2d × generalized, spring
  PYTHONPATH=. python benchmarks/markov_state.py --families=walker2d --pipelines=spring
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time

from absl import app
from absl import flags

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results', 'markov_state.json')


_QUICK = flags.DEFINE_bool(
    'quick', False, 'hopper2d with the generalized and spring pipelines.')
_FAMILIES = flags.DEFINE_string(
    'families', None, 'Comma list (default hopper2d,ant2d; hopper2d with '
    '--quick).')
_PIPELINES = flags.DEFINE_string(
    'pipelines', None, 'Comma list (default: all four; generalized,spring '
    'with --quick).')
_N_ENVS = flags.DEFINE_integer('n_envs', 8, 'Parallel environments.')
_N_STEPS = flags.DEFINE_integer('n_steps', 100, 'Steps per environment.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_OUT = flags.DEFINE_string('out', DEFAULT_OUT, 'Where to write the JSON '
                           'results.')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax.envs import brax_family  # pylint: disable=g-import-not-at-top

  families = (_FAMILIES.value.split(',') if _FAMILIES.value else
              ['hopper2d'] if _QUICK.value else ['hopper2d', 'ant2d'])
  pipelines = (_PIPELINES.value.split(',') if _PIPELINES.value else
               ['generalized', 'spring'] if _QUICK.value else
               list(envs.PIPELINES))
  if _N_ENVS.value < 1 or _N_STEPS.value < 2:
    sys.exit('error: need --n_envs >= 1 and --n_steps >= 2')
  # Built up front, so that a bad name fails (with the registry's message
  # listing the valid ones) before anything compiles.
  try:
    grid = [(name, pipeline, envs.make(name, pipeline=pipeline))
            for name in families for pipeline in pipelines]
  except ValueError as e:
    sys.exit(f'error: {e}')

  rows = []
  for name, pipeline, family in grid:
    t0 = time.perf_counter()
    err = np.asarray(brax_family.markov_error(
        family, jax.random.key(_SEED.value), _N_ENVS.value, _N_STEPS.value))
    row = dict(family=name, pipeline=pipeline,
               default=pipeline == envs.DEFAULT_PIPELINE,
               frame_skip=family.frame_skip, dt=family.dt,
               mean_error=float(err.mean()), max_error=float(err.max()),
               per_dim=[round(float(e), 4) for e in err],
               seconds=round(time.perf_counter() - t0, 1))
    rows.append(row)
    print(f'{name:22s} {pipeline:12s} mean {row["mean_error"]:.3g} '
          f'max {row["max_error"]:.3g}', flush=True)
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), jax_version=jax.__version__,
                n_envs=_N_ENVS.value, n_steps=_N_STEPS.value, seed=_SEED.value,
                units='RMS next-observation gap / std of the state change, '
                'per dimension'),
      rows=rows)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
