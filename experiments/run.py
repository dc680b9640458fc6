r"""AdMRL driver: `python -m experiments.run --env=<family> [flags]`.

    python -m experiments.run --env=halfcheetah_highdim        # the paper's run
    python -m experiments.run --env=lq --preset=smoke --workdir=/tmp/lq
    python -m experiments.run --env=ant2d --alpha=1,2,4 --seed=0,1   # one vmapped sweep

Runs Algorithm 1 (or a baseline, --algo) for --ntasks task iterations, or
the meta-RL baselines MAML-TRPO and PEARL (--algo=maml|pearl,
experiments/baselines.py) for --ntasks iterations of their own. Every
(seed, α) pair of the --seed and --alpha lists is one member of a batch that
runs as a single jit-compiled program: vmapped lanes (--sweep=vmap, default)
or one member after another (--sweep=map, each member bitwise identical to a
run of it alone; batched kernels round differently and RL amplifies that). After every task iteration
it appends one JSON line per member to <workdir>/metrics.jsonl, writes
TensorBoard scalars under <workdir>/tb/, and saves an orbax checkpoint
(atomically, with the SHA-256 digests of its leaves) under
<workdir>/checkpoints/, keeping the latest --keep_checkpoints (3, or all);
rerunning with the same workdir and flags resumes from the latest
checkpoint. A corrupt one (it does not read, or does not match its digests)
is refused in one line (exit status 1) and left alone; with
--fallback_to_intact the run resumes from the latest intact one instead.
<workdir>/config.json records the resolved configuration; a different
configuration in an existing workdir is refused, and nothing there is
touched. <workdir>/provenance.json records the library versions,
jax_threefry_partitionable, x64, the device and the code's git commit; a
resume with other values warns (its continuation may not be bitwise that of
an uninterrupted run) but is not refused.

One seed and one α is still a batch of one: with --sweep=vmap its program
is the vmapped one, which rounds differently from the library's unbatched
`admrl.run` (measured on lq smoke: 26 of 74 state leaves bitwise equal
after one task iteration, differences up to 0.2 after two); --sweep=map is
closer (rounding differences of ~4e-6) but not bitwise `admrl.run` either.

Any hyperparameter: --set=slbo.trpo.max_kl=0.02 --set=task_gradient.solver=per_dimension
(dotted fields of `admrl_jax.meta.admrl.AdMRLConfig`).

Compiled programs are kept in JAX's persistent compilation cache
(--compilation_cache, default $ADMRL_JAX_CACHE_DIR or
~/.cache/admrl_jax/jax_cache; '' turns it off), the task iteration's
included: with the per-phase progress lines (the default) it runs as
three programs driven from the host (start, a phase, end), with
--nophase_progress as one. With
several devices the members are sharded over them along the member axis
(--shard=auto|on|off). --distributed runs one sweep over several processes
(one per host, or several on one machine), the members sharded over the
devices of all of them: every process runs this command with the same
flags (and --process_id its own), the first one writes config.json,
provenance.json, metrics.jsonl and tb/, all of them write the checkpoints
together (a workdir on a filesystem every host shares). Two processes on
this machine:

    python -m experiments.run --env=lq --preset=smoke --seed=0,1 --alpha=1,2 \
        --workdir=/tmp/lq2 --distributed --coordinator_address=127.0.0.1:12345 \
        --num_processes=2 --process_id=0 &      # and --process_id=1

Under SLURM (`srun`: one task per CPU host, or per GPU) or Open MPI,
--distributed alone finds the coordinator, the process count and the
process's id (docs/usage.md).
"""
from __future__ import annotations

import os
import time

from absl import app
from absl import flags

from experiments import common
from experiments import hooks

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from admrl_jax import envs
from experiments import baselines
from experiments.common import (UsageError, parse_floats, parse_seeds,
                                parse_sets, run_main)
from experiments.training import (is_primary, member_sharding,
                                  parse_keep_checkpoints, resolve, train)
# pylint: enable=g-import-not-at-top,wrong-import-position

_ENV = flags.DEFINE_string('env', 'halfcheetah_highdim',
                           f'Task family: {", ".join(envs.names())}.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_ALGO = flags.DEFINE_string(
    'algo', 'admrl', 'admrl | mb_unif | mb_gauss | mb_vertices | mb_cem | '
    'slbo, or a meta-RL baseline: maml (MAML-TRPO) | pearl (PEARL).')
_ALPHA = flags.DEFINE_string(
    'alpha', None, 'Task step size α, or a comma list (a vmapped sweep); '
    'default: 0.5 under the presets\' normalised step, the paper\'s α for '
    'the family under --set=step_rule=paper (which assumes the per-sample '
    'sums of --set=task_gradient.preset=paper).')
