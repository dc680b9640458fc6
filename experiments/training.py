"""Training runs of the driver as functions: `resolve` a run's settings,
`train` (or resume) it in a workdir. Flag-free, so that `experiments.run`
and `experiments.study` share them."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import jax
from jax.experimental import multihost_utils
import numpy as np

from admrl_jax import checkpoints
from admrl_jax import config_io
from admrl_jax import envs
from admrl_jax import fileio
from admrl_jax import sweep as sweep_lib
from admrl_jax.meta import admrl
from admrl_jax.meta import task_gradient as tg
from experiments import logs
from experiments import pieces as pieces_lib
from experiments import presets
from experiments import provenance
from experiments.common import (CheckpointError, UsageError, build_family,
                                family_from_record, parse_family_sets, wait)
from experiments.progress import Progress, plan


def resolve(env, algo='admrl', preset='paper', alphas=None, seeds=(0,),
            sweep='vmap', ntasks=None, sets=None, pipeline=None, horizon=None,
            frame_skip=None, x64=False, family_modules=None,
            family_sets=(), config_file=None):
  """A run's settings → (family, config, alphas, seeds, record).

  The arguments are the driver's flags, parsed (alphas None:
  `presets.default_alpha` of the resolved config; sets: {dotted field:
  text}; family_modules: the modules already imported that registered
  `env`; family_sets: --family_set field=value items; config_file:
  --config, a JSON file of the config's fields — a run's config.json, whose
  'config' section is used, or the section alone — applied over the preset
  before --ntasks and --set; algo None keeps the file's, or the preset's,
  algorithm). `record` is what config.json holds. Raises UsageError
  naming the flag on bad input.

  algo 'maml' or 'pearl' (or a --config file of such a run) resolves a
  meta-RL baseline's run instead (`experiments.baselines.resolve`): config
  is then a `baselines.Baseline`, alphas [None].
  """
  # Not at the top: experiments.baselines imports this module.
  from experiments import baselines  # pylint: disable=g-import-not-at-top

  if algo is None and config_file is not None:
    algo = baselines.algo_of_file(config_file)  # a baseline run's record
  if algo in baselines.ALGOS:
    return baselines.resolve(
        env=env, algo=algo, preset=preset, alphas=alphas, seeds=seeds,
        sweep=sweep, ntasks=ntasks, sets=sets, pipeline=pipeline,
        horizon=horizon, frame_skip=frame_skip, x64=x64,
        family_modules=family_modules, family_sets=family_sets,
        config_file=config_file)
  if algo is not None and algo not in admrl.ALGOS:
    raise UsageError(f'--algo: unknown algorithm {algo!r}; valid: '
                     f'{", ".join(admrl.ALGOS + baselines.ALGOS)}')
  check_preset_and_env(preset, env)
  fields = parse_family_sets(env, family_sets)
  config, family_overrides, _ = presets.preset(env, preset)
  if config_file is not None:
    config = config_from_file(config_file, config)
  if alphas is not None and (not alphas or any(not a > 0 for a in alphas)):
    raise UsageError(f'--alpha: step sizes must be > 0, got {alphas}')
  seeds = list(seeds)
  check_sweep(sweep)
  overrides = {} if algo is None else {'algo': algo}
  if ntasks is not None:
    overrides['n_tasks'] = str(check_ntasks(ntasks))
  overrides.update(sets or {})
  config = presets.apply_sets(config, overrides)
  alphas = ([presets.default_alpha(env, config)] if alphas is None
            else list(alphas))
  family = build_family(env, pipeline, preset_horizon(horizon,
                                                      family_overrides),
                        frame_skip=frame_skip, fields=fields)
  record = run_record(env, preset, family, alphas, seeds, sweep, config, x64,
                      family_modules, fields)
  return family, config, alphas, seeds, record


# The steps of `resolve` that `baselines.resolve` shares.
def check_preset_and_env(preset, env) -> None:
  """UsageError naming --preset or --env when either is unknown."""
  if preset not in presets.NAMES:
    raise UsageError(f'--preset: unknown preset {preset!r}; valid: '
                     f'{", ".join(presets.NAMES)}')
  if env not in envs.names():
    raise UsageError(f'--env: unknown environment {env!r}; valid: '
                     f'{", ".join(envs.names())} (a family of another '
                     'module: --family_module)')


def check_sweep(sweep) -> None:
  """UsageError unless --sweep is vmap or map."""
  if sweep not in ('vmap', 'map'):
    raise UsageError(f'--sweep: expected vmap or map, got {sweep!r}')


def check_ntasks(ntasks) -> int:
  """--ntasks, or UsageError when it is below 1."""
  if ntasks < 1:
    raise UsageError(f'--ntasks must be >= 1, got {ntasks}')
  return ntasks


def preset_horizon(horizon, family_overrides):
  """--horizon, else the preset's (None: the family's own)."""
  return (horizon if horizon is not None
          else family_overrides.get('horizon'))


def run_record(env, preset, family, alphas, seeds, sweep, config, x64,
               family_modules, fields, **head) -> dict:
  """What config.json holds: the flags, `head` (a baseline's algo and
  n_iterations) after the preset, and the resolved pipeline, frame skip
  and horizon (not the flags: the run is rebuilt with the same physics
  even if a default changes); x64, family_module and family_set only when
  given (absent, not False or empty, keeps older workdirs valid)."""
  record = dict(env=env, preset=preset, **head,
                pipeline=getattr(family, 'pipeline', None),
                frame_skip=getattr(family, 'frame_skip', None),
                horizon=family.horizon, alphas=alphas, seeds=seeds,
                sweep=sweep,
                config=fileio.to_jsonable(dataclasses.asdict(config)))
  if x64:
    record['x64'] = True
  if family_modules:
    record['family_module'] = list(family_modules)
  if fields:
    record['family_set'] = fields
  return record


def _differences(saved, current, prefix=''):
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: saved {a!r}, now {b!r}')
  return out


# Entries of config.json that a resume does not compare: the calibration
# (measured by the run itself) and how many checkpoints are kept (a resume
# may change it).
_NOT_COMPARED = ('calibration', 'keep_checkpoints')

# Checkpoints kept by default: the latest three. A checkpoint holds the
# whole state, the dataset included (up to ~350 MB per member at paper
# size), so keeping every task iteration's is a choice (--keep_checkpoints).
DEFAULT_KEEP_CHECKPOINTS = 3


def parse_keep_checkpoints(value, what='--keep_checkpoints'):
  """--keep_checkpoints → an int >= 1 or 'all' (None stays None).

  Args:
    value: the flag's text ('3', 'all'), or a value recorded in config.json.
    what: where it came from, for the error message.
  Raises:
    UsageError: anything else.
  """
  if value is None:
    return None
  text = str(value).strip().lower()
  if text == 'all':
    return 'all'
  try:
    keep = int(text)
  except ValueError:
    keep = 0
  if keep < 1:
    raise UsageError(f'{what}: expected a number of checkpoints >= 1 or '
                     f'all, got {value!r}')
  return keep


def check_workdir(workdir, record):
  """The saved record of `workdir` (None for a new run); UsageError if it
  describes another run, CheckpointError if it is unreadable."""
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f'--workdir {workdir} exists and is not a directory')
  if not os.path.exists(config_path):
    return None
  try:
    with open(config_path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{config_path} is unreadable ({e}); move the '
                          'workdir aside or choose another --workdir') from None
  comparable = {k: v for k, v in saved.items() if k not in _NOT_COMPARED}
  comparable = _current_layout(comparable, config_path)
  diffs = _differences(comparable, {k: v for k, v in record.items()
                                    if k not in _NOT_COMPARED})
  if diffs:
    raise UsageError(
        f'--workdir {workdir} holds a run of another configuration '
        f'({"; ".join(diffs[:5])}{"; …" if len(diffs) > 5 else ""}); use '
        'another --workdir or the same flags to resume')
  return saved


def _current_layout(saved, config_path):
  """`saved` with its task-gradient section in the current layout: a run
  recorded before solvers were values holds the flat solver fields
  (linear_solver='minres', iters, tol, damping, …), which
  `task_gradient.upgrade_record` reads into the solver they meant, so that
  such a run resumes. CheckpointError on a section it cannot read."""
  config = saved.get('config')
  if not isinstance(config, dict) or 'task_gradient' not in config:
    return saved
  try:
    section = tg.upgrade_record(config['task_gradient'])
  except ValueError as e:
    raise CheckpointError(f'{config_path}: {e}') from None
  return dict(saved, config=dict(config,
                                 task_gradient=fileio.to_jsonable(section)))


def member_sharding(shard, n_members, sweep='vmap'):
  """--shard → (sharding, note): `admrl_jax.sweep.member_sharding`, a
  `NamedSharding` that splits the member axis of a batched state over all
  devices — of every process in a multi-process run (--distributed) —
  (None: unsharded) and, when several devices are left unused, a line
  saying why (else None).

  Args:
    shard: 'on', 'off' or 'auto' (on when there is more than one device, the
      sweep is vmap and `n_members` divides evenly over the devices; else
      off, with a note saying why when there are several devices).
    n_members: seeds × α of the run.
    sweep: 'vmap' or 'map' (map runs members one after another: not
      sharded).
  Raises:
    UsageError: an unknown value, or --shard=on with --sweep=map or with a
      member count that the device count does not divide (both named); in
      a multi-process run, whatever leaves the members unsharded (each
      process holds only its devices' members).
  """
  if shard not in ('auto', 'on', 'off'):
    raise UsageError(f'--shard: expected auto, on or off, got {shard!r}')
  processes = jax.process_count()
  if processes > 1:
    if shard == 'off':
      raise UsageError('--shard=off: a run over several processes '
                       '(--distributed) shards its members over the devices '
                       'of all of them')
    shard = 'on'  # the only way to run one sweep over several processes
  if shard == 'off':
    return None, None
  n_devices = jax.device_count()
  what = ('--distributed' if processes > 1 else '--shard=on')
  if sweep != 'vmap':
    if shard == 'on':
      raise UsageError(f'{what} needs --sweep=vmap (map runs the members '
                       'one after another)')
    return None, None
  try:
    sharding = sweep_lib.member_sharding(n_members)
  except ValueError as e:
    if shard == 'on':
      raise UsageError(
          f'{what}: {e}' + (f' ({processes} processes)' if processes > 1
                            else '') + f'; use a multiple of {n_devices} '
          'members' + ('' if processes > 1 else ' or --shard=off')) from None
    return None, f'not sharded: {e} (--shard=off to silence)'
  if shard == 'auto' and n_devices == 1:
    return None, None
  return sharding, None


def is_primary() -> bool:
  """Whether this process writes the run's files (config.json,
  provenance.json, metrics.jsonl, tb/): the first process of a
  multi-process run, or the only one. Checkpoints are written by every
  process together (orbax)."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """Waits for every process of a multi-process run to get here (nothing
  to wait for in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def resolve_keep(workdir, saved, record, keep_checkpoints):
  """(recorded, keep): the workdir's recorded --keep_checkpoints (or the
  default) and the one in force from now on, which `record` gets.
  UsageError on a bad value."""
  recorded = parse_keep_checkpoints(
      (saved or {}).get('keep_checkpoints', DEFAULT_KEEP_CHECKPOINTS),
      f'{os.path.join(workdir, "config.json")} keep_checkpoints')
  keep = (recorded if keep_checkpoints is None
          else parse_keep_checkpoints(keep_checkpoints))
  record['keep_checkpoints'] = keep
  return recorded, keep


def calibrated(family, saved, record, seeds):
  """The run's family with its calibration (Cheetah-Highdim's μ, σ), which
  is part of the run: the saved one on a resume, else measured now;
  recorded in `record`."""
  if saved is not None and saved.get('calibration'):
    family = family_from_record(dict(record,
                                     calibration=saved['calibration']))
  else:
    family = family.calibrate(jax.random.key(10_000 + seeds[0]))
  if getattr(family, 'state_mean', None) is not None:
    record['calibration'] = dict(
        state_mean=[float(v) for v in family.state_mean],
        state_std=[float(v) for v in family.state_std])
  return family


def latest_saved_step(workdir) -> int:
  """The latest complete checkpoint's step from the directory names (orbax
  writes into a temporary name and renames), 0 for none."""
  path = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in (os.listdir(path) if os.path.isdir(path) else [])
           if n.isdigit()]
  return max(steps, default=0)


