"""Algorithm 1 as a pure task iteration: embedding under the caller's own
jit(vmap), one compiled program, baselines' task choice, NaN handling."""
import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_count
from admrl_jax import envs
from admrl_jax import linalg
from admrl_jax.envs import lq
from admrl_jax.meta import admrl
from admrl_jax.meta import adversary
from admrl_jax.meta import task_gradient as tg
from admrl_jax.models import dynamics
from experiments import logs
from experiments import presets


@pytest.fixture(scope='module')
def setup():
  config, family_overrides, _ = presets.preset('lq', 'smoke')
  family = envs.make('lq', **family_overrides)
  algorithm = admrl.AdMRL(family, config)
  # The first task iteration of three seeds (no task gradient yet).
  states = []
  for seed in range(3):
    state, metrics = algorithm.jitted(algorithm.init(jax.random.key(seed),
                                                     2.0), True)
    states.append(state)
  return family, config, algorithm, states, metrics


def test_first_iteration(setup):
  family, config, algorithm, states, metrics = setup
  state = states[-1]
  assert int(state.iteration) == 1
  np.testing.assert_allclose(metrics.u, config.first_u)  # u = 0.3 first
  np.testing.assert_allclose(state.visited_u[0], config.first_u)
  assert np.all(np.abs(np.asarray(state.u)) <= 1.0)
  assert not np.allclose(state.u, config.first_u)       # then random
  assert int(state.real_samples) == (config.n_slbo_first
                                     * algorithm.samples_per_stage())
  assert int(state.slbo.data.size) == int(state.real_samples)
  assert not bool(metrics.grad_accepted) and np.isnan(metrics.gap)


def test_task_iteration_embeds_in_the_callers_jit_vmap(setup):
  """One AdMRL task iteration (with its task gradient) inside the test's
  own jax.jit(jax.vmap(...)) over 3 seeds = three separate calls."""
  _, _, algorithm, states, _ = setup
  # Batched kernels round differently from unbatched ones; the task
  # gradient (a 20-iteration float32 solve of an ill-conditioned system)
  # amplifies that to up to 0.9% of its norm at the suite's XLA
  # optimisation level 0 (tests/conftest.py; measured 0.02-0.9% over the
  # three seeds, a small coordinate moving by 4% of itself), the next task
  # u + α ĝ (α = 2) with it, and the gap (a difference of two returns) to
  # ~0.3%; the rest agrees to ~1e-4.
  tolerance = {'u_next': 2e-2, 'gap': 2e-2}
  batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
  mine = jax.jit(jax.vmap(lambda s: algorithm.task_iteration(s, False)))
  out_states, out_metrics = mine(batched)
  for i, state in enumerate(states):
    # Every task iteration, the first included (the fixture's), is the same
    # program: this one, not the first, compiles nothing.
    with compile_count.compilations() as compiled:
      single_state, single_metrics = algorithm.jitted(state, False)
    assert not compiled, compiled
    assert bool(single_metrics.grad_accepted)
    grad, want = (np.asarray(out_metrics.grad_u)[i],
                  np.asarray(single_metrics.grad_u))
    assert np.linalg.norm(grad - want) <= 2e-2 * np.linalg.norm(want), (
        grad, want)
    for name in ('u', 'psi', 'u_next', 'gap', 'return_hat',
                 'return_star', 'model_loss', 'virtual_return',
                 'real_samples'):
      np.testing.assert_allclose(
          np.asarray(getattr(out_metrics, name))[i],
          np.asarray(getattr(single_metrics, name)),
          rtol=tolerance.get(name, 2e-3), atol=tolerance.get(name, 2e-3),
          err_msg=name)
    np.testing.assert_array_equal(np.asarray(out_states.iteration)[i], 2)
    np.testing.assert_allclose(np.asarray(out_states.visited_u)[i],
                               np.asarray(single_state.visited_u), atol=1e-5)


@pytest.mark.parametrize('algo', ['mb_unif', 'mb_gauss', 'mb_vertices',
                                  'slbo'])
