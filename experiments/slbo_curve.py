r"""SLBO learning curve on one task: real return against real samples.

    python -m experiments.slbo_curve --env=hopper2d --psi=1,1.4 --stages=6 \
        --out=docs/slbo_hopper2d

Runs SLBO (Algorithm 2 inside SLBO stages) on a fixed task ψ with a reduced
budget set by the flags, evaluates the mean policy on fresh real roll-outs
before training and after every stage, and writes `<out>.json` and
`<out>.png`. With `--seed=0,1,2` every seed gets its own curve (the seeds
share one compiled program); the plot shows each seed and their mean.
Each evaluation is a JSON line on stdout and a progress line with the
curve's share done and an ETA on stderr (`experiments.pieces`).

Resumable: with `--out`, `<out>.json` is rewritten after every stage
(`"complete": false` until the last) and each seed's state and key after its
latest stage are checkpointed under `<out>.ckpt/seed_<s>/`. Rerunning the
same command continues where a killed run stopped, with the same random
stream (the result equals an uninterrupted run's); a larger `--stages`
extends a finished curve, and the same command on a finished curve only
redraws its plot (reproduce one with a new `--out`). A `<out>.json` made
with other settings is refused (exit status 2) and left untouched.
`"provenance"` in it lists what each process that wrote it ran with (code
commit, library versions, JAX settings: `experiments.provenance`), one
entry per change.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import checkpoints
from admrl_jax.fileio import to_jsonable
from admrl_jax.models import dataset
from admrl_jax.models.dynamics import ModelConfig
from admrl_jax.rl import slbo
from admrl_jax.rl.rollout import RolloutConfig
from experiments import pieces as pieces_lib
from experiments import presets
from experiments import provenance
from experiments.common import (build_family, json_number, parse_floats,
                                parse_seeds, parse_sets, resolve_psi)
# pylint: enable=g-import-not-at-top,wrong-import-position

_ENV = flags.DEFINE_string('env', 'hopper2d', 'Task family.')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)
_PSI = flags.DEFINE_string('psi', None, 'Task ψ, comma list (default u = 0.3).')
_STAGES = flags.DEFINE_integer('stages', 6, 'SLBO stages (nslbo).',
                               lower_bound=1)
_N_INNER = flags.DEFINE_integer('n_inner', 5, 'VirtualTraining iterations.')
_N_POLICY = flags.DEFINE_integer('n_policy', 10, 'TRPO steps per iteration.')
_N_MODEL = flags.DEFINE_integer('n_model', 100, 'Model steps per iteration.')
_HIDDEN = flags.DEFINE_string('hidden', '1000,1000', 'Model hidden sizes.')
_REAL_ENVS = flags.DEFINE_integer('real_envs', 10,
                                  'Real environments per stage (× horizon).')
_ROLLOUTS = flags.DEFINE_integer('rollouts', 50, 'Virtual roll-outs per TRPO '
                                 'step.')
_ROLLOUT_STEPS = flags.DEFINE_integer('rollout_steps', None,
                                      'Virtual roll-out length (horizon).')
_SET = flags.DEFINE_multi_string(
    'set', [], 'field=value override of the SLBOConfig after the flags '
    'above, e.g. model.loss=multi_step or virtual_start=data.')
_FRAME_SKIP = flags.DEFINE_integer(
    'frame_skip', None, 'Simulator steps per control step (Brax families; '
    'default: the Brax environment\'s own). The authors use 1 on MuJoCo.')
_PIPELINE = flags.DEFINE_string(
    'pipeline', None, 'Brax physics pipeline (default: the family\'s). '
    '`generalized` is the one whose observation (qpos, qvel) is a Markov '
    'state of the simulator; see README, "Physics pipeline".')
_SEED = flags.DEFINE_string('seed', '0', 'Random seed, or a comma list of '
                            'seeds (one curve each, same compiled program).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension.')


def _result(setting, seeds, curves, complete, capacity, runs):
  result = json.loads(json.dumps(setting))
  result['budget'] = dict(stages=max(len(c) for c in curves.values()) - 1,
                          **result['budget'])
  result.update(seeds=list(seeds), complete=complete,
                dataset_capacity=capacity, provenance=runs,
                curves={str(seed): curve for seed, curve in curves.items()})
  return result


def _write(out, setting, seeds, curves, complete, capacity, runs):
  common.write_json(out + '.json',
                    _result(setting, seeds, curves, complete, capacity, runs))


def _with(runs, current):
  """The provenance list `runs` of a file's writers, with `current` (this
  process's) appended unless it is already the last entry."""
  return runs if runs and runs[-1] == current else runs + [current]


