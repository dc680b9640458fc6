r"""Evaluates a run: `python -m experiments.evaluate --workdir=DIR [flags]`.

    python -m experiments.evaluate --workdir=runs/ant2d-admrl-paper
    python -m experiments.evaluate --workdir=runs/ant2d-admrl-paper --eval_env=ant2d_ood
    python -m experiments.evaluate --workdir=/tmp/lq --budgets=500,1000 --max_tasks=4

For every member (seed, α) of the run's latest checkpoint and every task ψ of
the evaluation set (the family's, or --eval_env's: e.g. the ant2d_ood boundary
tasks for a model trained on ant2d — same dynamics and observations), it adapts
the trained model (paper Section 5): fresh policy, zero-shot VirtualTraining →
A0, then SLBO stages of --stage_samples real samples each → A_n at each
--budgets n. A*(ψ) is the closed form where the family has one (lq), else the
best return of a long SLBO run from scratch with --astar_budget real samples; it
is cached per (family, ψ, budget) in --astar_cache (default
$ADMRL_JAX_ASTAR_CACHE, else ~/.cache/admrl_jax/astar_cache.json, beside
JAX's compilation cache; the path is printed), so every method evaluated
uses the same A*.

Writes <workdir>/eval.json (eval_<env>.json for another --eval_env) with A0,
An, A*, Gn, Gmax_n, average An per member, their mean/std over members, the
budgets and the A* budget; and PNGs beside it: gap_heatmap (G_n over the grid,
a column per budget; slices over the last coordinate for 3-D boxes), gmax
(Gmax_n vs n), average_return (average A_n vs n, n = 0 is A0), visited_tasks
(the run's training tasks over the box). Bad input: one line on stderr,
exit status 2 (a --step without a checkpoint: the saved steps are listed).
A corrupt checkpoint (it does not read, or its leaves differ from the
SHA-256 digests saved with it): one line naming its step, exit status 1.

It says first what it will do (members × tasks, budgets, A*), then adapts
one (member, task) piece at a time, one line each with an ETA (an estimate
after the first). Each finished piece is saved at once in
<workdir>/eval_pieces.json (eval_<env>_pieces.json); Ctrl-C stops within
seconds (exit status 130), and the same command again reuses the saved
pieces (those of other settings — checkpoint, budgets, seed … — are
dropped). Task i of the set (its index in the whole set, also under
--max_tasks) of the member trained with seed s is adapted with the key
fold_in(fold_in(key(--seed), s), i) (`experiments.pieces.adaptation_key`,
the study's convention too). A run of a family registered by a
module (--family_module of the driver) imports the module recorded in its
config.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import app
from absl import flags

from experiments import common
from experiments import hooks

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from admrl_jax import checkpoints
from admrl_jax import envs
from admrl_jax import fileio
from admrl_jax.evaluation import adaptation
from admrl_jax.evaluation import metrics
from admrl_jax.evaluation import optimum
from experiments import baselines
from experiments import workdir as workdir_lib
from experiments.astar import astar_values
from experiments import pieces as pieces_lib
from experiments.common import (CheckpointError, UsageError,
                                family_from_record, json_array, json_number,
                                parse_floats, run_main, write_json)
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory to evaluate.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_BUDGETS = flags.DEFINE_string(
    'budgets', '2000,4000,6000',
    'Real-sample counts n of A_n, multiples of --stage_samples.')
_STAGE_SAMPLES = flags.DEFINE_integer(
    'stage_samples', None, 'Real samples per adaptation stage (a multiple of '
    'the horizon); default: the gcd of --budgets (2000 for the default).')
_ASTAR_METHOD = flags.DEFINE_string(
    'astar_method', 'auto', 'auto (closed form where the family has one, '
    'else slbo) | closed_form | slbo.')
_ASTAR_BUDGET = flags.DEFINE_integer(
    'astar_budget', 100_000, 'Real samples of the long SLBO run that '
    'estimates A* (method slbo).')
_ASTAR_CACHE = flags.DEFINE_string(
    'astar_cache', None, 'JSON cache of A* (default $ADMRL_JAX_ASTAR_CACHE, '
    'else ~/.cache/admrl_jax/astar_cache.json; its entries are keyed by '
    'family, task, budget and seed, so runs share it).')
_EVAL_ENV = flags.DEFINE_string(
    'eval_env', None, 'Evaluate on this family\'s evaluation set (same '
    'dynamics and observations as the run\'s), e.g. ant2d_ood.')
_MAX_TASKS = flags.DEFINE_integer(
    'max_tasks', None, 'Evaluate only N tasks spread over the set '
    '(evaluation.metrics.spread_subset: corners first), not the first N.')
_EVAL_EPISODES = flags.DEFINE_integer(
    'eval_episodes', None, 'Real episodes per measured return (default '
    'stage_samples // horizon).')
_N_INNER = flags.DEFINE_integer('n_inner', None, 'VirtualTraining iterations '
                                'per stage (default: the run\'s).')
_N_ZEROSHOT = flags.DEFINE_integer('n_zeroshot', None, 'Zero-shot '
                                   'VirtualTraining iterations, 0 for none '
                                   '(default: the run\'s).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint (task iteration) to '
                             'evaluate; default the latest.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the evaluation roll-outs.')
_OUT = flags.DEFINE_string(
    'out', None, 'Directory of eval.json, its pieces and the figures '
    '(default: --workdir).')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace an evaluation of other settings (budgets, '
    'checkpoint, seed …) found in the output directory; without it such an '
    'evaluation, finished or in pieces, is refused (exit 2) and kept.')
_FAMILY_MODULE = flags.DEFINE_string(
    'family_module', None, 'Comma list of modules to import first (e.g. '
    'my_pkg.tasks, which envs.register()s families), besides those the run '
    'recorded in config.json.')

FIGURES = ('gap_heatmap', 'gmax', 'average_return', 'visited_tasks')


def main(argv):
  run_main(argv, run)


# ------------------------------------------------------------ settings
def parse_ints(text: str, what: str, minimum: int = 1) -> list[int]:
  """'2000,4000' -> [2000, 4000]: integers >= minimum, strictly increasing."""
  values = parse_floats(text, what)
  if any(v != int(v) or v < minimum for v in values):
    raise UsageError(f'--{what}: expected integers >= {minimum}, got {text!r}')
  values = [int(v) for v in values]
  if values != sorted(set(values)):
    raise UsageError(f'--{what}: values must be strictly increasing, got '
                     f'{text!r}')
  return values


def _positive(flag, name):
  if flag.value is not None and flag.value < 1:
    raise UsageError(f'--{name} must be >= 1, got {flag.value}')
  return flag.value


def outputs(workdir: str, record, eval_env) -> dict:
  """Paths of eval.json and the PNGs (suffixed for another --eval_env)."""
  suffix = '' if eval_env in (None, record['env']) else f'_{eval_env}'
  paths = {name: os.path.join(workdir, f'{name}{suffix}.png')
           for name in FIGURES}
  paths['json'] = os.path.join(workdir, f'eval{suffix}.json')
  paths['pieces'] = os.path.join(workdir, f'eval{suffix}_pieces.json')
  return paths


def eval_family(family, record, eval_env):
  """The family whose evaluation set (and reward) is used."""
  if eval_env is None or eval_env == record['env']:
    return family
  if eval_env not in envs.names():
    raise UsageError(f'--eval_env: unknown environment {eval_env!r}; valid: '
                     f'{", ".join(envs.names())}')
  try:
    other = family_from_record(record, env=eval_env)
  except ValueError as e:
    raise UsageError(f'--eval_env: {e}') from None
  if (other.obs_size, other.action_size) != (family.obs_size,
                                             family.action_size) or (
                                                 other.task_dim
                                                 != family.task_dim):
    raise UsageError(
        f'--eval_env {eval_env} does not share {family.name}\'s dynamics '
        f'(obs {other.obs_size} vs {family.obs_size}, action '
        f'{other.action_size} vs {family.action_size}, task dim '
        f'{other.task_dim} vs {family.task_dim})')
  return other


# ---------------------------------------------------------------- run
def run():
  """Flags → eval.json and the figures, in the steps below."""
  start = time.time()
  log = common.timed_log(start)

  common.import_family_modules(_FAMILY_MODULE.value)
  options = read_flags()
  # A rerun (after Ctrl-C) loads the adaptation program instead of
  # compiling it again.
  common.enable_compilation_cache()
  family, config, record = workdir_lib.load_config(options['workdir'])
  target = eval_family(family, record, _EVAL_ENV.value)
  plan = plan_evaluation(target, config, options, record)
  state, step = restore(options['workdir'], family, config, record)
  all_tasks, index = select_tasks(target, options['max_tasks'])
  report = evaluate(family, target, config, record, plan, state, step,
                    all_tasks, index, log)
  report['wall_time_s'] = time.time() - start
  save(report, outputs(output_dir(options), record, _EVAL_ENV.value), log)


def default_astar_cache() -> str:
  """$ADMRL_JAX_ASTAR_CACHE, else ~/.cache/admrl_jax/astar_cache.json."""
  return os.environ.get('ADMRL_JAX_ASTAR_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'admrl_jax', 'astar_cache.json')


def output_dir(options) -> str:
  """--out, default the run directory."""
  return _OUT.value or options['workdir']


def read_flags() -> dict:
  """The evaluation's flags, checked: workdir, budgets, stage_samples
  (default the gcd of the budgets), max_tasks, seed; UsageError naming the
  flag on bad input (nothing is read or written before)."""
  workdir = _WORKDIR.value
  if not workdir:
    raise UsageError('--workdir is required')
  if not os.path.isdir(workdir):
    raise UsageError(f'--workdir {workdir} does not exist')
  budgets = parse_ints(_BUDGETS.value, 'budgets')
  stage_samples = _positive(_STAGE_SAMPLES, 'stage_samples') or math.gcd(
      *budgets)
  if any(b % stage_samples for b in budgets):
    raise UsageError(f'--budgets {budgets} must be multiples of '
                     f'--stage_samples={stage_samples}')
  max_tasks = _positive(_MAX_TASKS, 'max_tasks')
  if _ASTAR_METHOD.value not in ('auto', 'closed_form', 'slbo'):
    raise UsageError(f'--astar_method: expected auto, closed_form or slbo, '
                     f'got {_ASTAR_METHOD.value!r}')
  _positive(_ASTAR_BUDGET, 'astar_budget')
  for flag, name in ((_EVAL_EPISODES, 'eval_episodes'), (_N_INNER, 'n_inner')):
    _positive(flag, name)
  if _N_ZEROSHOT.value is not None and _N_ZEROSHOT.value < 0:
    raise UsageError(f'--n_zeroshot must be >= 0, got {_N_ZEROSHOT.value}')
  if _SEED.value < 0:
    raise UsageError(f'--seed must be >= 0, got {_SEED.value}')
  return dict(workdir=workdir, budgets=budgets, stage_samples=stage_samples,
              max_tasks=max_tasks, seed=_SEED.value)


def plan_evaluation(target, config, options, record) -> dict:
  """How A* and the A_n are measured: the A* method ('closed_form' or
  'slbo'), its real-sample budget (None for the closed form), the
  `AdaptationConfig` and the SLBO settings of A* (`slbo`: the run's, or
  for a meta-RL baseline's run those of the AdMRL preset of its name);
  UsageError if the family or the sizes refuse them (for a baseline's run
  also --n_zeroshot and --n_inner, which it has not, and MAML budgets that
  are not whole episodes)."""
  baseline = baselines.is_baseline(config)
  if baseline:
    for flag, name in ((_N_ZEROSHOT, 'n_zeroshot'), (_N_INNER, 'n_inner')):
      if flag.value is not None:
        raise UsageError(f'--{name} does not apply to a {config.algo} run '
                         '(it adapts without VirtualTraining)')
    slbo = baselines.astar_slbo_config(record['env'], record['preset'])
  else:
    slbo = config.slbo
  method = (optimum.default_method(target) if _ASTAR_METHOD.value == 'auto'
            else _ASTAR_METHOD.value)
  if method == 'closed_form' and not optimum.has_closed_form(target):
    raise UsageError(f'--astar_method=closed_form: {target.name} has no '
                     'closed-form optimum; use slbo')
  astar_budget = None if method == 'closed_form' else _ASTAR_BUDGET.value
  stage_samples = options['stage_samples']
  try:
    adapt_config = adaptation.AdaptationConfig.from_budgets(
        options['budgets'], stage_samples, n_zeroshot=_N_ZEROSHOT.value,
        n_inner=_N_INNER.value, eval_episodes=_EVAL_EPISODES.value)
    adaptation.stage_slbo_config(target, slbo, stage_samples)
    if astar_budget is not None:
      optimum.OptimumConfig(budget=astar_budget, stage_samples=stage_samples)
    if baseline:
      baselines.Evaluator(target, config, options['budgets'],
                          baseline_episodes(adapt_config, target))
  except ValueError as e:
    raise UsageError(str(e)) from None
  return dict(method=method, astar_budget=astar_budget,
              adapt_config=adapt_config, budgets=options['budgets'],
              stage_samples=stage_samples, seed=options['seed'], slbo=slbo)


def baseline_episodes(adapt_config, family) -> int:
  """Evaluation episodes per measured return of a baseline's run: those an
  AdMRL run's evaluation with the same settings uses (--eval_episodes,
  else stage_samples // horizon)."""
  return (adapt_config.eval_episodes
          or adapt_config.stage_samples // family.horizon)


def restore(workdir, family, config, record):
  """(batched state, step) of --step's checkpoint (default the latest):
  an AdMRLState, or a baseline's MAMLState / PEARLState; its leaves
  checked against the digests saved with it.

  Raises:
    UsageError: no such checkpoint (the message lists the saved steps).
    CheckpointError: it does not read or does not match its digests (one
      line naming the step and its directory, and the other saved steps).
  """
  if _STEP.value is not None:
    _positive(_STEP, 'step')
  try:
    return workdir_lib.load_state(workdir, family, config, record,
                                  _STEP.value)
  except checkpoints.StepNotFound as e:
    keep = record.get('keep_checkpoints', 3)
    older = e.steps and e.step < e.steps[0] and keep != 'all'
    raise UsageError(f'--step: {e}' + (
        f' (the run keeps its latest {keep}: experiments.run '
        '--keep_checkpoints)' if older else '')) from None
  except checkpoints.IncompatibleCheckpoint as e:
    raise CheckpointError(
        f'{e}; it was left untouched: evaluate it with the version that '
        'wrote it (its commit is in provenance.json)') from None
  except checkpoints.CorruptCheckpoint as e:
    others = [s for s in checkpoints.Manager(
        os.path.join(workdir, 'checkpoints')).all_steps() if s != e.step]
    raise CheckpointError(
        f'{e}; it was left untouched' + (
            f'; --step=N evaluates another '
            f'({checkpoints.describe_steps(others)})' if others else '')
    ) from None
  except (UsageError, CheckpointError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    what = ('the latest checkpoint' if _STEP.value is None
            else f'checkpoint {_STEP.value}')
    detail = (str(e).strip() or '-').splitlines()[0][:200]
    raise CheckpointError(f'{workdir}: cannot restore {what} '
                          f'({type(e).__name__}: {detail})') from None


def select_tasks(target, max_tasks):
  """(the whole evaluation set (t, k) float32, the indices evaluated):
  every task, or `max_tasks` spread over the set. The indices into the
  whole set key the pieces and the roll-outs, so a task's result is the
  same whatever --max_tasks chose."""
  all_tasks = np.asarray(target.eval_tasks(), np.float32)
  index = (np.arange(len(all_tasks)) if max_tasks is None
           else metrics.spread_subset(all_tasks, max_tasks))
  return all_tasks, index


def evaluate(family, target, config, record, plan, state, step, all_tasks,
             index, log) -> dict:
  """A*, then A0 and A_n of every member on tasks all_tasks[index], and
  the report (the content of eval.json, before `to_jsonable`)."""
  workdir = _WORKDIR.value
  budgets, stage_samples = plan['budgets'], plan['stage_samples']
  method, astar_budget = plan['method'], plan['astar_budget']
  tasks = all_tasks[index]
  members = workdir_lib.members(record)
  out = _OUT.value or workdir
  paths = outputs(out, record, _EVAL_ENV.value)
  adapter = member_adapter(target, config, plan, state)
  settings = dict(step=int(step), eval_env=target.name, budgets=budgets,
                  stage_samples=stage_samples,
                  eval_episodes=adapter.eval_episodes,
                  n_zeroshot=adapter.n_zeroshot, n_inner=adapter.n_inner,
                  seed=plan['seed'],
                  # The key convention (`pieces.adaptation_key`: by the
                  # member's seed). Evaluations before it keyed by member
                  # position and have no entry: their pieces are of other
                  # settings, not mixed with these.
                  keys='member_seed',
                  members=[dict(seed=s, alpha=a) for s, a in members])
  # Before anything is computed: an evaluation of other settings in the
  # output directory is refused unless --overwrite.
  check_outputs(paths, settings, _OVERWRITE.value)
  os.makedirs(out, exist_ok=True)
  log(f'{workdir}: {record["env"]} {config.algo}, checkpoint {step}: '
      f'{len(members)} member(s) x {len(tasks)} {target.name} task(s)'
      + (f' (spread over the {len(all_tasks)} of the set)'
         if len(tasks) < len(all_tasks) else '')
      + f' = {len(members) * len(tasks)} adaptation(s), {adapter.how}; A_n '
      f'at n = {budgets}; A* {method}'
      + (f' ({astar_budget} real samples per task, cached)' if astar_budget
         else ''))
  cache_path = _ASTAR_CACHE.value or default_astar_cache()
  astar = _astar(target, plan, tasks, cache_path, record, log)
  a0, an = adapt_pieces(adapter.adapt, adapter.member_state, members,
                        all_tasks, index, settings, paths['pieces'], log,
                        hooks.THROTTLE_S.value)
  result = metrics.evaluation(a0, an, astar, tasks, budgets, method,
                              astar_budget)
  return dict(
      workdir=os.path.abspath(workdir), env=record['env'], settings=settings,
      eval_env=target.name, algo=config.algo, preset=record.get('preset'),
      step=int(step), members=[dict(seed=s, alpha=a) for s, a in members],
      budgets=budgets, stage_samples=stage_samples,
      eval_episodes=adapter.eval_episodes, n_zeroshot=adapter.n_zeroshot,
      n_inner=adapter.n_inner, astar_method=method,
      astar_budget=astar_budget, astar_cache=cache_path,
      tasks=np.round(tasks.astype(np.float64), 6),
      task_names=_names(target),
      task_low=target.task_low, task_high=target.task_high,
      train_task_low=family.task_low, train_task_high=family.task_high,
      A0=result.a0, An=result.an, Astar=result.astar, Gn=result.metrics.gn,
      Gmax_n=result.metrics.gmax, average_An=result.metrics.average_an,
      average_A0=result.metrics.average_a0,
      worst_task=result.metrics.worst_task,
      summary=result.summary(),
      visited_tasks=visited_tasks(state, family, config))


class MemberAdapter(NamedTuple):
  """How the members of a run are adapted to a task (`member_adapter`).

  Attributes:
    adapt: `adapt(member_state(m), psi, key)` → A0 and A_n of member m.
    member_state: member m's part of the batched state.
    eval_episodes: real episodes per measured return.
    n_zeroshot, n_inner: the VirtualTraining iterations of the zero-shot
      phase and of each stage (None for a meta-RL baseline).
    how: the evaluation's first line's account of the adaptation.
  """
  adapt: Callable[..., Any]
  member_state: Callable[[int], Any]
  eval_episodes: int
  n_zeroshot: Optional[int]
  n_inner: Optional[int]
  how: str


def member_adapter(target, config, plan, state) -> MemberAdapter:
  """The adaptation of the members of `state` to tasks of `target`: the
  model-based `Adaptation` of their SLBO states, or a meta-RL baseline's
  own rule (`baselines.Evaluator`: MAML's inner step, PEARL's posterior)."""
  if baselines.is_baseline(config):
    evaluator = baselines.Evaluator(
        target, config, plan['budgets'],
        baseline_episodes(plan['adapt_config'], target))
    return MemberAdapter(
        evaluator.adapt, lambda m: evaluator.member_params(state, m),
        evaluator.eval_episodes, None, None, evaluator.describe())
  adapter = adaptation.Adaptation(target, config.slbo, plan['adapt_config'])
  how = (f'each zero-shot ({adapter.n_zeroshot} VirtualTraining '
         f'iterations) then {plan["adapt_config"].n_stages} stage(s) of '
         f'{plan["stage_samples"]} real samples and {adapter.n_inner} '
         'iterations')
  return MemberAdapter(
      adapter.adapt, lambda m: jax.tree.map(lambda x: x[m], state.slbo),
      adapter.eval_episodes, adapter.n_zeroshot, adapter.n_inner, how)


def _astar(target, plan, tasks, cache_path, record, log):
  """A* of `tasks` (`astar.astar_values`, cached in `cache_path`), with a
  line saying how many were computed."""
  astar, computed = astar_values(target, plan['slbo'], tasks, plan['method'],
                                 plan['astar_budget'], plan['stage_samples'],
                                 cache_path, plan['seed'], log,
                                 tag=family_set_tag(record))
  log(f'A* of {len(tasks)} task(s) ({computed} computed, '
      f'{len(tasks) - computed} cached) in {cache_path}')
  return astar


def visited_tasks(state, family, config):
  """Per member, the tasks it trained on: AdMRL's visited ψ up to its
  iteration, or a meta-RL baseline's (`baselines.visited_tasks`)."""
  if baselines.is_baseline(config):
    return baselines.visited_tasks(state, family, config.algo)
  visited = np.asarray(family.from_u(np.asarray(state.visited_u)))
  iterations = np.asarray(state.iteration)
  return [v[:int(n)] for v, n in zip(visited, iterations)]


def save(report, paths, log) -> None:
  """eval.json and the four figures, with a line on Gmax_n."""
  write_json(paths['json'], fileio.to_jsonable(report))
  log(metrics.gmax_line(report['summary'], report['budgets'],
                        report['astar_budget']))
  draw(report_for_plots(report), paths)
  log(f'wrote {paths["json"]} and '
      f'{", ".join(os.path.basename(paths[n]) for n in FIGURES)}')


def family_set_tag(record) -> str:
  """The run's --family_set fields, for the A* cache keys (they change the
  family's returns, which its fingerprint does not show)."""
  fields = record.get('family_set') or {}
  return ','.join(f'{k}={json.dumps(v)}' for k, v in sorted(fields.items()))


# The fields of `settings` that an eval.json written before it recorded
# them holds at its top level (older files lack the seed).
_REPORT_SETTINGS = ('step', 'eval_env', 'budgets', 'stage_samples',
                    'eval_episodes', 'n_zeroshot', 'n_inner', 'members')


def check_outputs(paths, settings, overwrite: bool) -> None:
  """UsageError if the output directory holds an evaluation (eval.json, or
  its pieces) of other settings, unless `overwrite`; the message names the
  settings that differ and the ways out. Nothing is written."""
  now = json.loads(json.dumps(settings))
  for kind, path in (('a finished evaluation', paths['json']),
                     ('an unfinished evaluation', paths['pieces'])):
    if overwrite or not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f'{path} is unreadable ({e}); move it aside, or '
                       'write this evaluation elsewhere with --out') from None
    old = saved.get('settings') if isinstance(saved, dict) else None
    if old is None and isinstance(saved, dict) and kind.startswith('a fin'):
      old = {k: saved.get(k) for k in _REPORT_SETTINGS}
      now_cmp = {k: now[k] for k in _REPORT_SETTINGS}
    else:
      now_cmp = now
    if old == now_cmp:
      continue
    diffs = ([f'{k}: saved {old.get(k)!r}, now {now_cmp.get(k)!r}'
              for k in sorted(set(old) | set(now_cmp))
              if old.get(k) != now_cmp.get(k)] if isinstance(old, dict)
             else ['its settings are unreadable'])
    raise UsageError(
        f'{path} holds {kind} of other settings ({"; ".join(diffs)}); it is '
        'kept: write this one elsewhere with --out=DIR, or replace it with '
        '--overwrite')


def read_pieces(path, settings, log) -> dict:
  """The saved pieces {"m/i": piece} of an evaluation with `settings`;
  those of other settings (another checkpoint, budgets, seed …) are
  dropped with a line."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f'{path} is unreadable ({e}); move it aside') from None
  if not isinstance(saved, dict) or saved.get('settings') != json.loads(
      json.dumps(settings)):
    log(f'{path} holds pieces of other settings; replacing them (--overwrite)')
    return {}
  return dict(saved.get('pieces', {}))


def adapt_pieces(adapt, member_state, members, all_tasks, index, settings,
                 path, log, throttle_s=0.0):
  """A0 (m, t) and A_n (m, t, b) of every member on tasks all_tasks[index],
  one (member, task) piece at a time, each saved to `path` as it finishes
  and reused when the evaluation is run again.

  `adapt(member_state(m), psi, key)` adapts member m to task ψ and returns
  its `a0` and `an` (`Adaptation.adapt` on the member's SLBO state, or a
  baseline's `Evaluator.adapt` on its parameters). Task index[j] of member
  m (training seed s) is adapted with the key
  `pieces.adaptation_key(settings['seed'], s, index[j])`, by one compiled
  `adapt` for every piece. `throttle_s`: seconds to sleep after each saved
  piece.
  """
  def name(m, i):
    return f'{m}/{int(i)}'

  def same_task(key, piece):
    i = int(key.split('/')[1])
    return i < len(all_tasks) and np.allclose(piece['psi'], all_tasks[i],
                                              atol=1e-6)

  # Pieces of another evaluation set under the same name are dropped.
  saved = {k: p for k, p in read_pieces(path, settings, log).items()
           if same_task(k, p)}
  todo = [(m, int(index[j])) for m in range(len(members))
          for j in range(len(index)) if name(m, index[j]) not in saved]
  total = len(members) * len(index)
  log(f'adaptation: {total - len(todo)} of {total} piece(s) saved in {path} '
      f'(reused), {len(todo)} to run, each saved as it finishes')
  progress = pieces_lib.Pieces(total, log, scope='evaluation')
  progress.skip(total - len(todo))
  position = {int(i): j for j, i in enumerate(index)}

  def save(m, i, out, seconds):
    a0, an = float(out.a0), [float(v) for v in np.asarray(out.an)]
    saved[name(m, i)] = dict(
        a0=_finite_or_nan(a0), an=[_finite_or_nan(v) for v in an],
        psi=[float(v) for v in all_tasks[i]], seconds=round(seconds, 3),
        finished=time.strftime('%Y-%m-%dT%H:%M:%S'))
    write_json(path, dict(settings=settings, pieces=saved))
    return (f'member {m + 1}/{len(members)} ({_member(members[m])}), task '
            f'{position[i] + 1}/{len(index)}: A0 {a0:.3f}, A_n '
            + ', '.join(f'{v:.3f}' for v in an) + f' ({seconds:.1f}s)')

  pieces_lib.adapt_each(
      todo, adapt, member_state, lambda i: all_tasks[i],
      lambda m, i: pieces_lib.adaptation_key(settings['seed'], members[m][0],
                                             i), save, progress, log,
      throttle_s=throttle_s)
  a0 = np.asarray([[json_number(saved[name(m, i)]['a0']) for i in index]
                   for m in range(len(members))], np.float64)
  an = np.asarray([[[json_number(v) for v in saved[name(m, i)]['an']]
                    for i in index] for m in range(len(members))],
                  np.float64)
  for m in range(len(members)):
    log(f'member {m + 1}/{len(members)} ({_member(members[m])}): '
        f'mean A0 {np.mean(a0[m]):.3f}, mean A_n '
        + ', '.join(f'{v:.3f}' for v in np.mean(an[m], axis=0)))
  return a0, an


def _member(member) -> str:
  """'seed 0, alpha 0.5', or 'seed 0' for a member without α (a
  baseline's)."""
  seed, alpha = member
  return f'seed {seed}' if alpha is None else f'seed {seed}, alpha {alpha:g}'


def _finite_or_nan(x: float):
  return x if math.isfinite(x) else 'nan'


def _names(family):
  # Not at the top: plots imports matplotlib, loaded only for the figures
  # (`draw`).
  from admrl_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
  return list(plots.task_names(family))


def report_for_plots(report):
  """The JSON form of a report (as plot.py reads it back from eval.json)."""
  return json.loads(json.dumps(fileio.to_jsonable(report)))


def astar_note(report) -> str:
  if report['astar_budget'] is None:
    return 'A* closed form'
  return f'A* from {report["astar_budget"]} samples'


def draw(report, paths) -> None:
  """The four figures of one evaluated run (from its JSON report)."""
  # Not at the top: matplotlib loads only when drawing, its Agg backend
  # chosen first (plots imports pyplot).
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from admrl_jax.evaluation import plots  # pylint: disable=g-import-not-at-top

  label = f'{report["algo"]} ({report["env"]})'
  summary = report['summary']
  budgets = report['budgets']
  names = report['task_names']
  fig = plots.gap_heatmaps([(label, json_array(summary['Gn_mean']))],
                           json_array(report['tasks']), budgets, names,
                           title=f'{report["eval_env"]}: G_n, mean over '
                           f'{summary["members"]} member(s); '
                           f'{astar_note(report)}')
  fig.savefig(paths['gap_heatmap'], dpi=110)
  fig = plots.curves(budgets, [(label, json_array(summary['Gmax_n_mean']),
                                json_array(summary['Gmax_n_std']))],
                     'Gmax_n = max_ψ (A* − A_n)',
                     f'{report["eval_env"]}; {astar_note(report)}')
  fig.savefig(paths['gmax'], dpi=110)
  fig = plots.curves(
      [0] + budgets,
      [(label, np.concatenate([[json_number(summary['average_A0_mean'])],
                               json_array(summary['average_An_mean'])]),
        np.concatenate([[json_number(summary['average_A0_std'])],
                        json_array(summary['average_An_std'])]))],
      'average A_n (n = 0: A0)', report['eval_env'])
  fig.savefig(paths['average_return'], dpi=110)
  runs = [(f'{report["algo"]}, seed {m["seed"]}'
           + ('' if m['alpha'] is None else f', α {m["alpha"]:g}'),
           json_array(v, len(names))) for m, v in zip(report['members'],
                                                report['visited_tasks'])]
  fig = plots.visited_tasks(runs, report['train_task_low'],
                            report['train_task_high'], names,
                            eval_tasks=json_array(report['tasks']),
                            title=f'{report["env"]}: training tasks visited')
  fig.savefig(paths['visited_tasks'], dpi=110)


if __name__ == '__main__':
  app.run(main)