def train(family, config, alphas, seeds, record, workdir, log,
          stop_after=None, throttle_s=0.0, phase_progress=True,
          sharding=None, wandb_project=None, keep_checkpoints=None,
          fallback_to_intact=False, pieces=None, piece_units=None):
  """Runs (or resumes) the task iterations of every (seed, α) member in
  `workdir`, one piece each (`pieces.run_each`: metrics, a checkpoint and
  a line as each finishes); returns the final batched `AdMRLState`.

  Args:
    family, config, alphas, seeds, record: from `resolve`.
    workdir: the run directory (config.json, provenance.json,
      metrics.jsonl, tb/, checkpoints/); an existing one must hold the same
      record (other code or libraries than provenance.json's: a warning).
    log: a function of one message line.
    stop_after, throttle_s: stop after this many task iterations in
      total; sleep this many seconds after each one saved (a test hook).
    phase_progress: a line after every phase (`PhasedIteration`: three
      programs driven from the host, each kept in JAX's persistent
      compilation cache). False: one program per task iteration
      (`WholeIteration`) and one line per task iteration.
    sharding: from `member_sharding`: the members' state and the vmapped
      task iteration are split over the devices along the member axis.
    wandb_project: also log to this Weights & Biases project.
    keep_checkpoints: how many of the latest checkpoints are kept, an int
      >= 1 or 'all', recorded in config.json. None: the recorded value,
      else DEFAULT_KEEP_CHECKPOINTS (3).
    fallback_to_intact: when the latest checkpoint is corrupt, resume from
      the latest intact one; the corrupt ones are moved to
      <workdir>/checkpoints.corrupt/ (a warning each) and run again.
    pieces, piece_units: the `experiments.pieces.Pieces` (or `Labelled`)
      that reports each task iteration with the work `piece_units(i)` (a
      study's, whose `StopRun` stops between two checkpoints); None: the
      run's own (scope 'run'), its work in VirtualTraining iterations.
  Raises:
    UsageError: the workdir holds another run, or a bad keep_checkpoints.
    CheckpointError: an unreadable record or checkpoint (left in place);
      with fallback_to_intact, no checkpoint that restores intact.

  Several processes (`jax.distributed`) call it alike, `sharding` over all
  their devices; the primary (`is_primary`) writes the files, all the
  checkpoints. A baseline's run (maml, pearl) goes to `baselines.train`.
  """
  # Not at the top: experiments.baselines imports this module.
  from experiments import baselines  # pylint: disable=g-import-not-at-top
  if baselines.is_baseline(config):
    return baselines.train(
        family, config, seeds, record, workdir, log, stop_after=stop_after,
        throttle_s=throttle_s, sharding=sharding,
        wandb_project=wandb_project, keep_checkpoints=keep_checkpoints,
        fallback_to_intact=fallback_to_intact, pieces=pieces,
        piece_units=piece_units)
  members = [(seed, alpha) for seed in seeds for alpha in alphas]
  saved, recorded, keep, target = start_run(
      workdir, record, keep_checkpoints, config.n_tasks, stop_after,
      lambda first, last: plan(family, config, len(members), first, last),
      log)
  family = calibrated(family, saved, record, seeds)
  log(f'{family.name}: k={family.task_dim}, algo {config.algo}, {len(seeds)} '
      f'seed(s) x {len(alphas)} alpha(s), {config.n_tasks} tasks, workdir '
      f'{workdir}')
  log_sharding(sharding, len(members), log)
  progress = Progress(config, len(members), record['sweep'], log)
  algorithm = admrl.AdMRL(family, config)
  # Placed as the run is (a resume restores into this placement).
  manager, state = open_run(workdir, sweep_lib.init_members(
      algorithm.init, members, sharding), saved, record, recorded, keep,
                            fallback_to_intact, log)
  done = int(sweep_lib.host_values(state.iteration)[0])
  metrics_log = metrics_log_of(workdir, members, keep_below=done,
                               wandb_project=wandb_project, config=record)
  runner = (PhasedIteration if phase_progress else WholeIteration)(
      algorithm, record['sweep'], sharding, progress, len(members))
  piece_units = piece_units or progress.task_units
  progress.start(done, target)
  return run_pieces(
      runner, state, done, target, manager, metrics_log,
      _write_metrics(metrics_log), log, throttle_s, n=config.n_tasks,
      pieces=pieces or run_progress(piece_units, config.n_tasks, done, log),
      piece_units=piece_units,
      note=' (a line per phase follows)' if phase_progress else '')


