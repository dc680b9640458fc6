"""The `lq` family: its closed forms against numerical optimisation and simulation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize  # scipy comes with jax

from admrl_jax import envs
from admrl_jax import linalg
from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig

HORIZON = 8
ACTION_STD = 0.3


@pytest.fixture(scope='module')
def lq():
  return envs.make('lq', horizon=HORIZON)


@pytest.mark.parametrize('psi', [(0.5, -0.3), (-1.0, 1.0)])
def test_closed_form_optimum_equals_numerical_optimisation(lq, psi):
  """Riccati optimum = BFGS over time-varying affine Gaussian policies."""
  with jax.enable_x64(True):
    psi = jnp.asarray(psi, jnp.float64)
    m, n = lq.action_size, lq.obs_size
    size_k = HORIZON * m * n

    def negative_return(flat):
      gains = flat[:size_k].reshape(HORIZON, m, n)
      offsets = flat[size_k:].reshape(HORIZON, m)
      return -lq.expected_return(psi, gains, offsets, ACTION_STD)

    value = jax.jit(negative_return)
    grad = jax.jit(jax.grad(negative_return))
    result = minimize(lambda x: float(value(x)), np.zeros(size_k + HORIZON * m),
                      jac=lambda x: np.asarray(grad(x)), method='BFGS',
                      options={'maxiter': 5000, 'gtol': 1e-10})
    closed = lq.optimal_return(psi, ACTION_STD)
    np.testing.assert_allclose(-result.fun, closed, rtol=1e-8)
    # The maximiser is the Riccati policy itself.
    gains, offsets, _ = lq.optimal_policy(psi, ACTION_STD)
    np.testing.assert_allclose(result.x[:size_k].reshape(HORIZON, m, n), gains,
                               atol=1e-5)
    np.testing.assert_allclose(result.x[size_k:].reshape(HORIZON, m), offsets,
                               atol=1e-5)
    # Any other policy does worse.
    assert lq.expected_return(psi, gains * 0.9, offsets, ACTION_STD) < closed


def test_optimal_return_is_the_riccati_policys_exact_return(lq):
  with jax.enable_x64(True):
    psi = jnp.asarray([0.2, 0.7], jnp.float64)
    gains, offsets, _ = lq.optimal_policy(psi, ACTION_STD)
    np.testing.assert_allclose(
        lq.expected_return(psi, gains, offsets, ACTION_STD),
        lq.optimal_return(psi, ACTION_STD), rtol=1e-12)


def test_exact_return_matches_simulated_rollouts(lq):
  """expected_return (mean/covariance propagation) = Monte Carlo of the env."""
  n_envs = 4000
  gain = jnp.asarray([[-0.4, 0.1], [0.05, -0.3]])
  offset = jnp.asarray([0.3, -0.2])
  psi = jnp.asarray([0.5, -0.5])
  collect = rollout.make_collector(
      lq, rollout.linear_gaussian_policy(ACTION_STD),
      RolloutConfig(n_envs=n_envs))
  out = collect((gain, offset), psi, jax.random.key(0), noise_scale=0.0)
  returns = np.asarray(out.first_return)
  stderr = returns.std() / np.sqrt(n_envs)
  exact = float(lq.expected_return(psi, gain, offset, ACTION_STD))
  assert abs(returns.mean() - exact) < 4 * stderr, (returns.mean(), exact,
                                                    stderr)
  # And the optimum is higher than this policy's return.
  assert float(lq.optimal_return(psi, ACTION_STD)) > exact


def test_lq_highdim_family():
  """`lq_highdim`: k = 8 targets, A = 0.9·orthogonal, B = 0.5·I; 16 distinct
  vertices and 8 interior evaluation tasks; its Riccati optimum beats a
  perturbed policy and matches simulation; bad k is refused."""
  family = envs.make('lq_highdim', horizon=HORIZON)
  assert family.name == 'lq_highdim' and family.task_dim == 8
  assert family.obs_size == family.action_size == 8
  np.testing.assert_allclose(np.abs(np.linalg.eigvals(family.A)), 0.9,
                             rtol=1e-12)
  np.testing.assert_array_equal(family.B, 0.5 * np.eye(8))
  tasks = family.eval_tasks()
  assert tasks.shape == (24, 8)
  assert np.all(np.abs(tasks[:16]) == 1.0)
  assert len({tuple(v) for v in tasks[:16]}) == 16
  assert np.all(np.abs(tasks[16:]) <= 0.5)
  # Seeded: the same family twice, another seed another A.
  np.testing.assert_array_equal(envs.make('lq_highdim').A, family.A)
  assert not np.allclose(envs.make('lq_highdim', seed=1).A, family.A)
  with jax.enable_x64(True):
    psi = jnp.asarray(tasks[3], jnp.float64)
    gains, offsets, _ = family.optimal_policy(psi, ACTION_STD)
    best = family.optimal_return(psi, ACTION_STD)
    np.testing.assert_allclose(
        family.expected_return(psi, gains, offsets, ACTION_STD), best,
        rtol=1e-12)
    assert family.expected_return(psi, 0.9 * gains, offsets,
                                  ACTION_STD) < best
    assert family.expected_return(psi, gains, offsets + 0.1,
                                  ACTION_STD) < best
  collect = rollout.make_collector(
      family, rollout.linear_gaussian_policy(ACTION_STD),
      RolloutConfig(n_envs=4000))
  psi32 = jnp.asarray(tasks[3], jnp.float32)
  out = collect((jnp.asarray(gains[0], jnp.float32),
                 jnp.asarray(offsets[0], jnp.float32)), psi32,
                jax.random.key(0), noise_scale=0.0)
  returns = np.asarray(out.first_return)
  exact = float(family.expected_return(psi32, gains[0], offsets[0],
                                       ACTION_STD))
  assert abs(returns.mean() - exact) < 4 * returns.std() / np.sqrt(4000)
  with pytest.raises(ValueError, match='k must be'):
    envs.make('lq_highdim', k=0)


def test_lq_highdim_task_gradient_ground_truth():
  """On k = 8: Eq. 2 from the exact pieces with a dense solve equals the
  central differences of the gap with full re-optimisation, and the gap is
  real (the misspecified model of `ground_truth.analytic_setting`)."""
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import task_gradient as tg  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    true, model = gt.analytic_setting(8, horizon=HORIZON)
    psi = jnp.asarray(np.linspace(-0.9, 0.9, 8))
    out = jax.jit(lambda p: tg.assemble(
        tg.TaskGradientConfig(linear_solver=linalg.Dense()), psi=p,
        **gt.exact_pieces(true, model, p, ACTION_STD)))(psi)
    fd = jax.jit(lambda p: gt.true_gradient(true, model, p, ACTION_STD))(psi)
    assert float(gt.gap(true, model, psi, ACTION_STD)) > 1e-3
    np.testing.assert_allclose(out.grad_psi, fd, rtol=1e-6,
                               atol=1e-8 * float(np.abs(fd).max()))