def test_baselines_choose_tasks_in_the_box(algo):
  config, family_overrides, _ = presets.preset('lq', 'smoke')
  family = envs.make('lq', task_low=(-2.0, 1.2), task_high=(2.0, 2.0),
                     **family_overrides)
  algorithm = admrl.AdMRL(family, admrl.AdMRLConfig(
      algo=algo, slbo=config.slbo))
  u = jnp.asarray([0.1, -0.4])
  next_task = jax.jit(lambda key: algorithm.next_task(
      None, None, family.from_u(u), u, 1.0, key, False)[0])
  draws = np.stack([np.asarray(next_task(jax.random.key(i)))
                    for i in range(200)])
  assert np.all(np.abs(draws) <= 1.0)
  if algo == 'slbo':
    np.testing.assert_array_equal(draws, np.broadcast_to(u, draws.shape))
  elif algo == 'mb_unif':
    assert abs(draws.mean()) < 0.15 and 0.25 < draws.var() < 0.42  # U[−1,1]
  elif algo == 'mb_vertices':  # only the box's corners, each of them
    np.testing.assert_array_equal(np.abs(draws), 1.0)
    assert len({tuple(d) for d in draws}) == 4
  else:  # N(0, I) in u, clipped: ~32% of each side on the boundary
    on_boundary = np.mean(np.abs(draws) == 1.0, axis=0)
    assert np.all((0.2 < on_boundary) & (on_boundary < 0.45)), on_boundary


def test_mb_gauss_samples_as_the_authors_code():
  """MB-Gauss draws u ~ N(0, I) in the normalised coordinates and clips it
  (the authors' `random_sample('normal')`), whatever the box's widths: on
  hopper2d's box ([−2, 2] × [1.2, 2.0]) each coordinate lands on its
  boundary with P(|N(0, 1)| > 1) = 0.3173, half on each side (a draw in
  ψ's own units put 69% of the narrow height side there)."""
  family = envs.make('hopper2d')
  psi = np.asarray(family.sample_gaussian(jax.random.key(0), (40_000,)))
  u = np.asarray(family.to_u(psi))
  on_boundary = np.mean(np.abs(np.abs(u) - 1.0) < 1e-5, axis=0)
  np.testing.assert_allclose(on_boundary, 0.3173, atol=0.01)
  for side in (-1.0, 1.0):
    np.testing.assert_allclose(np.mean(np.abs(u - side) < 1e-5, axis=0),
                               0.1587, atol=0.008)
  assert np.all((psi >= family.task_low - 1e-6)
                & (psi <= family.task_high + 1e-6))
  # Inside the box, u is standard normal: its spread matches N(0, 1)
  # restricted to [−1, 1] (variance 0.291).
  inside = u[np.abs(u[:, 1]) < 1 - 1e-5, 1]
  np.testing.assert_allclose(inside.var(), 0.291, atol=0.015)


def test_nonfinite_task_gradient_is_rejected(setup):
  """A diverged model (NaN weights) gives a non-finite task gradient: the
  step is rejected and flagged, u stays."""
  _, _, algorithm, states, _ = setup
  state = states[0]
  s = state.slbo
  broken = s.replace(model=s.model.replace(params=jax.tree.map(
      lambda x: jnp.full_like(x, jnp.nan), s.model.params)))
  hat = (s.agent.policy, s.agent.value, s.model.norms.state)
  u = state.u
  u_next, metrics = jax.jit(algorithm.next_task)(
      broken, hat, algorithm.family.from_u(u), u, state.alpha,
      jax.random.key(0), False)
  assert not bool(metrics['grad_accepted'])
  np.testing.assert_array_equal(u_next, u)
  np.testing.assert_array_equal(metrics['grad_u'], 0.0)


def test_model_fit_skips_nonfinite_steps(setup):
  """NaN in the data: the fit rejects those steps and keeps finite weights."""
  _, config, _, states, _ = setup
  s = states[0].slbo
  data = s.data.replace(data=s.data.data.replace(
      next_obs=jnp.full_like(s.data.data.next_obs, jnp.nan)))
  fit = dynamics.make_fit(config.slbo.model)
  model, metrics = fit(s.model, data, jax.random.key(0))
  assert int(metrics['rejected']) == config.slbo.model.n_steps
  for new, old in zip(jax.tree.leaves(model.params),
                      jax.tree.leaves(s.model.params)):
    np.testing.assert_array_equal(new, old)