def metrics_log_of(workdir, members, **kwargs):
  """`logs.MetricsLog(workdir, members, **kwargs)` on the primary process
  (`is_primary`); on the others of a multi-process run, one that writes
  nothing (`writes=False`), so that every row is written once."""
  return logs.MetricsLog(workdir, members, writes=is_primary(), **kwargs)


def run_pieces(runner, state, done, target, manager, metrics_log, write,
               log, throttle_s, n, pieces, piece_units, name='task',
               program='task iteration', note=''):
  """Iterations done + 1 … target of `runner` as the pieces of
  `pieces.run_each`, each followed by its metrics (`write(metrics,
  wall_time)` into `metrics_log`, returning the summary the line shows),
  its checkpoint (`manager.save`, step = iterations done) and its line;
  the first compiled before it. Shared with `baselines.train`.

  `runner` has `compile(state, first)` and `runner(state, done) ->
  (state, metrics)`; `name`, `n`, `program` and `note` word the lines
  ('task 2/3: compiling the task iteration'). `metrics_log` is closed
  however the loop ends. Returns the final state.
  """
  holder = dict(state=state)
  start = time.time()

  def compile_first(i):
    log(f'{name} {i + 1}/{n}: compiling the {program}')
    t0 = time.time()
    with CacheCount() as cache:
      runner.compile(holder['state'], i == 0)
    log(f'compiled in {time.time() - t0:.1f}s{cache.describe()}; running '
        f'{name} {i + 1}{note}')

  def compute(i):
    holder['state'], metrics = runner(holder['state'], i)
    return metrics

  def save(i, metrics, seconds):
    summary = write(metrics, time.time() - start)
    manager.save(i + 1, holder['state'])
    return (f'{name} {i + 1}/{n} done in {seconds:.1f}s, checkpoint saved: '
            f'{summary}')

  try:
    pieces_lib.run_each(range(done, target), compute, save, pieces,
                        units=piece_units, before_first=compile_first,
                        throttle_s=throttle_s)
  finally:
    metrics_log.close()
  log(f'finished {max(done, target)}/{n} {program}s; metrics in '
      f'{metrics_log.path}')
  return holder['state']


