"""The compiled program and the summary of `experiments.step_truth`
(flag-free, so that tests import it)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax.evaluation import stats
from admrl_jax.meta import admrl
from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig


def make_program(family, config, check):
  """`program(batched_state) -> dict` for one checkpoint of a run.

  Per member m (the state's leading axis): the run's own estimate of
  ∂L/∂u at this task iteration (`grad_u`, (k,), the task iteration rerun
  from the checkpoint) and its θ̂'s real return (`return_hat`), and the gap
  L = A*(ψ(u')) − η(θ̂(u'), ψ(u')) at u' = u (column 0) and u ± h e_i
  (columns 1 + 2i, 2 + 2i) for each of `check['keys']` draws of the
  zero-shot phase's key (draw 0: the run's): `gaps` (keys, 2k + 1).
  η is the mean first return of `check['episodes']` real episodes of θ̂,
  the same episodes' keys in every column (common random numbers).
  """
  algorithm = admrl.AdMRL(family, config)
  collect = rollout.make_collect_fn(
      family, algorithm.engine.policy_fn,
      RolloutConfig(n_envs=check['episodes']))
  k, h, n_keys = family.task_dim, check['h'], check['keys']
  offsets = np.zeros((2 * k + 1, k))
  for i in range(k):
    offsets[1 + 2 * i, i], offsets[2 + 2 * i, i] = h, -h

  def member(state):
    _, metrics = algorithm.task_iteration(state, False)
    key_phases = admrl.iteration_keys(state)[2]
    keys = jnp.stack([key_phases] + [jax.random.fold_in(key_phases, j)
                                     for j in range(1, n_keys)])
    key_eval = jax.random.fold_in(key_phases, 10_000)
    us = state.u + jnp.asarray(offsets, state.u.dtype)

    def gap(u, key):
      policy, _, norm = algorithm.zero_shot(state, u, key)
      psi = family.from_u(u)
      real = collect((policy, norm), psi, key_eval,
                     jnp.zeros((), state.u.dtype))
      return (family.optimal_return(psi, 0.0)
              - jnp.mean(real.first_return))

    gaps = jax.vmap(lambda key: jax.vmap(lambda u: gap(u, key))(us))(keys)
    return dict(grad_u=metrics.grad_u, return_hat=metrics.return_hat,
                u=state.u, gaps=gaps)

  return jax.jit(jax.vmap(member))


def finite_differences(gaps, h):
  """(keys, 2k + 1) gaps → (keys, k) central differences in u."""
  gaps = np.asarray(gaps, np.float64)
  return (gaps[:, 1::2] - gaps[:, 2::2]) / (2.0 * h)


def cosine(a, b):
  return float(stats.cosine(a, b))


def cells(out, h, logged=None):
  """One checkpoint's program output → a list of per-member records
  (`logged`: per member, the run's grad_u from metrics.jsonl or None)."""
  records = []
  for m in range(out['gaps'].shape[0]):
    fd = finite_differences(out['gaps'][m], h)
    truth = fd.mean(axis=0)
    half = fd.shape[0] // 2
    grad = np.asarray(out['grad_u'][m], np.float64)
    record = dict(
        u=_floats(out['u'][m]), grad_u=_floats(grad), truth=_floats(truth),
        truth_se=_floats(fd.std(axis=0, ddof=1) / math.sqrt(fd.shape[0])),
        cos=cosine(grad, truth),
        cos_per_draw=[cosine(grad, d) for d in fd],
        truth_halves_cos=cosine(fd[:half].mean(0), fd[half:].mean(0)),
        gap=float(out['gaps'][m][:, 0].mean()),
        return_hat=float(out['return_hat'][m]),
        on_boundary=bool(np.any(np.abs(out['u'][m]) >= 1.0 - 1e-6)))
    if logged is not None and logged[m] is not None:
      record['logged_grad_diff'] = float(
          np.max(np.abs(np.asarray(logged[m], np.float64) - grad)))
    records.append(record)
  return records


def summarize(result):
  """Cosines and ascent fractions over every checked (member, step); the
  mean cosine's 95% t-interval is over members (each member's mean over
  its steps: the steps of one run are not independent)."""
  rows = [(m, c) for cells_ in result['cells'].values()
          for m, c in enumerate(cells_) if math.isfinite(c['cos'])]
  cos = np.asarray([c['cos'] for _, c in rows])
  halves = np.asarray([c['truth_halves_cos'] for _, c in rows])
  determined = halves > 0.8
  per_member = [np.mean([c['cos'] for m, c in rows if m == j])
                for j in sorted({m for m, _ in rows})]
  ci = stats.mean_ci(per_member) if len(per_member) > 1 else None
  repeat = np.asarray([c['cos_repeat'] for _, c in rows
                       if math.isfinite(c.get('cos_repeat', math.nan))])
  out = dict(n=len(rows), cos_median=_median(cos),
             cos_mean=(None if ci is None else
                       [float(ci['mean']), float(ci['lo']), float(ci['hi'])]),
             n_members=len(per_member),
             ascent_fraction=float(np.mean(cos > 0)) if len(cos) else None,
             truth_halves_median=_median(halves),
             n_determined=int(determined.sum()),
             cos_median_determined=_median(cos[determined]),
             ascent_fraction_determined=(float(np.mean(cos[determined] > 0))
                                         if determined.any() else None),
             cos_repeat_median=_median(repeat), n_repeat=int(repeat.size))
  return out


def markdown(summary, result, workdir):
  s = result['settings']
  lines = [
      f'# Ascent steps against the true gradient: {workdir}', '',
      f'Central differences of the gap in u (h = {s["h"]}), each side a '
      f'zero-shot VirtualTraining run from the run\'s checkpoint and '
      f'{s["episodes"]} real episodes (common random numbers), averaged over '
      f'{s["keys"]} draws of VirtualTraining\'s key (draw 0: the run\'s). '
      'Produced by `python -m experiments.step_truth --workdir=' + workdir
      + '`.', '',
      f'- checked (member, step) pairs: {summary["n"]}',
      f'- cos(g, truth): median {_fmt(summary["cos_median"])}, mean '
      f'{_interval(summary["cos_mean"])} (95% t-interval over '
      f'{summary["n_members"]} members)',
      f'- steps that ascend L to first order (cos > 0): '
      f'{_fmt(summary["ascent_fraction"])}',
      f'- how well the truth is determined (cosine between the truths of '
      f'the two halves of the draws): median '
      f'{_fmt(summary["truth_halves_median"])}; '
      f'{summary["n_determined"]} pairs above 0.8, where cos(g, truth) has '
      f'median {_fmt(summary["cos_median_determined"])} and '
      f'{_fmt(summary["ascent_fraction_determined"])} ascend',
      f'- the estimate against a second, independent estimate at the same '
      f'state (the run\'s grad_u_repeat): median cosine '
      f'{_fmt(summary.get("cos_repeat_median"))} over '
      f'{summary.get("n_repeat", 0)} pairs', '',
      '| step | member (seed, α) | u | on box | g | truth ± se | cos | '
      'halves cos |', '|---|---|---|---|---|---|---|---|']
  for t in sorted(result['cells'], key=int):
    for m, c in enumerate(result['cells'][t]):
      seed, alpha = result['members'][m]
      lines.append(
          f'| {t} | {seed}, {alpha:g} | {_vec(c["u"])} | '
          f'{"yes" if c["on_boundary"] else "no"} | {_vec(c["grad_u"])} | '
          + ', '.join(f'{v:.2f}±{e:.2f}'
                      for v, e in zip(c['truth'], c['truth_se']))
          + f' | {c["cos"]:+.2f} | {c["truth_halves_cos"]:+.2f} |')
  return '\n'.join(lines) + '\n'


def _floats(x):
  return [float(v) for v in np.asarray(x).reshape(-1)]


def _median(x):
  x = np.asarray(x, np.float64)
  return float(np.median(x)) if x.size else None


def _fmt(x):
  return 'n/a' if x is None else f'{x:.2f}'


def _interval(ci):
  if ci is None:
    return 'n/a'
  mean, low, high = ci
  return f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]'


def _vec(v):
  return '(' + ', '.join(f'{x:+.2f}' for x in v) + ')'
