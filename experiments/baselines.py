"""The meta-RL baselines of Lin et al. 2020 (arXiv:2006.08875, Fig. 2),
MAML-TRPO and PEARL (`admrl_jax.baselines`), as driver runs: their settings
(`resolve`), training with checkpoints and resume (`train`), the members'
initial state a checkpoint restores into (`init_members`, read back by
`experiments.workdir.load_state`) and A_n of a trained member
(`Evaluator`). Flag-free, so that `experiments.run`, `experiments.evaluate`
and `experiments.study` share it.

A run is `Baseline.n_iterations` iterations — MAML meta-iterations
(`maml.meta_train_step`), PEARL training iterations (`pearl.train_iteration`:
a collection, then its gradient steps) — of every seed, the seeds the lanes
of one compiled program (`--sweep=vmap`) or run in turn inside it (`map`).
Its outer behaviour is the driver's (`experiments.training.train`): a plan
line first, config.json and provenance.json, an orbax checkpoint after every
iteration (digests, --keep_checkpoints), metrics.jsonl and TensorBoard, a
progress line per iteration with an ETA, a resume that continues bitwise,
and a workdir of another configuration refused before anything is written.
There is no task step size α: the members are the seeds, recorded with α
None.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import fileio
from admrl_jax import sweep as sweep_lib
from admrl_jax.baselines import maml
from admrl_jax.baselines import pearl
from admrl_jax.evaluation import metrics as metrics_lib
from experiments import logs
from experiments import presets
from experiments import training
from experiments.common import (UsageError, build_family, compile_polling,
                                parse_family_sets, wait)

# The driver's names of the baselines (`config_io.BASELINE_ALGOS`, which
# reads their run records; tests/test_baseline_settings.py checks they agree).
ALGOS = ('maml', 'pearl')

# The metrics.jsonl fields drawn in TensorBoard and W&B (besides
# real_samples).
SCALARS = {
    'maml': ('pre_update_return', 'post_update_return', 'surrogate',
             'improvement', 'kl', 'accepted', 'grad_norm', 'step_norm'),
    'pearl': ('prior_return', 'posterior_return', 'q_loss', 'kl',
              'policy_loss', 'temperature', 'z_var'),
}
# The return a progress line reports.
_HEADLINE = {'maml': ('post_update_return', 'post-update return'),
             'pearl': ('posterior_return', 'posterior-z return')}


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A baseline run's algorithm, length and library config.

  Attributes:
    algo: 'maml' or 'pearl'.
    n_iterations: the run's iterations: MAML meta-iterations
      (`maml.meta_train_step`), PEARL training iterations
      (`pearl.train_iteration`); the driver's --ntasks sets it.
    config: the `maml.MAMLConfig` or `pearl.PEARLConfig`.
  """
  algo: str
  n_iterations: int
  config: Any


def is_baseline(config) -> bool:
  """Whether a resolved config (`training.resolve`) is a baseline's."""
  return isinstance(config, Baseline)


# ------------------------------------------------------------ settings
def _record_of_file(path):
  """A baseline run's record in a --config file (its config.json), else
  None (unreadable files are reported by `training.config_from_file`)."""
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError):
    return None
  if isinstance(values, dict) and values.get('algo') in ALGOS:
    return values
  return None


def algo_of_file(path):
  """The baseline algorithm recorded in a --config file (a baseline run's
  config.json), else None."""
  record = _record_of_file(path)
  return None if record is None else record['algo']