def _load_previous(out, setting, stages, seeds):
  """({seed: curve}, the file's provenance list) of an earlier run of the
  same setting at `out`, else ({}, []).

  Raises UsageError (the file untouched) when `<out>.json` exists but cannot
  be read, was made with other settings, has more than `stages` stages or
  seeds that `seeds` leaves out.
  """
  if not out or not os.path.exists(out + '.json'):
    return {}, []
  try:
    with open(out + '.json') as f:
      previous = json.load(f)
    # A seed without points (none computed yet) holds nothing to keep.
    curves = {int(s): c for s, c in previous['curves'].items() if c}
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise common.UsageError(
        f'{out}.json exists but is not a learning-curve file ({e}); use '
        'another --out or remove it') from None
  theirs = {k: previous.get(k) for k in setting}
  theirs['budget'] = {k: (previous.get('budget') or {}).get(k)
                      for k in setting['budget']}
  mine = json.loads(json.dumps(setting))
  if theirs != mine:
    diff = [f'{k}: file {theirs[k]}, now {mine[k]}' for k in mine
            if k != 'budget' and theirs[k] != mine[k]]
    diff += [f'budget.{k}: file {theirs["budget"][k]}, now {mine["budget"][k]}'
             for k in mine['budget']
             if theirs['budget'][k] != mine['budget'][k]]
    raise common.UsageError(
        f'{out}.json was made with other settings ({"; ".join(diff)}); use '
        'another --out to start a new curve')
  missing = sorted(set(curves) - set(seeds))
  if missing:
    raise common.UsageError(
        f'{out}.json also holds seeds {missing}; pass them in --seed too '
        '(their curves would be dropped), or another --out')
  longest = max((len(c) - 1 for c in curves.values()), default=0)
  if longest > stages:
    raise common.UsageError(
        f'{out}.json already has {longest} stages; pass --stages={longest} '
        'or more, or another --out')
  return curves, list(previous.get('provenance') or [])


def _save(manager, step, state):
  if not manager.save(step, state):
    raise RuntimeError(f'checkpoint {step} under {manager.directory} was not '
                       'written (a later step exists there)')


def main(argv):
  common.run_main(argv, run)


def run():
  """Flags → the curves (a JSON line per evaluation), <out>.json and
  <out>.png (with --out), resumed from <out>.json and <out>.ckpt/."""
  common.enable_compilation_cache()
  family = build_family(_ENV.value, pipeline=_PIPELINE.value,
                        frame_skip=_FRAME_SKIP.value)
  psi = resolve_psi(family, _PSI.value)
  hidden = tuple(int(h) for h in parse_floats(_HIDDEN.value, 'hidden'))
  seeds = parse_seeds(_SEED.value)

  # The reward of a calibrated family is fixed by the first seed, so that all
  # seeds train on one task and share one compiled program.
  key_cal = jax.random.split(jax.random.key(seeds[0]), 3)[0]
  family = family.calibrate(key_cal)
  capacity = _capacity(family, _STAGES.value)
  config = _slbo_config(family, hidden, capacity)
  overrides = parse_sets(_SET.value)
  config = presets.apply_sets(config, overrides)
  agent = slbo.SLBO(family, config)
  psi = jnp.asarray(psi)
  setting = _setting(family, psi, seeds, hidden, config, overrides)
  done, runs = _load_previous(_OUT.value, setting, _STAGES.value, seeds)
  runs = _with(runs, provenance.collect())
  curves = _Curves(agent, family, config, psi, setting, seeds, capacity,
                   done, runs).run()
  summary, means = _summary(curves)
  print(json.dumps(dict(summary=summary)), flush=True)
  result = _result(setting, seeds, curves, True, capacity, runs)
  result['summary'] = summary
  if _OUT.value:
    common.write_json(_OUT.value + '.json', result)
    _plot(family, psi, seeds, curves, means, summary, _OUT.value + '.png')


