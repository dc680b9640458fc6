"""Normalisers and the SLBO dynamics model against ground truth."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_count
from admrl_jax import types
from admrl_jax.models import dynamics as dyn
from admrl_jax.models import normalizer
from admrl_jax.models import dataset

OBS, ACT = 3, 2
SMALL = dyn.ModelConfig(hidden=(64, 64))


def _transitions(obs, action, next_obs):
  obs, action, next_obs = (np.asarray(x, np.float32)
                           for x in (obs, action, next_obs))
  n = obs.shape[:-1]
  return types.Transition(obs=obs, action=action, raw_action=action,
                          reward=np.zeros(n, np.float32), next_obs=next_obs,
                          done=np.zeros(n, bool), timeout=np.zeros(n, bool))


def _layers(params):
  """The default network's (kernel, bias) pairs, input layer first."""
  layers = params['params']
  hidden = sorted((n for n in layers if n.startswith('hidden_')),
                  key=lambda n: int(n.split('_')[1]))
  return [(layers[n]['kernel'], layers[n]['bias']) for n in hidden + ['out']]


def _linear_system(seed=0):
  """s′ = A s + B a with A near the identity (a stable-ish plant)."""
  rng = np.random.default_rng(seed)
  a_mat = np.eye(OBS) + 0.1 * rng.normal(size=(OBS, OBS))
  b_mat = rng.normal(size=(OBS, ACT))

  def batch(n, rng):
    obs = rng.normal(size=(n, OBS))
    action = rng.uniform(-1.0, 1.0, size=(n, ACT))
    return _transitions(obs, action, obs @ a_mat.T + action @ b_mat.T)

  return batch


def _dataset(transitions, capacity=4096):
  ds = dataset.init(jax.tree.map(lambda x: x[0], transitions), capacity)
  return dataset.add(ds, transitions)


# ------------------------------------------------------------- normaliser
def test_normalizer_matches_statistics_of_all_data():
  rng = np.random.default_rng(0)
  scale = np.array([0.01, 1.0, 30.0])
  batches = [3.0 + scale * rng.normal(size=shape + (3,))
             for shape in [(7,), (4, 5), (1,), (50,), (2, 3, 4)]]
  update = jax.jit(normalizer.update)
  norm = normalizer.init(3)
  for batch in batches:
    norm = update(norm, jnp.asarray(batch, jnp.float32))
  data = np.concatenate([b.reshape(-1, 3) for b in batches])
  assert int(norm.count) == data.shape[0]
  np.testing.assert_allclose(norm.mean, data.mean(0), rtol=1e-5)
  np.testing.assert_allclose(norm.var, data.var(0), rtol=1e-5)
  # Normalised data is standardised; denormalize inverts normalize.
  z = normalizer.normalize(norm, jnp.asarray(data, jnp.float32))
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-4)
  np.testing.assert_allclose(normalizer.denormalize(norm, z), data,
                             rtol=1e-5, atol=1e-5)


def test_normalizer_identity_before_data_and_floor_on_constant_dims():
  norm = normalizer.init(2)
  x = jnp.asarray([1.5, -2.0])
  np.testing.assert_array_equal(normalizer.normalize(norm, x), x)
  # A dimension that never varies: var 0, normalised to 0 rather than NaN.
  norm = normalizer.update(norm, jnp.asarray([[1.0, 2.0], [1.0, 4.0]]))
  np.testing.assert_array_equal(norm.var, [0.0, 1.0])
  z = normalizer.normalize(norm, jnp.asarray([1.0, 3.0]))
  np.testing.assert_array_equal(z, [0.0, 0.0])
  np.testing.assert_allclose(norm.std, [normalizer.STD_FLOOR, 1.0])


def test_update_from_transitions():
  rng = np.random.default_rng(1)
  obs, action = rng.normal(size=(2, 10, OBS)), rng.normal(size=(2, 10, ACT))
  next_obs = obs + rng.normal(size=obs.shape)
  norms = normalizer.update_from_transitions(
      normalizer.normalizers_init(OBS, ACT),
      _transitions(obs, action, next_obs))
  for norm, data in [(norms.state, obs), (norms.action, action),
                     (norms.diff, next_obs - obs)]:
    data = data.reshape(-1, data.shape[-1])
    np.testing.assert_allclose(norm.mean, data.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.var, data.var(0), rtol=1e-5)


