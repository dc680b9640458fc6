r"""An α sweep as one vmapped program against K separate runs.

    python benchmarks/alpha_sweep.py [--quick] [--env=lq] [--preset=smoke]

Measures, in one run, for K = 6 step sizes α ∈ {1, 2, 4, 8, 16, 32} (Appendix C)
and the same seed:
  sweep_s        task iterations of the K members as one jit(vmap) program
  sequential_s   the same task iterations as K separate single-member runs
                 (one compiled program, called K times)
  ratio          sweep_s / sequential_s (goal <= 1.0 on CPU)
  compile_s      compiling one task iteration (single member), and
                 sweep_compile_s for the vmapped one
Times exclude compilation (reported separately) and include the first task
iteration (no task gradient) and a second one (with it). The two programs
are compiled concurrently. --quick compiles with XLA's backend optimisation
level 0 (compilation dominates; this keeps the run under a minute), so its
times are of unoptimised code; the full run uses the default level. Writes
benchmarks/results/alpha_sweep.json.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_QUICK = flags.DEFINE_bool('quick', False, 'One repeat (< 60 s on lq).')
_ENV = flags.DEFINE_string('env', 'lq', 'Task family.')
_PRESET = flags.DEFINE_string('preset', 'smoke', 'Size preset of the runs.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                        'alpha_sweep.json'), 'Results file.')

ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def main(argv):
  del argv
  if _QUICK.value:  # before JAX starts: flags are read once
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_backend_optimization_level=0')
  import jax  # pylint: disable=g-import-not-at-top
  # Compile once: a rerun loads its programs (compile times are then cache
  # loads; ADMRL_JAX_CACHE_DIR='' or a fresh directory for cold ones).
  from experiments import common  # pylint: disable=g-import-not-at-top
  cache_dir = common.enable_compilation_cache()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import presets  # pylint: disable=g-import-not-at-top

  wall = time.time()
  repeats = 1 if _QUICK.value else 3
  config, family_overrides, _ = presets.preset(_ENV.value, _PRESET.value)
  family = envs.make(_ENV.value, **family_overrides).calibrate(
      jax.random.key(1))
  algorithm = admrl.AdMRL(family, config)
  k = len(ALPHAS)
  key = jax.random.key(0)
  single_state = algorithm.init(key, ALPHAS[0])
  sweep_members = [(0, alpha) for alpha in ALPHAS]  # key(0) each
  sweep_state = sweep_lib.init_members(algorithm.init, sweep_members)

  single = jax.jit(algorithm.task_iteration)
  # The driver's program (it donates the state: a fresh one per call).
  sweep = sweep_lib.batched(algorithm.task_iteration, 'vmap')
  first = jnp.asarray(True)

  def compile_(fn, state):
    t0 = time.perf_counter()
    compiled = fn.lower(state, first).compile()
    return compiled, time.perf_counter() - t0

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(compile_, single, single_state),
               pool.submit(compile_, sweep, sweep_state)]
    (single_c, compile_s), (sweep_c, sweep_compile_s) = [
        f.result() for f in futures]

  def two_iterations(compiled, state):
    state, _ = compiled(state, jnp.asarray(True))
    state, _ = compiled(state, jnp.asarray(False))
    return state

  def best(fn, setup=lambda: None):
    """The least time of `fn(setup())` over the repeats, setup untimed."""
    times = []
    for _ in range(repeats):
      arg = jax.block_until_ready(setup())
      t0 = time.perf_counter()
      jax.block_until_ready(fn(arg))
      times.append(time.perf_counter() - t0)
    return min(times)

  # The sweep's program donates its state: a fresh one per repeat.
  sweep_s = best(lambda state: two_iterations(sweep_c, state),
                 lambda: sweep_lib.init_members(algorithm.init,
                                                sweep_members))
  sequential_s = best(lambda _: [
      two_iterations(single_c, algorithm.init(key, alpha))
      for alpha in ALPHAS])
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), jax_version=jax.__version__,
                compilation_cache=cache_dir,
                device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                machine=platform.machine(), env=family.name,
                preset=_PRESET.value, quick=_QUICK.value,
                xla_flags=os.environ.get('XLA_FLAGS', ''),
                task_iterations=2, wall_s=round(time.time() - wall, 1)),
      K=k, alphas=list(ALPHAS), sweep_s=sweep_s, sequential_s=sequential_s,
      ratio=sweep_s / sequential_s, compile_s=compile_s,
      sweep_compile_s=sweep_compile_s)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
