"""Algorithm 1 as a pure task iteration: embedding under the caller's own
jit(vmap), one compiled program, baselines' task choice, NaN handling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import envs
from admrl_jax.meta import admrl
from admrl_jax.meta import presets
from admrl_jax.models import dynamics


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
  # amplifies that to ~0.4%, and the gap (a difference of two returns) to
  # ~0.3%; the rest agrees to ~1e-4.
  tolerance = {'grad_u': 2e-2, 'gap': 2e-2}
  batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
  mine = jax.jit(jax.vmap(lambda s: algorithm.task_iteration(s, False)))
  out_states, out_metrics = mine(batched)
  for i, state in enumerate(states):
    single_state, single_metrics = algorithm.jitted(state, False)
    assert bool(single_metrics.grad_accepted)
    for name in ('u', 'psi', 'u_next', 'gap', 'grad_u', 'return_hat',
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
  # Every task iteration, the first included, is the same program.
  assert algorithm.jitted._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize('algo', ['mb_unif', 'mb_gauss', 'slbo'])
def test_baselines_choose_tasks_in_the_box(algo):
  config, family_overrides, _ = presets.preset('lq', 'smoke')
  family = envs.make('lq', task_low=(-2.0, 1.2), task_high=(2.0, 2.0),
                     **family_overrides)
  algorithm = admrl.AdMRL(family, admrl.AdMRLConfig(
      algo=algo, slbo=config.slbo))
  u = jnp.asarray([0.1, -0.4])
  next_task = jax.jit(lambda key: algorithm._next_task(  # pylint: disable=protected-access
      None, None, family.from_u(u), u, 1.0, key, False)[0])
  draws = np.stack([np.asarray(next_task(jax.random.key(i)))
                    for i in range(200)])
  assert np.all(np.abs(draws) <= 1.0)
  if algo == 'slbo':
    np.testing.assert_array_equal(draws, np.broadcast_to(u, draws.shape))
  elif algo == 'mb_unif':
    assert abs(draws.mean()) < 0.15 and 0.25 < draws.var() < 0.42  # U[−1,1]
  else:  # N(centre, I) in ψ, clipped: u = ψ/half-width, many on the faces
    psi = np.asarray(family.from_u(draws))
    assert np.mean(np.abs(draws[:, 1]) == 1.0) > 0.3  # narrow 2nd side
    assert abs(np.median(psi[:, 0])) < 0.3


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
  u_next, metrics = jax.jit(algorithm._task_gradient)(  # pylint: disable=protected-access
      broken, hat, algorithm.family.from_u(u), u, state.alpha,
      jax.random.key(0))
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
