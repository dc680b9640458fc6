r"""Two or more SLBO learning curves of the same task, side by side.

    python -m experiments.compare_curves \
        --curves=docs/slbo_ant2d,docs/slbo_ant2d_ensemble \
        --labels=deterministic,ensemble --out=docs/slbo_ant2d_models

Reads the `<curve>.json` files that `experiments.slbo_curve` wrote (same
environment, task ψ, real samples per stage and seeds; anything else is
refused) and writes `<out>.png` and `<out>.json`:

  real return      the mean policy's return on fresh real episodes against
                   real samples: mean over seeds with its 95% Student-t
                   interval;
  model exploitation  the virtual return (the last TRPO step's model
                   roll-outs, each stage's last VirtualTraining iteration)
                   minus the real return after that stage. Positive: the
                   policy looks better in the model than it is (the model
                   is exploited); negative: the model under-rates it. The
                   virtual return is the stochastic policy's, the real one
                   the mean policy's, so the two rows share that bias.

`<out>.json` holds, per curve, the mean and interval at every stage, the
first and last three stages' means, and the paired (by seed) difference of
each curve against the first (mean and 95% Student-t interval of the
per-seed differences). Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib
matplotlib.use('Agg')  # before pyplot is imported
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from admrl_jax.evaluation import stats
from admrl_jax.fileio import to_jsonable
from experiments.common import UsageError, json_number, run_main, write_json
# pylint: enable=g-import-not-at-top,wrong-import-position

_CURVES = flags.DEFINE_string(
    'curves', None, 'Comma-separated learning-curve files (with or without '
    '.json) written by experiments.slbo_curve.')
_LABELS = flags.DEFINE_string('labels', None, 'Comma-separated labels, one '
                              'per curve (default: the file names).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension.')

# What the curves must share to be compared.
_SHARED = ('env', 'psi', 'pipeline', 'frame_skip')
_SHARED_BUDGET = ('real_samples_per_stage', 'eval_episodes', 'virtual_start',
                  'virtual_rollout_steps')


def main(argv):
  run_main(argv, run)


def load_curve(path: str) -> dict:
  """A finished learning curve (`experiments.slbo_curve`'s JSON)."""
  path = path if path.endswith('.json') else path + '.json'
  if not os.path.exists(path):
    raise UsageError(f'--curves: {path} does not exist')
  try:
    with open(path) as f:
      curve = json.load(f)
    curve['curves'] = {int(s): c for s, c in curve['curves'].items()}
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise UsageError(f'--curves: {path} is not a learning-curve file '
                     f'({e})') from None
  if curve.get('complete') is False:
    raise UsageError(f'--curves: {path} is not finished; rerun its '
                     'slbo_curve command to continue it')
  curve['path'] = path
  return curve


def table(curve):
  """(seeds, stages + 1) arrays of real return and virtual − real (NaN at
  stage 0, before any training)."""
  def column(name):   # a missing or null value (not finite) is NaN
    return np.array([[json_number(row.get(name))
                      for row in curve['curves'][s]] for s in seeds])

  seeds = sorted(curve['curves'])
  real, virtual = column('return_mean'), column('virtual_return')
  return seeds, real, virtual - real


def run():
  if not _CURVES.value or not _OUT.value:
    raise UsageError('--curves and --out are required')
  paths = [p.strip() for p in _CURVES.value.split(',')]
  if len(paths) < 2 or any(not p for p in paths):
    raise UsageError(f'--curves: give two or more files, got '
                     f'{_CURVES.value!r}')
  labels = ([l.strip() for l in _LABELS.value.split(',')] if _LABELS.value
            else [os.path.basename(p).removesuffix('.json') for p in paths])
  if len(labels) != len(paths):
    raise UsageError(f'--labels: {len(labels)} labels for {len(paths)} '
                     'curves')
  curves = [load_curve(p) for p in paths]
  first = curves[0]
  for c in curves[1:]:
    differ = [k for k in _SHARED if c.get(k) != first.get(k)] + [
        f'budget.{k}' for k in _SHARED_BUDGET
        if c['budget'].get(k) != first['budget'].get(k)]
    if sorted(c['curves']) != sorted(first['curves']):
      differ.append('seeds')
    if len(next(iter(c['curves'].values()))) != len(
        next(iter(first['curves'].values()))):
      differ.append('budget.stages')
    if differ:
      raise UsageError(f'{c["path"]} and {first["path"]} differ in '
                       f'{", ".join(differ)}; they are not the same '
                       'experiment')
  report = compare(curves, labels)
  write_json(_OUT.value + '.json', report)
  draw(report, _OUT.value + '.png')
  for row in report['rows']:
    print(json.dumps({k: row[k] for k in (
        'label', 'initial', 'last_3', 'exploitation_first_3',
        'exploitation_last_3')}))
  print(f'wrote {_OUT.value}.json, {_OUT.value}.png')


def compare(curves, labels) -> dict:
  """The numbers `<out>.json` holds (see the module docstring)."""
  def ci(values):   # JSON has no NaN: an interval of one seed is null
    out = stats.mean_ci(values)
    return {k: to_jsonable(out[k]) for k in ('mean', 'lo', 'hi')}


  rows, base = [], None
  for curve, label in zip(curves, labels):
    seeds, real, exploit = table(curve)
    row = dict(
        label=label, path=curve['path'], seeds=seeds,
        model_kind=curve['budget'].get('model_kind', 'mlp'),
        real_samples=[r['real_samples']
                      for r in curve['curves'][seeds[0]]],
        real_return=ci(real),            # one interval per stage
        exploitation=ci(exploit[:, 1:]),
        initial=ci(real[:, 0]),
        last_3=ci(real[:, -3:].mean(axis=1)),
        gain=ci(real[:, -3:].mean(axis=1) - real[:, 0]),
        exploitation_first_3=ci(exploit[:, 1:4].mean(axis=1)),
        exploitation_last_3=ci(exploit[:, 1:][:, -3:].mean(axis=1)))
    if base is None:
      base = (real, exploit)
    else:
      def paired(a, b):   # seeds pair up by number
        return ci(np.asarray(a) - np.asarray(b))
      row[f'minus_{labels[0]}'] = dict(
          last_3=paired(real[:, -3:].mean(axis=1),
                        base[0][:, -3:].mean(axis=1)),
          exploitation_last_3=paired(exploit[:, 1:][:, -3:].mean(axis=1),
                                     base[1][:, 1:][:, -3:].mean(axis=1)))
    rows.append(row)
  first = curves[0]
  return dict(
      env=first['env'], psi=first['psi'], pipeline=first.get('pipeline'),
      frame_skip=first.get('frame_skip'),
      real_samples_per_stage=first['budget']['real_samples_per_stage'],
      what=('mean over seeds and 95% Student-t interval; last_3: mean of '
            'the last 3 evaluations per seed; exploitation: virtual return '
            '− real return per stage (first_3/last_3: its mean over the '
            'first/last 3 stages, overlapping below 6 stages); '
            'minus_<first>: the per-seed difference, mean and 95% Student-t '
            'interval; null: undefined (one seed) or not finite'),
      rows=rows)


def draw(report, path: str) -> None:
  """<out>.png: real return and model exploitation against real samples,
  a curve and its interval per learning curve."""
  fig, (ax_real, ax_gap) = plt.subplots(1, 2, figsize=(10, 3.8))
  for row in report['rows']:
    x = np.array(row['real_samples'])
    for ax, key, xs in ((ax_real, 'real_return', x),
                        (ax_gap, 'exploitation', x[1:])):
      band = row[key]
      line, = ax.plot(xs, band['mean'], marker='o', ms=3,
                      label=f'{row["label"]} ({len(row["seeds"])} seeds)')
      if None not in band['lo']:
        ax.fill_between(xs, band['lo'], band['hi'], alpha=0.2,
                        color=line.get_color())
  ax_gap.axhline(0.0, color='grey', lw=1)
  ax_real.set_ylabel('real return (mean policy)')
  ax_gap.set_ylabel('virtual return − real return')
  psi = [round(float(v), 2) for v in report['psi']]
  ax_real.set_title(f'{report["env"]}, ψ = {psi}: real return')
  ax_gap.set_title('model exploitation')
  for ax in (ax_real, ax_gap):
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f'{v / 1000:g}k' if v else '0'))
    ax.set_xlabel('real samples')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  app.run(main)
