"""A*(ψ) of evaluation tasks, cached per (family, ψ, budget) in a JSON file
so that every method compared uses the same A* and an interrupted
computation keeps the finished tasks. Flag-free (`experiments.evaluate` and
`experiments.study` share it)."""
from __future__ import annotations

import hashlib
import math
import time

import jax
import numpy as np

from admrl_jax.evaluation import optimum
from experiments import pieces as pieces_lib
from experiments.common import UsageError, read_json, wait, write_json


# ----------------------------------------------------------- A* cache
def family_fingerprint(family) -> str:
  """What besides ψ sets a family's returns: name, horizon, frame skip,
  pipeline, and a run's calibration (Cheetah-Highdim's μ, σ)."""
  parts = [family.name, f'h{family.horizon}']
  for name in ('frame_skip', 'pipeline'):
    value = getattr(family, name, None)
    if value is not None:
      parts.append(f'{name}={value}')
  mean = getattr(family, 'state_mean', None)
  if mean is not None:
    blob = np.concatenate([np.asarray(mean, np.float32).ravel(),
                           np.asarray(family.state_std, np.float32).ravel()])
    parts.append('cal=' + hashlib.sha1(blob.tobytes()).hexdigest()[:10])
  return '|'.join(parts)


def astar_key(fingerprint: str, psi, method: str, budget, tag: str = ''
              ) -> str:
  where = 'closed_form' if method == 'closed_form' else f'slbo{budget}'
  return (f'{fingerprint}|{where}|psi=' + ','.join(f'{float(v):.6g}'
                                                   for v in psi)
          + (f'|{tag}' if tag else ''))


def read_cache(path: str) -> dict:
  cache = read_json(path, {}, '--astar_cache ')
  if not isinstance(cache, dict):
    raise UsageError(f'--astar_cache {path} is not a JSON object')
  return cache


def update_cache(path: str, entries: dict) -> None:
  """Merges `entries` into the cache file (re-read first: another evaluation
  may have written meanwhile; existing entries win) and writes atomically."""
  cache = read_cache(path)
  for key, value in entries.items():
    cache.setdefault(key, value)
  write_json(path, cache)


def astar_values(family, slbo_config, tasks, method, budget, stage_samples,
                 cache_path, seed, log, progress=None, units=1.0, line=None,
                 tag=''):
  """A* of every task, (t,), from the cache or computed, each task cached as
  soon as it is computed (an interrupted run keeps the finished ones): the
  SLBO runs are the pieces of `pieces.run_each`, compiled once.

  Args:
    seed: task i's SLBO run uses the key fold_in(key(seed), i).
    log: one-line messages (a line before the first task, and the compile).
    progress: the `pieces.Pieces` (or `Labelled`) that reports each
      computed task with `units` of work (a study's; the cached tasks are
      skipped in it first); None: A*'s own, its lines through `log`.
    line: `line(i, value, seconds)`, a computed task's line; None:
      'A* task j/m: value (seconds)'.
    tag: appended to the cache keys (e.g. a repeat with another seed).
  Returns:
    (values (t,) float64, number computed now).
  """
  fingerprint = family_fingerprint(family)
  keys = [astar_key(fingerprint, psi, method, budget, tag) for psi in tasks]
  cache = read_cache(cache_path)
  missing = [i for i, key in enumerate(keys) if key not in cache]

  def entry(i, value, **more):
    return dict(astar=float(value), family=fingerprint,
                psi=[float(v) for v in tasks[i]], method=method,
                budget=None if method == 'closed_form' else budget,
                created=time.strftime('%Y-%m-%dT%H:%M:%S'), **more)

  if missing and method == 'closed_form':
    values = np.asarray(optimum.closed_form_astar(family, tasks[missing]))
    update_cache(cache_path, {keys[i]: entry(i, v)
                              for i, v in zip(missing, values)})
  elif method != 'closed_form':
    if progress is None:
      progress = pieces_lib.Pieces(len(missing) * units, log, scope='A*')
    else:
      progress.skip((len(keys) - len(missing)) * units)
    if missing:
      _slbo_astar(family, slbo_config, tasks, missing, budget, stage_samples,
                  cache_path, seed, log, progress, units,
                  line or (lambda i, value, seconds: (
                      f'A* task {missing.index(i) + 1}/{len(missing)}: '
                      f'{value:.2f} ({seconds:.1f}s)')),
                  lambda i, value, **more: update_cache(
                      cache_path, {keys[i]: entry(i, value, **more)}))
  cache = read_cache(cache_path)
  return np.asarray([cache[key]['astar'] if key in cache else np.nan
                     for key in keys], np.float64), len(missing)


def _slbo_astar(family, slbo_config, tasks, missing, budget, stage_samples,
                cache_path, seed, log, progress, units, line, cache_entry):
  """A* of tasks[missing] from SLBO runs of `budget` real samples, one
  piece each (`pieces.run_each`), each cached (`cache_entry`) as it
  finishes; a non-finite estimate is logged and not cached."""
  estimator = optimum.SLBOOptimum(
      family, slbo_config,
      optimum.OptimumConfig(budget=budget, stage_samples=stage_samples))
  compiled = []
  log(f'A*: {len(missing)} task(s) not cached; SLBO from scratch with '
      f'{budget} real samples each ({estimator.config.n_stages} stages), '
      f'cached in {cache_path} as each finishes')

  def arguments(i):
    return (jax.numpy.asarray(tasks[i]),
            jax.random.fold_in(jax.random.key(seed), i))

  def compile_estimate(i):
    compiled.append(pieces_lib.compile_logged(
        estimator.estimate, arguments(i), lambda line: log(f'A*: {line}'),
        'SLBO run'))

  def compute(i):
    return wait(compiled[0](*arguments(i)))

  def save(i, result, seconds):
    value = float(result.astar)
    if math.isfinite(value):
      cache_entry(i, value, stage_returns=[
          float(v) for v in np.asarray(result.stage_returns)],
                  stage_samples=stage_samples)
    else:
      log(f'A*: estimate for task {i} is not finite; not cached')
    return line(i, value, seconds)

  pieces_lib.run_each(missing, compute, save, progress,
                      units=lambda i: units, before_first=compile_estimate)
