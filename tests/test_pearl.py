"""PEARL (admrl_jax.baselines.pearl) and its SAC (admrl_jax.baselines.sac)
against closed forms and hand computations; a tiny end-to-end run on `lq`."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compile_count

from admrl_jax.baselines import pearl
from admrl_jax.baselines import sac
from admrl_jax.envs import registry

TINY = pearl.PEARLConfig(
    num_train_tasks=4, latent_size=2, hidden=(16, 16), encoder_hidden=(16,),
    num_initial_steps=15, num_tasks_sample=2, num_steps_prior=10,
    num_steps_posterior=10, num_extra_rl_steps_posterior=10,
    replay_capacity=64, num_train_steps_per_itr=3, meta_batch=3,
    batch_size=8, embedding_batch_size=5)
HORIZON = 5


@pytest.fixture(scope='module')
def family():
  return registry.make('lq', horizon=HORIZON)


@pytest.fixture(scope='module')
def runs(family):
  """Two identical runs (init + 2 iterations) and the states in between."""
  out = []
  for _ in range(2):
    state0 = pearl.init(jax.random.key(3), family, TINY)
    state1, metrics1 = pearl.train_iteration(state0)
    state2, metrics2 = pearl.train_iteration(state1)
    out.append((state0, state1, state2, metrics1, metrics2))
  return out


# ------------------------------------------------------ 1. the posterior
def test_product_of_gaussians_closed_form():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    mu = rng.normal(size=(3, 7, 4))
    var = rng.uniform(0.1, 2.0, size=(3, 7, 4))
    post_mu, post_var = pearl.product_of_gaussians(jnp.asarray(mu),
                                                   jnp.asarray(var))
    want_var = 1.0 / np.sum(1.0 / var, axis=1)
    np.testing.assert_allclose(post_var, want_var, rtol=1e-12)
    np.testing.assert_allclose(post_mu, want_var * np.sum(mu / var, axis=1),
                               rtol=1e-12)

    # Conjugate update of a Gaussian mean m ~ N(0, τ²) from x_i ~ N(m, s²):
    # the factors (x_i, s²) and the prior's (0, τ²).
    x, s2, tau2 = rng.normal(1.5, 1.0, size=9), 0.7, 2.0
    factors_mu = np.append(x, 0.0)[:, None]
    factors_var = np.append(np.full(9, s2), tau2)[:, None]
    m, v = pearl.product_of_gaussians(jnp.asarray(factors_mu),
                                      jnp.asarray(factors_var))
    bayes_var = 1.0 / (1.0 / tau2 + 9 / s2)
    np.testing.assert_allclose(v[0], bayes_var, rtol=1e-12)
    np.testing.assert_allclose(m[0], bayes_var * np.sum(x) / s2, rtol=1e-12)

    # A mask selects factors.
    mask = np.array([True, False, True, True, False, True, True])
    m_mask, v_mask = pearl.product_of_gaussians(
        jnp.asarray(mu), jnp.asarray(var), jnp.asarray(np.tile(mask, (3, 1))))
    m_sub, v_sub = pearl.product_of_gaussians(jnp.asarray(mu[:, mask]),
                                              jnp.asarray(var[:, mask]))
    np.testing.assert_allclose(m_mask, m_sub, rtol=1e-12)
    np.testing.assert_allclose(v_mask, v_sub, rtol=1e-12)


def test_kl_to_standard_normal_by_quadrature():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    mu = rng.normal(size=3)
    var = rng.uniform(0.2, 3.0, size=3)
    kl = float(pearl.kl_to_standard_normal(jnp.asarray(mu), jnp.asarray(var)))
  z = np.linspace(-30, 30, 400_001)
  total = 0.0
  for m, v in zip(mu, var):
    log_q = -0.5 * (z - m)**2 / v - 0.5 * np.log(2 * np.pi * v)
    log_p = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
    total += np.trapezoid(np.exp(log_q) * (log_q - log_p), z)
  np.testing.assert_allclose(kl, total, rtol=1e-8)


def test_encoder_posterior_is_permutation_invariant_product(family):
  nets = pearl.make_networks(TINY, family.action_size)
  params = pearl.init_params(jax.random.key(0), family, TINY)
  d = pearl.context_size(family, TINY)
  features = jax.random.normal(jax.random.key(1), (2, 6, d))
  mu, var = pearl.infer_posterior(nets.encoder, params.encoder, features)
  perm = np.random.default_rng(0).permutation(6)
  mu_p, var_p = pearl.infer_posterior(nets.encoder, params.encoder,
                                      features[:, perm])
  np.testing.assert_allclose(mu_p, mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var_p, var, rtol=1e-5)
  # The factors are the encoder's outputs, the variance a softplus.
  out = np.asarray(nets.encoder.apply(params.encoder, features)[0])
  factor_var = np.asarray(nets.encoder.apply(params.encoder, features)[1])
  assert np.all(factor_var > 0)
  want_var = 1.0 / np.sum(1.0 / factor_var, axis=1)
  np.testing.assert_allclose(var, want_var, rtol=1e-5)
  np.testing.assert_allclose(mu, want_var * np.sum(out / factor_var, axis=1),
                             rtol=1e-4, atol=1e-6)


# ------------------------------------------------- 2. SAC's target etc.
def _mlp_np(layers, x, names):
  for name in names[:-1]:
    x = np.maximum(x @ layers[name]['kernel'] + layers[name]['bias'], 0.0)
  return x @ layers[names[-1]]['kernel'] + layers[names[-1]]['bias']


def test_critic_target_matches_numpy():
  hidden, n_in, n_act, batch = (8, 6), 5, 3, 11
  nets = sac.make_networks(hidden, n_act)
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                    tree)
    key_pi, key_q = jax.random.split(jax.random.key(0))
    x = jnp.zeros((n_in,))
    policy = f64(nets.policy.init(key_pi, x))
    # Bigger output layers than the 1e-3 init, so every term matters.
    policy = jax.tree_util.tree_map_with_path(
        lambda p, a: a * 300.0 if p[1].key in ('mean', 'log_std') else a,
        policy)
    target_q = f64(nets.q.init(key_q, x, jnp.zeros((n_act,))))
    next_x = rng.normal(size=(batch, n_in))
    reward = rng.normal(size=batch)
    done = rng.uniform(size=batch) < 0.3
    eps = rng.normal(size=(batch, n_act))
    alpha, gamma, scale = 0.37, 0.97, 5.0
    y = sac.critic_target(nets, policy, target_q, jnp.asarray(next_x),
                          jnp.asarray(reward), jnp.asarray(done),
                          jnp.asarray(eps), alpha, gamma, scale)
    assert y.dtype == jnp.float64

  p = jax.tree.map(np.asarray, policy)['params']
  names = [f'hidden_{i}' for i in range(len(hidden))]
  h = next_x
  for name in names:
    h = np.maximum(h @ p[name]['kernel'] + p[name]['bias'], 0.0)
  mean = h @ p['mean']['kernel'] + p['mean']['bias']
  log_std = np.clip(h @ p['log_std']['kernel'] + p['log_std']['bias'],
                    -20.0, 2.0)
  std = np.exp(log_std)
  pre = mean + std * eps
  action = np.tanh(pre)
  log_prob = np.sum(-0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi)
                    - np.log(1.0 - action**2), axis=1)
  q = jax.tree.map(np.asarray, target_q)['params']
  xa = np.concatenate([next_x, action], axis=1)
  q1 = _mlp_np(q['q1'], xa, names + ['out'])[:, 0]
  q2 = _mlp_np(q['q2'], xa, names + ['out'])[:, 0]
  want = scale * reward + gamma * (1.0 - done) * (
      np.minimum(q1, q2) - alpha * log_prob)
  assert np.std(log_prob) > 0.1 and np.any(q1 < q2) and np.any(q2 < q1)
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_temperature_update_by_hand():
  rng = np.random.default_rng(3)
  log_prob = jnp.asarray(rng.normal(size=64), jnp.float32)
  log_alpha = jnp.asarray(0.3, jnp.float32)
  h_bar = -2.0
  g = -float(np.mean(np.asarray(log_prob) + h_bar))  # d loss / d log α
  lr = 0.1
  sgd = optax.sgd(lr)
  new, _, loss = sac.temperature_update(log_alpha, sgd.init(log_alpha),
                                        log_prob, h_bar, sgd)
  np.testing.assert_allclose(loss, 0.3 * g, rtol=1e-6)
  np.testing.assert_allclose(new, 0.3 - lr * g, rtol=1e-6)
  # Adam's first step: m̂ = g, v̂ = g², so Δ = −lr·g/(|g| + ε).
  adam = optax.adam(lr)
  new, state, _ = sac.temperature_update(log_alpha, adam.init(log_alpha),
                                         log_prob, h_bar, adam)
  np.testing.assert_allclose(new, 0.3 - lr * g / (abs(g) + 1e-8), rtol=1e-5)
  assert int(state[0].count) == 1


def test_polyak_by_hand():
  target = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array(3.0)}
  online = {'a': jnp.array([5.0, -2.0]), 'b': jnp.array(-1.0)}
  out = sac.polyak(target, online, 0.25)
  np.testing.assert_allclose(out['a'], [2.0, 1.0])
  np.testing.assert_allclose(out['b'], 2.0)


def test_update_steps_temperature_and_targets(family):
  """Inside `update`: log α takes Adam's first step from the policy's log π
  (reported as a metric), and the target Q is the Polyak average of the
  old target and the updated Q."""
  config = dataclasses.replace(TINY, auto_alpha=True, alpha=0.5,
                               alpha_lr=0.01, tau=0.2)
  state = pearl.init(jax.random.key(5), family, config)
  new, metrics = pearl.update(state, jax.random.key(6))
  np.testing.assert_allclose(metrics.alpha, 0.5, rtol=1e-6)
  g = -(float(metrics.log_prob) - family.action_size)  # H̄ = −|A|
  np.testing.assert_allclose(new.params.log_alpha,
                             math.log(0.5) - 0.01 * g / (abs(g) + 1e-8),
                             rtol=1e-5)
  want = jax.tree.map(lambda t, q: 0.8 * t + 0.2 * q, state.params.target_q,
                      new.params.q)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               new.params.target_q, want)
  # Every part moved: encoder (through the critic loss), Q, policy.
  for part in ('encoder', 'q', 'policy'):
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         getattr(state.params, part),
                         getattr(new.params, part))
    assert all(jax.tree.leaves(moved)), part
  assert int(new.update_steps) == 1


def test_encoder_learns_from_the_critic_alone(family):
  """With kl_lambda = 0 the encoder's only gradient is the critic's (the
  actor sees z without gradient): it still moves."""
  config = dataclasses.replace(TINY, kl_lambda=0.0)
  state = pearl.init(jax.random.key(7), family, config)
  new, _ = pearl.update(state, jax.random.key(8))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                       state.params.encoder, new.params.encoder)
  assert all(jax.tree.leaves(moved))


# ------------------------------------------------ 3. tanh-Gaussian density
def test_tanh_gaussian_log_prob_change_of_variables():
  mean, std = 0.3, 0.8
  u = np.linspace(-6.0, 6.0, 241)
  with jax.enable_x64(True):
    got = sac.tanh_gaussian_log_prob(jnp.full((241, 1), mean),
                                     jnp.full((241, 1), np.log(std)),
                                     jnp.asarray(u)[:, None])
  a = np.tanh(u)
  # p(a) = N(atanh a; μ, σ²) / (1 − a²), with 1 − tanh²u = sech²u.
  log_normal = -0.5 * ((u - mean) / std)**2 - np.log(std * np.sqrt(2 * np.pi))
  log_sech2 = -2.0 * (np.abs(u) + np.log1p(np.exp(-2 * np.abs(u)))
                      - np.log(2.0))
  np.testing.assert_allclose(got, log_normal - log_sech2, rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(np.arctanh(a[20:-20]), u[20:-20], rtol=1e-9)
  # The density integrates to one over (−1, 1) ...
  grid_u = np.linspace(-8.0, 8.0, 200_001)
  with jax.enable_x64(True):
    log_p = np.asarray(sac.tanh_gaussian_log_prob(
        jnp.full((grid_u.size, 1), mean), jnp.full((grid_u.size, 1),
                                                   np.log(std)),
        jnp.asarray(grid_u)[:, None]))
  np.testing.assert_allclose(np.trapezoid(np.exp(log_p), np.tanh(grid_u)),
                             1.0, rtol=1e-6)
  # ... and matches a histogram of tanh of normal samples.
  samples = np.tanh(mean + std * np.random.default_rng(4).normal(
      size=400_000))
  hist, edges = np.histogram(samples, bins=40, range=(-0.95, 0.95))
  density = hist / (samples.size * np.diff(edges))
  centres = 0.5 * (edges[1:] + edges[:-1])
  with jax.enable_x64(True):
    at = np.exp(np.asarray(sac.tanh_gaussian_log_prob(
        jnp.full((40, 1), mean), jnp.full((40, 1), np.log(std)),
        jnp.arctanh(jnp.asarray(centres))[:, None])))
  np.testing.assert_allclose(density, at, rtol=0.05)


def test_tanh_gaussian_sample_sums_dimensions_and_is_stable():
  mean = jnp.array([[0.1, -0.4, 25.0]])
  log_std = jnp.array([[0.0, -1.0, -3.0]])
  eps = jnp.array([[0.5, 1.0, 0.0]])
  action, log_prob = sac.tanh_gaussian_sample(mean, log_std, eps)
  per_dim = [sac.tanh_gaussian_log_prob(mean[:, i:i + 1],
                                        log_std[:, i:i + 1],
                                        (mean + jnp.exp(log_std) * eps)
                                        [:, i:i + 1]) for i in range(3)]
  np.testing.assert_allclose(log_prob, sum(per_dim), rtol=1e-6)
  np.testing.assert_allclose(action, np.tanh(mean + np.exp(log_std) * eps),
                             rtol=1e-5)  # XLA's float32 tanh
  assert np.all(np.isfinite(log_prob))  # u = 25: tanh²u rounds to 1


# ------------------------------------------------------ 4. end to end
def test_end_to_end_finite_and_bitwise_deterministic(runs):
  (s0, s1, s2, m1, m2), other = runs
  for tree in (s2.params, s2.opt_state, s2.replay, m1, m2):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert np.all(np.isfinite(np.asarray(leaf)))
  assert m1.update.q_loss.shape == (TINY.num_train_steps_per_itr,)
  flat = jax.tree.leaves((s2, m1, m2))
  flat_other = jax.tree.leaves((other[2], other[3], other[4]))
  for a, b in zip(flat, flat_other):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(s2.iteration) == 2 and int(s2.update_steps) == 6
  # An iteration keeps every shape and dtype, so one compiled program
  # serves every iteration: another call traces and compiles nothing.
  shapes = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)
  assert shapes(s0) == shapes(s2)
  with compile_count.compilations() as compiled:
    jax.block_until_ready(pearl.train_iteration(s2))
  assert not compiled, compiled


def test_buffers_follow_oyster_data_flow(runs):
  """Init: num_initial_steps per task in both buffers. An iteration: the
  sampled tasks' encoder buffers hold exactly their prior + posterior
  steps, the RL buffers all three phases; other tasks are untouched."""
  s0, s1 = runs[0][0], runs[0][1]
  init_n = TINY.num_initial_steps
  np.testing.assert_array_equal(s0.replay.size, init_n)
  np.testing.assert_array_equal(s0.encoder_replay.size, init_n)
  assert int(s0.env_steps) == TINY.num_train_tasks * init_n
  sampled = np.asarray(s1.replay.size) > init_n
  assert sampled.sum() == TINY.num_tasks_sample
  np.testing.assert_array_equal(
      np.asarray(s1.replay.size)[sampled], init_n + TINY.steps_per_task)
  enc_n = TINY.num_steps_prior + TINY.num_steps_posterior
  np.testing.assert_array_equal(
      np.asarray(s1.encoder_replay.size)[sampled], enc_n)
  np.testing.assert_array_equal(
      np.asarray(s1.encoder_replay.size)[~sampled], init_n)
  for task in np.flatnonzero(sampled):
    for field in ('obs', 'action', 'reward', 'next_obs'):
      enc = np.asarray(getattr(s1.encoder_replay.data, field))[task, :enc_n]
      rl = np.asarray(getattr(s1.replay.data, field))[task,
                                                      init_n:init_n + enc_n]
      np.testing.assert_array_equal(enc, rl)
  for task in np.flatnonzero(~sampled):
    np.testing.assert_array_equal(
        np.asarray(s1.replay.data.obs)[task],
        np.asarray(s0.replay.data.obs)[task])
  assert int(s1.env_steps) == (TINY.num_train_tasks * init_n
                               + TINY.num_tasks_sample * TINY.steps_per_task)


def test_buffers_ring_overwrites_oldest_and_drops_non_finite():
  buffers = pearl.buffers_init(3, 4, 1, 1)
  def batch(values):
    v = jnp.asarray(values, jnp.float32)[None]
    return pearl.TaskTransition(obs=v[..., None], action=v[..., None],
                                reward=v, next_obs=v[..., None],
                                done=jnp.zeros(v.shape, bool))
  tasks = jnp.array([1])
  buffers = pearl.buffers_add(buffers, tasks, batch([1, 2, jnp.nan, 3]))
  np.testing.assert_array_equal(buffers.size, [0, 3, 0])
  buffers = pearl.buffers_add(buffers, tasks, batch([4, 5, 6]))
  np.testing.assert_array_equal(buffers.size, [0, 4, 0])
  np.testing.assert_array_equal(buffers.data.reward[1], [5, 6, 3, 4])
  sample = pearl.buffers_sample(buffers, jnp.array([1, 1]),
                                jax.random.key(0), 50)
  assert set(np.asarray(sample.reward).ravel()) <= {3.0, 4.0, 5.0, 6.0}
  buffers = pearl.buffers_clear(buffers, tasks)
  np.testing.assert_array_equal(buffers.size, [0, 0, 0])


def test_adapt_posterior_is_the_product_over_its_context(runs, family):
  params = runs[0][2].params
  psi = jnp.array([0.5, -0.3])
  prior = pearl.adapt(params, family, TINY, psi, 0, jax.random.key(0))
  np.testing.assert_array_equal(prior.mean, 0.0)
  np.testing.assert_array_equal(prior.var, 1.0)
  assert prior.transitions.obs.shape == (0, family.obs_size)
  n = 3 * HORIZON + 2
  post = pearl.adapt(params, family, TINY, psi, n, jax.random.key(1))
  assert post.transitions.obs.shape == (n, family.obs_size)
  assert int(post.episode_count) == 3
  nets = pearl.make_networks(TINY, family.action_size)
  mu, var = pearl.infer_posterior(
      nets.encoder, params.encoder,
      pearl.context_features(post.transitions, True))
  np.testing.assert_allclose(post.mean, mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(post.var, var, rtol=1e-4)
  # The rewards in the context are the task's.
  want_r = jax.vmap(family.reward, (None, 0, 0, 0))(
      psi, post.transitions.obs, post.transitions.action,
      post.transitions.next_obs)
  np.testing.assert_allclose(post.transitions.reward, want_r, rtol=1e-6)
  a_n = pearl.adapted_return(params, family, TINY, psi, n, 4,
                             jax.random.key(2))
  again = pearl.adapted_return(params, family, TINY, psi, n, 4,
                               jax.random.key(2))
  assert np.isfinite(float(a_n)) and float(a_n) == float(again)


# ------------------------------------------------------ 5. validation
@pytest.mark.parametrize('field, value', [
    ('latent_size', 0), ('hidden', ()), ('encoder_hidden', (4, 0)),
    ('num_train_tasks', 2.5), ('discount', 0.0), ('discount', 1.5),
    ('tau', 0.0), ('kl_lambda', -0.1), ('reward_scale', 0.0),
    ('alpha', float('nan')), ('policy_lr', -1.0), ('num_steps_prior', -1),
    ('num_tasks_sample', 101), ('target_entropy', float('inf')),
    ('meta_batch', 0), ('embedding_batch_size', 0),
])
def test_config_validation_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    pearl.PEARLConfig(**{field: value})


def test_config_needs_encoder_data_for_the_extra_steps():
  with pytest.raises(ValueError, match='num_extra_rl_steps_posterior'):
    pearl.PEARLConfig(num_steps_prior=0, num_steps_posterior=0)
  assert TINY.encoder_capacity == 20