def resolve(env, algo, preset='paper', alphas=None, seeds=(0,),
            sweep='vmap', ntasks=None, sets=None, pipeline=None, horizon=None,
            frame_skip=None, x64=False, family_modules=None, family_sets=(),
            config_file=None):
  """A baseline run's settings → (family, Baseline, [None], seeds, record),
  as `training.resolve` (which calls this for algo maml or pearl).

  The config starts from `presets.baseline_preset(env, preset, algo)`,
  then --config (a JSON file of the config's fields: a baseline run's
  config.json, whose n_iterations it takes too, or its 'config' section),
  --ntasks (the number of iterations) and --set (dotted fields of the
  MAMLConfig / PEARLConfig, e.g. outer.max_kl=0.02 or
  num_train_steps_per_itr=100).

  Raises:
    UsageError: naming the flag — --alpha given (the baselines have no task
      step), --x64 for pearl (float32 only), an unknown preset or family,
      or a value the config refuses (its `__post_init__`), before anything
      is written.
  """
  if algo not in ALGOS:
    raise UsageError(f'--algo: unknown baseline {algo!r}; valid: '
                     f'{", ".join(ALGOS)}')
  if alphas is not None:
    raise UsageError(f'--alpha does not apply to {algo} (it has no task '
                     'step size); leave it out')
  if x64 and algo == 'pearl':
    # Its replay buffers and temperature are float32 arrays by design.
    raise UsageError('--x64: pearl computes in float32 (admrl_jax.baselines.'
                     'pearl keeps float32 buffers); leave --x64 out')
  training.check_preset_and_env(preset, env)
  fields = parse_family_sets(env, family_sets)
  config, family_overrides, n_iterations = presets.baseline_preset(
      env, preset, algo)
  if config_file is not None:
    config = training.config_from_file(config_file, config)
    n_iterations = _iterations_of_file(config_file, algo, n_iterations)
  seeds = list(seeds)
  training.check_sweep(sweep)
  if ntasks is not None:
    n_iterations = training.check_ntasks(ntasks)
  config = presets.apply_sets(config, sets or {})
  family = build_family(
      env, pipeline, training.preset_horizon(horizon, family_overrides),
      frame_skip=frame_skip, fields=fields)
  record = training.run_record(
      env, preset, family, [None], seeds, sweep, config, x64, family_modules,
      fields, algo=algo, n_iterations=n_iterations)
  return family, Baseline(algo, n_iterations, config), [None], seeds, record


def _iterations_of_file(path, algo, n_iterations) -> int:
  """The n_iterations of a --config file that is a run record of `algo`,
  else `n_iterations`; UsageError if the file's is not an int >= 1."""
  saved = _record_of_file(path)
  if saved is None or saved['algo'] != algo:
    return n_iterations
  n_iterations = saved.get('n_iterations', n_iterations)
  if (isinstance(n_iterations, bool) or not isinstance(n_iterations, int)
      or n_iterations < 1):
    raise UsageError(f'--config {path}: n_iterations must be an '
                     f'integer >= 1, got {n_iterations!r}')
  return n_iterations


def from_record(record, config) -> Baseline:
  """The `Baseline` of a run record and its rebuilt library config
  (`config_io.read_run(..., baselines=True)`)."""
  return Baseline(record['algo'], int(record['n_iterations']), config)


def astar_slbo_config(env: str, preset: str):
  """The SLBO settings that estimate A* for a baseline's run: those of the
  AdMRL preset of the same name, so that its gaps are measured against the
  A* of the model-based runs of that preset (the A* cache is keyed by
  family, task and budget)."""
  return presets.preset(env, preset)[0].slbo


# ---------------------------------------------------------- programs
def _init_fn(family, baseline: Baseline):
  if baseline.algo == 'maml':
    return lambda key: maml.init(key, family, baseline.config)
  return lambda key: pearl.init(key, family, baseline.config)


def init_members(family, baseline: Baseline, seeds: Sequence[int],
                 sweep: str = 'vmap'):
  """The fresh states of the seeds' members, leaves with a leading member
  axis, in one compiled program (`jax.vmap` of the baseline's `init`, or
  `lax.map` for sweep 'map', so that a mapped member is bitwise its run
  alone). PEARL's includes its initial collection."""
  init = _init_fn(family, baseline)
  keys = jax.numpy.stack([jax.random.key(seed) for seed in seeds])
  if sweep == 'map':
    return jax.jit(lambda k: jax.lax.map(init, k))(keys)
  return jax.jit(jax.vmap(init))(keys)


