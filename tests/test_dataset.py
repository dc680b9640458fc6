"""The fixed-capacity dataset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import types
from admrl_jax.rl import dataset


def _batch(start, shape):
  count = int(np.prod(shape))
  values = jnp.arange(start, start + count, dtype=jnp.float32).reshape(shape)
  return types.Transition(
      obs=jnp.stack([values, -values], -1), action=values[..., None],
      raw_action=values[..., None], reward=values, next_obs=jnp.stack(
          [values + 0.5, values], -1), done=values % 2 == 0,
      timeout=jnp.zeros(shape, bool))


def test_add_wraps_and_keeps_latest():
  example = jax.tree.map(lambda x: x[0, 0], _batch(0, (1, 1)))
  ds = dataset.init(example, capacity=10)
  assert ds.capacity == 10 and int(ds.size) == 0
  add = jax.jit(dataset.add)
  ds = add(ds, _batch(0, (3, 2)))            # 0..5
  assert int(ds.size) == 6 and int(ds.ptr) == 6
  np.testing.assert_array_equal(ds.data.reward[:6], np.arange(6))
  ds = add(ds, _batch(6, (3, 2)))            # 6..11 wraps over 0, 1
  assert int(ds.size) == 10 and int(ds.ptr) == 2
  np.testing.assert_array_equal(sorted(np.asarray(ds.data.reward)),
                                np.arange(2, 12))
  np.testing.assert_array_equal(ds.data.obs[:, 1], -ds.data.obs[:, 0])
  np.testing.assert_array_equal(ds.data.done, ds.data.reward % 2 == 0)
  assert add._cache_size() == 1
  # A batch larger than the capacity keeps its last entries.
  ds = dataset.add(ds, _batch(100, (25,)))
  np.testing.assert_array_equal(sorted(np.asarray(ds.data.reward)),
                                np.arange(115, 125))


def test_sample_draws_only_valid_entries():
  example = jax.tree.map(lambda x: x[0], _batch(0, (1,)))
  ds = dataset.add(dataset.init(example, capacity=100), _batch(0, (7,)))
  batch = jax.jit(dataset.sample, static_argnums=2)(ds, jax.random.key(0), 500)
  assert batch.obs.shape == (500, 2)
  values = np.asarray(batch.reward)
  assert set(values.tolist()) == set(range(7))  # all valid entries, nothing else
  # Fields stay aligned row by row.
  np.testing.assert_array_equal(batch.obs[:, 0], values)
  np.testing.assert_array_equal(batch.next_obs[:, 0], values + 0.5)


def test_sample_empty_and_bad_capacity():
  example = jax.tree.map(lambda x: x[0], _batch(0, (1,)))
  with pytest.raises(ValueError, match='empty'):
    dataset.sample(dataset.init(example, 5), jax.random.key(0), 3)
  with pytest.raises(ValueError, match='capacity'):
    dataset.init(example, 0)
