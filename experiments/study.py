r"""AdMRL against its baselines, trained and evaluated in one resumable command.

    python -m experiments.study --env=lq --scale=smoke            # minutes
    python -m experiments.study --env=lq --scale=study            # docs/STUDY.md
    python -m experiments.study --env=hopper2d --scale=study --seeds=0,1,2
    python -m experiments.study --env=lq --scale=controls \
        --algos=mb_unif,mb_gauss,mb_vertices,mb_cem,admrl_paper,admrl

An arm of --algos is a driver algorithm with its own settings (`ARMS`):
admrl (the scale's estimator and step rule; by default the task gradient
validated against ground truth and the normalised step), admrl_paper (the
estimator and step rule of Lin et al. 2020 as written), mb_unif, mb_gauss,
mb_vertices, mb_cem, and the meta-RL baselines maml and pearl (their own
preset of the scale's preset name, experiments/baselines.py). For every arm
it trains every (seed, α) member with the driver (`experiments.training.
train`: the members of one algorithm are the lanes of one compiled program;
α only for admrl, the baselines ignore it), then adapts every member to
every task of the evaluation set — a model-based arm its trained model
(zero-shot → A0, then SLBO stages → A_n; Lin et al. 2020, Section 5), MAML
by its inner step on n real samples, PEARL by its posterior over n real
transitions — with the same keys per (seed, task), and compares the methods
with the same A* (closed form on lq, else a long SLBO run per task, cached
as each finishes). It writes into --workdir (default
studies/<env>-<scale>):

    study_config.json   the study's settings (a rerun must match them)
    train/<algo>/       the driver's run directories (checkpoints, metrics)
    eval/<algo>.json    A0 and A_n per member and task, filled in as they finish
    astar_cache.json    A* per task
    study.json          every measure per method, α and n, with intervals
    study.md            the tables, and each method's real samples of
                        (meta-)training
    figures/            gap heat maps, Gmax_n / CVaR / average A_n against n
                        (the legend gives each method's training samples),
                        Gmax_n against α, visited tasks

Measures per method and n ∈ {0 (A0)} ∪ budgets, each as mean and 95%
t-interval over seeds: Gmax_n, mean G_n, CVaR_0.25 of G_n (mean of the worst
quarter of the tasks, 3 of 9), average A_n; and the paired per-seed
difference of every gradient arm and every other arm with a 95% paired
t-interval and p-value, and a 95% bootstrap interval (not shown in study.md
below 5 seeds; a seed's members share the initial model and the first
task); the standard error of each A_n over its evaluation episodes; the
fraction of each arm's training tasks on the box's boundary. Task-gradient
diagnostics of the gradient arms: how often the next task's measured gap
exceeded the current one, the cosine between two independent estimates of
∂L/∂u at the same state (`AdMRLConfig.gradient_noise_check`), and the
lengths of the steps before the box clipped them (α‖∂L/∂u‖ under the
paper's rule, α under the normalised one).

Killing it at any moment and rerunning the same command resumes: finished
task iterations (checkpoints), evaluated tasks and A* values are kept.
Flags that contradict an existing study directory are refused (exit 2),
nothing is touched. Ctrl-C stops with one line (exit 130).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, NamedTuple, Optional

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
from admrl_jax.evaluation import metrics as metrics_lib
from admrl_jax.evaluation import optimum
from admrl_jax.evaluation import stats
from experiments import astar as astar_lib
from experiments import baselines
from experiments import pieces as pieces_lib
from experiments import presets
from experiments import training as driver
from experiments import workdir as workdir_lib
from experiments.common import (UsageError, json_number, parse_floats,
                                parse_seeds, read_json, run_main, write_json)
from experiments.study_design import (ALGOS, EVAL_SEED, SCALES, arm_sets,
                                      arm_label, eval_tasks, is_adversary,
                                      is_baseline, method_samples,
                                      reference_config, training_runs)
# pylint: enable=g-import-not-at-top,wrong-import-position

_ENV = flags.DEFINE_string('env', 'lq', 'Task family.')
_SCALE = flags.DEFINE_string(
    'scale', 'smoke', f'{" | ".join(SCALES)} (experiments/study_design.py '
    '`SCALES`: the sizes of each).')
_ALGOS = flags.DEFINE_string(
    'algos', 'admrl,mb_unif,mb_gauss', 'Comma list of the arms to compare: '
    f'{", ".join(ALGOS)} (maml and pearl: the meta-RL baselines).')
_SEEDS = flags.DEFINE_string('seeds', None,
                             'Comma list of seeds (default: the scale\'s).')
_ALPHA = flags.DEFINE_string(
    'alpha', None, 'Comma list of task step sizes α of every gradient arm '
    '(admrl, admrl_paper; default: the scale\'s factors times the arm\'s '
    'default α); the other arms do not use α.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Study directory (default studies/<env>-<scale>).')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_FAMILY_MODULE = flags.DEFINE_string(
    'family_module', None, 'Comma list of modules to import first, e.g. '
    'my_pkg.tasks, which envs.register()s the --env family.')
_STOP_AFTER = flags.DEFINE_integer(
    'stop_after_pieces', None, 'Stop cleanly after this many pieces (task '
    'iterations, evaluated tasks, A* values); rerun to continue.')


def main(argv):
  run_main(argv, run)


# ---------------------------------------------------------------- settings
def study_settings():
  """Flags → the study's settings (a dict, saved as study_config.json)."""
  if _SCALE.value not in SCALES:
    raise UsageError(f'--scale: unknown scale {_SCALE.value!r}; valid: '
                     f'{", ".join(SCALES)}')
  scale = SCALES[_SCALE.value]
  algos = [a.strip() for a in _ALGOS.value.split(',')]
  bad = [a for a in algos if a not in ALGOS]
  if bad or not algos or len(set(algos)) != len(algos):
    raise UsageError(f'--algos: expected distinct names among '
                     f'{", ".join(ALGOS)}, got {_ALGOS.value!r}')
  seeds = (list(scale.seeds) if _SEEDS.value is None
           else parse_seeds(_SEEDS.value))
  if len(set(seeds)) != len(seeds):
    raise UsageError(f'--seeds: repeated seed in {_SEEDS.value!r}')
  alphas = (None if _ALPHA.value is None
            else parse_floats(_ALPHA.value, 'alpha'))
  if alphas is not None and any(not a > 0 for a in alphas):
    raise UsageError(f'--alpha: step sizes must be > 0, got {_ALPHA.value!r}')
  per_arm = {}
  for arm in algos:
    if not is_adversary(arm):
      continue
    if alphas is not None:
      per_arm[arm] = list(alphas)
      continue
    if _ENV.value not in envs.names():
      raise UsageError(f'--env: unknown environment {_ENV.value!r}; valid: '
                       f'{", ".join(envs.names())}')
    base = presets.default_alpha(_ENV.value, presets.apply_overrides(
        presets.preset(_ENV.value, scale.preset)[0], arm_sets(scale, arm)))
    per_arm[arm] = [round(f * base, 6) for f in scale.alpha_factors]
  return dict(env=_ENV.value, scale=_SCALE.value, algos=algos, seeds=seeds,
              alphas=per_arm)


