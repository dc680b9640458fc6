"""The design of a study (experiments/study.py): its arms, its scales, its
evaluation tasks and keys. No flags, so that other scripts
(experiments/adaptation_check.py) can read a study's design."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

from admrl_jax.envs import base
from experiments import presets
from experiments import training as driver
from experiments.common import UsageError


@dataclasses.dataclass(frozen=True)
class Arm:
  """One method of a study: a driver algorithm with its own `--set`s.

  Attributes:
    algo: the driver's `--algo` (`meta.admrl.ALGOS`).
    sets: `--set` overrides applied after the scale's.
    doc: what the arm is, for the docs.
  """
  algo: str
  sets: Tuple[Tuple[str, str], ...] = ()
  doc: str = ''


ARMS: Dict[str, Arm] = {
    'admrl': Arm('admrl', doc='Algorithm 1 with the scale\'s estimator and '
                 'step rule (by default the validated estimator and the '
                 'normalised step)'),
    # The estimator of Lin et al. 2020 as written (Eq. 7, damped CG,
    # per-sample sums) with their step rule u ← u + α ∂L/∂u; 50 CG
    # iterations as in the first study (the paper: 200).
    'admrl_paper': Arm('admrl', (('task_gradient.preset', 'paper'),
                                 ('task_gradient.linear_solver.iters', '50'),
                                 ('step_rule', 'paper')),
                       doc='Algorithm 1 with the paper\'s estimator and step '
                       'rule'),
    'mb_unif': Arm('mb_unif', doc='tasks uniform over the box'),
    'mb_gauss': Arm('mb_gauss', doc='tasks from N(0, I) clipped in u'),
    'mb_vertices': Arm('mb_vertices', doc='tasks uniform over the box\'s '
                       'vertices'),
    'mb_cem': Arm('mb_cem', doc='cross-entropy method toward the largest '
                  'measured gaps'),
    # The model-free meta-RL baselines of Lin et al. 2020, Fig. 2, at the
    # baseline preset of the scale's preset name (the scale's sets and task
    # iterations are AdMRL's and do not apply).
    'maml': Arm('maml', doc='MAML-TRPO (Finn et al. 2017), the baseline '
                'preset of the scale\'s preset name'),
    'pearl': Arm('pearl', doc='PEARL (Rakelly et al. 2019), the baseline '
                 'preset of the scale\'s preset name'),
}
ALGOS = tuple(ARMS)
# The arms that are meta-RL baselines (`experiments.baselines`), not
# model-based runs of Algorithm 1's driver.
BASELINE_ARMS = ('maml', 'pearl')


def is_adversary(arm: str) -> bool:
  """Whether the arm steps tasks by the task gradient (takes α)."""
  return ARMS[arm].algo == 'admrl'


def is_baseline(arm: str) -> bool:
  """Whether the arm is a meta-RL baseline (MAML, PEARL): trained at its
  own preset, adapted by its own rule."""
  return ARMS[arm].algo in BASELINE_ARMS


def arm_label(arm: str, alpha) -> str:
  """The row label of an arm's member group: 'admrl α=0.5', 'mb_unif'."""
  return f'{arm} α={alpha:g}' if is_adversary(arm) else arm


def samples_text(n) -> str:
  """A sample count for a legend: '13 000', '540k', '80M'."""
  if n is None:
    return '?'
  if n >= 1e6:
    return f'{n / 1e6:.3g}M'
  if n >= 1e5:
    return f'{n / 1e3:.3g}k'
  return f'{n:,.0f}'.replace(',', ' ')


def method_samples(m) -> str:
  """A method's real samples of (meta-)training for a legend or a table:
  the mean over its seeds, with the range when they differ. `m`: a method
  of study.json (its `methods` entry), with `real_samples` per seed."""
  values = [v for v in m.get('real_samples') or [] if v is not None]
  if not values:
    return '?'
  lo, hi = min(values), max(values)
  text = samples_text(sum(values) / len(values))
  if lo == hi:
    return text
  return f'{text} [{samples_text(lo)}, {samples_text(hi)}]'