_SEED = flags.DEFINE_string('seed', '0', 'Seed, or a comma list (vmapped).')
_SWEEP = flags.DEFINE_string(
    'sweep', 'vmap', 'How the (seed, α) members run inside the one compiled '
    'program: vmap (batched lanes, fastest) or map (one after another, '
    'each bitwise identical to a run of that member alone).')
_NTASKS = flags.DEFINE_integer(
    'ntasks', None, 'Task iterations (default: the preset\'s); for maml and '
    'pearl the meta-iterations / training iterations.')
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
_CONFIG = flags.DEFINE_string(
    'config', None, 'A JSON file of the config\'s fields (a run\'s '
    'config.json, or its "config" section alone, edited or not) applied '
    'over --preset; --algo (when given), --ntasks and --set apply on top.')
_FAMILY_MODULE = flags.DEFINE_string(
    'family_module', None, 'Comma list of modules to import first, e.g. '
    'my_pkg.tasks, which envs.register()s the --env family; recorded in '
    'config.json (evaluate imports them too).')
_FAMILY_SET = flags.DEFINE_multi_string(
    'family_set', [], 'field=value: a field of the family, parsed by its '
    'type, e.g. q_weight=5 on lq; recorded in config.json.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (default runs/<env>-<algo>-<preset>).')
_X64 = flags.DEFINE_bool(
    'x64', False, 'Compute in float64 (slower). A vmapped sweep member then '
    'tracks the run of that member alone to rounding, which float32 '
    'training amplifies past any tolerance (see README).')
_STOP_AFTER = flags.DEFINE_integer(
    'stop_after', None, 'Stop (cleanly, checkpoint saved) after this many '
    'task iterations in total; rerun to continue.')
_KEEP_CHECKPOINTS = flags.DEFINE_string(
    'keep_checkpoints', None, 'How many of the latest checkpoints to keep '
    '(a checkpoint is saved after every task iteration; older ones are '
    'deleted as new ones are saved): N >= 1, or all. Default: the value '
    'recorded in the workdir\'s config.json, else 3 (a checkpoint holds '
    'the dataset, up to ~350 MB per member at paper size). Recorded in '
    'config.json, so that a resume keeps as many; a resume with another '
    'value records it from then on.')
_FALLBACK_TO_INTACT = flags.DEFINE_bool(
    'fallback_to_intact', False, 'When the latest checkpoint is corrupt (it '
    'does not read, or its leaves differ from the SHA-256 digests saved '
    'with it), resume from the latest one that restores intact instead of '
    'refusing (exit 1): the corrupt later ones are moved to '
    '<workdir>/checkpoints.corrupt/ and their task iterations run again.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', None, 'Directory of JAX\'s persistent compilation '
    'cache, so that a rerun or resume loads its compiled programs (default: '
    '$ADMRL_JAX_CACHE_DIR, else ~/.cache/admrl_jax/jax_cache); an empty '
    'value turns it off.')
_PHASE_PROGRESS = flags.DEFINE_bool(
    'phase_progress', True, 'A progress line after each phase: the task '
    'iteration runs as three compiled programs (start, one phase, end) '
    'driven from the host, a device sync per phase. --nophase_progress: '
    'one program and one line per task iteration.')
_SHARD = flags.DEFINE_string(
    'shard', 'auto', 'Shard the members (seeds x alphas) over all devices: '
    'on | off | auto (on when there is more than one device, the sweep is '
    'vmap and the members divide evenly over the devices).')
_WANDB_PROJECT = flags.DEFINE_string(
    'wandb_project', None, 'Also log the metrics and the config to this '
    'Weights & Biases project (off by default; needs pip install -e '
    '.[wandb]; WANDB_MODE=offline logs locally).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Run the sweep over several processes (one per '
    'host): jax.distributed.initialize() first (CPU collectives: gloo), the '
    'members sharded over the devices of every process (their count must '
    'divide the members; --sweep=vmap), the run\'s files written by '
    'process 0 and the checkpoints by all together (a workdir every host '
    'shares). Every process runs the same command; --coordinator_address, '
    '--num_processes and --process_id, or SLURM / Open MPI, say who is who.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed: host:port of process '
    '0, where it serves the other processes (e.g. 127.0.0.1:12345 for '
    'processes of one machine). Default: $JAX_COORDINATOR_ADDRESS, else '
    'detected under SLURM or Open MPI.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --distributed: how many processes run the '
    'sweep (default: detected under SLURM or Open MPI).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --distributed: this process\'s index, 0 … '
    '--num_processes - 1 (default: detected under SLURM or Open MPI).')


def main(argv):
  run_main(argv, run)


