r"""Comparison figures: `python -m experiments.plot --workdirs=A,B,... --out=DIR`.

    python -m experiments.plot --out=figures/ant2d \
        --workdirs=runs/ant2d-admrl-paper,runs/ant2d-mb_unif-paper,runs/ant2d-mb_gauss-paper

Reads the eval.json that `experiments.evaluate` wrote in each workdir (or
eval_<env>.json with --eval_env) and draws, one curve/row per workdir
labelled with its algorithm (from config.json): Gmax_n vs n (Fig. 3, 4b, 5),
average A_n vs n (Fig. 2), G_n heat maps side by side (one shared colour
scale; Fig. 3, 5) and the visited training tasks (Fig. 4a, first member of
each run). Every gap figure names the A* budget. Also writes
<out>/comparison.json with the plotted numbers. Bad input: one line on
stderr, exit status 2.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib
matplotlib.use('Agg')  # before pyplot is imported (by plots)
import numpy as np

from admrl_jax.evaluation import plots
from experiments.common import (UsageError, json_array, json_number,
                                run_main, write_json)
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIRS = flags.DEFINE_string('workdirs', None,
                                'Comma-separated evaluated run directories.')
_OUT = flags.DEFINE_string('out', None, 'Directory for the figures.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_EVAL_ENV = flags.DEFINE_string(
    'eval_env', None, 'Read eval_<env>.json (the evaluation made with '
    '--eval_env) instead of eval.json.')

FIGURES = ('gmax', 'average_return', 'gap_heatmap', 'visited_tasks')


def main(argv):
  run_main(argv, run)


def load_report(workdir: str, eval_env=None) -> dict:
  """The evaluation report of `workdir`, with its label (the algorithm)."""
  if not os.path.isdir(workdir):
    raise UsageError(f'--workdirs: {workdir} does not exist')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UsageError(f'--workdirs: {workdir} holds no run (no config.json)')
  with open(config_path) as f:
    record = json.load(f)
  suffix = '' if eval_env in (None, record['env']) else f'_{eval_env}'
  path = os.path.join(workdir, f'eval{suffix}.json')
  if not os.path.exists(path):
    raise UsageError(f'{workdir} is not evaluated (no {os.path.basename(path)}'
                     '); run experiments.evaluate first')
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f'{path} is unreadable ({e})') from None
  report['label'] = record['config'].get('algo', report.get('algo', '?'))
  report['workdir'] = workdir  # as given (the run may have been moved)
  return report


def labelled(reports):
  """Unique labels: the algorithm, plus the directory name where two runs
  share one."""
  labels = [r['label'] for r in reports]
  for r in reports:
    if labels.count(r['label']) > 1:
      r['label'] = f'{r["label"]} ({os.path.basename(r["workdir"].rstrip("/"))})'
  return reports


def run():
  if not _WORKDIRS.value or not _WORKDIRS.value.strip():
    raise UsageError('--workdirs is required (comma-separated run '
                     'directories)')
  if not _OUT.value:
    raise UsageError('--out is required')
  workdirs = [w.strip() for w in _WORKDIRS.value.split(',')]
  if any(not w for w in workdirs):
    raise UsageError(f'--workdirs: empty entry in {_WORKDIRS.value!r}')
  reports = labelled([load_report(w, _EVAL_ENV.value) for w in workdirs])
  envs = sorted({r['eval_env'] for r in reports})
  if len(envs) > 1:
    raise UsageError(f'--workdirs were evaluated on different task sets '
                     f'({", ".join(envs)}); compare one at a time')
  os.makedirs(_OUT.value, exist_ok=True)
  paths = draw(reports, _OUT.value)
  print(f'wrote {", ".join(sorted(paths.values()))}')


def _astar_note(reports) -> str:
  notes = sorted({'A* closed form' if r['astar_budget'] is None
                  else f'A* from {r["astar_budget"]} samples'
                  for r in reports})
  return '; '.join(notes)


def draw(reports, out: str) -> dict:
  """The comparison figures and comparison.json; returns their paths."""
  env = reports[0]['eval_env']
  note = _astar_note(reports)
  astars = [json_array(r['Astar']) for r in reports]
  if any(a.shape != astars[0].shape or not np.allclose(
      a, astars[0], equal_nan=True) for a in astars[1:]):
    print('warning: the runs use different A* (different caches or task '
          'sets); their gaps are not comparable', file=sys.stderr)
  paths = {name: os.path.join(out, f'comparison_{name}.png')
           for name in FIGURES}
  _draw_curves(reports, env, note, paths)
  tasks = [json_array(r['tasks']) for r in reports]
  same_grid = all(t.shape == tasks[0].shape and np.allclose(t, tasks[0])
                  for t in tasks[1:]) and all(
                      r['budgets'] == reports[0]['budgets'] for r in reports)
  if same_grid:
    fig = plots.gap_heatmaps([(r['label'], _summary(r, 'Gn')[0])
                              for r in reports], tasks[0],
                             reports[0]['budgets'],
                             reports[0]['task_names'],
                             title=f'{env}: G_n (mean over members); {note}')
    fig.savefig(paths['gap_heatmap'], dpi=110)
  else:
    print('warning: the runs were evaluated on different tasks or budgets; '
          'no side-by-side heat map', file=sys.stderr)
    del paths['gap_heatmap']

  k = len(reports[0]['task_names'])
  runs = [(r['label'], json_array(r['visited_tasks'][0], k)) for r in reports]
  fig = plots.visited_tasks(runs, reports[0]['train_task_low'],
                            reports[0]['train_task_high'],
                            reports[0]['task_names'],
                            eval_tasks=tasks[0],
                            title=f'{reports[0]["env"]}: training tasks '
                            'visited (first member)')
  fig.savefig(paths['visited_tasks'], dpi=110)
  paths['json'] = os.path.join(out, 'comparison.json')
  write_json(paths['json'], _table(reports))
  return paths


def _summary(r, name):
  """(mean, std) over members of a report's measure `name`."""
  return (json_array(r['summary'][f'{name}_mean']),
          json_array(r['summary'][f'{name}_std']))