# ------------------------------------------------- issue 16: robustness
def _grad(residual, finite=True):
  """A TaskGradient with only the fields `step_scale` reads set."""
  zero = jnp.zeros(2)
  return tg.TaskGradient(
      grad_psi=zero, grad_u=zero, return_grad_star=zero,
      return_grad_hat=zero, implicit_term=zero,
      policy_grad_norm=jnp.zeros(()), residual=jnp.asarray(residual),
      iterations=jnp.zeros((), jnp.int32), finite=jnp.asarray(finite))


def test_step_scale_acts_on_the_solve_residual():
  """The paper's default takes any finite step; with max_residual a solve
  that did not converge rejects or shortens it."""
  default = tg.TaskGradientConfig()
  assert default.max_residual is None  # the paper's damped CG: no check
  assert float(tg.step_scale(default, _grad(0.9))) == 1.0
  assert float(tg.step_scale(default, _grad(0.9, finite=False))) == 0.0
  reject = tg.TaskGradientConfig(max_residual=1e-3)
  assert float(tg.step_scale(reject, _grad(1e-4))) == 1.0
  assert float(tg.step_scale(reject, _grad(0.13))) == 0.0
  assert float(tg.step_scale(reject, _grad(jnp.nan))) == 0.0
  shorten = tg.TaskGradientConfig(max_residual=0.1, residual_action='shorten')
  np.testing.assert_allclose(tg.step_scale(shorten, _grad(0.4)), 0.25)
  assert float(tg.step_scale(shorten, _grad(0.05))) == 1.0
  assert float(tg.step_scale(shorten, _grad(0.4, finite=False))) == 0.0
  for bad in (dict(max_residual=0.0), dict(residual_action='halve')):
    with pytest.raises(ValueError):
      tg.TaskGradientConfig(**bad)


def test_large_residual_shortens_the_ascent_step(setup):
  """task_gradient.max_residual below the solve's residual, 'shorten': the
  step is α·(max_residual/residual)·∂L/∂u, and the metrics say so; with
  the paper's estimator (Eq. 7, damped normal-equation CG), so that it
  also runs in Algorithm 1."""
  family, config, _, states, _ = setup
  max_residual = 1e-9
  algorithm = admrl.AdMRL(family, dataclasses.replace(
      config, task_gradient=dataclasses.replace(
          tg.preset('paper'), linear_solver=linalg.NormalCG(iters=20),
          max_residual=max_residual,
          residual_action='shorten')))
  state = states[0]
  s = state.slbo
  hat = (s.agent.policy, s.agent.value, s.model.norms.state)
  u_next, metrics = jax.jit(algorithm.next_task)(
      s, hat, family.from_u(state.u), state.u, state.alpha,
      jax.random.key(0), False)
  residual = float(metrics['residual'])
  assert residual > max_residual and bool(metrics['grad_accepted'])
  np.testing.assert_allclose(metrics['step_scale'], max_residual / residual,
                             rtol=1e-5)
  assert config.step_rule == 'normalized'  # the presets' rule
  grad_u = np.asarray(metrics['grad_u'])
  np.testing.assert_allclose(
      u_next, np.clip(np.asarray(state.u) + float(state.alpha)
                      * float(metrics['step_scale'])
                      * grad_u / np.linalg.norm(grad_u), -1.0, 1.0),
      rtol=1e-6, atol=1e-7)


@dataclasses.dataclass(frozen=True, eq=False)
class _GlitchyLQ(lq.LQFamily):
  """lq whose simulator returns an all-NaN state on 5% of its steps (a
  sensor glitch); the done rule then ends the episode."""

  def step(self, state, action):
    out = super().step(state, action)
    glitch = jax.random.uniform(
        jax.random.fold_in(state.pipeline_state.key, 7)) < 0.05
    s = jnp.where(glitch, jnp.nan, out.obs)
    return out.replace(pipeline_state=out.pipeline_state.replace(s=s), obs=s)


