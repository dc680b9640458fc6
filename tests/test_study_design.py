"""The arms of a study and the summary of the adaptation check, on
synthetic data (no training)."""
import numpy as np
import pytest

from admrl_jax import linalg
from experiments import adaptation_analysis
from experiments import presets
from experiments import study_design


def test_arms_train_what_their_names_say():
  settings = dict(env='lq', scale='controls', seeds=[0, 1],
                  algos=list(study_design.ALGOS),
                  alphas={'admrl': [0.5], 'admrl_paper': [1.0]})
  runs = study_design.training_runs(settings)
  assert list(runs) == list(study_design.ALGOS)
  ours, paper = runs['admrl'][1], runs['admrl_paper'][1]
  # The validated estimator and the normalised step against the paper's.
  assert (ours.task_gradient.hessian, ours.task_gradient.linear_solver.kind,
          ours.step_rule) == ('pathwise', 'minres', 'normalized')
  assert (paper.task_gradient.hessian, paper.task_gradient.normalization,
          paper.step_rule) == ('reinforce', 'per_sample', 'paper')
  assert paper.task_gradient.linear_solver == linalg.NormalCG(iters=50)
  # Every arm shares the scale's training sizes and differs in its algo
  # (the meta-RL baselines: their own preset, tests/test_baseline_settings).
  for arm, (_, config, alphas, seeds, _) in runs.items():
    assert config.algo == study_design.ARMS[arm].algo
    if study_design.is_baseline(arm):
      assert alphas == [None] and seeds == [0, 1]
      continue
    assert config.n_tasks == 12 and config.slbo.n_inner == 3
    assert seeds == [0, 1]
    assert len(alphas) == 1
  assert runs['admrl'][2] == [0.5] and runs['admrl_paper'][2] == [1.0]
  assert study_design.arm_label('admrl_paper', 1.0) == 'admrl_paper α=1'
  assert study_design.arm_label('mb_cem', 1.0) == 'mb_cem'


def test_a_scale_sets_the_baselines_iterations_and_the_budgets():
  settings = dict(env='lq', scale='figure2', seeds=[0],
                  algos=['mb_unif', 'maml', 'pearl'], alphas={})
  runs = study_design.training_runs(settings)
  iterations = dict(study_design.SCALES['figure2'].baseline_iterations)
  assert {arm: runs[arm][1].n_iterations for arm in ('maml', 'pearl')} == (
      iterations)
  assert runs['mb_unif'][1].n_tasks == study_design.SCALES['figure2'].ntasks
  # A scale that names no baseline budget runs the preset's.
  settings['scale'] = 'study'
  assert study_design.training_runs(settings)['maml'][1].n_iterations == (
      presets.BASELINE_ITERATIONS['quick'])


def _result(a, se, virtual, budgets):
  """The JSON of an adaptation check from arrays (s, t, r, 1 + b)."""
  s, t, r, _ = a.shape
  cells = {}
  for m in range(s):
    for i in range(t):
      for k in range(r):
        cells[f'{m},{i},{k}'] = dict(
            a0=a[m, i, k, 0], an=list(a[m, i, k, 1:]), a0_se=se[m, i, k, 0],
            an_se=list(se[m, i, k, 1:]), virtual=list(virtual[m, i, k]))
  check = dict(arm='mb_unif', members=list(range(s)), repeats=r,
               stages=list(range(1, len(budgets) + 1)), episodes=100,
               study=dict(env='lq', scale='controls'))
  result = dict(tasks=[[0.0, 0.0]] * t, budgets=budgets, cells=cells,
                astar=[0.0] * t)
  return result, check


