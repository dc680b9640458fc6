r"""Compile once: what JAX's persistent compilation cache saves.

    python benchmarks/compile_cache.py

Measures, each in a fresh process, against a fresh cache directory:
  task_iteration   compiling one task iteration of the lq smoke preset (the
                   driver's program, `admrl_jax.sweep.batched`: one member,
                   vmapped, its state donated, no progress callback), cold (empty cache) and warm (a second process
                   with the cache the first one filled); for the cold
                   compile, the time of XLA's HLO passes and of its backend
                   (its own timers) and the share of the optimised
                   program's instructions that are random-number code
  driver           the first task iteration's wall time (compile_s, as the
                   driver reports it, + run_s) and the process's of
                   `python -m experiments.run --env=lq --preset=quick
                   --stop_after=1`, cold and warm, with --nophase_progress
                   (one program per task iteration) and with the default
                   per-phase progress (three programs driven from the host,
                   `training.PhasedIteration`; both are cached)
  smoke            the whole process of the default `python -m
                   experiments.run --env=lq --preset=smoke`, cold and warm,
                   and their ratio
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
_BREAKDOWN = flags.DEFINE_bool('breakdown', False, 'Internal, with --child: '
                                'also print the random-number code share.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(ROOT, 'benchmarks', 'results', 'compile.json'),
    'Results file.')


def compile_task_iteration() -> float:
  """Seconds to lower and compile the driver's lq smoke task iteration."""
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax import sweep  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import presets  # pylint: disable=g-import-not-at-top
  config, family_overrides, alpha = presets.preset('lq', 'smoke')
  family = envs.make('lq', **family_overrides)
  algorithm = admrl.AdMRL(family, config)
  state = sweep.init_members(algorithm.init, [(0, alpha)])
  iteration = sweep.batched(algorithm.task_iteration, 'vmap')
  t0 = time.perf_counter()
  compiled = iteration.lower(state, True).compile()
  seconds = time.perf_counter() - t0
  if _BREAKDOWN.value:
    print(f'random_share={_random_share(compiled.as_text()):.3f}', flush=True)
  return seconds


# JAX's random-number functions, as they appear in an instruction's op_name.
_RANDOM = ('threefry', 'random_bits', '_uniform', '_normal', 'randint',
           'permutation', '_shuffle', 'truncated_normal')


def _random_share(hlo: str) -> float:
  """Fraction of the optimised program's instructions that come from JAX's
  random-number functions (threefry and the draws built on it)."""
  names = re.findall(r'^\s*\S+ = .*?op_name="([^"]*)"', hlo, re.MULTILINE)
  return sum(any(r in n for r in _RANDOM) for n in names) / max(1, len(names))


def _xla_seconds(log: str, pattern: str) -> float:
  """Seconds of one of XLA's CPU compiler timers for the task iteration."""
  match = re.search(pattern + r' time: ([0-9.]+) (s|ms|us)', log)
  value, unit = float(match.group(1)), match.group(2)
  return value * {'s': 1.0, 'ms': 1e-3, 'us': 1e-6}[unit]


def _child_compile(cache_dir, breakdown=None) -> float:
  """Compile seconds in a fresh process; with `breakdown` (a dict), a cold
  compile also fills in where XLA spent them (its own timers, logged with
  TF_CPP_VMODULE=cpu_compiler=1) and the random-number code's share."""
  env = dict(os.environ, ADMRL_JAX_CACHE_DIR=cache_dir)
  args = ['--child']
  if breakdown is not None:
    env.update(TF_CPP_MIN_LOG_LEVEL='0', TF_CPP_VMODULE='cpu_compiler=1')
    args.append('--breakdown')
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
      env=env, capture_output=True, text=True, check=True)
  seconds = float(re.findall(r'compile_s=([0-9.]+)', proc.stdout)[-1])
  if breakdown is not None:
    hlo_passes = _xla_seconds(
        proc.stderr, r'Running HLO passes on \[jit_task_iteration\] for CPU')
    backend = _xla_seconds(
        proc.stderr, r'Compiling \[jit_task_iteration\] for CPU using JIT')
    breakdown.update(
        hlo_passes_s=round(hlo_passes, 2), backend_s=round(backend, 2),
        hlo_passes_share=round(hlo_passes / seconds, 3),
        backend_share=round(backend / seconds, 3),
        random_instruction_share=float(re.findall(
            r'random_share=([0-9.]+)', proc.stdout)[-1]),
        what='XLA CPU timers of the cold compile (HLO passes; backend = IR '
        'emission and LLVM code generation) as shares of cold_s; '
        'random_instruction_share: instructions of the optimised program '
        "whose op_name is one of JAX's random-number functions")
  return seconds


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


def _driver_process(cache_dir, workdir) -> dict:
  """The whole default lq smoke run in a fresh process."""
  t0 = time.time()
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--env=lq', '--preset=smoke',
       f'--workdir={workdir}', f'--compilation_cache={cache_dir}'], cwd=ROOT,
      capture_output=True, text=True, check=True).stdout
  line = re.search(r'compiled in ([0-9.]+)s(.*?);', out)
  return dict(process_s=round(time.time() - t0, 1),
              compile_s=float(line.group(1)), cache=line.group(2).strip())


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
    breakdown = {}
    task_iteration = dict(cold_s=_child_compile(cache, breakdown),
                          warm_s=_child_compile(cache))
    task_iteration['cold_breakdown'] = breakdown
    cache = os.path.join(tmp, 'cache_driver')
    driver = {}
    for progress, extra in (('nophase_progress', ['--nophase_progress']),
                            ('phase_progress', [])):
      driver[progress] = {
          state: _driver_first_iteration(
              cache, os.path.join(tmp, f'{progress}_{state}'), extra)
          for state in ('cold', 'warm')}
      cache = os.path.join(tmp, 'cache_driver_progress')
    cache = os.path.join(tmp, 'cache_smoke')
    smoke = {state: _driver_process(cache, os.path.join(tmp, f'smoke_{state}'))
             for state in ('cold', 'warm')}
    smoke['warm_over_cold'] = round(smoke['warm']['process_s']
                                    / smoke['cold']['process_s'], 3)
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
                  'first filled'),
      smoke=dict(smoke, what='python -m experiments.run --env=lq '
                 '--preset=smoke (per-phase progress, the default): the '
                 'whole process, cold (empty cache) and warm'))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