EVAL_SEED = 7_777  # the evaluation's keys: fold_in(seed of the member, task)


@dataclasses.dataclass(frozen=True)
class Scale:
  """The sizes of a study.

  Attributes:
    preset: the driver preset the training starts from.
    ntasks: task iterations of each training run.
    sets: further `--set` overrides of the training config.
    seeds: default seeds.
    alpha_factors: admrl's default α list, as multiples of the default α of
      the preset with the scale's sets (`presets.default_alpha`: the
      paper's α for the family under the paper's step rule, else 0.5).
    eval_grid: points per axis of the evaluation grid over the family's
      evaluation box; None keeps the family's own evaluation set.
    stage_envs: real episodes per adaptation stage (stage_samples =
      stage_envs × horizon).
    stages: A_n is measured after these numbers of stages.
    astar_stages: stages of the long SLBO run estimating A* (families
      without a closed form).
    astar_repeats: tasks on which A* is estimated again with another seed
      (its noise).
    eval_episodes: real episodes of the mean policy per measured return
      (None: stage_envs).
    baseline_iterations: ((arm, iterations), …) of the meta-RL baselines
      (maml, pearl); an arm not named runs its preset's
      (`presets.BASELINE_ITERATIONS`).
  """
  preset: str
  ntasks: Optional[int]
  sets: Tuple[Tuple[str, str], ...]
  seeds: Tuple[int, ...]
  alpha_factors: Tuple[float, ...]
  eval_grid: Optional[Tuple[int, ...]]
  stage_envs: int
  stages: Tuple[int, ...]
  astar_stages: int
  astar_repeats: int
  eval_episodes: Optional[int] = None
  baseline_iterations: Tuple[Tuple[str, int], ...] = ()


_DIAGNOSE = (('gradient_noise_check', 'true'),)
SCALES: Dict[str, Scale] = {
    # The whole pipeline in minutes (lq; used by the tests).
    'smoke': Scale(preset='smoke', ntasks=3, sets=_DIAGNOSE, seeds=(0, 1),
                   alpha_factors=(1.0,), eval_grid=(3, 3), stage_envs=4,
                   stages=(1, 2),
                   astar_stages=4, astar_repeats=2),
    # The reduced scale of docs/STUDY.md's first study (hours on a 2-core
    # CPU for lq): the quick preset with 6 task iterations and 3
    # VirtualTraining iterations per phase, the paper's estimator and step
    # rule as that study ran them (Eq. 7, damped CG of 50 iterations,
    # per-sample normalisation, so α means the paper's step), and an α
    # sweep over two orders of magnitude below the paper's α.
    'study': Scale(preset='quick', ntasks=6,
                   sets=_DIAGNOSE + (('task_gradient.preset', 'paper'),
                                     ('task_gradient.linear_solver.iters',
                                      '50'),
                                     ('step_rule', 'paper'),
                                     ('slbo.n_zeroshot', '3'),
                                     ('slbo.n_inner', '3')),
                   seeds=tuple(range(10)),
                   alpha_factors=(0.01, 0.1, 0.3, 1.0), eval_grid=(3, 3),
                   stage_envs=10, stages=(1, 2),
                   astar_stages=10, astar_repeats=3),
    # The controlled comparison of the second study (docs/STUDY.md): twice
    # the first study's task iterations, one α per gradient arm (the
    # normalised step's 0.5 for admrl, the paper's α for admrl_paper), the
    # preset's estimator (validated against ground truth on lq), and A_n
    # from 50 episodes so that its standard error is small against the
    # differences between methods.
    'controls': Scale(preset='quick', ntasks=12,
                      sets=_DIAGNOSE + (('slbo.n_zeroshot', '3'),
                                        ('slbo.n_inner', '3')),
                      seeds=tuple(range(10)), alpha_factors=(1.0,),
                      eval_grid=(3, 3), stage_envs=10, stages=(1, 2),
                      astar_stages=10, astar_repeats=3, eval_episodes=50),
    # Figure 2 of Lin et al. 2020 at a reduced budget (the meta-RL
    # baselines against AdMRL and MB-Unif; docs/STUDY.md): the first
    # study's training and A* (so a family's A* cache carries over: same
    # stage size and budget), A_n at n = 2000 and 4000 real samples (2 and 4
    # stages of 10 episodes, horizon 100 on hopper2d), 3 seeds. MAML gets
    # 200 meta-iterations and PEARL 40 iterations of their quick presets:
    # on hopper2d 3.8M and 0.10M real samples (measured), 5% and 4% of the
    # paper's 80M and 2.5M, and 160 and 4.5 times AdMRL's 23k here (the
    # paper's ratios are 100–200 and 3–6).
    'figure2': Scale(preset='quick', ntasks=6,
                     sets=_DIAGNOSE + (('slbo.n_zeroshot', '3'),
                                       ('slbo.n_inner', '3')),
                     seeds=(0, 1, 2), alpha_factors=(1.0,), eval_grid=(3, 3),
                     stage_envs=10, stages=(2, 4), astar_stages=10,
                     astar_repeats=3,
                     baseline_iterations=(('maml', 200), ('pearl', 40))),
    # The paper's sizes (Lin et al. 2020, Appendix C): for a GPU.
    'paper': Scale(preset='paper', ntasks=None, sets=_DIAGNOSE, seeds=(0, 1, 2),
                   alpha_factors=(1.0,), eval_grid=None, stage_envs=10,
                   stages=(1, 2, 3), astar_stages=50, astar_repeats=3),
}