# ------------------------------------------------------------------ model
def test_default_config_is_spec():
  config = dyn.ModelConfig()
  assert config.hidden == (1000, 1000)
  assert config.activation is jax.nn.relu
  assert (config.lr, config.weight_decay, config.clip_norm) == (1e-3, 1e-5,
                                                                2.0)
  assert (config.batch_size, config.n_steps) == (256, 100)
  assert config.loss == 'one_step'
  assert (config.action_clip, config.next_state_clip) == (1.0, 100.0)
  params = dyn.model_init(jax.random.key(0), OBS, ACT)
  assert [w.shape for w, _ in _layers(params)] == [(5, 1000), (1000, 1000),
                                                   (1000, 3)]
  # SLBO's initialisation: truncated normal(0, 1e-5) at ±2σ, zero biases.
  kernel = np.asarray(_layers(params)[1][0])
  np.testing.assert_allclose(kernel.std(), 1e-5 * 0.8796, rtol=0.01)
  assert np.abs(kernel).max() <= 2e-5
  assert all(not np.any(b) for _, b in _layers(params))
  assert config.multi_step_horizon == 2
  with pytest.raises(ValueError, match='loss'):
    dyn.ModelConfig(loss='two_step')
  with pytest.raises(ValueError, match='multi_step_horizon'):
    dyn.ModelConfig(loss='multi_step', multi_step_horizon=0)


def _numpy_loss(params, norms, batch, action_clip):
  def normalize(norm, x):
    std = np.maximum(np.sqrt(np.asarray(norm.var, np.float64)), 1e-6)
    return (x - np.asarray(norm.mean, np.float64)) / std
  x = np.concatenate([normalize(norms.state, batch.obs),
                      np.clip(batch.action, -action_clip, action_clip)], -1)
  layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64))
            for w, b in _layers(params)]
  for w, b in layers[:-1]:
    x = np.maximum(x @ w + b, 0.0)
  pred = x @ layers[-1][0] + layers[-1][1]
  error = pred - normalize(norms.diff, batch.next_obs - batch.obs)
  return np.mean(np.sqrt(np.mean(error**2, -1)))


def test_loss_matches_numpy_and_predict_clips_actions():
  config = dataclasses.replace(SMALL, init_std=None)  # non-trivial outputs
  rng = np.random.default_rng(2)
  params = dyn.model_init(jax.random.key(3), OBS, ACT, config)
  fit_data = _transitions(rng.normal(size=(20, OBS)) * 2 + 1,
                          rng.normal(size=(20, ACT)),
                          rng.normal(size=(20, OBS)))
  norms = normalizer.update_from_transitions(
      normalizer.normalizers_init(OBS, ACT), fit_data)
  # Hand-made batch with actions outside [−1, 1].
  batch = _transitions([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [1.0, 1.0, 1.0]],
                       [[3.0, -0.5], [0.2, -4.0], [0.9, 1.0]],
                       [[0.1, 1.2, -0.7], [1.5, 0.5, 0.3], [1.0, 0.0, 2.0]])
  value = jax.jit(dyn.loss, static_argnums=3)(params, norms, batch, config)
  np.testing.assert_allclose(value, _numpy_loss(params, norms, batch, 1.0),
                             rtol=1e-5)

  obs = jnp.asarray([0.3, -0.2, 1.0])
  predict = jax.jit(dyn.predict, static_argnums=4)
  at_5 = predict(params, norms, obs, jnp.asarray([5.0, -7.0]), config)
  at_1 = predict(params, norms, obs, jnp.asarray([1.0, -1.0]), config)
  np.testing.assert_array_equal(at_5, at_1)
  # Without the clip the model sees a = 5 (e.g. the linear lq family).
  no_clip = dataclasses.replace(config, action_clip=None)
  assert not np.allclose(
      predict(params, norms, obs, jnp.asarray([5.0, -7.0]), no_clip), at_1)
  # predict = s + denormalised network output.
  expected = obs + normalizer.denormalize(
      norms.diff, dyn.predict_normalized_diff(params, norms, obs,
                                              jnp.asarray([1.0, -1.0]),
                                              config))
  np.testing.assert_allclose(at_1, expected, rtol=1e-6)