def _capacity(family, stages) -> int:
  """The dataset's capacity: every real sample fits, so nothing is
  overwritten, and sampling (indices below the dataset's size) does not
  depend on the capacity, so a curve extended to more stages (its dataset
  grown) equals an unbroken one."""
  return max(10_000, stages * _REAL_ENVS.value * family.horizon)


def _slbo_config(family, hidden, capacity):
  """The SLBOConfig of the flags (before --set)."""
  return slbo.SLBOConfig(
      n_inner=_N_INNER.value, n_policy=_N_POLICY.value,
      n_rollouts=_ROLLOUTS.value, rollout_steps=_ROLLOUT_STEPS.value,
      dataset_capacity=capacity,
      model=ModelConfig(hidden=hidden, n_steps=_N_MODEL.value,
                        action_clip=None if family.action_bound is None
                        else family.action_bound),
      real=RolloutConfig(n_envs=_REAL_ENVS.value))


def _setting(family, psi, seeds, hidden, config, overrides) -> dict:
  """Everything the numbers depend on except the stage count and the
  seeds, which a continued run may extend."""
  per_stage = slbo.real_samples_per_stage(family, config)
  return dict(
      env=family.name, psi=[float(v) for v in np.asarray(psi)],
      pipeline=getattr(family, 'pipeline', None),
      frame_skip=getattr(family, 'frame_skip', None),
      calibration_seed=seeds[0],
      budget=dict(real_samples_per_stage=per_stage,
                  n_inner=config.n_inner, n_policy=config.n_policy,
                  n_model=config.model.n_steps, model_hidden=list(hidden),
                  virtual_rollouts=config.n_rollouts,
                  virtual_rollout_steps=(config.rollout_steps
                                         or family.horizon),
                  virtual_samples_per_trpo_step=config.n_rollouts * (
                      config.rollout_steps or family.horizon),
                  eval_episodes=config.real.n_envs,
                  model_loss=config.model.loss, model_kind=config.model.kind,
                  virtual_start=config.virtual_start,
                  overrides=overrides))