def iteration_fn(algo: str):
  """state → (state, {metric: scalar}): one iteration of one member (MAML
  `meta_train_step`; PEARL `train_iteration`, its gradient steps' metrics
  averaged; its entropy temperature α as `temperature`, not to be taken
  for a member's task step α), with `iteration` and `real_samples` (the
  real environment steps of the run so far: MAMLState.real_samples,
  PEARLState.env_steps, the initial collection included)."""
  if algo == 'maml':
    def maml_step(state):
      state, m = maml.meta_train_step(state)
      return state, {f.name: getattr(m, f.name)
                     for f in dataclasses.fields(m)}
    return maml_step

  def pearl_step(state):
    state, m = pearl.train_iteration(state)
    u = m.update
    return state, dict(
        iteration=state.iteration, real_samples=state.env_steps,
        prior_return=m.collect.prior_return,
        posterior_return=m.collect.posterior_return,
        collected=m.collect.env_steps, update_steps=state.update_steps,
        q_loss=jnp.mean(u.q_loss), kl=jnp.mean(u.kl),
        policy_loss=jnp.mean(u.policy_loss), temperature=u.alpha[-1],
        log_prob=jnp.mean(u.log_prob), q_mean=jnp.mean(u.q_mean),
        target_mean=jnp.mean(u.target_mean), z_var=jnp.mean(u.z_var))
  return pearl_step


def metric_rows(metrics, members):
  """metrics.jsonl rows, one per member: `iteration` (iterations done),
  seed, alpha (None), then every metric."""
  fields = {k: np.asarray(v) for k, v in metrics.items()}
  rows = []
  for i, (seed, alpha) in enumerate(members):
    row = {'iteration': int(fields['iteration'][i]), 'seed': seed,
           'alpha': alpha}
    row.update({k: fileio.to_jsonable(v[i]) for k, v in fields.items()
                if k != 'iteration'})
    rows.append(row)
  return rows


def summary_line(rows, algo: str) -> str:
  """A progress line's account of one iteration's rows: the headline
  return (MAML: post-update, PEARL: with z from the posterior) of one
  member, or its median and range over members, and the real samples."""
  key, name = _HEADLINE[algo]
  values = sorted(r[key] for r in rows if r.get(key) is not None)
  samples = rows[0]['real_samples']
  if len(rows) == 1:
    value = f'{values[0]:.1f}' if values else 'n/a'
    return f'{name} {value}, real samples {samples}'
  text = ('n/a' if not values else
          f'median {values[len(values) // 2]:.1f} [{values[0]:.1f}, '
          f'{values[-1]:.1f}]')
  return (f'{len(rows)} members: {name} {text}; member 1 (seed '
          f'{rows[0]["seed"]}) real samples {samples}')


def samples_per_iteration(family, baseline: Baseline) -> int:
  """The most real steps one iteration of one member takes (MAML: fewer
  when episodes terminate early)."""
  c = baseline.config
  if baseline.algo == 'maml':
    return (c.meta_batch_size * (c.num_inner_steps + 1) * c.rollouts_per_task
            * family.horizon)
  return c.num_tasks_sample * c.steps_per_task


