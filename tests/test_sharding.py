"""Sweeps sharded over (forced host) devices: --shard and member_sharding
(a file of its own, so that pytest-xdist's --dist=loadfile runs it beside
test_driver.py's runs)."""
import json
import os
import subprocess
import sys

import numpy as np

from driver_runs import ROOT
from driver_runs import driver as _driver
from driver_runs import metrics as _metrics


_SHARDED_RUNS = r'''
import json, sys
import jax
from experiments.training import member_sharding, resolve, train
base = sys.argv[1]
out = {}
for name, shard in (('plain', 'off'), ('sharded', 'on')):
  family, config, alphas, seeds, record = resolve(
      'lq', preset='smoke', alphas=[1.0, 2.0], seeds=[0, 1], ntasks=2)
  sharding, _ = member_sharding(shard, len(seeds) * len(alphas))
  state = train(family, config, alphas, seeds, record, f'{base}/{name}',
                lambda message: None, sharding=sharding)
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, state))
  out[name] = [dict(shape=list(x.shape),
                    devices=len({s.device for s in x.addressable_shards}),
                    shard_rows=[s.data.shape[0] for s in x.addressable_shards],
                    axis=(tuple(getattr(x.sharding, 'spec', ())) or [None])[0])
                for x in leaves]
print('RESULT ' + json.dumps(out))
'''


def test_sharded_sweep_equals_the_unsharded_one(tmp_path):
  """--shard: a sweep of 4 members (2 seeds × 2 α) on 4 (forced host) devices
  has each state array split one member per device, and on its first task
  iteration agrees with the unsharded sweep to 1e-4 (the tolerance of the
  vmapped-sweep test: the per-device programs have another batch size)."""
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run([sys.executable, '-c', _SHARDED_RUNS, str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  placed = json.loads(proc.stdout.split('RESULT ', 1)[1])
  for leaf in placed['sharded']:
    assert leaf['shape'][0] == 4, leaf
    assert leaf['devices'] == 4 and leaf['shard_rows'] == [1] * 4, leaf
    assert leaf['axis'] == 'members', leaf
  assert all(leaf['devices'] == 1 for leaf in placed['plain'])
  sharded = [r for r in _metrics(tmp_path / 'sharded') if r['task_index'] == 0]
  plain = [r for r in _metrics(tmp_path / 'plain') if r['task_index'] == 0]
  assert len(sharded) == len(plain) == 4
  for a, b in zip(sharded, plain):
    assert (a['seed'], a['alpha']) == (b['seed'], b['alpha'])
    for name in ('psi', 'u_next', 'model_loss', 'virtual_return',
                 'real_samples'):
      np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4,
                                 err_msg=name)
  assert len(_metrics(tmp_path / 'sharded')) == 8  # 2 iterations × 4


def test_shard_on_refuses_members_that_do_not_divide_over_the_devices(
    tmp_path):
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = _driver(['--env=lq', '--preset=smoke', '--seed=0,1,2', '--shard=on',
                  f'--workdir={tmp_path / "w"}'], env=env)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert '3 member(s)' in err and '4 devices' in err, err
  assert not os.path.exists(tmp_path / 'w')
