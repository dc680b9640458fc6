r"""Does adaptation get worse with more real data? A_n of a study's members,
adapted again several times and measured with many episodes.

    python -m experiments.adaptation_check --study=studies/lq-controls \
        --arm=mb_unif --members=0,1,2,3 --repeats=4 --stages=1,2,3,4

The first study (docs/STUDY.md) saw every method's Gmax_n rise from n = 1000
to n = 2000 on lq. Three explanations predict different measurements:

- evaluation noise: each A_n was a mean of 10 episodes; then the spread of
  A_n between repeated measurements of the same adapted policy (its
  standard error over episodes) is as large as the rise, and the mean A_n
  does not fall;
- adaptation noise or instability (SLBO on a model that the new data moves):
  repeated adaptations of the same member and task (other keys) spread more
  at larger n, or the mean A_n falls while the model's own (virtual) return
  keeps rising — the policy exploiting the model's errors;
- a bug in the adaptation: A_n falls in expectation, for every member.

For each chosen member of `--arm` (the study's trained run) and every
evaluation task of the study, the adaptation of the study (same stage size,
VirtualTraining iterations and keys: repeat 0 is the study's own cell, so
its A_n must agree with the study's within their standard errors) runs
`--repeats` times with independent keys, for `--stages` stages, and every
return is measured with `--episodes` episodes. Pieces (member, task, repeat)
are saved as they finish into <study>/adaptation_check/<name>.json (--name,
default the arm); rerun the same command to continue. The summary
(<name>.md) gives, per n: mean A_n and
its change from the first stage with 95% t-intervals over members; the
standard deviations of the evaluation noise (a 10-episode and a
--episodes-episode mean) and of the adaptation (between repeats, evaluation
noise removed); Gmax_n of one adaptation against Gmax_n of the mean over
repeats (the maximum over tasks of noisy values is biased up); and the model's
virtual return beside the real one.
"""
from __future__ import annotations

import math
import os
import time

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from admrl_jax.evaluation import adaptation
from admrl_jax.evaluation import optimum
from experiments import astar as astar_lib
from experiments import pieces as pieces_lib
from experiments import study_design
from experiments import workdir as workdir_lib
from experiments.adaptation_analysis import markdown, summarize
from experiments.common import (UsageError, json_number, parse_seeds,
                                read_json, run_main, wait, write_json)
# pylint: enable=g-import-not-at-top,wrong-import-position

_STUDY = flags.DEFINE_string('study', None, 'A study directory '
                             '(experiments.study --workdir) whose arm is '
                             'trained.')
_ARM = flags.DEFINE_string('arm', 'mb_unif', 'The arm of the study whose '
                           'members are adapted.')
_MEMBERS = flags.DEFINE_string('members', '0,1,2,3', 'Comma list of the '
                               'seeds of the members to adapt.')
_REPEATS = flags.DEFINE_integer('repeats', 4, 'Adaptations per member and '
                                'task (repeat 0 uses the study\'s key).')
_STAGES = flags.DEFINE_string('stages', '1,2,3,4', 'A_n after these numbers '
                              'of SLBO stages of the study\'s size.')
_EPISODES = flags.DEFINE_integer('episodes', 200, 'Real episodes per '
                                 'measured return.')
_NAME = flags.DEFINE_string('name', None, 'Stem of the output files in '
                            '<study>/adaptation_check/ (default: --arm).')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)

def main(argv):
  run_main(argv, run)


def settings():
  """Flags → the check's settings; UsageError on bad input."""
  if not _STUDY.value:
    raise UsageError('--study: give a study directory')
  config = read_json(os.path.join(_STUDY.value, 'study_config.json'))
  if config is None:
    raise UsageError(f'--study {_STUDY.value}: no study_config.json there')
  if _ARM.value not in config['algos']:
    raise UsageError(f'--arm: {_ARM.value!r} is not an arm of the study '
                     f'({", ".join(config["algos"])})')
  if study_design.is_baseline(_ARM.value):
    raise UsageError(f'--arm: {_ARM.value} is a meta-RL baseline; the check '
                     'reruns the SLBO adaptation of a model-based arm')
  members = parse_seeds(_MEMBERS.value)
  bad = [s for s in members if s not in config['seeds']]
  if bad or not members or len(set(members)) != len(members):
    raise UsageError(f'--members: distinct seeds of the study '
                     f'{config["seeds"]}, got {_MEMBERS.value!r}')
  try:
    stages = [int(v) for v in _STAGES.value.split(',')]
  except ValueError:
    raise UsageError(f'--stages: comma list of integers, got '
                     f'{_STAGES.value!r}') from None
  if not stages or stages != sorted(set(stages)) or stages[0] < 1:
    raise UsageError(f'--stages: increasing integers >= 1, got '
                     f'{_STAGES.value!r}')
  if _REPEATS.value < 2:
    raise UsageError(f'--repeats must be >= 2, got {_REPEATS.value}')
  if _EPISODES.value < 2:
    raise UsageError(f'--episodes must be >= 2, got {_EPISODES.value}')
  return dict(study=config, arm=_ARM.value, members=members,
              repeats=_REPEATS.value, stages=stages,
              episodes=_EPISODES.value)


