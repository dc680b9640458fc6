"""The summary of experiments/adaptation_check.py (no flags: importable by
tests and other scripts): A_n of repeated adaptations, decomposed into
evaluation noise, adaptation noise and a change with n."""
from __future__ import annotations

import math

import numpy as np

from admrl_jax.evaluation import stats
from experiments.common import json_number

# The first study measured each A_n with this many episodes.
FIRST_STUDY_EPISODES = 10


def arrays(result, check):
  """(A, SE, V): A_n (members, tasks, repeats, 1 + budgets) with A0 first,
  their standard errors, and the virtual returns (same shape)."""
  s, t, r = len(check['members']), len(result['tasks']), check['repeats']
  b = 1 + len(result['budgets'])
  a = np.full((s, t, r, b), np.nan)
  se = np.full_like(a, np.nan)
  v = np.full_like(a, np.nan)
  stages = np.asarray(check['stages'])
  for key, cell in result['cells'].items():
    seed, i, rep = (int(x) for x in key.split(','))
    m = check['members'].index(seed)
    a[m, i, rep] = [json_number(cell['a0'])] + [json_number(x)
                                                 for x in cell['an']]
    se[m, i, rep] = [json_number(cell['a0_se'])] + [json_number(x)
                                                     for x in cell['an_se']]
    virtual = np.asarray([json_number(x) for x in cell['virtual']])
    v[m, i, rep] = np.concatenate([virtual[:1], virtual[stages]])
  return a, se, v


def summarize(result, check, study_cells):
  """Every figure of the check (see the module docstring) as a dict."""
  a, se, v = arrays(result, check)
  astar = np.asarray(result['astar'])
  g = astar[None, :, None, None] - a                    # (s, t, r, b)
  per_member = a.mean(axis=(1, 2))                      # (s, b)
  change = per_member - per_member[:, 1:2]              # from the first stage
  eval_var = np.nanmean(se ** 2, axis=(0, 1, 2))        # (b,)
  between = np.var(a, axis=2, ddof=1).mean(axis=(0, 1))  # (b,)
  adapt_var = np.maximum(between - eval_var, 0.0)
  episodes = check['episodes']
  gmax_one = g.max(axis=1)                              # (s, r, b)
  gmax_mean = g.mean(axis=2).max(axis=1)                # (s, b)
  rises = (gmax_one[..., 2] > gmax_one[..., 1]) if a.shape[-1] > 2 else None
  out = dict(
      budgets=[0] + result['budgets'],
      mean_An=_ci(per_member),
      change_from_first_stage=_ci(change),
      share_of_cells_falling=[
          float(np.mean(a.mean(axis=2)[..., j] < a.mean(axis=2)[..., 1]))
          for j in range(a.shape[-1])],
      eval_sd=np.sqrt(eval_var).tolist(),
      eval_sd_first_study=(np.sqrt(eval_var * episodes
                                   / FIRST_STUDY_EPISODES)).tolist(),
      adaptation_sd=np.sqrt(adapt_var).tolist(),
      gmax_one_adaptation=_ci(gmax_one.mean(axis=1)),
      gmax_mean_of_repeats=_ci(gmax_mean),
      gmax_rises_first_to_second=(None if rises is None
                                  else float(rises.mean())),
      virtual_An=_ci(v.mean(axis=(1, 2))),
      virtual_minus_real=_ci((v - a).mean(axis=(1, 2))))
  if study_cells is not None:
    cells, budgets = study_cells
    diffs, z = [], []
    for (seed, i), (an, an_se) in cells.items():
      if seed not in check['members']:
        continue
      m = check['members'].index(seed)
      for j, n in enumerate(budgets):
        if n in result['budgets']:
          k = 1 + result['budgets'].index(n)
          d = a[m, i, 0, k] - an[j]
          diffs.append(d)
          if an_se is not None:
            z.append(d / math.hypot(se[m, i, 0, k], an_se[j]))
    out['repeat0_vs_study'] = dict(
        cells=len(diffs), mean_difference=float(np.mean(diffs)) if diffs
        else None, mean_abs_z=float(np.mean(np.abs(z))) if z else None,
        share_abs_z_below_2=float(np.mean(np.abs(z) < 2)) if z else None)
  return out


def _ci(values):
  c = stats.mean_ci(values)
  return {k: np.asarray(c[k]).tolist() for k in ('mean', 'lo', 'hi', 'n')}


def markdown(summary, result, check) -> str:
  """The summary as tables."""
  budgets = summary['budgets']
  n_cols = ' | '.join(f'n = {b}' for b in budgets)

  def row(name, cell):
    return (f'| {name} | ' + ' | '.join(
        f'{m:.3g} [{lo:.3g}, {hi:.3g}]' if lo is not None and
        math.isfinite(lo) else f'{m:.3g}'
        for m, lo, hi in zip(cell['mean'], cell['lo'], cell['hi'])) + ' |')

  def plain(name, values, fmt='{:.3g}'):
    return (f'| {name} | ' + ' | '.join(
        'n/a' if v is None else fmt.format(v) for v in values) + ' |')

  lines = [f'# Adaptation check: {check["arm"]} of '
           f'{check["study"]["env"]} ({check["study"]["scale"]} scale)', '',
           f'Members (seeds) {check["members"]}, {len(result["tasks"])} '
           f'tasks, {check["repeats"]} adaptations each (repeat 0 with the '
           f'study\'s keys), every return from {check["episodes"]} '
           'episodes. Mean [95% t-interval over members].', '',
           f'| measure | {n_cols} |', '|---|' + '---|' * len(budgets),
           row('mean A_n', summary['mean_An']),
           row('A_n − A_first stage', summary['change_from_first_stage']),
           plain('share of (member, task) with A_n < A_first stage',
                 summary['share_of_cells_falling'], '{:.2f}'),
           plain(f's.d. of a {check["episodes"]}-episode A_n (evaluation)',
                 summary['eval_sd']),
           plain(f's.d. of a {FIRST_STUDY_EPISODES}-episode A_n '
                 '(the first study\'s)', summary['eval_sd_first_study']),
           plain('s.d. between adaptations (evaluation removed)',
                 summary['adaptation_sd']),
           row('Gmax_n of one adaptation', summary['gmax_one_adaptation']),
           row('Gmax_n of the mean over repeats',
               summary['gmax_mean_of_repeats']),
           row('virtual (model) return', summary['virtual_An']),
           row('virtual − real return', summary['virtual_minus_real']), '']
  if summary.get('gmax_rises_first_to_second') is not None:
    lines += [f'Gmax_n of one adaptation rose from the first to the second '
              f'stage in {summary["gmax_rises_first_to_second"]:.2f} of the '
              '(member, repeat) pairs.', '']
  r0 = summary.get('repeat0_vs_study')
  if r0 and r0['cells']:
    lines += [f'Repeat 0 against the study\'s own A_n of the same cells '
              f'({r0["cells"]} cells): mean difference '
              f'{r0["mean_difference"]:.3g}'
              + ('' if r0['mean_abs_z'] is None else
                 f', mean |z| {r0["mean_abs_z"]:.2f}, |z| < 2 in '
                 f'{r0["share_abs_z_below_2"]:.2f} of them')
              + ' (the same adapted policies measured on other episodes).',
              '']
  return '\n'.join(lines)