def run_progress(piece_units, n, done, log):
  """A run's own `Pieces` (scope 'run') over its `n` iterations, the
  first `done` of them finished before."""
  pieces = pieces_lib.Pieces(sum(piece_units(i) for i in range(n)), log,
                             scope='run')
  pieces.skip(sum(piece_units(i) for i in range(done)))
  return pieces


def _write_metrics(metrics_log):
  def write(metrics, wall_time):
    # Every process gathers (a collective); the primary one writes.
    metrics_log.write(sweep_lib.host_values(metrics), wall_time=wall_time)
    return metrics_log.last_summary
  return write


# The steps of `train` that `baselines.train` shares.
def start_run(workdir, record, keep_checkpoints, n_iterations, stop_after,
              plan_line, log):
  """The first steps of a run, before anything is written or compiled
  (calibration included): another configuration in `workdir` is refused,
  the line `plan_line(first, target)` says what is to be run and an
  estimate of how long it takes, then the libraries and settings are
  recorded (new run) or compared (resume).

  Returns:
    (saved, recorded, keep, target): the saved record (None for a new
    run), the recorded and the new --keep_checkpoints (`resolve_keep`),
    and the iteration to stop after (`n_iterations`, or `stop_after` if
    fewer).
  """
  saved = check_workdir(workdir, record)
  recorded, keep = resolve_keep(workdir, saved, record, keep_checkpoints)
  target = (n_iterations if stop_after is None
            else min(n_iterations, stop_after))
  first = min(latest_saved_step(workdir), target)
  log(plan_line(first, target))
  # Every process has read the workdir before the primary one writes.
  sync_processes('admrl_jax: workdir checked')
  if is_primary():
    provenance.record_or_check(workdir, provenance.collect(), log)
  return saved, recorded, keep, target