class _Curves:
  """The learning curves of one setting: each seed's SLBO run on ψ, its
  mean policy evaluated before training and after every stage, as the
  (seed, stage) pieces of `pieces.run_each` (stage 0: the evaluation
  before training). After each piece, its JSON line; with --out,
  <out>.json rewritten and the seed's state and key checkpointed; a seed
  with a checkpoint is resumed from it. A progress line per piece on
  stderr.

  Attributes:
    done: {seed: curve} so far (the earlier run's, then this one's).
  """

  def __init__(self, agent, family, config, psi, setting, seeds, capacity,
               done, runs):
    self.agent, self.psi, self.setting = agent, psi, setting
    self.family, self.config = family, config
    self.per_stage = setting['budget']['real_samples_per_stage']
    self.seeds, self.capacity, self.done, self.runs = (seeds, capacity, done,
                                                       runs)
    # wall_s: seconds of computing since the curve was started, over every
    # process that worked on it (this one adds to where the last one
    # stopped).
    self.offset = max((row['wall_s'] for c in done.values() for row in c),
                      default=0.0)
    self.start = time.time()
    self.managers = {}
    self.current = None       # (seed, state, key) of the seed under way

  def wall(self):
    return round(self.offset + time.time() - self.start, 1)

  def evaluate(self, state, key):
    out = self.agent.evaluate(state, self.psi, key)
    return float(jnp.mean(out.first_return)), float(jnp.std(out.first_return))

  def run(self):
    """{seed: curve} up to --stages for every seed: [the initial
    evaluation, one per stage], each seed continued from its checkpoint
    where there is one."""
    first = {seed: self._first_stage(seed) for seed in self.seeds}
    stages = _STAGES.value
    progress = pieces_lib.Pieces(
        len(self.seeds) * stages,
        lambda line: print(line, file=sys.stderr, flush=True), scope='curve')
    progress.skip(sum(max(first[seed] - 1, 0) for seed in self.seeds))
    todo = [(seed, stage) for seed in self.seeds
            for stage in range(first[seed], stages + 1)]
    pieces_lib.run_each(todo, self._compute, self._record, progress,
                        units=lambda piece: float(piece[1] > 0))
    return {seed: self.done[seed] for seed in self.seeds}

  def _first_stage(self, seed):
    """The first stage of `seed` to compute (stage 0: the evaluation
    before training; --stages + 1: none), its curve cut to the stages
    before it and, with --out, the checkpoint manager it resumes from
    (another run's checkpoints removed). A curve computed again from stage
    0 keeps its old points until its new first one; a seed never started
    has no curve."""
    curve = self.done.get(seed, [])
    if len(curve) > _STAGES.value:   # already there: nothing to compute
      return _STAGES.value + 1
    directory = (os.path.join(_OUT.value + '.ckpt', f'seed_{seed}')
                 if _OUT.value else None)
    if not directory or not os.path.isdir(directory):
      if curve:
        print(json.dumps(dict(
            seed=seed, no_checkpoint_after_stage=len(curve) - 1,
            recomputing_from_stage=0)), flush=True)
      return 0
    manager = checkpoints.Manager(directory, max_to_keep=1)
    last = manager.latest_step()
    if last is not None and len(curve) > last:
      self.done[seed] = curve[:last + 1]
      self.managers[seed] = manager
      print(json.dumps(dict(seed=seed, resumed_after_stage=last)), flush=True)
      return last + 1
    if curve:
      print(json.dumps(dict(
          seed=seed, no_checkpoint_after_stage=len(curve) - 1,
          recomputing_from_stage=0)), flush=True)
    # Another run's checkpoints (orbax would not overwrite their steps).
    shutil.rmtree(directory)
    return 0

  def _state(self, seed, stage):
    """(state, key) of `seed` before `stage`: its initial state, or its
    checkpoint after stage - 1 when its run starts there."""
    if self.current is not None and self.current[0] == seed:
      return self.current[1:]
    _, key_init, key = jax.random.split(jax.random.key(seed), 3)
    state = slbo.init(key_init, self.family, self.config)
    if stage > 0:
      state, key = self._resume(self.managers[seed], stage - 1, state, key,
                                key_init)
    return state, key

  def _compute(self, piece):
    """A piece: the evaluation before training (stage 0), or an SLBO stage
    and the evaluation after it; its curve point."""
    seed, stage = piece
    state, key = self._state(seed, stage)
    if stage == 0:
      key, key_eval = jax.random.split(key)
      mean, std = self.evaluate(state, key_eval)
      point = dict(real_samples=0, return_mean=to_jsonable(mean),
                   return_std=to_jsonable(std))
    else:
      key, key_stage, key_eval = jax.random.split(key, 3)
      state, metrics = self.agent.stage(state, self.psi, key_stage)
      mean, std = self.evaluate(state, key_eval)
      point = dict(
          real_samples=stage * self.per_stage,
          return_mean=to_jsonable(mean), return_std=to_jsonable(std),
          model_loss=to_jsonable(metrics.model_loss[-1]),
          virtual_return=to_jsonable(metrics.virtual_return[-1]),
          trpo_accept_rate=to_jsonable(jnp.mean(metrics.trpo_accepted)))
    self.current = (seed, state, key)
    return dict(point, wall_s=self.wall())

  def _resume(self, manager, last, state, key, key_init):
    """(state, key) of the checkpoint after stage `last`, its dataset grown
    to this run's capacity."""
    # The dataset's capacity grows with --stages: the checkpoint may hold a
    # smaller one (each seed's own, should a run stop between seeds).
    saved_data = manager.metadata(last)[0]['data']['data']
    saved_capacity = saved_data['obs'].shape[0]
    saved = state if saved_capacity == self.capacity else slbo.init(
        key_init, self.family, dataclasses.replace(
            self.config, dataset_capacity=saved_capacity))
    state, key = manager.restore(last, (saved, key))
    return state.replace(data=dataset.grow(state.data, self.capacity)), key

  def _record(self, piece, point, seconds):
    """The curve's new point: its JSON line; with --out, <out>.json, then
    the checkpoint of the stage (the curve first: a checkpoint is never
    ahead of it). Returns the progress line."""
    seed, stage = piece
    print(json.dumps(dict(seed=seed, **point)), flush=True)
    self.done[seed] = ([] if stage == 0 else self.done[seed]) + [point]
    if _OUT.value:
      _write(_OUT.value, self.setting, self.seeds, self.done, False,
             self.capacity, self.runs)
      if seed not in self.managers:
        self.managers[seed] = checkpoints.Manager(
            os.path.join(_OUT.value + '.ckpt', f'seed_{seed}'), max_to_keep=1)
      _, state, key = self.current
      _save(self.managers[seed], stage, (state, key))
    return (f'seed {seed}, ' + ('before training' if stage == 0 else
                                f'stage {stage}/{_STAGES.value}')
            + f': real return {json_number(point["return_mean"]):.4g} '
            f'({seconds:.1f}s)')


