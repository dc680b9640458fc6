"""Train Algorithm 1 from Python and load finished runs, in the shape of
brax's agents (`brax.training.agents.ppo.train`).

    import jax
    import admrl_jax

    make_policy, params, metrics = admrl_jax.train('lq', config, seed=0)
    policy = make_policy(params, deterministic=True)   # (obs, key) -> action
    action = jax.jit(policy)(obs, key)

    family, make_policy, params, model = admrl_jax.load('runs/lq')

`train` runs the task iterations of Lin et al. 2020 (arXiv:2006.08875),
Algorithm 1 (or a baseline: `AdMRLConfig.algo`) for one seed and one task
step size α: one compiled task iteration, called `config.n_tasks` times from
the host, the state donated between calls. With `checkpoint_dir` it writes
the driver's run directory (config.json, checkpoints/ after every task
iteration) and resumes from it, so `experiments.evaluate --workdir=DIR`
evaluates it and `load` reads it back, as it reads the driver's runs
(`python -m experiments.run --workdir=DIR`).

The policy of a trained run is the current task's: π_θ of the last task
trained on, acting on raw observations through the model's state
normaliser (the SLBO policy sees normalised states). To act well on another
task ψ, adapt to it (`evaluation.adaptation.Adaptation` with the state that
`train(..., return_state=True)` or `load_state` gives).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Tuple, Union

import jax
import numpy as np
from flax import struct

from admrl_jax import envs
from admrl_jax import fileio
from admrl_jax import networks as networks_lib
from admrl_jax import sweep
from admrl_jax.envs.base import TaskFamily
from admrl_jax.meta import admrl
from admrl_jax.meta import paper
from admrl_jax.rl import slbo as slbo_lib

# α of the normalised step when none is given (`step_rule='normalized'`):
# half a box half-width per task (`meta.paper.NORMALIZED_ALPHA`).
DEFAULT_NORMALIZED_ALPHA = paper.NORMALIZED_ALPHA


@struct.dataclass
class PolicyParams:
  """What a policy needs to act: π_θ's parameters and the state normaliser
  the policy's inputs go through (the model's, `models.normalizer`)."""
  policy: Any
  normalizer: Any


PolicyFn = Callable[[jax.Array, jax.Array], jax.Array]


def make_policy_factory(networks: networks_lib.Networks
                        ) -> Callable[..., PolicyFn]:
  """`make_policy(params, deterministic=True) -> policy(obs, key)`: a pure
  function of raw observations (obs_size,) or (..., obs_size) and a PRNG key
  returning actions (action_size,) / (..., action_size); deterministic acts
  with the mean of π_θ (the key is unused), else samples from it. Usable
  under jit and vmap."""
  def make_policy(params: PolicyParams, deterministic: bool = True
                  ) -> PolicyFn:
    fn = slbo_lib.make_policy_fn(networks.policy, mean=deterministic)

    def policy(obs, key):
      return fn((params.policy, params.normalizer), obs, key)
    return policy
  return make_policy


def policy_params(state: admrl.AdMRLState) -> PolicyParams:
  """The current task's policy of an (unbatched) `AdMRLState`."""
  return PolicyParams(policy=state.slbo.agent.policy,
                      normalizer=state.slbo.model.norms.state)


def _family(family: Union[str, TaskFamily]) -> TaskFamily:
  if isinstance(family, str):
    return envs.make(family)
  if not isinstance(family, TaskFamily):
    raise TypeError(f'family must be a registered name or a TaskFamily, got '
                    f'{type(family).__name__}')
  return family


def _record(family, config, seed, alpha):
  """The driver's run record (config.json) of a one-member run."""
  record = dict(env=family.name, preset=None,
                pipeline=getattr(family, 'pipeline', None),
                frame_skip=getattr(family, 'frame_skip', None),
                horizon=family.horizon, alphas=[alpha], seeds=[seed],
                sweep='vmap',
                config=fileio.to_jsonable(dataclasses.asdict(config)))
  if getattr(family, 'state_mean', None) is not None:
    record['calibration'] = dict(
        state_mean=[float(v) for v in family.state_mean],
        state_std=[float(v) for v in family.state_std])
  return record


