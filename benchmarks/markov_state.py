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

import argparse
import datetime
import json
import os
import sys
import time

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results', 'markov_state.json')


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='hopper2d with the generalized and spring pipelines')
  p.add_argument('--families', default=None,
                 help='comma list (default hopper2d,ant2d; hopper2d with '
                 '--quick)')
  p.add_argument('--pipelines', default=None,
                 help='comma list (default: all four; generalized,spring '
                 'with --quick)')
  p.add_argument('--n_envs', type=int, default=8)
  p.add_argument('--n_steps', type=int, default=100)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default=DEFAULT_OUT)
  return p.parse_args(argv)


def main(argv=None):
  args = _parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax.envs import brax_family  # pylint: disable=g-import-not-at-top

  families = (args.families.split(',') if args.families else
              ['hopper2d'] if args.quick else ['hopper2d', 'ant2d'])
  pipelines = (args.pipelines.split(',') if args.pipelines else
               ['generalized', 'spring'] if args.quick else
               list(envs.PIPELINES))
  if args.n_envs < 1 or args.n_steps < 2:
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
        family, jax.random.key(args.seed), args.n_envs, args.n_steps))
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
                n_envs=args.n_envs, n_steps=args.n_steps, seed=args.seed,
                units='RMS next-observation gap / std of the state change, '
                'per dimension'),
      rows=rows)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
