"""Batched real collection: shapes, determinism, auto-reset, noise, no recompilation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig

OU_THETA, OU_SIGMA = 0.15, 0.3


def _zero_policy(action_size):
  return lambda params, obs, key: jnp.zeros((action_size,))


TRACES = []


def _counting_random_policy(action_size):
  policy = rollout.random_policy(action_size)

  def policy_fn(params, obs, key):
    TRACES.append(1)  # runs only while tracing
    return policy(params, obs, key)

  return policy_fn


@pytest.fixture(scope='module')
def hopper(families):
  family = families('hopper2d', horizon=40)
  collect = rollout.make_collector(
      family, _counting_random_policy(family.action_size),
      RolloutConfig(n_envs=4, n_steps=60))
  return family, collect


@pytest.fixture(scope='module')
def lq(families):
  family = families('lq', horizon=5)
  collect = rollout.make_collector(
      family, rollout.linear_gaussian_policy(0.0),
      RolloutConfig(n_envs=3000, n_steps=12, ou_theta=OU_THETA,
                    ou_sigma=OU_SIGMA))
  return family, collect


def _check_episode_structure(tr, horizon):
  """Inside an episode s_{t+1} is the next obs; after an end it is a reset."""
  obs, next_obs = np.asarray(tr.obs), np.asarray(tr.next_obs)
  end = np.asarray(tr.done | tr.timeout)
  same = np.all(obs[1:] == next_obs[:-1], axis=-1)
  assert np.all(same[~end[:-1]])
  assert not np.any(same[end[:-1]])
  # No episode runs past the horizon.
  length = np.zeros(end.shape[1], int)
  for t in range(end.shape[0]):
    length += 1
    assert np.all(length <= horizon)
    length[end[t]] = 0
  assert not np.any(tr.done & tr.timeout)


def test_shapes_and_episode_structure_brax(hopper):
  family, collect = hopper
  psi = jnp.asarray([1.0, 1.4])
  out = collect(None, psi, jax.random.key(0))
  tr = out.transitions
  assert tr.obs.shape == (60, 4, family.obs_size)
  assert tr.next_obs.shape == (60, 4, family.obs_size)
  assert tr.action.shape == tr.raw_action.shape == (60, 4, family.action_size)
  for field in (tr.reward, tr.done, tr.timeout):
    assert field.shape == (60, 4)
  assert np.all(np.abs(tr.action) <= 1.0)
  assert np.any(np.abs(tr.raw_action) > 1.0)  # OU noise pushes past the bound
  np.testing.assert_allclose(tr.action, np.clip(tr.raw_action, -1, 1))
  assert np.any(tr.done)  # a random hopper falls
  _check_episode_structure(tr, family.horizon)
  # Episode accounting.
  end = np.asarray(tr.done | tr.timeout)
  assert int(out.episode_count) == end.sum()
  rewards = np.asarray(tr.reward)
  np.testing.assert_allclose(
      float(out.episode_return_sum),
      sum(rewards[:t + 1, i][::-1][:_ep_len(end[:, i], t)].sum()
          for i in range(4) for t in np.nonzero(end[:, i])[0]), rtol=1e-4)
  for i in range(4):
    first_end = np.nonzero(end[:, i])[0][0]
    np.testing.assert_allclose(out.first_return[i],
                               rewards[:first_end + 1, i].sum(), rtol=1e-5)


def _ep_len(end_i, t):
  """Length of the episode that ends at step t."""
  previous = np.nonzero(end_i[:t])[0]
  return t + 1 if len(previous) == 0 else t - previous[-1]


def test_determinism_and_no_recompilation(hopper):
  family, collect = hopper
  psi = jnp.asarray([1.0, 1.4])
  a = collect(None, psi, jax.random.key(7))
  traces = len(TRACES)
  b = collect(None, psi, jax.random.key(7))
  c = collect(None, psi, jax.random.key(8))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.transitions.obs, c.transitions.obs)
  # New tasks and exploration settings reuse the compiled program.
  for psi_new in family.eval_tasks()[:3]:
    collect(None, psi_new, jax.random.key(1))
  collect(None, psi, jax.random.key(1), noise_scale=0.0)
  assert len(TRACES) == traces  # no new trace, so no new compilation


def test_stored_transitions_rescore_any_task(hopper):
  """r_ψ′ recomputed from stored transitions = collecting under ψ′ itself."""
  family, collect = hopper
  psi, psi_other = jnp.asarray([1.0, 1.4]), jnp.asarray([-1.5, 1.9])
  out = collect(None, psi, jax.random.key(3))
  other = collect(None, psi_other, jax.random.key(3))  # same trajectories
  tr = out.transitions
  rescored = jax.vmap(jax.vmap(family.reward, in_axes=(None, 0, 0, 0)),
                      in_axes=(None, 0, 0, 0))(psi_other, tr.obs, tr.action,
                                               tr.next_obs)
  np.testing.assert_allclose(rescored, other.transitions.reward, rtol=1e-5,
                             atol=1e-4)
  assert not np.allclose(rescored, tr.reward)


def test_ou_noise_statistics_and_reset(lq):
  family, collect = lq
  params = (jnp.zeros((2, 2)), jnp.zeros(2))
  psi = jnp.zeros(2)
  quiet = collect(params, psi, jax.random.key(0), noise_scale=0.0)
  np.testing.assert_array_equal(quiet.transitions.raw_action, 0.0)
  noisy = collect(params, psi, jax.random.key(0), noise_scale=1.0)
  x = np.asarray(noisy.transitions.raw_action)  # (12, n, 2): pure OU noise
  assert np.all(noisy.transitions.timeout[4]) and np.all(
      noisy.transitions.timeout[9])
  # x_0 = σ ε; x_{t+1} − (1 − θ) x_t = σ ε inside an episode.
  np.testing.assert_allclose(x[0].std(), OU_SIGMA, rtol=0.05)
  innovation = x[1:5] - (1 - OU_THETA) * x[0:4]
  np.testing.assert_allclose(innovation.std(), OU_SIGMA, rtol=0.05)
  np.testing.assert_allclose(np.corrcoef(x[3].ravel(), x[4].ravel())[0, 1],
                             (1 - OU_THETA) * np.sqrt(
                                 (1 - (1 - OU_THETA)**8) /
                                 (1 - (1 - OU_THETA)**10)), atol=0.05)
  # The noise restarts from zero with each episode: x_5 is uncorrelated with x_4.
  assert abs(np.corrcoef(x[4].ravel(), x[5].ravel())[0, 1]) < 0.05
  np.testing.assert_allclose(x[5].std(), OU_SIGMA, rtol=0.05)
  _check_episode_structure(noisy.transitions, family.horizon)


def test_config_validation():
  with pytest.raises(ValueError, match='n_envs'):
    RolloutConfig(n_envs=0)
  with pytest.raises(ValueError, match='ou_sigma'):
    RolloutConfig(ou_sigma=-1.0)