def plan(family, baseline: Baseline, n_members: int, first: int,
         target: int) -> str:
  """The line saying what a run is about to do, before anything is
  compiled."""
  algo, n = baseline.algo, baseline.n_iterations
  if first >= target:
    return (f'{family.name}: {algo} iterations 1..{target} of {n} are done; '
            'nothing to run')
  c = baseline.config
  per = samples_per_iteration(family, baseline)
  if algo == 'maml':
    what = (f'each {c.meta_batch_size} tasks x {c.num_inner_steps + 1} '
            f'phases x {c.rollouts_per_task} episodes (at most {per} real '
            'steps) and a TRPO meta-step')
  else:
    what = (f'each {per} real steps ({c.num_tasks_sample} tasks x '
            f'{c.steps_per_task}) and {c.num_train_steps_per_itr} gradient '
            'steps' + (f', after an initial collection of '
                       f'{c.num_train_tasks * c.num_initial_steps} steps'
                       if first == 0 else ''))
  return (f'{family.name}: about to run {algo} iterations {first + 1}..'
          f'{target} of {n} for {n_members} member(s): {what}; a measured '
          'ETA follows the first iteration')


# ----------------------------------------------------------- training
def train(family, baseline: Baseline, seeds, record, workdir, log,
          stop_after=None, throttle_s=0.0, sharding=None,
          wandb_project=None, keep_checkpoints=None,
          fallback_to_intact=False, pieces=None, piece_units=None):
  """Runs (or resumes) the iterations of every seed's member in `workdir`;
  returns the final batched state (`MAMLState` or `PEARLState`).

  The arguments are those of `training.train` (family, baseline, seeds and
  record from `resolve`). One compiled program per iteration, all members
  in it; a checkpoint after every iteration (step = iterations done).

  Raises:
    UsageError: the workdir holds another run, or a bad keep_checkpoints.
    CheckpointError: an unreadable record or checkpoint (left in place).
  """
  members = [(seed, None) for seed in seeds]
  algo, n = baseline.algo, baseline.n_iterations
  saved, recorded, keep, target = training.start_run(
      workdir, record, keep_checkpoints, n, stop_after,
      lambda first, last: plan(family, baseline, len(seeds), first, last),
      log)
  family = training.calibrated(family, saved, record, seeds)
  log(f'{family.name}: k={family.task_dim}, algo {algo}, {len(seeds)} '
      f'seed(s), {n} iterations, workdir {workdir}')
  training.log_sharding(sharding, len(members), log)
  manager, state = training.open_run(
      workdir, init_members(family, baseline, seeds, record['sweep']), saved,
      record, recorded, keep, fallback_to_intact, log, what='iteration')
  done = int(np.asarray(state.iteration)[0])
  metrics_log = logs.MetricsLog(workdir, members, keep_below=done + 1,
                                wandb_project=wandb_project, config=record,
                                index_key='iteration', scalars=SCALARS[algo])
  if sharding is not None:
    state = jax.device_put(state, sharding)
  runner = _Iteration(sweep_lib.batched(iteration_fn(algo), record['sweep'],
                                        sharding, n_args=0))
  piece_units = piece_units or (lambda i: 1.0)

  def write(metrics, wall_time):
    metrics_log.write_rows(metric_rows(metrics, members), wall_time=wall_time,
                           summary=lambda rows: summary_line(rows, algo))
    return metrics_log.last_summary

  return training.run_pieces(
      runner, state, done, target, manager, metrics_log, write, log,
      throttle_s, n, pieces=pieces or training.run_progress(
          piece_units, n, done, log), piece_units=piece_units,
      name='iteration', program=f'{algo} iteration')


class _Iteration:
  """A baseline's iteration as one program compiled ahead of time, for
  `training.run_pieces`."""

  def __init__(self, program):
    self._program, self._compiled = program, None

  def compile(self, state, first):
    del first
    self._compiled = compile_polling(self._program.lower(state))

  def __call__(self, state, done):
    del done
    # `wait` polls, so Ctrl-C is not held up by a long compiled call.
    return wait(self._compiled(state))


# --------------------------------------------------------- evaluation
class BaselineAdaptation(NamedTuple):
  """A0 and A_n (b,) of one member on one task, with their standard errors
  over the evaluation episodes (NaN for a single episode)."""
  a0: Any
  an: Any
  a0_se: Any
  an_se: Any


