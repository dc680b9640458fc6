r"""Compile once: what JAX's persistent compilation cache saves.

    python benchmarks/compile_cache.py

Measures, each in a fresh process, against a fresh cache directory:
  task_iteration   compiling one task iteration of the lq smoke preset (the
                   driver's program: one member, vmapped, no progress
                   callback), cold (empty cache) and warm (a second process
                   with the cache the first one filled)
  driver           the first task iteration's wall time (compile_s, as the
                   driver reports it, + run_s) of
                   `python -m experiments.run --env=lq --preset=quick
                   --stop_after=1`, cold and warm, with --nophase_progress
                   (the task iteration is cached) and with the default
                   per-phase progress (a host callback: JAX does not cache
                   that program, so it is compiled again on every run)
Writes benchmarks/results/compile.json.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CHILD = flags.DEFINE_bool('child', False, 'Internal: compile the lq smoke '
                           'task iteration once and print its time.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(ROOT, 'benchmarks', 'results', 'compile.json'),
    'Results file.')


def compile_task_iteration() -> float:
  """Seconds to lower and compile the driver's lq smoke task iteration."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import presets  # pylint: disable=g-import-not-at-top
  config, family_overrides, alpha = presets.preset('lq', 'smoke')
  family = envs.make('lq', **family_overrides)
  algorithm = admrl.AdMRL(family, config)
  state = jax.vmap(algorithm.init)(jnp.stack([jax.random.key(0)]),
                                   jnp.asarray([alpha], jnp.float32))
  iteration = jax.jit(jax.vmap(algorithm.task_iteration, in_axes=(0, None)))
  t0 = time.perf_counter()
  iteration.lower(state, True).compile()
  return time.perf_counter() - t0


def _child_compile(cache_dir) -> float:
  env = dict(os.environ, ADMRL_JAX_CACHE_DIR=cache_dir)
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--child'], cwd=ROOT,
      env=env, capture_output=True, text=True, check=True).stdout
  return float(re.findall(r'compile_s=([0-9.]+)', out)[-1])


def _driver_first_iteration(cache_dir, workdir, extra) -> dict:
  t0 = time.time()
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--env=lq', '--preset=quick',
       '--stop_after=1', f'--workdir={workdir}',
       f'--compilation_cache={cache_dir}', *extra], cwd=ROOT,
      capture_output=True, text=True, check=True).stdout
  compile_s = float(re.search(r'compiled in ([0-9.]+)s', out).group(1))
  run_s = float(re.search(r'task 1/\d+ done in ([0-9.]+)s', out).group(1))
  return dict(first_iteration_s=round(compile_s + run_s, 1),
              compile_s=compile_s, run_s=run_s,
              process_s=round(time.time() - t0, 1))


def main(argv):
  del argv
  if _CHILD.value:
    from experiments import common  # pylint: disable=g-import-not-at-top
    common.enable_compilation_cache()
    print(f'compile_s={compile_task_iteration():.3f}', flush=True)
    return
  wall = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, 'cache_iteration')
    task_iteration = dict(cold_s=_child_compile(cache),
                          warm_s=_child_compile(cache))
    cache = os.path.join(tmp, 'cache_driver')
    driver = {}
    for progress, extra in (('nophase_progress', ['--nophase_progress']),
                            ('phase_progress', [])):
      driver[progress] = {
          state: _driver_first_iteration(
              cache, os.path.join(tmp, f'{progress}_{state}'), extra)
          for state in ('cold', 'warm')}
      cache = os.path.join(tmp, 'cache_driver_progress')
  import jax  # pylint: disable=g-import-not-at-top
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), jax_version=jax.__version__,
                device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                load_average=os.getloadavg(),
                note='absolute times depend on the machine and its load '
                '(load_average at the end); the cold/warm ratios are the '
                'point',
                wall_s=round(time.time() - wall, 1)),
      task_iteration=dict(task_iteration, what='lower + compile of one lq '
                          'smoke task iteration (1 member, vmapped, no '
                          'progress callback) in a fresh process'),
      driver=dict(driver, what='python -m experiments.run --env=lq '
                  '--preset=quick --stop_after=1: the first task '
                  "iteration's wall time (compilation included) and the "
                  "process's; warm = a second process with the cache the "
                  'first filled'))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