def test_predict_clips_next_state_in_normalised_units():
  config = dataclasses.replace(SMALL, init_std=None)
  params = dyn.model_init(jax.random.key(0), OBS, ACT, config)
  norms = normalizer.normalizers_init(OBS, ACT)
  # The network predicts a normalised diff of 1e6 on every dimension.
  out = params['params']['out']
  params = {'params': dict(params['params'], out={
      'kernel': jnp.zeros_like(out['kernel']), 'bias': jnp.full((OBS,), 1e6)})}
  state_norm = normalizer.Normalizer(mean=jnp.asarray([1.0, 0.0, -2.0]),
                                     var=jnp.asarray([4.0, 1.0, 0.25]),
                                     count=jnp.asarray(10, jnp.int32))
  norms = norms.replace(state=state_norm)
  next_obs = dyn.predict(params, norms, jnp.zeros(OBS), jnp.zeros(ACT),
                         config)
  np.testing.assert_allclose(next_obs, state_norm.mean
                             + 100.0 * np.sqrt(state_norm.var), rtol=1e-6)
  unclipped = dyn.predict(params, norms, jnp.zeros(OBS), jnp.zeros(ACT),
                          dataclasses.replace(config, next_state_clip=None))
  np.testing.assert_allclose(unclipped, 1e6, rtol=1e-6)


def test_fit_learns_a_linear_system_without_recompiling():
  make_batch = _linear_system()
  rng = np.random.default_rng(0)
  config = dataclasses.replace(SMALL, n_steps=500)
  state = dyn.fit_init(jax.random.key(0), OBS, ACT, config)
  fit = dyn.make_fit(config)

  # Two real batches, each added and normalised before fitting (authors' code).
  data = dataset.init(jax.tree.map(lambda x: x[0], make_batch(1, rng)), 4096)
  for i in range(2):
    batch = make_batch(1000, rng)
    data = dataset.add(data, batch)
    state = dyn.update_normalizers(state, batch)
    with compile_count.compilations() as compiled:
      state, metrics = fit(state, data, jax.random.key(i))
    assert metrics['loss'].shape == metrics['grad_norm'].shape == (500,)
  assert not compiled, compiled  # 2nd fit, new data and normalisers: reused

  losses = np.asarray(metrics['loss'])
  assert np.all(np.isfinite(losses))
  assert losses[-50:].mean() < 0.05, losses[-50:].mean()

  test = make_batch(500, rng)
  predicted = jax.vmap(dyn.predict, (None, None, 0, 0, None))(
      state.params, state.norms, jnp.asarray(test.obs),
      jnp.asarray(test.action), config)
  error = np.asarray(predicted) - test.next_obs
  diff_std = (test.next_obs - test.obs).std(0)
  # In units of the state change's spread: RMS error below 5% on every
  # dimension; per-point worst-dimension error below 2% at the median and
  # 5% at the 90th percentile (a ReLU fit of 2000 points is coarser in the
  # tails of the input distribution, up to ~30% there).
  relative = error / diff_std
  assert np.all(np.sqrt((relative**2).mean(0)) < 0.05)
  worst = np.abs(relative).max(-1)
  assert np.median(worst) < 0.02 and np.percentile(worst, 90) < 0.05
  # The held-out loss agrees.
  assert float(dyn.loss(state.params, state.norms, test, config)) < 0.05


# ------------------------------------------------------- multi-step loss
def _trajectories(n_envs, steps, episode, offset=0):
  """Time-major (steps, n_envs) transitions whose obs encode
  (env, episode, t): an episode of env e ends (done) every `episode` steps,
  then the env resets; the batch starts at global step `offset`."""
  obs, nxt, done = [], [], []
  for t in range(offset, offset + steps):
    row_obs, row_next, row_done = [], [], []
    for e in range(n_envs):
      k, tt = divmod(t, episode)
      row_obs.append([e, k, tt])
      row_next.append([e, k, tt + 1])
      row_done.append(tt == episode - 1)
    obs.append(row_obs)
    nxt.append(row_next)
    done.append(row_done)
  tr = _transitions(obs, np.zeros((steps, n_envs, ACT)), nxt)
  return tr.replace(done=np.asarray(done))