def _draw_curves(reports, env, note, paths) -> None:
  """Gmax_n and average A_n against n, a curve per run (those with the
  first run's budgets; a warning names the others)."""
  fig = plots.curves(
      reports[0]['budgets'],
      [(r['label'],) + _summary(r, 'Gmax_n') for r in reports
       if r['budgets'] == reports[0]['budgets']],
      'Gmax_n = max_ψ (A* − A_n)', f'{env}; {note}')
  for r in reports:
    if r['budgets'] != reports[0]['budgets']:
      print(f'warning: {r["workdir"]} has budgets {r["budgets"]}, not '
            f'{reports[0]["budgets"]}; left out of the curves', file=sys.stderr)
  fig.savefig(paths['gmax'], dpi=110)

  lines = []
  for r in reports:
    if r['budgets'] != reports[0]['budgets']:
      continue
    mean_n, std_n = _summary(r, 'average_An')
    a0_mean = json_number(r['summary']['average_A0_mean'])
    a0_std = json_number(r['summary']['average_A0_std'])
    lines.append((r['label'], np.concatenate([[a0_mean], mean_n]),
                  np.concatenate([[a0_std], std_n])))
  fig = plots.curves([0] + reports[0]['budgets'], lines,
                     'average A_n (n = 0: A0)', env)
  fig.savefig(paths['average_return'], dpi=110)


def _table(reports) -> dict:
  """comparison.json: the plotted numbers of every run, by label."""
  return {r['label']: dict(
      workdir=r['workdir'], budgets=r['budgets'],
      astar_method=r['astar_method'], astar_budget=r['astar_budget'],
      members=r['summary']['members'],
      Gmax_n_mean=r['summary']['Gmax_n_mean'],
      Gmax_n_std=r['summary']['Gmax_n_std'],
      average_An_mean=r['summary']['average_An_mean'],
      average_An_std=r['summary']['average_An_std'],
      average_A0_mean=r['summary']['average_A0_mean'])
          for r in reports}


if __name__ == '__main__':
  app.run(main)