def log_sharding(sharding, n_members, log) -> None:
  """A line saying how the members are sharded (none when unsharded)."""
  if sharding is not None:
    devices = sharding.mesh.devices.size
    processes = len({d.process_index for d in sharding.mesh.devices.flat})
    log(f'{n_members} member(s) sharded over {devices} '
        f'{sharding.mesh.devices.flat[0].platform} device(s)'
        + (f' of {processes} processes' if processes > 1 else '')
        + f', {n_members // devices} per device')


def open_run(workdir, like, saved, record, recorded, keep,
             fallback_to_intact, log, what='task iteration'):
  """(manager, state): the run's checkpoints (the latest `keep` kept) and
  the state to continue from — the latest checkpoint's on a resume
  (`resume_state`, structured like `like`; a changed --keep_checkpoints is
  recorded in config.json, with a line), else `like`, once config.json is
  written."""
  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'),
                                max_to_keep=None if keep == 'all' else keep)
  if manager.latest_step() is None:
    if is_primary():
      write_record(workdir, record)
    return manager, like
  state = resume_state(manager, like, fallback_to_intact, log, what)
  if keep != recorded and is_primary():
    write_record(workdir, dict(saved or record, keep_checkpoints=keep))
    log(f'keeping {"every checkpoint" if keep == "all" else keep} from '
        f'now on (was {recorded}; recorded in config.json)')
  return manager, state