def test_nan_in_real_batches_leaves_the_run_finite(tmp_path):
  """Issue 16: NaN transitions in the real batches of two task iterations
  (the first, and one with a task gradient) are kept out of the dataset and
  the normalisers and counted; model, agent and task stay finite, the
  non-finite task gradient is rejected, and metrics.jsonl records the
  count."""
  config, family_overrides, _ = presets.preset('lq', 'smoke')
  plain = envs.make('lq', **family_overrides)
  family = _GlitchyLQ(**{f.name: getattr(plain, f.name)
                         for f in dataclasses.fields(plain) if f.init})
  algorithm = admrl.AdMRL(family, config)
  state = algorithm.init(jax.random.key(0), 2.0)
  history = []
  for first in (True, False):
    state, metrics = algorithm.jitted(state, first)
    history.append(metrics)
  dropped = [int(m.dropped_transitions) for m in history]
  assert all(d > 0 for d in dropped), dropped
  assert int(state.slbo.data.dropped) == sum(dropped)
  # Everything else entered the dataset (the task gradient's roll-outs
  # never do).
  assert int(state.slbo.data.size) == (
      (config.n_slbo_first + config.n_slbo) * algorithm.samples_per_stage()
      - sum(dropped))
  for leaf in jax.tree.leaves((state.slbo, state.u)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.isfinite(float(history[-1].model_loss))
  assert np.isfinite(float(history[-1].virtual_return))
  # The task gradient saw NaN real roll-outs: rejected, u stays.
  assert not bool(history[-1].grad_accepted)
  assert float(history[-1].step_scale) == 0.0
  np.testing.assert_array_equal(history[-1].u_next, history[-1].u)
  # The driver's log writes the count.
  log = logs.MetricsLog(str(tmp_path), [(0, 2.0)], keep_below=0)
  for metrics in history:
    log.write(jax.tree.map(lambda x: x[None], metrics), wall_time=0.0)
  log.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [row['dropped_transitions'] for row in rows] == dropped
  assert f'dropped {dropped[-1]} non-finite transitions' in log.last_summary


def test_task_iterations_on_hopper2d():
  """Algorithm 1 on a Brax family at smoke size with the pathwise Hessian
  (through the learned model's roll-outs, set as the driver's --set does):
  the first task iteration and one with the task gradient, whose
  normalised ascent step is u ← clip(u + α·∂L/∂u/‖∂L/∂u‖, −1, 1); sample
  accounting and finiteness of the state and the gradient."""
  config, family_overrides, alpha = presets.preset('hopper2d', 'smoke')
  config = presets.apply_overrides(config, {'task_gradient.hessian':
                                            'pathwise'})
  family = envs.make('hopper2d', **dict(family_overrides, horizon=20))
  algorithm = admrl.AdMRL(family, config)
  state = algorithm.init(jax.random.key(0), alpha)
  state, first = algorithm.jitted(state, True)
  state, second = algorithm.jitted(state, False)
  stages = config.n_slbo_first + config.n_slbo
  assert int(state.real_samples) == (stages * algorithm.samples_per_stage()
                                     + algorithm.gradient_samples())
  assert int(state.slbo.data.size) == stages * algorithm.samples_per_stage()
  assert int(first.dropped_transitions) == int(second.dropped_transitions) == 0
  assert bool(second.grad_accepted) and float(second.step_scale) == 1.0
  grad_u = np.asarray(second.grad_u)
  assert np.isfinite(float(second.residual)) and np.linalg.norm(grad_u) > 0
  np.testing.assert_allclose(
      second.u_next, np.clip(np.asarray(second.u) + alpha * grad_u
                             / np.linalg.norm(grad_u), -1.0, 1.0),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(second.u, first.u_next)
  np.testing.assert_allclose(second.gap,
                             second.return_star - second.return_hat,
                             rtol=1e-5, atol=1e-5)
  for leaf in jax.tree.leaves((state.slbo, state.u, second.grad_u,
                               second.model_loss, second.virtual_return)):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_a_batch_of_one_is_the_same_computation_up_to_rounding(setup):
  """The driver runs one seed as a vmapped batch of one; that program is not
  bitwise the unbatched `task_iteration` (kernels round differently — the
  driver's docstring and README give measured differences), but computes
  the same: after the first task iteration every leaf of the state agrees
  to rounding."""
  _, _, algorithm, states, _ = setup
  driver_program = jax.jit(jax.vmap(algorithm.task_iteration,
                                    in_axes=(0, None)))
  batch = jax.tree.map(lambda x: x[None],
                       algorithm.init(jax.random.key(2), 2.0))
  out, _ = driver_program(batch, True)
  as_data = lambda x: (jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x)
  for lane, single in zip(jax.tree.leaves(jax.tree.map(as_data, out)),
                          jax.tree.leaves(jax.tree.map(as_data, states[2]))):
    np.testing.assert_allclose(np.asarray(lane)[0], np.asarray(single),
                               rtol=1e-4, atol=1e-4)


def test_ascent_step_rules():
  """The paper's rule steps α·∂L/∂u; the normalised one a step of length α
  along ∂L/∂u, both clipped to the box; a zero gradient has no direction
  and is rejected under the normalised rule, a NaN under both."""
  u = jnp.asarray([0.2, -0.5])
  g = jnp.asarray([3.0, -4.0])
  paper, ok = adversary.ascent_step(u, g, 0.1)
  np.testing.assert_allclose(paper, [0.5, -0.9], rtol=1e-6)
  assert bool(ok)
  normalized, ok = adversary.ascent_step(u, g, 0.1, normalize=True)
  np.testing.assert_allclose(normalized, [0.26, -0.58], rtol=1e-6)
  assert bool(ok)
  # The scale of the estimate does not change the normalised step.
  np.testing.assert_allclose(
      adversary.ascent_step(u, 1e-4 * g, 0.1, normalize=True)[0], normalized,
      rtol=1e-6)
  clipped, _ = adversary.ascent_step(u, g, 2.0, normalize=True)
  np.testing.assert_allclose(clipped, [1.0, -1.0])
  for bad in (jnp.zeros(2), jnp.asarray([jnp.nan, 1.0])):
    stay, ok = adversary.ascent_step(u, bad, 0.1, normalize=True)
    assert not bool(ok)
    np.testing.assert_array_equal(stay, u)
  with pytest.raises(ValueError, match='step_rule'):
    admrl.AdMRLConfig(step_rule='adam')


def test_hessians_are_selectable_in_algorithm_1(setup):
  """task_gradient.hessian from the driver's --set text: a task iteration
  with the task gradient runs with the per-step Hessian (the authors'
  code) as with the pathwise one (the default, through the learned model),
  each giving a finite, accepted step on lq, and they differ on the same
  state and key. (The REINFORCE Hessian runs in the tests that set the
  paper's estimator: test_large_residual_shortens_the_ascent_step.)"""
  family, config, algorithm, states, _ = setup
  assert config.task_gradient.hessian == 'pathwise'  # the default
  per_step = presets.apply_overrides(config,
                                     {'task_gradient.hessian': 'per_step'})
  assert per_step.task_gradient.hessian == 'per_step'
  results = {}
  for name, algo in (('pathwise', algorithm),
                     ('per_step', admrl.AdMRL(family, per_step))):
    state, metrics = algo.jitted(states[0], False)
    assert bool(metrics.grad_accepted) and int(state.iteration) == 2, name
    assert np.all(np.isfinite(np.asarray(metrics.grad_u))), name
    assert np.linalg.norm(np.asarray(metrics.grad_u)) > 0, name
    assert np.isfinite(float(metrics.residual)), name
    results[name] = np.asarray(metrics.grad_u)
  assert not np.allclose(results['pathwise'], results['per_step'])


def test_named_task_gradient_presets():
  """--set=task_gradient.preset=paper|authors replaces the section before
  other task_gradient fields refine it; an unknown name is refused."""
  config, _, _ = presets.preset('lq', 'smoke')
  paper = presets.apply_overrides(
      config, {'task_gradient.linear_solver.iters': '50',
               'task_gradient.preset': 'paper'})
  assert paper.task_gradient == dataclasses.replace(
      tg.preset('paper'), linear_solver=linalg.NormalCG(iters=50))
  assert (paper.task_gradient.hessian, paper.task_gradient.linear_solver,
          paper.task_gradient.normalization) == (
              'reinforce', linalg.NormalCG(iters=50, damping=0.1),
              'per_sample')
  # The solver from the command line: a kind, or a kind with its fields,
  # set before the solver's own fields whatever their order.
  for sets, solver in (
      ({'task_gradient.linear_solver': 'cg_normal'}, linalg.NormalCG()),
      ({'task_gradient.linear_solver.iters': '30',
        'task_gradient.linear_solver': 'gmres(restart=10)'},
       linalg.GMRES(iters=30, restart=10)),
      ({'task_gradient.linear_solver':
        'cg_normal(iters=50, damping=0.2, scale=None)'},
       linalg.NormalCG(iters=50, damping=0.2))):
    assert presets.apply_overrides(
        config, sets).task_gradient.linear_solver == solver, sets
  for sets, match in (
      ({'task_gradient.linear_solver': 'lu'}, 'unknown linear solver'),
      ({'task_gradient.iters': '50'}, 'task_gradient.linear_solver.iters'),
      ({'task_gradient.linear_solver.damping': '0.1'}, 'MINRES solver'),
      ({'task_gradient.linear_solver': 'minres(iters=0)'}, 'iters')):
    with pytest.raises(ValueError, match=re.escape(match)):
      presets.apply_overrides(config, sets)
  authors = presets.apply_overrides(config, {'task_gradient.preset':
                                             'authors'})
  assert (authors.task_gradient.hessian,
          authors.task_gradient.normalization) == ('per_step', 'authors')
  with pytest.raises(ValueError, match='task_gradient.preset'):
    presets.apply_overrides(config, {'task_gradient.preset': 'best'})


def test_cem_update_moves_toward_the_worst_tasks():
  """mb_cem's cross-entropy step on a fixed set of measured gaps: with no
  uniform share its draws centre on the tasks with the largest gaps (the
  elite quantile), with spread floored at min_std; unmeasured (NaN) gaps
  are ignored; with fewer than two gaps, or a uniform share of 1, draws are
  uniform over the box."""
  rng = np.random.default_rng(0)
  visited = rng.uniform(-1.0, 1.0, size=(12, 2))
  visited[:3] = [[0.7, -0.6], [0.8, -0.5], [0.75, -0.7]]  # the worst three
  gaps = np.where(np.arange(12) < 3, 5.0, 0.1)
  gaps[5] = np.nan   # not measured
  visited[6] = np.nan
  draw = jax.jit(jax.vmap(lambda key, share, n: adversary.cem_next_task(
      key, jnp.asarray(visited, jnp.float32),
      jnp.where(jnp.arange(12) < n, jnp.asarray(gaps, jnp.float32),
                jnp.nan), 0.25, share, 0.05), in_axes=(0, None, None)))
  keys = jax.random.split(jax.random.key(0), 2000)
  cem = np.asarray(draw(keys, 0.0, 12))
  np.testing.assert_allclose(cem.mean(axis=0), [0.75, -0.6], atol=0.02)
  assert np.all(cem.std(axis=0) < 0.15) and np.all(np.abs(cem) <= 1.0)
  for share, n in ((1.0, 12), (0.0, 1)):
    uniform = np.asarray(draw(keys, share, n))
    np.testing.assert_allclose(uniform.mean(axis=0), 0.0, atol=0.06)
    np.testing.assert_allclose(uniform.var(axis=0), 1 / 3, atol=0.04)
  mixed = np.asarray(draw(keys, 0.5, 12))
  near = np.all(np.abs(mixed - [0.75, -0.6]) < 0.3, axis=1)
  assert 0.5 < near.mean() < 0.65  # half CEM, half uniform (~4% of it near)


def test_mb_cem_measures_gaps_and_chooses_from_them(setup):
  """mb_cem through Algorithm 1 on lq: after the first task every task
  iteration measures the training gap (real roll-outs of θ̂ and θ*,
  counted as the task gradient's samples) and records it in the state."""
  family, config, _, states, _ = setup
  algorithm = admrl.AdMRL(family, dataclasses.replace(config, algo='mb_cem'))
  assert algorithm.gradient_samples() == 2 * config.gradient_envs * (
      family.horizon)
  state, metrics = algorithm.jitted(states[0], False)
  assert np.isfinite(float(metrics.gap)) and not bool(metrics.grad_accepted)
  np.testing.assert_allclose(float(state.gaps[1]), float(metrics.gap))
  np.testing.assert_allclose(float(metrics.gap),
                             float(metrics.return_star - metrics.return_hat),
                             rtol=1e-5, atol=1e-5)
  assert int(state.real_samples) == int(states[0].real_samples) + (
      config.n_slbo * algorithm.samples_per_stage()
      + algorithm.gradient_samples())
  assert np.all(np.abs(np.asarray(metrics.u_next)) <= 1.0)
  with pytest.raises(ValueError, match='cem_quantile'):
    admrl.AdMRLConfig(cem_quantile=0.0)


def test_zero_shot_is_the_task_iterations_theta_hat(setup):
  """`AdMRL.zero_shot(state, state.u)` is the θ̂ the task iteration builds
  its gradient from: its real return with the iteration's roll-out key is
  the iteration's return_hat; at another task it is another policy."""
  from admrl_jax.rl.rollout import RolloutConfig  # pylint: disable=g-import-not-at-top
  from admrl_jax.rl import rollout  # pylint: disable=g-import-not-at-top
  family, config, algorithm, states, _ = setup
  state = states[0]
  _, metrics = algorithm.jitted(state, False)
  zero_shot = jax.jit(algorithm.zero_shot)
  policy, _, norm = zero_shot(state, state.u)
  # The iteration's key chain down to θ̂'s real roll-outs (`next_task`,
  # then its task gradient and the estimate's roll-outs).
  key_next = admrl.iteration_keys(state)[3]
  key_grad = jax.random.split(key_next)[1]
  key_estimate = jax.random.split(key_grad)[0]
  key_hat = jax.random.split(key_estimate, 4)[0]
  collect = rollout.make_collect_fn(
      family, algorithm.engine.policy_fn,
      RolloutConfig(n_envs=config.gradient_envs))
  real = collect((policy, norm), family.from_u(state.u), key_hat,
                 jnp.zeros((), state.u.dtype))
  np.testing.assert_allclose(float(jnp.mean(real.first_return)),
                             float(metrics.return_hat), rtol=2e-3, atol=2e-3)
  other = zero_shot(state, -state.u)[0]
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(policy), jax.tree.leaves(other)))


