r"""AdMRL driver: `python -m experiments.run --env=<family> [flags]`.

    python -m experiments.run --env=halfcheetah_highdim        # the paper's run
    python -m experiments.run --env=lq --preset=smoke --workdir=/tmp/lq
    python -m experiments.run --env=ant2d --alpha=1,2,4 --seed=0,1   # one vmapped sweep

Runs Algorithm 1 (or a baseline, --algo) for --ntasks task iterations. Every
(seed, α) pair of the --seed and --alpha lists is one member of a batch that
runs as a single jit-compiled program: vmapped lanes (--sweep=vmap, default)
or one member after another (--sweep=map, each member bitwise identical to a
run of it alone; batched kernels round differently and RL amplifies that). After every task iteration
it appends one JSON line per member to <workdir>/metrics.jsonl, writes
TensorBoard scalars under <workdir>/tb/, and saves an orbax checkpoint
(atomically) under <workdir>/checkpoints/; rerunning with the same workdir
and flags resumes from the latest checkpoint. <workdir>/config.json records
the resolved configuration; a different configuration in an existing
workdir is refused, and nothing there is touched.

Any hyperparameter: --set=slbo.trpo.max_kl=0.02 --set=task_gradient.solver=per_dimension
(dotted fields of `admrl_jax.meta.admrl.AdMRLConfig`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
from admrl_jax import envs
from experiments.common import (CheckpointError, UsageError, build_family,
                                parse_floats, parse_seeds, parse_sets,
                                physics_overrides, run_main)
from experiments.progress import Progress, format_seconds
# pylint: enable=g-import-not-at-top,wrong-import-position

_ENV = flags.DEFINE_string('env', 'halfcheetah_highdim',
                           f'Task family: {", ".join(envs.names())}.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_ALGO = flags.DEFINE_string('algo', 'admrl',
                            'admrl | mb_unif | mb_gauss | slbo.')
_ALPHA = flags.DEFINE_string(
    'alpha', None, 'Task step size α, or a comma list (a vmapped sweep); '
    'default: the paper\'s α for the family.')
_SEED = flags.DEFINE_string('seed', '0', 'Seed, or a comma list (vmapped).')
_SWEEP = flags.DEFINE_string(
    'sweep', 'vmap', 'How the (seed, α) members run inside the one compiled '
    'program: vmap (batched lanes, fastest) or map (one after another, '
    'each bitwise identical to a run of that member alone).')
_NTASKS = flags.DEFINE_integer('ntasks', None, 'Task iterations (preset).')
_PRESET = flags.DEFINE_string('preset', 'paper',
                              'smoke | quick | paper (the paper values).')
_PIPELINE = flags.DEFINE_string(
    'pipeline', None, 'Brax physics pipeline (default: generalized, the one '
    'whose observation is a Markov state).')
_HORIZON = flags.DEFINE_integer('horizon', None, 'Episode length override.')
_FRAME_SKIP = flags.DEFINE_integer(
    'frame_skip', None, 'Simulator steps per control step (Brax families; '
    'default: the Brax environment\'s own). The authors use 1.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'field=value override of the config, e.g. '
    'slbo.n_inner=5 or task_gradient.linear_solver=minres.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (default runs/<env>-<algo>-<preset>).')
_THROTTLE = flags.DEFINE_float(
    'throttle_s', 0.0, 'Seconds to sleep after each saved task iteration '
    '(lets a test or a shared machine interrupt a run at a known point).')
_X64 = flags.DEFINE_bool(
    'x64', False, 'Compute in float64 (slower). A vmapped sweep member then '
    'tracks the run of that member alone to rounding, which float32 '
    'training amplifies past any tolerance (see README).')
_STOP_AFTER = flags.DEFINE_integer(
    'stop_after', None, 'Stop (cleanly, checkpoint saved) after this many '
    'task iterations in total; rerun to continue.')


def main(argv):
  run_main(argv, run)


# ------------------------------------------------------------ settings
def resolve_settings():
  """Flags → (family, config, alphas, seeds, record); UsageError on bad input."""
  from admrl_jax.meta import admrl, presets  # pylint: disable=g-import-not-at-top

  if _ALGO.value not in admrl.ALGOS:
    raise UsageError(f'--algo: unknown algorithm {_ALGO.value!r}; valid: '
                     f'{", ".join(admrl.ALGOS)}')
  if _PRESET.value not in presets.NAMES:
    raise UsageError(f'--preset: unknown preset {_PRESET.value!r}; valid: '
                     f'{", ".join(presets.NAMES)}')
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  if _ENV.value not in envs.names():
    raise UsageError(f'--env: unknown environment {_ENV.value!r}; valid: '
                     f'{", ".join(envs.names())}')
  config, family_overrides, paper_alpha = presets.preset(_ENV.value,
                                                         _PRESET.value)
  alphas = ([paper_alpha] if _ALPHA.value is None
            else parse_floats(_ALPHA.value, 'alpha'))
  if any(not a > 0 for a in alphas):
    raise UsageError(f'--alpha: step sizes must be > 0, got {_ALPHA.value!r}')
  seeds = parse_seeds(_SEED.value)
  if _SWEEP.value not in ('vmap', 'map'):
    raise UsageError(f'--sweep: expected vmap or map, got {_SWEEP.value!r}')
  overrides = {'algo': _ALGO.value}
  if _NTASKS.value is not None:
    if _NTASKS.value < 1:
      raise UsageError(f'--ntasks must be >= 1, got {_NTASKS.value}')
    overrides['n_tasks'] = str(_NTASKS.value)
  overrides.update(parse_sets(_SET.value))
  try:
    config = presets.apply_overrides(config, overrides)
  except ValueError as e:
    raise UsageError(f'--set: {e}') from None
  horizon = (_HORIZON.value if _HORIZON.value is not None
             else family_overrides.get('horizon'))
  family = build_family(_ENV.value, _PIPELINE.value, horizon,
                        frame_skip=_FRAME_SKIP.value)
  # The resolved pipeline (not the flag), so that the run is rebuilt with the
  # same physics even if the default changes.
  record = dict(env=_ENV.value, preset=_PRESET.value,
                pipeline=getattr(family, 'pipeline', None),
                frame_skip=getattr(family, 'frame_skip', None),
                horizon=family.horizon, alphas=alphas, seeds=seeds,
                sweep=_SWEEP.value,
                config=_jsonable(dataclasses.asdict(config)))
  if _X64.value:
    record['x64'] = True  # absent (not False) keeps older workdirs valid
  return family, config, alphas, seeds, record


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  # e.g. an activation function: record its name.
  return getattr(x, '__name__', None) or repr(x)


def _differences(saved, current, prefix=''):
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: saved {a!r}, now {b!r}')
  return out


# --------------------------------------------------------------- run
def run():
  start = time.time()
  if _X64.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_enable_x64', True)  # before any array exists
  family, config, alphas, seeds, record = resolve_settings()
  workdir = _WORKDIR.value or os.path.join(
      'runs', f'{family.name}-{config.algo}-{_PRESET.value}')
  config_path = os.path.join(workdir, 'config.json')
  saved = None
  if os.path.exists(config_path):
    try:
      with open(config_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise CheckpointError(f'{config_path} is unreadable ({e}); move the '
                            'workdir aside or choose another --workdir') from None
    comparable = {k: v for k, v in saved.items() if k != 'calibration'}
    diffs = _differences(comparable, record)
    if diffs:
      raise UsageError(
          f'--workdir {workdir} holds a run of another configuration '
          f'({"; ".join(diffs[:5])}{"; …" if len(diffs) > 5 else ""}); use '
          'another --workdir or the same flags to resume')

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import checkpoints, logs  # pylint: disable=g-import-not-at-top

  def log(message):
    print(f'[{time.time() - start:7.1f}s] {message}', flush=True)

  # Calibration (Cheetah-Highdim's μ, σ) is part of the run: reuse it.
  if saved is not None and saved.get('calibration'):
    cal = saved['calibration']
    family = envs.make(family.name, horizon=family.horizon,
                       **physics_overrides(record),
                       state_mean=np.asarray(cal['state_mean'], np.float32),
                       state_std=np.asarray(cal['state_std'], np.float32))
  else:
    family = family.calibrate(jax.random.key(10_000 + seeds[0]))
  if getattr(family, 'state_mean', None) is not None:
    record['calibration'] = dict(
        state_mean=[float(v) for v in family.state_mean],
        state_std=[float(v) for v in family.state_std])
  log(f'{family.name}: k={family.task_dim}, algo {config.algo}, '
      f'{len(seeds)} seed(s) x {len(alphas)} alpha(s), '
      f'{config.n_tasks} tasks, workdir {workdir}')

  members = [(seed, alpha) for seed in seeds for alpha in alphas]
  progress = Progress(config, len(members), record['sweep'], log)
  algorithm = admrl.AdMRL(family, config, on_phase=progress)
  state = jax.vmap(algorithm.init)(
      jax.numpy.stack([jax.random.key(seed) for seed, _ in members]),
      jax.numpy.asarray([alpha for _, alpha in members]))

  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  if step is not None:
    try:
      state = manager.restore(step, state)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'the checkpoint {manager.path(step)} is corrupt or unreadable '
          f'({type(e).__name__}: {str(e)[:200]}); it was left untouched — '
          'move it aside to resume from an earlier one') from None
    log(f'resumed from task iteration {step}')
  else:
    os.makedirs(workdir, exist_ok=True)
    tmp = config_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, config_path)

  done = int(np.asarray(state.iteration)[0])
  metrics_log = logs.MetricsLog(workdir, members, keep_below=done)
  if record['sweep'] == 'vmap':
    iteration = jax.jit(jax.vmap(algorithm.task_iteration, in_axes=(0, None)))
  else:
    # Batched kernels round differently from unbatched ones (and by batch
    # size), and RL amplifies rounding; `map` runs each member's unbatched
    # program in turn, so a sweep member is bitwise a single run.
    iteration = jax.jit(lambda s, first: jax.lax.map(
        lambda member: algorithm.task_iteration(member, first), s))
  target = config.n_tasks
  if _STOP_AFTER.value is not None:
    target = min(target, _STOP_AFTER.value)
  progress.start(done, target)
  compiled = False
  while done < target:
    t0 = time.time()
    if not compiled:
      log(f'task {done + 1}/{config.n_tasks}: compiling the task iteration, '
          'then running it (a line per phase follows)')
      compiled = True
    state, metrics = iteration(state, done == 0)
    jax.block_until_ready(state)
    elapsed = time.time() - t0
    metrics_log.write(metrics, wall_time=time.time() - start)
    manager.save(done + 1, state)
    done += 1
    if _THROTTLE.value > 0:
      time.sleep(_THROTTLE.value)
    summary = metrics_log.last_summary
    eta = progress.eta_seconds()
    log(f'task {done}/{config.n_tasks} done in {elapsed:.1f}s, checkpoint '
        f'saved: {summary}'
        + (f', ETA {format_seconds(eta)}'
           if done < target and eta is not None else ''))
  metrics_log.close()
  log(f'finished {done}/{config.n_tasks} task iterations; metrics in '
      f'{os.path.join(workdir, "metrics.jsonl")}')


if __name__ == '__main__':
  app.run(main)