def test_sample_runs_follow_one_environment_and_stop_at_resets():
  n_envs, episode = 3, 5
  first = _trajectories(n_envs, 12, episode)
  second = _trajectories(n_envs, 12, episode, offset=12)  # continues
  ds = dataset.init(jax.tree.map(lambda x: x[0, 0], first), capacity=50)
  ds = dataset.add(dataset.add(ds, first), second)  # 72 entries: wrapped
  runs = jax.jit(dataset.sample_runs, static_argnums=(2, 3, 4))(
      ds, jax.random.key(0), 4000, 4, n_envs)
  obs = np.asarray(runs.transitions.obs)
  nxt = np.asarray(runs.transitions.next_obs)
  continues = np.asarray(runs.continues)
  assert np.asarray(runs.valid).all()  # the buffer is full
  assert not continues[0].any()
  same_env = obs[1:, :, 0] == obs[:-1, :, 0]
  consecutive = (same_env & (obs[1:, :, 1] == obs[:-1, :, 1])
                 & (obs[1:, :, 2] == obs[:-1, :, 2] + 1))
  # A link exactly where the next entry is the same episode one step later.
  np.testing.assert_array_equal(continues[1:], consecutive)
  np.testing.assert_array_equal(obs[1:][continues[1:]],
                                nxt[:-1][continues[1:]])
  # Most links hold; the breaks are resets and the write position.
  assert 0.5 < continues[1:].mean() < 1.0
  # Not full: entries past the fill level are invalid (and never links).
  small = dataset.add(dataset.init(jax.tree.map(lambda x: x[0, 0], first),
                                   capacity=100), first)  # 36 entries
  runs = dataset.sample_runs(small, jax.random.key(1), 2000, 4, n_envs)
  start = np.asarray(runs.transitions.obs)[0]
  index = start[:, 2] + episode * start[:, 1]  # the global step t
  expected = (index[None, :] + np.arange(4)[:, None]) < 12
  np.testing.assert_array_equal(np.asarray(runs.valid), expected)
  assert not np.asarray(runs.continues)[~np.asarray(runs.valid)].any()


def _numpy_multi_step_loss(params, norms, runs, config):
  """Loop reference: model rolled from real states, reset where a run
  breaks, per-sample RMS of the state-change error, mean over valid."""
  def net(x, a):
    z = np.concatenate([(x - np.asarray(norms.state.mean)) /
                        np.asarray(norms.state.std), np.clip(a, -1, 1)])
    layers = [(np.asarray(w), np.asarray(b)) for w, b in _layers(params)]
    for w, b in layers[:-1]:
      z = np.maximum(z @ w + b, 0)
    return z @ layers[-1][0] + layers[-1][1]
  tr = jax.tree.map(np.asarray, runs.transitions)
  diff_mean, diff_std = (np.asarray(norms.diff.mean),
                         np.asarray(norms.diff.std))
  total, count = 0.0, 0
  horizon, batch = tr.obs.shape[:2]
  for i in range(batch):
    x = None
    for k in range(horizon):
      if not runs.continues[k, i]:
        x = tr.obs[k, i]
      out = net(x, tr.action[k, i])
      target = (tr.next_obs[k, i] - tr.obs[k, i] - diff_mean) / diff_std
      if runs.valid[k, i]:
        total += np.sqrt(np.mean((out - target) ** 2))
        count += 1
      x = x + out * diff_std + diff_mean  # next-state clip inactive here
  return total / count


def test_multi_step_loss_matches_a_loop_and_reduces_to_one_step():
  config = dataclasses.replace(SMALL, init_std=None, loss='multi_step',
                               multi_step_horizon=3)
  rng = np.random.default_rng(4)
  params = dyn.model_init(jax.random.key(5), OBS, ACT, config)
  horizon, batch = 3, 16
  obs = rng.normal(size=(horizon, batch, OBS))
  runs = dataset.Runs(
      transitions=_transitions(obs, rng.normal(size=(horizon, batch, ACT)),
                               obs + rng.normal(size=obs.shape)),
      valid=jnp.asarray(rng.uniform(size=(horizon, batch)) < 0.8),
      continues=jnp.asarray(np.concatenate(
          [np.zeros((1, batch), bool),
           rng.uniform(size=(horizon - 1, batch)) < 0.7])))
  norms = normalizer.update_from_transitions(
      normalizer.normalizers_init(OBS, ACT), runs.transitions)
  value = jax.jit(dyn.multi_step_loss, static_argnums=3)(params, norms, runs,
                                                         config)
  np.testing.assert_allclose(
      value, _numpy_multi_step_loss(params, norms, runs, config), rtol=1e-5)
  # Rolled-out states matter: without resets the loss differs from the
  # mean of one-step losses on the same transitions.
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]),
                      runs.transitions)
  assert not np.isclose(value, dyn.loss(params, norms, flat, config),
                        rtol=1e-3)
  # Horizon 1 (or no links and every entry valid) is the one-step loss.
  one = jax.tree.map(lambda x: x[:1], runs)
  one = one.replace(valid=jnp.ones_like(one.valid))
  np.testing.assert_allclose(
      dyn.multi_step_loss(params, norms, one, config),
      dyn.loss(params, norms, jax.tree.map(lambda x: x[0],
                                           one.transitions), config),
      rtol=1e-6)


