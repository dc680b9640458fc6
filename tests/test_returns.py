"""GAE against a plain-loop reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax.rl import returns


def _reference(r, v, v_next, done, timeout, gamma, lam):
  """The textbook backward loop, one environment."""
  T = len(r)
  adv = np.zeros(T)
  running = 0.0
  for t in reversed(range(T)):
    bootstrap = 0.0 if done[t] else v_next[t]
    delta = r[t] + gamma * bootstrap - v[t]
    if done[t] or timeout[t]:
      running = 0.0
    running = delta + gamma * lam * running
    adv[t] = running
  return adv, adv + v


def test_gae_matches_plain_loop():
  rng = np.random.default_rng(0)
  T, n = 40, 5
  r, v, v_next = rng.normal(size=(3, T, n))
  done = rng.random((T, n)) < 0.08
  timeout = (rng.random((T, n)) < 0.08) & ~done
  with jax.enable_x64(True):
    adv, ret = jax.jit(returns.batched_gae, static_argnums=(5, 6))(
        r, v, v_next, done, timeout, 0.99, 0.95)
  for i in range(n):
    ref_adv, ref_ret = _reference(r[:, i], v[:, i], v_next[:, i], done[:, i],
                                  timeout[:, i], 0.99, 0.95)
    np.testing.assert_allclose(adv[:, i], ref_adv, rtol=1e-12)
    np.testing.assert_allclose(ret[:, i], ref_ret, rtol=1e-12)


def test_gae_special_cases():
  """λ = 1, no ends: discounted return minus V; done ignores bootstrap."""
  with jax.enable_x64(True):
    r = np.array([1.0, 2.0, 3.0])
    v = np.array([0.5, 0.2, 0.1])
    v_next = np.array([0.2, 0.1, 10.0])
    none = np.zeros(3, bool)
    adv, _ = returns.gae(r, v, v_next, none, none, 0.9, 1.0)
    disc = np.array([1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10,
                     2 + 0.9 * 3 + 0.81 * 10, 3 + 0.9 * 10])
    np.testing.assert_allclose(adv, disc - v, rtol=1e-12)
    done = np.array([False, False, True])
    adv, _ = returns.gae(r, v, v_next, done, none, 0.9, 1.0)
    np.testing.assert_allclose(adv[-1], 3 - 0.1, rtol=1e-12)


def test_mean_episode_return_counts_partial_episodes():
  """Issue 16: SLBO's virtual return divided the batch's reward by the
  ended episodes only, so roll-outs shorter than the horizon (nothing
  ends) reported their total reward. Episodes are counted as
  `meta.estimators.episode_starts` counts them: one per column plus one
  per end before the last step."""
  r = np.ones((5, 2), np.float32)
  no_end = np.zeros((5, 2), bool)
  # Two partial episodes and nothing ended: mean return 5, not 10.
  np.testing.assert_allclose(
      returns.mean_episode_return(r, no_end, no_end), 5.0)
  # Column 0 ends at t = 1 (done) and t = 4 (timeout, the last step: no
  # new episode); column 1 times out at t = 2: 2 + 2 = 4 episodes.
  done = no_end.copy()
  done[1, 0] = True
  timeout = no_end.copy()
  timeout[4, 0] = timeout[2, 1] = True
  assert int(returns.episode_count(done, timeout)) == 4
  np.testing.assert_allclose(
      returns.mean_episode_return(r, done, timeout), 10.0 / 4)


def test_layouts_are_checked_at_the_boundaries():
  """gae takes one (T,) segment and the estimators a (T, n) batch: another
  layout is refused by name instead of being broadcast into wrong sums."""
  from admrl_jax import types  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import estimators  # pylint: disable=g-import-not-at-top
  r = jnp.ones((5, 3))
  done = jnp.zeros((5, 3), bool)
  with pytest.raises(AssertionError, match='rank'):
    returns.gae(r, r, r, done, done)
  with pytest.raises(AssertionError, match='shape'):
    returns.gae(r[:, 0], r[:4, 0], r[:, 0], done[:, 0], done[:, 0])
  obs = jnp.zeros((5, 3, 2))
  tr = types.Transition(obs=obs, action=obs[..., :1], raw_action=obs[..., :1],
                        reward=r, next_obs=obs, done=done, timeout=done)
  estimators.check_batch(estimators.ValuedBatch(tr, r, r))
  with pytest.raises(AssertionError):  # values (n, T) against rewards (T, n)
    estimators.check_batch(estimators.ValuedBatch(tr, r.T, r.T))
  flat = jax.tree.map(lambda x: x.reshape((15,) + x.shape[2:]), tr)
  with pytest.raises(AssertionError, match='rank'):
    estimators.check_batch(estimators.ValuedBatch(flat, r.reshape(-1),
                                                  r.reshape(-1)))
