"""A smoke study of AdMRL against the meta-RL baselines MAML and PEARL on lq
(`python -m experiments.study --algos=admrl,maml,pearl`): one report with
the same tasks, A* and paired seeds for every method, each A_n measured by
the method's own adaptation with the study's key of its (seed, task), and
each method's real samples of training recorded and shown."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('baseline_study') / 'study')
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.study', '--env=lq', '--scale=smoke',
       '--algos=admrl,maml,pearl', f'--workdir={workdir}'], cwd=ROOT,
      capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'study.json')) as f:
    return workdir, json.load(f), proc.stdout


def test_one_report_with_the_same_tasks_astar_and_seeds(study):
  workdir, report, _ = study
  assert set(report['methods']) == {'admrl α=0.5', 'maml', 'pearl'}
  assert report['budgets'] == [0, 100, 200]
  assert report['astar_method'] == 'closed_form'
  for label, method in report['methods'].items():
    assert method['seeds'] == [0, 1], label
    assert len(method['Gn_mean']) == len(report['tasks']) == 9
    row = report['table'][label]['average_An']
    assert row['n'] == 2 and len(row['mean']) == 3
  # G_n = A* − A_n with one A* for every method.
  astar = np.asarray(report['astar'])
  for algo in ('maml', 'pearl'):
    with open(os.path.join(workdir, 'eval', f'{algo}.json')) as f:
      result = json.load(f)
    np.testing.assert_allclose(result['tasks'], report['tasks'])
    returns = np.concatenate([np.asarray(result['a0'])[:, :, None],
                              np.asarray(result['an'])], axis=-1)
    np.testing.assert_allclose(report['methods'][algo]['Gn_mean'],
                               (astar[None, :, None] - returns).mean(axis=0),
                               rtol=1e-9, atol=1e-9)
  assert set(report['paired']) == {'admrl α=0.5 − maml',
                                   'admrl α=0.5 − pearl'}


def test_real_samples_of_training_are_recorded_and_shown(study):
  workdir, report, _ = study
  for label, algo in (('maml', 'maml'), ('pearl', 'pearl'),
                      ('admrl α=0.5', 'admrl')):
    with open(os.path.join(workdir, 'train', algo, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    last = {r['seed']: r['real_samples'] for r in rows}  # in order
    assert report['methods'][label]['real_samples'] == [last[0], last[1]]
    assert report['real_samples'][algo] == max(last.values())
  with open(os.path.join(workdir, 'study.md')) as f:
    md = f.read()
  assert '## Real samples of training' in md
  from experiments import study_design  # pylint: disable=g-import-not-at-top
  for label in ('maml', 'pearl', 'admrl α=0.5'):
    text = study_design.method_samples(report['methods'][label])
    assert f'| {label} | {text} |' in md
  for name in ('Gmax_n', 'average_An', 'visited_tasks'):
    assert os.path.getsize(os.path.join(workdir, 'figures',
                                        f'{name}.png')) > 1000


def test_baseline_a_n_uses_the_study_key_of_its_seed_and_task(study):
  """eval/maml.json's cell (seed 1, task 4) is the baselines' Evaluator
  with the key fold_in(fold_in(key(EVAL_SEED), seed), task) that every
  arm's cell (seed 1, task 4) uses."""
  from experiments import baselines  # pylint: disable=g-import-not-at-top
  from experiments import study_design  # pylint: disable=g-import-not-at-top
  from experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir, report, _ = study
  run_dir = os.path.join(workdir, 'train', 'maml')
  family, config, record = workdir_lib.load_config(run_dir)
  state, _ = workdir_lib.load_state(run_dir, family, config, record)
  evaluator = baselines.Evaluator(family, config, (100, 200), 4)
  seed, task = 1, 4
  key = jax.random.fold_in(jax.random.fold_in(
      jax.random.key(study_design.EVAL_SEED), seed), task)
  out = jax.jit(evaluator.adapt)(evaluator.member_params(state, 1),
                                 np.asarray(report['tasks'][task],
                                            np.float32), key)
  with open(os.path.join(workdir, 'eval', 'maml.json')) as f:
    result = json.load(f)
  np.testing.assert_allclose(result['a0'][1][task], float(out.a0),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result['an'][1][task], np.asarray(out.an),
                             rtol=1e-5, atol=1e-5)
