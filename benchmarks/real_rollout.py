"""Batched Brax collection vs. native MuJoCo stepping, per family and pipeline.

For each (family, pipeline) row this measures

  compile_s           first call of the jitted collector (compile + one run);
  brax_steps_per_s    env (control) steps per second of a later call of the
                      collector: n_envs × horizon steps, uniform random policy,
                      best of `--repeats` calls with fresh keys;
  native_steps_per_s  the same MuJoCo model stepped by `mujoco.rollout` (C,
                      open loop) for the same number of env steps: n_envs
                      initial states, horizon × frame_skip physics steps each,
                      random uniform controls held for frame_skip steps, the
                      physics timestep set to the Brax system's (so the control
                      step dt matches); best of `--native_repeats`;
  ratio               brax_steps_per_s / native_steps_per_s.

The Brax number includes what a collection pays besides physics (the family's
observation, reward, done rule, OU noise and automatic resets); the native
number is bare physics. The collector is `admrl_jax.rl.rollout.make_collector`
exactly as training uses it.

Usage:
  PYTHONPATH=. python benchmarks/real_rollout.py            # full table
  PYTHONPATH=. python benchmarks/real_rollout.py --quick    # hopper2d, default pipeline
  PYTHONPATH=. python benchmarks/real_rollout.py --families=ant2d --pipelines=mjx,spring
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np
from absl import app
from absl import flags

FULL_FAMILIES = ('hopper2d', 'walker2d', 'ant2d', 'halfcheetah_highdim')
QUICK_FAMILIES = ('hopper2d',)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results', 'real_rollout.json')


_QUICK = flags.DEFINE_bool(
    'quick', False, 'hopper2d with the default pipeline only (< 60 s).')
_FAMILIES = flags.DEFINE_string(
    'families', None, 'Comma list of families (default: full set, or '
    'hopper2d with --quick).')
_PIPELINES = flags.DEFINE_string(
    'pipelines', None, 'Comma list of pipelines (default: all, or the '
    'default pipeline with --quick).')
_N_ENVS = flags.DEFINE_integer('n_envs', 16, 'Parallel environments.')
_HORIZON = flags.DEFINE_integer('horizon', 200, 'Control steps per call.')
_REPEATS = flags.DEFINE_integer(
    'repeats', None, 'Timed collector calls, best taken (default 5, 2 with '
    '--quick).')
_NATIVE_REPEATS = flags.DEFINE_integer(
    'native_repeats', None, 'Timed mujoco.rollout calls, best taken (default '
    '10, 3 with --quick); they are short and this 2-core machine is noisy, '
    'so more of them.')
_NATIVE_THREADS = flags.DEFINE_integer(
    'native_threads', 1, 'Threads for mujoco.rollout (one MjData per '
    'thread).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_OUT = flags.DEFINE_string('out', DEFAULT_OUT,
                           'Where to write the JSON results.')


def _busy_cpu_s():
  """CPU seconds all processes have used (Linux /proc/stat; steal counted)."""
  try:
    with open('/proc/stat') as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  user, nice, system, _, _, irq, softirq, steal = (fields + [0] * 8)[:8]
  return (user + nice + system + irq + softirq + steal) / os.sysconf(
      'SC_CLK_TCK')


def _best_time(fn, repeats):
  """(best seconds, share of the machine's CPUs others used meanwhile).

  The second number says how busy the machine was with other work during
  the timed calls (0: idle besides this process); None off Linux.
  """
  best = float('inf')
  busy0, t_own0, wall0 = _busy_cpu_s(), os.times(), time.perf_counter()
  for i in range(repeats):
    t0 = time.perf_counter()
    fn(i)
    best = min(best, time.perf_counter() - t0)
  busy1, t_own1, wall1 = _busy_cpu_s(), os.times(), time.perf_counter()
  other = None
  if busy0 is not None and busy1 is not None:
    own = (t_own1.user + t_own1.system) - (t_own0.user + t_own0.system)
    other = max(0.0, (busy1 - busy0) - own) / (
        (wall1 - wall0) * (os.cpu_count() or 1))
  return best, other


def _brax_measure(family, n_envs, repeats, seed):
  """(compile_s, steps_per_s) of the batched collector with random actions."""
  import jax  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl.rollout import RolloutConfig  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import rollout  # pylint: disable=g-import-not-at-top

  collect = rollout.make_collector(
      family, rollout.random_policy(family.action_size),
      RolloutConfig(n_envs=n_envs))
  psi = np.asarray(family.eval_tasks()[0], np.float32)
  base_key = jax.random.key(seed)

  t0 = time.perf_counter()
  r = collect(None, psi, jax.random.fold_in(base_key, 0))
  jax.block_until_ready(r)
  compile_s = time.perf_counter() - t0
  obs = np.asarray(r.transitions.obs)
  expected = (family.horizon, n_envs)
  if obs.shape[:2] != expected:
    raise RuntimeError(f'obs shape {obs.shape}, expected {expected} + (obs,)')

  def call(i):
    jax.block_until_ready(
        collect(None, psi, jax.random.fold_in(base_key, i + 1)))

  seconds, other = _best_time(call, repeats)
  finite = bool(np.all(np.isfinite(obs)))
  return compile_s, n_envs * family.horizon / seconds, seconds, finite, other


def _native_measure(family, n_envs, repeats, seed, n_threads):
  """Env steps per second of the same model under mujoco.rollout."""
  import mujoco  # pylint: disable=g-import-not-at-top
  from mujoco import rollout as mj_rollout  # pylint: disable=g-import-not-at-top

  sys_ = family.brax_env.sys
  model = copy.copy(sys_.mj_model)  # leave the system's own model untouched
  # Brax's spring/positional environments shrink the system timestep (and
  # raise n_frames) without touching mj_model: use the system's timestep.
  model.opt.timestep = float(sys_.opt.timestep)
  frame_skip = int(family.frame_skip)
  nstep = family.horizon * frame_skip
  rng = np.random.default_rng(seed)

  # Initial states: the family's reset distribution, qpos0 + U(-r, r) and
  # qvel = r N(0, 1), as full physics states.
  data = mujoco.MjData(model)
  spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
  nstate = mujoco.mj_stateSize(model, spec)
  r = float(getattr(family, 'reset_noise', 0.1))
  init = np.empty((n_envs, nstate))
  for i in range(n_envs):
    mujoco.mj_resetData(model, data)
    data.qpos[:] = model.qpos0 + rng.uniform(-r, r, model.nq)
    data.qvel[:] = r * rng.standard_normal(model.nv)
    mujoco.mj_forward(model, data)
    mujoco.mj_getState(model, data, init[i], spec)

  # Controls: uniform in the control range, held for frame_skip steps.
  nu = model.nu
  low = np.where(model.actuator_ctrllimited, model.actuator_ctrlrange[:, 0],
                 -1.0)
  high = np.where(model.actuator_ctrllimited, model.actuator_ctrlrange[:, 1],
                  1.0)
  actions = rng.uniform(low, high, size=(n_envs, family.horizon, nu))
  control = np.repeat(actions, frame_skip, axis=1)
  assert control.shape == (n_envs, nstep, nu), control.shape

  datas = [mujoco.MjData(model) for _ in range(max(1, n_threads))]
  data_arg = datas[0] if n_threads <= 1 else datas
  state_out = np.empty((n_envs, nstep, nstate))
  # An untimed warm-up (allocations, thread pool).
  mj_rollout.rollout(model, data_arg, init, control, state=state_out)

  def call(_):
    mj_rollout.rollout(model, data_arg, init, control, state=state_out)

  seconds, other = _best_time(call, repeats)
  finite = bool(np.all(np.isfinite(state_out)))
  return n_envs * family.horizon / seconds, seconds, finite, nstep, other


def _row(name, pipeline, repeats, native_repeats):
  import jax  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top

  row = {'family': name, 'pipeline': pipeline, 'brax_steps_per_s': None,
         'native_steps_per_s': None, 'ratio': None, 'compile_s': None}
  stage = 'make'
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      family = envs.make(name, pipeline=pipeline, horizon=_HORIZON.value)
    row['frame_skip'] = int(family.frame_skip)
    row['physics_timestep'] = float(family.brax_env.sys.opt.timestep)
    row['dt'] = float(family.dt)
    if hasattr(family, 'calibrate') and not getattr(family, 'calibrated',
                                                    True):
      stage = 'calibrate'
      t0 = time.perf_counter()
      family = family.calibrate(jax.random.key(_SEED.value))
      row['calibrate_s'] = time.perf_counter() - t0  # excluded from timings
    stage = 'native'
    native, native_s, native_finite, nstep, native_other = _native_measure(
        family, _N_ENVS.value, native_repeats, _SEED.value,
        _NATIVE_THREADS.value)
    row['native_steps_per_s'] = native
    row['native_call_s'] = native_s
    row['native_physics_steps_per_env'] = nstep
    row['native_finite'] = native_finite
    row['native_other_cpu_frac'] = native_other
    stage = 'brax'
    compile_s, brax, brax_s, brax_finite, brax_other = _brax_measure(
        family, _N_ENVS.value, repeats, _SEED.value)
    row['compile_s'] = compile_s
    row['brax_steps_per_s'] = brax
    row['brax_call_s'] = brax_s
    row['brax_finite'] = brax_finite
    row['brax_other_cpu_frac'] = brax_other
    row['ratio'] = brax / native
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{stage}: {type(e).__name__}: {e}'[:2000]
    traceback.print_exc()
  return row


def _fmt(x, spec):
  return '—' if x is None else format(x, spec)


def markdown_table(rows):
  lines = ['| family | pipeline | frame_skip | brax steps/s | native steps/s '
           '| ratio | compile_s | other CPU (brax/native) |',
           '|---|---|---:|---:|---:|---:|---:|---|']
  for r in rows:
    line = (f"| {r['family']} | {r['pipeline']} | "
            f"{_fmt(r.get('frame_skip'), 'd')} | "
            f"{_fmt(r['brax_steps_per_s'], ',.0f')} | "
            f"{_fmt(r['native_steps_per_s'], ',.0f')} | "
            f"{_fmt(r['ratio'], '.4f')} | {_fmt(r['compile_s'], '.1f')} | "
            f"{_fmt(r.get('brax_other_cpu_frac'), '.0%')} / "
            f"{_fmt(r.get('native_other_cpu_frac'), '.0%')} |")
    if 'error' in r:
      line += f" error: {r['error'].splitlines()[0][:120]}"
    lines.append(line)
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  t_start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  # Compile once: a rerun loads its programs (compile times are then cache
  # loads; ADMRL_JAX_CACHE_DIR='' or a fresh directory for cold ones).
  from experiments import common  # pylint: disable=g-import-not-at-top
  cache_dir = common.enable_compilation_cache()
  import mujoco  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top

  if _FAMILIES.value:
    families = tuple(f.strip() for f in _FAMILIES.value.split(',') if f.strip())
  else:
    families = QUICK_FAMILIES if _QUICK.value else FULL_FAMILIES
  if _PIPELINES.value:
    pipelines = tuple(p.strip() for p in _PIPELINES.value.split(',')
                      if p.strip())
  else:
    pipelines = (envs.DEFAULT_PIPELINE,) if _QUICK.value else envs.PIPELINES
  repeats = _REPEATS.value or (2 if _QUICK.value else 5)
  native_repeats = _NATIVE_REPEATS.value or (3 if _QUICK.value else 10)

  rows = []
  for name in families:
    for pipeline in pipelines:
      print(f'[real_rollout] {name} / {pipeline} ...', flush=True)
      row = _row(name, pipeline, repeats, native_repeats)
      rows.append(row)
      print(f'[real_rollout] {json.dumps(row)}', flush=True)

  try:
    import brax  # pylint: disable=g-import-not-at-top
    brax_version = brax.__version__
  except Exception:  # pylint: disable=broad-except
    brax_version = None
  dev = jax.devices()[0]
  meta = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'jax_version': jax.__version__,
      'compilation_cache': cache_dir,
      'brax_version': brax_version,
      'mujoco_version': mujoco.__version__,
      'python_version': platform.python_version(),
      'device': f'{dev.platform}: {getattr(dev, "device_kind", str(dev))}',
      'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'n_envs': _N_ENVS.value,
      'horizon': _HORIZON.value,
      'steps_per_call': _N_ENVS.value * _HORIZON.value,
      'repeats': repeats,
      'native_repeats': native_repeats,
      'native_threads': _NATIVE_THREADS.value,
      'policy': 'uniform random actions (brax: + OU noise as in training)',
      'quick': bool(_QUICK.value),
      'families': list(families),
      'pipelines': list(pipelines),
      'default_pipeline': envs.DEFAULT_PIPELINE,
      'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
      'wall_s': None,
      'note': ('*_other_cpu_frac: share of all CPUs used by other processes '
               'during the timed calls (from /proc/stat); rows timed on a '
               'busy machine understate throughput'),
  }
  meta['wall_s'] = time.perf_counter() - t_start
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump({'meta': meta, 'rows': rows}, f, indent=2)
    f.write('\n')
  print(markdown_table(rows))
  print(f'[real_rollout] wrote {_OUT.value} in {meta["wall_s"]:.1f} s')


if __name__ == '__main__':
  app.run(main)
