"""--distributed for real: one sweep run by two processes of this machine
(gloo collectives, the coordinator on 127.0.0.1), each with two forced host
devices, so that the four members are sharded over one 4-device mesh that
spans both processes, as over the hosts of a cluster."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from driver_runs import ROOT
from driver_runs import final_state
from driver_runs import metrics as _metrics

# tests/test_sharding.py's sweep: 2 seeds × 2 α, two task iterations (the
# second one has a task gradient; resuming before it is what is tested).
_SWEEP = ['--env=lq', '--preset=smoke', '--seed=0,1', '--alpha=1,2',
          '--ntasks=2']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(args, devices, log_path):
  """`python -m experiments.run ARGS` on `devices` forced host devices, its
  output in `log_path` (a file: nobody reads a pipe of a killed run)."""
  env = dict(os.environ,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, '-m', 'experiments.run', *args],
                            cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir, tmp_path, name, extra=()):
  port = _free_port()
  return [_launch([*_SWEEP, f'--workdir={workdir}', '--distributed',
                   f'--coordinator_address=127.0.0.1:{port}',
                   '--num_processes=2', f'--process_id={i}', *extra], 2,
                  tmp_path / f'{name}{i}.log') for i in range(2)]


def _wait_for_checkpoint(procs, path, tmp_path, names, timeout=900):
  deadline = time.time() + timeout
  while not path.is_dir():
    for proc, name in zip(procs, names):
      assert proc.poll() is None, (tmp_path / name).read_text()[-3000:]
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.3)


def _finish(procs, tmp_path, names, timeout=900):
  for proc, name in zip(procs, names):
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, (tmp_path / name).read_text()[-3000:]


def _leaves(state):
  return jax.tree.leaves(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, state))


def test_two_process_sweep_equals_one_process_and_resumes_after_a_kill(
    tmp_path):
  """A sweep of 4 members (2 seeds × 2 α) run by two processes × two
  devices equals the single-process sweep sharded over 4 devices to 1e-4
  (tests/test_sharding.py's tolerance; the per-device programs are the
  same, and in practice the metrics are bitwise equal), in every task
  iteration's metrics and in the final checkpoint; metrics.jsonl holds each
  row once, config.json and provenance.json are written, and after both
  processes are killed (SIGKILL) once the first checkpoint is saved, the
  two relaunched resume from it and end equal."""
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  reference = _launch([*_SWEEP, f'--workdir={single}', '--shard=on'], 4,
                      tmp_path / 'single.log')
  # Killed while they sleep after saving the first task iteration.
  procs = _two_processes(multi, tmp_path, 'first', ['--throttle_s=600'])
  _wait_for_checkpoint(procs, multi / 'checkpoints' / '1', tmp_path,
                       ['first0.log', 'first1.log'])
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert len(_metrics(multi)) == 4
  log = (tmp_path / 'first0.log').read_text()
  assert '4 member(s) sharded over 4 cpu device(s) of 2 processes' in log, log
  assert 'process 0 logs the run' in (tmp_path / 'first1.log').read_text()

  procs = _two_processes(multi, tmp_path, 'second')
  _finish(procs, tmp_path, ['second0.log', 'second1.log'])
  _finish([reference], tmp_path, ['single.log'])
  assert 'resumed from task iteration 1' in (
      tmp_path / 'second0.log').read_text()

  rows, expected = _metrics(multi), _metrics(single)
  assert len(rows) == len(expected) == 8  # 2 task iterations × 4 members
  assert len({(r['task_index'], r['seed'], r['alpha']) for r in rows}) == 8
  for a, b in zip(rows, expected):
    assert (a['task_index'], a['seed'], a['alpha']) == (
        b['task_index'], b['seed'], b['alpha'])
    for name in ('psi', 'u_next', 'model_loss', 'virtual_return', 'gap',
                 'real_samples'):
      np.testing.assert_allclose(np.asarray(a[name], float),
                                 np.asarray(b[name], float), rtol=1e-4,
                                 atol=1e-4, err_msg=name)
  assert sorted(os.listdir(multi / 'checkpoints')) == ['1', '2']
  assert json.loads((multi / 'config.json').read_text())['seeds'] == [0, 1]
  assert (multi / 'provenance.json').exists()

  # The checkpoint both processes wrote reads back in one process.
  (state, step), (expected_state, _) = final_state(multi), final_state(single)
  assert step == 2
  for a, b in zip(_leaves(state), _leaves(expected_state)):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float),
                               rtol=1e-4, atol=1e-4)


def test_process_flags_need_distributed(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--env=lq', '--preset=smoke',
       '--num_processes=2', '--process_id=1', f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      'error: --num_processes, --process_id need --distributed']
  assert not os.path.exists(tmp_path / 'w')