def test_fit_with_the_multi_step_loss_learns_a_linear_system():
  """Trajectories of s′ = A s + B a from 4 parallel environments; the
  multi-step fit ends with a small two-step error."""
  rng = np.random.default_rng(6)
  a_mat = np.eye(OBS) * 0.9 + 0.05 * rng.normal(size=(OBS, OBS))
  b_mat = rng.normal(size=(OBS, ACT))
  n_envs, steps = 4, 500
  obs = np.zeros((steps, n_envs, OBS))
  action = rng.uniform(-1, 1, size=(steps, n_envs, ACT))
  nxt = np.zeros_like(obs)
  done = np.zeros((steps, n_envs), bool)
  state = rng.normal(size=(n_envs, OBS))
  for t in range(steps):
    obs[t] = state
    nxt[t] = state @ a_mat.T + action[t] @ b_mat.T
    done[t] = t % 50 == 49
    state = np.where(done[t][:, None], rng.normal(size=(n_envs, OBS)),
                     nxt[t])
  batch = _transitions(obs, action, nxt).replace(done=done)
  config = dataclasses.replace(SMALL, loss='multi_step', multi_step_horizon=2,
                               n_steps=600)
  model = dyn.update_normalizers(
      dyn.fit_init(jax.random.key(7), OBS, ACT, config), batch)
  data = dataset.add(dataset.init(jax.tree.map(lambda x: x[0, 0], batch),
                                  4096), batch)
  fit = dyn.make_fit(config, stride=n_envs)
  model, metrics = fit(model, data, jax.random.key(8))
  losses = np.asarray(metrics['loss'])
  assert np.all(np.isfinite(losses)) and int(metrics['rejected']) == 0
  assert losses[-50:].mean() < 0.1 * losses[:10].mean(), losses[[0, -1]]
  # Two steps of the fitted model from real states track the plant.
  s0, a0, a1 = obs[100], action[100], action[101]
  predict = jax.vmap(dyn.predict, (None, None, 0, 0, None))
  s2 = predict(model.params, model.norms,
               predict(model.params, model.norms, jnp.asarray(s0),
                       jnp.asarray(a0), config), jnp.asarray(a1), config)
  truth = (s0 @ a_mat.T + a0 @ b_mat.T) @ a_mat.T + a1 @ b_mat.T
  spread = (nxt - obs).reshape(-1, OBS).std(0)
  assert np.all(np.abs(np.asarray(s2) - truth) / spread < 0.2), (
      np.abs(np.asarray(s2) - truth) / spread)


def test_normalizers_ignore_nonfinite_transitions():
  """Issue 16: obs = ones(4, 3), next_obs = obs + 0.1 with next_obs[2, 0] =
  NaN gave diff.mean = [nan, 0.1, 0.1]; the statistics must be those of
  the three finite rows, for all three normalisers."""
  obs = np.ones((4, OBS), np.float32)
  action = np.arange(4 * ACT, dtype=np.float32).reshape(4, ACT)
  next_obs = obs + np.float32(0.1)
  next_obs[2, 0] = np.nan
  update = jax.jit(normalizer.update_from_transitions)
  norms = update(normalizer.normalizers_init(OBS, ACT),
                 _transitions(obs, action, next_obs))
  np.testing.assert_allclose(norms.diff.mean, 0.1, rtol=1e-6)
  finite = [0, 1, 3]
  expected = normalizer.update_from_transitions(
      normalizer.normalizers_init(OBS, ACT),
      _transitions(obs[finite], action[finite], next_obs[finite]))
  for got, want in zip(jax.tree.leaves(norms), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert int(norms.state.count) == 3
  # A batch of nothing finite leaves them as they were (here: identity).
  nothing = update(normalizer.normalizers_init(OBS, ACT), _transitions(
      obs, action, np.full_like(next_obs, np.nan)))
  for got, want in zip(jax.tree.leaves(nothing), jax.tree.leaves(
      normalizer.normalizers_init(OBS, ACT))):
    np.testing.assert_array_equal(got, want)
  # A plain array batch: rows with a non-finite entry are left out.
  norm = normalizer.update(normalizer.init(2), jnp.asarray(
      [[1.0, 2.0], [jnp.inf, 0.0], [3.0, 6.0]]))
  np.testing.assert_allclose(norm.mean, [2.0, 4.0])
  np.testing.assert_allclose(norm.var, [1.0, 4.0])


def test_normalizer_types_are_kept_under_x64():
  with jax.enable_x64(True):
    norms = normalizer.normalizers_init(OBS, ACT)
    rng = np.random.default_rng(2)
    new = normalizer.update_from_transitions(norms, _transitions(
        rng.normal(size=(5, OBS)), rng.normal(size=(5, ACT)),
        rng.normal(size=(5, OBS))))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(norms)):
      assert a.dtype == b.dtype