def check_study_dir(workdir, settings):
  """Refuses a study directory of other settings (nothing is touched)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f'--workdir {workdir} exists and is not a directory')
  saved = read_json(os.path.join(workdir, 'study_config.json'))
  if saved is None:
    return
  diffs = [f'{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}'
           for k in sorted(set(saved) | set(settings))
           if saved.get(k) != settings.get(k)]
  if diffs:
    raise UsageError(f'--workdir {workdir} holds a study of other settings '
                     f'({"; ".join(diffs)}); use the same flags to resume or '
                     'another --workdir')


# --------------------------------------------------------------------- run
def run():
  """Flags → the study in --workdir: every arm trained, A* and every
  member's adaptations measured (each piece saved as it finishes), then
  study.json, study.md and the figures."""
  start = time.time()
  log = common.timed_log(start)

  common.import_family_modules(_FAMILY_MODULE.value)
  settings = study_settings()
  workdir = _WORKDIR.value or os.path.join(
      'studies', f'{settings["env"]}-{settings["scale"]}')
  check_study_dir(workdir, settings)
  runs = training_runs(settings)
  scale = SCALES[settings['scale']]

  common.enable_compilation_cache()
  os.makedirs(workdir, exist_ok=True)
  write_json(os.path.join(workdir, 'study_config.json'), settings)

  plan = study_plan(settings, runs, scale)
  members = {algo: [(s, a) for s in r[3] for a in r[2]]
             for algo, r in runs.items()}
  log(f'study of {", ".join(settings["algos"])} on {settings["env"]} '
      f'({settings["scale"]} scale) in {workdir}: seeds {settings["seeds"]}, '
      f'alphas {settings["alphas"]}; {len(plan.tasks)} evaluation tasks, '
      f'A_n at n = {list(plan.adapt_config.budgets)}, A* {plan.method}'
      + (f' ({plan.astar_budget} real samples per task)'
         if plan.astar_budget else ''))
  pieces = pieces_lib.Pieces(total_units(runs, members, plan, scale), log,
                             scope='study', stop_after=_STOP_AFTER.value)
  try:
    astar, evaluations = run_pieces(runs, members, plan, scale, workdir,
                                    pieces, log)
  except pieces_lib.StopRun:
    log(f'stopped after {pieces.count} piece(s) (--stop_after_pieces); '
        'rerun the same command to continue')
    return
  report = summarize(settings, runs, members, plan.tasks, plan.adapt_config,
                     astar, plan.method, plan.astar_budget, evaluations,
                     workdir)
  write_outputs(report, runs, workdir, log)
  timings = read_json(os.path.join(workdir, 'timings.json'), {})
  timings[f'session_{time.strftime("%Y-%m-%dT%H:%M:%S")}'] = round(
      time.time() - start, 1)
  write_json(os.path.join(workdir, 'timings.json'), timings)


class StudyPlan(NamedTuple):
  """How the arms are evaluated (`study_plan`).

  Attributes:
    family, config: the first arm's family (the arms share it) and the
      reference config, whose SLBO settings A* and the model-based
      adaptation use.
    tasks: the evaluation tasks (t, k).
    stage_samples: real samples per adaptation stage.
    adapt_config: the `adaptation.AdaptationConfig` of A0 and A_n.
    method: how A* is measured ('closed_form' or 'slbo').
    astar_budget: A*'s real samples per task (None for the closed form).
  """
  family: Any
  config: Any
  tasks: Any
  stage_samples: int
  adapt_config: Any
  method: str
  astar_budget: Optional[int]


def study_plan(settings, runs, scale) -> StudyPlan:
  """The study's evaluation tasks, adaptation and A* (`StudyPlan`): the
  arms share the family (`training_runs` checks); A* and the model-based
  adaptation use the scale's SLBO settings."""
  family0 = runs[settings['algos'][0]][0]
  config0 = reference_config(settings)
  tasks = eval_tasks(family0, scale)
  stage_samples = scale.stage_envs * family0.horizon
  adapt_config = adaptation.AdaptationConfig(
      stage_samples=stage_samples, stages=scale.stages,
      eval_episodes=scale.eval_episodes)
  method = optimum.default_method(family0)
  astar_budget = (None if method == 'closed_form'
                  else scale.astar_stages * stage_samples)
  return StudyPlan(family0, config0, tasks, stage_samples, adapt_config,
                   method, astar_budget)


