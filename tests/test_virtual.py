"""Virtual roll-outs through a model: with the true dynamics they are the real MDP."""
import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import envs
from admrl_jax.rl import rollout, virtual

ACTION_STD = 0.2


def test_virtual_rollout_through_exact_model_reproduces_lq_return():
  family = envs.make('lq', horizon=6, noise_std=0.0)
  a_mat, b_mat = jnp.asarray(family.A, jnp.float32), jnp.asarray(
      family.B, jnp.float32)
  traces = []

  def dynamics_fn(model, obs, action):
    traces.append(1)
    scale = model  # a traced "parameter": the exact model has scale 1
    return scale * (a_mat @ obs + b_mat @ action)

  n = 4000
  run = jax.jit(virtual.make_virtual_rollout(
      family, rollout.linear_gaussian_policy(ACTION_STD), dynamics_fn,
      n_rollouts=n, n_steps=12))
  gain = jnp.asarray([[-0.5, 0.1], [0.0, -0.4]])
  offset = jnp.asarray([0.2, 0.1])
  psi = jnp.asarray([0.3, -0.6])
  start_obs = family.init_std * jax.random.normal(jax.random.key(1), (n, 2))
  tr = run((gain, offset), jnp.float32(1.0), psi, start_obs,
           jax.random.key(2))
  assert tr.obs.shape == (12, n, 2) and tr.reward.shape == (12, n)
  np.testing.assert_allclose(
      tr.next_obs, jnp.einsum('ij,tnj->tni', a_mat, tr.obs)
      + jnp.einsum('ij,tnj->tni', b_mat, tr.action), atol=1e-5)
  np.testing.assert_allclose(
      tr.reward, jax.vmap(jax.vmap(family.reward, (None, 0, 0, 0)),
                          (None, 0, 0, 0))(psi, tr.obs, tr.action,
                                           tr.next_obs), rtol=1e-5)
  # Timeouts every 6 steps, then a restart from the start pool.
  assert np.all(tr.timeout[5]) and np.all(tr.timeout[11])
  assert not np.any(tr.timeout[:5]) and not np.any(tr.done)
  first_episode = np.asarray(tr.reward[:6].sum(0))
  exact = float(family.expected_return(psi, gain, offset, ACTION_STD))
  stderr = first_episode.std() / np.sqrt(n)
  assert abs(first_episode.mean() - exact) < 4 * stderr
  # A new model or task reuses the compiled program.
  count = len(traces)
  run((gain, offset), jnp.float32(0.9), psi + 0.1, start_obs,
      jax.random.key(3))
  assert len(traces) == count
