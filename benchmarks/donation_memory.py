r"""Peak memory of one task iteration of a K = 6 α sweep at paper capacity,
with the state's buffers donated to the jitted call and without.

    python benchmarks/donation_memory.py [--env=ant2d] [--members=6]

Each mode runs in its own subprocess: the paper preset's state (dataset of
1 000 000 transitions per member, model [1000, 1000]) for K members
(`admrl_jax.sweep.init_members`, as `experiments.training` starts a
sweep), then one call of the vmapped task iteration, jitted as the driver
jits it (`admrl_jax.sweep.batched`, which donates; the same program
without donation for the copy mode). The iteration's work is cut to the
least (1 SLBO stage of 1 VirtualTraining iteration of 1 model step and 1
TRPO step, horizon 20): the state's shapes, hence the
buffers a call holds, are the paper's; the compute is not. Reports per
mode the state's bytes, the resident memory once the state exists and
before the call (after compiling), the peak resident memory sampled
during the call (every 5 ms) and the process's peak
(`resource.getrusage` ru_maxrss). Writes
benchmarks/results/donation_memory.json.
"""
from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ENV = flags.DEFINE_string('env', 'ant2d', 'Task family (paper preset).')
_MEMBERS = flags.DEFINE_integer('members', 6, 'α values of the sweep (K).')
_MODE = flags.DEFINE_enum('mode', None, ['copy', 'donate'],
                          'Internal: run one mode in this process.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                        'donation_memory.json'), 'Results file.')

# Everything but the state's shapes cut to the least.
_SETS = {'n_tasks': '1', 'n_slbo_first': '1', 'n_slbo': '1',
         'gradient_envs': '2', 'slbo.n_inner': '1', 'slbo.n_zeroshot': '1',
         'slbo.n_policy': '1', 'slbo.model.n_steps': '1',
         'slbo.n_rollouts': '2'}


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _maxrss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_mode(donate: bool) -> dict:
  """One task iteration of the sweep in this process; memory figures."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from admrl_jax import sweep  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import common, training  # pylint: disable=g-import-not-at-top
  common.enable_compilation_cache()
  alphas = [float(a) for a in np.geomspace(0.25, 8.0, _MEMBERS.value)]
  family, config, alphas, seeds, _ = training.resolve(
      env=_ENV.value, preset='paper', alphas=alphas, sets=_SETS, horizon=20)
  family = family.calibrate(jax.random.key(10_000))
  algorithm = admrl.AdMRL(family, config)
  members = [(seed, alpha) for seed in seeds for alpha in alphas]
  state = sweep.init_members(algorithm.init, members)
  jax.block_until_ready(state)
  rss_after_state = _rss_bytes()
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  data_bytes = sum(x.nbytes for x in jax.tree.leaves(state.slbo.data))
  # As experiments.training jits the vmap sweep (donating), or the same
  # program without donation.
  iteration = (sweep.batched(algorithm.task_iteration, 'vmap') if donate
               else jax.jit(jax.vmap(algorithm.task_iteration,
                                     in_axes=(0, None))))
  t0 = time.perf_counter()
  compiled = iteration.lower(state, True).compile()
  compile_s = time.perf_counter() - t0
  rss_before = _rss_bytes()
  maxrss_before_call = _maxrss_bytes()
  peak = [rss_before]
  running = [True]

  def sample():
    while running[0]:
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(0.005)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  t0 = time.perf_counter()
  new_state, metrics = compiled(state, True)
  jax.block_until_ready((new_state, metrics))
  call_s = time.perf_counter() - t0
  running[0] = False
  sampler.join()
  peak[0] = max(peak[0], _rss_bytes())
  return dict(
      donate=donate, members=len(members), env=family.name,
      dataset_capacity=config.slbo.dataset_capacity,
      state_bytes=state_bytes, dataset_bytes=data_bytes,
      rss_after_state_bytes=rss_after_state,
      rss_before_call_bytes=rss_before,
      peak_rss_during_call_bytes=peak[0],
      call_added_bytes=peak[0] - rss_before,
      maxrss_before_call_bytes=maxrss_before_call,
      maxrss_bytes=_maxrss_bytes(),
      input_deleted=bool(jax.tree.leaves(state.slbo.data)[0].is_deleted()),
      compile_s=compile_s, call_s=call_s)


def main(argv):
  del argv
  if _MODE.value is not None:
    print('RESULT ' + json.dumps(run_mode(_MODE.value == 'donate')),
          flush=True)
    return
  wall = time.time()
  rows = {}
  for mode in ('copy', 'donate'):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f'--mode={mode}',
         f'--env={_ENV.value}', f'--members={_MEMBERS.value}'],
        capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
    if out.returncode or not lines:
      raise RuntimeError(f'{mode} failed (exit {out.returncode}):\n'
                         f'{out.stderr[-3000:]}')
    rows[mode] = json.loads(lines[-1][len('RESULT '):])
    print(mode, json.dumps(rows[mode]), flush=True)
  gib = 2.0**30
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), cpu_count=os.cpu_count(),
                load_average=os.getloadavg(), settings=_SETS, horizon=20,
                wall_s=round(time.time() - wall, 1)),
      copy=rows['copy'], donate=rows['donate'],
      state_gib=rows['copy']['state_bytes'] / gib,
      peak_rss_during_call_gib=dict(
          copy=rows['copy']['peak_rss_during_call_bytes'] / gib,
          donate=rows['donate']['peak_rss_during_call_bytes'] / gib),
      call_added_gib=dict(copy=rows['copy']['call_added_bytes'] / gib,
                          donate=rows['donate']['call_added_bytes'] / gib),
      maxrss_gib=dict(copy=rows['copy']['maxrss_bytes'] / gib,
                      donate=rows['donate']['maxrss_bytes'] / gib))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items()
                    if k not in ('copy', 'donate')}, indent=2))


if __name__ == '__main__':
  app.run(main)
