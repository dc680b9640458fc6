"""One progress line per phase of a run, with an ETA.

The phases of a task iteration (zero-shot, each SLBO stage, the task update)
are reported as `admrl.PhaseEvent`s as each ends — by the driver, which
runs them as programs of their own (`training.PhasedIteration`), or from
inside one program by `admrl.AdMRL(on_phase=...)` — and `Progress` turns
those reports into lines.
Work is counted in VirtualTraining iterations (zero-shot: nzeroshot; a
stage: ninner plus one for its real collection; the task update: one), and
the ETA is the remaining work at the rate measured since the first report,
so the compile time of the first iteration does not inflate it.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional, Tuple


def format_seconds(seconds: float) -> str:
  return f'{seconds / 60:.1f} min' if seconds >= 60 else f'{seconds:.0f}s'


class Progress:
  """Callable on `PhaseEvent`s (`AdMRL(on_phase=...)`, or the driver's
  `PhasedIteration`) that writes phase lines via `log`.

  Args:
    config: the run's `AdMRLConfig` (its n_tasks is the run's length).
    n_members: (seed, α) members of the batch.
    sweep: 'vmap' (members are lanes of one batch: a phase is reported once
      all lanes have reached it) or 'map' (members run in turn: a line per
      member and phase).
    log: writes one line.
    clock: seconds, for tests.
  Call `start(first_task, target)` before the first task iteration this
  process runs (after a resume, first_task > 0; target is exclusive).
  """

  def __init__(self, config, n_members: int, sweep: str,
               log: Callable[[str], None],
               clock: Callable[[], float] = time.time):
    self.config = config
    self.n_members = n_members
    self.sweep = sweep
    self.log = log
    self.clock = clock
    self._counts: Dict[Tuple[int, str, int], int] = {}
    self.start(0, config.n_tasks)

  def start(self, first_task: int, target: int) -> None:
    self._remaining = sum(self.task_units(i) for i in range(first_task, target))
    if self.sweep == 'map':
      self._remaining *= self.n_members
    self._done_since_first = 0.0
    self._t_first: Optional[float] = None

  # ------------------------------------------------------------ work
  def phase_units(self, phase: str, first: bool) -> float:
    slbo = self.config.slbo
    if phase == 'zero_shot':
      return float(slbo.n_zeroshot)
    if phase == 'stage':
      return float(slbo.n_inner + 1)
    measured = self.config.algo in ('admrl', 'mb_cem')  # admrl.MEASURE_GAP
    return 1.0 if (measured and not first) else 0.0

  def task_units(self, task_index: int) -> float:
    first = task_index == 0
    stages = self.config.n_slbo_first if first else self.config.n_slbo
    return ((0.0 if first else self.phase_units('zero_shot', first))
            + stages * self.phase_units('stage', first)
            + self.phase_units('task_update', first))

  def eta_seconds(self) -> Optional[float]:
    if self._t_first is None or self._done_since_first <= 0:
      return None
    elapsed = self.clock() - self._t_first
    if elapsed <= 0:
      return None
    return self._remaining * elapsed / self._done_since_first

  # ---------------------------------------------------------- events
  def __call__(self, event) -> None:
    key = (event.task_index, event.phase, event.stage)
    count = self._counts.get(key, 0) + 1
    self._counts[key] = count
    if self.sweep == 'vmap' and count < self.n_members:
      return  # wait for every lane of the batch
    units = self.phase_units(event.phase, event.first)
    self._remaining = max(self._remaining - units, 0.0)
    now = self.clock()
    if self._t_first is None:
      self._t_first = now  # the rate excludes the compile before this
    else:
      self._done_since_first += units
    self.log(self.describe(event, count))

  def describe(self, event, count: int) -> str:
    what = {'zero_shot': 'zero-shot',
            'stage': f'stage {event.stage}/{event.n_stages}',
            'task_update': 'task update'}[event.phase]
    who = (f'member {count}/{self.n_members}' if self.sweep == 'map'
           else f'{self.n_members} member(s)')
    parts = []
    if event.phase == 'task_update':
      if not math.isnan(event.gap):
        parts.append(f'gap {event.gap:.4g}')
    else:
      parts.append(f'virtual return {event.virtual_return:.4g}')
      parts.append(f'model loss {event.model_loss:.3g}')
    eta = self.eta_seconds()
    if eta is not None:
      parts.append(f'ETA {format_seconds(eta)}')
    return (f'task {event.task_index + 1}/{self.config.n_tasks}, {what} ({who})'
            + (': ' + ', '.join(parts) if parts else ''))


# ------------------------------------------------------------ estimate
# Effective FLOP/s of a VirtualTraining iteration on the 2-core CPU where
# benchmarks/virtual_training.py timed hopper2d at the paper's size
# (benchmarks/results/virtual_training.json: 4.39 s per iteration, whose
# FLOPs `virtual_iteration_flops` counts as 6.39e11; measured on a quiet
# machine: shared at a load average of ~10 the same machine took 12.2 s, so
# the plan's estimate is a lower bound there, and the measured ETA after the
# first task iteration is the one to trust).
CPU_FLOPS = 145.5e9


def _mlp_macs(sizes) -> int:
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def slbo_iteration_flops(family, slbo) -> Dict[str, float]:
  """Useful FLOPs of one VirtualTraining iteration of one member, by part,
  counted from the layer sizes: 2 per multiply-add of a forward pass over
  one sample, a backward pass twice that (`slbo` is an `SLBOConfig`):

    rollout    npolicy × ntrpo virtual samples, each a model and a policy
               forward pass;
    gae        the value function at s and s′ of every virtual sample;
    trpo       per step, over the batch: the surrogate and its gradient at
               θ_old (3 policy passes; log π_old is that forward pass),
               cg_iters + 2 Fisher-vector products (CG, the curvature sᵀFs
               and CG's residual), each a Jacobian product J v (1) and its
               transpose Jᵀu (2), and one line-search candidate (1);
    value_fit  vf_epochs epochs of N // vf_minibatch minibatches, forward
               and backward (3 value passes per sample);
    model_fit  nmodel Adam steps on a minibatch, forward and backward (3
               model passes per sample and step of the loss).
  Optimiser updates and elementwise work are not counted.
  """
  obs, act = family.obs_size, family.action_size
  model = _mlp_macs((obs + act, *slbo.model.hidden, obs))
  policy = _mlp_macs((obs, *slbo.policy.hidden, act))
  value = _mlp_macs((obs, *slbo.value.hidden, 1))
  samples = slbo.n_rollouts * (slbo.rollout_steps or family.horizon)
  trpo_passes = 3 + 3 * (slbo.trpo.cg_iters + 2) + 1
  minibatch = min(slbo.trpo.vf_minibatch, samples)
  fitted = slbo.trpo.vf_epochs * (samples // minibatch) * minibatch
  steps = (slbo.model.multi_step_horizon if slbo.model.loss == 'multi_step'
           else 1)
  n = slbo.n_policy
  return dict(
      rollout=float(n * 2 * samples * (model + policy)),
      gae=float(n * 2 * samples * 2 * value),
      trpo=float(n * 2 * samples * trpo_passes * policy),
      value_fit=float(n * 2 * fitted * 3 * value),
      model_fit=float(2 * 3 * slbo.model.n_steps * slbo.model.batch_size
                      * steps * model))


def virtual_iteration_flops(family, config) -> float:
  """FLOPs of one VirtualTraining iteration (model fit, then npolicy TRPO
  steps on virtual roll-outs) of one member: the sum of
  `slbo_iteration_flops(family, config.slbo)`."""
  return float(sum(slbo_iteration_flops(family, config.slbo).values()))


def virtual_iterations(config, first_task: int, target: int) -> int:
  """VirtualTraining iterations of one member over task iterations
  [first_task, target): the first has no zero-shot phase and nslbo_first
  stages, the others nzeroshot plus nslbo stages of ninner each."""
  slbo = config.slbo
  return sum((config.n_slbo_first * slbo.n_inner) if i == 0 else
             (slbo.n_zeroshot + config.n_slbo * slbo.n_inner)
             for i in range(first_task, target))


def _duration(seconds: float) -> str:
  return (f'{seconds / 3600:.1f} h' if seconds >= 2 * 3600
          else format_seconds(seconds))


def plan(family, config, n_members: int, first_task: int = 0,
         target=None) -> str:
  """One line saying what a run is about to do and how long it should
  take: an estimate from the configuration (`virtual_iteration_flops` at
  `CPU_FLOPS`), before anything is compiled."""
  target = config.n_tasks if target is None else target
  if first_task >= target:
    return (f'{family.name}: task iterations 1..{target} of '
            f'{config.n_tasks} are done; nothing to run')
  n_iters = n_members * virtual_iterations(config, first_task, target)
  seconds = n_iters * virtual_iteration_flops(family, config) / CPU_FLOPS
  slbo = config.slbo
  samples = slbo.n_rollouts * (slbo.rollout_steps or family.horizon)
  return (f'{family.name}: about to run task iterations {first_task + 1}..'
          f'{target} of {config.n_tasks} for {n_members} member(s): {n_iters} '
          f'VirtualTraining iterations (each {slbo.n_policy} TRPO steps on '
          f'{samples} virtual samples, {slbo.model.n_steps} model steps, '
          f'model {list(slbo.model.hidden)}); estimated {_duration(seconds)} '
          f'on a CPU (from the configuration at {CPU_FLOPS / 1e9:.0f} GFLOP/s'
          ', measured on 2 cores; compilation and real collection not '
          'included); a measured ETA follows the first task iteration')
