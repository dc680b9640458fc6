"""Evaluation on lq against its closed-form optimum: A0/A_n adaptation, A*
(closed form and the SLBO estimate), the gap metrics, the grid helpers of
the figures, and the evaluate/plot scripts end to end (with bad input)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_count
from admrl_jax import envs
from admrl_jax import fileio
from admrl_jax.evaluation import adaptation
from admrl_jax.evaluation import metrics
from admrl_jax.evaluation import optimum
from admrl_jax.evaluation import plots
from admrl_jax.models import dataset as dataset_lib
from admrl_jax.models import dynamics
from admrl_jax.models.dynamics import ModelConfig
from admrl_jax.rl import rollout
from admrl_jax.rl import slbo
from admrl_jax.rl.rollout import RolloutConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HORIZON = 20
STAGE = 200          # 10 environments × one 20-step episode
EPISODES = 20
SMOKE_HORIZON = 25   # the lq smoke preset's


# Processes started; at teardown (e.g. when the end-to-end tests were
# deselected) the running ones are killed and no new one starts.
_LIVE = []
_LOCK = threading.Lock()
_STOP = threading.Event()


def _script(module, *args, env=None):
  with _LOCK:
    if _STOP.is_set():
      raise RuntimeError('module teardown: not starting ' + module)
    proc = subprocess.Popen(
        [sys.executable, '-m', module, *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _LIVE.append(proc)
  return proc


def _pipeline(base, results):
  """The scripts one after the other: a 2-task smoke run, evaluate (with the
  bad-input cases beside it), then plot against a copy of the run; then the
  same evaluation of another copy, interrupted and run again."""
  workdir = os.path.join(base, 'lq-admrl')
  results['workdir'] = workdir
  try:
    run = _script('experiments.run', '--env=lq', '--preset=smoke',
                  '--ntasks=2', f'--workdir={workdir}')
    results['run'] = run.communicate(timeout=600) + (run.returncode,)
    if run.returncode:
      return
    interrupted = os.path.join(base, 'lq-interrupted')
    shutil.copytree(workdir, interrupted)
    no_checkpoint = os.path.join(base, 'no-checkpoint')
    os.makedirs(no_checkpoint)
    shutil.copy(os.path.join(workdir, 'config.json'), no_checkpoint)
    bad = {
        'missing workdir': ('experiments.evaluate', f'--workdir={base}/none'),
        'no workdir flag': ('experiments.evaluate',),
        'no checkpoint': ('experiments.evaluate',
                          f'--workdir={no_checkpoint}', '--budgets=50'),
        'bad list': ('experiments.evaluate', f'--workdir={workdir}',
                     '--budgets=50,abc'),
        'decreasing': ('experiments.evaluate', f'--workdir={workdir}',
                       '--budgets=100,50'),
        'not whole episodes': ('experiments.evaluate',
                               f'--workdir={workdir}', '--budgets=30'),
        'unknown eval env': ('experiments.evaluate', f'--workdir={workdir}',
                             '--budgets=50', '--eval_env=nope'),
        'plot not evaluated': ('experiments.plot',
                               f'--workdirs={no_checkpoint}',
                               f'--out={base}/figures'),
        'plot no out': ('experiments.plot', f'--workdirs={workdir}'),
    }
    t0 = time.time()
    evaluate = _script('experiments.evaluate', f'--workdir={workdir}',
                       '--budgets=50,100', '--max_tasks=3',
                       env=dict(os.environ, ADMRL_JAX_ASTAR_CACHE=os.path.join(
                           base, 'astar_cache.json')))
    bad_procs = {what: _script(*args) for what, args in bad.items()}
    results['bad'] = {what: p.communicate(timeout=600)[1:] + (p.returncode,)
                      for what, p in bad_procs.items()}
    results['evaluate'] = evaluate.communicate(timeout=600) + (
        evaluate.returncode,)
    results['evaluate_wall_s'] = time.time() - t0
    if evaluate.returncode:
      return
    other = os.path.join(base, 'lq-copy')
    shutil.copytree(workdir, other)
    plot = _script('experiments.plot', f'--workdirs={workdir},{other}',
                   f'--out={base}/figures')
    results['plot'] = plot.communicate(timeout=600) + (plot.returncode,)
    # Other budgets: refused beside the finished evaluation, written with
    # --out into another directory.
    with open(os.path.join(workdir, 'eval.json'), 'rb') as f:
      results['eval_before'] = f.read()
    refused = _script('experiments.evaluate', f'--workdir={workdir}',
                      '--budgets=50', '--max_tasks=1')
    results['refused'] = refused.communicate(timeout=600) + (
        refused.returncode,)
    with open(os.path.join(workdir, 'eval.json'), 'rb') as f:
      results['eval_after'] = f.read()
    results['out_dir'] = os.path.join(base, 'eval-50')
    elsewhere = _script('experiments.evaluate', f'--workdir={workdir}',
                        '--budgets=50', '--max_tasks=1',
                        f'--out={results["out_dir"]}')
    results['elsewhere'] = elsewhere.communicate(timeout=600) + (
        elsewhere.returncode,)
    _interrupt_and_resume(interrupted, results)
  except Exception as e:  # pylint: disable=broad-except
    results['error'] = repr(e)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _interrupt_and_resume(workdir, results):
  """The pipeline's evaluation on a copy of the run, interrupted with
  SIGINT once a piece is saved (each piece is followed by a 30 s pause
  there), then the same command again."""
  args = (f'--workdir={workdir}', '--budgets=50,100', '--max_tasks=3')
  proc = _script('experiments.evaluate', *args, '--throttle_s=30')
  path = os.path.join(workdir, 'eval_pieces.json')
  deadline = time.time() + 600
  while not (os.path.exists(path) and _read_json(path)['pieces']):
    if proc.poll() is not None or time.time() > deadline:
      results['interrupted'] = dict(out='', err=proc.communicate()[1],
                                    code=proc.returncode, saved={})
      return
    time.sleep(0.1)
  saved = _read_json(path)['pieces']  # written atomically
  t0 = time.time()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  results['interrupted'] = dict(out=out, err=err, code=proc.returncode,
                                exit_s=time.time() - t0, saved=saved,
                                pieces=_read_json(path)['pieces'])
  rerun = _script('experiments.evaluate', *args)
  results['resumed'] = rerun.communicate(timeout=600) + (rerun.returncode,)


# A family from outside the package, as a user writes one: lq whose
# actuators are `gain` times stronger (the closed forms follow, since they
# use the same matrices).
FAMILY_MODULE = '''"""lq with a gain on the actuators, registered as gain_lq."""
import dataclasses

from admrl_jax import envs
from admrl_jax.envs import lq


@dataclasses.dataclass(frozen=True, eq=False)
class GainLQFamily(lq.LQFamily):
  gain: float = 1.0

  # LQFamily's hook for its matrices, overridden as a subclass may: the
  # private name is this class's own, not a reach into the library.
  def _matrices(self, dtype):
    a, b, q, r = super()._matrices(dtype)  # the parent's hook, extended
    return a, self.gain * b, q, r


def gain_lq(**overrides):
  kwargs = dict(name='gain_lq', task_low=(-1.0, -1.0), task_high=(1.0, 1.0),
                action_bound=None)
  kwargs.update(overrides)
  return GainLQFamily(**kwargs)


envs.register('gain_lq', gain_lq)
'''


def _family_pipeline(base, results):
  """The driver (1 task iteration at smoke size) and evaluate (2 tasks, one
  stage) on a family registered by a module on PYTHONPATH, with one of its
  fields set; then evaluate without the module on the path."""
  modules = os.path.join(base, 'modules')
  os.makedirs(modules)
  with open(os.path.join(modules, 'gain_lq_family.py'), 'w') as f:
    f.write(FAMILY_MODULE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [modules, ROOT] + [os.environ.get('PYTHONPATH', '')]))
  workdir = os.path.join(base, 'gain_lq')
  results['workdir'] = workdir
  try:
    # The task samplers that are not AdMRL's go through the same scripts:
    # mb_cem here (its second task chosen from a measured gap), mb_vertices
    # on plain lq below.
    run = _script('experiments.run', '--env=gain_lq', '--algo=mb_cem',
                  '--family_module=gain_lq_family', '--family_set=gain=2',
                  '--preset=smoke', '--ntasks=2', f'--workdir={workdir}',
                  env=env)
    results['run'] = run.communicate(timeout=600) + (run.returncode,)
    if run.returncode:
      return
    evaluate = _script('experiments.evaluate', f'--workdir={workdir}',
                       '--budgets=25', '--max_tasks=2', env=env)
    results['evaluate'] = evaluate.communicate(timeout=600) + (
        evaluate.returncode,)
    missing = _script('experiments.evaluate', f'--workdir={workdir}',
                      '--budgets=25')
    results['no_module'] = missing.communicate(timeout=600) + (
        missing.returncode,)
    vertices = os.path.join(base, 'lq-vertices')
    results['vertices_workdir'] = vertices
    run = _script('experiments.run', '--env=lq', '--algo=mb_vertices',
                  '--preset=smoke', '--ntasks=3', f'--workdir={vertices}')
    results['vertices_run'] = run.communicate(timeout=600) + (run.returncode,)
    if run.returncode:
      return
    evaluate = _script('experiments.evaluate', f'--workdir={vertices}',
                       '--budgets=25', '--max_tasks=1')
    results['vertices_evaluate'] = evaluate.communicate(timeout=600) + (
        evaluate.returncode,)
  except Exception as e:  # pylint: disable=broad-except
    results['error'] = repr(e)


@pytest.fixture(scope='module', autouse=True)
def scripts(tmp_path_factory):
  """Runs `_pipeline` in the background from the start of the module, so
  the scripts run while the in-process tests compile (2 cores)."""
  base = str(tmp_path_factory.mktemp('evaluation'))
  results = dict(base=base)
  thread = threading.Thread(target=_pipeline, args=(base, results),
                            daemon=True)
  thread.start()
  family_results = {}
  family_thread = threading.Thread(
      target=_family_pipeline, args=(os.path.join(base, 'user'),
                                     family_results), daemon=True)
  family_thread.start()
  yield dict(results=results, thread=thread, family=family_results,
             family_thread=family_thread)
  with _LOCK:
    _STOP.set()
    for proc in _LIVE:
      if proc.poll() is None:
        proc.kill()
  thread.join(timeout=60)
  family_thread.join(timeout=60)


@pytest.fixture(scope='module')
def lq():
  return envs.make('lq', horizon=HORIZON)


@pytest.fixture(scope='module')
def slbo_config():
  return slbo.SLBOConfig(
      n_inner=3, n_zeroshot=3, n_policy=8, n_rollouts=32,
      dataset_capacity=4000,
      model=ModelConfig(hidden=(32, 32), n_steps=100, action_clip=None),
      real=RolloutConfig(n_envs=10))


@pytest.fixture(scope='module')
def adapter(lq, slbo_config):
  return adaptation.Adaptation(
      lq, slbo_config, adaptation.AdaptationConfig(
          stage_samples=STAGE, stages=(1, 2, 3), eval_episodes=EPISODES))


@pytest.fixture(scope='module')
def trained(lq, slbo_config):
  """A dataset of 400 real transitions of a uniformly random policy, with
  normalisers; the model is fitted during the zero-shot phase (a cheap
  stand-in for a trained run: no extra compiled stage)."""
  state = slbo.init(jax.random.key(0), lq, slbo_config)
  collect = rollout.make_collector(lq, rollout.random_policy(lq.action_size),
                                   RolloutConfig(n_envs=20))
  for i, psi in enumerate([(0.5, -0.5), (-0.5, 0.5)]):
    real = collect(None, jnp.asarray(psi), jax.random.key(i), 0.0)
    state = state.replace(
        data=dataset_lib.add(state.data, real.transitions),
        model=dynamics.update_normalizers(state.model, real.transitions))
  assert int(state.data.size) == 2 * 20 * HORIZON
  return state


@pytest.fixture(scope='module')
def tasks(lq):
  # Two opposite corners and an inner point.
  return lq.eval_tasks()[[0, 14, 35]]


@pytest.fixture(scope='module')
def adapted(adapter, trained, tasks):
  return adapter.evaluate_tasks(trained, tasks, jax.random.key(5))


# ------------------------------------------------------------ configs
def test_budgets_are_multiples_of_stages_of_whole_episodes(lq, slbo_config):
  config = adaptation.AdaptationConfig.from_budgets((2000, 4000, 6000))
  assert config.stages == (1, 2, 3) and config.budgets == (2000, 4000, 6000)
  with pytest.raises(ValueError, match='multiples of stage_samples'):
    adaptation.AdaptationConfig.from_budgets((2000, 3000), 2000)
  with pytest.raises(ValueError, match='increasing'):
    adaptation.AdaptationConfig(stages=(2, 1))
  with pytest.raises(ValueError, match='multiple of the lq horizon 20'):
    adaptation.stage_slbo_config(lq, slbo_config, 210)
  stage = adaptation.stage_slbo_config(lq, slbo_config, 2000)
  assert slbo.real_samples_per_stage(lq, stage) == 2000
  assert stage.real.n_envs == 100 and stage.model == slbo_config.model
  with pytest.raises(ValueError, match='multiple of stage_samples'):
    optimum.OptimumConfig(budget=1000, stage_samples=300)


# ---------------------------------------------------------- adaptation
def test_adaptation_returns_every_task_and_budget(adapted, tasks):
  assert adapted.a0.shape == (len(tasks),)
  assert adapted.an.shape == (len(tasks), 3)
  assert adapted.stage_returns.shape == (len(tasks), 3)
  # A_n after stages (1, 2, 3) is the return after those stages.
  np.testing.assert_array_equal(adapted.an, adapted.stage_returns)
  assert np.all(np.isfinite(adapted.a0)) and np.all(np.isfinite(adapted.an))
  # Standard errors over the evaluation episodes: positive (lq has process
  # noise), and small against the spread of returns between tasks.
  se = np.concatenate([np.asarray(adapted.a0_se)[:, None],
                       np.asarray(adapted.an_se)], axis=1)
  assert se.shape == (len(tasks), 4) and np.all(se > 0)
  assert np.max(se) < np.ptp(np.asarray(adapted.a0))
  # The model's own return after the zero-shot phase and each stage.
  assert adapted.virtual_returns.shape == (len(tasks), 4)
  assert np.all(np.isfinite(adapted.virtual_returns))


def test_returns_never_beat_the_closed_form_optimum(lq, adapted, tasks):
  """A*(ψ) is the best expected return of any policy with noise-free
  actions, so every measured A0, A_n stays below it up to the noise of a
  20-episode mean (process noise 0.05: well under 0.05)."""
  astar = np.asarray(optimum.closed_form_astar(lq, tasks))
  assert astar[0] == pytest.approx(float(lq.optimal_return(
      jnp.asarray(tasks[0]), 0.0)), rel=1e-6)
  assert np.all(np.asarray(adapted.a0) <= astar + 0.05)
  assert np.all(np.asarray(adapted.an) <= astar[:, None] + 0.05)


def _zero_action_return(lq, psis):
  """Exact return of the policy a = 0 (a fresh policy's mean is near it)."""
  m, n = lq.action_size, lq.obs_size
  return np.asarray(jax.jit(jax.vmap(lambda psi: lq.expected_return(
      psi, jnp.zeros((m, n)), jnp.zeros((m,)))))(jnp.asarray(psis)))


def test_adaptation_reaches_the_optimum_and_more_samples_do_not_hurt(
    lq, adapted, tasks):
  astar = np.asarray(optimum.closed_form_astar(lq, tasks))
  baseline = _zero_action_return(lq, tasks)
  an = np.asarray(adapted.an)
  gn = np.asarray(metrics.gaps(astar, an))
  # After 600 samples every task has closed >= 80% of the gap between
  # doing nothing and the optimum.
  closed = (an[:, -1] - baseline) / (astar - baseline)
  assert np.all(closed >= 0.8), (closed, an, astar, baseline)
  # The last budget's gap is no worse than the first's, beyond noise.
  assert np.all(gn[:, -1] <= gn[:, 0] + 0.1 + 0.05 * np.abs(astar)), gn


def test_tasks_adapt_independently_from_the_trained_state(
    adapter, trained, tasks, adapted):
  """Task 0's result does not depend on the other tasks of the set (each
  starts from the trained model and data), and a new set of the same size
  reuses the compiled program."""
  reordered = np.concatenate([tasks[:1], tasks[:0:-1]])
  with compile_count.compilations() as compiled:
    other = adapter.evaluate_tasks(trained, reordered, jax.random.key(5))
  np.testing.assert_array_equal(other.a0[0], adapted.a0[0])
  np.testing.assert_array_equal(other.an[0], adapted.an[0])
  assert not compiled, compiled


# --------------------------------------------------------------- A*
def test_slbo_astar_is_below_the_closed_form_and_its_best_stage(
    lq, slbo_config, tasks):
  """The SLBO estimate of A* (600 samples from scratch) approaches the
  closed form from below, and is the best of its stages."""
  estimator = optimum.SLBOOptimum(
      lq, slbo_config, optimum.OptimumConfig(budget=3 * STAGE,
                                             stage_samples=STAGE,
                                             eval_episodes=EPISODES))
  assert estimator.slbo_config.dataset_capacity == 3 * STAGE
  psis = tasks[:2]
  result = estimator.estimate_tasks(psis, jax.random.split(jax.random.key(3),
                                                           2))
  closed = np.asarray(optimum.closed_form_astar(lq, psis))
  np.testing.assert_array_equal(result.astar,
                                np.max(result.stage_returns, axis=1))
  assert np.all(np.asarray(result.astar) <= closed + 0.05)
  # More than half of the way from doing nothing to the optimum.
  baseline = _zero_action_return(lq, psis)
  progress = (np.asarray(result.astar) - baseline) / (closed - baseline)
  assert np.all(progress >= 0.5), (progress, result.stage_returns, closed)


def test_families_without_closed_form_are_refused():
  assert optimum.default_method(envs.make('lq')) == 'closed_form'

  class NoOptimum:
    name = 'x'
  assert not optimum.has_closed_form(NoOptimum())
  with pytest.raises(ValueError, match='no closed-form'):
    optimum.closed_form_astar(NoOptimum(), np.zeros((1, 2)))


# ------------------------------------------------------------ metrics
def test_gap_metrics_against_their_definitions():
  rng = np.random.default_rng(0)
  m, t, b = 3, 5, 2
  a0 = rng.normal(size=(m, t))
  an = rng.normal(size=(m, t, b))
  astar = rng.normal(size=(t,)) + 3.0
  ev = metrics.evaluation(a0, an, astar, rng.normal(size=(t, 2)), (100, 200),
                          'slbo', 5000)
  gn = ev.metrics.gn
  for i in range(m):
    for j in range(t):
      for n in range(b):
        assert gn[i, j, n] == astar[j] - an[i, j, n]   # exactly
  np.testing.assert_array_equal(ev.metrics.gmax, gn.max(axis=1))
  np.testing.assert_array_equal(
      gn[np.arange(m)[:, None], ev.metrics.worst_task, np.arange(b)],
      ev.metrics.gmax)
  np.testing.assert_allclose(ev.metrics.average_an, an.mean(axis=1))
  np.testing.assert_allclose(ev.metrics.average_a0, a0.mean(axis=1))
  summary = ev.summary()
  assert summary['astar_budget'] == 5000 and summary['budgets'] == [100, 200]
  np.testing.assert_allclose(summary['Gmax_n_mean'], gn.max(axis=1).mean(0))
  np.testing.assert_allclose(summary['Gmax_n_std'], gn.max(axis=1).std(0))
  # The same functions under jit.
  jitted = jax.jit(metrics.gap_metrics)(jnp.asarray(a0), jnp.asarray(an),
                                        jnp.asarray(astar))
  np.testing.assert_allclose(jitted.gmax, ev.metrics.gmax, rtol=1e-6)
  # A diverged member is not hidden.
  an[1, 2, 0] = np.nan
  assert np.isnan(metrics.evaluation(a0, an, astar, np.zeros((t, 2)),
                                     (100, 200), 'slbo', 1).metrics.gmax[1, 0])
  with pytest.raises(ValueError, match='inconsistent shapes'):
    metrics.evaluation(a0, an[:, :, :1], astar, np.zeros((t, 2)), (1, 2),
                       'slbo', 1)
  assert fileio.to_jsonable({'x': np.array([1.0, np.nan])}) == {
      'x': [1.0, None]}
  np.testing.assert_array_equal(
      fileio.from_jsonable([[1.0, None]]), np.array([[1.0, np.nan]]))


def test_grid_slices_place_every_task_in_its_cell():
  box = envs.make('lq')
  tasks = box.eval_tasks()                     # 6 × 6
  values = np.arange(len(tasks), dtype=float)
  [(value, grid, xs, ys)] = plots.grid_slices(values, tasks)
  assert value is None and grid.shape == (6, 6)
  for v, (x, y) in zip(values, tasks):
    assert grid[np.argmin(abs(xs - x)), np.argmin(abs(ys - y))] == v
  # A 3-D grid (ant3d's 4 × 4 × 3) is one slice per last coordinate.
  from admrl_jax.envs.base import grid as make_grid
  tasks3 = make_grid(np.array([-3, -3, 0.4]), np.array([3, 3, 0.6]),
                     (4, 4, 3))
  slices = plots.grid_slices(np.arange(48.0), tasks3)
  assert [s[0] for s in slices] == pytest.approx([0.4, 0.5, 0.6])
  assert all(s[1].shape == (4, 4) and np.all(np.isfinite(s[1]))
             for s in slices)
  # Boundary cells only (ant2d_ood): the interior is empty.
  edge = tasks[np.any(np.isclose(np.abs(tasks), 1.0), axis=-1)]
  [(_, grid, _, _)] = plots.grid_slices(np.ones(len(edge)), edge)
  assert np.isnan(grid[1:-1, 1:-1]).all() and np.isfinite(grid[0]).all()


def test_figures_for_3d_boxes_and_high_dimensional_task_sets(tmp_path):
  """ant3d-like 4 × 4 × 3 grids draw a row per slice; 18-D task sets (no
  grid) draw bars; visited tasks skip the iterations not run (NaN)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from admrl_jax.envs.base import grid as make_grid  # pylint: disable=g-import-not-at-top
  low, high = np.array([-3, -3, 0.4]), np.array([3, 3, 0.6])
  tasks3 = make_grid(low, high, (4, 4, 3))
  gn = np.random.default_rng(0).uniform(size=(48, 2))
  fig = plots.gap_heatmaps([('admrl', gn), ('mb_unif', gn + 1)], tasks3,
                           (2000, 4000), ('vx', 'vy', 'hz'))
  assert len(fig.axes) == 2 * 3 * 2 + 1          # + the colour bar
  fig.savefig(tmp_path / 'ant3d.png')
  fig = plots.gap_heatmaps([('admrl', gn[:20])], np.zeros((20, 18)),
                           (2000, 4000), [f'ψ{i}' for i in range(18)])
  assert len(fig.axes) == 2
  fig.savefig(tmp_path / 'highdim.png')
  visited = np.full((5, 3), np.nan)
  visited[:2] = [[0.0, 1.0, 0.5], [2.0, -1.0, 0.45]]
  fig = plots.visited_tasks([('admrl', visited)], low, high,
                            ('vx', 'vy', 'hz'), eval_tasks=tasks3)
  fig.savefig(tmp_path / 'visited.png')
  assert len(fig.axes[0].collections[-1].get_offsets()) == 2



def test_negative_gaps_are_flagged_in_the_figures(tmp_path):
  """G_n < 0 (A* below A_n: A*'s budget too small) is hatched and counted
  in the title, on grids and on bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  tasks = envs.make('lq').eval_tasks()                 # 6 × 6
  gn = np.ones((len(tasks), 2))
  gn[[0, 7], 0] = -2.0                                 # two cells at n = 500
  gn[5, 1] = -0.5                                      # one at n = 1000
  fig = plots.gap_heatmaps([('admrl', gn)], tasks, (500, 1000), ('x', 'y'),
                           title='lq')
  hatched = [[p for p in ax.patches if p.get_hatch()] for ax in fig.axes[:2]]
  assert [len(h) for h in hatched] == [2, 1]
  # Each hatch outlines a negative cell (imshow of grid.T: x = i, y = j).
  [(_, grid, _, _)] = plots.grid_slices(gn[:, 0], tasks)
  for patch in hatched[0]:
    i, j = (int(round(c + 0.5)) for c in patch.get_xy())
    assert grid[i, j] < 0
  title = fig.get_suptitle()
  assert title.startswith('lq') and 'G_n < 0' in title and '(3)' in title
  fig.savefig(tmp_path / 'negative.png')
  fig = plots.gap_heatmaps([('admrl', np.abs(gn))], tasks, (500, 1000),
                           ('x', 'y'))
  assert 'G_n < 0' not in fig.get_suptitle()
  fig = plots.gap_heatmaps([('admrl', gn[:20])], np.zeros((20, 18)),
                           (500, 1000), [f'ψ{i}' for i in range(18)])
  bars = [b for ax in fig.axes for b in ax.patches if b.get_hatch()]
  assert sorted(b.get_height() for b in bars) == [-2.0, -2.0, -0.5]
  assert '(3)' in fig.get_suptitle()


def test_visited_tasks_legend_sits_outside_the_boxes(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  family = envs.make('lq')
  visited = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])  # box corners
  fig = plots.visited_tasks([('admrl', visited), ('mb_unif', visited * 0.5)],
                            family.task_low, family.task_high, ('x', 'y'),
                            eval_tasks=family.eval_tasks())
  fig.savefig(tmp_path / 'visited.png')
  assert all(ax.get_legend() is None for ax in fig.axes)
  [legend] = fig.legends
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  box = legend.get_window_extent(renderer)
  for ax in fig.axes[:2]:
    assert not box.overlaps(ax.get_window_extent(renderer))
  points = fig.axes[0].collections[-1]
  assert np.all(points.get_edgecolors()[:, :3] == 0.0)  # dark edges


def test_spread_subset_covers_the_grid():
  from admrl_jax.envs.base import grid as make_grid  # pylint: disable=g-import-not-at-top
  low, high = np.array([-2.0, 1.2]), np.array([2.0, 2.0])
  tasks = make_grid(low, high, (6, 6))
  corners = metrics.spread_subset(tasks, 4)
  np.testing.assert_array_equal(
      np.sort(tasks[corners], axis=0),
      np.sort(make_grid(low, high, (2, 2)), axis=0))
  for n in (2, 5, 9, 12):
    index = metrics.spread_subset(tasks, n)
    assert len(index) == n and len(set(index.tolist())) == n
    assert np.all(np.diff(index) > 0)                   # ascending
    chosen = tasks[index]
    # Both ends of every axis are covered, unlike the first n tasks, which
    # lie in one column of the grid.
    np.testing.assert_allclose(chosen.min(axis=0), low, rtol=1e-6)
    np.testing.assert_allclose(chosen.max(axis=0), high, rtol=1e-6)
    assert np.ptp(tasks[:n, 0]) < np.ptp(chosen[:, 0])
    np.testing.assert_array_equal(index, metrics.spread_subset(tasks, n))
  np.testing.assert_array_equal(metrics.spread_subset(tasks, 36),
                                np.arange(36))
  np.testing.assert_array_equal(metrics.spread_subset(tasks, 100),
                                np.arange(36))
  # A 4 × 4 × 3 box (ant3d): every end of every axis, and every height.
  low3, high3 = np.array([-3.0, -3.0, 0.4]), np.array([3.0, 3.0, 0.6])
  chosen = make_grid(low3, high3, (4, 4, 3))[
      metrics.spread_subset(make_grid(low3, high3, (4, 4, 3)), 8)]
  np.testing.assert_allclose(chosen.min(axis=0), low3, rtol=1e-6)
  np.testing.assert_allclose(chosen.max(axis=0), high3, rtol=1e-6)
  assert len(np.unique(np.round(chosen[:, 2], 4))) == 3
  with pytest.raises(ValueError):
    metrics.spread_subset(tasks, 0)
  with pytest.raises(ValueError):
    metrics.spread_subset(np.zeros(3), 1)


# ------------------------------------------------------ end to end
def _ok(results, name):
  assert name in results, results.get('error', f'{name} did not run')
  out, err, code = results[name]
  assert code == 0, err[-3000:]
  return out


def test_evaluate_and_plot_end_to_end(scripts):
  scripts['thread'].join(timeout=600)
  results = scripts['results']
  assert 'error' not in results, results['error']
  _ok(results, 'run')
  out = _ok(results, 'evaluate')
  assert 'Gmax_n' in out
  print(f'evaluate on the smoke workdir: {results["evaluate_wall_s"]:.1f}s '
        '(beside the bad-input processes)')
  base, workdir = results['base'], results['workdir']
  with open(os.path.join(workdir, 'eval.json')) as f:
    report = json.load(f)
  lq = envs.make('lq', horizon=SMOKE_HORIZON)
  tasks = np.asarray(report['tasks'])
  # --max_tasks=3: three tasks spread over the set, not its first three.
  spread = lq.eval_tasks()[metrics.spread_subset(lq.eval_tasks(), 3)]
  np.testing.assert_allclose(tasks, spread, atol=1e-6)
  astar = np.asarray(report['Astar'])
  np.testing.assert_allclose(
      astar, [float(lq.optimal_return(jnp.asarray(p, jnp.float32), 0.0))
              for p in spread], rtol=1e-5)
  an = np.asarray(report['An'])
  assert an.shape == (1, 3, 2) and np.asarray(report['A0']).shape == (1, 3)
  np.testing.assert_allclose(report['Gn'], astar[None, :, None] - an,
                             rtol=1e-12)
  np.testing.assert_allclose(report['Gmax_n'],
                             np.max(astar[None, :, None] - an, axis=1))
  np.testing.assert_allclose(report['average_An'], an.mean(axis=1))
  assert report['budgets'] == [50, 100] and report['astar_budget'] is None
  assert report['astar_method'] == 'closed_form'
  assert len(report['visited_tasks'][0]) == 2       # two task iterations
  for name in ('gap_heatmap', 'gmax', 'average_return', 'visited_tasks'):
    path = os.path.join(workdir, f'{name}.png')
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', path
  # A* cached for every task where $ADMRL_JAX_ASTAR_CACHE says (the
  # default's override; else ~/.cache/admrl_jax/astar_cache.json).
  with open(os.path.join(base, 'astar_cache.json')) as f:
    entries = json.load(f)
  assert len(entries) == 3
  assert sorted(e['astar'] for e in entries.values()) == pytest.approx(
      sorted(astar))

  _ok(results, 'plot')
  out_dir = os.path.join(base, 'figures')
  for name in ('gmax', 'average_return', 'gap_heatmap', 'visited_tasks'):
    assert os.path.getsize(os.path.join(out_dir,
                                        f'comparison_{name}.png')) > 1000
  with open(os.path.join(out_dir, 'comparison.json')) as f:
    table = json.load(f)
  assert sorted(table) == ['admrl (lq-admrl)', 'admrl (lq-copy)']
  np.testing.assert_allclose(table['admrl (lq-copy)']['Gmax_n_mean'],
                             report['Gmax_n'][0])


def test_bad_input_exits_2_with_one_line(scripts):
  scripts['thread'].join(timeout=600)
  results = scripts['results']
  assert 'bad' in results, results.get('error', 'the smoke run failed')
  for what, (err, code) in results['bad'].items():
    assert code == 2, (what, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, (what, err[-2000:])
  assert not os.path.exists(os.path.join(results['base'], 'no-checkpoint',
                                         'eval.json'))


def test_a_finished_evaluation_is_never_overwritten_silently(scripts):
  scripts['thread'].join(timeout=600)
  results = scripts['results']
  assert 'refused' in results, results.get('error', 'the pipeline failed')
  _, err, code = results['refused']
  assert code == 2, err[-2000:]
  assert 'holds a finished evaluation of other settings' in err
  assert "budgets: saved [50, 100], now [50]" in err and '--out' in err
  assert results['eval_after'] == results['eval_before']
  _, err, code = results['elsewhere']
  assert code == 0, err[-2000:]
  report = _read_json(os.path.join(results['out_dir'], 'eval.json'))
  assert report['budgets'] == [50] and report['settings']['budgets'] == [50]
  assert os.path.exists(os.path.join(results['out_dir'], 'gmax.png'))


def test_evaluate_says_what_it_will_do_and_reports_each_task(scripts):
  scripts['thread'].join(timeout=600)
  out = _ok(scripts['results'], 'evaluate')
  lines = [line.split('] ', 1)[1] for line in out.splitlines() if '] ' in line]
  first = next(line for line in lines if ' = 3 adaptation(s)' in line)
  assert '1 member(s) x 3 lq task(s) (spread over the 36 of the set)' in first
  assert 'A_n at n = [50, 100]; A* closed_form' in first
  assert lines.index(first) < lines.index('compiling the adaptation program')
  tasks = [line for line in lines if line.startswith('member 1/1 (seed 0, '
                                                     'alpha 0.5), task ')]
  assert [line.split('task ')[1][:3] for line in tasks] == ['1/3', '2/3',
                                                            '3/3']
  assert 'evaluation estimate' in tasks[0] and 'ETA' in tasks[1], tasks
  assert tasks[-1].endswith('[100% of the evaluation]'), tasks


def test_interrupted_evaluation_stops_at_once_and_resumes_its_pieces(
    scripts):
  """SIGINT once a piece is saved: exit 130 within seconds, one line, no
  traceback; the same command again reuses every saved piece as it was
  (not recomputed), runs the rest, and writes the eval.json of the
  uninterrupted evaluation."""
  scripts['thread'].join(timeout=900)
  results = scripts['results']
  assert 'error' not in results, results['error']
  assert 'interrupted' in results, 'the pipeline stopped before'
  stopped = results['interrupted']
  assert stopped['code'] == 130, stopped['err'][-3000:]
  assert stopped['exit_s'] < 10
  print(f'SIGINT to exit: {stopped["exit_s"]:.2f}s')
  assert [line for line in stopped['err'].splitlines() if line.strip()] == [
      'interrupted: everything finished so far is saved; rerun the same '
      'command to continue'], stopped['err']
  saved = stopped['pieces']
  assert 1 <= len(saved) < 3 and saved == {**stopped['saved'], **saved}
  out, err, code = results['resumed']
  assert code == 0, err[-3000:]
  assert (f'adaptation: {len(saved)} of 3 piece(s) saved' in out
          and f'{3 - len(saved)} to run' in out), out
  assert out.count('alpha 0.5), task ') == 3 - len(saved), out
  workdir = os.path.join(results['base'], 'lq-interrupted')
  final = _read_json(os.path.join(workdir, 'eval_pieces.json'))['pieces']
  assert len(final) == 3
  for name, piece in saved.items():
    assert final[name] == piece  # the same record, its time stamp included
  resumed = _read_json(os.path.join(workdir, 'eval.json'))
  reference = _read_json(os.path.join(results['workdir'], 'eval.json'))
  for report in (resumed, reference):
    # Where each run was and where its A* cache was (the reference's is
    # set by $ADMRL_JAX_ASTAR_CACHE); the A* values are compared.
    for key in ('workdir', 'wall_time_s', 'astar_cache'):
      report.pop(key)
  assert resumed == reference


# ------------------------------------------------- families of other modules
def test_family_set_parses_fields_by_type_and_is_recorded(tmp_path):
  from experiments import common  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top
  from experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  assert common.parse_family_sets(
      'lq', ['q_weight=5', 'grid_counts=3,4', 'A=((1, 0.5), (0, 1))']) == {
          'q_weight': 5.0, 'grid_counts': [3, 4], 'A': [[1, 0.5], [0, 1]]}
  family, _, _, _, record = training.resolve(
      env='lq', preset='smoke', family_sets=['q_weight=5', 'grid_counts=3,4'])
  assert family.q_weight == 5.0 and len(family.eval_tasks()) == 12
  assert record['family_set'] == {'q_weight': 5.0, 'grid_counts': [3, 4]}
  # What resume and evaluate rebuild from config.json.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(record, f)
  rebuilt, _, _ = workdir_lib.load_config(str(tmp_path))
  assert rebuilt.q_weight == 5.0 and rebuilt.grid_counts == (3, 4)
  assert 'family_set' not in training.resolve(env='lq', preset='smoke')[4]
  for items, message in ((['nope=1'], "lq has no field 'nope'"),
                         (['q_weight=abc'], 'cannot parse q_weight'),
                         # One parser with --set (`common.parse_value`):
                         # non-finite floats are refused here too.
                         (['q_weight=inf'], 'not a finite number'),
                         (['horizon=5'], 'its own flag, --horizon'),
                         (['q_weight'], 'expected field=value'),
                         (['q_weight=-1'], 'must be positive')):
    with pytest.raises(common.UsageError, match=message):
      training.resolve(env='lq', preset='smoke', family_sets=items)
  # A run whose family cannot be built: one line, not a traceback.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(dict(record, env='no_such_family'), f)
  with pytest.raises(common.UsageError,
                     match="cannot build its family 'no_such_family'"):
    workdir_lib.load_config(str(tmp_path))
  with pytest.raises(common.UsageError, match="cannot import 'no_such_mod"):
    common.import_family_modules('no_such_module_x')


def test_a_family_registered_by_a_module_trains_and_evaluates(scripts):
  """--family_module and --family_set through the driver and evaluate: the
  module and the field are recorded in config.json, and evaluate imports
  the module and rebuilds the family with the field (its A* is the closed
  form of lq with twice the actuator gain); without the module on the
  path, evaluate refuses in one line."""
  scripts['family_thread'].join(timeout=900)
  results = scripts['family']
  assert 'error' not in results, results['error']
  _ok(results, 'run')
  record = _read_json(os.path.join(results['workdir'], 'config.json'))
  assert record['family_module'] == ['gain_lq_family']
  assert record['family_set'] == {'gain': 2.0}
  _ok(results, 'evaluate')
  report = _read_json(os.path.join(results['workdir'], 'eval.json'))
  assert report['eval_env'] == 'gain_lq' and len(report['tasks']) == 2
  from admrl_jax.envs import lq as lq_lib  # pylint: disable=g-import-not-at-top
  doubled = envs.make('lq', horizon=SMOKE_HORIZON,
                      B=2 * np.asarray(lq_lib.LQFamily.B))
  plain = envs.make('lq', horizon=SMOKE_HORIZON)
  for psi, astar in zip(report['tasks'], report['Astar']):
    psi = jnp.asarray(psi, jnp.float32)
    assert astar == pytest.approx(float(doubled.optimal_return(psi, 0.0)),
                                  rel=1e-5)
    assert astar != pytest.approx(float(plain.optimal_return(psi, 0.0)),
                                  rel=1e-3)
  _, err, code = results['no_module']
  assert code == 2, err[-2000:]
  [line] = [line for line in err.splitlines() if line.strip()]
  assert line.startswith('error:') and "'gain_lq_family'" in line, err


def test_mb_cem_and_mb_vertices_runs_train_and_evaluate(scripts):
  """The driver and evaluate on the two control arms of the study: mb_cem
  measures the first task's gap and draws its next task from it, and
  evaluate reports the run under its algorithm; every task mb_vertices
  draws is a corner of the box."""
  scripts['family_thread'].join(timeout=900)
  results = scripts['family']
  assert 'error' not in results, results['error']
  _ok(results, 'run')
  rows = [json.loads(line) for line in open(
      os.path.join(results['workdir'], 'metrics.jsonl'))]
  assert [r['task_index'] for r in rows] == [0, 1]
  assert rows[0]['gap'] is None                # the first task: none measured
  assert np.isfinite(rows[1]['gap']) and np.isfinite(rows[1]['return_star'])
  assert not rows[1]['grad_accepted']          # no gradient: a CEM draw
  assert np.all(np.abs(rows[1]['u_next']) <= 1.0)
  _ok(results, 'evaluate')
  report = _read_json(os.path.join(results['workdir'], 'eval.json'))
  assert report['algo'] == 'mb_cem'
  np.testing.assert_allclose(report['visited_tasks'][0],
                             [r['psi'] for r in rows], atol=1e-6)

  _ok(results, 'vertices_run')
  rows = [json.loads(line) for line in open(
      os.path.join(results['vertices_workdir'], 'metrics.jsonl'))]
  assert len(rows) == 3
  for row in rows:                   # the first task is config.first_u
    np.testing.assert_allclose(np.abs(row['u_next']), 1.0, atol=1e-6)
  _ok(results, 'vertices_evaluate')
  report = _read_json(os.path.join(results['vertices_workdir'],
                                   'eval.json'))
  assert report['algo'] == 'mb_vertices' and len(report['tasks']) == 1
  assert np.all(np.isfinite(report['An']))


def test_one_task_at_a_time_matches_every_task_at_once(
    adapter, trained, tasks, adapted):
  """`experiments.evaluate` adapts one task per call of the jitted
  `Adaptation.adapt` with the key fold_in(key, i); that is task i of
  `adapt_tasks` over the set — bitwise on this CPU (the `lax.map` body is
  the same program)."""
  adapt = jax.jit(adapter.adapt)
  for i, psi in enumerate(tasks):
    one = adapt(trained, psi, jax.random.fold_in(jax.random.key(5), i))
    np.testing.assert_array_equal(one.a0, adapted.a0[i])
    np.testing.assert_array_equal(one.an, adapted.an[i])


def test_gmax_line_shows_a_spread_only_over_several_members():
  """One member has no spread: its Gmax_n line printed '61.953±0.000'."""
  one = dict(members=1, Gmax_n_mean=[61.953, 40.0], Gmax_n_std=[0.0, 0.0])
  line = metrics.gmax_line(one, [10, 20], None)
  assert '±' not in line and '1 member' in line
  assert line.startswith('Gmax_n n=10: 61.953, n=20: 40.000')
  two = dict(one, members=2, Gmax_n_std=[1.5, 0.25])
  line = metrics.gmax_line(two, [10, 20], 4000)
  assert 'n=10: 61.953±1.500' in line and 'over 2 members' in line
  assert line.endswith('(A* from 4000 samples)')