# Work in VirtualTraining iterations, for the ETA (an iteration of a
# meta-RL baseline, and its adaptation to a task, count as one).
def train_units(config, n_members) -> float:
  """The work of training an arm's `n_members` members."""
  if baseline_config(config):
    return n_members * config.n_iterations
  s = config.slbo
  per_task = s.n_zeroshot + config.n_slbo * s.n_inner
  return n_members * per_task * config.n_tasks


def adapt_units(algo, plan: StudyPlan, scale) -> float:
  """The work of adapting one member of arm `algo` to one task."""
  if is_baseline(algo):
    return 1
  return (plan.config.slbo.n_zeroshot
          + scale.stages[-1] * plan.config.slbo.n_inner)


def total_units(runs, members, plan: StudyPlan, scale) -> float:
  """The study's work: training, adaptation and A*'s SLBO runs."""
  total = sum(train_units(r[1], len(members[a])) for a, r in runs.items())
  total += sum(len(m) * len(plan.tasks) * adapt_units(a, plan, scale)
               for a, m in members.items())
  n_astar = (0 if plan.method == 'closed_form'
             else len(plan.tasks) + scale.astar_repeats)
  return total + n_astar * scale.astar_stages * plan.config.slbo.n_inner


def run_pieces(runs, members, plan: StudyPlan, scale, workdir, pieces, log):
  """Every piece of the study in turn: training, A*, the evaluations;
  returns (A*, {algo: evaluation}). `pieces.StopRun` after
  --stop_after_pieces."""
  for algo, (family, config, alphas, seeds, record) in runs.items():
    train(algo, family, config, alphas, seeds, record, workdir, pieces,
          train_units(config, len(members[algo])) / iterations(config), log)
  astar = astar_values(plan.family, plan.config, plan.tasks, plan.method,
                       plan.astar_budget, plan.stage_samples, scale, workdir,
                       pieces, log)
  evaluations = {}
  for algo, (family, config, _, _, _) in runs.items():
    evaluations[algo] = evaluate(algo, family, config, members[algo],
                                 plan.tasks, plan.adapt_config, workdir,
                                 pieces, adapt_units(algo, plan, scale), log,
                                 hooks.THROTTLE_S.value)
  return astar, evaluations


def write_outputs(report, runs, workdir, log) -> None:
  """study.json, study.md and the figures, with a line."""
  write_json(os.path.join(workdir, 'study.json'), report)
  with open(os.path.join(workdir, 'study.md'), 'w') as f:
    f.write(markdown(report))
  draw(report, runs, workdir)
  log(f'wrote {os.path.join(workdir, "study.json")}, study.md and figures/')


def iterations(config) -> int:
  """The iterations of an arm's training run: task iterations, or a
  meta-RL baseline's own (`baselines.Baseline.n_iterations`)."""
  return config.n_iterations if baseline_config(config) else config.n_tasks


def baseline_config(config) -> bool:
  """Whether an arm's resolved config is a meta-RL baseline's."""
  return baselines.is_baseline(config)


def train(algo, family, config, alphas, seeds, record, workdir, pieces,
          units_per_task, log):
  """Trains (or resumes) one algorithm's members; one piece of `pieces`
  per task iteration, or per iteration of a meta-RL baseline."""
  run_dir = os.path.join(workdir, 'train', algo)
  done = checkpoints.Manager(os.path.join(run_dir, 'checkpoints')
                             ).latest_step() if os.path.isdir(run_dir) else None
  done = done or 0
  pieces.skip(done * units_per_task)
  n = iterations(config)
  if done >= n:
    return

  def train_log(message):
    # The driver's compile lines pass through (a minute of silence
    # otherwise); its lines per iteration come through `pieces`, whose
    # StopRun stops between two checkpoints.
    if 'compiling' in message or message.startswith('compiled in'):
      log(f'{algo}: {message}')

  driver.train(family, config, alphas, seeds, dict(record), run_dir,
               train_log, phase_progress=False,
               pieces=pieces_lib.Labelled(pieces, f'{algo}: '),
               piece_units=lambda i: units_per_task)
  log(f'{algo}: trained {n} '
      + (f'iterations ({len(seeds)} seed(s))' if is_baseline(algo) else
         f'task iterations ({len(seeds)} seed(s) x {len(alphas)} '
         'alpha(s))'))