class WholeIteration:
  """A task iteration as one compiled program (`AdMRL.task_iteration`):
  the fastest, and a line per task iteration only."""

  def __init__(self, algorithm, sweep, sharding, progress, n_members):
    del progress, n_members
    self._program = sweep_lib.batched(algorithm.task_iteration, sweep,
                                      sharding)
    self._compiled = None

  def compile(self, state, first):
    # Ahead of time, so that the compile (or the persistent cache's load)
    # is timed apart from the run.
    self._compiled = self._program.lower(state, first).compile()

  def __call__(self, state, done):
    # `wait` polls, so Ctrl-C is not held up by a long compiled call.
    return wait(self._compiled(state, done == 0))


class PhasedIteration:
  """A task iteration as three compiled programs driven from the host
  (`AdMRL.begin`, `AdMRL.phase` for every phase, `AdMRL.end`), so that a
  progress line follows each phase while every program stays free of host
  callbacks and JAX's persistent compilation cache serves it to the next
  run or resume. The same computation as `WholeIteration`; a device sync
  per phase."""

  def __init__(self, algorithm, sweep, sharding, progress, n_members):
    self._algorithm = algorithm
    self._progress = progress
    self._n_members = n_members
    self._begin = sweep_lib.batched(algorithm.begin, sweep, sharding)
    self._phase = sweep_lib.batched(algorithm.phase, sweep, sharding)
    self._end = sweep_lib.batched(algorithm.end, sweep, sharding, n_args=0)
    self._compiled = None

  def compile(self, state, first):
    carry = jax.eval_shape(self._begin, state, first)
    with warnings.catch_warnings():
      # `end` donates the whole carry for its dataset; θ̂'s parameters and
      # the keys have no output to reuse their buffers, which JAX warns of.
      warnings.filterwarnings('ignore', 'Some donated buffers were not usable')
      self._compiled = (self._begin.lower(state, first).compile(),
                        self._phase.lower(carry, np.int32(0)).compile(),
                        self._end.lower(carry).compile())

  def __call__(self, state, done):
    begin, phase, end = self._compiled
    first = done == 0
    indices = self._algorithm.phase_indices(first)
    n_stages = len(indices) - (0 if first else 1)
    carry = begin(state, first)
    for index in indices:
      carry, report = wait(phase(carry, np.int32(index)))
      values = sweep_lib.host_values((report.virtual_return,
                                      report.model_loss))
      for lane in range(self._n_members):
        self._progress(admrl.PhaseEvent(
            task_index=done, phase='zero_shot' if index == 0 else 'stage',
            stage=index, n_stages=n_stages, first=first,
            virtual_return=float(values[0][lane]),
            model_loss=float(values[1][lane]), gap=float('nan')))
    state, metrics = wait(end(carry))
    gaps = sweep_lib.host_values(metrics.gap)
    for lane in range(self._n_members):
      self._progress(admrl.PhaseEvent(
          task_index=done, phase='task_update', stage=0, n_stages=n_stages,
          first=first, virtual_return=float('nan'), model_loss=float('nan'),
          gap=float(gaps[lane])))
    return state, metrics


