"""The meta-RL baselines through the driver and the evaluation, end to end
(`python -m experiments.run --algo=maml|pearl`, `experiments.evaluate`):
smoke runs on lq of two seeds, a run killed with SIGKILL after its first
checkpoint and resumed equals the uninterrupted one bitwise, the run's
record and metrics, A_n of the evaluation as the library's own
`adapted_return` computes it. (A hopper2d smoke run of each takes 1 to 1.5
minutes more, mostly compiling, and is left to docs/usage.md's commands.)"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from driver_runs import ROOT
from driver_runs import driver as _driver
from driver_runs import final_state as _final_state
from driver_runs import finish as _finish
from driver_runs import metrics as _metrics
from driver_runs import wait_for_checkpoint as _wait_for_checkpoint

SMOKE = ['--env=lq', '--preset=smoke', '--seed=0,1']
ALGOS = ('maml', 'pearl')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Per algorithm: an uninterrupted lq smoke run of seeds 0 and 1, and the
  same run killed (SIGKILL) once its first iteration is checkpointed (it
  then sleeps, --throttle_s), then resumed. The killed run starts once the
  whole one has compiled, so it loads its programs from the persistent
  cache."""
  base = tmp_path_factory.mktemp('baselines')
  dirs, outputs, procs = {}, {}, {}
  for algo in ALGOS:
    dirs[algo] = str(base / algo)
    procs[algo] = _driver(SMOKE + [f'--algo={algo}',
                                   f'--workdir={dirs[algo]}'])
  for algo in ALGOS:
    _wait_for_checkpoint(procs[algo], dirs[algo])
    dirs[f'{algo}_killed'] = killed_dir = str(base / f'{algo}_killed')
    killed = _driver(SMOKE + [f'--algo={algo}', '--throttle_s=600',
                              f'--workdir={killed_dir}'])
    _wait_for_checkpoint(killed, killed_dir)
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(_metrics(killed_dir)) == 2  # 1 iteration × 2 seeds
    procs[f'{algo}_killed'] = _driver(SMOKE + [f'--algo={algo}',
                                               f'--workdir={killed_dir}'])
  for name, proc in procs.items():
    outputs[name] = _finish(proc)
  return dirs, outputs


def _leaves(state):
  return jax.tree.leaves(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, state))


def _strip(rows):
  return [{k: v for k, v in r.items() if k != 'wall_time'} for r in rows]


@pytest.mark.parametrize('algo', ALGOS)
def test_resume_after_sigkill_is_bitwise_identical(runs, algo):
  dirs, outputs = runs
  assert 'resumed from iteration 1' in outputs[f'{algo}_killed']
  assert '1 of 1 program from the persistent compilation cache' in outputs[
      f'{algo}_killed']
  a, step_a = _final_state(dirs[algo])
  b, step_b = _final_state(dirs[f'{algo}_killed'])
  assert step_a == step_b == 3
  leaves_a, leaves_b = _leaves(a), _leaves(b)
  assert len(leaves_a) == len(leaves_b) > 5
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The log has each iteration once, identical up to wall time.
  assert _strip(_metrics(dirs[algo])) == _strip(
      _metrics(dirs[f'{algo}_killed']))


@pytest.mark.parametrize('algo', ALGOS)
def test_record_metrics_and_progress(runs, algo):
  from experiments import baselines  # pylint: disable=g-import-not-at-top
  from experiments import presets  # pylint: disable=g-import-not-at-top
  from experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  dirs, outputs = runs
  workdir = dirs[algo]
  family, config, record = workdir_lib.load_config(workdir)
  # config.json rebuilds the preset's config (strictly) and its length.
  want, _, n_iterations = presets.baseline_preset('lq', 'smoke', algo)
  assert baselines.is_baseline(config) and config.config == want
  assert config.n_iterations == n_iterations == 3
  assert record['algo'] == algo and record['alphas'] == [None]
  assert family.horizon == 25
  assert os.path.exists(os.path.join(workdir, 'provenance.json'))
  assert sorted(os.listdir(os.path.join(workdir, 'tb'))) == ['seed0', 'seed1']
  rows = _metrics(workdir)
  assert [(r['iteration'], r['seed']) for r in rows] == [
      (i, s) for i in (1, 2, 3) for s in (0, 1)]
  assert all(r['alpha'] is None for r in rows)
  # The real samples of meta-training: the state's counter, growing by at
  # most one iteration's worth.
  state, _ = _final_state(workdir)
  counter = state.real_samples if algo == 'maml' else state.env_steps
  assert [r['real_samples'] for r in rows[-2:]] == np.asarray(
      counter).tolist()
  per = baselines.samples_per_iteration(family, config)
  for s in (0, 1):
    samples = [r['real_samples'] for r in rows if r['seed'] == s]
    steps = np.diff([0 if algo == 'maml' else
                     want.num_train_tasks * want.num_initial_steps]
                    + samples)
    assert np.all((steps > 0) & (steps <= per)), samples
  out = outputs[algo].splitlines()
  assert sum(' done in ' in line for line in out) == 3
  assert any(line.endswith('s]') and 'run ETA' in line for line in out)
  assert any('about to run' in line for line in out)


def _evaluate(workdir, *args):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.evaluate', f'--workdir={workdir}',
       '--budgets=50,100', '--max_tasks=2', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.parametrize('algo', ALGOS)
def test_evaluate_measures_a_n_with_the_baselines_own_adaptation(runs, algo):
  """experiments.evaluate on a baseline's run: A0 and A_n of every member
  on the tasks, each A_n the library's `adapted_return` with the key of
  its (member, task) piece; a second evaluation reuses the pieces."""
  from admrl_jax.baselines import maml, pearl  # pylint: disable=g-import-not-at-top
  from experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  dirs, _ = runs
  workdir = dirs[algo]
  _evaluate(workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    report = json.load(f)
  assert report['algo'] == algo
  assert report['budgets'] == [50, 100] and report['eval_episodes'] == 2
  assert np.asarray(report['An']).shape == (2, 2, 2)  # members, tasks, n
  assert np.asarray(report['A0']).shape == (2, 2)
  assert report['astar_method'] == 'closed_form'
  visited = report['visited_tasks']
  assert [len(v) for v in visited] == ([0, 0] if algo == 'maml' else [4, 4])
  for name in ('gap_heatmap', 'gmax', 'average_return', 'visited_tasks'):
    assert os.path.getsize(os.path.join(workdir, f'{name}.png')) > 1000
  # Member 1's A_50 on the first evaluated task, recomputed.
  family, config, record = workdir_lib.load_config(workdir)
  state, _ = workdir_lib.load_state(workdir, family, config, record)
  with open(os.path.join(workdir, 'eval_pieces.json')) as f:
    pieces = json.load(f)['pieces']
  m, i = 1, min(int(k.split('/')[1]) for k in pieces)
  seed = record['seeds'][m]  # the evaluation keys by seed, not member
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), seed), i)
  keys = jax.random.split(key, 3)  # A0, A_50, A_100
  params = jax.tree.map(lambda x: x[m], state.params)
  psi = np.asarray(pieces[f'{m}/{i}']['psi'], np.float32)
  if algo == 'maml':
    want = maml.adapted_return(params, family, psi, 50, keys[1],
                               config.config, n_episodes=2)
  else:
    want = pearl.adapted_return(params, family, config.config, psi, 50, 2,
                                keys[1])
  np.testing.assert_allclose(pieces[f'{m}/{i}']['an'][0], float(want),
                             rtol=1e-4, atol=1e-4)
  again = _evaluate(workdir)
  assert '4 of 4 piece(s)' in again and '0 to run' in again