def run():
  start = time.time()
  log = common.timed_log(start)
  check = settings()
  common.enable_compilation_cache()
  runs = study_design.training_runs(check['study'])
  family, config, _, seeds, _ = runs[check['arm']]
  scale = study_design.SCALES[check['study']['scale']]
  tasks = study_design.eval_tasks(family, scale)
  stage_samples = scale.stage_envs * family.horizon
  adapt_config = adaptation.AdaptationConfig(
      stage_samples=stage_samples, stages=tuple(check['stages']),
      eval_episodes=check['episodes'])
  out_dir = os.path.join(_STUDY.value, 'adaptation_check')
  name = _NAME.value or check['arm']
  path = os.path.join(out_dir, f'{name}.json')
  blank = dict(settings={k: v for k, v in check.items() if k != 'study'},
               tasks=np.asarray(tasks, np.float64).tolist(),
               budgets=list(adapt_config.budgets), cells={})
  result = read_json(path, blank)
  if result['settings'] != blank['settings']:
    raise UsageError(f'{path} holds a check of other settings '
                     f'({result["settings"]}); move it aside')
  method = optimum.default_method(family)
  astar, _ = astar_lib.astar_values(
      family, config.slbo, tasks, method,
      None if method == 'closed_form' else scale.astar_stages * stage_samples,
      stage_samples, os.path.join(_STUDY.value, 'astar_cache.json'), 0, log)
  result['astar'] = np.asarray(astar, np.float64).tolist()

  run_dir = os.path.join(_STUDY.value, 'train', check['arm'])
  _, run_config, record = workdir_lib.load_config(run_dir)
  state, _ = workdir_lib.load_state(run_dir, family, run_config, record)
  adapter = adaptation.Adaptation(family, config.slbo, adapt_config)
  adapt = jax.jit(adapter.adapt)
  index = {}
  for j, (seed, _) in enumerate(workdir_lib.members(record)):
    index.setdefault(seed, j)
  todo = [(s, i, r) for s in check['members'] for i in range(len(tasks))
          for r in range(check['repeats'])
          if f'{s},{i},{r}' not in result['cells']]
  log(f'{len(todo)} adaptations to run ({check["arm"]}, members '
      f'{check["members"]}, {len(tasks)} tasks, {check["repeats"]} repeats, '
      f'n = {list(adapt_config.budgets)}, {check["episodes"]} episodes)')
  for count, (s, i, r) in enumerate(todo):
    t0 = time.time()
    member = jax.tree.map(lambda x, j=index[s]: x[j], state.slbo)
    # Repeat 0 is the study's key: pieces.adaptation_key(EVAL_SEED, s, i).
    key = pieces_lib.adaptation_key(study_design.EVAL_SEED, s, i)
    if r:
      key = jax.random.fold_in(key, r)
    out = wait(adapt(member, tasks[i], key))
    result['cells'][f'{s},{i},{r}'] = dict(
        a0=_num(out.a0), an=[_num(v) for v in np.asarray(out.an)],
        a0_se=_num(out.a0_se), an_se=[_num(v) for v in np.asarray(out.an_se)],
        virtual=[_num(v) for v in np.asarray(out.virtual_returns)])
    os.makedirs(out_dir, exist_ok=True)
    write_json(path, result)
    log(f'{count + 1}/{len(todo)}: seed {s}, task {i + 1}, repeat {r}: A_n '
        + ', '.join(f'{v:.2f}' for v in np.asarray(out.an))
        + f' ({time.time() - t0:.1f}s)')
  summary = summarize(result, check, _study_cells(check['arm'], seeds))
  result['summary'] = summary
  write_json(path, result)
  with open(os.path.join(out_dir, f'{name}.md'), 'w') as f:
    f.write(markdown(summary, result, check))
  log(f'wrote {path} and {name}.md')


def _num(x):
  v = float(x)
  return v if math.isfinite(v) else 'nan'


def _study_cells(arm, seeds):
  """The study's own A_n of the arm, {(seed, task): [A_n...]} (None when
  not evaluated yet)."""
  saved = read_json(os.path.join(_STUDY.value, 'eval', f'{arm}.json'))
  if saved is None:
    return None
  out = {}
  for m, member in enumerate(saved['members']):
    for i, an in enumerate(saved['an'][m]):
      if an is not None:
        out[(member['seed'], i)] = (
            [json_number(v) for v in an],
            None if saved.get('an_se') is None or saved['an_se'][m][i] is None
            else [json_number(v) for v in saved['an_se'][m][i]])
  return out, saved['budgets']


if __name__ == '__main__':
  app.run(main)