def _summary(curves):
  """(summary, means): the mean over seeds of the initial, final and best
  real return, each seed's final − initial, and the means (seeds,
  stages + 1) they come from."""
  means = np.array([[json_number(c['return_mean'])
                     for c in curve[:_STAGES.value + 1]]
                    for curve in curves.values()])   # (seeds, stages + 1)
  summary = dict(
      initial=to_jsonable(np.mean(means[:, 0])),
      final=to_jsonable(np.mean(means[:, -1])),
      best=to_jsonable(np.max(np.mean(means, axis=0))),
      final_minus_initial_per_seed=[to_jsonable(v)
                                    for v in means[:, -1] - means[:, 0]])
  return summary, means


def _plot(family, psi, seeds, curves, means, summary, path) -> None:
  """<out>.png: each seed's curve (with its std over episodes for one
  seed, with their mean for several) and the initial policy's return."""
  # Not at the top: matplotlib loads only when a curve is drawn (--out),
  # its Agg backend chosen first.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  x = [c['real_samples'] for c in curves[seeds[0]]]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  if len(seeds) == 1:
    e = np.array([json_number(c['return_std']) for c in curves[seeds[0]]])
    ax.plot(x, means[0], marker='o', label=f'seed {seeds[0]}')
    ax.fill_between(x, means[0] - e, means[0] + e, alpha=0.2,
                    label='± std over episodes')
  else:
    for seed, row in zip(seeds, means):
      ax.plot(x, row, alpha=0.4, lw=1, label=f'seed {seed}')
    ax.plot(x, means.mean(axis=0), marker='o', color='k', lw=2,
            label=f'mean of {len(seeds)} seeds')
  ax.axhline(summary['initial'], color='grey', ls='--', lw=1,
             label='initial policy')
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
      lambda v, _: f'{v / 1000:g}k' if v else '0'))
  ax.set_xlabel('real samples')
  ax.set_ylabel('real return (mean policy)')
  ax.set_title(f'SLBO on {family.name}, ψ = '
               f'{[round(float(v), 2) for v in np.asarray(psi)]}')
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  app.run(main)
