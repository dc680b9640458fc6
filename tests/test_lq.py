"""The `lq` family: its closed forms against numerical optimisation and simulation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize  # scipy comes with jax

from admrl_jax import envs
from admrl_jax.config import RolloutConfig
from admrl_jax.rl import rollout

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
