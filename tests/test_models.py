"""Normalisers and the SLBO dynamics model against ground truth."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import types
from admrl_jax.models import dynamics as dyn
from admrl_jax.models import normalizer
from admrl_jax.rl import dataset

OBS, ACT = 3, 2
SMALL = dyn.ModelConfig(hidden=(64, 64))


def _transitions(obs, action, next_obs):
  obs, action, next_obs = (np.asarray(x, np.float32)
                           for x in (obs, action, next_obs))
  n = obs.shape[:-1]
  return types.Transition(obs=obs, action=action, raw_action=action,
                          reward=np.zeros(n, np.float32), next_obs=next_obs,
                          done=np.zeros(n, bool), timeout=np.zeros(n, bool))


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
  assert [l['w'].shape for l in params] == [(5, 1000), (1000, 1000),
                                            (1000, 3)]
  with pytest.raises(NotImplementedError, match='multi_step'):
    dyn.make_fit(dyn.ModelConfig(loss='multi_step'))
  with pytest.raises(ValueError):
    dyn.ModelConfig(loss='two_step')


def _numpy_loss(params, norms, batch, action_clip):
  def normalize(norm, x):
    std = np.maximum(np.sqrt(np.asarray(norm.var, np.float64)), 1e-6)
    return (x - np.asarray(norm.mean, np.float64)) / std
  x = np.concatenate([normalize(norms.state, batch.obs),
                      np.clip(batch.action, -action_clip, action_clip)], -1)
  layers = [{k: np.asarray(v, np.float64) for k, v in l.items()}
            for l in params]
  for layer in layers[:-1]:
    x = np.maximum(x @ layer['w'] + layer['b'], 0.0)
  pred = x @ layers[-1]['w'] + layers[-1]['b']
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
  params = params[:-1] + ({'w': jnp.zeros_like(params[-1]['w']),
                           'b': jnp.full((OBS,), 1e6)},)
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

  # Two real batches, each added and normalised before fitting (SPEC §6).
  data = dataset.init(jax.tree.map(lambda x: x[0], make_batch(1, rng)), 4096)
  for i in range(2):
    batch = make_batch(1000, rng)
    data = dataset.add(data, batch)
    state = dyn.update_normalizers(state, batch)
    state, metrics = fit(state, data, jax.random.key(i))
    assert metrics['loss'].shape == metrics['grad_norm'].shape == (500,)
  assert fit._cache_size() == 1  # new data and normalisers: no recompile

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
