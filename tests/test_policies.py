"""Gaussian MLP policy: log-density, entropy and KL against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from admrl_jax.policies import gaussian_mlp as gm


def _params(seed, log_std):
  params = gm.policy_init(jax.random.key(seed), 4, 3)
  return gm.with_log_std(params, jnp.asarray(log_std, jnp.float32))


def _kernels(mlp):
  return [mlp[name]['kernel'].shape for name in sorted(mlp)]


def test_shapes_and_defaults():
  """The flax parameter trees: {'params': {'mean': MLP, 'log_std'}} and
  the value's MLP, layers hidden_0, hidden_1, out; zero biases, LeCun
  weights (var 1/fan_in, truncated at 2σ) and a last layer of the mean
  scaled by 0.01."""
  params = gm.policy_init(jax.random.key(0), 4, 3)
  mean = params['params']['mean']
  assert sorted(mean) == ['hidden_0', 'hidden_1', 'out']
  assert _kernels(mean) == [(4, 32), (32, 32), (32, 3)]
  np.testing.assert_array_equal(gm.log_std_of(params), 0.0)  # authors' code
  for layer in mean.values():
    np.testing.assert_array_equal(layer['bias'], 0.0)
  wide = gm.policy_init(jax.random.key(1), 400, 3, gm.PolicyConfig((400,)))
  kernel = np.asarray(wide['params']['mean']['hidden_0']['kernel'])
  np.testing.assert_allclose(kernel.std() * np.sqrt(400), 1.0, rtol=0.02)
  assert np.abs(kernel).max() * np.sqrt(400) <= 2.0 / 0.8796 + 1e-5
  out = np.asarray(wide['params']['mean']['out']['kernel'])
  np.testing.assert_allclose(out.std() * np.sqrt(400), 0.01, rtol=0.15)
  value = gm.value_init(jax.random.key(1), 4)
  assert _kernels(value['params']) == [(4, 64), (64, 64), (64, 1)]
  assert gm.value_apply(value, jnp.ones(4)).shape == ()


def test_log_prob_entropy_kl_match_closed_forms():
  p = _params(0, [0.1, -0.3, 0.5])
  q = _params(1, [0.0, 0.2, -0.1])
  obs = jnp.asarray([0.3, -1.0, 0.5, 2.0])
  action = jnp.asarray([0.2, -0.4, 1.0])
  mean_p, std_p = gm.policy_apply(p, obs)[0], np.exp(gm.log_std_of(p))
  mean_q, std_q = gm.policy_apply(q, obs)[0], np.exp(gm.log_std_of(q))
  np.testing.assert_allclose(
      gm.log_prob(p, obs, action),
      stats.norm.logpdf(action, mean_p, std_p).sum(), rtol=1e-5)
  np.testing.assert_allclose(gm.entropy(p),
                             stats.norm.entropy(0, std_p).sum(), rtol=1e-5)
  kl = np.sum(np.log(std_q / std_p)
              + (std_p**2 + (mean_p - mean_q)**2) / (2 * std_q**2) - 0.5)
  np.testing.assert_allclose(gm.kl(p, q, obs), kl, rtol=1e-5)
  np.testing.assert_allclose(gm.kl(p, p, obs), 0.0, atol=1e-7)


def test_samples_follow_the_policy():
  p = _params(0, [0.1, -0.3, 0.5])
  obs = jnp.ones(4)
  samples = jax.vmap(gm.policy_sample, (None, None, 0))(
      p, obs, jax.random.split(jax.random.key(0), 20000))
  mean, log_std = gm.policy_apply(p, obs)
  np.testing.assert_allclose(samples.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(samples.std(0), np.exp(log_std), rtol=0.03)
