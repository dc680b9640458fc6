"""The driver's metrics log: metrics.jsonl rows and TensorBoard scalars,
including the task ψ and u of every iteration."""
import json
import os
import struct
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


def _wandb_records(path):
  """The records of a W&B offline run file (a LevelDB-style log of
  `wandb_internal_pb2.Record`s after a 7-byte header)."""
  import struct as struct_lib  # pylint: disable=g-import-not-at-top
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B'
  block, pos, chunks, records = 32768, 7, b'', []
  while pos + 7 <= len(data):
    if block - pos % block < 7:
      pos += block - pos % block
      continue
    _, length, kind = struct_lib.unpack('<IHB', data[pos:pos + 7])
    if kind == 0:
      pos += block - pos % block
      continue
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    chunks = chunk if kind in (1, 2) else chunks + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(chunks)
      records.append(record)
  return records


def test_metrics_go_to_weights_and_biases_offline(tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  record = {'env': 'lq', 'alphas': [0.5]}
  log = logs.MetricsLog(workdir, [(0, 0.5)], keep_below=0,
                        wandb_project='admrl-test', config=record)
  for i in range(3):
    log.write(_metrics(i, [0.1 * i, 0.2], [0.3, 0.4]), wall_time=1.0)
  log.close()
  with open(os.path.join(workdir, 'wandb_run_id')) as f:
    run_id = f.read().strip()
  (path,) = [os.path.join(root, name)
             for root, _, names in os.walk(os.path.join(workdir, 'wandb'))
             for name in names if name == f'run-{run_id}.wandb']
  history = []
  for r in _wandb_records(path):
    if r.WhichOneof('record_type') == 'history':
      history.append({(i.key or '/'.join(i.nested_key)): json.loads(
          i.value_json) for i in r.history.item})
    if r.WhichOneof('record_type') == 'run':
      config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
  assert [h['_step'] for h in history] == [0, 1, 2]
  assert [h['seed0_alpha0.5/real_samples'] for h in history] == [100, 200,
                                                                  300]
  assert [h['seed0_alpha0.5/psi/0'] for h in history] == pytest.approx(
      [0.0, 0.1, 0.2])
  assert history[0]['seed0_alpha0.5/gap'] == 1.5
  assert config['env'] == 'lq' and config['alphas'] == [0.5]
