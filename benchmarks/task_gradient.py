r"""Cost of the task gradient: the paper's k solves against one adjoint solve.

    python benchmarks/task_gradient.py [--quick] [--env=halfcheetah_highdim]

Measures, in one run, on halfcheetah_highdim (k = 18, policy [32, 32],
model [1000, 1000], 50 × 200 = 10 000 samples per batch, authors' code):
  per_dimension_s      Eq. 2 with the paper's solve: k damped normal-equation
                       CG solves (`solver='per_dimension'`)
  adjoint_s            the same with one solve and one VJP (`'adjoint'`)
  adjoint_speedup      per_dimension_s / adjoint_s (goal >= 10)
  virtual_training_s   one `virtual_training` call, paper settings, n = 1
                       (100 model steps + 20 TRPO steps on 10 000 samples)
  fraction_of_task_iteration
                       adjoint_s / (100 × virtual_training_s): against the
                       40 zero-shot + 3 × 20 SLBO inner iterations of one
                       paper-scale task iteration (goal <= 0.01)
Both solvers run a fixed number of iterations (tol = 0) so the comparison is
like for like: 200 in full mode (the paper), 20 in --quick mode, whose times
are then scaled ×10 to 200 iterations (the solve dominates and is linear in
the iteration count; the unscaled figures are in the file too).

The three batches (virtual and real roll-outs of θ̂, real roll-outs of θ*)
are all model roll-outs here: only their shapes matter for the timing, and
this keeps a Brax compile out of the run. The state normaliser comes from
synthetic data and μ, σ of the Cheetah reward are 0 and 1 for the same
reason. Writes benchmarks/results/task_gradient.json.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_QUICK = flags.DEFINE_bool('quick', False,
                           '20 solver iterations, scaled to 200 (< 60 s).')
_ENV = flags.DEFINE_string('env', 'halfcheetah_highdim',
                           'Task family (k = its task dimension).')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                        'task_gradient.json'), 'Results file.')

PAPER_ITERS = 200


def timed(fn, repeats):
  """(first call incl. compile, best of `repeats` later calls), seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, min(times)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  # Compile once: a rerun loads its programs (compile times are then cache
  # loads; ADMRL_JAX_CACHE_DIR='' or a fresh directory for cold ones).
  from experiments import common  # pylint: disable=g-import-not-at-top
  cache_dir = common.enable_compilation_cache()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top

  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax import linalg  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import estimators  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import task_gradient as tg  # pylint: disable=g-import-not-at-top
  from admrl_jax.models import dynamics, normalizer  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import slbo, virtual  # pylint: disable=g-import-not-at-top
  from benchmarks import synthetic  # pylint: disable=g-import-not-at-top

  wall = time.time()
  quick = _QUICK.value
  iters = 20 if quick else PAPER_ITERS
  repeats = 1 if quick else 3
  overrides = {}
  if _ENV.value == 'halfcheetah_highdim':
    overrides = dict(state_mean=np.zeros(18, np.float32),
                     state_std=np.ones(18, np.float32))
  family = envs.make(_ENV.value, **overrides)
  config = slbo.SLBOConfig()  # paper shapes
  k = family.task_dim

  # SLBO state with normalisers from synthetic transitions.
  state, start_obs = synthetic.slbo_state(family, config,
                                          jax.random.key(0))
  psi = jnp.asarray(family.from_u(jnp.full(k, 0.3)))
  norm = state.model.norms.state

  # One virtual_training call, paper settings, n = 1.
  agent = slbo.SLBO(family, config)
  one_iteration = jax.jit(
      lambda s, p, key: agent.virtual_training(s, p, key, 1))
  vt_first_s, virtual_training_s = timed(
      lambda: one_iteration(state, psi, jax.random.key(4)), repeats)

  # Batches of π_θ̂ with its frozen value function (10 000 samples each).
  rollout = jax.jit(virtual.make_virtual_rollout(
      family, agent.policy_fn, dynamics.make_dynamics_fn(config.model),
      config.n_rollouts, config.rollout_steps))
  policy, value_params = state.agent.policy, state.agent.value

  def valued(key):
    tr = rollout((policy, norm), state.model, psi, start_obs, key)
    return estimators.ValuedBatch(
        tr, slbo.batch_value(value_params, norm, tr.obs, agent.networks.value),
        slbo.batch_value(value_params, norm, tr.next_obs,
                         agent.networks.value))

  batches = [valued(jax.random.key(i)) for i in (5, 6, 7)]

  def log_prob(theta, obs, action):
    return agent.networks.policy.log_prob(
        theta, normalizer.normalize(norm, obs), action)

  rows = {}
  for solver in ('adjoint', 'per_dimension'):
    tg_config = tg.TaskGradientConfig(
        solver=solver, linear_solver=linalg.MINRES(iters=iters, tol=0.0))
    fn = jax.jit(lambda v, rh, rs, p, c=tg_config: tg.from_samples(
        c, family, log_prob, psi=p, theta_hat=policy, virtual=v,
        real_hat=rh, real_star_transitions=rs.transitions))
    first, best = timed(lambda: fn(*batches, psi), repeats)
    out = fn(*batches, psi)
    rows[solver] = dict(seconds=best, compile_s=first - best,
                        iterations=int(out.iterations),
                        residual=float(out.residual),
                        finite=bool(out.finite))
    print(solver, json.dumps(rows[solver]), flush=True)

  scale = PAPER_ITERS / iters
  adjoint_s = rows['adjoint']['seconds'] * scale
  per_dimension_s = rows['per_dimension']['seconds'] * scale
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), jax_version=jax.__version__,
                compilation_cache=cache_dir,
                device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                machine=platform.machine(), env=family.name, quick=quick,
                wall_s=round(time.time() - wall, 1)),
      k=k,
      policy_params=int(ravel_pytree(policy)[0].size),
      samples_per_batch=config.n_rollouts * (config.rollout_steps
                                             or family.horizon),
      solver_iterations_measured=iters,
      scaled_to_iterations=PAPER_ITERS,
      per_dimension_s=per_dimension_s,
      adjoint_s=adjoint_s,
      adjoint_speedup=per_dimension_s / adjoint_s,
      virtual_training_s=virtual_training_s,
      virtual_training_compile_s=vt_first_s - virtual_training_s,
      fraction_of_task_iteration=adjoint_s / (100 * virtual_training_s),
      measured=rows)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({key: v for key, v in result.items() if key != 'measured'},
                   indent=2))


if __name__ == '__main__':
  app.run(main)