def test_phases_driven_from_the_host_are_the_task_iteration(setup):
  """`begin`, `phase` over `phase_indices(first)` and `end`, each its own
  compiled program (the driver's per-phase progress), compute the task
  iteration of `task_iteration` (one program): the next state and the
  metrics agree to rounding, the first task and a later one."""
  _, _, algorithm, states, _ = setup
  begin, phase, end = (jax.jit(algorithm.begin), jax.jit(algorithm.phase),
                       jax.jit(algorithm.end))
  assert algorithm.phase_indices(True) == list(
      range(1, algorithm.config.n_slbo_first + 1))
  assert algorithm.phase_indices(False) == list(
      range(0, algorithm.config.n_slbo + 1))
  state = algorithm.init(jax.random.key(7), 2.0)
  for first in (True, False):
    whole_state, whole = algorithm.jitted(state, first)
    carry = begin(state, first)
    for index in algorithm.phase_indices(first):
      carry, report = phase(carry, np.int32(index))
      assert np.isfinite(report.virtual_return)
    phased_state, phased = end(carry)
    for name in ('u_next', 'gap', 'grad_u', 'return_hat', 'model_loss',
                 'virtual_return', 'real_samples'):
      np.testing.assert_allclose(
          np.asarray(getattr(phased, name), np.float64),
          np.asarray(getattr(whole, name), np.float64),
          rtol=2e-2 if name in ('grad_u', 'gap') else 2e-3, atol=2e-3,
          err_msg=name)
    for a, b in zip(jax.tree.leaves(phased_state.slbo.data),
                    jax.tree.leaves(whole_state.slbo.data)):
      np.testing.assert_allclose(np.asarray(a, np.float64),
                                 np.asarray(b, np.float64), atol=1e-4)
    state = whole_state