def astar_values(family, config, tasks, method, budget, stage_samples, scale,
                 workdir, pieces, log):
  """A* per task (closed form, or cached SLBO runs) and the repeats that
  measure its noise: {'values': (t,), 'repeats': [...]}."""
  cache = os.path.join(workdir, 'astar_cache.json')
  units = scale.astar_stages * config.slbo.n_inner

  values, _ = astar_lib.astar_values(
      family, config.slbo, tasks, method, budget, stage_samples, cache, 0,
      log, progress=pieces, units=units,
      line=lambda i, value, seconds: (f'A* of task {i + 1}/{len(tasks)}: '
                                      f'{value:.2f} ({seconds:.1f}s)'))
  repeats = []
  if method != 'closed_form' and scale.astar_repeats:
    # The same tasks with another seed: A*'s own noise.
    idx = np.linspace(0, len(tasks) - 1, scale.astar_repeats).round()
    idx = sorted(set(int(i) for i in idx))
    again, _ = astar_lib.astar_values(
        family, config.slbo, tasks[idx], method, budget, stage_samples,
        cache, 1, log, progress=pieces, units=units,
        line=lambda j, value, seconds: (
            f'A* of task {idx[j] + 1}/{len(tasks)} again (seed 1): '
            f'{value:.2f} ({seconds:.1f}s)'), tag='repeat1')
    repeats = [dict(task=i, psi=[float(v) for v in tasks[i]],
                    astar=float(values[i]), astar_repeat=float(b))
               for i, b in zip(idx, again)]
  return dict(values=values, repeats=repeats)


