r"""Throughput of SLBO's virtual training at paper shapes, against this machine's matmul rate.

    python benchmarks/virtual_training.py [--quick] [--env=hopper2d]

Measures, in one run:
  matmul_gflops          dense float32 matmul rate (2048² @ 2048², jitted),
                         the best of measurements taken before and after
                         every roll-out layout, after every whole-iteration
                         run and after the parts (all in matmul_gflops_each)
  virtual_samples_per_s  virtual roll-out samples/s (model [1000, 1000],
                         policy [32, 32]) for the paper layout 50 × 200 and
                         for wider layouts with the same 10 000 samples
  rollout_gflops         useful FLOPs of the roll-out (model + policy
                         forward passes) per second
  roofline_fraction      rollout_gflops / matmul_gflops
  virtual_training_iteration_s
                         one whole VirtualTraining iteration (nmodel 100
                         model steps, then npolicy 20 × [roll-out, GAE,
                         TRPO step, value fit]), one program with its state
                         donated, as the task iteration runs it
  iteration_roofline_fraction
                         its useful FLOPs (experiments.progress.
                         slbo_iteration_flops) / its time / matmul_gflops
  iteration_parts        the split by part: seconds (each part timed alone,
                         GAE and glue the rest of the iteration), FLOPs,
                         their shares and each part's roofline fraction
  trpo_step_s, value_fit_s, model_fit_s
                         one call of each part alone (paper-layout batch;
                         100 model Adam steps of batch 256)
  compile_iteration_s    compiling one VirtualTraining iteration
and projects the wall time of one paper-scale task iteration (zero-shot 40
iterations + 3 SLBO stages × 20, each one VirtualTraining iteration).
Writes benchmarks/results/virtual_training.json.
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

_QUICK = flags.DEFINE_bool('quick', False, 'Fewer repeats and layouts (< 60 s).')
_ENV = flags.DEFINE_string('env', 'hopper2d', 'Task family for shapes/reward.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                        'virtual_training.json'), 'Results file.')


def best_time(fn, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  # Compile once: a rerun loads its programs (compile times are then cache
  # loads; ADMRL_JAX_CACHE_DIR='' or a fresh directory for cold ones).
  from experiments import common  # pylint: disable=g-import-not-at-top
  cache_dir = common.enable_compilation_cache()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from admrl_jax import envs, networks  # pylint: disable=g-import-not-at-top
  from admrl_jax.models import dynamics  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import slbo, virtual  # pylint: disable=g-import-not-at-top
  from benchmarks import synthetic  # pylint: disable=g-import-not-at-top
  from experiments import progress  # pylint: disable=g-import-not-at-top

  wall = time.time()
  repeats = 2 if _QUICK.value else 5
  # A roll-out takes ~0.2 s and this shared machine's speed drifts by up to
  # ±30% between runs: the best of many repeats is the stable figure.
  rollout_repeats = 3 if _QUICK.value else 20
  family = envs.make(_ENV.value)
  family = family.calibrate(jax.random.key(0))
  config = slbo.SLBOConfig()  # paper shapes (authors' code)
  ds, da = family.obs_size, family.action_size

  # Matmul rate of this machine. A shared machine's speed drifts over a
  # run, so the rate is measured again around every roll-out layout and
  # the best of all measurements is the reference (the stricter choice).
  n = 2048
  a = jax.random.normal(jax.random.key(1), (n, n))
  b = jax.random.normal(jax.random.key(2), (n, n))
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  matmul_rates = []

  def measure_matmul():
    matmul_rates.append(
        2 * n**3 / best_time(lambda: matmul(a, b), repeats) / 1e9)

  measure_matmul()

  # Normalisers from synthetic transitions (throughput does not depend on
  # the data; this avoids compiling a real roll-out here).
  state, start_obs = synthetic.slbo_state(family, config,
                                          jax.random.key(3))
  psi = jnp.asarray(family.from_u(jnp.full(family.task_dim, 0.3)))
  norm = state.model.norms.state
  dynamics_fn = dynamics.make_dynamics_fn(config.model)

  model_flops = 2 * ((ds + da) * 1000 + 1000 * 1000 + 1000 * ds)
  policy_flops = 2 * (ds * 32 + 32 * 32 + 32 * da)
  flops_per_sample = model_flops + policy_flops

  layouts = [(50, 200)] if _QUICK.value else [(50, 200), (200, 50),
                                               (1000, 10)]
  rows = []
  for n_rollouts, steps in layouts:
    run = jax.jit(virtual.make_virtual_rollout(
        family, slbo.make_policy_fn(networks.gaussian_mlp_policy(
            config.policy)), dynamics_fn, n_rollouts, steps))
    args = ((state.agent.policy, norm), state.model, psi, start_obs)
    t0 = time.perf_counter()
    jax.block_until_ready(run(*args, jax.random.key(5)))
    compile_rollout_s = time.perf_counter() - t0
    seconds = best_time(lambda: run(*args, jax.random.key(6)),
                        rollout_repeats)
    measure_matmul()
    samples_per_s = n_rollouts * steps / seconds
    gflops = samples_per_s * flops_per_sample / 1e9
    rows.append(dict(layout=f'{n_rollouts}x{steps}', n_rollouts=n_rollouts,
                     steps=steps, virtual_samples_per_s=samples_per_s,
                     rollout_gflops=gflops, rollout_s=seconds,
                     compile_s=compile_rollout_s))
  for row in rows:
    print(json.dumps(row), flush=True)
  paper = rows[0]

  # The whole VirtualTraining iteration as one program, as the task
  # iteration runs it, its state donated (the dataset is not copied).
  agent = slbo.SLBO(family, config)
  one_iteration = jax.jit(
      lambda s, p, k: agent.virtual_training(s, p, k, 1),
      donate_argnums=0)
  iteration_state = jax.tree.map(jnp.copy, state)
  t0 = time.perf_counter()
  compiled = one_iteration.lower(iteration_state, psi,
                                 jax.random.key(11)).compile()
  compile_iteration_s = time.perf_counter() - t0
  iteration_times = []
  for i in range(1 + (2 if _QUICK.value else 4)):  # the first call warms up
    t0 = time.perf_counter()
    iteration_state, metrics = compiled(iteration_state, psi,
                                        jax.random.key(12 + i))
    jax.block_until_ready((iteration_state, metrics))
    iteration_times.append(time.perf_counter() - t0)
    measure_matmul()
  iteration_s = min(iteration_times[1:])
  del iteration_state

  # The parts, each its own program, on the paper-layout batch.
  parts_s = _time_parts(agent, state, psi, start_obs, repeats)
  parts_s['rollout'] = paper['rollout_s']
  measure_matmul()
  matmul_gflops = max(matmul_rates)

  n_policy = config.n_policy
  flops = progress.slbo_iteration_flops(family, config)
  seconds = dict(rollout=n_policy * parts_s['rollout'],
                 trpo=n_policy * parts_s['trpo_step'],
                 value_fit=n_policy * parts_s['value_fit'],
                 model_fit=parts_s['model_fit'])
  # GAE (and the glue between the parts) has no program of its own: the
  # iteration's time not spent in the other parts.
  seconds['gae'] = max(iteration_s - sum(seconds.values()), 0.0)
  split = {}
  for part in ('rollout', 'model_fit', 'trpo', 'value_fit', 'gae'):
    split[part] = dict(
        seconds=seconds[part], share_of_iteration=seconds[part] / iteration_s,
        flops=flops[part], share_of_flops=flops[part] / sum(flops.values()),
        roofline_fraction=(flops[part] / seconds[part] / 1e9 / matmul_gflops
                           if seconds[part] > 0 else None))
  iteration_flops = sum(flops.values())
  iteration_gflops = iteration_flops / iteration_s / 1e9
  for row in rows:
    row['roofline_fraction'] = row['rollout_gflops'] / matmul_gflops

  iterations = config.n_zeroshot + 3 * config.n_inner
  projected = iterations * iteration_s
  result = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'), jax_version=jax.__version__,
                compilation_cache=cache_dir,
                device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                machine=platform.machine(), env=family.name,
                quick=_QUICK.value, load_average=os.getloadavg(),
                wall_s=round(time.time() - wall, 1)),
      matmul_gflops=matmul_gflops,
      matmul_gflops_each=matmul_rates,
      virtual_samples_per_s=paper['virtual_samples_per_s'],
      rollout_gflops=paper['rollout_gflops'],
      roofline_fraction=paper['roofline_fraction'],
      layouts=rows,
      flops_per_sample=flops_per_sample,
      virtual_training_iteration_s=iteration_s,
      virtual_training_iteration_s_each=iteration_times,
      iteration_flops=iteration_flops,
      iteration_gflops=iteration_gflops,
      iteration_roofline_fraction=iteration_gflops / matmul_gflops,
      iteration_parts=split,
      iteration_parts_note=(
          'seconds: rollout, trpo and value_fit are n_policy x one call of '
          'each part alone (trpo: trpo_step on the virtual batch; value_fit: '
          'trpo.value_fit), model_fit one fit call; gae is the whole '
          "iteration's time left over (GAE, start states, glue); flops: "
          'experiments.progress.slbo_iteration_flops; roofline_fraction = '
          'flops / seconds / matmul rate'),
      trpo_step_s=parts_s['trpo_step'],
      value_fit_s=parts_s['value_fit'],
      model_fit_s=parts_s['model_fit'],
      compile_iteration_s=compile_iteration_s,
      projected_task_iteration_s=projected,
      projected_task_iteration_note=(
          f'{iterations} VirtualTraining iterations (zero-shot '
          f'{config.n_zeroshot} + 3 x {config.n_inner}), each '
          'virtual_training_iteration_s; real collection excluded'))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != 'layouts'},
                   indent=2))


def _time_parts(agent, state, psi, start_obs, repeats):
  """Seconds of one call of each part of a VirtualTraining iteration
  alone, jitted: the TRPO step and the value fit on a paper-layout
  virtual batch with its GAE, and the model fit."""
  import jax  # pylint: disable=g-import-not-at-top
  from admrl_jax.models import normalizer  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import returns, trpo  # pylint: disable=g-import-not-at-top
  config = agent.config
  norm = state.model.norms.state
  agent_state = state.agent
  tr = jax.jit(agent.make_virtual_rollout(config.n_rollouts,
                                         config.rollout_steps))(
      (agent_state.policy, norm), state.model, psi, start_obs,
      jax.random.key(13))
  value = jax.vmap(jax.vmap(agent.networks.value.apply, (None, 0)),
                   (None, 0))
  obs_n = normalizer.normalize(norm, tr.obs)
  adv, ret = returns.batched_gae(
      tr.reward, value(agent_state.value, obs_n),
      value(agent_state.value, normalizer.normalize(norm, tr.next_obs)),
      tr.done, tr.timeout, config.gamma, config.lam)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  batch = trpo.TRPOBatch(obs=flat(obs_n), actions=flat(tr.raw_action),
                         advantages=flat(adv))
  trpo_step = jax.jit(trpo.trpo_step, static_argnames='config')
  value_fit = jax.jit(trpo.value_fit, static_argnames='config')
  fit = agent.networks.model.make_fit(config.real.n_envs)
  calls = dict(
      trpo_step=lambda: trpo_step(agent_state.policy, batch, config.trpo),
      value_fit=lambda: value_fit(agent_state.value, agent_state.value_opt,
                                  batch.obs, flat(ret), jax.random.key(14),
                                  config.trpo),
      model_fit=lambda: fit(state.model, state.data, jax.random.key(15)))
  for call in calls.values():
    jax.block_until_ready(call())
  return {name: best_time(call, repeats) for name, call in calls.items()}


if __name__ == '__main__':
  app.run(main)