def test_adaptation_check_separates_noise_from_a_change_with_n():
  rng = np.random.default_rng(0)
  s, t, r, budgets = 4, 3, 50, [10, 20]
  # A_n falls by 1 from the first to the second stage for every member;
  # adaptations of a cell spread with s.d. 0.5 (first stage) and 2
  # (second); the evaluation's standard error is 0.3 everywhere and is
  # already inside the values (it must be taken out of the spread).
  base = np.array([-5.0, -4.0, -5.0])
  sd_adapt = np.array([0.0, 0.5, 2.0])
  a = (base + rng.normal(size=(s, t, r, 3)) * np.sqrt(sd_adapt ** 2 + 0.09))
  se = np.full_like(a, 0.3)
  virtual = np.zeros_like(a)
  result, check = _result(a, se, virtual, budgets)
  summary = adaptation_analysis.summarize(result, check, None)
  change = summary['change_from_first_stage']
  assert change['mean'][1] == 0.0
  assert change['mean'][2] == pytest.approx(-1.0, abs=0.3)
  assert change['hi'][2] < 0  # a fall, seen at 4 members
  np.testing.assert_allclose(summary['eval_sd'], [0.3] * 3)
  np.testing.assert_allclose(summary['eval_sd_first_study'],
                             [0.3 * np.sqrt(10)] * 3)
  np.testing.assert_allclose(summary['adaptation_sd'][1:], [0.5, 2.0],
                             rtol=0.15)
  # Gmax_n of one noisy adaptation exceeds that of the mean over repeats.
  assert (summary['gmax_one_adaptation']['mean'][2]
          > summary['gmax_mean_of_repeats']['mean'][2] + 1.0)
  # The model's return is 0 here: virtual − real = −A_n.
  np.testing.assert_allclose(summary['virtual_minus_real']['mean'],
                             -a.mean(axis=(1, 2)).mean(axis=0))
  text = adaptation_analysis.markdown(summary, result, check)
  assert '| A_n − A_first stage |' in text and 'n = 20' in text


def test_step_truth_recovers_a_known_gradient():
  """The step check's finite differences, cosines and summary on gaps of a
  known quadratic L(u) = a·u + ½|u|² seen through 4 noisy draws."""
  from experiments import step_truth_analysis as sta  # pylint: disable=g-import-not-at-top
  h, k, n_keys = 0.1, 3, 4
  rng = np.random.default_rng(0)
  a = np.array([1.0, -2.0, 0.5])
  members = []
  for m in range(3):
    u = rng.uniform(-0.5, 0.5, k)
    offsets = np.zeros((2 * k + 1, k))
    for i in range(k):
      offsets[1 + 2 * i, i], offsets[2 + 2 * i, i] = h, -h
    us = u + offsets
    gaps = np.stack([us @ a + 0.5 * np.sum(us ** 2, axis=1)
                     + 0.01 * rng.normal() for _ in range(n_keys)])
    members.append((u, gaps))
  truth = [a + u for u, _ in members]
  # Member 0 steps along the truth, member 1 against it, member 2 nearly
  # across it (slightly against).
  across = np.cross(truth[2], [0.0, 0.0, 1.0])
  across *= np.linalg.norm(truth[2]) / np.linalg.norm(across)
  grads = [3.0 * truth[0], -truth[1], across - 0.1 * truth[2]]
  out = dict(u=np.stack([u for u, _ in members]),
             gaps=np.stack([g for _, g in members]),
             grad_u=np.stack(grads), return_hat=np.zeros(3))
  cells = sta.cells(out, h, [grads[0], None, grads[2] + 0.5])
  for cell, t in zip(cells, truth):
    np.testing.assert_allclose(cell['truth'], t, atol=1e-9)
    assert cell['truth_halves_cos'] > 0.999
  cos = [c['cos'] for c in cells]
  np.testing.assert_allclose(cos, [1.0, -1.0, -0.1 / np.sqrt(1.01)],
                             atol=1e-9)
  assert cells[0]['logged_grad_diff'] == 0.0
  assert 'logged_grad_diff' not in cells[1]
  assert cells[2]['logged_grad_diff'] == 0.5
  result = dict(settings=dict(h=h, keys=n_keys, episodes=10),
                members=[[0, 1.0], [1, 1.0], [2, 1.0]],
                cells={'1': cells, '2': cells})
  summary = sta.summarize(result)
  assert summary['n'] == 6 and summary['n_members'] == 3
  assert summary['ascent_fraction'] == 1 / 3
  np.testing.assert_allclose(summary['cos_mean'][0], np.mean(cos),
                             atol=1e-9)
  assert summary['cos_mean'][1] < -0.5 and summary['cos_mean'][2] > 0.5
  text = sta.markdown(summary, result, 'runs/x')
  assert '| 2 | 1, 1 |' in text and '-1.00' in text
