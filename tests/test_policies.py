"""Gaussian MLP policy: log-density, entropy and KL against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from admrl_jax.policies import gaussian_mlp as gm


def _params(seed, log_std):
  params = gm.policy_init(jax.random.key(seed), 4, 3)
  return params.replace(log_std=jnp.asarray(log_std, jnp.float32))


def test_shapes_and_defaults():
  params = gm.policy_init(jax.random.key(0), 4, 3)
  assert [l['w'].shape for l in params.mlp] == [(4, 32), (32, 32), (32, 3)]
  np.testing.assert_array_equal(params.log_std, 0.0)  # authors' code
  value = gm.value_init(jax.random.key(1), 4)
  assert [l['w'].shape for l in value] == [(4, 64), (64, 64), (64, 1)]
  assert gm.value_apply(value, jnp.ones(4)).shape == ()


def test_log_prob_entropy_kl_match_closed_forms():
  p = _params(0, [0.1, -0.3, 0.5])
  q = _params(1, [0.0, 0.2, -0.1])
  obs = jnp.asarray([0.3, -1.0, 0.5, 2.0])
  action = jnp.asarray([0.2, -0.4, 1.0])
  mean_p, std_p = gm.policy_apply(p, obs)[0], np.exp(p.log_std)
  mean_q, std_q = gm.policy_apply(q, obs)[0], np.exp(q.log_std)
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
