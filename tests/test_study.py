"""The study (experiments/study.py) end to end on lq at smoke size: an
uninterrupted study equals one killed (SIGKILL) while training, interrupted
(Ctrl-C) while evaluating and resumed twice; its outputs hold every measure;
settings that contradict a study directory are refused. And the statistics
it reports against their definitions."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from admrl_jax.evaluation import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mb_cem, not mb_gauss: the arm that measures gaps to choose its tasks
# (MB-Gauss differs from MB-Unif only in its sampler, tested in test_admrl).
SMOKE = ['--env=lq', '--scale=smoke', '--algos=admrl,mb_unif,mb_cem']


def _study(args, env):
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.study', *SMOKE, *args], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc, timeout=900):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _wait_for(path, proc, timeout=900, check=None):
  deadline = time.time() + timeout
  while not (os.path.exists(path) and (check is None or check(path))):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.3)


def _evaluated_tasks(path):
  try:
    with open(path) as f:
      return sum(v is not None for row in json.load(f)['a0'] for v in row)
  except (OSError, ValueError):
    return 0


@pytest.fixture(scope='module')
def studies(tmp_path_factory):
  """An uninterrupted study; then the same study killed with SIGKILL after
  the first mb_unif task iteration, resumed and interrupted with SIGINT
  after an admrl evaluation (pausing 10 s after each evaluated task, so the
  signal lands in a known place), and resumed to the end. The broken study
  runs after the whole one: its programs come from the persistent cache."""
  base = tmp_path_factory.mktemp('study')
  env = dict(os.environ)
  whole, broken = str(base / 'whole'), str(base / 'broken')
  first = _finish(_study([f'--workdir={whole}'], env))
  proc = _study([f'--workdir={broken}'], env)
  _wait_for(os.path.join(broken, 'train', 'mb_unif', 'checkpoints', '1'),
            proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = _study([f'--workdir={broken}', '--throttle_s=10'], env)
  admrl_eval = os.path.join(broken, 'eval', 'admrl.json')
  _wait_for(admrl_eval, proc, check=lambda p: _evaluated_tasks(p) >= 1)
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  interrupt = dict(seconds=time.time() - sent, returncode=proc.returncode,
                   stdout=out, stderr=err,
                   evaluated=_evaluated_tasks(admrl_eval))
  last = _finish(_study([f'--workdir={broken}'], env))
  return dict(whole=whole, broken=broken, interrupt=interrupt, last=last,
              first=first)


def _report(workdir):
  with open(os.path.join(workdir, 'study.json')) as f:
    return json.load(f)


def test_interrupted_and_resumed_study_equals_the_uninterrupted_one(studies):
  assert _report(studies['whole']) == _report(studies['broken'])


def test_ctrl_c_stops_within_seconds_with_one_line_and_keeps_pieces(studies):
  interrupt = studies['interrupt']
  assert interrupt['returncode'] == 130
  assert interrupt['seconds'] < 10
  lines = [line for line in interrupt['stderr'].splitlines()
           if line.strip() and 'warp' not in line and not line.startswith(
               ('I', 'W'))]
  assert len(lines) == 1 and 'interrupted' in lines[0], interrupt['stderr']
  assert 'Traceback' not in interrupt['stderr']
  assert interrupt['evaluated'] >= 1
  # The last run trained nothing and evaluated only what was missing.
  last = studies['last']
  assert ': task ' not in last  # no task iteration re-run
  n_admrl = len(_report(studies['whole'])['methods']['admrl α=0.5']['seeds'])
  evaluated = last.count('admrl member ')
  assert evaluated == n_admrl * 9 - interrupt['evaluated']


def test_report_holds_every_measure_with_intervals(studies):
  report = _report(studies['whole'])
  assert report['budgets'] == [0, 100, 200]
  assert report['astar_method'] == 'closed_form'
  assert set(report['methods']) == {'admrl α=0.5', 'mb_unif', 'mb_cem'}
  for label, row in report['table'].items():
    for measure in ('Gmax_n', 'CVaR_Gn', 'mean_Gn', 'average_An'):
      cell = row[measure]
      assert cell['n'] == 2 and len(cell['mean']) == 3
      for m, lo, hi in zip(cell['mean'], cell['lo'], cell['hi']):
        assert lo <= m <= hi, (label, measure)
    # Gmax_n is the max of G_n: above the mean gap and the CVaR, per seed.
    per_seed = report['methods'][label]['per_seed']
    assert np.all(np.asarray(per_seed['Gmax_n'])
                  >= np.asarray(per_seed['CVaR_Gn']) - 1e-9)
    assert np.all(np.asarray(per_seed['CVaR_Gn'])
                  >= np.asarray(per_seed['mean_Gn']) - 1e-9)
  assert set(report['paired']) == {'admrl α=0.5 − mb_unif',
                                   'admrl α=0.5 − mb_cem'}
  # Paired differences are the differences of the per-seed values.
  diff = report['paired']['admrl α=0.5 − mb_unif']['Gmax_n']['mean']
  a = np.asarray(report['methods']['admrl α=0.5']['per_seed']['Gmax_n'])
  b = np.asarray(report['methods']['mb_unif']['per_seed']['Gmax_n'])
  np.testing.assert_allclose(diff, (a - b).mean(axis=0))
  diag = report['diagnostics']['admrl α=0.5']
  assert diag['steps'] == 2 * 2  # 2 seeds × task iterations 2 and 3
  assert -1.0 <= diag['repeat_cosine_mean'] <= 1.0
  assert 0.0 <= diag['clipped_fraction'] <= 1.0
  for name in ('gap_heatmaps', 'Gmax_n', 'CVaR_Gn', 'average_An',
               'visited_tasks'):
    assert os.path.getsize(os.path.join(studies['whole'], 'figures',
                                        f'{name}.png')) > 1000
  with open(os.path.join(studies['whole'], 'study.md')) as f:
    md = f.read()
  assert '## Gmax_n' in md and 'admrl α=0.5 − mb_cem' in md
  # Two seeds: paired t-intervals with p-values, no bootstrap interval.
  assert '(p = ' in md and 'boot.' not in md and 'too few distinct' in md
  paired = report['paired']['admrl α=0.5 − mb_unif']['Gmax_n']
  assert len(paired['p_value']) == 3 and len(paired['boot_lo']) == 3


def test_progress_lines_have_an_eta(studies):
  lines = [line for line in studies['first'].splitlines()
           if 'study ETA' in line]
  assert len(lines) > 20  # training iterations and evaluated tasks


def _tree_hash(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


@pytest.mark.parametrize('args,message', [
    (['--seeds=0,1,2'], 'other settings'),
    (['--algos=admrl,mb_unif'], 'other settings'),
    (['--alpha=2'], 'other settings'),
])
def test_contradicting_flags_are_refused_and_nothing_is_touched(
    studies, args, message):
  before = _tree_hash(studies['whole'])
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.study', *SMOKE,
       f'--workdir={studies["whole"]}', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert _tree_hash(studies['whole']) == before


@pytest.mark.parametrize('args,message', [
    (['--scale=huge'], 'unknown scale'),
    (['--algos=admrl,reptile'], '--algos'),
    (['--seeds=0,0'], 'repeated seed'),
    (['--alpha=-1'], 'must be > 0'),
    (['--env=nope'], 'unknown environment'),
])
def test_bad_flags_exit_2_before_writing(tmp_path, args, message):
  workdir = tmp_path / 'study'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.study', *SMOKE,
       f'--workdir={workdir}', *args], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists()


# ------------------------------------------------------------- statistics
def test_cvar_is_the_mean_of_the_worst_tenth():
  rng = np.random.default_rng(0)
  gaps = rng.normal(size=(3, 36, 2))          # (seeds, tasks, budgets)
  out = stats.cvar(gaps, 0.1, axis=1)
  assert out.shape == (3, 2)
  for s in range(3):
    for b in range(2):
      worst = np.sort(gaps[s, :, b])[-4:]     # ⌈0.1 · 36⌉ = 4 tasks
      assert math.isclose(out[s, b], worst.mean())
  # 9 tasks: the worst one, i.e. the maximum.
  np.testing.assert_allclose(stats.cvar(gaps[:, :9], 0.1, axis=1),
                             gaps[:, :9].max(axis=1))
  assert np.isnan(stats.cvar(np.asarray([1.0, np.nan, 0.0]), 0.5, axis=0))
  with pytest.raises(ValueError, match='q must be'):
    stats.cvar(gaps, 0.0)


def test_mean_ci_is_the_student_t_interval():
  x = np.asarray([1.0, 2.0, 4.0, 7.0])
  out = stats.mean_ci(x)
  half = 3.182 * np.std(x, ddof=1) / 2.0      # t_{0.975, 3}, √4
  assert math.isclose(out['mean'], 3.5)
  assert math.isclose(out['hi'] - out['mean'], half)
  assert math.isclose(out['mean'] - out['lo'], half)
  assert np.isnan(stats.mean_ci([1.0])['lo'])
  assert stats.t_quantile_975(1000) == 1.96
  with pytest.raises(ValueError):
    stats.t_quantile_975(0)


def test_paired_bootstrap_interval():
  a = np.asarray([3.0, 5.0, 4.0, 6.0])
  out = stats.paired_bootstrap(a, a - 1.5)
  # A constant difference has a degenerate interval at that value.
  assert out['mean'] == out['lo'] == out['hi'] == 1.5
  assert out['p_below_zero'] == 0.0
  rng = np.random.default_rng(1)
  b = rng.normal(size=(10, 3))
  c = b + rng.normal(size=(10, 3))
  out = stats.paired_bootstrap(c, b)
  np.testing.assert_allclose(out['mean'], (c - b).mean(axis=0))
  assert np.all(out['lo'] <= out['mean']) and np.all(out['mean'] <= out['hi'])
  # Its width is close to the t-interval's for 10 seeds.
  t = stats.mean_ci(c - b)
  np.testing.assert_allclose(out['hi'] - out['lo'], t['hi'] - t['lo'],
                             rtol=0.35)
  with pytest.raises(ValueError, match='same shape'):
    stats.paired_bootstrap(a, a[:3])


def test_paired_t_interval_and_p_value():
  """Against a hand computation and scipy's paired t-test: d = a − b =
  (1, 2, 3, 4, 6), mean 3.2, s = 1.924, se = 0.8602, t = 3.720 on 4 df,
  half-width t_{0.975,4}·se = 2.776·0.8602 = 2.388, p = 0.0205."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  b = np.asarray([1.0, 0.0, 2.0, -1.0, 0.5])
  a = b + np.asarray([1.0, 2.0, 3.0, 4.0, 6.0])
  out = stats.paired_t(a, b)
  np.testing.assert_allclose(out['mean'], 3.2)
  np.testing.assert_allclose(out['hi'] - out['mean'], 2.776 * 0.86023,
                             rtol=1e-4)
  np.testing.assert_allclose(out['p_value'],
                             scipy_stats.ttest_rel(a, b).pvalue, rtol=1e-10)
  np.testing.assert_allclose(out['p_value'], 0.0205, atol=5e-4)
  # Per column; one seed gives NaN; a constant non-zero difference p = 0.
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
  np.testing.assert_allclose(stats.paired_t(x, y)['p_value'],
                             scipy_stats.ttest_rel(x, y).pvalue, rtol=1e-10)
  assert np.isnan(stats.paired_t(a[:1], b[:1])['p_value'])
  assert stats.paired_t(b + 1.5, b)['p_value'] == 0.0
  assert stats.paired_t(b, b)['p_value'] == 1.0
  # A NaN seed (a diverged run): no interval and no p-value for its column.
  out = stats.paired_t([[1.0, 2.0], [np.nan, 3.0], [2.0, 5.0]],
                       np.zeros((3, 2)))
  assert np.isnan(out['p_value'][0]) and np.isnan(out['lo'][0])
  assert np.isfinite(out['p_value'][1])


def test_cosine_and_quantiles():
  assert math.isclose(float(stats.cosine([1.0, 0.0], [1.0, 1.0])),
                      1 / math.sqrt(2))
  assert np.isnan(stats.cosine([0.0, 0.0], [1.0, 1.0]))
  assert stats.quantiles([np.nan]) is None
  assert stats.quantiles([3.0, 1.0, 2.0, np.nan]) == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_corrupt_piece_file_is_refused_and_left_alone(studies, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'copy'
  shutil.copytree(studies['whole'], workdir)
  piece = workdir / 'eval' / 'mb_cem.json'
  piece.write_text('{"members": [')
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.study', *SMOKE,
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'mb_cem.json is unreadable' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert piece.read_text() == '{"members": ['


def test_the_study_says_when_it_compiles(studies):
  """No minute of silence: the driver's compile lines of each arm, and the
  evaluation's, reach the study's output."""
  first = studies['first']
  for arm in ('admrl', 'mb_unif', 'mb_cem'):
    assert f'{arm}: task 1/3: compiling the task iteration' in first, first
    assert f'{arm}: evaluating ' in first and 'compiling the adaptation' in (
        first)
