"""The driver end to end on lq at smoke size: α sweep = single-α runs,
SIGKILL + resume = uninterrupted (bitwise), and bad input."""
import hashlib
import json
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from driver_runs import config_fields as _config_fields
from driver_runs import driver as _driver
from driver_runs import final_state as _final_state
from driver_runs import finish as _finish
from driver_runs import metrics as _metrics
from driver_runs import wait_for_checkpoint as _wait_for_checkpoint

SMOKE = ['--env=lq', '--preset=smoke', '--ntasks=3', '--seed=0']
# The scripts cache every program (the threshold 0 is their default, and
# stays so should the default change).
EVERY_PROGRAM_CACHED = dict(os.environ,
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Eight runs: a vmapped sweep α = 0.25, 0.5, 1 (normalised steps, the
  presets' rule); the same sweep killed with SIGKILL after task iteration 1
  and then restarted; the sweep with --sweep=map; α = 0.5 alone with
  --sweep=map; the vmapped and the mapped sweep in float64 (--x64), these
  two with per-phase progress lines (the default), and the vmapped one
  again.

  The runs that repeat another's programs start once that run has
  checkpointed, and load them from the persistent cache."""
  base = tmp_path_factory.mktemp('driver')
  dirs = {name: str(base / name)
          for name in ('sweep', 'killed', 'sweep_map', 'single_map',
                       'sweep_x64', 'map_x64')}
  quiet = ['--nophase_progress']
  procs = {
      'sweep': _driver(SMOKE + quiet + ['--alpha=0.25,0.5,1',
                                        f'--workdir={dirs["sweep"]}']),
      'sweep_map': _driver(SMOKE + quiet + ['--alpha=0.25,0.5,1', '--sweep=map',
                                            f'--workdir={dirs["sweep_map"]}']),
      'sweep_x64': _driver(SMOKE + ['--alpha=0.25,0.5,1', '--x64',
                                    f'--workdir={dirs["sweep_x64"]}'],
                           env=EVERY_PROGRAM_CACHED),
      'map_x64': _driver(SMOKE + ['--alpha=0.25,0.5,1', '--x64', '--sweep=map',
                                  f'--workdir={dirs["map_x64"]}'])}
  # The default run (per-phase progress) again, once the first has
  # compiled: its three programs come from the persistent cache.
  _wait_for_checkpoint(procs['sweep_x64'], dirs['sweep_x64'])
  dirs['x64_again'] = str(base / 'x64_again')
  procs['x64_again'] = _driver(SMOKE + [
      '--alpha=0.25,0.5,1', '--x64', f'--workdir={dirs["x64_again"]}'],
                               env=EVERY_PROGRAM_CACHED)
  _wait_for_checkpoint(procs['sweep_map'], dirs['sweep_map'])
  procs['single_map'] = _driver(SMOKE + quiet + [
      '--alpha=0.5', '--sweep=map', f'--workdir={dirs["single_map"]}'])
  _wait_for_checkpoint(procs['sweep'], dirs['sweep'])
  killed = _driver(SMOKE + quiet + ['--alpha=0.25,0.5,1', '--throttle_s=600',
                                    f'--workdir={dirs["killed"]}'])
  # Kill that run once iteration 1 is checkpointed (it then sleeps).
  _wait_for_checkpoint(killed, dirs['killed'])
  time.sleep(1.0)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert len(_metrics(dirs['killed'])) == 3  # 1 iteration × 3 members
  resumed = _driver(SMOKE + quiet + ['--alpha=0.25,0.5,1',
                                     f'--workdir={dirs["killed"]}'])
  outputs = {name: _finish(proc) for name, proc in procs.items()}
  out = _finish(resumed)
  assert 'resumed from task iteration 1' in out
  outputs['resumed'] = out
  return dirs, outputs


def test_resume_after_sigkill_is_bitwise_identical(runs):
  runs, _ = runs
  a, step_a = _final_state(runs['sweep'])
  b, step_b = _final_state(runs['killed'])
  assert step_a == step_b == 3
  leaves_a = jax.tree.leaves(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, a))
  leaves_b = jax.tree.leaves(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The log has each iteration once, identical up to wall time.
  assert _strip(_metrics(runs['sweep'])) == _strip(_metrics(runs['killed']))


def _strip(rows):
  return [{k: v for k, v in r.items() if k != 'wall_time'} for r in rows]


def test_alpha_sweep_member_equals_the_single_alpha_run(runs):
  """--sweep=map: bitwise the same trajectory and metrics as α = 0.5
  alone."""
  runs, _ = runs
  sweep = [r for r in _metrics(runs['sweep_map']) if r['alpha'] == 0.5]
  single = _metrics(runs['single_map'])
  assert [r['task_index'] for r in sweep] == [0, 1, 2]
  assert _strip(sweep) == _strip(single)
  # Each member steps with its own α, normalised (the presets' rule):
  # u_next = clip(u + α ∂L/∂u/‖∂L/∂u‖, −1, 1). (Task 1 is the first with a
  # gradient; until then members are equal.)
  for r in _metrics(runs['sweep_map']):
    if r['task_index'] == 1:
      assert r['grad_accepted']
      grad_u = np.asarray(r['grad_u'])
      np.testing.assert_allclose(
          r['u_next'], np.clip(np.asarray(r['u']) + r['alpha'] * grad_u
                               / np.linalg.norm(grad_u), -1.0, 1.0),
          rtol=1e-5, atol=1e-6)


def test_alpha_sweep_members_follow_distinct_task_trajectories(runs):
  """A 3-α smoke sweep is not a sweep that does nothing: with the presets'
  normalised step every member's ψ after a task-gradient step differs,
  and not every step ends on the box's boundary (the paper's rule at the
  smoke size clipped every member to the same corner)."""
  runs, _ = runs
  rows = [r for r in _metrics(runs['sweep_map']) if r['task_index'] >= 1]
  by_alpha = {}
  for r in rows:
    by_alpha.setdefault(r['alpha'], []).append(np.asarray(r['u_next']))
  assert sorted(by_alpha) == [0.25, 0.5, 1.0]
  trajectories = [np.stack(by_alpha[a]) for a in sorted(by_alpha)]
  for i in range(3):
    for j in range(i + 1, 3):
      assert np.abs(trajectories[i] - trajectories[j]).max() > 1e-3, (i, j)
  steps = np.concatenate(trajectories)
  assert not np.all(np.any(np.abs(steps) == 1.0, axis=1)), steps


def test_vmapped_sweep_agrees_with_single_runs_to_rounding(runs):
  """--sweep=vmap runs the members as batched lanes, whose kernels round
  differently (by batch size). On the first task iteration every metric
  agrees to 1e-4; later iterations drift apart as RL amplifies rounding,
  which is why --sweep=map and --x64 exist."""
  runs, _ = runs
  vmapped = [r for r in _metrics(runs['sweep']) if r['task_index'] == 0]
  mapped = [r for r in _metrics(runs['sweep_map']) if r['task_index'] == 0]
  assert len(vmapped) == len(mapped) == 3
  for a, b in zip(vmapped, mapped):
    assert a['alpha'] == b['alpha']
    for name in ('psi', 'u_next', 'model_loss', 'virtual_return',
                 'real_samples'):
      np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4,
                                 err_msg=name)


def test_vmapped_sweep_in_float64_tracks_single_runs(runs):
  """--x64: the vmapped sweep's α = 0.5 lane and α = 0.5 alone (a member of the
  --sweep=map run: the single-member program) differ only by rounding.

  Batched and unbatched kernels round differently (1e-16); TRPO amplifies
  that (the virtual return differs by 1e-11 after the first task, 1e-7
  after the second) and the task gradient's 20-iteration Krylov solve,
  stopped at a residual of 0.1–0.2, amplifies it most. So the first two
  task iterations agree to rounding — ψ, u and the next task to 1e-5, the
  metrics to 1e-4 (measured: 2e-7 and 2e-6) — and the last one in
  direction: the task gradients' cosine > 0.99 and the next task within
  0.05 (measured with the flax networks: cosine 0.9998, 7e-3; a lane
  mixed up with another member's would differ by O(1))."""
  runs, _ = runs
  sweep = [r for r in _metrics(runs['sweep_x64']) if r['alpha'] == 0.5]
  single = [r for r in _metrics(runs['map_x64']) if r['alpha'] == 0.5]
  assert [r['task_index'] for r in sweep] == [r['task_index']
                                               for r in single] == [0, 1, 2]
  for a, b in zip(sweep[:2], single[:2]):
    for name in ('psi', 'u', 'u_next', 'real_samples'):
      np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-5,
                                 err_msg=name)
    for name in ('model_loss', 'virtual_return', 'return_hat',
                 'return_star', 'gap', 'residual', 'grad_u', 'grad_norm'):
      np.testing.assert_allclose(_number(a[name]), _number(b[name]),
                                 rtol=1e-4, atol=1e-6, err_msg=name)
  a, b = sweep[2], single[2]
  np.testing.assert_allclose(a['psi'], b['psi'], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(a['u_next'], b['u_next'], atol=0.05)
  g_a, g_b = _number(a['grad_u']), _number(b['grad_u'])
  assert g_a @ g_b / np.linalg.norm(g_a) / np.linalg.norm(g_b) > 0.99
  for name in ('model_loss', 'virtual_return', 'return_hat', 'return_star',
               'gap'):
    np.testing.assert_allclose(_number(a[name]), _number(b[name]),
                               rtol=1e-4, atol=1e-6, err_msg=name)
  # The run really is float64, and says so in its record.
  with open(os.path.join(runs['map_x64'], 'config.json')) as f:
    assert json.load(f)['x64'] is True


def _number(value):
  return np.asarray(np.nan if value is None else value, float)  # NaN is null


def test_a_second_default_run_loads_its_programs_from_the_cache(runs):
  """Per-phase progress keeps the programs cacheable (three programs
  driven from the host): the first x64 run compiles them, the identical
  second one loads all three, and both compute the same run."""
  dirs, outputs = runs
  def compiled_line(out):
    [line] = [l for l in out.splitlines() if '] compiled in ' in l]
    return line
  first = compiled_line(outputs['sweep_x64'])
  again = compiled_line(outputs['x64_again'])
  assert '(3 of 3 programs from the persistent compilation cache)' in again, (
      again)
  assert ' of 3 programs from the persistent compilation cache' in first, (
      first)   # 0 of 3 unless $ADMRL_JAX_CACHE_DIR held them already
  assert 'stage 1/1 (3 member(s))' in outputs['x64_again']
  for a, b in zip(_metrics(dirs['sweep_x64']), _metrics(dirs['x64_again'])):
    assert a['u_next'] == b['u_next'] and a['virtual_return'] == pytest.approx(
        b['virtual_return'], nan_ok=True)


def test_progress_has_a_line_per_phase_with_an_eta(runs):
  _, outputs = runs
  out = outputs['sweep_x64']
  lines = [line for line in out.splitlines() if '(3 member(s))' in line]
  # Task 1: one stage and the (gradient-free) task update; tasks 2 and 3:
  # zero-shot, one stage, the task update.
  assert len(lines) == 2 + 3 + 3, out
  for task in (2, 3):
    for phase in ('zero-shot', 'stage 1/1', 'task update'):
      assert any(line.split('] ', 1)[1].startswith(f'task {task}/3, {phase}')
                 for line in lines), (task, phase, out)
  # An ETA as soon as work after the first report has been timed.
  assert all('ETA' in line for line in lines[2:]), out
  # --sweep=map: a line per member and phase.
  mapped = [line for line in outputs['map_x64'].splitlines()
            if 'task 2/3, stage 1/1 (member' in line]
  assert len(mapped) == 3, outputs['map_x64']
  # --nophase_progress: one line per task iteration, no phase lines.
  quiet = outputs['sweep'].splitlines()
  assert not any('stage 1/1' in line for line in quiet), outputs['sweep']
  assert sum(' done in ' in line for line in quiet) == 3, outputs['sweep']


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


@pytest.mark.parametrize('args, message', [
    (['--env=lq2'], 'unknown environment'),
    (['--env=lq', '--algo=reptile'], 'unknown algorithm'),
    (['--env=lq', '--alpha=0'], 'must be > 0'),
    (['--env=lq', '--alpha=-1,2'], 'must be > 0'),
    (['--env=lq', '--alpha='], 'comma-separated list'),
    (['--env=lq', '--alpha=1,,2'], 'comma-separated list'),
    (['--env=lq', '--alpha=1,x'], 'not a number'),
    (['--env=lq', '--alpha=1e400'], 'not a finite number: 1e400'),
    (['--env=lq', '--alpha=inf,2'], 'not a finite number: inf'),
    (['--env=lq', '--seed=1.5'], 'non-negative integers'),
    (['--env=lq', '--preset=huge'], 'unknown preset'),
    (['--env=lq', '--set=slbo.n_innr=3'], 'unknown field'),
    (['--env=lq', '--set=slbo.n_inner=x'], 'cannot parse'),
    (['--env=lq', '--frame_skip=2'], 'does not apply to the lq family'),
    (['--env=hopper2d', '--frame_skip=0'], '--frame_skip must be >= 1'),
    (['--env=hopper2d', '--pipeline=bullet'], 'unknown pipeline'),
    (['--env=lq', '--shard=x'], '--shard: expected auto, on or off'),
    (['--env=lq', '--sweep=map', '--shard=on'], '--shard=on needs --sweep=vmap'),
    # Refused while validating, not inside the compiled task iteration.
    (['--env=lq', '--set=task_gradient.preset=best'],
     "unknown task-gradient preset 'best'"),
    (['--env=lq', '--set=step_rule=adam'], "unknown step_rule 'adam'"),
])
def test_bad_flags_exit_2_with_a_message(args, message, tmp_path, capsys):
  """In this process (the command line's parse, then the driver's `main`):
  exit 2, the message, nothing created. The same path as a subprocess:
  test_other_configuration_... here and test_sharding.py's
  test_shard_on_refuses_...."""
  code, err = _driver_in_process(args + [f'--workdir={tmp_path / "w"}'],
                                 capsys)
  assert code == 2, err
  assert message in err
  assert not os.path.exists(tmp_path / 'w')  # nothing was created


def _driver_in_process(args, capsys):
  """`python -m experiments.run ARGS` run by this process: (exit status,
  stderr). The flags are parsed from ARGS and restored afterwards."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from experiments import run as driver  # pylint: disable=g-import-not-at-top
  capsys.readouterr()
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(['experiments.run', *args])
    with pytest.raises(SystemExit) as stopped:
      driver.main(argv)
  return stopped.value.code, capsys.readouterr().err


def test_other_configuration_and_corrupt_checkpoint_leave_files_alone(
    runs, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  runs, _ = runs
  workdir = str(tmp_path / 'copy')
  shutil.copytree(runs['single_map'], workdir)
  before = _tree_digest(workdir)
  # Another configuration in the same workdir.
  proc = _driver(SMOKE + ['--alpha=8', '--sweep=map', f'--workdir={workdir}'])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and 'another configuration' in err, err
  assert 'alphas' in err
  assert _tree_digest(workdir) == before
  # A corrupt latest checkpoint: every file of it overwritten with junk.
  latest = os.path.join(workdir, 'checkpoints', '3')
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage')
  before = _tree_digest(workdir)
  proc = _driver(SMOKE + ['--alpha=0.5', '--sweep=map', f'--workdir={workdir}'])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err
  assert 'corrupt or unreadable' in err and latest in err
  assert _tree_digest(workdir) == before


# ---------------------------------------------- every config field, issue 16
# A value of the wrong type, and one outside the range, by the field's type;
# strings are choices, so any other word is out of range.
_WRONG_TYPE = {int: '1.5', float: 'abc', bool: 'maybe', tuple: '64,x',
               str: 'bogus'}
_OUT_OF_RANGE = {int: '0', float: '-1', tuple: '0,64'}
# Fields for which −1 is valid.
_OUT_OF_RANGE_OF = {'first_u': '1.5', 'task_gradient.linear_solver.shift': 'inf',
                    'slbo.policy.init_log_std': 'inf'}


def test_every_config_field_refuses_bad_values_before_running():
  """Every field of AdMRLConfig (nested) refuses a value of the wrong type
  and one out of range while the settings are resolved — before the driver
  writes anything (it then exits 2 with the message, see
  test_bad_flags_exit_2_with_a_message) — with the field named. Among
  them slbo.rollout_steps=1.5 (an Optional[int]), which used to fail only
  inside the compiled program, and the named estimator
  task_gradient.preset=bogus."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top

  from experiments import common  # pylint: disable=g-import-not-at-top
  from experiments import presets  # pylint: disable=g-import-not-at-top
  from experiments import run as driver  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config, _, _ = presets.preset('lq', 'smoke')
  cases = [('task_gradient.preset', 'bogus')]
  for name, hint in _config_fields(config):
    base, _ = presets.field_type(hint)
    cases.append((name, _WRONG_TYPE.get(base, 'anything')))
    if name in _OUT_OF_RANGE_OF or base in _OUT_OF_RANGE:
      cases.append((name, _OUT_OF_RANGE_OF.get(name, _OUT_OF_RANGE.get(base))))
  assert ('slbo.rollout_steps', '1.5') in cases
  assert len(cases) > 2 * 40  # the walk reached the nested sections
  for name, text in cases:
    with pytest.raises(ValueError, match=re.escape(name)):
      presets.apply_overrides(config, {name: text})
    with flagsaver.flagsaver(env='lq', preset='smoke',
                             set=[f'{name}={text}']):
      with pytest.raises(common.UsageError, match=re.escape(name)):
        driver.resolve_settings()
  # The defaults and the presets themselves are valid.
  with flagsaver.flagsaver(env='lq', preset='smoke', set=[]):
    driver.resolve_settings()


def test_help_lists_no_test_hooks():
  """--throttle_s exists for the tests: the scripts' --help leaves it out,
  --helpfull lists it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for script in ('run', 'evaluate', 'study'):
    out = subprocess.run(
        [sys.executable, '-m', f'experiments.{script}', '--help'], cwd=root,
        capture_output=True, text=True, timeout=120)
    assert '--workdir' in out.stdout, out.stderr[-2000:]  # absl exits 1
    assert 'throttle_s' not in out.stdout, script
  full = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--helpfull'], cwd=root,
      capture_output=True, text=True, timeout=120)
  assert 'throttle_s' in full.stdout
