"""The driver's metrics log: metrics.jsonl rows and TensorBoard scalars,
including the task ψ and u of every iteration."""
import json
import os
import struct
import sys
import types

import numpy as np
import pytest

from experiments import logs


def _read_scalars(directory):
  """{tag: [(step, value)]} from the tensorboardX event files in directory
  (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step,
                                                  value.simple_value))
  return scalars


def _metrics(task_index, psi, u):
  """Batched metrics (one member) with the fields the log reads."""
  nan = np.full((1,), np.nan)
  return types.SimpleNamespace(
      task_index=np.asarray([task_index]), psi=np.asarray([psi]),
      u=np.asarray([u]), u_next=np.asarray([u]), gap=np.asarray([1.5]),
      return_hat=nan, return_star=nan, grad_norm=np.asarray([0.5]),
      residual=np.asarray([0.1]), solver_iterations=np.asarray([40]),
      real_samples=np.asarray([100 * (task_index + 1)]))


def test_psi_and_u_of_each_iteration_go_to_tensorboard(tmp_path):
  log = logs.MetricsLog(str(tmp_path), [(0, 2.0)], keep_below=0)
  tasks = [([0.5, 1.4], [0.25, -0.5]), ([-1.0, 1.8], [-0.5, 1.0])]
  for i, (psi, u) in enumerate(tasks):
    log.write(_metrics(i, psi, u), wall_time=1.0)
  log.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [row['psi'] for row in rows] == [psi for psi, _ in tasks]
  assert [row['solver_iterations'] for row in rows] == [40, 40]
  scalars = _read_scalars(tmp_path / 'tb' / 'seed0_alpha2')
  for j in range(2):
    np.testing.assert_allclose([v for _, v in scalars[f'psi/{j}']],
                               [psi[j] for psi, _ in tasks])
    np.testing.assert_allclose([v for _, v in scalars[f'u/{j}']],
                               [u[j] for _, u in tasks])
    assert [step for step, _ in scalars[f'u/{j}']] == [0, 1]
  assert 'gap' in scalars and 'real_samples' in scalars


def test_progress_summary_labels_a_sweeps_members():
  rows = [dict(seed=s, alpha=a, psi=[0.5, 1.0], gap=g, real_samples=300)
          for s, a, g in ((0, 0.5, 2.0), (1, 0.5, -1.0), (2, 0.5, 5.0))]
  line = logs.summary_line(rows)
  assert line.startswith('3 members: gap median 2.0 [-1.0, 5.0] over 3')
  assert 'member 1 (seed 0, alpha 0.5) psi=(0.50, 1.00)' in line
  one = logs.summary_line(rows[:1])
  assert one == 'psi=(0.50, 1.00) gap=2.0 real samples 300'
  rows[0]['gap'] = None
  assert 'gap median 5.0 [-1.0, 5.0] over 2 members' in logs.summary_line(
      rows)


class _FakeWandb:
  """Stands in for the `wandb` module: records what the log asks of it."""

  def __init__(self):
    self.inits, self.logged, self.finished = [], [], 0

  def init(self, **kwargs):
    self.inits.append(kwargs)
    return self

  def log(self, values, step):
    self.logged.append((step, dict(values)))

  def finish(self):
    self.finished += 1


def test_metrics_go_to_weights_and_biases_with_steps_and_a_resumable_id(
    tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  record = {'env': 'lq', 'alphas': [0.5, 1.0]}
  members = [(0, 0.5), (0, 1.0)]

  def write_and_close(first, last):
    log = logs.MetricsLog(workdir, members, keep_below=0,
                          wandb_project='admrl-test', config=record)
    for i in range(first, last):
      metrics = _metrics(i, [0.1 * i, 0.2], [0.3, 0.4])
      both = types.SimpleNamespace(**{
          k: np.concatenate([v, v + (1 if k == 'gap' else 0)])
          for k, v in vars(metrics).items()})
      log.write(both, wall_time=1.0)
    log.close()

  write_and_close(0, 3)
  assert [step for step, _ in fake.logged] == [0, 1, 2]
  first = fake.logged[0][1]
  assert first['seed0_alpha0.5/gap'] == 1.5
  assert first['seed0_alpha1/gap'] == 2.5
  assert [v['seed0_alpha0.5/real_samples'] for _, v in fake.logged] == [
      100, 200, 300]
  assert [v['seed0_alpha1/psi/0'] for _, v in fake.logged] == pytest.approx(
      [0.0, 0.1, 0.2])
  assert first['seed0_alpha0.5/u/1'] == pytest.approx(0.4)
  (init,) = fake.inits
  assert init['project'] == 'admrl-test' and init['config'] == record
  assert init['resume'] == 'allow' and init['dir'] == workdir
  with open(os.path.join(workdir, 'wandb_run_id')) as f:
    assert f.read().strip() == init['id']
  assert fake.finished == 1
  # A resumed driver run continues the same W&B run at the next step.
  write_and_close(3, 4)
  assert fake.inits[1]['id'] == init['id']
  assert [step for step, _ in fake.logged] == [0, 1, 2, 3]
  assert fake.finished == 2


def test_the_real_wandb_accepts_the_run_offline(tmp_path, monkeypatch):
  """What the fake stands for, with wandb itself (offline): the run starts
  with the log's arguments, takes its rows and finishes, writing its run
  file under the workdir. (What wandb keeps in that file is wandb's
  business; its offline writer flushes history asynchronously.)"""
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  log = logs.MetricsLog(workdir, [(0, 0.5)], keep_below=0,
                        wandb_project='admrl-test', config={'env': 'lq'})
  for i in range(2):
    log.write(_metrics(i, [0.1 * i, 0.2], [0.3, 0.4]), wall_time=1.0)
  log.close()
  with open(os.path.join(workdir, 'wandb_run_id')) as f:
    run_id = f.read().strip()
  assert [name for _, _, names in os.walk(os.path.join(workdir, 'wandb'))
          for name in names if name == f'run-{run_id}.wandb']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert [json.loads(line)['task_index'] for line in f] == [0, 1]