# ------------------------------------------------------------ settings
def resolve_settings():
  """Flags → (family, config, alphas, seeds, record); UsageError on bad input.
  Imports the --family_module modules first."""
  modules = common.import_family_modules(_FAMILY_MODULE.value)
  alphas = None if _ALPHA.value is None else parse_floats(_ALPHA.value,
                                                          'alpha')
  # With --config, the file's algorithm unless --algo is given.
  algo = (None if _CONFIG.value is not None and not flags.FLAGS['algo'].present
          else _ALGO.value)
  return resolve(env=_ENV.value, algo=algo, preset=_PRESET.value,
                 alphas=alphas, seeds=parse_seeds(_SEED.value),
                 sweep=_SWEEP.value, ntasks=_NTASKS.value,
                 sets=parse_sets(_SET.value), pipeline=_PIPELINE.value,
                 horizon=_HORIZON.value, frame_skip=_FRAME_SKIP.value,
                 x64=_X64.value, family_modules=modules,
                 family_sets=_FAMILY_SET.value, config_file=_CONFIG.value)


# --------------------------------------------------------------- run
def run():
  """Flags → a trained (or resumed) run in --workdir: JAX set up, settings
  resolved and checked (nothing written on bad input), then `train`."""
  start = time.time()
  log = common.timed_log(start)

  configure_jax()
  log = process_log(log)
  family, config, alphas, seeds, record = resolve_settings()
  if jax.process_count() > 1 and baselines.is_baseline(config):
    raise UsageError(f'--distributed: runs AdMRL sweeps (--algo='
                     f'{config.algo} runs in one process)')
  if jax.process_count() > 1 and _FALLBACK_TO_INTACT.value:
    raise UsageError('--fallback_to_intact runs in one process (it moves '
                     'checkpoints aside), not with --distributed')
  if _WANDB_PROJECT.value:
    try:
      # Not at the top: wandb is optional; this checks it is installed.
      import wandb  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise UsageError('--wandb_project needs wandb: pip install -e .[wandb]'
                       ' (or pip install wandb)') from None
  # Refused (exit 2) before anything is written.
  keep_checkpoints = parse_keep_checkpoints(_KEEP_CHECKPOINTS.value)
  sharding, shard_note = member_sharding(_SHARD.value, len(seeds) * len(alphas),
                                         record['sweep'])
  if shard_note:
    log(shard_note)
  train(family, config, alphas, seeds, record, workdir_of(family, config),
        log, stop_after=_STOP_AFTER.value, throttle_s=hooks.THROTTLE_S.value,
        phase_progress=_PHASE_PROGRESS.value, sharding=sharding,
        wandb_project=_WANDB_PROJECT.value, keep_checkpoints=keep_checkpoints,
        fallback_to_intact=_FALLBACK_TO_INTACT.value)


def configure_jax() -> None:
  """--distributed, --x64 and the compilation cache, before any array.
  UsageError: a process flag without --distributed, or a bad one."""
  given = [name for name, flag in (
      ('--coordinator_address', _COORDINATOR_ADDRESS),
      ('--num_processes', _NUM_PROCESSES), ('--process_id', _PROCESS_ID))
           if flag.value is not None]
  if given and not _DISTRIBUTED.value:
    raise UsageError(f'{", ".join(given)} need'
                     f'{"s" if len(given) == 1 else ""} --distributed')
  if _DISTRIBUTED.value:
    initialize_distributed(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  if _X64.value:
    jax.config.update('jax_enable_x64', True)  # before any array exists
  common.enable_compilation_cache(_COMPILATION_CACHE.value)


def initialize_distributed(coordinator_address, num_processes,
                           process_id) -> None:
  """`jax.distributed.initialize` with the flags' values (None: JAX's
  default, $JAX_COORDINATOR_ADDRESS or SLURM's / Open MPI's), the CPU
  collectives across processes done by gloo (unless
  $JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise). Before any other
  JAX call.
  UsageError on values that cannot describe a run."""
  if num_processes is not None and num_processes < 1:
    raise UsageError(f'--num_processes must be >= 1, got {num_processes}')
  if process_id is not None and (
      process_id < 0 or (num_processes is not None
                         and process_id >= num_processes)):
    raise UsageError(f'--process_id must be in 0 … --num_processes - 1, got '
                     f'{process_id}')
  # CPU collectives across processes: gloo (JAX 0.10's default, which
  # older versions lacked), unless the environment chose another (mpi).
  if 'JAX_CPU_COLLECTIVES_IMPLEMENTATION' not in os.environ:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def process_log(log):
  """`log` on the primary process; on the others of a multi-process run,
  one line saying which process this is, then nothing (process 0 logs the
  run; errors still reach stderr)."""
  if jax.process_count() == 1:
    return log
  log(f'process {jax.process_index()} of {jax.process_count()}: '
      f'{jax.local_device_count()} of the {jax.device_count()} devices'
      + ('' if is_primary() else '; process 0 logs the run'))
  return log if is_primary() else (lambda message: None)


def workdir_of(family, config) -> str:
  """--workdir, default runs/<env>-<algo>-<preset>."""
  return _WORKDIR.value or os.path.join(
      'runs', f'{family.name}-{config.algo}-{_PRESET.value}')


if __name__ == '__main__':
  app.run(main)
