r"""Real roll-outs of a family: `python -m experiments.rollout --env=<family>`.

A look at a family before training on it: builds the task family,
calibrates it (Cheetah-Highdim's μ, σ), collects a batch of real transitions
of a uniformly random policy with Ornstein–Uhlenbeck exploration on task ψ,
stores them in a dataset, and prints what it collected (throughput,
returns, terminations). With --workdir it also writes `rollout.json`. The
training driver is `experiments.run`.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import fileio
from admrl_jax.models import dataset
from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig
from experiments.common import UsageError, build_family, resolve_psi
# pylint: enable=g-import-not-at-top,wrong-import-position

PRESETS = {
    # name: parallel environments and horizon (control steps each).
    'smoke': dict(n_envs=4, horizon=50),
    'quick': dict(n_envs=16, horizon=200),
    'paper': dict(n_envs=50, horizon=200),  # 10 000 samples, authors' code
}

_ENV = flags.DEFINE_string('env', 'halfcheetah_highdim', 'Task family.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_PRESET = flags.DEFINE_enum('preset', 'paper', list(PRESETS),
                            'Size preset; paper = the paper values.')
_PIPELINE = flags.DEFINE_string(
    'pipeline', None, 'Brax physics pipeline (generalized, positional, '
    'spring, mjx); default: the family default.')
_PSI = flags.DEFINE_string(
    'psi', None, 'Task ψ as a comma list (default: u = 0.3 in every '
    'coordinate, the paper\'s first task).')
_N_ENVS = flags.DEFINE_integer('n_envs', None, 'Override the preset.')
_HORIZON = flags.DEFINE_integer('horizon', None, 'Override the preset.')
_FRAME_SKIP = flags.DEFINE_integer('frame_skip', None,
                                   'Simulator steps per control step.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where to write rollout.json (optional).')


def main(argv):
  del argv
  try:
    summary = run()
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary))


def run() -> dict:
  preset = PRESETS[_PRESET.value]
  n_envs = _N_ENVS.value if _N_ENVS.value is not None else preset['n_envs']
  if n_envs < 1:
    raise UsageError(f'--n_envs must be >= 1, got {n_envs}')
  horizon = _HORIZON.value if _HORIZON.value is not None else preset['horizon']
  start = time.time()
  family = build_family(_ENV.value, _PIPELINE.value, horizon, _FRAME_SKIP.value)
  key = jax.random.key(_SEED.value)
  key_calibrate, key_collect = jax.random.split(key)
  psi = resolve_psi(family, _PSI.value)
  print(f'[{time.time() - start:6.1f}s] family {family.name}: k={family.task_dim}, '
        f'obs {family.obs_size}, action {family.action_size}, dt {family.dt:.4f}s,'
        f' horizon {family.horizon}', flush=True)
  family = family.calibrate(key_calibrate)
  print(f'[{time.time() - start:6.1f}s] calibrated', flush=True)

  config = RolloutConfig(n_envs=n_envs)
  collect = rollout.make_collector(
      family, rollout.random_policy(family.action_size), config)
  t0 = time.time()
  out = jax.block_until_ready(collect(None, psi, key_collect))
  compile_and_run_s = time.time() - t0
  t0 = time.time()
  out = jax.block_until_ready(collect(None, psi, jax.random.fold_in(
      key_collect, 1)))
  run_s = time.time() - t0
  print(f'[{time.time() - start:6.1f}s] collected (compile + run '
        f'{compile_and_run_s:.1f}s)', flush=True)

  tr = out.transitions
  data = dataset.add(
      dataset.init(jax.tree.map(lambda x: x[0, 0], tr),
                   capacity=int(tr.reward.size)), tr)
  samples = int(tr.reward.size)
  summary = {
      'env': family.name,
      'pipeline': getattr(family, 'pipeline', None),
      'psi': [round(float(v), 4) for v in np.asarray(psi)],
      'samples': samples,
      'dataset_size': int(data.size),
      'episodes_ended': int(out.episode_count),
      'terminations': int(jnp.sum(tr.done)),
      'timeouts': int(jnp.sum(tr.timeout)),
      'mean_return_of_ended_episodes': (
          float(out.mean_return) if int(out.episode_count) else None),
      'mean_reward': float(jnp.mean(tr.reward)),
      'obs_mean': [round(float(v), 3)
                   for v in np.asarray(jnp.mean(tr.obs, axis=(0, 1)))],
      'steps_per_s': round(samples / run_s),
      'compile_s': round(compile_and_run_s - run_s, 1),
      'wall_s': round(time.time() - start, 1),
  }
  if getattr(family, 'state_mean', None) is not None:
    # Cheetah-Highdim's μ, σ: measured once per run and stored with it, so a
    # later stage can rebuild the same reward with envs.make(...,
    # state_mean=..., state_std=...).
    summary['state_mean'] = [round(float(v), 6) for v in family.state_mean]
    summary['state_std'] = [round(float(v), 6) for v in family.state_std]
  if _WORKDIR.value:
    common.write_json(os.path.join(_WORKDIR.value, 'rollout.json'),
                      fileio.to_jsonable(summary))
  return summary


if __name__ == '__main__':
  app.run(main)
