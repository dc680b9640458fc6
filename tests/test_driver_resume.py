"""The driver's default family, halfcheetah_highdim, at smoke size: stopped
and resumed as a subprocess (a file of its own, so that pytest-xdist's
--dist=loadfile runs it beside test_driver.py's runs)."""
import json
import os

import jax
import numpy as np

from driver_runs import driver as _driver
from driver_runs import final_state as _final_state
from driver_runs import finish as _finish
from driver_runs import metrics as _metrics


def test_halfcheetah_highdim_resume_reuses_its_calibration(tmp_path):
  """The driver's default family at smoke size (horizon 20): a run stopped
  after task iteration 1 records the calibration (μ, σ of the random-policy
  states, which its reward needs) and resumes with it: one metrics row per
  iteration, ψ continuing where it stopped, a finite final state. Its
  provenance.json is recorded at the start, and a resume under another
  jax version warns instead of refusing."""
  workdir = str(tmp_path / 'cheetah')
  # --nophase_progress: the resume loads the compiled task iteration from
  # the persistent cache instead of compiling it again.
  args = ['--env=halfcheetah_highdim', '--preset=smoke', '--ntasks=2',
          '--horizon=20', '--seed=0', '--nophase_progress',
          f'--workdir={workdir}']
  _finish(_driver(args + ['--stop_after=1']))
  with open(os.path.join(workdir, 'config.json')) as f:
    calibration = json.load(f)['calibration']
  std = np.asarray(calibration['state_std'])
  assert std.shape == np.asarray(calibration['state_mean']).shape
  assert std.ndim == 1 and np.all(std > 0)
  assert len(_metrics(workdir)) == 1
  # Provenance: recorded by the first run; as if it had used another jax.
  path = os.path.join(workdir, 'provenance.json')
  with open(path) as f:
    recorded = json.load(f)
  assert recorded['versions']['jax'] == jax.__version__
  with open(path, 'w') as f:
    json.dump(dict(recorded, versions=dict(recorded['versions'],
                                           jax='0.0.1')), f)
  out = _finish(_driver(args))
  assert 'resumed from task iteration 1' in out
  # Warned (one line, naming the version change), not refused.
  assert f'jax: 0.0.1 → {jax.__version__}' in out and 'warning:' in out
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['calibration'] == calibration
  rows = _metrics(workdir)
  assert [r['task_index'] for r in rows] == [0, 1]
  np.testing.assert_allclose(rows[1]['u'], rows[0]['u_next'])
  assert rows[1]['dropped_transitions'] == 0
  state, step = _final_state(workdir)
  assert step == 2
  for leaf in jax.tree.leaves((state.slbo, state.u)):
    assert np.all(np.isfinite(np.asarray(leaf)))