def train(family: Union[str, TaskFamily],
          config: Optional[admrl.AdMRLConfig] = None, *,
          seed: int = 0, alpha: Optional[float] = None,
          progress_fn: Optional[Callable[[int, dict], None]] = None,
          checkpoint_dir: Optional[str] = None,
          networks: Optional[networks_lib.Networks] = None,
          return_state: bool = False):
  """Trains Algorithm 1 (or the baseline `config.algo`) on a task family.

  Args:
    family: a registered family name (`envs.names()`) or a `TaskFamily`.
    config: the run's `AdMRLConfig` (None: `AdMRLConfig()`, the paper's
      sizes — hours on a CPU; `experiments.presets.preset(env, 'smoke')`
      gives a small one).
    seed: the run's seed (its PRNG key is `jax.random.key(seed)`).
    alpha: the task step size α > 0 (None: 0.5 under the normalised step
      rule; the paper's rule needs an explicit α, Appendix C).
    progress_fn: called as `progress_fn(step, metrics)` after every task
      iteration, step = iterations done, metrics a dict of numpy values
      (`meta.admrl.IterationMetrics`).
    checkpoint_dir: a run directory to write (config.json, checkpoints/
      after every task iteration) and to resume from if it holds the same
      run; None keeps everything in memory.
    networks: the run's `networks.Networks` (None: the authors').
    return_state: also return the final `AdMRLState` (model, dataset,
      agent), e.g. to adapt to new tasks.
  Returns:
    (make_policy, params, metrics) — `make_policy` as
    `make_policy_factory`, `params` the `PolicyParams` of the last task
    trained on, `metrics` {name: array (n_tasks, ...)} over the task
    iterations — and the state when `return_state`.
  Raises:
    ValueError: α ≤ 0 or not finite, or missing under the paper's rule; a
      checkpoint_dir holding another run. TypeError: family of a wrong type.
  """
  family = _family(family)
  config = admrl.AdMRLConfig() if config is None else config
  if alpha is None:
    if config.step_rule != 'normalized':
      raise ValueError(f'alpha: give the task step size under step_rule='
                       f'{config.step_rule!r} (Lin et al. 2020, Appendix C)')
    alpha = DEFAULT_NORMALIZED_ALPHA
  if not (np.isfinite(alpha) and alpha > 0):
    raise ValueError(f'alpha must be a finite number > 0, got {alpha}')
  family = family.calibrate(jax.random.key(10_000 + seed))
  algorithm = admrl.AdMRL(family, config, networks)
  state = sweep.init_members(algorithm.init, [(seed, alpha)])
  manager = None
  history = []
  if checkpoint_dir is not None:
    manager, state, history = _open_run(checkpoint_dir, family, config, seed,
                                        alpha, state)
  # One member in a vmap: the driver's program for one (seed, α), so a run
  # here and `python -m experiments.run` share JAX's compilation cache.
  iteration = sweep.batched(algorithm.task_iteration)
  done = int(np.asarray(state.iteration)[0])
  while done < config.n_tasks:
    state, metrics = iteration(state, done == 0)
    metrics = {k: np.asarray(v)[0] for k, v in
               dataclasses.asdict(metrics).items()}
    done += 1
    history.append(metrics)
    if manager is not None:
      manager.save(done, state)
      _append_metrics(checkpoint_dir, metrics, seed, alpha)
    if progress_fn is not None:
      progress_fn(done, metrics)
  final = jax.tree.map(lambda x: x[0], state)
  stacked = ({k: np.stack([m[k] for m in history]) for k in history[0]}
             if history else {})
  out = (make_policy_factory(algorithm.networks), policy_params(final),
         stacked)
  return out + (final,) if return_state else out


def _open_run(workdir, family, config, seed, alpha, like):
  """(checkpoint manager, state, metrics so far) of a run directory: a new
  one gets config.json; an existing one must hold the same run."""
  from admrl_jax import checkpoints  # pylint: disable=g-import-not-at-top
  record = _record(family, config, seed, alpha)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    keys = ('env', 'horizon', 'alphas', 'seeds', 'config')
    diffs = [k for k in keys if saved.get(k) != json.loads(
        json.dumps(record[k]))]
    if diffs:
      raise ValueError(f'checkpoint_dir {workdir} holds another run (its '
                       f'{", ".join(diffs)} differ); use another directory')
  else:
    fileio.write_json(path, record, indent=2)
  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  state = like if step is None else manager.restore(step, like)
  history = [m for m in _read_metrics(workdir) if m['task_index'] < (step or 0)]
  history = [{k: np.asarray(v) for k, v in m.items()
              if k not in ('seed', 'alpha', 'wall_time')} for m in history]
  return manager, state, history


def _append_metrics(workdir, metrics, seed, alpha):
  row = dict(seed=seed, alpha=alpha,
             **fileio.to_jsonable({k: np.asarray(v).tolist()
                                 for k, v in metrics.items()}))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps(row) + '\n')


def _read_metrics(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_state(workdir: str, step: Optional[int] = None, member: int = 0,
               family: Optional[TaskFamily] = None
               ) -> Tuple[TaskFamily, admrl.AdMRLConfig, admrl.AdMRLState]:
  """(family, config, state) of one member of a run directory (of `train`
  or of `python -m experiments.run`), at checkpoint `step` (None: the
  latest).

  Args:
    workdir: the run directory (config.json, checkpoints/).
    step: a saved task iteration (None: the latest).
    member: the index of the (seed, α) member in the run's batch (seeds
      outer, α inner, as config.json lists them).
    family: the run's family, for a family that is not registered under
      its name (None: rebuilt from config.json).
  Raises:
    FileNotFoundError: no run, or no checkpoint, in `workdir`.
    ValueError: a step or member that does not exist (the message lists
      those that do).
  """
  from admrl_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from admrl_jax import config_io  # pylint: disable=g-import-not-at-top
  record, config = config_io.read_run(workdir)
  if family is None:
    family = config_io.family_from_record(record)
  pairs = config_io.members(record)
  if not 0 <= member < len(pairs):
    raise ValueError(f'member {member} does not exist; the run has '
                     f'{len(pairs)} (seed, alpha) members {pairs}')
  algorithm = admrl.AdMRL(family, config)
  like = sweep.init_members(algorithm.init, pairs)
  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'))
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir} has no checkpoint yet')
  # A step not saved: `StepNotFound` (a ValueError) lists the saved ones.
  state = manager.restore(step, like)
  return family, config, jax.tree.map(lambda x: x[member], state)


def load(workdir: str, step: Optional[int] = None, member: int = 0,
         family: Optional[TaskFamily] = None):
  """A finished (or running) run, ready to act and to inspect.

  Args: as `load_state`.
  Returns:
    (family, make_policy, params, model): the run's task family,
    `make_policy(params, deterministic=True) -> policy(obs, key)`
    (`make_policy_factory`), the `PolicyParams` of the task trained last,
    and the learned dynamics model's state (`state.slbo.model`: network
    parameters and normalisers; `networks.make_networks(...).model.predict`
    predicts with it).
  Raises: as `load_state`.
  """
  family, config, state = load_state(workdir, step, member, family)
  networks = admrl.AdMRL(family, config).networks
  return (family, make_policy_factory(networks), policy_params(state),
          state.slbo.model)