class CacheCount:
  """Counts, while entered, the programs JAX compiled and those its
  persistent compilation cache served (`jax.monitoring` events)."""

  _active = []

  def __enter__(self):
    if not CacheCount._active:
      jax.monitoring.register_event_listener(CacheCount._listen)
    self.requests = self.hits = 0
    CacheCount._active.append(self)
    return self

  def __exit__(self, *exc):
    CacheCount._active.remove(self)
    if not CacheCount._active:
      jax.monitoring.unregister_event_listener(CacheCount._listen)

  @staticmethod
  def _listen(event, **kwargs):
    del kwargs
    for count in CacheCount._active:
      if event == '/jax/compilation_cache/compile_requests_use_cache':
        count.requests += 1
      elif event == '/jax/compilation_cache/cache_hits':
        count.hits += 1

  def describe(self) -> str:
    """'' without the cache, else ' (2 of 3 programs from the persistent
    compilation cache)'."""
    if not self.requests:
      return ''
    return (f' ({self.hits} of {self.requests} program'
            f'{"s" if self.requests > 1 else ""} from the persistent '
            'compilation cache)')


def write_record(workdir, record) -> None:
  """<workdir>/config.json, written atomically."""
  fileio.write_json(os.path.join(workdir, 'config.json'), record, indent=2)


def resume_state(manager, like, fallback_to_intact, log,
                 what='task iteration'):
  """The state of the latest checkpoint of `manager` (structured like
  `like`), with a line saying which; with `fallback_to_intact`, of the
  latest that restores intact, the corrupt later ones moved aside.

  Raises:
    CheckpointError: the latest checkpoint is corrupt (one line naming it,
      and the ways out; nothing is moved), or with `fallback_to_intact`
      none restores intact.
  """
  if fallback_to_intact:
    step, state, corrupt = manager.restore_intact(like)
    for error in corrupt:
      aside = manager.set_aside(error.step)
      log(f'warning: {error}; moved to {aside}, resuming from an earlier '
          'checkpoint (--fallback_to_intact)')
  else:
    step = manager.latest_step()
    try:
      state = manager.restore(step, like)
    except checkpoints.IncompatibleCheckpoint as e:
      raise CheckpointError(
          f'{e}; left untouched: resume it with the version that wrote it '
          '(its commit is in provenance.json) or start a new --workdir'
      ) from None
    except checkpoints.CorruptCheckpoint as e:
      raise CheckpointError(
          f'{e}; left untouched. --fallback_to_intact resumes from the '
          'latest intact checkpoint ('
          f'{checkpoints.describe_steps(manager.all_steps())}) and moves the '
          'corrupt ones aside; if another version of admrl_jax wrote it (a '
          'state of another layout), rerun with that version (see '
          'provenance.json)') from None
  digests = manager.digests(step)
  if digests is None:
    note = (' (saved by an earlier version without the digests of its '
            'leaves: not verified)')
  elif not any(isinstance(entry, dict) and entry.get('sha256')
               for entry in digests.values()):
    note = (' (saved by several processes, which record no digests of '
            'arrays spread over them: not verified)')
  else:
    note = ''
  log(f'resumed from {what} {step}{note}')
  return state


def config_from_file(path, like):
  """--config: the config of a JSON file over `like`; UsageError naming the
  file and the problem."""
  try:
    with open(path) as f:
      values = json.load(f)
  except OSError as e:
    raise UsageError(f'--config: cannot read {path} ({e.strerror})') from None
  except ValueError as e:
    raise UsageError(f'--config: {path} is not JSON ({e})') from None
  if isinstance(values, dict) and isinstance(values.get('config'), dict):
    values = values['config']  # a run's config.json
  try:
    return config_io.config_from_dict(values, like, strict=True)
  except (ValueError, TypeError) as e:
    raise UsageError(f'--config {path}: {e}') from None