class Evaluator:
  """A0 and A_n (n ∈ budgets) of a trained baseline member on one task ψ,
  as the baseline measures them (Lin et al. 2020, Section 5; Fig. 2):

    MAML: θ adapted by the inner step(s) on n real samples (n / horizon
      episodes of π_θ per inner step, `maml.adapt`; A0 is θ itself), then
      the mean return of the adapted policy's mean action;
    PEARL: the posterior q(z|c) of n real transitions collected on ψ
      (`pearl.adapt`, oyster's collect_paths; A0: the prior), then the mean
      return with z = the posterior mean and mean actions.

  Each A is the mean over `eval_episodes` fresh episodes
  (`adapted_episode_returns`, so its standard error is known); the budgets
  are adapted independently, each from the prior or θ, with the keys
  split(key, 1 + len(budgets)) (A0 first).

  Raises:
    ValueError: for MAML, a budget that is not a multiple of the horizon
      (its batches are whole episodes).
  """

  def __init__(self, family, baseline: Baseline, budgets, eval_episodes: int):
    self.family = family
    self.baseline = baseline
    self.budgets = tuple(int(b) for b in budgets)
    self.eval_episodes = int(eval_episodes)
    if self.eval_episodes < 1:
      raise ValueError(f'eval_episodes must be >= 1, got {eval_episodes}')
    if baseline.algo == 'maml':
      bad = [b for b in self.budgets if b % family.horizon]
      if bad:
        raise ValueError(
            f'maml adapts on whole episodes: budgets {bad} are not '
            f'multiples of the {family.name} horizon {family.horizon}')

  def describe(self) -> str:
    """How A_n is measured, for the evaluation's first line."""
    if self.baseline.algo == 'maml':
      steps = self.baseline.config.num_inner_steps
      how = (f'{steps} inner gradient step(s) of MAML on n real samples'
             + (' each' if steps > 1 else ''))
    else:
      how = 'the PEARL posterior of n real transitions'
    return (f'A0 of the meta-trained policy, A_n after {how}, each the mean '
            f'of {self.eval_episodes} episode(s)')

  def _returns(self, params, psi, n_samples, key):
    if self.baseline.algo == 'maml':
      return maml.adapted_episode_returns(
          params, self.family, psi, n_samples, key, self.baseline.config,
          n_episodes=self.eval_episodes)
    return pearl.adapted_episode_returns(
        params, self.family, self.baseline.config, psi, n_samples,
        self.eval_episodes, key)

  def adapt(self, params, psi, key):
    """(a0, an (b,), a0_se, an_se (b,)) of one member's parameters on ψ
    (k,); pure, one program when jitted (the budgets are static)."""
    psi = jnp.asarray(psi, jnp.float32)
    keys = jax.random.split(key, 1 + len(self.budgets))
    means, errors = [], []
    for n, k in zip((0,) + self.budgets, keys):
      r = self._returns(params, psi, n, k)
      means.append(jnp.mean(r))
      errors.append(jnp.std(r, ddof=1) / math.sqrt(r.shape[0])
                    if r.shape[0] > 1 else jnp.full((), jnp.nan, r.dtype))
    means, errors = jnp.stack(means), jnp.stack(errors)
    return BaselineAdaptation(a0=means[0], an=means[1:], a0_se=errors[0],
                              an_se=errors[1:])

  @staticmethod
  def member_params(state, m: int):
    """Member m's parameters of a batched state."""
    return jax.tree.map(lambda x: x[m], state.params)


def visited_tasks(state, family, algo: str):
  """Per member, the training tasks a baseline trained on, (n, k): PEARL's
  fixed training tasks; MAML draws fresh tasks every meta-iteration and
  keeps none (an empty array)."""
  if algo == 'pearl':
    return list(np.asarray(state.train_tasks, np.float64))
  n_members = int(np.asarray(state.iteration).shape[0])
  return [np.zeros((0, family.task_dim)) for _ in range(n_members)]