def evaluate(algo, family, config, members, tasks, adapt_config, workdir,
             pieces, units, log, throttle_s=0.0):
  """A0 and A_n of every member on every task, one task at a time; each
  result is saved as it finishes (eval/<algo>.json), then `throttle_s`
  seconds are slept. A model-based arm adapts its model
  (`Adaptation.adapt`), a meta-RL baseline by its own rule
  (`baselines.Evaluator`: MAML's inner step, PEARL's posterior), with the
  same keys, tasks and evaluation episodes."""
  path = os.path.join(workdir, 'eval', f'{algo}.json')
  blank = dict(members=[dict(seed=s, alpha=a) for s, a in members],
               tasks=np.asarray(tasks, np.float64).tolist(),
               budgets=list(adapt_config.budgets),
               a0=[[None] * len(tasks) for _ in members],
               an=[[None] * len(tasks) for _ in members],
               a0_se=[[None] * len(tasks) for _ in members],
               an_se=[[None] * len(tasks) for _ in members])
  result = read_json(path, blank)
  for k in ('a0_se', 'an_se'):  # absent from evaluations of older versions
    result.setdefault(k, blank[k])
  if (result['members'] != blank['members']
      or not np.allclose(result['tasks'], blank['tasks'])
      or result['budgets'] != blank['budgets']):
    raise UsageError(f'{path} holds another evaluation; move it aside')
  todo = [(m, i) for m in range(len(members)) for i in range(len(tasks))
          if result['a0'][m][i] is None]
  pieces.skip((len(members) * len(tasks) - len(todo)) * units)
  if not todo:
    return result
  run_dir = os.path.join(workdir, 'train', algo)
  _, run_config, record = workdir_lib.load_config(run_dir)
  state, _ = workdir_lib.load_state(run_dir, family, run_config, record)
  if baselines.is_baseline(run_config):
    evaluator = baselines.Evaluator(
        family, run_config, adapt_config.budgets,
        adapt_config.eval_episodes
        or adapt_config.stage_samples // family.horizon)
    adapt = evaluator.adapt

    def member_state(m):
      return evaluator.member_params(state, m)
  else:
    adapter = adaptation.Adaptation(family, config.slbo, adapt_config)
    adapt = adapter.adapt

    def member_state(m):
      return jax.tree.map(lambda x: x[m], state.slbo)
  log(f'{algo}: evaluating {len(todo)} (member, task) piece(s)')

  def save(m, i, out, seconds):
    a0, an = float(out.a0), [float(v) for v in np.asarray(out.an)]
    result['a0'][m][i] = a0 if math.isfinite(a0) else 'nan'
    result['an'][m][i] = [v if math.isfinite(v) else 'nan' for v in an]
    result['a0_se'][m][i] = json_safe(float(out.a0_se))
    result['an_se'][m][i] = [json_safe(float(v)) for v in np.asarray(out.an_se)]
    write_json(path, result)
    seed, alpha = members[m]
    who = f'seed {seed}' + ('' if alpha is None else f', alpha {alpha:g}')
    return (f'member {m + 1}/{len(members)} ({who}), task {i + 1}/'
            f'{len(tasks)}: A0 {a0:.2f}, A_n '
            + ', '.join(f'{v:.2f}' for v in an) + f' ({seconds:.1f}s)')

  # Keyed by (seed, task), not by member: methods are paired per seed.
  pieces_lib.adapt_each(
      todo, adapt, member_state, lambda i: tasks[i],
      lambda m, i: pieces_lib.adaptation_key(EVAL_SEED, members[m][0], i),
      save, pieces_lib.Labelled(pieces, f'{algo} '),
      lambda message: log(f'{algo}: {message}'),
      units=lambda m, i: units, throttle_s=throttle_s)
  return result


# ---------------------------------------------------------------- summary
def summarize(settings, runs, members, tasks, adapt_config, astar, method,
              astar_budget, evaluations, workdir):
  """Every measure of the study as a JSON-able dict (no wall times: a
  resumed study gives the same study.json as an uninterrupted one)."""
  budgets = [0] + list(adapt_config.budgets)
  astar_v = np.asarray(astar['values'], np.float64)
  methods = {}   # label -> per-seed arrays
  for algo, result in evaluations.items():
    samples = _final_real_samples(workdir, algo)
    a0 = np.asarray([[json_number(v) for v in row] for row in result['a0']])
    an = np.asarray([[[json_number(v) for v in cell] for cell in row]
                     for row in result['an']])
    returns = np.concatenate([a0[:, :, None], an], axis=-1)  # (m, t, 1 + b)
    se = _standard_errors(result)
    alphas = sorted({a for _, a in members[algo]})
    for alpha in alphas:
      idx = [j for j, (_, a) in enumerate(members[algo]) if a == alpha]
      label = arm_label(algo, alpha)
      r = returns[idx]
      gn = astar_v[None, :, None] - r                            # (s, t, b+1)
      methods[label] = dict(
          algo=algo, alpha=alpha if is_adversary(algo) else None,
          real_samples=[samples.get(members[algo][j]) for j in idx],
          an_se=None if se is None else se[idx],
          seeds=[members[algo][j][0] for j in idx], returns=r, gn=gn,
          per_seed=dict(Gmax_n=gn.max(axis=1), mean_Gn=gn.mean(axis=1),
                        CVaR_Gn=stats.cvar(gn, CVAR_LEVEL, axis=1),
                        average_An=r.mean(axis=1)))
  table = {}
  for label, m in methods.items():
    table[label] = {name: {k: np.asarray(v).tolist() if k != 'n' else v
                           for k, v in stats.mean_ci(values).items()}
                    for name, values in m['per_seed'].items()}
  paired = {}
  labels = list(methods)
  for i, label in enumerate(labels):
    m = methods[label]
    if not is_adversary(m['algo']):
      continue
    for j, base_label in enumerate(labels):
      b = methods[base_label]
      # Every gradient arm against every other arm, each pair once.
      if (base_label == label or b['seeds'] != m['seeds']
          or (is_adversary(b['algo']) and j < i)):
        continue
      paired[f'{label} − {base_label}'] = {
          name: _paired(m['per_seed'][name], b['per_seed'][name])
          for name in m['per_seed']}
  report = dict(
      settings=settings, env=settings['env'], scale=settings['scale'],
      budgets=budgets, tasks=np.asarray(tasks, np.float64).tolist(),
      astar_method=method, astar_budget=astar_budget,
      astar=astar_v.tolist(), astar_repeats=astar['repeats'],
      negative_gaps={label: int(np.sum(m['gn'] < 0))
                     for label, m in methods.items()},
      real_samples=_real_samples(workdir, runs),
      eval_episodes=(adapt_config.eval_episodes or adapt_config.stage_samples
                     // next(iter(runs.values()))[0].horizon),
      methods={label: dict(algo=m['algo'], alpha=m['alpha'], seeds=m['seeds'],
                           real_samples=m['real_samples'],
                           Gn_mean=m['gn'].mean(axis=0).tolist(),
                           An_se_quantiles=(
                               None if m['an_se'] is None else
                               [stats.quantiles(m['an_se'][..., j].ravel())
                                for j in range(len(budgets))]),
                           per_seed={k: np.asarray(v).tolist()
                                     for k, v in m['per_seed'].items()})
               for label, m in methods.items()},
      table=table, paired=paired,
      diagnostics=diagnostics(workdir, runs),
      boundary_fraction=boundary_fractions(workdir, runs))
  return fileio.to_jsonable(report)


def _standard_errors(result):
  """The standard errors of A0 and A_n of an evaluation,
  (members, tasks, 1 + budgets), NaN where not measured; None when the
  evaluation predates them."""
  if any(v is None for row in result['a0_se'] for v in row):
    return None
  a0 = np.asarray([[json_number(v) for v in row] for row in result['a0_se']])
  an = np.asarray([[[json_number(v) for v in cell] for cell in row]
                   for row in result['an_se']])
  return np.concatenate([a0[:, :, None], an], axis=-1)


def json_safe(value: float):
  """A float for JSON: 'nan' for a non-finite value (read back by
  `json_number`)."""
  return value if math.isfinite(value) else 'nan'


def _metrics_lines(workdir, algo):
  path = os.path.join(workdir, 'train', algo, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _final_real_samples(workdir, algo):
  """{(seed, α): the real environment steps of that member's training run
  at its last iteration} (`real_samples` of metrics.jsonl: a meta-RL
  baseline's meta-training samples, AdMRL's dataset and task-gradient
  roll-outs)."""
  out = {}
  for line in _metrics_lines(workdir, algo):
    member = (line['seed'], line['alpha'])
    out[member] = max(out.get(member, 0), line['real_samples'])
  return out


def _real_samples(workdir, runs):
  out = {}
  for algo in runs:
    lines = _metrics_lines(workdir, algo)
    if lines:
      out[algo] = max(line['real_samples'] for line in lines)
  return out


def _paired(a, b):
  """The paired t-interval and p-value (keys of `stats.paired_t`) and the
  bootstrap interval (`boot_lo`, `boot_hi`, `p_below_zero`) of a − b."""
  out = {k: np.asarray(v).tolist() if k != 'n' else v
         for k, v in stats.paired_t(a, b).items()}
  boot = stats.paired_bootstrap(a, b)
  out.update(boot_lo=np.asarray(boot['lo']).tolist(),
             boot_hi=np.asarray(boot['hi']).tolist(),
             p_below_zero=np.asarray(boot['p_below_zero']).tolist())
  return out


def diagnostics(workdir, runs):
  """Task-gradient diagnostics of every gradient arm, per α (from its
  metrics.jsonl), keyed by the arm's label ('admrl α=0.5')."""
  out = {}
  for arm, run in runs.items():
    if not is_adversary(arm):
      continue
    lines = _metrics_lines(workdir, arm)
    normalized = run[1].step_rule == 'normalized'
    for alpha in sorted({line['alpha'] for line in lines}):
      rows = [line for line in lines if line['alpha'] == alpha]
      out[arm_label(arm, alpha)] = _gradient_diagnostics(rows, alpha,
                                                         normalized)
  return out


def _gradient_diagnostics(rows, alpha, normalized):
  by_seed = {}
  for line in rows:
    by_seed.setdefault(line['seed'], []).append(line)
  raised, pairs, steps, clipped, cosines, norms = 0, 0, [], 0, [], []
  for seq in by_seed.values():
    seq = sorted(seq, key=lambda r: r['task_index'])
    for a, b in zip(seq, seq[1:]):
      if a['gap'] is not None and b['gap'] is not None and a['grad_accepted']:
        pairs += 1
        raised += int(b['gap'] > a['gap'])
    for r in seq:
      if r['gap'] is None or r['grad_u'] is None:
        continue
      g = np.asarray([json_number(v) for v in r['grad_u']])
      if not r['grad_accepted']:
        continue
      norms.append(float(np.linalg.norm(g)))
      step = alpha * g / (np.linalg.norm(g) if normalized else 1.0)
      steps.append(float(np.linalg.norm(step)))
      raw = np.asarray(r['u']) + step
      clipped += int(np.any(np.abs(raw) > 1.0))
      if r.get('grad_u_repeat') is not None:
        rep = np.asarray([json_number(v) for v in r['grad_u_repeat']])
        cosines.append(float(stats.cosine(g, rep)))
  return dict(
      steps=len(steps),
      gap_raised_fraction=(raised / pairs) if pairs else None,
      gap_pairs=pairs,
      grad_norm_quantiles=stats.quantiles(norms),
      step_length_quantiles=stats.quantiles(steps),
      clipped_fraction=(clipped / len(steps)) if steps else None,
      repeat_cosine_quantiles=stats.quantiles(cosines),
      repeat_cosine_mean=(float(np.nanmean(cosines)) if cosines else None))


def boundary_fractions(workdir, runs):
  """{label: fraction of the training tasks after the first (every seed)
  on the boundary of the box (some |u_j| ≥ 0.999)}: how much of each arm's
  training happened on faces, edges and corners."""
  out = {}
  for arm in runs:
    groups = {}
    for line in _metrics_lines(workdir, arm):
      # A meta-RL baseline's lines have no task (MAML draws a batch per
      # iteration, PEARL a fixed set).
      if line.get('u') is None or line['task_index'] < 1:
        continue
      u = np.asarray([json_number(v) for v in line['u']])
      groups.setdefault(arm_label(arm, line['alpha']), []).append(
          bool(np.any(np.abs(u) >= 0.999)))
    for label, flags_ in groups.items():
      out[label] = float(np.mean(flags_))
  return out


# ---------------------------------------------------------------- output
def _fmt_ci(cell, j):
  m, lo, hi = cell['mean'][j], cell['lo'][j], cell['hi'][j]
  if m is None:
    return 'n/a'
  if lo is None or hi is None:
    return f'{m:.3g}'
  return f'{m:.3g} [{lo:.3g}, {hi:.3g}]'


# CVaR of G_n over tasks at a level of more than one task (on a 3 × 3 grid
# the worst ⌈0.25·9⌉ = 3 tasks; at 0.1 it was Gmax_n again).
CVAR_LEVEL = 0.25
def _fmt_paired(cell, j, few):
  text = _fmt_ci(cell, j)
  p = cell.get('p_value')
  if p is not None and p[j] is not None:
    text += f' (p = {p[j]:.2g})'
  if not few and cell.get('boot_lo') is not None:
    lo, hi = cell['boot_lo'][j], cell['boot_hi'][j]
    if lo is not None and hi is not None:
      text += f'; boot. [{lo:.3g}, {hi:.3g}]'
  return text


MEASURES = (('Gmax_n', 'Gmax_n'), ('CVaR_Gn', 'CVaR₀.₂₅ G_n'),
            ('mean_Gn', 'mean G_n'), ('average_An', 'average A_n'))


def markdown(report) -> str:
  """study.md: the tables of a report, section by section."""
  lines = []
  for section in (_md_header, _md_real_samples, _md_measures, _md_paired,
                  _md_negative_gaps, _md_astar_repeats, _md_boundary,
                  _md_diagnostics):
    lines += section(report)
  return '\n'.join(lines)


def _md_header(report):
  """The title and the study's settings."""
  lines = [f'# Study: {report["env"]}, {report["scale"]} scale', '']
  s = report['settings']
  lines += [f'Seeds {s["seeds"]}; algorithms {", ".join(s["algos"])}; '
            f'{len(report["tasks"])} evaluation tasks; A* '
            + ('closed form' if report['astar_budget'] is None else
               f'from {report["astar_budget"]} real samples per task')
            + f'; real samples per training run: {report["real_samples"]}.',
            '', 'Mean over seeds [95% t-interval]; n = 0 is zero-shot (A0).',
            '']
  return lines


def _md_real_samples(report):
  """Each method's real samples of training, and the standard errors of
  the A_n."""
  lines = ['## Real samples of training', '',
           'Real environment steps of each method\'s (meta-)training run, '
           'per seed: its `real_samples` after the last iteration (AdMRL '
           'and the model-based arms: the dataset\'s and the task '
           'gradient\'s roll-outs; MAML: every pre- and post-update '
           'episode; PEARL: every collected transition). Mean over seeds '
           '[min, max].', '', '| method | real samples |', '|---|---|']
  lines += [f'| {label} | {method_samples(m)} |'
            for label, m in report['methods'].items()]
  lines.append('')
  se_rows = [(label, m['An_se_quantiles'])
             for label, m in report['methods'].items()
             if m.get('An_se_quantiles')]
  if se_rows:
    worst = [max(q[4] for q in qs if q is not None) for _, qs in se_rows
             if any(q is not None for q in qs)]
    median = [q[2] for _, qs in se_rows for q in qs if q is not None]
    lines += [f'Each A_n is the mean real return of {report["eval_episodes"]} '
              'episodes of the adapted mean policy; its standard error over '
              'those episodes (the measurement\'s own noise, per member and '
              f'task) has median {sorted(median)[len(median) // 2]:.3g} and '
              f'maximum {max(worst):.3g} over every method and n.', '']
  return lines


def _md_measures(report):
  """A table per measure: each method's mean and interval per n."""
  lines = []
  budgets = report['budgets']
  for key, title in MEASURES:
    lines += [f'## {title}', '',
              '| method | ' + ' | '.join(f'n = {b}' for b in budgets) + ' |',
              '|---|' + '---|' * len(budgets)]
    for label, row in report['table'].items():
      lines.append(f'| {label} | ' + ' | '.join(
          _fmt_ci(row[key], j) for j in range(len(budgets))) + ' |')
    lines.append('')
  return lines


def _md_paired(report):
  """The paired differences of every gradient arm and every other arm."""
  if not report['paired']:
    return []
  budgets = report['budgets']
  n_seeds = len(report['settings']['seeds'])
  few = n_seeds < stats.MIN_BOOTSTRAP_SEEDS
  lines = ['## Paired differences, gradient arm − other arm (per seed)', '',
           'Mean difference [95% paired t-interval] (two-sided p of a '
           'paired t-test); '
           + (f'with {n_seeds} seeds a bootstrap has too few distinct '
              'resamples, so its interval is not shown. ' if few else
              'then the 95% bootstrap interval. ')
           + 'Negative Gmax_n, CVaR or mean G_n differences favour '
           'the first arm.', '']
  for key, title in MEASURES:
    lines += [f'### {title}', '',
              '| comparison | ' + ' | '.join(f'n = {b}' for b in budgets)
              + ' |', '|---|' + '---|' * len(budgets)]
    for label, row in report['paired'].items():
      lines.append(f'| {label} | ' + ' | '.join(
          _fmt_paired(row[key], j, few) for j in range(len(budgets)))
                   + ' |')
    lines.append('')
  return lines


def _md_negative_gaps(report):
  """How many cells have A_n above A*, and the likely cause."""
  if not any(report['negative_gaps'].values()):
    return []
  cause = ('the noise of A_n, a mean over a few episodes, around a '
           'closed-form A*' if report['astar_budget'] is None else
           'A* underestimated by its budget, or the noise of A_n')
  return [f'Cells (seed × task × n) with G_n < 0, i.e. A_n above A* '
          f'({cause}): '
          + ', '.join(f'{k}: {v}' for k, v in
                      report['negative_gaps'].items()), '']


def _md_astar_repeats(report):
  """A* of some tasks again, with another seed."""
  if not report['astar_repeats']:
    return []
  lines = ['## A* noise (same task, another seed)', '',
           '| ψ | A* | A* again |', '|---|---|---|']
  for r in report['astar_repeats']:
    lines.append(f'| {", ".join(f"{v:.3g}" for v in r["psi"])} | '
                 f'{r["astar"]:.4g} | {r["astar_repeat"]:.4g} |')
  lines.append('')
  return lines


def _md_boundary(report):
  """The fraction of each arm's training tasks on the box's boundary."""
  if not report.get('boundary_fraction'):
    return []
  return ['## Training tasks on the box\'s boundary', '',
          'Fraction of the training tasks after the first (every seed) '
          'with some |u_j| ≥ 0.999: ' + ', '.join(
              f'{k} {v:.2f}' for k, v in
              report['boundary_fraction'].items()) + '.', '']


def _md_diagnostics(report):
  """The task-gradient diagnostics of the gradient arms."""
  if not report['diagnostics']:
    return []
  lines = ['## Task-gradient diagnostics (gradient arms)', '',
           '| arm | steps | next gap > current | ‖∂L/∂u‖ median [min, max] '
           '| step length ‖Δu‖ median [min, max] | step clipped by the box '
           '| cosine of two estimates, mean (median) |',
           '|---|---|---|---|---|---|---|']

  def q(v):
    return 'n/a' if v is None else f'{v[2]:.3g} [{v[0]:.3g}, {v[4]:.3g}]'

  for label, d in report['diagnostics'].items():
    frac = d['gap_raised_fraction']
    cos_q = d['repeat_cosine_quantiles']
    lines.append(
        f'| {label} | {d["steps"]} | '
        + ('n/a' if frac is None else f'{frac:.2f} of {d["gap_pairs"]}')
        + f' | {q(d["grad_norm_quantiles"])} | '
        f'{q(d["step_length_quantiles"])} | '
        + ('n/a' if d['clipped_fraction'] is None
           else f'{d["clipped_fraction"]:.2f}')
        + ' | ' + ('n/a' if d['repeat_cosine_mean'] is None else
                   f'{d["repeat_cosine_mean"]:.2f} ({cos_q[2]:.2f})')
        + ' |')
  lines.append('')
  return lines


def draw(report, runs, workdir) -> None:
  """The study's figures under <workdir>/figures/."""
  # Not at the top: matplotlib loads only when drawing, its Agg backend
  # chosen first (plots imports pyplot).
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from admrl_jax.evaluation import plots  # pylint: disable=g-import-not-at-top

  out = os.path.join(workdir, 'figures')
  os.makedirs(out, exist_ok=True)
  family = next(iter(runs.values()))[0]
  names = plots.task_names(family)
  budgets = report['budgets']
  tasks = np.asarray(report['tasks'])
  note = ('A* closed form' if report['astar_budget'] is None
          else f'A* from {report["astar_budget"]} samples')
  rows = [(label, fileio.from_jsonable(m['Gn_mean']))
          for label, m in report['methods'].items()]
  fig = plots.gap_heatmaps(rows, tasks, budgets, names,
                           title=f'{report["env"]}: G_n, mean over seeds; '
                           f'{note}')
  fig.savefig(os.path.join(out, 'gap_heatmaps.png'), dpi=100)
  for key, title in MEASURES:
    lines = []
    for label, row in report['table'].items():
      mean = fileio.from_jsonable(row[key]['mean'])
      half = mean - fileio.from_jsonable(row[key]['lo'])
      # The legend says what each method spent on (meta-)training.
      samples = method_samples(report['methods'][label])
      lines.append((f'{label} ({samples} real samples in training)', mean,
                    half))
    fig = plots.curves(budgets, lines, f'{title} (95% interval over seeds)',
                       f'{report["env"]}; {note}')
    fig.savefig(os.path.join(out, f'{key}.png'), dpi=100)
  alphas = [(m['alpha'], label) for label, m in report['methods'].items()
            if is_adversary(m['algo'])]
  if len(alphas) > 1 and len({label.split(' ')[0] for _, label in alphas}) == 1:
    fig = Figure(figsize=(5.0, 3.6), layout='constrained')
    ax = fig.subplots()
    alphas.sort()
    for j, b in enumerate(budgets):
      mean = [report['table'][label]['Gmax_n']['mean'][j] for _, label in alphas]
      ax.plot([a for a, _ in alphas], [np.nan if v is None else v
                                       for v in mean], marker='o',
              label=f'n = {b}')
    for label, m in report['methods'].items():
      if not is_adversary(m['algo']):
        v = report['table'][label]['Gmax_n']['mean'][0]
        if v is not None:
          ax.axhline(v, linestyle='--', linewidth=0.8, color='0.4')
          ax.annotate(f'{label}, n = 0', (alphas[0][0], v), fontsize=7)
    ax.set_xscale('log')
    ax.set_xlabel('task step size α')
    ax.set_ylabel('Gmax_n (mean over seeds)')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f'{report["env"]}: AdMRL Gmax_n against α', fontsize=9)
    fig.savefig(os.path.join(out, 'gmax_vs_alpha.png'), dpi=100)
  visited = []
  for algo in runs:
    for line in _metrics_lines(workdir, algo):
      if (line['seed'] == report['settings']['seeds'][0]
          and line.get('psi') is not None):
        label = arm_label(algo, line['alpha'])
        visited.append((label, line['task_index'], line['psi']))
  labels = list(dict.fromkeys(v[0] for v in visited))
  runs_v = [(f'{label}, seed {report["settings"]["seeds"][0]}',
             np.asarray([p for lab, _, p in sorted(
                 (v for v in visited if v[0] == label), key=lambda v: v[1])],
                        np.float64)) for label in labels]
  if runs_v:
    fig = plots.visited_tasks(runs_v, family.task_low, family.task_high,
                              names, eval_tasks=tasks,
                              title=f'{report["env"]}: training tasks visited')
    fig.savefig(os.path.join(out, 'visited_tasks.png'), dpi=100)


if __name__ == '__main__':
  app.run(main)