def arm_sets(scale, arm):
  """The `--set` overrides of an arm's training: the scale's, then the
  arm's own (a meta-RL baseline's: its own only)."""
  if is_baseline(arm):
    return dict(ARMS[arm].sets)
  return {**dict(scale.sets), **dict(ARMS[arm].sets)}


def training_runs(settings):
  """{algo: (family, config, alphas, seeds, record)} via the driver's
  `resolve`; UsageError on a bad family or configuration, or arms whose
  families differ (a meta-RL baseline's preset keeps the horizon of the
  AdMRL preset of its name, so they do not).

  A meta-RL baseline's arm (maml, pearl) runs the baseline preset of the
  scale's preset name with its own iteration count (config a
  `baselines.Baseline`, alphas [None]); the model-based arms the scale's
  preset, task iterations and sets."""
  scale = SCALES[settings['scale']]
  runs = {}
  for arm in settings['algos']:
    alphas = settings['alphas'].get(arm)
    family, config, alphas, seeds, record = driver.resolve(
        env=settings['env'], algo=ARMS[arm].algo, preset=scale.preset,
        alphas=alphas, seeds=settings['seeds'],
        ntasks=(dict(scale.baseline_iterations).get(arm)
                if is_baseline(arm) else scale.ntasks),
        sets=arm_sets(scale, arm))
    if not is_adversary(arm):
      alphas = alphas[:1]  # the baselines ignore α: one member per seed
      record['alphas'] = alphas
    runs[arm] = (family, config, alphas, seeds, record)
  horizons = {arm: run[0].horizon for arm, run in runs.items()}
  if len(set(horizons.values())) > 1:
    raise UsageError(f'--algos: the arms\' families differ in their horizon '
                     f'({horizons}); a study compares methods on one family')
  return runs


def reference_config(settings):
  """The `AdMRLConfig` of the scale (its preset with its sets): the SLBO
  settings of A* and of the model-based arms' adaptation, whatever arms the
  study has (its arms' own sets change the task gradient, not SLBO)."""
  scale = SCALES[settings['scale']]
  config = presets.preset(settings['env'], scale.preset)[0]
  return presets.apply_overrides(config, dict(scale.sets))


def eval_tasks(family, scale):
  tasks = np.asarray(family.eval_tasks(), np.float32)
  if scale.eval_grid is None or len(scale.eval_grid) != family.task_dim:
    return tasks
  # A coarser grid over the same box (corners, edge midpoints, centre).
  low, high = tasks.min(axis=0), tasks.max(axis=0)
  return np.asarray(base.grid(low, high, scale.eval_grid), np.float32)
