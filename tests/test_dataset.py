"""The fixed-capacity dataset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_count
from admrl_jax import types
from admrl_jax.models import dataset


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
  batch = _batch(6, (3, 2))
  with compile_count.compilations() as compiled:
    ds = add(ds, batch)                      # 6..11 wraps over 0, 1
  assert not compiled, compiled  # new data, same program
  assert int(ds.size) == 10 and int(ds.ptr) == 2
  np.testing.assert_array_equal(sorted(np.asarray(ds.data.reward)),
                                np.arange(2, 12))
  np.testing.assert_array_equal(ds.data.obs[:, 1], -ds.data.obs[:, 0])
  np.testing.assert_array_equal(ds.data.done, ds.data.reward % 2 == 0)
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


def test_add_drops_nonfinite_transitions_and_counts_them():
  """Issue 16: a NaN or Inf in any float field keeps a transition out of the
  data (it would poison every later model fit); the rest keep their order,
  also when the batch overflows the capacity."""
  example = jax.tree.map(lambda x: x[0, 0], _batch(0, (1, 1)))
  add = jax.jit(dataset.add)
  batch = _batch(0, (3, 2))  # rewards 0..5, flattened in this order
  batch = batch.replace(
      next_obs=batch.next_obs.at[0, 1, 0].set(jnp.nan),   # transition 1
      reward=batch.reward.at[2, 0].set(jnp.inf),          # transition 4
      raw_action=batch.raw_action.at[2, 1, 0].set(-jnp.inf))  # 5
  ds = add(dataset.init(example, capacity=10), batch)
  assert int(ds.size) == 3 and int(ds.ptr) == 3 and int(ds.dropped) == 3
  np.testing.assert_array_equal(ds.data.reward[:3], [0, 2, 3])
  np.testing.assert_array_equal(ds.data.next_obs[:3, 0], [0.5, 2.5, 3.5])
  assert np.all(np.isfinite(np.asarray(ds.data.next_obs)))
  # Overflow: of 25 new ones (100..124) with 124 and 110 dropped, the last
  # 10 finite ones (114..123) fill the buffer.
  big = _batch(100, (25,))
  big = big.replace(obs=big.obs.at[24, 0].set(jnp.nan),
                    next_obs=big.next_obs.at[10, 1].set(jnp.nan))
  ds = add(ds, big)
  assert int(ds.size) == 10 and int(ds.dropped) == 5
  np.testing.assert_array_equal(sorted(np.asarray(ds.data.reward)),
                                np.arange(114, 124))
  # An all-NaN batch changes nothing but the count.
  nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan)
                     if x.dtype == jnp.float32 else x, _batch(0, (2,)))
  after = add(ds, nan)
  assert int(after.dropped) == 7
  np.testing.assert_array_equal(after.data.reward, ds.data.reward)
  assert int(after.size) == int(ds.size) and int(after.ptr) == int(ds.ptr)


def test_counters_stay_int32_under_x64():
  """Sums default to int64 under x64; the dataset's counters (and so the
  state's types, which lax.cond branches in AdMRL must keep) must not."""
  with jax.enable_x64(True):
    batch = _batch(0, (3, 2))
    ds = dataset.init(jax.tree.map(lambda x: x[0, 0], batch), capacity=4)
    out = jax.jit(dataset.add)(ds, batch)
    for name in ('size', 'ptr', 'dropped'):
      assert getattr(out, name).dtype == getattr(ds, name).dtype == jnp.int32


def test_grow_keeps_the_entries_in_order_and_the_samples():
  example = jax.tree.map(lambda x: x[0], _batch(0, (1,)))
  small = dataset.add(dataset.init(example, capacity=10), _batch(0, (7,)))
  large = dataset.add(dataset.init(example, capacity=25), _batch(0, (7,)))
  grown = dataset.grow(small, 25)
  assert grown.capacity == 25 and int(grown.ptr) == int(grown.size) == 7
  # What the larger dataset would hold and draw, had it been used all along.
  for a, b in zip(jax.tree.leaves(grown), jax.tree.leaves(large)):
    np.testing.assert_array_equal(a, b)
  key = jax.random.key(3)
  np.testing.assert_array_equal(dataset.sample(grown, key, 50).reward,
                                dataset.sample(large, key, 50).reward)
  np.testing.assert_array_equal(
      dataset.add(grown, _batch(7, (4,))).data.reward[:11], np.arange(11))
  # A full buffer that wrapped: oldest first, the next add after the newest.
  wrapped = dataset.add(small, _batch(7, (6,)))          # 3..12, ptr 3
  assert int(wrapped.ptr) == 3
  grown = dataset.add(dataset.grow(wrapped, 16), _batch(13, (2,)))
  np.testing.assert_array_equal(grown.data.reward[:12], np.arange(3, 15))
  assert int(grown.size) == 12 and int(grown.ptr) == 12
  assert dataset.grow(small, 10) is small
  with pytest.raises(ValueError, match='cannot shrink a dataset from 10 to 5'):
    dataset.grow(small, 5)
